"""Tables and figures from evaluation, history and snapshot files (no training)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from qure.reporting import figures
from qure.reporting.paper import paper_table
from qure.reporting.tables import (
    ReproducedRow,
    TableInputError,
    build_table,
    latex_escape,
    to_csv,
    to_latex,
    to_markdown,
    write_table,
)


def _eval(tmp_path, name, metrics, profile="synthetic", split="val"):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"metrics": metrics, "profile": profile, "split": split}))
    return str(path)


def test_table_rows_carry_the_evaluation_numbers(tmp_path):
    keys = paper_table("table3_cirr").column_keys
    values = {k: 10.0 + i for i, k in enumerate(keys)}
    row = ReproducedRow("QuRe", "mini BLIP-2", {"cirr": _eval(tmp_path, "q", values)})
    table = build_table("table3_cirr", [row])
    reproduced = [r for r in table.rows if r["source"] == "reproduced"]
    assert len(reproduced) == 1 and reproduced[0]["split"] == "cirr:val"
    parsed = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert parsed[-1]["R@1"] == "10.00" and parsed[-1]["avg"] == f"{values['avg']:.2f}"
    assert parsed[0]["source"] == "paper" and parsed[0]["method"] == "CoSMo"
    assert "| reproduced | QuRe | mini BLIP-2 | synthetic |" in to_markdown(table)
    assert "Reproduced by this workflow" in to_latex(table)
    written = write_table(table, tmp_path / "out" / "table3_cirr")
    assert [p.suffix for p in written] == [".csv", ".md", ".tex"]


def test_table8_combines_two_benchmarks(tmp_path):
    hp = _eval(tmp_path, "hp", {"preference_rate": 70.0}, split="all")
    circo = _eval(tmp_path, "circo", {"mAP@5": 1.0, "mAP@10": 2.0, "mAP@25": 3.0})
    table = build_table("table8_hp_circo_backbones",
                        [ReproducedRow("QuRe", "mini", {"hp_fashioniq": hp, "circo": circo})])
    row = table.rows[-1]
    assert row["preference_rate"] == 70.0 and row["mAP@25"] == 3.0
    assert row["split"] == "hp_fashioniq:all, circo:val"


def test_missing_or_out_of_range_metrics_are_refused(tmp_path):
    path = _eval(tmp_path, "bad", {"preference_rate": 0.7 * 1000})
    with pytest.raises(TableInputError, match="not a percentage"):
        build_table("table4_hp_fashioniq", [ReproducedRow("QuRe", "m", {"hp_fashioniq": path})])
    path = _eval(tmp_path, "short", {"R@1": 5.0})
    with pytest.raises(TableInputError, match=r"short\.json.*'R@5'"):
        build_table("table3_cirr", [ReproducedRow("QuRe", "m", {"cirr": path})])
    with pytest.raises(TableInputError, match="no circo evaluation"):
        build_table("table5_circo", [ReproducedRow("QuRe", "m", {})])


def test_latex_escape():
    assert latex_escape("R@10 & 5% of x_y {a}") == r"R@10 \& 5\% of x\_y \{a\}"


def test_after_target_curve_marks_the_released_two_drops():
    # datasets.md 5.4 toy check: the set is {.60, .59, .58, .57}.
    scores = torch.tensor([.95, .90, .80, .79, .78, .60, .59, .58, .57, .30, .29])
    curve, bounds = figures.after_target_curve(scores, target=1)
    assert curve.tolist() == pytest.approx(scores[2:].tolist())
    assert bounds == (3, 6)
    # Masked (other-group) columns are not part of the ranking.
    masked = torch.cat([scores, torch.tensor([float("-inf")] * 3)])
    assert figures.after_target_curve(masked, target=1)[1] == (3, 6)


def _history(tmp_path, name, epochs=6, defined=(2, 4)):
    path = tmp_path / f"{name}.jsonl"
    with open(path, "w") as handle:
        for e in range(epochs):
            record = {"epoch": e, "val": {"average_recall": 10.0 + e}}
            if e in defined:
                record["hard_set"] = {"size_mean": 100.0 - 10 * e, "size_median": 50.0 - e,
                                      "false_negative_rate": 0.01}
            handle.write(json.dumps(record) + "\n")
    return str(path)


def test_history_figures_render(tmp_path):
    fig = figures.fig4_negative_strategies({"QuRe": _history(tmp_path, "q"),
                                            "All": _history(tmp_path, "a", defined=())},
                                           "average_recall", "fashioniq", "synthetic")
    paths = figures.save_figure(fig, tmp_path / "figs" / "fig4")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size for p in paths)
    fig = figures.fig5_hard_negative_set_size({"fashioniq": _history(tmp_path, "q")},
                                              "synthetic")
    (ax,) = fig.axes
    assert list(ax.lines[0].get_ydata()) == [80.0, 60.0]
    figures.save_figure(fig, tmp_path / "figs" / "fig5")


def test_steepness_figures_render_from_snapshots(tmp_path):
    gen = torch.Generator().manual_seed(0)
    snaps = []
    for i, epoch in enumerate((0, 2, 4)):
        scores = torch.rand(4, 50, generator=gen) * (1 + i)
        snaps.append({"epoch": epoch, "label": f"before epoch {epoch}",
                      "query_ids": [f"q{j}" for j in range(4)], "scores": scores,
                      "target": scores.argmax(1)})
    torch.save({"snapshots": snaps}, tmp_path / "snapshots.pt")
    loaded = figures.load_snapshots(tmp_path / "snapshots.pt")
    fig7 = figures.fig7_score_steepness(loaded, 0, "synthetic")
    assert "before training" in fig7.axes[0].get_title()
    assert "after warm-up (epoch 2)" in fig7.axes[1].get_title()
    figures.save_figure(fig7, tmp_path / "fig7")
    figures.save_figure(figures.fig8_score_steepness_aggregate(loaded, "synthetic"),
                        tmp_path / "fig8")
    with pytest.raises(ValueError, match="after warm-up"):
        figures.fig7_score_steepness(loaded[:1])


def test_real_rows_carry_missing_counts_and_their_distance_from_the_paper(tmp_path):
    paper = paper_table("table2_fashioniq")
    qure = next(r for r in paper.rows if r.method == "QuRe")
    values = {k: float(v) for k, v in qure.values.items()}
    values["dress_R@10"] -= 1.5  # one number 1.5 points below the paper's
    path = tmp_path / "fiq.json"
    path.write_text(json.dumps({
        "metrics": values, "profile": "real", "split": "val",
        "missing_images": {"policy": "drop", "total": {
            "queries": 6016, "queries_dropped": 12, "gallery_images": 15415,
            "gallery_images_missing": 30}}}))
    table = build_table("table2_fashioniq", [
        ReproducedRow("QuRe", "BLIP-2 ViT-L", {"fashioniq": str(path)}, "QuRe", "BLIP-2"),
        ReproducedRow("Contrastive", "BLIP-2 ViT-L", {"fashioniq": str(path)}, None, "BLIP-2")])
    matched, unmatched = table.rows[-2:]
    assert matched["missing_images"] == ("fashioniq: 12 of 6016 queries dropped, 30 of 15415 "
                                         "gallery images missing")
    assert matched["vs_paper"] == "max |diff| 1.50 pt (dress_R@10: -1.50), over 1 pt"
    assert unmatched["vs_paper"] == "no paper row"
    parsed = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert parsed[-2]["vs_paper"].endswith("over 1 pt")
    assert "12 of 6016 queries dropped" in to_markdown(table)
    assert "12 of 6016 queries dropped" in to_latex(table)
    # Within a point: no flag; a synthetic row is never compared.
    values["dress_R@10"] += 1.0
    path.write_text(json.dumps({"metrics": values, "profile": "real", "split": "val"}))
    row = build_table("table2_fashioniq", [ReproducedRow("QuRe", "B", {"fashioniq": str(path)},
                                                         "QuRe", "BLIP-2")]).rows[-1]
    assert row["vs_paper"] == "max |diff| 0.50 pt (dress_R@10: -0.50)"
    assert row["missing_images"] == "none"
    synthetic = build_table("table2_fashioniq", [ReproducedRow(
        "QuRe", "mini", {"fashioniq": _eval(tmp_path, "s", values)}, "QuRe", "BLIP-2")])
    assert synthetic.rows[-1]["vs_paper"] == "not comparable (synthetic)"


def test_the_same_figure_is_the_same_bytes(tmp_path):
    import matplotlib.pyplot as plt

    digests = []
    for run in ("a", "b"):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2])
        paths = figures.save_figure(fig, tmp_path / run / "fig")
        digests.append([p.read_bytes() for p in paths])
    assert digests[0] == digests[1]
    assert b"CreationDate" not in digests[0][1]


def test_reproduced_cells_carry_their_bootstrap_interval(tmp_path):
    keys = paper_table("table3_cirr").column_keys
    values = {k: 40.0 + i for i, k in enumerate(keys)}
    path = tmp_path / "cirr.json"
    path.write_text(json.dumps({"metrics": values, "profile": "synthetic", "split": "val",
                                "intervals": {k: [v, v - 1.25, v + 2.5]
                                              for k, v in values.items()}}))
    table = build_table("table3_cirr", [ReproducedRow("QuRe", "mini", {"cirr": str(path)})])
    parsed = list(csv.DictReader(io.StringIO(to_csv(table))))
    first = keys[0]
    assert parsed[-1][first] == "40.00"
    assert (parsed[-1][f"{first}_low"], parsed[-1][f"{first}_high"]) == ("38.75", "42.50")
    assert parsed[0][f"{first}_low"] == ""  # the paper's rows have none
    assert "40.00 [38.75, 42.50]" in to_markdown(table)
    assert "40.00 {\\scriptsize [38.75, 42.50]}" in to_latex(table)

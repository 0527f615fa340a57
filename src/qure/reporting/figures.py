"""The paper's figures (and Fig. 9, which no CIR paper has) drawn from run histories,
score snapshots, audit and example files. Nothing here trains or scores a model.

Every ``fig*`` function returns a matplotlib Figure; :func:`save_figure` writes PNG and
PDF atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from qure.io import read_json
from qure.mining import hard_negative_sets

DATASET_LABELS = {"fashioniq": "FashionIQ", "cirr": "CIRR", "circo": "CIRCO",
                  "hp_fashioniq": "HP-FashionIQ"}


def save_figure(fig: Figure, prefix: str | Path) -> list[Path]:
    """``prefix``.png and ``prefix``.pdf, each written to a temporary file then renamed."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        final = prefix.with_name(prefix.name + suffix)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
        os.close(fd)
        try:
            # No creation date in the PDF: the same figure is the same bytes on every run.
            metadata = {"CreationDate": None} if suffix == ".pdf" else None
            fig.savefig(tmp, dpi=150, bbox_inches="tight", metadata=metadata)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(final)
    plt.close(fig)
    return written


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """A run's ``epochs.jsonl`` (one JSON record per finished epoch)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                records.append(json.loads(line))
    return records


def _footer(fig: Figure, text: str) -> None:
    fig.text(0.01, -0.02, text, fontsize=7, color="0.35", ha="left", va="top", wrap=True)


# --- Fig. 4: negative strategies ------------------------------------------------------------


def fig4_negative_strategies(histories: Mapping[str, str | Path], metric: str,
                             dataset: str, profile: str) -> Figure:
    """Validation ``metric`` per epoch for each strategy; dotted lines mark definitions."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    definitions: set[int] = set()
    for label, path in histories.items():
        history = read_history(path)
        epochs = [r["epoch"] + 1 for r in history]
        ax.plot(epochs, [r["val"][metric] for r in history], marker="o", markersize=2.5,
                linewidth=1.4, label=label)
        definitions.update(r["epoch"] for r in history if r.get("hard_set"))
    for epoch in sorted(definitions):
        ax.axvline(epoch + 0.5, color="0.8", linestyle=":", linewidth=0.8, zorder=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric.replace('_', ' ')} (%)")
    ax.set_title(f"Negative strategies on {DATASET_LABELS.get(dataset, dataset)}")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    _footer(fig, f"Data profile: {profile}. Dotted lines: hard-set (re-)definitions "
                 "(warm-up before the first).")
    return fig


# --- Fig. 5: hard-set size per definition ---------------------------------------------------


def fig5_hard_negative_set_size(histories: Mapping[str, str | Path], profile: str) -> Figure:
    """Mean (and median) hard-set size at each definition epoch, one panel per dataset."""
    fig, axes = plt.subplots(1, len(histories), figsize=(4.2 * len(histories), 3.6),
                             squeeze=False)
    for ax, (dataset, path) in zip(axes[0], histories.items(), strict=True):
        points = [(r["epoch"], r["hard_set"]) for r in read_history(path) if r.get("hard_set")]
        if not points:
            ax.text(0.5, 0.5, "no hard-set definitions", ha="center", transform=ax.transAxes)
            continue
        epochs = [e for e, _ in points]
        ax.plot(epochs, [h["size_mean"] for _, h in points], marker="o", label="mean")
        ax.plot(epochs, [h["size_median"] for _, h in points], marker="s", linestyle="--",
                label="median")
        ax.set_xticks(epochs)
        ax.set_xlabel("epoch of definition")
        ax.set_ylabel("images per hard-negative set")
        ax.set_title(DATASET_LABELS.get(dataset, dataset))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("QuRe hard-negative set size per definition")
    _footer(fig, f"Data profile: {profile}.")
    fig.tight_layout()
    return fig


# --- Fig. 6: hard-negative examples ---------------------------------------------------------


def _show_image(ax, path: str | None, title: str, color: str) -> None:
    from PIL import Image

    if path and Path(path).is_file():
        with Image.open(path) as img:
            ax.imshow(np.asarray(img.convert("RGB")))
    else:
        ax.text(0.5, 0.5, "image\nmissing", ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=6.5, color=color)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(2.0)


def fig6_hard_negative_examples(examples_file: str | Path) -> Figure:
    """Each row: the reference, the target, then hard negatives in score order.

    On synthetic data a red frame marks an oracle-relevant image inside the hard set
    (a false negative); green marks the target.
    """
    data = read_json(examples_file, dict)
    items = data["examples"]
    columns = 2 + max((len(e["hard_negatives"]) for e in items), default=0)
    fig, axes = plt.subplots(len(items), columns, figsize=(1.35 * columns, 1.75 * len(items)),
                             squeeze=False)
    for row, example in zip(axes, items, strict=True):
        _show_image(row[0], example["reference"]["path"], "reference", "0.3")
        target = example["target"]
        _show_image(row[1], target["path"], f"target\nrank {target['rank']}", "tab:green")
        for ax, neg in zip(row[2:], example["hard_negatives"], strict=False):
            fn = neg.get("oracle_relevant")
            color = "tab:red" if fn else "tab:blue"
            note = " (FN)" if fn else ""
            _show_image(ax, neg["path"], f"rank {neg['rank']}{note}\ns={neg['score']:.3f}",
                        color)
        for ax in row[2 + len(example["hard_negatives"]):]:
            ax.axis("off")
        text = example["text"]
        row[0].set_ylabel("\n".join(_wrap(text, 28)[:3]), fontsize=6, rotation=0,
                          ha="right", va="center", labelpad=4)
    fig.suptitle(f"Hard negatives ({data['strategy']}) on "
                 f"{DATASET_LABELS.get(data['dataset'], data['dataset'])}", fontsize=9)
    _footer(fig, f"Data profile: {data.get('profile')}. Scores from {data['basis_run']}. "
                 "Blue: hard negative; red: oracle-relevant image inside the set "
                 "(false negative); green: target.")
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return lines


# --- Figs. 7 and 8: score steepness ---------------------------------------------------------


def load_snapshots(path: str | Path) -> list[dict[str, Any]]:
    """The score snapshots a run bundled (``snapshots.pt``), in epoch order."""
    bundle = torch.load(Path(path), map_location="cpu", weights_only=True)
    return sorted(bundle["snapshots"], key=lambda s: s["epoch"])


def after_target_curve(scores: torch.Tensor, target: int,
                       params: Mapping[str, Any] | None = None
                       ) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Sorted scores after the target (own group only), and the hard set's first and
    last position in that curve (0-based) under the two-drops rule, or None."""
    finite = torch.isfinite(scores)
    if not bool(finite[target]):
        raise ValueError(f"the target's score is not finite ({float(scores[target])})")
    # Rank only the query's own group: masked (-inf) columns would otherwise form the
    # largest "drop" of all.
    columns = finite.nonzero().flatten()
    own = scores[columns]
    local_target = int((columns == target).nonzero()[0, 0])
    order = torch.sort(own, descending=True, stable=True).indices
    position = int((order == local_target).nonzero()[0, 0])
    after = own[order[position + 1:]].numpy()
    sets = hard_negative_sets(own[None], torch.tensor([local_target]), "qure",
                              fallback="empty", **dict(params or {}))
    members = sets[0]
    if members.numel() == 0:
        return after, None
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    positions = rank[members] - position - 1
    return after, (int(positions.min()), int(positions.max()))


def stage_label(index: int, snapshot: Mapping[str, Any]) -> str:
    """``before training``, ``after warm-up (epoch E)``, then ``re-definition at epoch E``."""
    if index == 0:
        return "before training"
    if index == 1:
        return f"after warm-up (epoch {snapshot['epoch']})"
    return f"re-definition at epoch {snapshot['epoch']}"


def _stage_snapshots(snaps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    snaps = [dict(s, label=stage_label(i, s)) for i, s in enumerate(snaps)]
    if len(snaps) < 2:
        raise ValueError("the steepness figures need the 'before training' snapshot and "
                         "the one taken after warm-up")
    return snaps


def fig7_score_steepness(snapshots: Sequence[dict[str, Any]], query: int = 0,
                         profile: str = "") -> Figure:
    """One query's sorted scores after its target, before training and after warm-up,
    with the hard set's boundaries (the two chosen drops) marked."""
    snaps = _stage_snapshots(snapshots)[:2]
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for ax, snap in zip(axes, snaps, strict=True):
        scores = snap["scores"][query].float()
        curve, bounds = after_target_curve(scores, int(snap["target"][query]))
        x = np.arange(1, len(curve) + 1)
        ax.plot(x, curve, color="0.2", linewidth=1.0)
        if bounds is not None:
            first, last = bounds
            ax.axvline(first + 0.5, color="tab:red", linewidth=1.2, label="first drop")
            ax.axvline(last + 1.5, color="tab:green", linewidth=1.2, label="second drop")
            ax.axvspan(first + 0.5, last + 1.5, color="tab:blue", alpha=0.12,
                       label=f"hard set ({last - first + 1} images)")
        ax.set_xlabel("rank after the target")
        ax.set_ylabel("score (max-over-tokens cosine)")
        ax.set_title(f"{snap['label']} (query {snap['query_ids'][query]})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Score steepness after the target (two-drops rule)")
    _footer(fig, f"Data profile: {profile}. Lines: the two drops the released rule picks "
                 "(largest drops after the target, first non-adjacent pair).")
    fig.tight_layout()
    return fig


def fig8_score_steepness_aggregate(snapshots: Sequence[dict[str, Any]],
                                   profile: str = "") -> Figure:
    """Over all snapshot queries: (a) score below the target vs rank after it (median and
    interquartile band) per stage; (b) where the two drops fall, as a share of the
    ranking after the target."""
    snaps = _stage_snapshots(snapshots)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    starts, ends, labels = [], [], []
    for color, snap in zip(colors, snaps, strict=False):
        curves, first, last = [], [], []
        for q in range(len(snap["query_ids"])):
            scores = snap["scores"][q].float()
            target = int(snap["target"][q])
            curve, bounds = after_target_curve(scores, target)
            if len(curve) < 2:
                continue
            curves.append(float(scores[target]) - curve)
            if bounds is not None:
                first.append(bounds[0] / len(curve))
                last.append((bounds[1] + 1) / len(curve))
        if not curves:
            continue
        length = min(len(c) for c in curves)
        stacked = np.stack([c[:length] for c in curves])
        x = np.arange(1, length + 1)
        median = np.median(stacked, 0)
        q1, q3 = np.percentile(stacked, [25, 75], 0)
        left.plot(x, median, color=color, label=f"{snap['label']} (n={len(curves)})")
        left.fill_between(x, q1, q3, color=color, alpha=0.15)
        starts.append(first)
        ends.append(last)
        labels.append(snap["label"])
    left.set_xscale("log")
    left.set_xlabel("rank after the target (log)")
    left.set_ylabel("target score − score")
    left.set_title("Gap to the target along the ranking", fontsize=9)
    left.grid(alpha=0.3)
    left.legend(fontsize=7, frameon=False)
    positions = np.arange(len(labels))
    right.boxplot(starts, positions=positions - 0.18, widths=0.3, patch_artist=True,
                  boxprops={"facecolor": "mistyrose"}, medianprops={"color": "tab:red"})
    right.boxplot(ends, positions=positions + 0.18, widths=0.3, patch_artist=True,
                  boxprops={"facecolor": "honeydew"}, medianprops={"color": "tab:green"})
    right.set_xticks(positions, [lbl.replace(" (", "\n(").replace(" at ", "\nat ")
                                 for lbl in labels], fontsize=7)
    right.set_ylim(0, 1.03)
    right.set_ylabel("position / images after the target")
    right.set_title("Hard-set start (red) and end (green)", fontsize=9)
    right.grid(alpha=0.3, axis="y")
    fig.suptitle("Score steepness over the snapshot queries")
    _footer(fig, f"Data profile: {profile}. Snapshots are the full score rows of fixed "
                 "training queries taken at every definition of the QuRe run.")
    fig.tight_layout()
    return fig


# --- Fig. 9: false negatives inside hard sets -----------------------------------------------


def fig9_false_negatives(audit_file: str | Path,
                         training_histories: Mapping[str, str | Path] | None = None
                         ) -> Figure:
    """Share of oracle-relevant images (false negatives) inside each strategy's sets:
    all strategies mined on one shared score matrix (bars), and each strategy's own
    training-time definitions (dots, mean over definitions)."""
    audit = read_json(audit_file, dict)
    names = list(audit.get("order") or audit["strategies"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.4))
    if not audit.get("oracle"):
        left.text(0.5, 0.5, "real data: no relevance oracle", ha="center",
                  transform=left.transAxes)
    else:
        shares = [100 * audit["strategies"][n]["false_negative_share"] for n in names]
        with_fn = [100 * audit["strategies"][n]["queries_with_false_negatives"]
                   / audit["strategies"][n]["queries"] for n in names]
        x = np.arange(len(names))
        left.bar(x - 0.2, shares, width=0.4, label="share of set images that are relevant")
        left.bar(x + 0.2, with_fn, width=0.4, label="queries whose set holds one")
        if training_histories:
            trained = []
            for n in names:
                path = training_histories.get(n)
                rates = [r["hard_set"]["false_negative_rate"] for r in read_history(path)
                         if r.get("hard_set") and "false_negative_rate" in r["hard_set"]
                         ] if path else []
                trained.append(100 * float(np.mean(rates)) if rates else np.nan)
            left.plot(x - 0.2, trained, "k^", markersize=5,
                      label="share during its own training (mean over definitions)")
        base = 100 * audit.get("relevant_share_of_corpus", 0.0)
        left.axhline(base, color="0.4", linestyle="--", linewidth=0.9,
                     label=f"corpus base rate ({base:.2f}%)")
        left.set_yscale("symlog", linthresh=0.1)
        left.set_xticks(x, [audit["strategies"][n]["label"] for n in names], rotation=20,
                        ha="right", fontsize=7)
        left.set_ylabel("%")
        left.set_title("False negatives in hard-negative sets", fontsize=9)
        left.legend(fontsize=6.5, frameon=False, loc="upper center",
                    bbox_to_anchor=(0.5, -0.32), ncol=2)
        left.grid(alpha=0.3, axis="y")
    sizes = [audit["strategies"][n]["size_mean"] for n in names]
    right.bar(np.arange(len(names)), sizes, color="tab:gray")
    right.set_yscale("log")
    right.set_xticks(np.arange(len(names)), [audit["strategies"][n]["label"] for n in names],
                     rotation=20, ha="right", fontsize=7)
    right.set_ylabel("mean images per set (log)")
    right.set_title("Set size", fontsize=9)
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Hard-set audit on {DATASET_LABELS.get(audit['dataset'], audit['dataset'])}"
                 " training queries")
    _footer(fig, f"Data profile: {audit.get('profile')}. Bars: every strategy mined on the "
                 f"same scores (final model of {audit['basis_run']}); relevance from the "
                 "synthetic benchmark's oracle.")
    fig.tight_layout()
    return fig

"""Paper tables with the paper's reported rows beside the rows this run reproduced.

Reproduced values are read from evaluation JSON files (``qure.stages.evaluate``); nothing
here trains or scores. Every row says where it comes from (paper or this run), the data
profile, the backbone and the split, so a synthetic mini-backbone number is never
mistaken for a paper number.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qure.errors import QureError
from qure.io import atomic_write_text, read_json
from qure.reporting.paper import PaperTable, paper_table

#: Output table name -> the paper table it reproduces.
TABLES: dict[str, str] = {
    "table2_fashioniq": "table2_fashioniq",
    "table3_cirr": "table3_cirr",
    "table4_hp_fashioniq": "table4_hp_fashioniq",
    "table5_circo": "table5_circo",
    "table6_cirr_backbones": "table6_cirr_backbones",
    "table7_fashioniq_backbones": "table7_fashioniq_backbones",
    "table8_hp_circo_backbones": "table8_hp_fashioniq_circo_backbones",
}

#: The paper's dataset names -> benchmark keys of the evaluation files.
BENCHMARK_OF = {"FashionIQ": "fashioniq", "CIRR": "cirr", "CIRCO": "circo",
                "HP-FashionIQ": "hp_fashioniq"}

#: Tables whose reproduced rows span every backbone (the rest use the main backbone).
BACKBONE_TABLES = ("table6_cirr_backbones", "table7_fashioniq_backbones",
                   "table8_hp_circo_backbones")

META_COLUMNS = ("source", "method", "backbone", "profile", "split", "missing_images",
                "vs_paper")
#: A reproduced real-data number further than this from the paper's is flagged.
PAPER_TOLERANCE = 1.0


class TableInputError(QureError):
    """An evaluation file lacks a metric a table needs; the message names file and key."""


@dataclass(frozen=True)
class ReproducedRow:
    """One reproduced row: labels plus the evaluation file of each benchmark it needs."""

    method: str
    backbone: str
    evaluations: Mapping[str, str]  # benchmark -> evaluation JSON path
    paper_method: str | None = None
    """The paper row this row reproduces (same method name), if any."""
    paper_backbone: str | None = None


@dataclass
class Table:
    name: str
    paper: PaperTable
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return self.paper.column_keys


def column_benchmarks(paper: PaperTable) -> dict[str, str]:
    """Metric key -> benchmark whose evaluation file provides it."""
    return {c.key: BENCHMARK_OF[c.dataset] for c in paper.columns}


def missing_note(counts: Mapping[str, Mapping[str, Any]]) -> str:
    """``benchmark -> missing_images.total`` as one cell: what the missing-image policy
    left out ("none" when nothing was missing)."""
    parts = []
    for benchmark, total in counts.items():
        dropped = int(total.get("queries_dropped", 0))
        gallery = int(total.get("gallery_images_missing", 0))
        if dropped or gallery:
            # (``queries`` and ``gallery_images`` count the split before the drop.)
            parts.append(f"{benchmark}: {dropped} of {int(total.get('queries', 0))} queries "
                         f"dropped, {gallery} of {int(total.get('gallery_images', 0))} "
                         "gallery images missing")
    return "; ".join(parts) if parts else "none"


def _paper_match(paper: PaperTable, method: str, backbone: str | None) -> Any:
    for row in paper.rows:
        if row.method != method:
            continue
        stated = (row.backbone or "").split(" ")[0] or None
        if backbone is None or stated in (None, backbone):
            return row
    return None


def paper_difference(paper: PaperTable, spec: ReproducedRow, values: Mapping[str, float],
                     profile: str) -> str:
    """How far a reproduced row is from the paper's row of the same method and backbone:
    the largest absolute difference (points) and its metric, flagged above
    :data:`PAPER_TOLERANCE`. Synthetic rows are not comparable and say so."""
    if profile != "real":
        return "not comparable (synthetic)"
    if not spec.paper_method:
        return "no paper row"
    row = _paper_match(paper, spec.paper_method, spec.paper_backbone)
    if row is None:
        return f"no paper row for {spec.paper_method} / {spec.paper_backbone}"
    diffs = {k: values[k] - float(row.values[k]) for k in values
             if row.values.get(k) is not None}
    if not diffs:
        return "no common metric"
    key = max(diffs, key=lambda k: (abs(diffs[k]), k))
    text = f"max |diff| {abs(diffs[key]):.2f} pt ({key}: {diffs[key]:+.2f})"
    if abs(diffs[key]) > PAPER_TOLERANCE:
        text += f", over {PAPER_TOLERANCE:g} pt"
    if paper.split and "val" not in paper.split:
        text += f"; paper split: {paper.split}"
    return text


def build_table(name: str, reproduced: Sequence[ReproducedRow]) -> Table:
    """The paper's rows, then one row per reproduced (method, backbone)."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; expected one of {', '.join(TABLES)}")
    paper = paper_table(TABLES[name])
    table = Table(name, paper)
    for row in paper.rows:
        table.rows.append({"source": "paper", "method": row.method,
                           "backbone": row.backbone or "not stated",
                           "profile": "real", "split": paper.split or "",
                           "missing_images": "", "vs_paper": "",
                           **{k: row.values[k] for k in paper.column_keys}})
    sources = column_benchmarks(paper)
    for spec in reproduced:
        values: dict[str, float] = {}
        intervals: dict[str, tuple[float, float]] = {}
        profiles, splits = set(), []
        missing: dict[str, Mapping[str, Any]] = {}
        for key, benchmark in sources.items():
            try:
                path = spec.evaluations[benchmark]
            except KeyError:
                raise TableInputError(f"{name}: reproduced row {spec.method} / "
                                      f"{spec.backbone} has no {benchmark} evaluation") from None
            result = read_json(path, dict)
            metrics = result.get("metrics", {})
            if key not in metrics:
                raise TableInputError(f"{path}: metric {key!r} missing (needed by {name})")
            value = float(metrics[key])
            if not math.isfinite(value) or not 0.0 <= value <= 100.0:
                raise TableInputError(f"{path}: metric {key!r} = {value} is not a "
                                      "percentage in [0, 100]")
            values[key] = value
            interval = (result.get("intervals") or {}).get(key)
            if interval is not None:
                intervals[key] = (float(interval[1]), float(interval[2]))
            profiles.add(str(result.get("profile")))
            split = f"{benchmark}:{result.get('split')}"
            if split not in splits:
                splits.append(split)
            total = (result.get("missing_images") or {}).get("total")
            if isinstance(total, Mapping):
                missing[benchmark] = total
        profile = "+".join(sorted(profiles))
        table.rows.append({"source": "reproduced", "method": spec.method,
                           "backbone": spec.backbone, "profile": profile,
                           "split": ", ".join(splits),
                           "missing_images": missing_note(missing),
                           "vs_paper": paper_difference(paper, spec, values, profile),
                           "intervals": intervals, **values})
    return table


def _fmt(value: Any, decimals: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value)


def _bounds(row: Mapping[str, Any], key: str, decimals: int) -> list[str]:
    low_high = (row.get("intervals") or {}).get(key)
    return [_fmt(v, decimals) for v in low_high] if low_high else ["", ""]


def _cell(row: Mapping[str, Any], key: str, decimals: int) -> str:
    """The value, and its 95 % interval where the row has one: ``52.60 [51.10, 54.05]``."""
    value = _fmt(row[key], decimals)
    low, high = _bounds(row, key, decimals)
    return f"{value} [{low}, {high}]" if low else value


def to_csv(table: Table) -> str:
    """One column per metric (the value) and ``<metric>_low`` / ``<metric>_high`` (its
    95 % bootstrap interval over queries; empty for the paper's rows)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = table.metric_keys
    writer.writerow([*META_COLUMNS, *keys,
                     *(f"{k}_{side}" for k in keys for side in ("low", "high"))])
    decimals = table.paper.decimals
    for row in table.rows:
        writer.writerow([row[c] for c in META_COLUMNS]
                        + [_fmt(row[k], decimals) for k in keys]
                        + [b for k in keys for b in _bounds(row, k, decimals)])
    return buf.getvalue()


def _caption(table: Table) -> str:
    p = table.paper
    return (f"Table {p.number} of the QuRe paper ({p.source}) with the rows this workflow "
            "reproduced. Paper rows are real data as printed; reproduced rows state their "
            "data profile, backbone and split (synthetic rows use the mini backbone and "
            "are not comparable in absolute value), the queries and gallery images the "
            "missing-image policy left out, and on real data the largest difference from "
            f"the paper's row of the same method (flagged over {PAPER_TOLERANCE:g} point). "
            "Brackets: the 95 % percentile-bootstrap interval over queries (1,000 "
            "resamples of the saved per-query ranks).")


def to_markdown(table: Table) -> str:
    labels = [table.paper.column(k).label for k in table.metric_keys]
    head = ["Source", "Method", "Backbone", "Profile", "Split", "Missing images", "vs paper",
            *labels]
    lines = [f"**{table.name}**: {_caption(table)}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = [row[c] for c in META_COLUMNS]
        cells += [_cell(row, k, table.paper.decimals) for k in table.metric_keys]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def _latex_cell(row: Mapping[str, Any], key: str, decimals: int) -> str:
    low, high = _bounds(row, key, decimals)
    value = _fmt(row[key], decimals)
    return f"{value} {{\\scriptsize [{low}, {high}]}}" if low else value


def to_latex(table: Table) -> str:
    keys = table.metric_keys
    labels = [latex_escape(table.paper.column(k).label) for k in keys]
    spec = "lll" + "r" * len(keys)
    out = ["\\begin{table}[t]", "\\centering", "\\small",
           f"\\caption{{{latex_escape(_caption(table))}}}",
           f"\\label{{tab:{table.name}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
           " & ".join(["Method", "Backbone", "Profile", *labels]) + " \\\\", "\\midrule"]
    previous = None
    for row in table.rows:
        if previous == "paper" and row["source"] == "reproduced":
            out.append("\\midrule")
            out.append(f"\\multicolumn{{{3 + len(keys)}}}{{l}}{{\\emph{{Reproduced by "
                       "this workflow}}}} \\\\")
        previous = row["source"]
        cells = [latex_escape(str(row[c])) for c in ("method", "backbone", "profile")]
        cells += [_latex_cell(row, k, table.paper.decimals) for k in keys]
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    notes = [f"{row['method']} ({row['backbone']}): missing images {row['missing_images']}; "
             f"vs paper {row['vs_paper']}" for row in table.rows
             if row["source"] == "reproduced"]
    if notes:
        out += ["\\par\\footnotesize", *(latex_escape(n) + "\\\\" for n in notes)]
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


def write_table(table: Table, prefix: str | Path) -> list[Path]:
    """``prefix``.csv, .md and .tex, each written atomically."""
    prefix = Path(prefix)
    written = []
    for suffix, render in ((".csv", to_csv), (".md", to_markdown), (".tex", to_latex)):
        path = prefix.with_name(prefix.name + suffix)
        atomic_write_text(path, render(table))
        written.append(path)
    return written

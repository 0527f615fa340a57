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

META_COLUMNS = ("source", "method", "backbone", "profile", "split")


class TableInputError(QureError):
    """An evaluation file lacks a metric a table needs; the message names file and key."""


@dataclass(frozen=True)
class ReproducedRow:
    """One reproduced row: labels plus the evaluation file of each benchmark it needs."""

    method: str
    backbone: str
    evaluations: Mapping[str, str]  # benchmark -> evaluation JSON path


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
                           **{k: row.values[k] for k in paper.column_keys}})
    sources = column_benchmarks(paper)
    for spec in reproduced:
        values: dict[str, float] = {}
        profiles, splits = set(), []
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
            profiles.add(str(result.get("profile")))
            split = f"{benchmark}:{result.get('split')}"
            if split not in splits:
                splits.append(split)
        table.rows.append({"source": "reproduced", "method": spec.method,
                           "backbone": spec.backbone,
                           "profile": "+".join(sorted(profiles)),
                           "split": ", ".join(splits), **values})
    return table


def _fmt(value: Any, decimals: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value)


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*META_COLUMNS, *table.metric_keys])
    for row in table.rows:
        writer.writerow([row[c] for c in META_COLUMNS]
                        + [_fmt(row[k], table.paper.decimals) for k in table.metric_keys])
    return buf.getvalue()


def _caption(table: Table) -> str:
    p = table.paper
    return (f"Table {p.number} of the QuRe paper ({p.source}) with the rows this workflow "
            "reproduced. Paper rows are real data as printed; reproduced rows state their "
            "data profile, backbone and split (synthetic rows use the mini backbone and "
            "are not comparable in absolute value).")


def to_markdown(table: Table) -> str:
    labels = [table.paper.column(k).label for k in table.metric_keys]
    head = ["Source", "Method", "Backbone", "Profile", "Split", *labels]
    lines = [f"**{table.name}**: {_caption(table)}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = [row[c] for c in META_COLUMNS]
        cells += [_fmt(row[k], table.paper.decimals) for k in table.metric_keys]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


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
        cells += [_fmt(row[k], table.paper.decimals) for k in keys]
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
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

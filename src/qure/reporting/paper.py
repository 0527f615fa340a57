"""The QuRe paper's reported numbers (ICML 2025, Tables 2-8) as typed, validated tables.

The numbers live in ``paper_results.yaml`` beside this module, transcribed by hand from
the paper; :func:`load_paper_tables` reads and validates them and returns one
:class:`PaperTable` per paper table, keyed by id (``"table2_fashioniq"``, ...), in paper
order. Values are the numbers exactly as printed (``None`` for a dash or missing cell);
every number in Tables 2-8 is a percentage. Metric keys follow :mod:`qure.metrics`
(``dress_R@10``, ``average_recall``, ``R_subset@1``, ``avg``, ``mAP@5``), except
``preference_rate``, which the paper prints in percent while
:func:`qure.metrics.hp_preference_rates` returns fractions.

Validation is strict: an unknown or missing key, a value for an undeclared column, a
non-numeric value, more decimals than the table's printed precision, a duplicate table id
or number, or a duplicate ``(method, backbone)`` row raises :class:`PaperReferenceError`
naming the table and row.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from qure.errors import QureError

SCHEMA_VERSION = 1
RESOURCE_NAME = "paper_results.yaml"

_TOP_REQUIRED = frozenset({"schema_version", "paper", "tables"})
_PAPER_REQUIRED = frozenset({"title", "venue", "file"})
_PAPER_OPTIONAL = frozenset({"authors"})
_TABLE_REQUIRED = frozenset(
    {"id", "number", "caption", "source", "dataset", "split", "decimals", "columns", "rows"})
_TABLE_OPTIONAL = frozenset({"notes"})
_SOURCE_REQUIRED = frozenset({"section", "lines"})
_SOURCE_OPTIONAL = frozenset({"row_lines"})
_COLUMN_REQUIRED = frozenset({"key", "label", "unit"})
_COLUMN_OPTIONAL = frozenset({"dataset", "split"})
_ROW_REQUIRED = frozenset({"method", "backbone", "values"})
_ROW_OPTIONAL = frozenset({"printed_as", "notes", "second_best"})

_ANY = object()  # sentinel: "any backbone" in PaperTable.row()


class PaperReferenceError(QureError, ValueError):
    """The paper-results file is malformed; the message names the table and row."""


@dataclass(frozen=True)
class PaperSource:
    """Where a table comes from: the paper and the place in its markdown transcript."""

    title: str
    venue: str
    file: str
    section: str
    lines: str
    row_lines: str | None = None
    authors: str | None = None

    def __str__(self) -> str:
        return (f"{self.title} ({self.venue}), Section {self.section}; "
                f"{self.file} lines {self.lines}")


@dataclass(frozen=True)
class PaperColumn:
    """One metric column: ``key`` as in :mod:`qure.metrics`, display ``label`` and unit.

    ``dataset`` and ``split`` are the column's own where the table mixes datasets
    (Table 8), otherwise the table's.
    """

    key: str
    label: str
    unit: str
    dataset: str
    split: str | None


@dataclass(frozen=True)
class PaperRow:
    """One printed row: the method, its backbone as the paper states it, and its values."""

    method: str
    backbone: str | None
    values: Mapping[str, float | None]
    printed_as: str
    notes: str | None = None
    second_best: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``"QuRe (BLIP-2)"``, or the bare method name when no backbone is stated."""
        return self.method if self.backbone is None else f"{self.method} ({self.backbone})"


@dataclass(frozen=True)
class PaperTable:
    """One paper table: columns in printed order, rows in printed order."""

    id: str
    number: int
    caption: str
    source: PaperSource
    dataset: str
    split: str | None
    decimals: int
    columns: tuple[PaperColumn, ...]
    rows: tuple[PaperRow, ...]
    notes: str | None = None

    @property
    def column_keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.columns)

    def column(self, key: str) -> PaperColumn:
        for col in self.columns:
            if col.key == key:
                return col
        raise KeyError(f"table {self.id!r} has no column {key!r}; columns: "
                       f"{', '.join(self.column_keys)}")

    def rows_for(self, method: str) -> tuple[PaperRow, ...]:
        """All rows of ``method`` (several in Tables 6-8, one per backbone)."""
        return tuple(r for r in self.rows if r.method == method)

    def row(self, method: str, backbone: Any = _ANY) -> PaperRow:
        """The row of ``method`` (and ``backbone``, which may be ``None``).

        Without ``backbone`` the method must have exactly one row in this table.
        """
        rows = self.rows_for(method)
        if backbone is not _ANY:
            rows = tuple(r for r in rows if r.backbone == backbone)
        if len(rows) == 1:
            return rows[0]
        known = ", ".join(r.label for r in self.rows)
        want = method if backbone is _ANY else f"{method} (backbone {backbone!r})"
        if not rows:
            raise KeyError(f"table {self.id!r} has no row {want}; rows: {known}")
        raise KeyError(f"table {self.id!r} has {len(rows)} rows for {want}; pass backbone "
                       f"(one of {', '.join(repr(r.backbone) for r in rows)})")

    def value(self, method: str, key: str, backbone: Any = _ANY) -> float | None:
        self.column(key)
        return self.row(method, backbone).values[key]

    def format_value(self, value: float | None) -> str:
        """A value as the paper prints it (``23.6`` -> ``"23.60"``); ``None`` -> ``"-"``."""
        return "-" if value is None else f"{value:.{self.decimals}f}"


# ----------------------------------------------------------------------------- parsing


def _fail(origin: str, where: str, message: str) -> PaperReferenceError:
    return PaperReferenceError(f"{origin}: {where}: {message}")


def _check_keys(obj: Any, required: frozenset[str], optional: frozenset[str],
                origin: str, where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _fail(origin, where, f"expected a mapping, got {type(obj).__name__}")
    unknown = sorted(str(k) for k in obj if k not in required | optional)
    if unknown:
        raise _fail(origin, where, f"unknown key(s) {', '.join(unknown)}; allowed: "
                    f"{', '.join(sorted(required | optional))}")
    missing = sorted(required - set(obj))
    if missing:
        raise _fail(origin, where, f"missing key(s) {', '.join(missing)}")
    return obj


def _str(obj: Mapping[str, Any], key: str, origin: str, where: str,
         nullable: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value.strip():
        kind = "a non-empty string" + (" or null" if nullable else "")
        raise _fail(origin, where, f"{key!r} must be {kind}, got {value!r}")
    return value.strip()


def _int(obj: Mapping[str, Any], key: str, origin: str, where: str, minimum: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(origin, where, f"{key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(value: Any, decimals: int, origin: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(origin, where, f"value must be a number or null, got {value!r} "
                    f"({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise _fail(origin, where, f"value must be finite, got {value!r}")
    if abs(round(number, decimals) - number) > 1e-9:
        raise _fail(origin, where, f"value {value!r} has more than the table's "
                    f"{decimals} printed decimals")
    return number


def _parse_columns(raw: Any, table: Mapping[str, Any], origin: str,
                   where: str) -> tuple[PaperColumn, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(origin, where, "'columns' must be a non-empty list")
    columns: list[PaperColumn] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        cwhere = f"{where} column {i}"
        col = _check_keys(item, _COLUMN_REQUIRED, _COLUMN_OPTIONAL, origin, cwhere)
        key = _str(col, "key", origin, cwhere)
        assert key is not None
        cwhere = f"{where} column {key!r}"
        if key in seen:
            raise _fail(origin, cwhere, "duplicate column key")
        seen.add(key)
        dataset = _str(col, "dataset", origin, cwhere) if "dataset" in col else table["dataset"]
        split = _str(col, "split", origin, cwhere, nullable=True) if "split" in col \
            else table["split"]
        columns.append(PaperColumn(key=key, label=_str(col, "label", origin, cwhere) or "",
                                   unit=_str(col, "unit", origin, cwhere) or "",
                                   dataset=dataset, split=split))
    return tuple(columns)


def _parse_row(item: Any, index: int, columns: tuple[PaperColumn, ...], decimals: int,
               origin: str, where: str) -> PaperRow:
    rwhere = f"{where} row {index}"
    if isinstance(item, Mapping) and isinstance(item.get("method"), str):
        rwhere = f"{rwhere} ({item['method']!r}, backbone {item.get('backbone')!r})"
    row = _check_keys(item, _ROW_REQUIRED, _ROW_OPTIONAL, origin, rwhere)
    method = _str(row, "method", origin, rwhere)
    backbone = _str(row, "backbone", origin, rwhere, nullable=True)
    printed_as = _str(row, "printed_as", origin, rwhere) if "printed_as" in row else method
    notes = _str(row, "notes", origin, rwhere, nullable=True)
    keys = [c.key for c in columns]
    raw_values = row["values"]
    if not isinstance(raw_values, Mapping):
        raise _fail(origin, rwhere, f"'values' must be a mapping, got {raw_values!r}")
    undeclared = sorted(str(k) for k in raw_values if k not in keys)
    if undeclared:
        raise _fail(origin, rwhere, f"value(s) for undeclared column(s) "
                    f"{', '.join(undeclared)}; declared: {', '.join(keys)}")
    absent = [k for k in keys if k not in raw_values]
    if absent:
        raise _fail(origin, rwhere, f"no value for column(s) {', '.join(absent)} "
                    "(write null for a dash or missing cell)")
    values = {k: _number(raw_values[k], decimals, origin, f"{rwhere} column {k!r}")
              for k in keys}
    raw_marks = row.get("second_best", [])
    if not isinstance(raw_marks, list) or any(m not in keys for m in raw_marks):
        raise _fail(origin, rwhere, f"'second_best' must list declared columns, got "
                    f"{raw_marks!r}")
    return PaperRow(method=method or "", backbone=backbone,
                    values=MappingProxyType(values), printed_as=printed_as or "",
                    notes=notes, second_best=tuple(raw_marks))


def _parse_table(item: Any, index: int, paper: Mapping[str, Any], origin: str) -> PaperTable:
    where = f"table {index}"
    if isinstance(item, Mapping) and isinstance(item.get("id"), str):
        where = f"table {item['id']!r}"
    raw = _check_keys(item, _TABLE_REQUIRED, _TABLE_OPTIONAL, origin, where)
    table_id = _str(raw, "id", origin, where) or ""
    number = _int(raw, "number", origin, where, minimum=1)
    decimals = _int(raw, "decimals", origin, where, minimum=0)
    dataset = _str(raw, "dataset", origin, where)
    split = _str(raw, "split", origin, where, nullable=True)
    src = _check_keys(raw["source"], _SOURCE_REQUIRED, _SOURCE_OPTIONAL, origin,
                      f"{where} source")
    source = PaperSource(
        title=paper["title"], venue=paper["venue"], file=paper["file"],
        authors=paper.get("authors"),
        section=_str(src, "section", origin, f"{where} source") or "",
        lines=str(src["lines"]),
        row_lines=None if src.get("row_lines") is None else str(src["row_lines"]))
    columns = _parse_columns(raw["columns"], {"dataset": dataset, "split": split}, origin,
                             where)
    if not isinstance(raw["rows"], list) or not raw["rows"]:
        raise _fail(origin, where, "'rows' must be a non-empty list")
    rows: list[PaperRow] = []
    seen: set[tuple[str, str | None]] = set()
    for i, item_row in enumerate(raw["rows"]):
        row = _parse_row(item_row, i, columns, decimals, origin, where)
        ident = (row.method, row.backbone)
        if ident in seen:
            raise _fail(origin, f"{where} row {i}", f"duplicate row (method {row.method!r}, "
                        f"backbone {row.backbone!r})")
        seen.add(ident)
        rows.append(row)
    return PaperTable(id=table_id, number=number,
                      caption=_str(raw, "caption", origin, where) or "", source=source,
                      dataset=dataset or "", split=split, decimals=decimals,
                      columns=columns, rows=tuple(rows),
                      notes=_str(raw, "notes", origin, where, nullable=True))


def parse_paper_tables(source: str | os.PathLike[str],
                       origin: str | None = None) -> dict[str, PaperTable]:
    """Parse and validate a paper-results document.

    ``source`` is a path (``os.PathLike``) or the YAML text itself (``str``); ``origin``
    names it in error messages. Returns the tables by id, in file order.
    """
    if isinstance(source, os.PathLike):
        path = Path(source)
        origin = origin or str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PaperReferenceError(f"{origin}: cannot read: {exc}") from exc
    else:
        text = source
        origin = origin or "<string>"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PaperReferenceError(f"{origin}: invalid YAML: {exc}") from exc
    top = _check_keys(doc, _TOP_REQUIRED, frozenset(), origin, "top level")
    if top["schema_version"] != SCHEMA_VERSION:
        raise _fail(origin, "top level", f"schema_version {top['schema_version']!r} is not "
                    f"{SCHEMA_VERSION}")
    paper = _check_keys(top["paper"], _PAPER_REQUIRED, _PAPER_OPTIONAL, origin, "paper")
    for key in sorted(_PAPER_REQUIRED | _PAPER_OPTIONAL):
        if key in paper:
            _str(paper, key, origin, "paper")
    if not isinstance(top["tables"], list) or not top["tables"]:
        raise _fail(origin, "top level", "'tables' must be a non-empty list")
    tables: dict[str, PaperTable] = {}
    numbers: dict[int, str] = {}
    for i, item in enumerate(top["tables"]):
        table = _parse_table(item, i, paper, origin)
        if table.id in tables:
            raise _fail(origin, f"table {i}", f"duplicate table id {table.id!r}")
        if table.number in numbers:
            raise _fail(origin, f"table {table.id!r}", f"duplicate table number "
                        f"{table.number} (also {numbers[table.number]!r})")
        tables[table.id] = table
        numbers[table.number] = table.id
    return tables


@functools.cache
def _load_packaged() -> dict[str, PaperTable]:
    resource = resources.files("qure.reporting").joinpath(RESOURCE_NAME)
    return parse_paper_tables(resource.read_text(encoding="utf-8"),
                              origin=f"qure.reporting/{RESOURCE_NAME}")


def load_paper_tables() -> dict[str, PaperTable]:
    """All paper tables by id, in paper order (a fresh dict; the tables are immutable)."""
    return dict(_load_packaged())


def paper_table(table_id: str | int) -> PaperTable:
    """One paper table by id (``"table3_cirr"``) or by number (``3`` or ``"3"``)."""
    tables = _load_packaged()
    if table_id in tables:
        return tables[table_id]
    for table in tables.values():
        if str(table.number) == str(table_id):
            return table
    raise KeyError(f"no paper table {table_id!r}; known: {', '.join(tables)}")


def table_ids() -> Iterable[str]:
    return tuple(_load_packaged())


__all__ = ["PaperColumn", "PaperReferenceError", "PaperRow", "PaperSource", "PaperTable",
           "load_paper_tables", "paper_table", "parse_paper_tables", "table_ids"]

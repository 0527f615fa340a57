"""Percentile-bootstrap intervals over queries for every reported metric, from saved records.

An evaluation keeps *per-query records* (:func:`per_query_records`): the per-query numbers
its dataset's metrics are made of, computed with :mod:`qure.metrics` itself, so that
:func:`metrics_from_records` on all queries returns exactly the floats the evaluation
reports. :func:`bootstrap_intervals` resamples the queries with replacement and takes the
percentile interval of every metric; :func:`paired_difference_intervals` applies the same
resamples to two methods' records on the same queries and gives the interval of ``a - b``.

Record formats (plain JSON-able dicts; ``query_ids`` may be ``None``):

* ``fashioniq``: ``{"dataset", "ks", "ranks": {category: [0-based target rank]},
  "query_ids": {category: [id]}}``;
* ``cirr``: ``{"dataset", "ks", "subset_ks", "ranks": [rank, reference excluded],
  "subset_ranks": [rank among the img_set members], "query_ids": [id]}``;
* ``circo``: ``{"dataset", "ks", "ap": {str(k): [AP@k fraction]},
  "hit": {str(k): [0/1 primary target in top k]}, "query_ids": [id]}``;
* ``hp_fashioniq``: ``{"dataset", "set1": [set score], "set2": [set score],
  "preferred": [1 or 2], "query_ids": [id]}`` (one entry per comparison).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from qure.metrics import (
    CIRCO_KS,
    CIRR_KS,
    CIRR_SUBSET_KS,
    FASHIONIQ_KS,
    circo_per_query,
    fashioniq_summary,
    hp_preference_rates,
    hp_set_scores,
    subset_ranks,
    target_ranks,
)

DATASETS = ("fashioniq", "cirr", "circo", "hp_fashioniq")
_QUERIES = "queries"  # the one resampling unit of every dataset but FashionIQ
_BLOCK_ELEMENTS = 1 << 22  # resample weights held at once (32 MiB of float64)
_HP_COUNTS = ("released_conditioned", "released_preferred", "symmetric_decided",
              "symmetric_agreed", "n_comparisons", "n_ties")


class Interval(NamedTuple):
    """A point estimate on all queries and its bootstrap interval [low, high]."""

    point: float
    low: float
    high: float


# --- records -------------------------------------------------------------------------------

def _ks(ks: Sequence[int], name: str = "ks") -> list[int]:
    out = [int(k) for k in ks]
    if not out or any(k < 1 for k in out):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {out}")
    return out


def _list(values: Any) -> list:
    return torch.as_tensor(values).cpu().tolist()


def _ids(query_ids: Sequence[Any] | None, n: int, where: str) -> list[str] | None:
    if query_ids is None:
        return None
    ids = [str(q) for q in query_ids]
    if len(ids) != n:
        raise ValueError(f"{where}: {len(ids)} query ids for {n} queries")
    return ids


def _fashioniq_records(per_category, ks=FASHIONIQ_KS, *, query_ids=None, chunk_size=None):
    if not per_category:
        raise ValueError("per_category is empty")
    ranks = {}
    for category, (scores, target_index) in per_category.items():
        try:
            ranks[category] = _list(target_ranks(scores, target_index, chunk_size=chunk_size))
        except ValueError as err:
            raise ValueError(f"FashionIQ category {category!r}: {err}") from err
    ids = None
    if query_ids is not None:
        if set(query_ids) != set(ranks):
            raise ValueError(f"query_ids categories {sorted(query_ids)} != {sorted(ranks)}")
        ids = {c: _ids(query_ids[c], len(r), f"FashionIQ {c!r}") for c, r in ranks.items()}
    return {"dataset": "fashioniq", "ks": _ks(ks), "ranks": ranks, "query_ids": ids}


def _cirr_records(scores, target_index, reference_index, member_index, ks=CIRR_KS,
                  subset_ks=CIRR_SUBSET_KS, *, query_ids=None, chunk_size=None):
    ranks = _list(target_ranks(scores, target_index, reference_index, chunk_size=chunk_size))
    group = _list(subset_ranks(scores, target_index, member_index, reference_index))
    return {"dataset": "cirr", "ks": _ks(ks), "subset_ks": _ks(subset_ks, "subset_ks"),
            "ranks": ranks, "subset_ranks": group, "query_ids": _ids(query_ids, len(ranks), "CIRR")}


def _circo_records(scores, ground_truth, ks=CIRCO_KS, *, query_ids=None, chunk_size=None):
    aps, hits = circo_per_query(scores, ground_truth, ks, chunk_size=chunk_size)
    n = len(next(iter(aps.values())))
    return {"dataset": "circo", "ks": list(aps), "ap": {str(k): _list(v) for k, v in aps.items()},
            "hit": {str(k): _list(v) for k, v in hits.items()},
            "query_ids": _ids(query_ids, n, "CIRCO")}


def _hp_records(set1_scores, set2_scores, preferred, *, query_ids=None):
    hp_preference_rates(set1_scores, set2_scores, preferred)  # validates shapes and choices
    m1 = _list(hp_set_scores(set1_scores, "set1_scores"))
    return {"dataset": "hp_fashioniq", "set1": m1,
            "set2": _list(hp_set_scores(set2_scores, "set2_scores")),
            "preferred": _list(preferred), "query_ids": _ids(query_ids, len(m1), "HP-FashionIQ")}


_RECORDERS = {"fashioniq": _fashioniq_records, "cirr": _cirr_records,
              "circo": _circo_records, "hp_fashioniq": _hp_records}


def per_query_records(dataset: str, *args: Any, query_ids: Any = None,
                      **kwargs: Any) -> dict[str, Any]:
    """Per-query records of one evaluation (format in the module docstring).

    Takes the arguments of the dataset's metric function in :mod:`qure.metrics`:
    ``fashioniq``: ``(per_category, ks=FASHIONIQ_KS, *, chunk_size)`` as
    ``fashioniq_metrics``; ``cirr``: ``(scores, target_index, reference_index,
    member_index, ks, subset_ks, *, chunk_size)`` as ``cirr_metrics``; ``circo``:
    ``(scores, ground_truth, ks, *, chunk_size)`` as ``circo_metrics``; ``hp_fashioniq``:
    ``(set1_scores, set2_scores, preferred)`` as ``hp_preference_rates``. ``query_ids``
    (``{category: ids}`` for FashionIQ) name the queries so that paired comparisons can
    check they are the same. Ranks come from ``target_ranks``/``subset_ranks``, AP and hits
    from ``circo_per_query``, set scores from ``hp_set_scores``.
    """
    if dataset not in _RECORDERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    return _RECORDERS[dataset](*args, query_ids=query_ids, **kwargs)


def _columns(dataset: str, records: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Per resampling unit (FashionIQ category, else ``"queries"``), per-query columns."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if records.get("dataset") != dataset:
        raise ValueError(f"records are for {records.get('dataset')!r}, not {dataset!r}")
    if dataset == "fashioniq":
        if not records["ranks"]:
            raise ValueError("FashionIQ records have no category")
        units = {c: {f"R@{k}": np.asarray(r, dtype=np.int64) < k for k in records["ks"]}
                 for c, r in records["ranks"].items()}
    elif dataset == "cirr":
        ranks = np.asarray(records["ranks"], dtype=np.int64)
        group = np.asarray(records["subset_ranks"], dtype=np.int64)
        units = {_QUERIES: {**{f"R@{k}": ranks < k for k in records["ks"]},
                            **{f"R_subset@{k}": group < k for k in records["subset_ks"]}}}
    elif dataset == "circo":
        ks = records["ks"]
        units = {_QUERIES: {**{f"mAP@{k}": np.asarray(records["ap"][str(k)], float) for k in ks},
                            **{f"R@{k}": np.asarray(records["hit"][str(k)], float) for k in ks}}}
    else:
        m1, m2 = np.asarray(records["set1"], float), np.asarray(records["set2"], float)
        pref = np.asarray(records["preferred"], dtype=np.int64)
        if not (m1.shape == m2.shape == pref.shape):
            raise ValueError(f"set1, set2 and preferred lengths differ: {m1.shape}, "
                             f"{m2.shape}, {pref.shape}")
        first, second = m1 > m2, m2 > m1
        units = {_QUERIES: {"first": first, "second": second, "released": first & (pref == 1),
                            "agreed": (first & (pref == 1)) | (second & (pref == 2)),
                            "one": np.ones(pref.shape, dtype=bool)}}
    ids = records.get("query_ids")
    for unit, cols in units.items():
        lengths = {name: len(col) for name, col in cols.items()}
        if ids is not None:
            lengths["query_ids"] = len(ids[unit] if dataset == "fashioniq" else ids)
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"{dataset} records ({unit}): empty or unequal columns {lengths}")
    return units


# --- metrics from records ------------------------------------------------------------------

class _Reducer:
    """Sums/means of per-query columns: over all queries exactly as :mod:`qure.metrics`
    does (torch float64 mean) when ``weights`` is None, else for each row of [B, n] query
    multiplicities (one row per resample, vectorised)."""

    def __init__(self, weights: np.ndarray | None = None):
        self.weights = weights
        self.size = None if weights is None else weights.sum(1)

    def mean(self, col: np.ndarray) -> Any:
        if self.weights is None:
            return float(torch.from_numpy(np.ascontiguousarray(col, dtype=np.float64)).mean())
        return self.total(col) / self.size

    def total(self, col: np.ndarray) -> Any:
        if self.weights is None:
            return int(np.count_nonzero(col))  # only 0/1 columns are totalled
        # einsum, not BLAS: a threaded matvec stalls when torch's threads hold the cores.
        return np.einsum("bq,q->b", self.weights, col.astype(np.float64))


def _ratio(num: Any, den: Any) -> Any:
    if np.ndim(den) == 0:
        return num / den if den else 0.0
    return np.divide(num, den, out=np.zeros(np.shape(den)), where=den > 0)


def _metrics(dataset: str, records: Mapping[str, Any], units: Mapping[str, Mapping],
             red: Mapping[str, Any]) -> dict[str, Any]:
    """The metric dict of :mod:`qure.metrics` (same keys, order and arithmetic)."""
    if dataset == "fashioniq":
        ks = records["ks"]
        return fashioniq_summary({category: {k: red[category].mean(cols[f"R@{k}"]) * 100.0
                                             for k in ks}
                                  for category, cols in units.items()}, ks)
    cols, r = units[_QUERIES], red[_QUERIES]
    if dataset in ("cirr", "circo"):
        out = {name: r.mean(col) * 100.0 for name, col in cols.items()}
        if dataset == "cirr" and "R@5" in out and "R_subset@1" in out:
            out["avg"] = (out["R@5"] + out["R_subset@1"]) / 2
        return out
    conditioned, preferred = r.total(cols["first"]), r.total(cols["released"])
    decided, agreed = conditioned + r.total(cols["second"]), r.total(cols["agreed"])
    n = r.total(cols["one"])
    out = {"released_preference_ratio": _ratio(preferred, conditioned),
           "released_conditioned": conditioned, "released_preferred": preferred,
           "symmetric_preference_ratio": _ratio(agreed, decided), "symmetric_decided": decided,
           "symmetric_agreed": agreed, "n_comparisons": n, "n_ties": n - decided}
    # As qure.stages.evaluate.evaluate_hp adds them: the tables' percentages.
    out["preference_rate"] = 100.0 * out["released_preference_ratio"]
    out["symmetric_preference_rate"] = 100.0 * out["symmetric_preference_ratio"]
    return out


def _weights_of(index: Any, n: int, where: str) -> np.ndarray:
    idx = np.asarray(index)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{where}: index must be a non-empty 1-D integer array")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{where}: index values must lie in 0..{n - 1}")
    return np.bincount(idx, minlength=n)[None, :].astype(np.float64)


def metrics_from_records(dataset: str, records: Mapping[str, Any],
                         index: Any = None) -> dict[str, float | int]:
    """The dataset's metric dict from its records, as :mod:`qure.metrics` reports it.

    Without ``index`` the result equals ``fashioniq_metrics`` / ``cirr_metrics`` /
    ``circo_metrics`` / ``hp_preference_rates`` (plus ``evaluate_hp``'s
    ``preference_rate`` and ``symmetric_preference_rate`` in percent) bit for bit.
    ``index`` evaluates a resample: query positions (repeats allowed) for CIRR, CIRCO and
    HP-FashionIQ; for FashionIQ a ``{category: positions}`` mapping, since queries are
    resampled *within* each category so that every category recall and the category means
    stay defined. Recalls and counts are then still exact; means of AP may differ from
    torch's summation order in the last bits.
    """
    units = _columns(dataset, records)
    if index is None:
        return _metrics(dataset, records, units, {u: _Reducer() for u in units})
    if dataset != "fashioniq":
        index = {_QUERIES: index}
    elif not isinstance(index, Mapping) or set(index) != set(units):
        raise ValueError(f"FashionIQ index must map each category {list(units)} to positions")
    red = {u: _Reducer(_weights_of(index[u], len(next(iter(cols.values()))), f"{dataset} {u}"))
           for u, cols in units.items()}
    out = _metrics(dataset, records, units, red)
    return {k: int(v[0]) if k in _HP_COUNTS else float(v[0]) for k, v in out.items()}


# --- bootstrap -----------------------------------------------------------------------------

def _resample_weights(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """[b, n] multiplicities of ``b`` resamples of ``n`` queries drawn with replacement."""
    idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _bootstrap(dataset: str, all_records: Sequence[Mapping[str, Any]], n_resamples: int,
               level: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, np.ndarray]]]:
    """Point metrics and [n_resamples] metric samples of each records, on shared resamples."""
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    prepared = [_columns(dataset, r) for r in all_records]
    sizes = {u: len(next(iter(cols.values()))) for u, cols in prepared[0].items()}
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // max(sizes.values()))
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in all_records]
    for start in range(0, int(n_resamples), block):
        b = min(block, int(n_resamples) - start)
        red = {u: _Reducer(_resample_weights(rng, n, b)) for u, n in sizes.items()}
        for part, records, units in zip(parts, all_records, prepared, strict=True):
            part.append(_metrics(dataset, records, units, red))
    points = [_metrics(dataset, r, u, {k: _Reducer() for k in u})
              for r, u in zip(all_records, prepared, strict=True)]
    samples = [{k: np.concatenate([p[k] for p in part]) for k in part[0]} for part in parts]
    return points, samples


def _interval(point: float, samples: np.ndarray, level: float) -> Interval:
    low, high = np.quantile(samples, [(1.0 - level) / 2, (1.0 + level) / 2])
    return Interval(float(point), float(low), float(high))


def bootstrap_intervals(dataset: str, records: Mapping[str, Any], *, n_resamples: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """Percentile bootstrap over queries: ``{metric: Interval(point, low, high)}``.

    ``point`` is :func:`metrics_from_records` on all queries; each resample draws the
    queries with replacement (FashionIQ: within each category) from
    ``numpy.random.default_rng(seed)``, and ``low``/``high`` are the ``(1 -+ level) / 2``
    quantiles (numpy's linear method) of the metric over ``n_resamples`` resamples.
    """
    (point,), (samples,) = _bootstrap(dataset, [records], n_resamples, level, seed)
    return {k: _interval(point[k], samples[k], level) for k in point}


def _check_paired(dataset: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    for key in ("dataset", "ks", "subset_ks"):
        if a.get(key) != b.get(key):
            raise ValueError(f"records disagree in {key}: {a.get(key)} vs {b.get(key)}")
    units_a, units_b = _columns(dataset, a), _columns(dataset, b)
    if list(units_a) != list(units_b):
        raise ValueError(f"records disagree in categories: {list(units_a)} vs {list(units_b)}")
    for unit in units_a:
        n_a, n_b = (len(next(iter(u[unit].values()))) for u in (units_a, units_b))
        if n_a != n_b:
            raise ValueError(f"records disagree in query count ({unit}): {n_a} vs {n_b}")
        ids_a, ids_b = a.get("query_ids"), b.get("query_ids")
        if dataset == "fashioniq" and ids_a is not None and ids_b is not None:
            ids_a, ids_b = ids_a[unit], ids_b[unit]
        if ids_a is not None and ids_b is not None and list(ids_a) != list(ids_b):
            at = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)) if x != y)
            raise ValueError(f"records disagree in query ids ({unit}) at position {at}: "
                             f"{ids_a[at]!r} vs {ids_b[at]!r}")


def paired_difference_intervals(dataset: str, records_a: Mapping[str, Any],
                                records_b: Mapping[str, Any], *, n_resamples: int = 1000,
                                level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """Paired bootstrap of ``a - b`` for every metric, on the same resamples of the same queries.

    Both records must be of the same dataset, K values, categories and query counts, and
    (where both carry them) the same query ids in the same order; ValueError names the
    first mismatch. ``point`` is the difference of the full-query metrics.
    """
    _check_paired(dataset, records_a, records_b)
    (pa, pb), (sa, sb) = _bootstrap(dataset, [records_a, records_b], n_resamples, level, seed)
    return {k: _interval(pa[k] - pb[k], sa[k] - sb[k], level) for k in pa}


__all__ = ["DATASETS", "Interval", "bootstrap_intervals", "metrics_from_records",
           "paired_difference_intervals", "per_query_records"]

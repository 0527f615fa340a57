"""Test-server submission files for CIRR and CIRCO, built from score matrices.

Rankings use the same stable tie rule as :mod:`qure.metrics` (equal scores: lower gallery
column first), so a submission lists exactly the order :func:`qure.metrics.target_ranks`
scores. Files are written atomically with sorted keys and no indentation: CIRR's upload
limit is 5 MB, which an indented 4,148-query file would exceed.

Formats (see the dataset notes, sections 2.5 and 3.4):

* CIRR (Cuberick-Orion/CIRR ``Test-split_server.md``; written like CLIP4Cir
  ``cirr_test_submission.py`` and QuRe ``evaluate_cirr.py``): two files,
  ``recall_submission_<name>.json`` = ``{"version": "rc2", "metric": "recall",
  "<pairid>": [50 names], ...}`` (reference removed) and
  ``recall_subset_submission_<name>.json`` = ``{"version": "rc2", "metric":
  "recall_subset", "<pairid>": [3 names], ...}`` (img_set members, reference removed).
* CIRCO (https://circo.micc.unifi.it/): ``{"<query id>": [50 unique int image ids]}``;
  ids are emitted as ints because the server's acceptance of strings is unconfirmed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from qure.io import atomic_write_json
from qure.metrics import Array, as_scores, ranked_members, stable_topk

CIRR_VERSION = "rc2"
CIRR_TOP_K = 50
CIRR_SUBSET_K = 3
CIRCO_TOP_K = 50
_CIRR_SPECIAL = ("version", "metric")


def _query_keys(ids: Sequence[Any], name: str, n_queries: int) -> list[str]:
    keys = [str(i) for i in ids]
    if len(keys) != n_queries:
        raise ValueError(f"{name} has {len(keys)} entries but scores has {n_queries} rows")
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"{name} repeats the id {key!r}")
        seen.add(key)
    return keys


def _check_gallery(names: Sequence[Any], n_columns: int, name: str) -> list[Any]:
    names = list(names)
    if len(names) != n_columns:
        raise ValueError(f"{name} has {len(names)} entries but scores has {n_columns} columns")
    return names


# --- CIRR ----------------------------------------------------------------------------------

def cirr_submissions(scores: Array, pair_ids: Sequence[Any], gallery_names: Sequence[str],
                     reference_index: Array, member_index: Array, *,
                     chunk_size: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two CIRR test-server dicts: ``(recall, recall_subset)``.

    Args:
        scores: [Q, N] over the ``split.rc2.test1.json`` corpus.
        pair_ids: [Q] CIRR ``pairid`` of each row (keys become ``str(pairid)``).
        gallery_names: [N] image names in column order (``Gallery.names``).
        reference_index: [Q] column of each reference (``CIRSplit.reference_indices()``).
        member_index: [Q, 6] img_set member columns (``CIRSplit.member_indices()``).

    Raises ValueError when fewer than 50 gallery images (3 members) remain once the
    reference is removed, or when ids/names/shapes disagree.
    """
    scores = as_scores(scores)
    n_queries, n_columns = scores.shape
    keys = _query_keys(pair_ids, "pair_ids", n_queries)
    if clash := [k for k in keys if k in _CIRR_SPECIAL]:
        raise ValueError(f"pair_ids may not be {clash[0]!r}, a reserved submission key")
    names = _check_gallery(gallery_names, n_columns, "gallery_names")
    if len(set(names)) != len(names):
        raise ValueError("gallery_names has duplicate names")
    reference = torch.as_tensor(reference_index)
    top = stable_topk(scores, CIRR_TOP_K, reference, chunk_size=chunk_size).cpu()
    if top.shape[1] < CIRR_TOP_K or bool((top < 0).any()):
        raise ValueError(f"the gallery has {n_columns} images: too few for {CIRR_TOP_K} "
                         "predictions once the reference is removed")
    subset = ranked_members(scores, member_index, reference).cpu()[:, :CIRR_SUBSET_K]
    short = (subset < 0).any(1) | (subset.shape[1] < CIRR_SUBSET_K)
    if bool(short.any()):
        row = int(torch.nonzero(short)[0, 0])
        raise ValueError(f"pair {keys[row]!r} has fewer than {CIRR_SUBSET_K} img_set members "
                         "besides the reference")
    reference = reference.cpu().long()
    if bool((top == reference[:, None]).any()):  # cannot happen; guards the format rule
        raise AssertionError("a reference survived into the recall list")
    recall: dict[str, Any] = {"version": CIRR_VERSION, "metric": "recall"}
    recall_subset: dict[str, Any] = {"version": CIRR_VERSION, "metric": "recall_subset"}
    for key, row, group in zip(keys, top.tolist(), subset.tolist(),
                               strict=True):
        recall[key] = [names[c] for c in row]
        recall_subset[key] = [names[c] for c in group]
    return recall, recall_subset


def validate_cirr_submission(submission: Mapping[str, Any], metric: str) -> None:
    """Check one CIRR dict: version/metric keys, list lengths 50 or 3, unique str names."""
    if metric not in ("recall", "recall_subset"):
        raise ValueError(f"metric must be 'recall' or 'recall_subset', got {metric!r}")
    if submission.get("version") != CIRR_VERSION:
        raise ValueError(f"{metric} submission: 'version' must be {CIRR_VERSION!r}, got "
                         f"{submission.get('version')!r}")
    if submission.get("metric") != metric:
        raise ValueError(f"{metric} submission: 'metric' must be {metric!r}, got "
                         f"{submission.get('metric')!r}")
    length = CIRR_TOP_K if metric == "recall" else CIRR_SUBSET_K
    pairs = {k: v for k, v in submission.items() if k not in _CIRR_SPECIAL}
    if not pairs:
        raise ValueError(f"{metric} submission has no pairs")
    for key, names in pairs.items():
        if not isinstance(key, str):
            raise ValueError(f"{metric} submission: key {key!r} is not a string")
        if (not isinstance(names, list) or len(names) != length
                or not all(isinstance(n, str) for n in names)):
            raise ValueError(f"{metric} submission, pair {key}: expected a list of {length} "
                             f"image names, got {names!r}")
        if len(set(names)) != length:
            raise ValueError(f"{metric} submission, pair {key}: repeated image names")


def write_cirr_submissions(directory: str | Path, name: str, recall: Mapping[str, Any],
                           recall_subset: Mapping[str, Any]) -> tuple[Path, Path]:
    """Validate both dicts, then write ``recall_submission_<name>.json`` and
    ``recall_subset_submission_<name>.json`` into ``directory`` (sorted keys, atomic).

    Returns the two paths (recall, recall_subset).
    """
    _check_file_stem(name)
    validate_cirr_submission(recall, "recall")
    validate_cirr_submission(recall_subset, "recall_subset")
    if set(recall) != set(recall_subset):
        raise ValueError("the recall and recall_subset submissions cover different pairs")
    directory = Path(directory)
    recall_path = atomic_write_json(directory / f"recall_submission_{name}.json",
                                    dict(recall), indent=None, sort_keys=True)
    subset_path = atomic_write_json(directory / f"recall_subset_submission_{name}.json",
                                    dict(recall_subset), indent=None, sort_keys=True)
    return recall_path, subset_path


def _check_file_stem(name: str) -> None:
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"submission name {name!r} must be a plain file-name part")


# --- CIRCO ---------------------------------------------------------------------------------

def circo_submission(scores: Array, query_ids: Sequence[Any], gallery_ids: Sequence[Any], *,
                     chunk_size: int | None = None) -> dict[str, list[int]]:
    """The CIRCO server dict ``{str(query_id): [50 int image ids]}``.

    The top 50 of the full gallery in stable descending order, reference kept (as in
    SEARLE and QuRe ``evaluate_circo.py``). ``gallery_ids`` are the column names (COCO
    ids as ``int`` or decimal strings, e.g. ``Gallery.names``). Raises ValueError if the
    gallery has fewer than 50 images or a predicted id is not an integer.
    """
    scores = as_scores(scores)
    n_queries, n_columns = scores.shape
    keys = _query_keys(query_ids, "query_ids", n_queries)
    ids = _check_gallery(gallery_ids, n_columns, "gallery_ids")
    if n_columns < CIRCO_TOP_K:
        raise ValueError(f"the gallery has {n_columns} images, fewer than the "
                         f"{CIRCO_TOP_K} predictions CIRCO requires")
    top = stable_topk(scores, CIRCO_TOP_K, chunk_size=chunk_size).cpu()
    out: dict[str, list[int]] = {}
    for key, row in zip(keys, top.tolist(), strict=True):
        out[key] = [_image_id(ids[c], c) for c in row]
        if len(set(out[key])) != CIRCO_TOP_K:
            raise ValueError(f"query {key}: gallery_ids repeat an image id among its top "
                             f"{CIRCO_TOP_K}")
    return out


def _image_id(raw: Any, column: int) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"gallery_ids[{column}] = {raw!r} is not an integer image id")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"gallery_ids[{column}] = {raw!r} is not an integer image id") from None
    if isinstance(raw, float) and raw != value:
        raise ValueError(f"gallery_ids[{column}] = {raw!r} is not an integer image id")
    return value


def validate_circo_submission(submission: Mapping[str, Any],
                              expected_query_ids: Sequence[Any] | None = None) -> None:
    """Check a CIRCO dict: str keys, lists of exactly 50 unique ints, and (if given) the
    exact set of query ids the server expects (all 800 test ids)."""
    if not submission:
        raise ValueError("CIRCO submission is empty")
    for key, ids in submission.items():
        if not isinstance(key, str):
            raise ValueError(f"CIRCO submission: key {key!r} is not a string")
        if (not isinstance(ids, list) or len(ids) != CIRCO_TOP_K
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            raise ValueError(f"CIRCO submission, query {key}: expected a list of "
                             f"{CIRCO_TOP_K} int image ids, got {ids!r}")
        if len(set(ids)) != CIRCO_TOP_K:
            raise ValueError(f"CIRCO submission, query {key}: repeated image ids")
    if expected_query_ids is not None:
        expected = {str(q) for q in expected_query_ids}
        missing = sorted(expected - set(submission))
        extra = sorted(set(submission) - expected)
        if missing or extra:
            raise ValueError(f"CIRCO submission query ids differ from the expected ones: "
                             f"missing {missing[:5]}, unexpected {extra[:5]}")


def write_circo_submission(path: str | Path, submission: Mapping[str, Any],
                           expected_query_ids: Sequence[Any] | None = None) -> Path:
    """Validate ``submission`` and write it to ``path`` atomically with sorted keys."""
    validate_circo_submission(submission, expected_query_ids)
    return atomic_write_json(path, dict(submission), indent=None, sort_keys=True)


__all__ = [
    "CIRCO_TOP_K", "CIRR_SUBSET_K", "CIRR_TOP_K", "CIRR_VERSION", "circo_submission",
    "cirr_submissions", "validate_circo_submission", "validate_cirr_submission",
    "write_circo_submission", "write_cirr_submissions",
]

"""Plain per-query NumPy oracle for the two-drops rule (strategy ``"qure"``).

A step-by-step transcription of the rule, one query at a time, against which
:mod:`qure.mining` is checked (``tests/test_mining.py``) and timed
(``benchmarks/mining.py``). Deliberately naive; not part of the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qure.mining import DEFAULT_FALLBACK, DEFAULT_FALLBACK_K

__all__ = ["reference_hard_negative_sets", "two_drops_reference"]


def two_drops_reference(
    row: np.ndarray,
    target: int,
    *,
    consecutive_threshold: int = 1,
    exclude: int | None = None,
    search_depth: int | None = None,
) -> np.ndarray | None:
    """The two-drops rule for one query, transcribed step by step; None if no pair.

    Returns the sorted columns of the set (target and ``exclude`` removed), or None
    when no pair of drops qualifies. Deliberately naive: one stable argsort, one diff,
    one stable argsort of the drops, and a Python loop over consecutive pairs.
    ``search_depth`` keeps only the first ``search_depth + 1`` items after the target.
    """
    row = np.asarray(row)
    order = np.argsort(-row, kind="stable")
    ranked = row[order]
    t = int(np.flatnonzero(order == target)[0])
    tail = ranked[t + 1 :] if search_depth is None else ranked[t + 1 : t + 2 + search_depth]
    with np.errstate(invalid="ignore"):
        drops = np.diff(tail)
    drops[tail[1:] == tail[:-1]] = 0
    drop_order = np.argsort(drops, kind="stable")
    for i in range(len(drop_order) - 1):
        a, b = int(drop_order[i]), int(drop_order[i + 1])
        if abs(b - a) > consecutive_threshold:
            a, b = min(a, b), max(a, b)
            cols = order[a + t + 2 : b + t + 2]
            cols = cols[(cols != target) & (cols != (-1 if exclude is None else exclude))]
            return np.sort(cols)
    return None


def reference_hard_negative_sets(
    scores: np.ndarray | torch.Tensor,
    target_index: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    exclude_index: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    consecutive_threshold: int = 1,
    fallback: str = DEFAULT_FALLBACK,
    fallback_k: int = DEFAULT_FALLBACK_K,
    search_depth: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-query loop over :func:`two_drops_reference` with the same fallback rule.

    Returns the list of sets and the boolean fallback flags.
    """
    scores = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    targets = np.asarray(target_index, dtype=np.int64)
    excludes = None if exclude_index is None else np.asarray(exclude_index, dtype=np.int64)
    sets: list[np.ndarray] = []
    flags = np.zeros(len(targets), dtype=bool)
    for i, target in enumerate(targets.tolist()):
        ex = None if excludes is None or excludes[i] < 0 else int(excludes[i])
        found = two_drops_reference(scores[i], target,
                                    consecutive_threshold=consecutive_threshold, exclude=ex,
                                    search_depth=search_depth)
        if found is None:
            flags[i] = True
            found = np.zeros(0, dtype=np.int64)
            if fallback == "after_target_topk":
                order = np.argsort(-scores[i], kind="stable")
                t = int(np.flatnonzero(order == target)[0])
                after = order[t + 1 :]
                if ex is not None:
                    after = after[after != ex]
                found = np.sort(after[:fallback_k])
        sets.append(found.astype(np.int64))
    return sets, flags

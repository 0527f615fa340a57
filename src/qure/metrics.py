"""Retrieval metrics for FashionIQ, CIRR, CIRCO and HP-FashionIQ, vectorised over queries.

Every ranking metric works on a score matrix ``scores[q, j]`` (higher = better) of shape
``[Q, N]`` whose columns are the gallery in :class:`qure.data.base.Gallery` order, with
query-side indices given as gallery columns (``CIRSplit.target_indices()``,
``reference_indices()``, ``ground_truth_indices()``, ``member_indices()``). Torch tensors
are used as they are (any device); numpy arrays and lists go through ``torch.as_tensor``.

Tie rule (used everywhere, submissions included): a ranking is the *stable* descending
sort of a row, so among equal scores the lower column comes first. The 0-based rank of
column ``t`` is therefore ``#{j: s_j > s_t} + #{j < t: s_j == s_t}`` over the columns
that take part in the ranking. The reference scripts break ties by whatever their
(unstable) argsort/topk returns; with real-valued model scores ties are vanishingly rare,
so fixing the rule only makes results reproducible, it does not change them.

Recall-type results are in percent (as every paper reports them); the HP-FashionIQ
preference ratios are fractions in [0, 1], as ``HP_FashionIQ/evaluate.py`` prints them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

Array = Any  # torch.Tensor, numpy.ndarray or a nested sequence of numbers

#: Elements of one [rows, N] working block; bounds memory for 800 x 123K CIRCO galleries.
DEFAULT_CHUNK_ELEMENTS = 1 << 24

FASHIONIQ_KS = (10, 50)
CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
CIRCO_KS = (5, 10, 25, 50)

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


# --- input checking ----------------------------------------------------------------------

def as_scores(scores: Array, name: str = "scores") -> torch.Tensor:
    """``scores`` as a 2-D real tensor; raises ValueError on a bad shape, dtype or NaN."""
    tensor = torch.as_tensor(scores)
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [queries, gallery] matrix, got shape "
                         f"{tuple(tensor.shape)}")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if tensor.shape[1] == 0:
        raise ValueError(f"{name} has an empty gallery (shape {tuple(tensor.shape)})")
    _check_no_nan(tensor, name)
    return tensor


def _check_no_nan(tensor: torch.Tensor, name: str) -> None:
    if tensor.is_floating_point() and bool(torch.isnan(tensor).any()):
        where = torch.nonzero(torch.isnan(tensor))[0].tolist()
        raise ValueError(f"{name} contains NaN (first at index {tuple(where)})")


def _as_index(index: Array, name: str, shape: tuple[int, ...], n_columns: int,
              device: torch.device, *, allow_missing: bool) -> torch.Tensor:
    """An integer tensor of gallery columns of the given shape (``-1`` = none if allowed)."""
    tensor = torch.as_tensor(index)
    if tensor.numel() == 0 and tensor.dtype not in _INT_DTYPES:
        tensor = tensor.long()
    if tensor.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must hold integer gallery columns, got dtype {tensor.dtype}")
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    tensor = tensor.to(device=device, dtype=torch.long)
    low = -1 if allow_missing else 0
    bad = (tensor < low) | (tensor >= n_columns)
    if bool(bad.any()):
        where = tuple(torch.nonzero(bad)[0].tolist())
        allowed = f"-1..{n_columns - 1}" if allow_missing else f"0..{n_columns - 1}"
        raise ValueError(f"{name}{list(where)} = {int(tensor[where])} is not a gallery "
                         f"column ({allowed})")
    return tensor


def _as_members(member_index: Array, n_queries: int, n_columns: int,
                device: torch.device) -> torch.Tensor:
    """[Q, M] member columns (``-1`` = padding), checked like any other index."""
    members = torch.as_tensor(member_index)
    if members.dim() != 2 or members.shape[0] != n_queries:
        raise ValueError(f"member_index must have shape [{n_queries}, n_members], got "
                         f"{tuple(members.shape)}")
    return _as_index(members, "member_index", tuple(members.shape), n_columns, device,
                     allow_missing=True)


def _check_not_excluded(target: torch.Tensor, exclude: torch.Tensor, target_name: str,
                        exclude_name: str) -> None:
    clash = target == exclude
    if bool(clash.any()):
        row = int(torch.nonzero(clash)[0, 0])
        raise ValueError(f"{target_name}[{row}] == {exclude_name}[{row}] == "
                         f"{int(target[row])}: the target cannot be the excluded column")


def _row_chunks(n_rows: int, n_columns: int, chunk_size: int | None) -> Iterator[slice]:
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // max(n_columns, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for start in range(0, n_rows, chunk_size):
        yield slice(start, min(start + chunk_size, n_rows))


def _check_ks(ks: Sequence[int], name: str = "ks") -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {ks}")
    return ks


# --- ranking primitives --------------------------------------------------------------------

def target_ranks(scores: Array, target_index: Array, exclude_index: Array | None = None,
                 *, chunk_size: int | None = None) -> torch.Tensor:
    """0-based rank of each query's target column under the stable descending order.

    ``exclude_index[q]`` (e.g. the CIRR reference) is dropped from row ``q``'s ranking
    before the rank is taken; ``-1`` means nothing to drop. Computed by comparing every
    column with the target's score (O(QN), no sort), ``chunk_size`` query rows at a time.

    Args:
        scores: [Q, N] similarities, higher is better.
        target_index: [Q] gallery column of each target.
        exclude_index: optional [Q] column to remove per query (``-1`` = none).
        chunk_size: query rows per block (default: about 16M elements per block).

    Returns:
        LongTensor [Q] on ``scores.device``: ``rank < k`` means "in the top k".
    """
    scores = as_scores(scores)
    n_queries, n_columns = scores.shape
    device = scores.device
    target = _as_index(target_index, "target_index", (n_queries,), n_columns, device,
                       allow_missing=False)
    exclude = None
    if exclude_index is not None:
        exclude = _as_index(exclude_index, "exclude_index", (n_queries,), n_columns, device,
                            allow_missing=True)
        _check_not_excluded(target, exclude, "target_index", "exclude_index")
    columns = torch.arange(n_columns, device=device)
    ranks = torch.empty(n_queries, dtype=torch.long, device=device)
    for rows in _row_chunks(n_queries, n_columns, chunk_size):
        block = scores[rows]
        t = target[rows, None]
        s_t = block.gather(1, t)
        ahead = (block > s_t) | ((block == s_t) & (columns < t))
        rank = ahead.sum(1)
        if exclude is not None:
            e = exclude[rows, None]
            s_e = block.gather(1, e.clamp(min=0))
            e_ahead = ((s_e > s_t) | ((s_e == s_t) & (e < t))) & (e >= 0)
            rank -= e_ahead.squeeze(1).long()
        ranks[rows] = rank
    return ranks


def subset_ranks(scores: Array, target_index: Array, member_index: Array,
                 exclude_index: Array | None = None) -> torch.Tensor:
    """0-based rank of the target among its query's members only (CIRR Recall_subset).

    Equivalent to filtering the stable full ranking (with ``exclude_index`` removed) down
    to the member columns and locating the target there, which is what CLIP4Cir
    ``compute_cirr_val_metrics`` does with its ``group_mask``. The reference is itself an
    img_set member, so after removing it 5 of CIRR's 6 members remain. Duplicate member
    columns count once; ``-1`` entries in ``member_index`` are padding.

    Raises ValueError if a target is not among its members.
    """
    scores = as_scores(scores)
    n_queries, n_columns = scores.shape
    device = scores.device
    target = _as_index(target_index, "target_index", (n_queries,), n_columns, device,
                       allow_missing=False)
    members = _as_members(member_index, n_queries, n_columns, device)
    is_member = (members == target[:, None]).any(1)
    if not bool(is_member.all()):
        row = int(torch.nonzero(~is_member)[0, 0])
        raise ValueError(f"target_index[{row}] = {int(target[row])} is not among "
                         f"member_index[{row}] = {members[row].tolist()}")
    counted = members >= 0
    if exclude_index is not None:
        exclude = _as_index(exclude_index, "exclude_index", (n_queries,), n_columns, device,
                            allow_missing=True)
        _check_not_excluded(target, exclude, "target_index", "exclude_index")
        counted &= members != exclude[:, None]
    counted &= ~_repeated(members)
    s_m = scores.gather(1, members.clamp(min=0))
    s_t = scores.gather(1, target[:, None])
    ahead = (s_m > s_t) | ((s_m == s_t) & (members < target[:, None]))
    return (ahead & counted).sum(1)


def ranked_members(scores: Array, member_index: Array,
                   exclude_index: Array | None = None) -> torch.Tensor:
    """Each row's member columns in stable descending score order (CIRR subset lists).

    The excluded column (the reference), duplicates and ``-1`` padding are dropped and the
    row is right-padded with ``-1``, so ``out[q, r]`` is the member of subset rank ``r``
    (agreeing with :func:`subset_ranks`). Shape [Q, M].
    """
    scores = as_scores(scores)
    n_queries, n_columns = scores.shape
    device = scores.device
    members = _as_members(member_index, n_queries, n_columns, device)
    valid = (members >= 0) & ~_repeated(members)
    if exclude_index is not None:
        exclude = _as_index(exclude_index, "exclude_index", (n_queries,), n_columns, device,
                            allow_missing=True)
        valid &= members != exclude[:, None]
    # Successive stable sorts, least significant key first: column, -score, validity.
    order = torch.sort(members, dim=1, stable=True).indices
    member_scores = scores.gather(1, members.clamp(min=0)).gather(1, order)
    order = order.gather(1, torch.sort(member_scores, dim=1, descending=True,
                                       stable=True).indices)
    invalid = (~valid).gather(1, order).to(torch.uint8)
    order = order.gather(1, torch.sort(invalid, dim=1, stable=True).indices)
    return torch.where(valid.gather(1, order), members.gather(1, order),
                       torch.full_like(members, -1))


def _repeated(columns: torch.Tensor) -> torch.Tensor:
    """[Q, M] mask of entries equal to an earlier entry of the same row."""
    width = columns.shape[1]
    earlier = torch.ones(width, width, dtype=torch.bool, device=columns.device).tril(-1)
    return ((columns[:, :, None] == columns[:, None, :]) & earlier).any(2)


def stable_topk(scores: Array, k: int, exclude_index: Array | None = None,
                *, chunk_size: int | None = None) -> torch.Tensor:
    """Columns of the first ``k`` entries of each row's stable descending ranking.

    The order agrees with :func:`target_ranks`: ``out[q, r]`` is the column whose rank
    is ``r``. ``exclude_index[q]`` (``-1`` = none) is removed from the ranking first.
    The width is ``min(k, ranked columns)``; when only some rows lose a column to the
    exclusion and the gallery is that small, their last slot is padded with ``-1``.

    Uses ``torch.topk`` and fixes only the rows where a tie straddles the cut (taking the
    lowest-indexed tied columns), so it is O(QN) per block with no full sort.
    """
    scores = as_scores(scores)
    if int(k) < 1:
        raise ValueError(f"k must be positive, got {k}")
    k = int(k)
    n_queries, n_columns = scores.shape
    device = scores.device
    exclude = None
    available = n_columns
    if exclude_index is not None:
        exclude = _as_index(exclude_index, "exclude_index", (n_queries,), n_columns, device,
                            allow_missing=True)
        if n_queries and bool((exclude >= 0).all()):
            available = n_columns - 1
    width = min(k, available)
    # One extra slot absorbs the excluded column if it lands inside the top.
    depth = min(width + (exclude is not None), n_columns)
    out = torch.full((n_queries, width), -1, dtype=torch.long, device=device)
    if width == 0:
        return out
    for rows in _row_chunks(n_queries, n_columns, chunk_size):
        top = _stable_top(scores[rows], depth)
        if exclude is None:
            out[rows] = top
            continue
        keep = top != exclude[rows, None]
        slot = keep.cumsum(1) - 1
        take = keep & (slot < width)
        row_of = torch.arange(top.shape[0], device=device)[:, None].expand_as(top)
        block = out[rows]  # a view: writing into it fills ``out``
        block[row_of[take], slot[take]] = top[take]
    return out


def _stable_top(block: torch.Tensor, depth: int) -> torch.Tensor:
    """Columns of the ``depth`` best entries per row, in stable descending order."""
    probe = min(depth + 1, block.shape[1])
    values, columns = torch.topk(block, probe, dim=1, sorted=True)
    columns = columns[:, :depth].clone()
    if probe > depth:
        # topk picks arbitrarily among values tied across the cut; redo only those rows.
        crossing = torch.nonzero(values[:, depth - 1] == values[:, depth]).squeeze(1)
        if crossing.numel():
            columns[crossing] = _top_columns_exact(block[crossing], depth)
    columns = columns.sort(dim=1).values
    order = torch.sort(block.gather(1, columns), dim=1, descending=True, stable=True).indices
    return columns.gather(1, order)


def _top_columns_exact(block: torch.Tensor, depth: int) -> torch.Tensor:
    """The set of stable-top-``depth`` columns per row (ascending column order)."""
    threshold = torch.topk(block, depth, dim=1, sorted=False).values.min(1, keepdim=True).values
    above = block > threshold
    need = depth - above.sum(1, keepdim=True)
    at = block == threshold
    chosen = above | (at & (at.cumsum(1, dtype=torch.int32) <= need))
    return torch.nonzero(chosen)[:, 1].view(block.shape[0], depth)


def recall_at_k(ranks: Array, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K in percent: ``100 * mean_q 1[rank_q < K]`` for 0-based ``ranks``."""
    ranks = torch.as_tensor(ranks)
    if ranks.dim() != 1 or ranks.numel() == 0:
        raise ValueError(f"ranks must be a non-empty 1-D tensor, got shape {tuple(ranks.shape)}")
    ks = _check_ks(ks)
    return {k: float((ranks < k).double().mean() * 100.0) for k in ks}


# --- FashionIQ -----------------------------------------------------------------------------

def fashioniq_metrics(per_category: Mapping[str, tuple[Array, Array]],
                      ks: Sequence[int] = FASHIONIQ_KS, *,
                      chunk_size: int | None = None) -> dict[str, float]:
    """FashionIQ val recall, as CLIP4Cir ``compute_fiq_val_metrics`` / QuRe ``eval_fiq``.

    Each category is ranked against its own ``split.{cat}.val.json`` corpus with the
    reference image kept in the ranking (no mask in either reference script).

    Args:
        per_category: ``{category: (scores [Q, N], target_index [Q])}``.
        ks: the K values (CLIP4Cir/QuRe report 10 and 50; QuRe also prints 5).

    Returns (all in percent), in this key order:
        ``"{category}_R@{k}"`` for each category (given order) and k;
        ``"average_R@{k}"``: unweighted mean over the categories (CLIP4Cir's
        ``average_recall_at{k}``);
        ``"average_recall"``: ``(average_R@10 + average_R@50) / 2``, present when 10 and
        50 are both in ``ks``.
    """
    if not per_category:
        raise ValueError("per_category is empty")
    ks = _check_ks(ks)
    recalls: dict[str, dict[int, float]] = {}
    for category, (scores, target_index) in per_category.items():
        try:
            ranks = target_ranks(scores, target_index, chunk_size=chunk_size)
        except ValueError as err:
            raise ValueError(f"FashionIQ category {category!r}: {err}") from err
        recalls[category] = recall_at_k(ranks, ks)
    return fashioniq_summary(recalls, ks)


def fashioniq_summary(recalls: Mapping[str, Mapping[int, Any]],
                      ks: Sequence[int]) -> dict[str, Any]:
    """FashionIQ's reported keys from each category's recall@k (floats, or arrays of
    bootstrap resamples): ``{category}_R@{k}``, the unweighted ``average_R@{k}`` over
    categories and ``average_recall`` = (average_R@10 + average_R@50) / 2."""
    out: dict[str, Any] = {}
    for category, by_k in recalls.items():
        for k in ks:
            out[f"{category}_R@{k}"] = by_k[k]
    for k in ks:
        values = [by_k[k] for by_k in recalls.values()]
        out[f"average_R@{k}"] = sum(values) / len(values)
    if 10 in ks and 50 in ks:
        out["average_recall"] = (out["average_R@10"] + out["average_R@50"]) / 2
    return out


# --- CIRR ----------------------------------------------------------------------------------

def cirr_metrics(scores: Array, target_index: Array, reference_index: Array,
                 member_index: Array, ks: Sequence[int] = CIRR_KS,
                 subset_ks: Sequence[int] = CIRR_SUBSET_KS, *,
                 chunk_size: int | None = None) -> dict[str, float]:
    """CIRR val metrics, as CLIP4Cir ``compute_cirr_val_metrics`` / QuRe ``eval_cirr``.

    The reference is removed from every ranking; Recall_subset ranks the target among the
    img_set members (reference removed too, so 5 candidates remain).

    Args:
        scores: [Q, N] over the ``split.rc2.val.json`` corpus.
        target_index: [Q] column of ``target_hard``.
        reference_index: [Q] column of the reference (``-1`` if absent from the gallery).
        member_index: [Q, 6] columns of ``img_set.members``.

    Returns (percent): ``"R@{k}"`` for ``ks``, ``"R_subset@{k}"`` for ``subset_ks`` and
    ``"avg"`` = ``(R@5 + R_subset@1) / 2`` (present when 5 and 1 are requested).
    """
    ks = _check_ks(ks)
    subset_ks = _check_ks(subset_ks, "subset_ks")
    ranks = target_ranks(scores, target_index, reference_index, chunk_size=chunk_size)
    group = subset_ranks(scores, target_index, member_index, reference_index)
    out = {f"R@{k}": v for k, v in recall_at_k(ranks, ks).items()}
    out.update({f"R_subset@{k}": v for k, v in recall_at_k(group, subset_ks).items()})
    if 5 in ks and 1 in subset_ks:
        out["avg"] = (out["R@5"] + out["R_subset@1"]) / 2
    return out


# --- CIRCO ---------------------------------------------------------------------------------

def circo_per_query(scores: Array, ground_truth: Array, ks: Sequence[int] = CIRCO_KS, *,
                    chunk_size: int | None = None
                    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per-query AP@K and primary-target hit@K, as CIRCO ``src/evaluation.py compute_metrics``.

    The prediction list is the top ``max(ks)`` of the full gallery (reference kept, as in
    SEARLE and QuRe), truncated when the gallery is smaller. With rel_i = 1[pred_i in GT]
    and P@i = (sum_{j<=i} rel_j) / i, AP@K = (sum_{i<=K} P@i rel_i) / min(K, |GT|).
    hit@K = 1[GT[:, 0] in pred[:K]] (CIRCO's Recall@K uses only ``target_img_id``).

    Args:
        scores: [Q, N].
        ground_truth: [Q, G] gallery columns, padded with ``-1``; column 0 is the primary
            target (``CIRSplit.ground_truth_indices()``). No duplicates within a row.

    Returns:
        ``({k: AP@K [Q] float64 fractions}, {k: hit@K [Q] float64 0/1})``; averaging AP@10
        over the queries that carry an aspect gives CIRCO's semantic mAP@10.
    """
    scores = as_scores(scores)
    ks = _check_ks(ks)
    n_queries, n_columns = scores.shape
    device = scores.device
    gt = torch.as_tensor(ground_truth)
    if gt.dim() != 2 or gt.shape[0] != n_queries or gt.shape[1] == 0:
        raise ValueError(f"ground_truth must have shape [{n_queries}, G>=1], got "
                         f"{tuple(gt.shape)}")
    gt = _as_index(gt, "ground_truth", tuple(gt.shape), n_columns, device, allow_missing=True)
    if bool((gt[:, 0] < 0).any()):
        row = int(torch.nonzero(gt[:, 0] < 0)[0, 0])
        raise ValueError(f"ground_truth[{row}, 0] is padding; column 0 must be the target")
    dup = _repeated(gt) & (gt >= 0)
    if bool(dup.any()):
        row = int(torch.nonzero(dup)[0, 0])
        raise ValueError(f"ground_truth[{row}] = {gt[row].tolist()} repeats a column")
    n_gt = (gt >= 0).sum(1).double()
    depth = min(max(ks), n_columns)
    aps = {k: torch.empty(n_queries, dtype=torch.float64, device=device) for k in ks}
    hits = {k: torch.empty(n_queries, dtype=torch.float64, device=device) for k in ks}
    positions = torch.arange(1, depth + 1, device=device, dtype=torch.float64)
    for rows in _row_chunks(n_queries, n_columns, chunk_size):
        pred = _stable_top(scores[rows], depth)
        truth = gt[rows]
        relevant = (pred[:, :, None] == truth[:, None, :]).any(2).double()
        precision_at_hits = relevant.cumsum(1) / positions * relevant
        is_target = (pred == truth[:, :1]).double()
        for k in ks:
            aps[k][rows] = precision_at_hits[:, :k].sum(1) / n_gt[rows].clamp(max=k)
            hits[k][rows] = is_target[:, :k].sum(1)
    return aps, hits


def circo_metrics(scores: Array, ground_truth: Array, ks: Sequence[int] = CIRCO_KS, *,
                  chunk_size: int | None = None) -> dict[str, float]:
    """CIRCO mAP@K and Recall@K in percent (CIRCO ``src/evaluation.py compute_metrics``).

    Returns ``"mAP@{k}"`` (all ground truths) and ``"R@{k}"`` (primary target only) for
    each k; see :func:`circo_per_query` for the exact definitions.
    """
    aps, hits = circo_per_query(scores, ground_truth, ks, chunk_size=chunk_size)
    if next(iter(aps.values())).numel() == 0:
        raise ValueError("scores has no queries")
    out = {f"mAP@{k}": float(ap.mean() * 100.0) for k, ap in aps.items()}
    out.update({f"R@{k}": float(hit.mean() * 100.0) for k, hit in hits.items()})
    return out


# --- HP-FashionIQ --------------------------------------------------------------------------

def hp_set_scores(image_scores: Array, name: str = "set scores") -> torch.Tensor:
    """One score per retrieved set: the arithmetic mean over its images.

    ``[C, 5]`` image scores are averaged along dim 1 in their own floating dtype (the
    release takes ``torch.mean`` of the float scores and compares the ``.item()``s, so pass
    float32 scores to reproduce it bit for bit); an already-aggregated ``[C]`` passes
    through. Integer input is promoted to float64.
    """
    tensor = torch.as_tensor(image_scores)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.double()
    if tensor.dim() == 2:
        if tensor.shape[1] == 0:
            raise ValueError(f"{name} has no image scores per set (shape {tuple(tensor.shape)})")
        _check_no_nan(tensor, name)
        return tensor.mean(1)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be [C, images] or [C], got shape {tuple(tensor.shape)}")
    _check_no_nan(tensor, name)
    return tensor


def hp_preference_rates(set1_scores: Array, set2_scores: Array,
                        preferred: Array) -> dict[str, float | int]:
    """HP-FashionIQ preference ratio exactly as ``HP_FashionIQ/evaluate.py``, plus a variant.

    The released ``evaluate_preference_ratio`` counts only comparisons where the model
    scores set 1 strictly higher (``m1 > m2``) and returns the fraction of those where the
    user preferred set 1; ties and ``m2 > m1`` are ignored, and it is 0.0 when nothing
    qualifies. The symmetric variant (the README's P(A > B | s(A) > s(B))) also counts
    ``m2 > m1`` comparisons whose user preferred set 2. Never report one for the other.

    Args:
        set1_scores, set2_scores: [C, 5] image scores or [C] set scores
            (see :func:`hp_set_scores`).
        preferred: [C] integers, 1 or 2 (the user's forced choice, ``"preferred set"``).

    Returns (ratios are fractions in [0, 1]):
        ``"released_preference_ratio"`` = released_preferred / released_conditioned;
        ``"released_conditioned"`` = #(m1 > m2); ``"released_preferred"`` = #(m1 > m2, p = 1);
        ``"symmetric_preference_ratio"`` = symmetric_agreed / symmetric_decided;
        ``"symmetric_decided"`` = #(m1 != m2);
        ``"symmetric_agreed"`` = #(m1 > m2, p = 1) + #(m2 > m1, p = 2);
        ``"n_comparisons"`` = C; ``"n_ties"`` = #(m1 == m2).
    """
    m1 = hp_set_scores(set1_scores, "set1_scores")
    m2 = hp_set_scores(set2_scores, "set2_scores")
    pref = torch.as_tensor(preferred)
    if pref.dtype not in _INT_DTYPES:
        raise ValueError(f"preferred must hold the integers 1 or 2, got dtype {pref.dtype}")
    if not (m1.shape == m2.shape == pref.shape):
        raise ValueError(f"set1_scores, set2_scores and preferred disagree in length: "
                         f"{tuple(m1.shape)}, {tuple(m2.shape)}, {tuple(pref.shape)}")
    pref = pref.to(m1.device)
    bad = (pref != 1) & (pref != 2)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"preferred[{row}] = {int(pref[row])}; expected 1 or 2")
    m2 = m2.to(m1.device)
    first_higher = m1 > m2
    second_higher = m2 > m1
    conditioned = int(first_higher.sum())
    released_preferred = int((first_higher & (pref == 1)).sum())
    decided = conditioned + int(second_higher.sum())
    agreed = released_preferred + int((second_higher & (pref == 2)).sum())
    return {
        "released_preference_ratio": released_preferred / conditioned if conditioned else 0.0,
        "released_conditioned": conditioned,
        "released_preferred": released_preferred,
        "symmetric_preference_ratio": agreed / decided if decided else 0.0,
        "symmetric_decided": decided,
        "symmetric_agreed": agreed,
        "n_comparisons": int(pref.numel()),
        "n_ties": int(pref.numel()) - decided,
    }


__all__ = [
    "CIRCO_KS", "CIRR_KS", "CIRR_SUBSET_KS", "DEFAULT_CHUNK_ELEMENTS", "FASHIONIQ_KS",
    "as_scores", "circo_metrics", "circo_per_query", "cirr_metrics", "fashioniq_metrics",
    "hp_preference_rates", "hp_set_scores", "ranked_members", "recall_at_k", "stable_topk",
    "subset_ranks", "target_ranks",
]

"""The mining entry points: score matrices, streamed score blocks, embeddings, groups."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from qure.mining.base import (
    MiningError,
    _as_long_1d,
    _check_index,
    _check_positive,
    _index_dtype,
    _Workspace,
)
from qure.mining.config import _MiningConfig
from qure.mining.scoring import _check_embeddings, iter_max_token_scores
from qure.mining.sets import HardNegativeSets
from qure.mining.strategies import _mine_chunk

# The historical logger name (this code used to be the module ``qure.mining``).
log = logging.getLogger("qure.mining")

# Working memory per chunk is about 16 bytes per score (histogram index, scaled copy,
# masks); the default keeps a chunk near 32 MiB whatever the gallery size.
_CHUNK_ELEMENTS = 1 << 21
_MAX_CHUNK_ROWS = 1024


def hard_negative_sets(
    scores: torch.Tensor,
    target_index: torch.Tensor,
    strategy: str,
    *,
    exclude_index: torch.Tensor | None = None,
    chunk_size: int | None = None,
    **params: Any,
) -> HardNegativeSets:
    """Define one hard-negative set per query from a score matrix.

    Args:
        scores: [Q, N] floating tensor, row ``i`` = query ``i`` against its gallery.
        target_index: [Q] integer tensor, the target's column in each row.
        strategy: one of :data:`STRATEGIES`:

            * ``"qure"``: QuRe's two-drops rule (the released ``rerank_score``). The
              items ranked after the target are differenced, the drops are ordered by
              steepness (most negative first; equal drops by position, earlier first),
              and consecutive pairs in that order, (1st, 2nd), (2nd, 3rd), ..., are
              tried until one pair's positions differ by more than
              ``consecutive_threshold`` (default 1). The set is every item after the
              earlier drop up to and including the item just before the later drop.
              When no pair qualifies (three or fewer items after the target, or every
              tried pair adjacent) the release silently reuses the previous query's
              bounds (or fails on the first query); here the ``fallback`` is applied
              and the query is flagged. Parameters: ``consecutive_threshold``,
              ``fallback``, ``fallback_k``, and the speed knobs ``n_candidates``
              (drops certified per row, default 8) and ``n_buckets`` (default: ``N // 16``
              then ``N // 2`` for rows left over; 1 forces the sorted path), which
              never change the result. ``search_depth`` (default ``None``: the
              whole tail, as released) is a *variant*, not the paper's rule: only
              the first ``search_depth`` drops after the target (those among the
              ``search_depth + 1`` items ranked right after it) are ordered and
              walked, so the set lies near the target. Deviations from the release:
              ties are ranked by column and equal drops by position (the release's
              sorts are unstable),
              the drop between equal scores is 0, and the fallback replaces the reuse
              of the previous query's bounds.
            * ``"all"``: every column except the target (the pool QuRe's warm-up
              samples uniformly from). Stored explicitly: ``4 * Q * (N - 1)`` bytes.
            * ``"topk"``: the ``k`` highest-ranked columns other than the target (and
              the excluded one); these may rank above the target. Size
              ``min(k, eligible columns)``.
            * ``"after_target_topk"``: the ``k`` columns ranked right after the target.
              Size ``min(k, items after the target)``.
            * ``"trns"``: DQE-CIR's target-relative negative sampling, as far as its
              abstract describes it: ``Δ(c) = s(target) - s(c)`` (``0`` for equal
              scores) and the set is every candidate with ``low <= Δ(c) <= high``.
              ``mode="quantile"`` (default) reads ``low``/``high`` as quantiles of the
              query's Δ over its candidates (linear interpolation, NumPy's default
              ``"linear"`` method: position ``q * (n - 1)`` in the sorted Δ);
              ``mode="absolute"`` uses them as Δ values. Defaults ``low=0.01``,
              ``high=0.10`` are placeholders (the paper's bounds are not public). An
              empty zone triggers the ``fallback``.

        exclude_index: optional [Q] integer tensor, a column per query that must never
            be returned (``-1`` = none); see the :mod:`qure.mining` notes per strategy.
        chunk_size: queries per vectorised chunk; bounds working memory to roughly
            ``16 * chunk_size * N`` bytes (default: about 2M scores per chunk).
        **params: strategy parameters (above). ``fallback`` is
            ``"after_target_topk"`` (default; the ``fallback_k`` = 10 columns ranked
            right after the target, skipping the excluded one), ``"empty"`` or
            ``"raise"`` (:class:`MiningError` naming the queries).

    Returns:
        A :class:`HardNegativeSets` (CSR) on the CPU.
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise MiningError("scores: expected a 2-D tensor [Q, N]")
    q_total = scores.shape[0]

    def chunks() -> Iterator[tuple[slice, torch.Tensor]]:
        yield slice(0, q_total), scores

    return mine_chunks(chunks(), target_index, strategy, num_rows=q_total,
                       num_columns=scores.shape[1], exclude_index=exclude_index,
                       chunk_size=chunk_size, **params)


def mine_chunks(
    chunks: Iterable[tuple[slice, torch.Tensor]],
    target_index: torch.Tensor,
    strategy: str,
    *,
    num_rows: int,
    num_columns: int,
    exclude_index: torch.Tensor | None = None,
    chunk_size: int | None = None,
    **params: Any,
) -> HardNegativeSets:
    """:func:`hard_negative_sets` over score rows that arrive in consecutive blocks.

    ``chunks`` yields ``(rows, block)`` with ``block = scores[rows]``, rows in order and
    covering ``range(num_rows)`` (e.g. :func:`iter_max_token_scores`), so the full
    [Q, N] matrix never has to exist.
    """
    cfg = _MiningConfig.build(strategy, params)
    target = _check_index("target_index", target_index, num_rows, num_columns)
    exclude = None
    if exclude_index is not None:
        exclude = _check_index("exclude_index", exclude_index, num_rows, num_columns,
                               allow_missing=True)
    if num_columns < 1 and num_rows:
        raise MiningError("scores: the gallery has no columns")
    if chunk_size is None:
        chunk_size = max(1, min(_MAX_CHUNK_ROWS, _CHUNK_ELEMENTS // max(1, num_columns)))
    _check_positive("chunk_size", chunk_size)

    out_idx: list[torch.Tensor] = []
    out_sizes: list[torch.Tensor] = []
    out_fb: list[torch.Tensor] = []
    next_row = 0
    work = _Workspace()
    idx_dtype = _index_dtype(num_columns)
    for rows, block in chunks:
        if not isinstance(block, torch.Tensor) or block.ndim != 2:
            raise MiningError("scores: expected a 2-D tensor [Q, N]")
        if not block.is_floating_point():
            raise MiningError(f"scores: expected a floating-point tensor, got {block.dtype}")
        start = 0 if rows.start is None else rows.start
        if start != next_row or block.shape[0] != rows.stop - start:
            raise MiningError(f"scores: row block {rows} is not the next block of rows")
        if block.shape[1] != num_columns:
            raise MiningError(
                f"scores: has {block.shape[1]} columns, expected {num_columns}"
            )
        for r0 in range(0, block.shape[0], chunk_size):
            r1 = min(block.shape[0], r0 + chunk_size)
            g0, g1 = start + r0, start + r1
            x = block[r0:r1]
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            x = x.contiguous()
            # amin/amax propagate NaN, so they double as the NaN check.
            lo, hi = x.amin(1), x.amax(1)
            nan_rows = torch.isnan(lo) | torch.isnan(hi)
            if bool(nan_rows.any()):
                bad = (nan_rows.nonzero().flatten() + g0)[:5].tolist()
                raise MiningError(f"scores: NaN in row(s) {bad} (first ones shown)")
            tgt = target[g0:g1].to(x.device)
            exc = None if exclude is None else exclude[g0:g1].to(x.device)
            mask, fb = _mine_chunk(x, lo, hi, tgt, exc, cfg, work)
            if cfg.fallback == "raise" and bool(fb.any()):
                bad = (fb.nonzero().flatten() + g0)[:5].tolist()
                raise MiningError(
                    f"fallback='raise': strategy {cfg.strategy!r} found no set for "
                    f"{int(fb.sum())} query(ies) in rows {g0}..{g1 - 1}, e.g. {bad}"
                )
            cols, sizes = _extract(mask, idx_dtype)
            out_idx.append(cols.cpu())
            out_sizes.append(sizes.cpu())
            out_fb.append(fb.cpu())
        next_row = rows.stop
    if next_row != num_rows:
        raise MiningError(f"scores: got {next_row} rows, expected {num_rows}")

    sizes = torch.cat(out_sizes) if out_sizes else torch.zeros(0, dtype=torch.int64)
    offsets = torch.zeros(num_rows + 1, dtype=torch.int64)
    torch.cumsum(sizes, 0, out=offsets[1:])
    indices = torch.cat(out_idx) if out_idx else torch.zeros(0, dtype=idx_dtype)
    fallback = torch.cat(out_fb) if out_fb else torch.zeros(0, dtype=torch.bool)
    result = HardNegativeSets(indices, offsets, fallback, num_columns, cfg.strategy,
                              cfg.public_params())
    if num_rows:
        log.info("%s: %d queries, set size mean %.1f, median %d, max %d", cfg.strategy,
                 num_rows, sizes.double().mean().item(), int(sizes.median()),
                 int(sizes.max()))
    n_fb = int(fallback.sum())
    if n_fb:
        log.info("%s: fallback %r used for %d of %d queries", cfg.strategy, cfg.fallback,
                 n_fb, num_rows)
    n_empty = int((sizes == 0).sum())
    if n_empty:
        log.warning("%s: %d of %d queries have an empty hard-negative set", cfg.strategy,
                    n_empty, num_rows)
    return result


def mine_from_embeddings(
    query_emb: torch.Tensor,
    image_tokens: torch.Tensor,
    target_index: torch.Tensor,
    strategy: str,
    *,
    exclude_index: torch.Tensor | None = None,
    score_chunk_size: int | None = None,
    chunk_size: int | None = None,
    **params: Any,
) -> HardNegativeSets:
    """Score (:func:`iter_max_token_scores`) and mine block by block.

    Peak memory is the embeddings plus one block of ``score_chunk_size`` score rows and
    the miner's chunk workspace; the [Q, N] score matrix is never held.
    """
    _check_embeddings(query_emb, image_tokens)
    blocks = iter_max_token_scores(query_emb, image_tokens, score_chunk_size)
    return mine_chunks(blocks, target_index, strategy, num_rows=query_emb.shape[0],
                       num_columns=image_tokens.shape[0], exclude_index=exclude_index,
                       chunk_size=chunk_size, **params)


def mine_grouped(
    query_emb: torch.Tensor,
    image_tokens: torch.Tensor,
    query_group: torch.Tensor,
    gallery_group: torch.Tensor,
    target_index: torch.Tensor,
    strategy: str,
    *,
    exclude_index: torch.Tensor | None = None,
    score_chunk_size: int | None = None,
    chunk_size: int | None = None,
    **params: Any,
) -> HardNegativeSets:
    """Mine where each query ranks only the gallery images of its own group.

    This is FashionIQ's setting: a query ranks the training targets of its category
    only (the release scores all categories and slices; we score each category's block
    alone, which gives the same scores for a third of the work).

    ``query_group`` [Q] and ``gallery_group`` [N] hold integer group ids;
    ``target_index`` and ``exclude_index`` are columns of the *full* gallery, and so are
    the returned sets. A target outside its query's group is an error; an excluded
    column outside the group is ignored (it cannot be returned anyway).
    """
    _check_embeddings(query_emb, image_tokens)
    q_total, n_total = query_emb.shape[0], image_tokens.shape[0]
    qg = _as_long_1d("query_group", query_group, q_total)
    gg = _as_long_1d("gallery_group", gallery_group, n_total)
    target = _check_index("target_index", target_index, q_total, n_total)
    exclude = None
    if exclude_index is not None:
        exclude = _check_index("exclude_index", exclude_index, q_total, n_total,
                               allow_missing=True)
    if bool((gg[target] != qg).any()):
        bad = (gg[target] != qg).nonzero().flatten()[:5].tolist()
        raise MiningError(f"target_index: target outside the query's group for rows {bad}")
    parts: list[tuple[torch.Tensor, HardNegativeSets]] = []
    for group in torch.unique(qg).tolist():
        rows = (qg == group).nonzero().flatten()
        cols = (gg == group).nonzero().flatten()
        local = torch.full((n_total,), -1, dtype=torch.int64)
        local[cols] = torch.arange(cols.numel())
        exc = None if exclude is None else torch.where(
            exclude[rows] >= 0, local[exclude[rows].clamp(min=0)], -1)
        sets = mine_from_embeddings(
            query_emb[rows.to(query_emb.device)],
            image_tokens[cols.to(image_tokens.device)],
            local[target[rows]], strategy, exclude_index=exc,
            score_chunk_size=score_chunk_size, chunk_size=chunk_size, **params)
        parts.append((rows, sets.map_columns(cols, n_total)))
    return HardNegativeSets.merge(parts, q_total)


def _extract(mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns of the True entries, row by row (ascending), and the count per row."""
    rows, n = mask.shape
    flat = mask.view(-1).nonzero().flatten()
    starts = torch.arange(rows + 1, device=mask.device) * n
    sizes = torch.searchsorted(flat, starts).diff()
    if rows * n >= 1 << 40:
        return (flat % n).to(dtype), sizes
    # flat - floor(flat / n) * n in float64 is exact for flat < 2^40 and several times
    # faster than integer remainder.
    as_float = flat.double()
    cols = torch.addcmul(as_float, torch.floor(as_float / n),
                         torch.tensor(-float(n), dtype=torch.float64, device=mask.device))
    return cols.to(dtype), sizes

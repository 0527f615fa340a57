"""Hard-negative sets for composed image retrieval: QuRe's two-drops rule and its rivals.

Every strategy maps a score matrix ``scores`` [Q, N] (row ``i`` = query ``i`` scored
against its gallery of ``N`` images) and the target column of each query to one set of
gallery columns per query. A training sampler then draws negatives from these sets.

Conventions shared by all strategies
------------------------------------
* **Ranking.** A row is ranked by descending score; equal scores are ordered by column,
  lower column first (a stable sort of the row). The released QuRe code sorts with an
  unstable sort, so its order among ties is unspecified; we fix one.
* **Equal scores make no drop.** The drop between two ranked items is
  ``s[j + 1] - s[j]``, except that it is ``0`` whenever the two scores are equal. For
  finite scores this is plain subtraction; it also defines the drop between two
  ``-inf`` (or two ``+inf``) scores, where the release would get ``nan``.
* **Output.** Each set is a 1-D tensor of columns, sorted ascending, without duplicates,
  never containing the query's target nor its ``exclude_index`` column.
* **NaN scores are rejected**; ``-inf``/``+inf`` are allowed (e.g. masked columns).
* Half-precision scores are upcast to float32 (exactly); float32 and float64 rows are
  ranked and differenced in their own precision, as the release does with NumPy.

``exclude_index``
-----------------
One column per query (``-1`` = none) that no strategy may return, typically the query's
reference image. The release does *not* exclude the reference from the CIRR or FashionIQ
training gallery, so the default ``None`` is the faithful setting. When given:

* ``qure``: the ranking, the drops and the chosen pair are computed on the full row,
  exactly as without exclusion, and the excluded column is then removed from the set.
  The set is therefore the release's set minus at most one item; it stays non-empty
  because a qualifying pair always encloses at least two items.
* ``topk`` / ``after_target_topk``: the excluded column is skipped and the next ranked
  column takes its place, so sizes stay ``min(k, available)``.
* ``trns``: the excluded column is not a candidate and is left out of the Δ distribution
  that quantile bounds are taken from.
* ``all``: the column is simply left out.

Fallback
--------
When a rule yields nothing (``qure``: no qualifying pair of drops, which happens when
three or fewer items rank after the target or when every pair tried is adjacent;
``trns``: an empty mid-zone), the release would reuse the previous query's bounds (or
fail on the first query). Here the ``fallback`` parameter decides, and the query is
flagged in :attr:`HardNegativeSets.fallback`:

* ``"after_target_topk"`` (default): the ``fallback_k`` (default 10) columns ranked
  right after the target, skipping the excluded column; empty if the target ranks last;
* ``"empty"``: an empty set;
* ``"raise"``: :class:`MiningError` naming the queries.

Sets are sorted, so a seeded draw from them is reproducible across processes (the
release stores ``list(set(names))``, whose order follows Python's string hashing).

Implementation
--------------
Rows are processed in chunks of ``chunk_size`` queries, fully vectorised within a chunk.
For ``qure`` most rows never need a sort. Each row is counted into equal-width buckets
by a map monotone in the score; a drop confined to two adjacent buckets is at most about
two bucket widths, and any larger drop crosses an empty bucket, so its exact size comes
from the extremes of the two buckets around the empty run (only those buckets are
opened). When the largest such drops provably lead the release's drop order and a
qualifying pair is found among them, the set is read off by two comparisons per score.
Rows this certificate cannot settle are retried with finer buckets, then handled by an
exact sort-based path (ties at the decisive drops, non-finite scores, tiny galleries,
adversarial spacings). Both paths equal :func:`two_drops_reference`, a plain per-query
NumPy transcription of the rule, which the tests check on random and adversarial
matrices. The other strategies sort each chunk's rows (stable) and are not tuned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from qure.errors import QureError

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("qure", "all", "topk", "after_target_topk", "trns")
FALLBACKS: tuple[str, ...] = ("after_target_topk", "empty", "raise")
TRNS_MODES: tuple[str, ...] = ("quantile", "absolute")

DEFAULT_FALLBACK = "after_target_topk"
DEFAULT_FALLBACK_K = 10
# Placeholders: DQE-CIR's mid-zone bounds are not public (see the methods notes, §A).
DEFAULT_TRNS_MODE = "quantile"
DEFAULT_TRNS_LOW = 0.01
DEFAULT_TRNS_HIGH = 0.10

# Working memory per chunk is about 16 bytes per score (histogram index, scaled copy,
# masks); the default keeps a chunk near 32 MiB whatever the gallery size.
_CHUNK_ELEMENTS = 1 << 21
_MAX_CHUNK_ROWS = 1024


class MiningError(QureError, ValueError):
    """Bad input to the miner; the message names the argument at fault."""


# --------------------------------------------------------------------------------------
# Result container
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HardNegativeSets:
    """One set of gallery columns per query, stored compactly (CSR).

    ``sets[i]`` is the set of query ``i`` as a 1-D int64 tensor, sorted ascending.
    Storage is ``indices`` (all sets concatenated, int32) and ``offsets`` (int64,
    ``Q + 1`` entries, set ``i`` = ``indices[offsets[i]:offsets[i + 1]]``), so tens of
    thousands of sets cost one tensor, not one per query.

    ``fallback[i]`` is True when the strategy's own rule produced nothing for query ``i``
    and the configured fallback was applied instead (``qure``: no qualifying pair of
    drops; ``trns``: empty mid-zone).
    """

    indices: torch.Tensor
    offsets: torch.Tensor
    fallback: torch.Tensor
    num_columns: int
    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or self.offsets.numel() < 1:
            raise MiningError("offsets: must be a 1-D tensor with Q + 1 entries")
        if self.fallback.shape != (self.offsets.numel() - 1,):
            raise MiningError("fallback: must have one flag per set")
        if int(self.offsets[-1]) != self.indices.numel():
            raise MiningError("offsets: last offset must equal the number of indices")

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"set index {i} out of range for {n} sets")
        i %= n
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.indices[start:stop].long()

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]

    @property
    def sizes(self) -> torch.Tensor:
        """Set sizes, int64 [Q]."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def fallback_rows(self) -> torch.Tensor:
        """Queries whose set came from the fallback, int64, ascending."""
        return self.fallback.nonzero().flatten()

    @property
    def empty_rows(self) -> torch.Tensor:
        """Queries with an empty set, int64, ascending."""
        return (self.sizes == 0).nonzero().flatten()

    def to_lists(self) -> list[list[int]]:
        """Plain Python lists, e.g. for JSON."""
        flat = self.indices.tolist()
        bounds = self.offsets.tolist()
        return [flat[bounds[i] : bounds[i + 1]] for i in range(len(self))]

    def map_columns(self, columns: torch.Tensor, num_columns: int) -> HardNegativeSets:
        """Renumber columns through ``columns`` (local column ``c`` -> ``columns[c]``).

        ``columns`` must be strictly increasing so that sets stay sorted; this is the case
        for a sub-gallery's positions in the full gallery (see :func:`mine_grouped`).
        """
        columns = torch.as_tensor(columns).flatten().long().cpu()
        if columns.numel() != self.num_columns:
            raise MiningError(
                f"columns: expected {self.num_columns} entries, got {columns.numel()}"
            )
        if columns.numel() > 1 and not bool((columns[1:] > columns[:-1]).all()):
            raise MiningError("columns: must be strictly increasing")
        if columns.numel() and (int(columns[0]) < 0 or int(columns[-1]) >= num_columns):
            raise MiningError(f"columns: entries must lie in [0, {num_columns})")
        mapped = columns[self.indices.long()].to(_index_dtype(num_columns))
        return HardNegativeSets(mapped, self.offsets, self.fallback, num_columns,
                                self.strategy, dict(self.params))

    @staticmethod
    def merge(parts: Sequence[tuple[torch.Tensor, HardNegativeSets]],
              num_rows: int) -> HardNegativeSets:
        """Combine sets mined for disjoint groups of queries back into query order.

        ``parts`` holds ``(rows, sets)`` pairs: ``sets[j]`` belongs to query ``rows[j]``.
        Every query in ``range(num_rows)`` must be covered exactly once. All parts must
        share the strategy and column numbering (map them first).
        """
        if not parts:
            raise MiningError("parts: nothing to merge")
        seen = torch.zeros(num_rows, dtype=torch.int64)
        sizes = torch.zeros(num_rows, dtype=torch.int64)
        fallback = torch.zeros(num_rows, dtype=torch.bool)
        num_columns = parts[0][1].num_columns
        for rows, sets in parts:
            rows = torch.as_tensor(rows).flatten().long().cpu()
            if rows.numel() != len(sets):
                raise MiningError(f"parts: {rows.numel()} rows given for {len(sets)} sets")
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= num_rows):
                raise MiningError(f"parts: rows must lie in [0, {num_rows})")
            if sets.num_columns != num_columns or sets.strategy != parts[0][1].strategy:
                raise MiningError("parts: sets differ in strategy or column numbering")
            seen.index_add_(0, rows, torch.ones_like(rows))
            sizes[rows] = sets.sizes
            fallback[rows] = sets.fallback
        if not bool((seen == 1).all()):
            raise MiningError("parts: every query must be covered exactly once")
        offsets = torch.zeros(num_rows + 1, dtype=torch.int64)
        torch.cumsum(sizes, 0, out=offsets[1:])
        indices = torch.empty(int(offsets[-1]), dtype=_index_dtype(num_columns))
        for rows, sets in parts:
            rows = torch.as_tensor(rows).flatten().long().cpu()
            shift = offsets[rows] - sets.offsets[:-1]
            dest = torch.repeat_interleave(shift, sets.sizes) + torch.arange(
                sets.indices.numel())
            indices[dest] = sets.indices.to(indices.dtype)
        return HardNegativeSets(indices, offsets, fallback, num_columns,
                                parts[0][1].strategy, dict(parts[0][1].params))


def _index_dtype(num_columns: int) -> torch.dtype:
    return torch.int32 if num_columns <= torch.iinfo(torch.int32).max else torch.int64


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def iter_max_token_scores(
    query_emb: torch.Tensor,
    image_tokens: torch.Tensor,
    chunk_size: int | None = None,
    *,
    gallery_chunk_size: int | None = None,
    max_block_bytes: int = 4 << 20,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, scores[rows])`` for QuRe's score, one chunk of queries at a time.

    ``scores[q, n] = max_t <query_emb[q], image_tokens[n, t]>``: BLIP-2's similarity
    between a query embedding and an image's query-token features (QuRe: 32 tokens of
    256-d), without temperature. The [Q, N, T] tensor of the released ``score()`` is
    never formed: each step multiplies ``chunk_size`` queries by ``gallery_chunk_size``
    images' tokens, a block of at most about ``max_block_bytes``. Results are computed
    in the embeddings' dtype on their device.
    """
    _check_embeddings(query_emb, image_tokens)
    q_total, dim = query_emb.shape
    n_img, n_tok, _ = image_tokens.shape
    if chunk_size is None:
        chunk_size = 256
    _check_positive("chunk_size", chunk_size)
    elem = query_emb.element_size()
    if gallery_chunk_size is None:
        gallery_chunk_size = max(1, max_block_bytes // max(1, chunk_size * n_tok * elem))
    _check_positive("gallery_chunk_size", gallery_chunk_size)
    flat = image_tokens.reshape(n_img * n_tok, dim)
    for q0 in range(0, q_total, chunk_size):
        q1 = min(q_total, q0 + chunk_size)
        queries = query_emb[q0:q1]
        out = torch.empty(q1 - q0, n_img, dtype=query_emb.dtype, device=query_emb.device)
        for n0 in range(0, n_img, gallery_chunk_size):
            n1 = min(n_img, n0 + gallery_chunk_size)
            block = queries @ flat[n0 * n_tok : n1 * n_tok].T
            torch.amax(block.view(q1 - q0, n1 - n0, n_tok), dim=2, out=out[:, n0:n1])
        yield slice(q0, q1), out


def max_token_scores(
    query_emb: torch.Tensor,
    image_tokens: torch.Tensor,
    chunk_size: int | None = None,
    *,
    gallery_chunk_size: int | None = None,
    max_block_bytes: int = 4 << 20,
) -> torch.Tensor:
    """The full [Q, N] matrix of :func:`iter_max_token_scores` (max over tokens of q·t)."""
    _check_embeddings(query_emb, image_tokens)
    out = torch.empty(query_emb.shape[0], image_tokens.shape[0], dtype=query_emb.dtype,
                      device=query_emb.device)
    for rows, block in iter_max_token_scores(
        query_emb, image_tokens, chunk_size, gallery_chunk_size=gallery_chunk_size,
        max_block_bytes=max_block_bytes,
    ):
        out[rows] = block
    return out


score_chunks = iter_max_token_scores


def _check_embeddings(query_emb: torch.Tensor, image_tokens: torch.Tensor) -> None:
    if not isinstance(query_emb, torch.Tensor) or query_emb.ndim != 2:
        raise MiningError("query_emb: expected a 2-D tensor [Q, D]")
    if not isinstance(image_tokens, torch.Tensor) or image_tokens.ndim != 3:
        raise MiningError("image_tokens: expected a 3-D tensor [N, T, D]")
    if not query_emb.is_floating_point() or not image_tokens.is_floating_point():
        raise MiningError("query_emb, image_tokens: expected floating-point tensors")
    if image_tokens.shape[2] != query_emb.shape[1]:
        raise MiningError(
            f"image_tokens: feature size {image_tokens.shape[2]} does not match "
            f"query_emb's {query_emb.shape[1]}"
        )
    if image_tokens.dtype != query_emb.dtype or image_tokens.device != query_emb.device:
        raise MiningError("image_tokens: must share query_emb's dtype and device")
    if image_tokens.shape[1] < 1:
        raise MiningError("image_tokens: needs at least one token per image")


# --------------------------------------------------------------------------------------
# Public mining entry points
# --------------------------------------------------------------------------------------


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
            be returned (``-1`` = none); see the module notes for each strategy.
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


# --------------------------------------------------------------------------------------
# Configuration and validation
# --------------------------------------------------------------------------------------


_ALLOWED_PARAMS: Mapping[str, tuple[str, ...]] = {
    "qure": ("consecutive_threshold", "fallback", "fallback_k", "n_candidates", "n_buckets",
             "search_depth"),
    "all": (),
    "topk": ("k",),
    "after_target_topk": ("k",),
    "trns": ("mode", "low", "high", "fallback", "fallback_k"),
}


@dataclass(frozen=True)
class _MiningConfig:
    strategy: str
    k: int = 0
    consecutive_threshold: int = 1
    fallback: str = DEFAULT_FALLBACK
    fallback_k: int = DEFAULT_FALLBACK_K
    n_candidates: int = 8
    n_buckets: int | None = None
    search_depth: int | None = None
    mode: str = DEFAULT_TRNS_MODE
    low: float = DEFAULT_TRNS_LOW
    high: float = DEFAULT_TRNS_HIGH

    @classmethod
    def build(cls, strategy: str, params: Mapping[str, Any]) -> _MiningConfig:
        if strategy not in STRATEGIES:
            raise MiningError(
                f"strategy: unknown strategy {strategy!r}; expected one of {STRATEGIES}"
            )
        allowed = _ALLOWED_PARAMS[strategy]
        for name in params:
            if name not in allowed:
                raise MiningError(
                    f"{name}: not a parameter of strategy {strategy!r} "
                    f"(allowed: {', '.join(allowed) or 'none'})"
                )
        if strategy in ("topk", "after_target_topk") and "k" not in params:
            raise MiningError(f"k: strategy {strategy!r} needs k")
        cfg = cls(strategy, **params)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        for name in ("k", "consecutive_threshold", "fallback_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MiningError(f"{name}: expected a non-negative int, got {value!r}")
        if isinstance(self.n_candidates, bool) or not isinstance(self.n_candidates, int) \
                or self.n_candidates < 2:
            raise MiningError(f"n_candidates: expected an int >= 2, got {self.n_candidates!r}")
        for name in ("n_buckets", "search_depth"):  # optional: None means "not set"
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise MiningError(f"{name}: expected a positive int or null, got {value!r}")
        if self.fallback not in FALLBACKS:
            raise MiningError(
                f"fallback: unknown fallback {self.fallback!r}; expected one of {FALLBACKS}"
            )
        if self.mode not in TRNS_MODES:
            raise MiningError(f"mode: unknown TRNS mode {self.mode!r}; expected {TRNS_MODES}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or math.isnan(value):
                raise MiningError(f"{name}: expected a number, got {value!r}")
        if self.low > self.high:
            raise MiningError(f"low, high: low ({self.low}) exceeds high ({self.high})")
        if self.mode == "quantile" and not 0.0 <= self.low <= self.high <= 1.0:
            raise MiningError(
                f"low, high: quantile bounds must satisfy 0 <= low <= high <= 1, "
                f"got {self.low}, {self.high}"
            )

    def public_params(self) -> dict[str, Any]:
        names = _ALLOWED_PARAMS[self.strategy]
        return {name: getattr(self, name) for name in names}


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MiningError(f"{name}: expected a positive int, got {value!r}")


def _as_long_1d(name: str, value: Any, length: int) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.ndim != 1 or tensor.shape[0] != length:
        raise MiningError(f"{name}: expected shape [{length}], got {list(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise MiningError(f"{name}: expected an integer tensor, got {tensor.dtype}")
    return tensor.long().cpu()


def _check_index(name: str, value: Any, num_rows: int, num_columns: int,
                 allow_missing: bool = False) -> torch.Tensor:
    index = _as_long_1d(name, value, num_rows)
    low = -1 if allow_missing else 0
    if index.numel() and (int(index.min()) < low or int(index.max()) >= num_columns):
        bad = ((index < low) | (index >= num_columns)).nonzero().flatten()[:5].tolist()
        allowed = f"[{low}, {num_columns})"
        raise MiningError(f"{name}: values outside {allowed} in row(s) {bad}")
    return index


# --------------------------------------------------------------------------------------
# Per-chunk kernels
# --------------------------------------------------------------------------------------


class _Workspace:
    """Buffers reused across chunks (fresh large allocations cost page faults)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, int], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        key = (name, dtype, device)
        numel = shape[0] * shape[1]
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel].view(shape)


def _mine_chunk(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, tgt: torch.Tensor,
                exc: torch.Tensor | None, cfg: _MiningConfig,
                work: _Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """Set membership mask [r, N] (bool) and fallback flags [r] for one chunk."""
    rows, n = x.shape
    mask = work.get("mask", (rows, n), torch.bool, x.device)
    fb = torch.zeros(rows, dtype=torch.bool, device=x.device)
    if cfg.strategy == "qure":
        fb = _two_drops_chunk(x, lo, hi, tgt, exc, cfg, work, mask)
    elif cfg.strategy == "all":
        mask.fill_(True)
    elif cfg.strategy in ("topk", "after_target_topk"):
        mask.copy_(_ranked_topk(x, tgt, exc, cfg.k, after_target=cfg.strategy != "topk"))
    else:
        fb = _trns_chunk(x, tgt, exc, cfg, mask)
    ar = torch.arange(rows, device=x.device)
    mask[ar, tgt] = False
    if exc is not None:
        has = exc >= 0
        mask[ar[has], exc[has]] = False
    return mask, fb


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


def _stable_descending(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank rows: descending scores, ties by lower column (equal values incl. ±0)."""
    return torch.sort(x, dim=1, descending=True, stable=True)


def _ranked_topk(x: torch.Tensor, tgt: torch.Tensor, exc: torch.Tensor | None, k: int,
                 after_target: bool) -> torch.Tensor:
    """Mask of the first ``k`` eligible ranked columns (after the target if asked)."""
    _, order = _stable_descending(x)
    eligible = order != tgt[:, None]
    if exc is not None:
        eligible &= order != exc[:, None]
    if after_target:
        pos_t = (order == tgt[:, None]).to(torch.int32).argmax(1)
        eligible &= torch.arange(x.shape[1], device=x.device) > pos_t[:, None]
    chosen = eligible & (eligible.cumsum(1) <= k)
    return torch.zeros_like(chosen).scatter_(1, order, chosen)


def _two_drops_chunk(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, tgt: torch.Tensor,
                     exc: torch.Tensor | None, cfg: _MiningConfig, work: _Workspace,
                     mask: torch.Tensor) -> torch.Tensor:
    """Fill ``mask`` with the two-drops sets of a chunk; return the fallback flags."""
    rows, n = x.shape
    solved = torch.zeros(rows, dtype=torch.bool, device=x.device)
    # The histogram certifies the largest drops of the whole tail; a bounded search
    # depth needs the ranked row (sorted path).
    if n >= 4 and cfg.search_depth is None:
        if cfg.n_buckets is not None:
            levels = [cfg.n_buckets]
        else:
            # A finer second pass rescues most rows the coarse one cannot certify, at a
            # fraction of the cost of sorting them.
            levels = [max(16, n // 16)]
            if n // 2 > levels[0]:
                levels.append(n // 2)
        solved = _two_drops_histogram(x, lo, hi, tgt, levels[0], cfg, work, mask)
        for nb in levels[1:]:
            if bool(solved.all()):
                break
            retry = (~solved).nonzero().flatten()
            sub_mask = work.get("retry_mask", (retry.numel(), n), torch.bool, x.device)
            sub_solved = _two_drops_histogram(x[retry], lo[retry], hi[retry], tgt[retry], nb,
                                              cfg, work, sub_mask)
            done = sub_solved.nonzero().flatten()
            mask[retry[done]] = sub_mask[done]
            solved[retry[done]] = True
    fb = torch.zeros(rows, dtype=torch.bool, device=x.device)
    if not bool(solved.all()):
        slow = (~solved).nonzero().flatten()
        sub_mask, sub_fb = _two_drops_sorted(
            x[slow], tgt[slow], None if exc is None else exc[slow], cfg)
        mask[slow] = sub_mask
        fb[slow] = sub_fb
    return fb


def _two_drops_histogram(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                         tgt: torch.Tensor, nb: int, cfg: _MiningConfig, work: _Workspace,
                         mask: torch.Tensor) -> torch.Tensor:
    """Sort-free two-drops for the rows it can certify; returns which rows it solved.

    Each row's scores are counted into ``nb`` equal-width buckets through a map that is
    monotone in the score, so a bucket holds a run of consecutive ranks. Any drop that
    stays within two adjacent buckets is at most about two bucket widths (``bound``).
    A larger drop must cross an empty bucket; its exact size is the minimum of the
    bucket above the empty run minus the maximum of the bucket below, and only the
    few buckets next to an empty one are ever opened to get those extremes. Large drops
    that exceed ``bound`` and the first large drop left out of the candidate list are
    the leading drops of the release's order, in the same order (equal drops: the
    earlier first), so the pair walk over them is exact. Rows whose walk needs more
    drops than that certified prefix are left to the sorted path.
    """
    rows, n = x.shape
    dev, dt = x.device, x.dtype
    solved = torch.zeros(rows, dtype=torch.bool, device=dev)
    if min(cfg.n_candidates + 1, nb) < 2:
        return solved
    span = hi - lo
    scale = nb / span
    ok = torch.isfinite(span) & (span > 0) & torch.isfinite(scale)
    if not bool(ok.any()):
        return solved
    sel = None if bool(ok.all()) else ok.nonzero().flatten()
    if sel is not None:
        x, tgt, lo, span, scale = x[sel], tgt[sel], lo[sel], span[sel], scale[sel]
    r = x.shape[0]
    # fl(x - lo) >= 0 and fl(span * fl(nb / span)) < nb + 1, so buckets lie in [0, nb].
    y = work.get("scaled", (r, n), dt, dev)
    torch.sub(x, lo[:, None], out=y)
    y.mul_(scale[:, None])
    bucket = work.get("bucket", (r, n), torch.int64, dev)
    bucket.copy_(y)  # truncation == floor for y >= 0; any monotone map would do
    nbk = nb + 1
    count = work.get("count", (r, nbk), dt, dev).zero_()
    count.scatter_add_(1, bucket, torch.ones(1, dtype=dt, device=dev).expand(r, n))

    st = x.gather(1, tgt[:, None])
    kt = bucket.gather(1, tgt[:, None])
    ks = torch.arange(nbk, device=dev)
    full = count > 0
    empty_below = torch.ones_like(full)
    empty_below[:, 1:] = ~full[:, :-1]
    empty_above = torch.ones_like(full)
    empty_above[:, :-1] = ~full[:, 1:]
    # Buckets next to an empty one (and the target's) are opened for exact extremes.
    opened = full & (empty_below | empty_above | (ks == kt)) & (ks <= kt)
    pick = opened.to(torch.uint8).gather(1, bucket).view(-1).nonzero().flatten()
    key = torch.div(pick, n, rounding_mode="floor") * nbk + bucket.view(-1)[pick]
    vals = x.reshape(-1)[pick]
    bmax = torch.full((r * nbk,), -math.inf, dtype=dt, device=dev)
    bmax.scatter_reduce_(0, key, vals, "amax")
    bmin = torch.full((r * nbk,), math.inf, dtype=dt, device=dev)
    bmin.scatter_reduce_(0, key, vals, "amin")
    bmax, bmin = bmax.view(r, nbk), bmin.view(r, nbk)

    # Any drop inside one bucket or between adjacent buckets is at most two widths plus
    # the bucket map's rounding (under 2^-19 of the span in float32, far less in
    # float64); the 2^-16 term and the slack factor cover it and the bound's own rounding.
    span64 = span.double()[:, None]
    bound = span64 * (2.0 / nb) * (1 + 2.0**-10) + span64 * 2.0**-16
    prevmax = torch.full_like(bmax, -math.inf)
    prevmax[:, 1:] = bmax.cummax(1).values[:, :-1]
    below = count.cumsum(1) - count  # items in lower buckets
    large = full & empty_below & (below > 0) & (ks <= kt)
    # The drop into the target's bucket starts at the bucket's minimum. That item is in
    # the tail if it scores below the target, or if it ties the target at a higher
    # column; otherwise the drop is the target's own and not a tail drop.
    min_t = bmin.gather(1, kt)
    at_min = (min_t == st).flatten()
    tied_after = torch.zeros_like(at_min)
    check = (at_min & (count.gather(1, kt).flatten() > 1)).nonzero().flatten()
    if check.numel():
        cols = torch.arange(n, device=dev)
        tied_after[check] = ((x[check] == st[check]) & (cols > tgt[check, None])).any(1)
    large &= ~((ks == kt) & (at_min & ~tied_after)[:, None])
    gap = torch.where(large, bmin - prevmax, -math.inf)

    m = min(cfg.n_candidates + 1, nbk)
    gval, gbin = gap.topk(m, dim=1)
    # Equal drops: the earlier one (higher bucket) first, as in a stable sort.
    gbin, perm = gbin.sort(dim=1, descending=True)
    gval = gval.gather(1, perm)
    gval, perm = gval.sort(dim=1, descending=True, stable=True)
    gbin = gbin.gather(1, perm)
    floor_gap = gval[:, -1:] if m == cfg.n_candidates + 1 else torch.full_like(st, -math.inf)
    certified = (gval.double() > bound) & (gval > floor_gap)

    # Items at or above bucket k; differences give the number of items between drops.
    above = count.sum(1, keepdim=True) - below
    pos = above.gather(1, gbin)
    qualifies = certified[:, 1:] & ((pos[:, 1:] - pos[:, :-1]).abs() > cfg.consecutive_threshold)
    found = qualifies.any(1)
    first = qualifies.to(torch.int32).argmax(1, keepdim=True)
    b1, b2 = gbin.gather(1, first), gbin.gather(1, first + 1)
    upper_bin, lower_bin = torch.maximum(b1, b2), torch.minimum(b1, b2)
    # Set: everything below the earlier drop and above the later one.
    top_value = prevmax.gather(1, upper_bin)
    bottom_value = bmin.gather(1, lower_bin)

    if sel is None:
        torch.le(x, top_value, out=mask)
        tmp = work.get("tmp_mask", (r, n), torch.bool, dev)
        torch.ge(x, bottom_value, out=tmp)
        mask &= tmp
        solved = found
    else:
        mask[sel] = (x <= top_value) & (x >= bottom_value)
        solved[sel] = found
    return solved


def _two_drops_sorted(x: torch.Tensor, tgt: torch.Tensor, exc: torch.Tensor | None,
                      cfg: _MiningConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact two-drops by sorting every row (any values; used for uncertified rows)."""
    rows, n = x.shape
    dev = x.device
    values, order = _stable_descending(x)
    pos_t = (order == tgt[:, None]).to(torch.int32).argmax(1)
    positions = torch.arange(n, device=dev)
    found = torch.zeros(rows, dtype=torch.bool, device=dev)
    chosen = torch.zeros(rows, n, dtype=torch.bool, device=dev)
    if n >= 4:
        upper, lower = values[:, :-1], values[:, 1:]
        drops = torch.where(lower == upper, torch.zeros((), dtype=x.dtype, device=dev),
                            lower - upper)
        in_tail = positions[: n - 1] > pos_t[:, None]
        if cfg.search_depth is not None:
            in_tail &= positions[: n - 1] <= pos_t[:, None] + cfg.search_depth
        drops = drops.masked_fill(~in_tail, math.inf)
        drop_order = torch.sort(drops, dim=1, stable=True).indices
        n_drops = in_tail.sum(1)  # the drops the walk may pair (others sort last as +inf)
        a, b = drop_order[:, :-1], drop_order[:, 1:]
        pair = torch.arange(n - 2, device=dev)
        qualifies = ((a - b).abs() > cfg.consecutive_threshold) & (
            pair + 1 < n_drops[:, None])
        found = qualifies.any(1)
        first = qualifies.to(torch.int32).argmax(1, keepdim=True)
        pa, pb = a.gather(1, first), b.gather(1, first)
        start, stop = torch.minimum(pa, pb), torch.maximum(pa, pb)
        chosen = (positions > start) & (positions <= stop) & found[:, None]
    fb = ~found
    if cfg.fallback == "after_target_topk" and bool(fb.any()):
        eligible = positions > pos_t[:, None]
        if exc is not None:
            eligible &= order != exc[:, None]
        extra = eligible & (eligible.cumsum(1) <= cfg.fallback_k) & fb[:, None]
        chosen |= extra
    return torch.zeros_like(chosen).scatter_(1, order, chosen), fb


def _trns_chunk(x: torch.Tensor, tgt: torch.Tensor, exc: torch.Tensor | None,
                cfg: _MiningConfig, mask: torch.Tensor) -> torch.Tensor:
    rows, n = x.shape
    dev = x.device
    st = x.gather(1, tgt[:, None])
    delta = torch.where(x == st, torch.zeros((), dtype=x.dtype, device=dev), st - x)
    eligible = torch.ones(rows, n, dtype=torch.bool, device=dev)
    ar = torch.arange(rows, device=dev)
    eligible[ar, tgt] = False
    if exc is not None:
        has = exc >= 0
        eligible[ar[has], exc[has]] = False
    if cfg.mode == "quantile":
        ranked = delta.masked_fill(~eligible, math.nan).sort(dim=1).values  # NaN last
        count = eligible.sum(1)
        low = _sorted_quantile(ranked, count, cfg.low)
        high = _sorted_quantile(ranked, count, cfg.high)
    else:
        low = torch.full((rows, 1), cfg.low, dtype=x.dtype, device=dev)
        high = torch.full((rows, 1), cfg.high, dtype=x.dtype, device=dev)
    torch.logical_and(eligible, (delta >= low) & (delta <= high), out=mask)
    fb = ~mask.any(1)
    if bool(fb.any()):
        rows_fb = fb.nonzero().flatten()
        if cfg.fallback == "after_target_topk":
            mask[rows_fb] = _ranked_topk(
                x[rows_fb], tgt[rows_fb], None if exc is None else exc[rows_fb],
                cfg.fallback_k, after_target=True)
    return fb


def _sorted_quantile(ranked: torch.Tensor, count: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile ``q`` of each row's first ``count`` values (ascending), NumPy 'linear'.

    Rows without values get NaN, which matches nothing.
    """
    h = q * (count.to(torch.float64) - 1).clamp(min=0)
    lo = h.floor()
    frac = (h - lo).to(ranked.dtype)[:, None]
    lo = lo.long()
    hi = torch.minimum(lo + 1, (count - 1).clamp(min=0))
    v_lo = ranked.gather(1, lo[:, None])
    v_hi = ranked.gather(1, hi[:, None])
    out = torch.where((frac == 0) | (v_lo == v_hi), v_lo, v_lo + frac * (v_hi - v_lo))
    return out.masked_fill((count == 0)[:, None], math.nan)


# --------------------------------------------------------------------------------------
# Plain per-query reference (NumPy), for tests and benchmarks
# --------------------------------------------------------------------------------------


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


def validate_strategy_params(strategy: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`MiningError` naming the bad key if ``strategy`` rejects ``params``
    (lets a config be checked before any training starts)."""
    _MiningConfig.build(strategy, params)

"""QuRe's two-drops rule (strategy ``"qure"``) on a chunk of score rows.

Most rows never need a sort. Each row is counted into equal-width buckets by a map
monotone in the score; a drop confined to two adjacent buckets is at most about two
bucket widths, and any larger drop crosses an empty bucket, so its exact size comes from
the extremes of the two buckets around the empty run (only those buckets are opened).
When the largest such drops provably lead the release's drop order and a qualifying pair
is found among them, the set is read off by two comparisons per score
(:func:`_two_drops_histogram`). Rows this certificate cannot settle are retried with
finer buckets, then handled by an exact sort-based path (:func:`_two_drops_sorted`: ties
at the decisive drops, non-finite scores, tiny galleries, adversarial spacings). Both
paths equal the plain per-query NumPy transcription of the rule in the tests
(``tests/mining_reference.py``), checked on random and adversarial matrices.
"""

from __future__ import annotations

import math

import torch

from qure.mining.base import _stable_descending, _Workspace
from qure.mining.config import _MiningConfig


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

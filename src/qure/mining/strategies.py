"""Strategy dispatch for one chunk of score rows, and the sort-based strategies
(``all``, ``topk``, ``after_target_topk``, ``trns``); ``qure`` is in :mod:`.two_drops`."""

from __future__ import annotations

import math

import torch

from qure.mining.base import _stable_descending, _Workspace
from qure.mining.config import _MiningConfig
from qure.mining.two_drops import _two_drops_chunk


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

"""Strategy names, defaults and parameter validation (:func:`validate_strategy_params`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qure.mining.base import MiningError

STRATEGIES: tuple[str, ...] = ("qure", "all", "topk", "after_target_topk", "trns")
FALLBACKS: tuple[str, ...] = ("after_target_topk", "empty", "raise")
TRNS_MODES: tuple[str, ...] = ("quantile", "absolute")

DEFAULT_FALLBACK = "after_target_topk"
DEFAULT_FALLBACK_K = 10
# Placeholders: DQE-CIR's mid-zone bounds are not public (see the methods notes, §A).
DEFAULT_TRNS_MODE = "quantile"
DEFAULT_TRNS_LOW = 0.01
DEFAULT_TRNS_HIGH = 0.10


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


def validate_strategy_params(strategy: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`MiningError` naming the bad key if ``strategy`` rejects ``params``
    (lets a config be checked before any training starts)."""
    _MiningConfig.build(strategy, params)

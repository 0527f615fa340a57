"""Synthetic mini-benchmarks in the real on-disk formats of FashionIQ, CIRR, CIRCO and
HP-FashionIQ, rendered procedurally so the pipeline runs on a laptop with no datasets.

    from qure.synthetic import synthesize
    synthesize("data/synthetic", seed=0, scale="default")   # or scale="smoke"

The folders it writes are read by :mod:`qure.data`'s loaders exactly like real data:
``FashionIQ(out/"fashioniq")``, ``CIRR(out/"cirr")``, ``CIRCO(out/"circo")``,
``HPFashionIQ(out/"hp_fashioniq")``. Each also holds ``oracle.json``, the semantic
ground truth; :func:`load_oracle` (in :mod:`qure.synthetic.oracle`, which needs torch)
turns it into relevance matrices for counting false negatives.
"""

from __future__ import annotations

from typing import Any

from qure.synthetic.generate import BENCHMARKS, SynthesisReport, synthesize
from qure.synthetic.sizes import (
    SCALES,
    CIRCOSizes,
    CIRRSizes,
    FashionIQSizes,
    HPSizes,
    SynthSizes,
)

_ORACLE_EXPORTS = ("Oracle", "QueryTruth", "load_oracle")


def __getattr__(name: str) -> Any:
    # The oracle needs torch; import it on first use so that generating data (the CLI)
    # does not pay torch's start-up time.
    if name in _ORACLE_EXPORTS:
        from qure.synthetic import oracle

        return getattr(oracle, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BENCHMARKS", "SCALES", "CIRCOSizes", "CIRRSizes", "FashionIQSizes", "HPSizes", "Oracle",
    "QueryTruth", "SynthSizes", "SynthesisReport", "load_oracle", "synthesize",
]

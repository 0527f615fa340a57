"""How big each synthetic benchmark is, and the named scales.

``smoke`` is for CI end-to-end runs (everything in a couple of seconds); ``default`` is
the embedded default: large enough that a small model trained for a few minutes on a CPU
learns something and that false negatives visibly matter, small enough to generate all
four benchmarks in well under 30 s on two cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class FashionIQSizes:
    train_triplets: int = 600
    """Per category; every training target is a distinct image (as in the real data)."""
    val_triplets: int = 150
    test_triplets: int = 150
    duplicate_groups: tuple[float, ...] = (0.35, 0.35, 0.2, 0.1)
    """P(a target design is shared by 1, 2, 3, 4 target images): the false-negative rate."""
    distractor_ratio: float = 0.2
    """Extra split images (random designs, not in any triplet) per query image."""
    reuse_reference: float = 0.3
    """P(try to use an existing split image as the reference: candidates are also targets)."""


@dataclass(frozen=True)
class CIRRSizes:
    train_sets: int = 200
    val_sets: int = 50
    test_sets: int = 50
    pairs_per_set: int = 4
    twins: tuple[float, ...] = (0.3, 0.45, 0.25)
    """P(a target design gets 0, 1, 2 extra split images with the same design)."""


@dataclass(frozen=True)
class CIRCOSizes:
    gallery: int = 3000
    val_queries: int = 60
    test_queries: int = 150
    extra_ground_truths: tuple[float, ...] = (0.35, 0.3, 0.2, 0.15)
    """P(planting 0..3 further images that satisfy a query besides its target)."""


@dataclass(frozen=True)
class HPSizes:
    users: int = 12
    comparisons_per_set: int = 10
    shirt_user_share: float = 0.6
    """Fraction of users shown shirts (the rest see toptees), 36/61 in the real set."""


@dataclass(frozen=True)
class SynthSizes:
    fashioniq: FashionIQSizes = field(default_factory=FashionIQSizes)
    cirr: CIRRSizes = field(default_factory=CIRRSizes)
    circo: CIRCOSizes = field(default_factory=CIRCOSizes)
    hp_fashioniq: HPSizes = field(default_factory=HPSizes)
    image_size: int = 64

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


SCALES: dict[str, SynthSizes] = {
    "smoke": SynthSizes(
        fashioniq=FashionIQSizes(train_triplets=20, val_triplets=10, test_triplets=6),
        cirr=CIRRSizes(train_sets=5, val_sets=2, test_sets=2),
        circo=CIRCOSizes(gallery=120, val_queries=8, test_queries=8),
        hp_fashioniq=HPSizes(users=2, comparisons_per_set=4),
    ),
    "default": SynthSizes(),
}


def resolve_scale(scale: str | SynthSizes) -> tuple[str, SynthSizes]:
    """(name, sizes) for a scale name or an explicit :class:`SynthSizes` ("custom")."""
    if isinstance(scale, SynthSizes):
        return "custom", scale
    try:
        return scale, SCALES[scale]
    except KeyError:
        raise ValueError(f"unknown scale {scale!r}; expected one of "
                         f"{', '.join(SCALES)} or a SynthSizes") from None



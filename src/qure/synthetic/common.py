"""Seeded randomness, small text helpers and the build record every generator returns.

Determinism rule: every random decision draws from a generator obtained with
:func:`substream`, keyed by the run seed plus stable string keys (never Python's salted
``hash``), and no output depends on set/dict iteration over unordered data or on time.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

# A design is one value per attribute of a world's schema, in schema order.
Design = tuple[str, ...]

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def substream(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent generator for ``(seed, *keys)``, identical across runs and processes."""
    label = "/".join([str(int(seed)), *map(str, keys)])
    entropy = int.from_bytes(hashlib.sha256(label.encode("utf-8")).digest()[:16], "little")
    return np.random.default_rng(np.random.SeedSequence(entropy))


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One element of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def pick_weighted(rng: np.random.Generator, options: Sequence[T],
                  weights: Sequence[float]) -> T:
    """One element of ``options`` with the given (unnormalised) weights."""
    # bisect on cumulative weights: far cheaper than Generator.choice(p=...) per call.
    cumulative = list(itertools.accumulate(weights))
    index = bisect.bisect_right(cumulative, float(rng.random()) * cumulative[-1])
    return options[min(index, len(options) - 1)]


def sample_weighted(rng: np.random.Generator, options: Sequence[T], weights: Sequence[float],
                    count: int) -> list[T]:
    """``count`` distinct elements, each drawn with the given weights among those left."""
    pool, left = list(options), list(weights)
    chosen = []
    for _ in range(min(count, len(pool))):
        index = pick_weighted(rng, range(len(pool)), left)
        chosen.append(pool.pop(index))
        left.pop(index)
    return chosen


def sample_count(rng: np.random.Generator, probs: Sequence[float], start: int = 0) -> int:
    """An integer ``start + i`` drawn with probability ``probs[i]``."""
    return start + int(pick_weighted(rng, range(len(probs)), probs))


def shuffled(rng: np.random.Generator, items: Sequence[T]) -> list[T]:
    """A new list with ``items`` in a random order."""
    return [items[i] for i in rng.permutation(len(items))]


def unique_ints(rng: np.random.Generator, count: int, low: int, high: int) -> list[int]:
    """``count`` distinct integers from ``[low, high)``, in random order."""
    if high - low < count:
        raise ValueError(f"cannot draw {count} distinct integers from [{low}, {high})")
    return [low + int(i) for i in rng.choice(high - low, size=count, replace=False)]


def capitalize_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def join_clauses(rng: np.random.Generator, clauses: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c`` (sometimes ``a and b and c``)."""
    if len(clauses) <= 1:
        return "".join(clauses)
    if len(clauses) > 2 and rng.random() < 0.5:
        return ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return " and ".join(clauses)


@dataclass(frozen=True)
class ImageJob:
    """One image to render: ``paint(design, render_seed, size)`` -> HxWx3 uint8 array.

    Everything non-semantic (position, scale, tint, noise) is drawn inside ``paint`` from
    ``render_seed``, so the same (design, seed) gives the same pixels wherever it is
    rendered: HP-FashionIQ's JPEG copies are re-renders of FashionIQ's PNGs.
    """

    path: str
    """Path relative to the output root (POSIX separators)."""
    paint: Callable[[Design, int, int], np.ndarray] = field(repr=False)
    design: Design
    render_seed: int
    fmt: str  # "png" or "jpeg"


@dataclass(frozen=True)
class JsonFile:
    """A JSON document to write, with the indentation its real counterpart uses."""

    path: str
    payload: Any = field(repr=False)
    indent: int | None


@dataclass
class BenchmarkBuild:
    """Everything one benchmark generator produces, before anything touches the disk."""

    name: str
    json_files: list[JsonFile]
    images: list[ImageJob]
    counts: Mapping[str, int | float]

    def local_path(self, path: str) -> str:
        """A build path (``<name>/...``) relative to the benchmark's own folder."""
        prefix = self.name + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path!r} is outside the {self.name} folder")
        return path[len(prefix):]

    def planned_files(self) -> set[str]:
        """Every file this build writes, relative to the benchmark folder."""
        paths = [*(f.path for f in self.json_files), *(j.path for j in self.images)]
        return {self.local_path(p) for p in paths}


def relpath(*parts: str) -> str:
    """Join path parts with ``/`` (paths in builds are POSIX, relative to the output root)."""
    return Path(*parts).as_posix()

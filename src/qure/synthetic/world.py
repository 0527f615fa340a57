"""Attribute schemas: what a world's images are made of, and how designs are sampled.

A *design* is the tuple of semantic attribute values of an image (its ground truth). Many
images share a design and differ only in nuisance (position, scale, tint, noise): those are
the false negatives that hard-negative mining must avoid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qure.synthetic.common import Design, pick, pick_weighted, sample_count, sample_weighted

MAX_TRIES = 1000  # rejection sampling bound; valid designs are the vast majority


@dataclass(frozen=True)
class AttributeSchema:
    """The attributes of a world, their values, and which attributes captions never change.

    ``fixed`` attributes (a garment's category) are set by the caller and never edited by
    a composed query; a mismatch on them makes an image irrelevant whatever else matches.
    ``valid`` rejects designs that cannot be rendered legibly (e.g. a blue object on a
    blue background).
    """

    world: str
    attributes: tuple[str, ...]
    values: Mapping[str, tuple[str, ...]]
    fixed: tuple[str, ...] = ()
    weights: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    valid: Callable[[Mapping[str, str]], bool] = field(default=lambda _: True, repr=False)

    @property
    def editable(self) -> tuple[str, ...]:
        return tuple(a for a in self.attributes if a not in self.fixed)

    def position(self, attribute: str) -> int:
        return self.attributes.index(attribute)

    def as_dict(self, design: Design) -> dict[str, str]:
        return dict(zip(self.attributes, design, strict=True))

    def from_dict(self, values: Mapping[str, str]) -> Design:
        return tuple(values[a] for a in self.attributes)

    def _draw(self, rng: np.random.Generator, attribute: str) -> str:
        options = self.values[attribute]
        weights = self.weights.get(attribute)
        return pick_weighted(rng, options, weights) if weights else pick(rng, options)

    def sample(self, rng: np.random.Generator, **given: str) -> Design:
        """A random valid design; ``given`` pins attributes (e.g. ``category="dress"``)."""
        for _ in range(MAX_TRIES):
            values = {a: given[a] if a in given else self._draw(rng, a) for a in self.attributes}
            if self.valid(values):
                return self.from_dict(values)
        raise ValueError(f"no valid {self.world} design with {given}")

    def edit(self, rng: np.random.Generator, design: Design,
             attributes: Sequence[str]) -> Design:
        """``design`` with each of ``attributes`` set to a different (random) value."""
        base = self.as_dict(design)
        for _ in range(MAX_TRIES):
            values = dict(base)
            for attribute in attributes:
                others = [v for v in self.values[attribute] if v != base[attribute]]
                values[attribute] = pick(rng, others)
            if self.valid(values):
                return self.from_dict(values)
        raise ValueError(f"no valid edit of {attributes} for {base}")

    def choose_edits(self, rng: np.random.Generator, count_probs: Sequence[float],
                     attribute_weights: Mapping[str, float] | None = None) -> list[str]:
        """1..len(count_probs) distinct editable attributes, drawn without replacement."""
        count = sample_count(rng, count_probs, start=1)
        pool = self.editable
        weights = [(attribute_weights or {}).get(a, 1.0) for a in pool]
        chosen = set(sample_weighted(rng, pool, weights, count))
        # Schema order, so that captions list changes in a stable order before shuffling.
        return [a for a in pool if a in chosen]

    def differences(self, a: Design, b: Design) -> list[str]:
        """Attributes on which two designs differ, in schema order."""
        return [attr for attr, x, y in zip(self.attributes, a, b, strict=True) if x != y]

    def encode(self, design: Design) -> list[int]:
        """Value indices, attribute by attribute."""
        return [self.values[a].index(v) for a, v in zip(self.attributes, design, strict=True)]

    def describe(self) -> dict[str, Any]:
        """The schema as stored in an oracle file."""
        return {
            "world": self.world,
            "attributes": {a: list(self.values[a]) for a in self.attributes},
            "fixed": list(self.fixed),
        }


def encode_designs(schema: AttributeSchema, designs: Sequence[Design]) -> np.ndarray:
    """Value indices of many designs: an int64 array [len(designs), n_attributes]."""
    codes = [schema.encode(d) for d in designs]
    return np.array(codes, dtype=np.int64).reshape(len(codes), len(schema.attributes))


def matching_mask(schema: AttributeSchema, codes: np.ndarray,
                  required: Mapping[str, str]) -> np.ndarray:
    """Which encoded designs carry every ``required`` attribute value (a bool vector).

    The generators use this to compute ground truths; :mod:`qure.synthetic.oracle`
    recomputes them from the written oracle file, and the tests check both agree.
    """
    mask = np.ones(len(codes), dtype=bool)
    for attribute, value in required.items():
        mask &= codes[:, schema.position(attribute)] == schema.values[attribute].index(value)
    return mask


ORACLE_FORMAT = "qure-synthetic-oracle/1"


def oracle_document(benchmark: str, schema: AttributeSchema, images: Mapping[str, Design],
                    queries: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The JSON stored as ``<benchmark root>/oracle.json`` (read by :mod:`.oracle`).

    ``images`` maps every image name to its design (values in attribute order);
    ``queries[split][query_id]`` holds ``reference``, ``target`` and ``required`` (the
    attribute values the composed query asks for; an attribute left out is free).
    """
    return {
        "format": ORACLE_FORMAT,
        "benchmark": benchmark,
        **schema.describe(),
        "images": {name: list(design) for name, design in images.items()},
        "queries": {split: dict(records) for split, records in queries.items()},
    }

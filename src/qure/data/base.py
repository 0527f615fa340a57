"""One abstraction for every composed-image-retrieval benchmark.

A benchmark split is a list of :class:`CIRQuery` (reference image + modification text,
with zero or more ground-truth targets) ranked against a :class:`Gallery` of image names,
under a :class:`Protocol` that says how the ranking is scored. Per-dataset modules only
parse their own files into these types; everything downstream (mining, training,
metrics) sees the same objects.

Image names are strings everywhere (CIRCO's integer COCO ids included) so that one code
path handles all four datasets; writers that need integers convert at the edge.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch

from qure.errors import DatasetFormatError, MissingImageError
from qure.io import read_json

Locator = Callable[[str], tuple[Path, ...]]


@dataclass(frozen=True)
class CIRQuery:
    """One composed query.

    ``text`` is the dataset's protocol text (e.g. FashionIQ's "C0 and c1"), before any
    model-specific processing such as BLIP's caption cleaning.
    """

    query_id: str
    reference: str
    text: str
    targets: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    category: str | None = None
    record: int = -1

    @property
    def target(self) -> str | None:
        """The primary target (CIRR ``target_hard``, CIRCO ``target_img_id``)."""
        return self.targets[0] if self.targets else None


@dataclass(frozen=True)
class Protocol:
    """How rankings over this split are scored (see the dataset notes for each flag)."""

    remove_reference: bool
    """Drop the reference image from each ranking (CIRR yes; FashionIQ, CIRCO no)."""
    recall_ks: tuple[int, ...] = ()
    subset_ks: tuple[int, ...] = ()
    map_ks: tuple[int, ...] = ()


@dataclass
class Gallery:
    """The ranked image corpus of one split: names in column order and how to find them."""

    names: list[str]
    source: Path
    locate: Locator = field(repr=False)

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def __contains__(self, name: object) -> bool:
        return name in self.index

    def find(self, name: str) -> Path | None:
        """The first existing file for ``name``, or None."""
        for candidate in self.locate(name):
            if candidate.is_file():
                return candidate
        return None

    def image_path(self, name: str, record: str | None = None) -> Path:
        """The image file for ``name``; raises :class:`MissingImageError` naming it."""
        found = self.find(name)
        if found is None:
            raise MissingImageError(name, list(self.locate(name)), record)
        return found

    def missing(self, names: Iterable[str] | None = None) -> list[str]:
        """Names (default: the whole gallery) with no image on disk, in order."""
        return [n for n in (self.names if names is None else names) if self.find(n) is None]


@dataclass
class CIRSplit:
    """Queries of one split (and category) with the gallery they are ranked against."""

    dataset: str
    split: str
    category: str | None
    queries: list[CIRQuery]
    gallery: Gallery
    protocol: Protocol
    source: Path

    def __len__(self) -> int:
        return len(self.queries)

    def __iter__(self) -> Iterator[CIRQuery]:
        return iter(self.queries)

    @property
    def name(self) -> str:
        parts = [self.dataset, self.split] + ([self.category] if self.category else [])
        return "/".join(parts)

    @property
    def has_targets(self) -> bool:
        return bool(self.queries) and all(q.targets for q in self.queries)

    def _require_targets(self) -> None:
        if not self.has_targets:
            raise ValueError(f"{self.name} has no ground-truth targets (a test split?)")

    def target_indices(self) -> torch.Tensor:
        """Gallery column of each query's primary target, shape [Q]."""
        self._require_targets()
        index = self.gallery.index
        return torch.tensor([index[q.targets[0]] for q in self.queries], dtype=torch.long)

    def reference_indices(self) -> torch.Tensor:
        """Gallery column of each reference, or -1 where it is not in the gallery."""
        index = self.gallery.index
        return torch.tensor([index.get(q.reference, -1) for q in self.queries],
                            dtype=torch.long)

    def ground_truth_indices(self) -> torch.Tensor:
        """All ground truths per query as gallery columns, padded with -1: [Q, max_gt]."""
        self._require_targets()
        index = self.gallery.index
        width = max(len(q.targets) for q in self.queries)
        out = torch.full((len(self.queries), width), -1, dtype=torch.long)
        for row, query in enumerate(self.queries):
            out[row, : len(query.targets)] = torch.tensor([index[t] for t in query.targets])
        return out

    def member_indices(self) -> torch.Tensor:
        """CIRR img_set members as gallery columns, [Q, n_members]."""
        if not self.queries or not all(q.members for q in self.queries):
            raise ValueError(f"{self.name} has no img_set members")
        index = self.gallery.index
        return torch.tensor([[index[m] for m in q.members] for q in self.queries],
                            dtype=torch.long)

    def query_images(self) -> list[str]:
        """Every distinct image the queries refer to (references, targets, members)."""
        seen: dict[str, None] = {}
        for q in self.queries:
            for name in (q.reference, *q.targets, *q.members):
                seen.setdefault(name, None)
        return list(seen)

    def images(self) -> list[str]:
        """The gallery plus any image a query names outside it, each once."""
        return list(dict.fromkeys([*self.gallery.names, *self.query_images()]))

    def image_path(self, name: str) -> Path:
        return self.gallery.image_path(name, record=self.name)


class CIRDataset(ABC):
    """A benchmark on disk under ``root``.

    Subclasses say where their files are and how one record becomes a :class:`CIRQuery`;
    reading, record-level error reporting and query/gallery validation live here once.
    """

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    categories: ClassVar[tuple[str | None, ...]] = (None,)
    protocol: ClassVar[Protocol]

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def check_split(self, split: str, category: str | None) -> None:
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; expected one of "
                             f"{', '.join(self.splits)}")
        if category not in self.categories:
            allowed = ", ".join(str(c) for c in self.categories)
            raise ValueError(f"{self.name}: unknown category {category!r}; expected one of "
                             f"{allowed}")

    @abstractmethod
    def annotation_file(self, split: str, category: str | None = None) -> Path:
        """The file holding the split's query records."""

    @abstractmethod
    def parse_query(self, record: Any, index: int, path: Path, split: str,
                    category: str | None) -> CIRQuery:
        """Turn one annotation record into a query (raise DatasetFormatError if bad)."""

    @abstractmethod
    def load_gallery(self, split: str, category: str | None = None) -> Gallery:
        """The image corpus of a split (needs only the split/index file)."""

    def load_queries(self, split: str, category: str | None = None) -> list[CIRQuery]:
        self.check_split(split, category)
        path = self.annotation_file(split, category)
        records = read_json(path, list)
        return [self.parse_query(r, i, path, split, category) for i, r in enumerate(records)]

    def load_split(self, split: str, category: str | None = None) -> CIRSplit:
        """Queries of a split with their gallery; every image a query names must be in it."""
        self.check_split(split, category)
        gallery = self.load_gallery(split, category)
        queries = self.load_queries(split, category)
        source = self.annotation_file(split, category)
        for query in queries:
            where = f"{query.record} ({query.query_id})"
            check_in_gallery([query.reference], gallery, source, where, "reference")
            check_in_gallery(query.targets, gallery, source, where, "target")
            check_in_gallery(query.members, gallery, source, where, "img_set member")
        return CIRSplit(self.name, split, category, queries, gallery, self.protocol, source)

    def subsets(self) -> Iterator[tuple[str, str | None]]:
        for split in self.splits:
            for category in self.categories:
                yield split, category


# --- helpers shared by the per-dataset parsers -------------------------------------------

def require_fields(record: Any, keys: Sequence[str], path: Path, where: int | str) -> Mapping:
    """Check that a record is a JSON object holding ``keys``; name the record if not."""
    if not isinstance(record, Mapping):
        raise DatasetFormatError(path, f"expected an object, got {type(record).__name__}",
                                 record=where)
    missing = [k for k in keys if k not in record]
    if missing:
        raise DatasetFormatError(path, f"missing key(s) {', '.join(map(repr, missing))}",
                                 record=where)
    return record


def check_in_gallery(names: Iterable[str], gallery: Gallery, path: Path, where: int | str,
                     role: str) -> None:
    for name in names:
        if name not in gallery:
            raise DatasetFormatError(
                path, f"{role} {name!r} is not in the gallery ({gallery.source})", record=where)

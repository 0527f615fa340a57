"""Training queries and the corpus their hard negatives are mined from.

The released code mines against different corpora per dataset, and we keep that:

* FashionIQ: each query ranks only its own category's *training targets* (5,985 /
  5,988 / 6,027 on the real data), not the split files' 11-19k images. Targets are
  unique within a category, so the corpus has no duplicates per group.
* CIRR: every query ranks the whole train split (16,939 images on the real data).

Queries of several splits (FashionIQ's three categories) are concatenated; each query
and corpus column carries a group id and mining ranks within the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from qure.data.base import CIRSplit

CorpusKind = Literal["targets", "gallery"]
CORPUS_BY_DATASET: dict[str, CorpusKind] = {"fashioniq": "targets", "cirr": "gallery"}


@dataclass
class TrainingData:
    """Flat arrays over all training queries; columns index :attr:`corpus`."""

    query_ids: list[str]
    references: list[str]
    texts: list[str]
    target: torch.Tensor  # [Q] corpus column of each target
    reference_column: torch.Tensor  # [Q] corpus column of the reference, -1 if absent
    query_group: torch.Tensor  # [Q]
    corpus: list[str]  # [N] image names, grouped contiguously
    corpus_group: torch.Tensor  # [N]
    group_names: list[str]
    splits: list[str]  # the split each query came from, e.g. "fashioniq/train/dress"

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def num_columns(self) -> int:
        return len(self.corpus)

    def group_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[G] first column and size of each group (groups are contiguous)."""
        groups = len(self.group_names)
        sizes = torch.bincount(self.corpus_group, minlength=groups)
        starts = torch.cumsum(sizes, 0) - sizes
        return starts, sizes

    def image_names(self) -> list[str]:
        """Every image training touches (references and corpus), each once."""
        return list(dict.fromkeys([*self.references, *self.corpus]))

    @classmethod
    def from_splits(cls, splits: Sequence[CIRSplit],
                    corpus: CorpusKind | None = None) -> TrainingData:
        """Assemble training data; ``corpus`` defaults to the dataset's released choice."""
        if not splits:
            raise ValueError("no training splits given")
        query_ids: list[str] = []
        references: list[str] = []
        texts: list[str] = []
        targets: list[int] = []
        ref_cols: list[int] = []
        query_group: list[int] = []
        corpus_names: list[str] = []
        corpus_group: list[int] = []
        split_names: list[str] = []
        for group, split in enumerate(splits):
            kind = corpus or CORPUS_BY_DATASET.get(split.dataset)
            if kind is None:
                raise ValueError(f"{split.name}: no training corpus known for dataset "
                                 f"{split.dataset!r}; pass corpus='targets' or 'gallery'")
            if not split.has_targets:
                raise ValueError(f"{split.name}: training needs targets for every query")
            names = (list(dict.fromkeys(q.targets[0] for q in split)) if kind == "targets"
                     else list(split.gallery.names))
            offset = len(corpus_names)
            column = {name: offset + i for i, name in enumerate(names)}
            corpus_names.extend(names)
            corpus_group.extend([group] * len(names))
            for query in split:
                query_ids.append(query.query_id)
                references.append(query.reference)
                texts.append(query.text)
                targets.append(column[query.targets[0]])
                ref_cols.append(column.get(query.reference, -1))
                query_group.append(group)
                split_names.append(split.name)
        long = torch.long
        return cls(query_ids, references, texts, torch.tensor(targets, dtype=long),
                   torch.tensor(ref_cols, dtype=long), torch.tensor(query_group, dtype=long),
                   corpus_names, torch.tensor(corpus_group, dtype=long),
                   [s.category or s.dataset for s in splits], split_names)

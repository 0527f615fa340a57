"""Score benchmark splits with a backbone and compute each dataset's reference metrics.

Everything starts from frozen image features (a :class:`FeaturesByName`), exactly as the
trainer does, so evaluation during training and stand-alone evaluation agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from qure.data.base import CIRSplit
from qure.intervals import per_query_records
from qure.metrics import circo_metrics, cirr_metrics, fashioniq_metrics

#: The single number each dataset's papers lead with (and model selection uses).
HEADLINE_METRIC = {"fashioniq": "average_recall", "cirr": "avg", "circo": "mAP@10"}


@dataclass
class FeaturesByName:
    """Frozen image features looked up by image name: ``features[i]`` belongs to
    ``names[i]`` (rows of a :class:`~qure.models.feature_cache.FeatureCache`, the on-disk
    cache, or of any tensor)."""

    names: list[str]
    features: torch.Tensor  # [n, P, C]

    def __post_init__(self) -> None:
        if self.features.shape[0] != len(self.names):
            raise ValueError(f"{len(self.names)} names but {self.features.shape[0]} "
                             "feature rows")

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def rows(self, names: Sequence[str]) -> torch.Tensor:
        index = self.index
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"{len(missing)} image(s) have no frozen features, e.g. "
                           f"{missing[:3]}; rebuild the feature cache")
        return torch.tensor([index[n] for n in names], dtype=torch.long)

    def __getitem__(self, names: Sequence[str]) -> torch.Tensor:
        return self.features[self.rows(names)].float()


@torch.inference_mode()
def encode_queries(backbone, table: FeaturesByName, references: Sequence[str],
                   texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """[Q, D] query embeddings, batched."""
    device = backbone.temp.device
    out = [backbone.encode_queries(table[references[i:i + batch_size]].to(device),
                                   list(texts[i:i + batch_size]))
           for i in range(0, len(references), batch_size)]
    return torch.cat(out).float().cpu()


@torch.inference_mode()
def encode_gallery(backbone, table: FeaturesByName, names: Sequence[str],
                   batch_size: int = 256) -> torch.Tensor:
    """[N, T, D] per-token image embeddings, batched."""
    device = backbone.temp.device
    out = [backbone.encode_images(table[names[i:i + batch_size]].to(device))
           for i in range(0, len(names), batch_size)]
    return torch.cat(out).float().cpu()


@torch.inference_mode()
def split_scores(backbone, table: FeaturesByName, split: CIRSplit,
                 batch_size: int = 256) -> torch.Tensor:
    """[Q, N] scores of a split's queries against its gallery (no temperature)."""
    queries = encode_queries(backbone, table, [q.reference for q in split],
                             [q.text for q in split], batch_size)
    gallery = encode_gallery(backbone, table, split.gallery.names, batch_size)
    # Scored where the model is (the GPU on CUDA runs); the ranking is read on the CPU.
    device = backbone.temp.device
    return backbone.score(queries.to(device), gallery.to(device)).float().cpu()


def metrics_from_scores(scores: Mapping[str, torch.Tensor],
                        splits: Sequence[CIRSplit]) -> dict[str, float]:
    """Reference metrics of one dataset's splits, given each split's [Q, N] scores.

    ``scores`` is keyed by :attr:`CIRSplit.name`. FashionIQ categories are combined into
    the category averages; CIRR and CIRCO take one split.
    """
    datasets = {s.dataset for s in splits}
    if len(datasets) != 1:
        raise ValueError(f"evaluate one dataset at a time, got {sorted(datasets)}")
    dataset = datasets.pop()
    if dataset == "fashioniq":
        return fashioniq_metrics({s.category: (scores[s.name], s.target_indices())
                                  for s in splits})
    if len(splits) != 1:
        raise ValueError(f"{dataset}: expected one split, got {len(splits)}")
    (split,) = splits
    if dataset == "cirr":
        return cirr_metrics(scores[split.name], split.target_indices(),
                            split.reference_indices(), split.member_indices())
    if dataset == "circo":
        return circo_metrics(scores[split.name], split.ground_truth_indices())
    raise ValueError(f"no metrics defined for dataset {dataset!r}")


def records_from_scores(scores: Mapping[str, torch.Tensor],
                        splits: Sequence[CIRSplit]) -> dict[str, Any]:
    """The per-query records behind :func:`metrics_from_scores` (qure.intervals): the
    same arguments go to the same metric code, so the bootstrap's point estimates are the
    reported metrics."""
    dataset = splits[0].dataset
    if dataset == "fashioniq":
        return per_query_records(
            "fashioniq", {s.category: (scores[s.name], s.target_indices()) for s in splits},
            query_ids={s.category: [q.query_id for q in s] for s in splits})
    (split,) = splits
    ids = [q.query_id for q in split]
    if dataset == "cirr":
        return per_query_records("cirr", scores[split.name], split.target_indices(),
                                 split.reference_indices(), split.member_indices(),
                                 query_ids=ids)
    if dataset == "circo":
        return per_query_records("circo", scores[split.name], split.ground_truth_indices(),
                                 query_ids=ids)
    raise ValueError(f"no per-query records defined for dataset {dataset!r}")


def evaluate_with_records(backbone, table: FeaturesByName, splits: Sequence[CIRSplit],
                          batch_size: int = 256) -> tuple[dict[str, float], dict[str, Any]]:
    """:func:`evaluate`, and the per-query records its metrics are made of."""
    scores = all_split_scores(backbone, table, splits, batch_size)
    return metrics_from_scores(scores, splits), records_from_scores(scores, splits)


def all_split_scores(backbone, table: FeaturesByName, splits: Sequence[CIRSplit],
                     batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Every split's [Q, N] scores, by split name, with the backbone in eval mode (its
    training mode restored afterwards)."""
    was_training = backbone.training
    backbone.eval()
    try:
        return {s.name: split_scores(backbone, table, s, batch_size) for s in splits}
    finally:
        backbone.train(was_training)


def evaluate(backbone, table: FeaturesByName, splits: Sequence[CIRSplit],
             batch_size: int = 256) -> dict[str, float]:
    """Score every split and return the dataset's metrics (see :func:`metrics_from_scores`)."""
    return metrics_from_scores(all_split_scores(backbone, table, splits, batch_size), splits)

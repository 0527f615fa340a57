"""Stage 1 as the model stages see it: which splits a stage reads, where their images
are, and the one place the missing-image policy is applied.

Real data has gaps (FashionIQ's Amazon URLs are partly dead). The policy (config key
``data.missing_images``) is applied here, once, for every stage that reads splits:

- ``fail``: any image a split needs that is not on disk stops the stage, naming it
  (the synthetic benchmarks, which must be complete);
- ``drop``: a query whose reference, target(s) or img_set members are missing is left
  out, and a missing gallery image leaves the gallery. Nothing is edited on disk: each
  stage reports, per split and category, how many queries and gallery images were left
  out (:func:`missing_report`), and the evaluation files carry the counts to the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from qure.data import HPFashionIQ, open_dataset
from qure.data.base import CIRSplit, Gallery
from qure.errors import ConfigError, MissingImageError
from qure.policies import MISSING_POLICIES

log = logging.getLogger(__name__)

#: Splits used for training, validation and the test servers per dataset.
TRAIN_SPLIT = {"fashioniq": "train", "cirr": "train"}
VAL_SPLIT = {"fashioniq": "val", "cirr": "val", "circo": "val"}
TEST_SPLIT = {"cirr": "test1", "circo": "test"}


def check_policy(policy: str) -> str:
    if policy not in MISSING_POLICIES:
        raise ConfigError(f"data.missing_images: expected one of {', '.join(MISSING_POLICIES)}"
                          f", got {policy!r}")
    return policy


def present_split(split: CIRSplit, policy: str) -> tuple[CIRSplit, dict[str, int]]:
    """``split`` without what is missing on disk (policy ``drop``), and the counts.

    Under ``fail`` the first missing image raises, with how many are missing in all.
    """
    check_policy(policy)
    needed = split.images()
    missing = set(split.gallery.missing(needed))
    gallery_names = split.gallery.names
    counts = {"queries": len(split), "queries_dropped": 0,
              "gallery_images": len(gallery_names), "gallery_images_missing": 0}
    if not missing:
        return split, counts
    first = next(n for n in needed if n in missing)
    if policy == "fail":
        raise MissingImageError(first, list(split.gallery.locate(first)),
                                record=f"{split.name}; {len(missing)} image(s) missing in all, "
                                       "see data.missing_images")
    kept = [q for q in split.queries
            if not any(n in missing for n in (q.reference, *q.targets, *q.members))]
    gallery = Gallery([n for n in gallery_names if n not in missing], split.gallery.source,
                      split.gallery.locate)
    counts["queries_dropped"] = len(split) - len(kept)
    counts["gallery_images_missing"] = len(gallery_names) - len(gallery)
    log.warning("%s: %d of %d queries dropped and %d of %d gallery images missing "
                "(data.missing_images: drop)", split.name, counts["queries_dropped"],
                len(split), counts["gallery_images_missing"], len(gallery_names))
    return replace(split, queries=kept, gallery=gallery), counts


def load_splits(dataset: str, root: str | Path, split: str, *, missing: str = "fail",
                report: dict[str, dict[str, int]] | None = None) -> list[CIRSplit]:
    """Every category of ``split`` (one entry for datasets without categories), with
    the missing-image policy applied; the counts land in ``report`` (keyed by split
    name) when given."""
    benchmark = open_dataset(dataset, root)
    splits = []
    for category in benchmark.categories:
        present, counts = present_split(benchmark.load_split(split, category), missing)
        if report is not None:
            report[present.name] = counts
        splits.append(present)
    return splits


def missing_report(report: Mapping[str, Mapping[str, int]], policy: str) -> dict[str, Any]:
    """The per-split counts with their totals, as stages write them beside metrics."""
    total = {key: sum(int(c[key]) for c in report.values())
             for key in ("queries", "queries_dropped", "gallery_images",
                         "gallery_images_missing")}
    return {"policy": policy, "splits": {k: dict(v) for k, v in report.items()},
            "total": total}


def study_splits(dataset: str, root: str | Path, *, missing: str = "fail",
                 include_test: bool = False,
                 report: dict[str, dict[str, int]] | None = None) -> list[CIRSplit]:
    """The splits the workflow reads: training (where the dataset has one), validation
    and, with ``include_test``, the test-server split (its targets are hidden)."""
    names = [TRAIN_SPLIT.get(dataset), VAL_SPLIT.get(dataset)]
    if include_test:
        names.append(TEST_SPLIT.get(dataset))
    return [split for name in names if name
            for split in load_splits(dataset, root, name, missing=missing, report=report)]


def split_images(splits: Iterable[CIRSplit]) -> list[str]:
    """Gallery and query images of the splits, each once, in first-seen order."""
    return list(dict.fromkeys(name for split in splits for name in split.images()))


def image_locator(splits: Sequence[CIRSplit]) -> Callable[[str], Path]:
    """``name -> image file`` over the splits' galleries; raises naming what is missing."""

    def locate(name: str) -> Path:
        tried: list[Path] = []
        for split in splits:
            if name in split.gallery:
                found = split.gallery.find(name)
                if found is not None:
                    return found
                tried.extend(split.gallery.locate(name))
        raise MissingImageError(name, tried)

    return locate


# --- HP-FashionIQ (comparisons over FashionIQ val images) -----------------------------------

def hp_image_names(hp: HPFashionIQ) -> list[str]:
    """Every image an HP-FashionIQ comparison shows (reference and both sets), once."""
    names: list[str] = []
    for c in hp.comparisons:
        names.extend((c.reference, *c.set1, *c.set2))
    return list(dict.fromkeys(names))


def _hp_candidates(hp: HPFashionIQ) -> Callable[[str], list[Path]]:
    category: dict[str, str] = {}
    for c in hp.comparisons:
        for name in (c.reference, *c.set1, *c.set2):
            category.setdefault(name, c.category)
    return lambda name: list(hp.image_candidates(category[name], name))


def load_hp(root: str | Path, image_root: str | Path | None, *, missing: str = "fail",
            report: dict[str, dict[str, int]] | None = None) -> HPFashionIQ:
    """HP-FashionIQ with the missing-image policy applied to its comparisons (a
    comparison showing a missing image is dropped under ``drop``)."""
    check_policy(missing)
    hp = HPFashionIQ(root, image_root)
    candidates = _hp_candidates(hp)
    names = hp_image_names(hp)
    absent = {n for n in names if not any(p.is_file() for p in candidates(n))}
    counts = {"queries": len(hp.comparisons), "queries_dropped": 0,
              "gallery_images": len(names), "gallery_images_missing": len(absent)}
    if absent and missing == "fail":
        first = next(n for n in names if n in absent)
        raise MissingImageError(first, candidates(first),
                                record=f"hpfiq.json; {len(absent)} image(s) missing in all, "
                                       "see data.missing_images")
    if absent:
        kept = [c for c in hp.comparisons
                if not any(n in absent for n in (c.reference, *c.set1, *c.set2))]
        counts["queries_dropped"] = len(hp.comparisons) - len(kept)
        hp.comparisons = kept
        log.warning("hp_fashioniq: %d of %d comparisons dropped, %d images missing "
                    "(data.missing_images: drop)", counts["queries_dropped"],
                    counts["queries"], len(absent))
    if report is not None:
        report["hp_fashioniq/all"] = counts
    return hp


def hp_image_locator(hp: HPFashionIQ) -> Callable[[str], Path]:
    """``name -> file`` for the images HP-FashionIQ shows; raises naming what is missing."""
    candidates = _hp_candidates(hp)

    def locate(name: str) -> Path:
        for path in candidates(name):
            if path.is_file():
                return path
        raise MissingImageError(name, candidates(name), record="hpfiq.json")

    return locate


# --- the synthetic benchmarks' relevance oracle ---------------------------------------------

def benchmark_oracle(root: str | Path) -> Any | None:
    """The synthetic benchmark's relevance oracle, or None for real data."""
    from qure.synthetic.oracle import ORACLE_FILE, load_oracle

    return load_oracle(root) if (Path(root) / ORACLE_FILE).is_file() else None


def training_relevance(oracle: Any, data: Any, split: str = "train") -> torch.Tensor:
    """[Q, N] oracle relevance of corpus columns to training queries, within the group."""
    relevant = oracle.relevance_matrix(split, data.query_ids, data.corpus)
    return relevant & (data.query_group[:, None] == data.corpus_group[None, :])


def attribute_caption(attributes: Mapping[str, str]) -> str:
    """A plain caption of an image's attributes for encoder pretraining."""
    return " ".join(f"{value} {name}" for name, value in attributes.items())

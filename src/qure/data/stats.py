"""Counts per split (and category) of a benchmark on disk: what users check a download with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qure.data import CIR_DATASETS, HPFashionIQ, open_dataset
from qure.data.base import CIRDataset, CIRQuery, CIRSplit, Gallery
from qure.errors import QureError


def _query_counts(queries: list[CIRQuery]) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "queries": len(queries),
        "queries_with_targets": sum(bool(q.targets) for q in queries),
    }
    if any(len(q.targets) > 1 for q in queries):
        with_gt = [len(q.targets) for q in queries if q.targets]
        counts["ground_truths_mean"] = round(sum(with_gt) / len(with_gt), 4)
    if any(q.members for q in queries):
        counts["img_sets"] = len({q.members for q in queries})
    return counts


def _subset_stats(dataset: CIRDataset, split_name: str, category: str | None) -> dict[str, Any]:
    """Counts for one split; a missing or broken file becomes an error entry, not a crash."""
    entry: dict[str, Any] = {}
    gallery: Gallery | None = None
    try:
        gallery = dataset.load_gallery(split_name, category)
        entry["gallery_images"] = len(gallery)
    except QureError as err:
        entry["gallery_images"] = None
        entry["gallery_error"] = str(err)
    split: CIRSplit | None = None
    try:
        if gallery is not None:
            split = dataset.load_split(split_name, category)
            queries = split.queries
        else:
            queries = dataset.load_queries(split_name, category)
        entry.update(_query_counts(queries))
    except QureError as err:
        entry["queries"] = None
        entry["queries_error"] = str(err)
    if gallery is not None:
        needed = split.images() if split is not None else gallery.names
        entry["images_missing"] = len(gallery.missing(needed))
    else:
        entry["images_missing"] = None
    return entry


def cir_dataset_stats(name: str, root: str | Path, **options: Any) -> dict[str, Any]:
    dataset = open_dataset(name, root, **options)
    splits: dict[str, Any] = {}
    for split, category in dataset.subsets():
        stats = _subset_stats(dataset, split, category)
        if category is None:
            splits[split] = stats
        else:
            splits.setdefault(split, {})[category] = stats
    return {"dataset": name, "root": str(root), "splits": splits}


def hp_fashioniq_stats(root: str | Path, image_root: str | Path | None = None) -> dict[str, Any]:
    hp = HPFashionIQ(root, image_root)
    return {
        "dataset": hp.name,
        "root": str(root),
        "image_root": str(hp.image_root),
        "comparisons": len(hp),
        "users": len(hp.users),
        "categories": hp.category_counts(),
        "images": len(hp.images()),
        "images_missing": len(hp.missing_images()),
    }


def dataset_stats(name: str, root: str | Path, **options: Any) -> dict[str, Any]:
    """One JSON-ready object of counts for dataset ``name`` under ``root``."""
    if name == HPFashionIQ.name:
        return hp_fashioniq_stats(root, **options)
    if name not in CIR_DATASETS:
        raise ValueError(f"unknown dataset {name!r}")
    return cir_dataset_stats(name, root, **options)


def has_problems(stats: dict[str, Any]) -> bool:
    """True when any file failed to load or any image is missing (or could not be counted)."""
    if not isinstance(stats, dict):
        return False
    if any(key.endswith("_error") for key in stats):
        return True
    if "images_missing" in stats and stats["images_missing"] != 0:
        return True
    return any(has_problems(value) for value in stats.values())

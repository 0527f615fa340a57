"""A small subset of a real benchmark, written as a dataset root in the real on-disk format.

For a quick first run on real data (config key ``data.subset: {queries: N, gallery: M}``):
per split (and category) the first ``N`` queries in file order are kept; each gallery
keeps every image those queries name (reference, targets, CIRR img_set members, CIRCO
ground truths) plus the first ``M`` other images in gallery order, in gallery order.
Test splits (no targets) are cut the same way, so test-server files cover every test
query of the subset.

One code path serves every dataset: the queries and galleries come from the
:class:`~qure.data.base.CIRDataset` loaders, and the subset files are the original
records (annotation files) and entries (split/gallery files) filtered, never rewritten,
so every loader and stage reads the subset root unchanged. Splits that share a gallery
file (CIRCO's val and test share the COCO index) share its subset: the union of their
query images plus the first ``M`` others.

Image folders are not copied: the subset root links them to the full root
(:data:`IMAGE_DIRS`), so images fetched for the subset land in the full root and a
later full run reuses them, while image fetching reads the subset's split files and so
fetches only the subset's images.

HP-FashionIQ (:func:`hp_subset`): the first ``N`` comparisons per category in file
order; :func:`write_subset` adds their images (reference and both retrieved sets) to
the FashionIQ val galleries of the subset, so the HP benchmark of a subset run is never
empty (a gallery of ``M`` images would rarely hold a comparison's ten images).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qure.data import HPFashionIQ, open_dataset
from qure.data.base import CIRDataset
from qure.data.hp_fashioniq import ANNOTATION_FILE as HP_FILE
from qure.errors import ConfigError, DatasetFormatError, LayoutError
from qure.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

MANIFEST = "subset_manifest.json"
#: Image folders of each dataset root that the subset root links to the full root.
IMAGE_DIRS: dict[str, tuple[str, ...]] = {
    "fashioniq": ("images", "image_data", "image_url"),
    "cirr": ("train", "dev", "test1"),
    "circo": ("COCO2017_unlabeled/unlabeled2017",),
    "hp_fashioniq": (),
}
#: The FashionIQ split whose galleries hold the HP-FashionIQ images.
HP_SPLIT = "val"

SplitKey = tuple[str, str | None]


@dataclass
class SplitSubset:
    """The kept queries of one split (and category)."""

    split: str
    category: str | None
    annotation_file: Path
    gallery_file: Path
    queries: int
    queries_total: int
    query_images: list[str]
    extra_images: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return "/".join(p for p in (self.split, self.category) if p)


@dataclass
class GallerySubset:
    """The kept entries of one gallery file (shared by the splits that read it)."""

    source: Path
    names: list[str]
    total: int
    needed: int
    others: int


@dataclass
class SubsetPlan:
    dataset: str
    root: Path
    queries: int
    gallery: int
    splits: list[SplitSubset]
    galleries: dict[Path, GallerySubset]

    def gallery_of(self, split: SplitSubset) -> GallerySubset:
        return self.galleries[split.gallery_file]


def check_size(queries: Any, gallery: Any, where: str = "data.subset") -> tuple[int, int]:
    for key, value in (("queries", queries), ("gallery", gallery)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}.{key}: expected a non-negative integer, got {value!r}")
    if queries < 1:
        raise ConfigError(f"{where}.queries: a subset needs at least one query per split")
    return queries, gallery


def plan_subset(dataset: CIRDataset, queries: int, gallery: int, *,
                extra_images: Mapping[SplitKey, Iterable[str]] | None = None,
                splits: Iterable[str] | None = None) -> SubsetPlan:
    """Which queries and gallery entries the subset keeps (nothing is written).

    ``extra_images[(split, category)]`` are images that must stay in that split's gallery
    besides its queries' (the HP-FashionIQ images in FashionIQ val); each must be in it.
    """
    queries, gallery = check_size(queries, gallery)
    extra = {k: list(dict.fromkeys(v)) for k, v in (extra_images or {}).items()}
    wanted = set(splits) if splits is not None else None
    kept: list[SplitSubset] = []
    needed: dict[Path, dict[str, None]] = {}
    galleries = {}
    for split, category in dataset.subsets():
        if wanted is not None and split not in wanted:
            continue
        full = dataset.load_split(split, category)
        chosen = full.queries[:queries]
        names = list(dict.fromkeys(n for q in chosen for n in (q.reference, *q.targets,
                                                               *q.members)))
        more = extra.pop((split, category), [])
        absent = [n for n in more if n not in full.gallery]
        if absent:
            raise DatasetFormatError(full.gallery.source, f"{len(absent)} image(s) the subset "
                                     f"must keep are not in the gallery, e.g. {absent[0]!r}",
                                     record=full.name)
        source = full.gallery.source
        galleries[source] = full.gallery
        needed.setdefault(source, {}).update(dict.fromkeys([*names, *more]))
        kept.append(SplitSubset(split, category, full.source, source, len(chosen), len(full),
                                names, more))
    if extra:
        raise ValueError(f"{dataset.name}: extra images for unknown split(s) "
                         f"{', '.join(map(str, extra))}")
    out: dict[Path, GallerySubset] = {}
    for source, gallery_obj in galleries.items():
        must = needed[source]
        others = [n for n in gallery_obj.names if n not in must][:gallery]
        keep = set(must) | set(others)
        out[source] = GallerySubset(source, [n for n in gallery_obj.names if n in keep],
                                    len(gallery_obj), len(must), len(others))
    return SubsetPlan(dataset.name, dataset.root, queries, gallery, kept, out)


# --- writing ------------------------------------------------------------------------------


def _filter_gallery_file(data: Any, keep: set[str], path: Path) -> Any:
    """The gallery file's own structure with only the kept entries, in file order."""
    if isinstance(data, list):  # FashionIQ split file: [ASIN, ...]
        return [n for n in data if str(n) in keep]
    if isinstance(data, dict) and isinstance(data.get("images"), list):  # COCO image info
        return {**data, "images": [i for i in data["images"] if str(i["id"]) in keep]}
    if isinstance(data, dict):  # CIRR split file: {name: relative path}
        return {k: v for k, v in data.items() if k in keep}
    raise DatasetFormatError(path, f"cannot subset a gallery file holding a "
                             f"{type(data).__name__}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        raise LayoutError(f"{path} is not under the dataset root {root}") from None


def link_image_dirs(dataset: str, root: str | Path, out_root: str | Path) -> dict[str, str]:
    """``out_root/<dir>`` -> ``root/<dir>`` (relative symlinks) for the image folders."""
    root, out_root = Path(root), Path(out_root)
    links: dict[str, str] = {}
    for rel in IMAGE_DIRS[dataset]:
        target, link = root / rel, out_root / rel
        target.mkdir(parents=True, exist_ok=True)  # a link never dangles
        link.parent.mkdir(parents=True, exist_ok=True)
        pointer = os.path.relpath(target, link.parent)
        if link.is_symlink():
            if os.readlink(link) != pointer:
                link.unlink()
        elif link.exists():
            raise LayoutError(f"{link} exists and is not a link to {target}; the subset root "
                              "links its image folders to the full root (delete it)")
        if not link.is_symlink():
            os.symlink(pointer, link)
        links[rel] = pointer
    return links


def hp_subset(hp: HPFashionIQ, per_category: int) -> list:
    """The first ``per_category`` comparisons of each category, in file order."""
    seen: dict[str, int] = {}
    out = []
    for comparison in hp.comparisons:
        if seen.get(comparison.category, 0) < per_category:
            seen[comparison.category] = seen.get(comparison.category, 0) + 1
            out.append(comparison)
    return out


def hp_subset_images(hp: HPFashionIQ, per_category: int) -> dict[SplitKey, list[str]]:
    """The images of :func:`hp_subset` per FashionIQ (val, category) gallery."""
    out: dict[SplitKey, dict[str, None]] = {}
    for c in hp_subset(hp, per_category):
        out.setdefault((HP_SPLIT, c.category), {}).update(
            dict.fromkeys((c.reference, *c.set1, *c.set2)))
    return {k: list(v) for k, v in out.items()}


def write_hp_subset(root: str | Path, out_root: str | Path, per_category: int) -> dict:
    """``out_root/hpfiq.json``: the kept comparisons in the original structure."""
    root, out_root = Path(root), Path(out_root)
    check_size(per_category, 0)
    hp = HPFashionIQ(root)
    kept = {(c.user, c.question_set, c.index) for c in hp_subset(hp, per_category)}
    data = read_json(hp.source, dict)
    out: dict[str, dict] = {}
    for user, sets in data.items():
        for qset, block in sets.items():
            indices = [i for i in range(len(block["sentences"])) if (user, qset, i) in kept]
            if indices:
                out.setdefault(user, {})[qset] = {
                    key: [value[i] for i in indices] if isinstance(value, list) else value
                    for key, value in block.items()}
    atomic_write_json(out_root / HP_FILE, out)
    counts = HPFashionIQ(out_root).category_counts()
    return {"splits": {"comparisons": {"queries": len(kept), "queries_total": len(hp),
                                       "per_category": counts}},
            "source_files": {HP_FILE: _sha256(hp.source)},
            "files": {HP_FILE: _sha256(out_root / HP_FILE)}}


def write_subset(dataset: str, root: str | Path, out_root: str | Path, queries: int,
                 gallery: int, *, hp_root: str | Path | None = None,
                 splits: Iterable[str] | None = None) -> dict:
    """Write the subset of the benchmark at ``root`` to ``out_root``; return its manifest
    (also written to ``out_root/subset_manifest.json``).

    ``hp_root`` (FashionIQ only): the folder of ``hpfiq.json``, whose first ``queries``
    comparisons per category keep their images in the FashionIQ val galleries.
    """
    root, out_root = Path(root), Path(out_root)
    queries, gallery = check_size(queries, gallery)
    if out_root.resolve() == root.resolve():
        raise LayoutError(f"{out_root}: the subset root must differ from the full root")
    manifest: dict[str, Any] = {"dataset": dataset, "source_root": str(root),
                                "root": str(out_root), "queries": queries, "gallery": gallery}
    if dataset == "hp_fashioniq":
        manifest.update(write_hp_subset(root, out_root, queries))
        manifest["rule"] = "the first N comparisons per category, in file order"
    else:
        if hp_root is not None and dataset != "fashioniq":
            raise ValueError("hp_root applies to fashioniq only")
        extra = (hp_subset_images(HPFashionIQ(hp_root), queries) if hp_root is not None
                 else None)
        plan = plan_subset(open_dataset(dataset, root), queries, gallery,
                           extra_images=extra, splits=splits)
        files: dict[str, str] = {}
        sources: dict[str, str] = {}
        for entry in plan.splits:
            rel = _relative(entry.annotation_file, root)
            records = read_json(entry.annotation_file, list)
            atomic_write_json(out_root / rel, records[: entry.queries])
            files[str(rel)] = _sha256(out_root / rel)
            sources[str(rel)] = _sha256(entry.annotation_file)
        for source, kept in plan.galleries.items():
            rel = _relative(source, root)
            data = _filter_gallery_file(read_json(source), set(kept.names), source)
            atomic_write_json(out_root / rel, data)
            files[str(rel)] = _sha256(out_root / rel)
            sources[str(rel)] = _sha256(source)
        manifest["splits"] = {
            e.key: {"queries": e.queries, "queries_total": e.queries_total,
                    "query_images": len(e.query_images), "extra_images": len(e.extra_images),
                    "gallery_file": str(_relative(e.gallery_file, root)),
                    "gallery": len(plan.gallery_of(e).names),
                    "gallery_total": plan.gallery_of(e).total}
            for e in plan.splits}
        manifest["galleries"] = {
            str(_relative(s, root)): {"images": len(g.names), "images_total": g.total,
                                      "query_images": g.needed, "others": g.others}
            for s, g in plan.galleries.items()}
        manifest["rule"] = ("per split (and category) the first N queries in file order; "
                            "each gallery keeps the images its kept queries name plus the "
                            "first M other images, in gallery order")
        if hp_root is not None:
            manifest["hp_fashioniq_images"] = {
                "source": str(Path(hp_root) / HP_FILE),
                "comparisons_per_category": queries,
                "images": {"/".join(k): len(v) for k, v in (extra or {}).items()}}
        manifest["source_files"] = sources
        manifest["files"] = files
    manifest["links"] = link_image_dirs(dataset, root, out_root)
    atomic_write_json(out_root / MANIFEST, manifest)
    log.info("%s subset (%d queries, %d other gallery images per split) written to %s",
             dataset, queries, gallery, out_root)
    return manifest

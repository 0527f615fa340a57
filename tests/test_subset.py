"""qure.data.subset on the real annotation files: first N queries per split, the gallery
keeps the query images plus the first M others, manifest, HP-FashionIQ images, sizes,
determinism."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from qure.data import CIRCO, CIRR, FashionIQ, HPFashionIQ, open_dataset
from qure.data.subset import (
    IMAGE_DIRS,
    MANIFEST,
    check_size,
    hp_subset,
    hp_subset_images,
    plan_subset,
    write_subset,
)
from qure.errors import ConfigError, DatasetFormatError, LayoutError
from qure.rehearsal.upstream import cirr_train_captions, coco_image_info

N, M = 4, 7
CATEGORIES = ("dress", "shirt", "toptee")
COCO_INDEX = "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"


# --- full roots in the layout fetch_annotations writes (copied from ../shared/data) ------


@pytest.fixture(scope="module")
def roots(shared_data, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("full")
    out = {d: base / d for d in ("fashioniq", "cirr", "circo", "hp_fashioniq")}
    for sub in ("captions", "image_splits"):
        shutil.copytree(shared_data / "fashioniq" / sub, out["fashioniq"] / sub)
        shutil.copytree(shared_data / "cirr" / sub, out["cirr"] / "cirr" / sub)
    # The train captions are not in the shared folder: the rehearsal's stand-in.
    train = cirr_train_captions(out["cirr"] / "cirr/image_splits/split.rc2.train.json")
    (out["cirr"] / "cirr/captions/cap.rc2.train.json").write_text(json.dumps(train))
    shutil.copytree(shared_data / "circo" / "annotations", out["circo"] / "annotations")
    records = [json.loads((out["circo"] / f"annotations/{s}.json").read_text())
               for s in ("val", "test")]
    (out["circo"] / COCO_INDEX).parent.mkdir(parents=True)
    (out["circo"] / COCO_INDEX).write_text(json.dumps(coco_image_info(records, seed=0)))
    out["hp_fashioniq"].mkdir()
    shutil.copy(shared_data / "hp_fashioniq" / "hpfiq.json", out["hp_fashioniq"])
    return out


def layout(dataset: str) -> list[tuple[str, str, str]]:
    """(manifest key, annotation file, gallery file) per split, relative to the root."""
    if dataset == "fashioniq":
        return [(f"{s}/{c}", f"captions/cap.{c}.{s}.json", f"image_splits/split.{c}.{s}.json")
                for s in ("train", "val", "test") for c in CATEGORIES]
    if dataset == "cirr":
        return [(s, f"cirr/captions/cap.rc2.{s}.json", f"cirr/image_splits/split.rc2.{s}.json")
                for s in ("train", "val", "test1")]
    return [(s, f"annotations/{s}.json", COCO_INDEX) for s in ("val", "test")]


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def record_images(dataset: str, record: dict) -> list[str]:
    """Every image one raw record names (read independently of the loaders)."""
    if dataset == "fashioniq":
        return [record["candidate"], *([record["target"]] if "target" in record else [])]
    if dataset == "cirr":
        return [record["reference"], *([record["target_hard"]] if "target_hard" in record
                                       else []), *record["img_set"]["members"]]
    return [str(i) for i in (record["reference_img_id"], *(
        [record["target_img_id"], *record["gt_img_ids"]] if "target_img_id" in record else []))]


def gallery_names(data) -> list[str]:
    if isinstance(data, list):
        return list(data)
    if "images" in data:
        return [str(i["id"]) for i in data["images"]]
    return list(data)


def expected_galleries(dataset: str, root: Path, queries: int, gallery: int,
                       extra: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Gallery file -> the names the subset must keep, in gallery order."""
    needed: dict[str, set[str]] = {}
    for key, ann, gal in layout(dataset):
        names = needed.setdefault(gal, set())
        for record in read(root / ann)[:queries]:
            names.update(record_images(dataset, record))
        names.update((extra or {}).get(key, []))
    out = {}
    for gal, must in needed.items():
        full = gallery_names(read(root / gal))
        others = [n for n in full if n not in must][:gallery]
        out[gal] = [n for n in full if n in must or n in set(others)]
    return out


@pytest.fixture(scope="module")
def subsets(roots, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    out = {}
    for dataset in ("fashioniq", "cirr", "circo", "hp_fashioniq"):
        dest = tmp_path_factory.mktemp(f"subset_{dataset}")
        out[dataset] = dest, write_subset(dataset, roots[dataset], dest, N, M)
    return out


CIR = ("fashioniq", "cirr", "circo")


# --- the subset root -------------------------------------------------------------------


@pytest.mark.parametrize("dataset", CIR)
def test_subset_root_loads_with_the_loaders(dataset, subsets, roots):
    dest, manifest = subsets[dataset]
    ds = open_dataset(dataset, dest)
    loaded = [ds.load_split(s, c) for s, c in ds.subsets()]
    assert len(loaded) == len(layout(dataset))
    assert all(len(split) == N for split in loaded)
    assert read(dest / MANIFEST) == manifest
    # Image folders are relative links to the full root's folders.
    assert set(manifest["links"]) == set(IMAGE_DIRS[dataset])
    for rel in IMAGE_DIRS[dataset]:
        link = dest / rel
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.resolve() == (roots[dataset] / rel).resolve()


def test_hp_subset_root_loads(subsets, roots):
    dest, manifest = subsets["hp_fashioniq"]
    full, sub = HPFashionIQ(roots["hp_fashioniq"]), HPFashionIQ(dest)
    assert sub.comparisons == hp_subset(full, N)
    assert sub.category_counts() == {c: N for c in full.category_counts()}
    # First N per category in file order, counted independently.
    seen: dict[str, int] = {}
    first = []
    for c in full.comparisons:
        if seen.get(c.category, 0) < N:
            seen[c.category] = seen.get(c.category, 0) + 1
            first.append(c)
    assert sub.comparisons == first
    assert manifest["splits"]["comparisons"]["queries"] == len(first)
    assert manifest["splits"]["comparisons"]["queries_total"] == len(full)
    assert read(dest / MANIFEST) == manifest


@pytest.mark.parametrize("dataset", CIR)
def test_first_n_queries_in_file_order(dataset, subsets, roots):
    dest, _ = subsets[dataset]
    full, sub = open_dataset(dataset, roots[dataset]), open_dataset(dataset, dest)
    for split, category in full.subsets():
        everything = full.load_queries(split, category)
        kept = sub.load_queries(split, category)
        assert [q.query_id for q in kept] == [q.query_id for q in everything[:N]]
        assert kept == everything[:N]
    for _, ann, _ in layout(dataset):  # the original records, unchanged
        assert read(dest / ann) == read(roots[dataset] / ann)[:N]


@pytest.mark.parametrize("dataset", CIR)
def test_every_query_image_is_in_the_subset_gallery(dataset, subsets):
    dest, _ = subsets[dataset]
    for _, ann, gal in layout(dataset):
        kept = set(gallery_names(read(dest / gal)))
        records = read(dest / ann)
        assert records
        for record in records:
            missing = [n for n in record_images(dataset, record) if n not in kept]
            assert not missing, (ann, record)


@pytest.mark.parametrize("dataset", CIR)
def test_gallery_is_query_images_plus_first_m_others(dataset, subsets, roots):
    dest, _ = subsets[dataset]
    expected = expected_galleries(dataset, roots[dataset], N, M)
    for gal, names in expected.items():
        original, written = read(roots[dataset] / gal), read(dest / gal)
        assert gallery_names(written) == names, gal
        # Entries are the original ones, filtered, never rewritten.
        if isinstance(original, dict) and "images" in original:
            by_id = {str(i["id"]): i for i in original["images"]}
            assert written["images"] == [by_id[n] for n in names]
            assert {k: v for k, v in written.items() if k != "images"} == \
                {k: v for k, v in original.items() if k != "images"}
        elif isinstance(original, dict):
            assert written == {n: original[n] for n in names}
    # Loader view: the same names and order.
    ds = open_dataset(dataset, dest)
    for (split, category), (_, _, gal) in zip(ds.subsets(), layout(dataset), strict=True):
        assert ds.load_gallery(split, category).names == expected[gal]


@pytest.mark.parametrize("dataset", CIR)
def test_manifest_records_the_counts(dataset, subsets, roots):
    dest, manifest = subsets[dataset]
    root = roots[dataset]
    expected = expected_galleries(dataset, root, N, M)
    assert (manifest["dataset"], manifest["queries"], manifest["gallery"]) == (dataset, N, M)
    assert set(manifest["splits"]) == {key for key, _, _ in layout(dataset)}
    for key, ann, gal in layout(dataset):
        entry = manifest["splits"][key]
        records = read(root / ann)
        images = {n for r in records[:N] for n in record_images(dataset, r)}
        assert entry["queries"] == min(N, len(records))
        assert entry["queries_total"] == len(records)
        assert entry["query_images"] == len(images)
        assert entry["extra_images"] == 0
        assert entry["gallery_file"] == gal
        assert entry["gallery"] == len(expected[gal])
        assert entry["gallery_total"] == len(gallery_names(read(root / gal)))
    assert set(manifest["galleries"]) == set(expected)
    for gal, names in expected.items():
        g = manifest["galleries"][gal]
        total = len(gallery_names(read(root / gal)))
        needed = {n for _, ann, g2 in layout(dataset) if g2 == gal
                  for r in read(root / ann)[:N] for n in record_images(dataset, r)}
        assert g == {"images": len(names), "images_total": total,
                     "query_images": len(needed), "others": min(M, total - len(needed))}
        assert g["images"] == g["query_images"] + g["others"]
    # Checksums of every file written and of its source.
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == digest
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == \
            manifest["source_files"][rel]


def test_circo_val_and_test_share_one_gallery_subset(subsets):
    _, manifest = subsets["circo"]
    assert manifest["splits"]["val"]["gallery"] == manifest["splits"]["test"]["gallery"]
    assert list(manifest["galleries"]) == [COCO_INDEX]


def test_fewer_queries_or_gallery_than_asked_keeps_everything(roots, tmp_path):
    """CIRCO val has 220 queries, test 800: N=300 keeps all of val; M larger than the
    gallery keeps the whole gallery."""
    root = roots["circo"]
    big_n, big_m = 300, 10**9
    manifest = write_subset("circo", root, tmp_path / "sub", big_n, big_m)
    sub = CIRCO(tmp_path / "sub")
    for split in ("val", "test"):
        total = len(read(root / f"annotations/{split}.json"))
        kept = sub.load_queries(split)
        assert len(kept) == min(big_n, total) == manifest["splits"][split]["queries"]
        assert [q.query_id for q in kept] == [q.query_id for q in
                                              CIRCO(root).load_queries(split)[:big_n]]
    assert len(read(root / "annotations/val.json")) < big_n < len(
        read(root / "annotations/test.json"))
    full = gallery_names(read(root / COCO_INDEX))
    assert sub.load_gallery("val").names == full
    g = manifest["galleries"][COCO_INDEX]
    assert g["images"] == g["images_total"] == len(full)
    assert g["others"] == len(full) - g["query_images"] < big_m


def test_gallery_zero_keeps_only_query_images(roots):
    plan = plan_subset(CIRR(roots["cirr"]), 2, 0)
    for entry in plan.splits:
        assert set(plan.gallery_of(entry).names) == set(entry.query_images)
        assert plan.gallery_of(entry).others == 0


# --- HP-FashionIQ images in the FashionIQ val galleries ---------------------------------


def test_hp_images_stay_in_the_fashioniq_val_galleries(roots, subsets, tmp_path):
    hp = HPFashionIQ(roots["hp_fashioniq"])
    dest = tmp_path / "fiq_hp"
    manifest = write_subset("fashioniq", roots["fashioniq"], dest, N, M,
                            hp_root=roots["hp_fashioniq"])
    sub = FashionIQ(dest)
    first = hp_subset(hp, N)
    assert {c.category for c in first} == set(hp.category_counts())
    extra: dict[str, list[str]] = {}
    for c in first:
        gallery = sub.load_gallery("val", c.category)
        missing = [a for a in (c.reference, *c.set1, *c.set2) if a not in gallery]
        assert not missing, c.record
        extra.setdefault(f"val/{c.category}", []).extend((c.reference, *c.set1, *c.set2))
    # Val galleries: the query images, the HP images and M others; other splits as without.
    expected = expected_galleries("fashioniq", roots["fashioniq"], N, M, extra)
    for key, _, gal in layout("fashioniq"):
        split, category = key.split("/")
        assert sub.load_gallery(split, category).names == expected[gal], key
    plain, _ = subsets["fashioniq"]
    for key, _, gal in layout("fashioniq"):
        if key.split("/")[0] != "val" or key == "val/dress":  # HP has no dresses
            assert (dest / gal).read_bytes() == (plain / gal).read_bytes(), key
    # The manifest counts them.
    images = hp_subset_images(hp, N)
    assert manifest["hp_fashioniq_images"]["images"] == {"/".join(k): len(v)
                                                         for k, v in images.items()}
    assert manifest["hp_fashioniq_images"]["comparisons_per_category"] == N
    for key, entry in manifest["splits"].items():
        assert entry["extra_images"] == len(set(extra.get(key, [])))
    for s, c in sub.subsets():
        assert len(sub.load_split(s, c)) == N


def test_extra_images_must_be_in_the_gallery(roots):
    fiq = FashionIQ(roots["fashioniq"])
    with pytest.raises(DatasetFormatError, match="NOT-AN-ASIN"):
        plan_subset(fiq, 1, 0, extra_images={("val", "shirt"): ["NOT-AN-ASIN"]},
                    splits=["val"])
    with pytest.raises(ValueError, match="unknown split"):
        plan_subset(fiq, 1, 0, extra_images={("val", "shoes"): []}, splits=["val"])


def test_hp_root_only_for_fashioniq(roots, tmp_path):
    with pytest.raises(ValueError, match="fashioniq"):
        write_subset("cirr", roots["cirr"], tmp_path / "x", 1, 1, hp_root=roots["hp_fashioniq"])


# --- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("queries, gallery, key", [
    (0, 5, "queries"), (-1, 5, "queries"), (3, -1, "gallery"), (True, 5, "queries"),
    (3, False, "gallery"), (2.0, 5, "queries"), ("3", 5, "queries"), (3, None, "gallery"),
])
def test_bad_sizes_raise_config_error(queries, gallery, key, roots, tmp_path):
    with pytest.raises(ConfigError, match=rf"data\.subset\.{key}"):
        check_size(queries, gallery)
    with pytest.raises(ConfigError, match=rf"data\.subset\.{key}"):
        plan_subset(CIRCO(roots["circo"]), queries, gallery)
    for dataset in ("circo", "hp_fashioniq"):
        with pytest.raises(ConfigError, match=rf"data\.subset\.{key}"):
            write_subset(dataset, roots[dataset], tmp_path / dataset, queries, gallery)
        assert not (tmp_path / dataset).exists()  # nothing written


def test_check_size_accepts_good_sizes():
    assert check_size(1, 0) == (1, 0)
    assert check_size(5, 10**6) == (5, 10**6)


def test_subset_root_must_differ_from_full_root(roots):
    with pytest.raises(LayoutError):
        write_subset("circo", roots["circo"], roots["circo"], 1, 1)


# --- determinism -------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


@pytest.mark.parametrize("dataset", ("cirr", "circo", "hp_fashioniq"))
def test_writing_twice_gives_identical_files(dataset, roots, subsets, tmp_path):
    dest, _ = subsets[dataset]
    first = snapshot(dest)
    write_subset(dataset, roots[dataset], dest, N, M)
    assert snapshot(dest) == first
    # Another output folder: the same files, only the manifest's own paths differ.
    other = tmp_path / "again"
    write_subset(dataset, roots[dataset], other, N, M)
    second = snapshot(other)
    assert second.keys() == first.keys()
    for rel in first:
        if rel != MANIFEST and not isinstance(first[rel], str):
            assert second[rel] == first[rel], rel
    a, b = read(dest / MANIFEST), read(other / MANIFEST)
    assert a["root"] != b["root"]
    for m in (a, b):
        m.pop("root"), m.pop("links")
    assert a == b


def test_fashioniq_with_hp_is_deterministic(roots, tmp_path):
    for name in ("a", "b"):
        write_subset("fashioniq", roots["fashioniq"], tmp_path / name, 2, 3,
                     hp_root=roots["hp_fashioniq"])
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a if k != MANIFEST and not isinstance(a[k], str))

"""Image layouts: FashionIQ import/fetch with missing-image reports, CIRR and CIRCO checks."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qure.data import CIRR, FashionIQ
from qure.download.layout import (
    arrange_cirr_images,
    check_circo_images,
    check_cirr_images,
    fashioniq_image_report,
    fetch_fashioniq_images,
    import_fashioniq_images,
    link_image_data,
    parse_asin2url,
    require_cirr_images,
)
from qure.errors import LayoutError, OfflineError
from tests.conftest import REPO_ROOT
from tests.test_download import Mirror, closed_port

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def digest_tree(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture
def fiq_root(shared_data, tmp_path) -> Path:
    root = tmp_path / "fashioniq"
    for folder in ("captions", "image_splits"):
        shutil.copytree(shared_data / "fashioniq" / folder, root / folder)
    return root


def test_fashioniq_from_folder_with_missing_image_report(fiq_root, tmp_path):
    val = json.loads((fiq_root / "image_splits" / "split.dress.val.json").read_text())
    source = tmp_path / "download"
    # Mixed layout: VAL-style image_data/<cat>/*.jpg, a flat folder of .png, one .jpeg.
    for asin in val[:40]:
        (source / "image_data" / "dress").mkdir(parents=True, exist_ok=True)
        (source / "image_data" / "dress" / f"{asin}.jpg").write_bytes(JPEG)
    for asin in val[40:60]:
        (source / "flat").mkdir(exist_ok=True)
        (source / "flat" / f"{asin}.png").write_bytes(PNG)
    (source / "flat" / f"{val[60]}.jpeg").write_bytes(JPEG)
    (source / "flat" / "NOT_AN_ASIN.jpg").write_bytes(JPEG)
    splits_before = digest_tree(fiq_root / "image_splits")

    summary = import_fashioniq_images(fiq_root, source)
    assert (summary["placed"], summary["not_in_splits"]) == (61, 1)
    assert (fiq_root / "images" / f"{val[0]}.jpg").read_bytes() == JPEG
    assert (fiq_root / "images" / f"{val[45]}.png").read_bytes() == PNG
    assert (fiq_root / "images" / f"{val[60]}.jpg").is_file()  # .jpeg lands as .jpg
    assert not (fiq_root / "images" / "NOT_AN_ASIN.jpg").exists()
    assert (source / "flat" / f"{val[45]}.png").is_file()  # copied, not moved

    report = fashioniq_image_report(fiq_root)
    dress = report["splits"]["val"]["dress"]
    assert (dress["images"], dress["present"], dress["missing"]) == (3817, 61, 3756)
    assert val[0] not in dress["missing_asins"] and val[61] in dress["missing_asins"]
    assert dress["queries"] == 2017 and 0 < dress["queries_affected"] <= 2017
    assert report["splits"]["val"]["shirt"]["present"] == 0
    assert report["splits"]["test"]["toptee"]["queries_affected"] == 2056  # no toptee images
    assert not report["complete"] and report["totals"]["unique_images"] == 74381
    # The loader finds the placed images; the split files were not touched.
    gallery = FashionIQ(fiq_root).load_gallery("val", "dress")
    assert len(gallery.missing()) == 3756
    assert digest_tree(fiq_root / "image_splits") == splits_before
    # Idempotent: nothing new to place.
    assert import_fashioniq_images(fiq_root, source)["already_present"] == 61
    # The HP-FashionIQ layout: image_data/<cat>/<ASIN>.jpg links to the placed files.
    assert link_image_data(fiq_root, ("dress",)) == 61
    assert (fiq_root / "image_data" / "dress" / f"{val[45]}.jpg").read_bytes() == PNG


def test_fashioniq_from_archive(fiq_root, tmp_path):
    val = json.loads((fiq_root / "image_splits" / "split.shirt.val.json").read_text())
    build = tmp_path / "build" / "fashionIQ_dataset" / "images"
    build.mkdir(parents=True)
    for asin in val[:5]:
        (build / f"{asin}.png").write_bytes(PNG)
    archive = shutil.make_archive(str(tmp_path / "fiq"), "gztar", tmp_path / "build")
    summary = import_fashioniq_images(fiq_root, archive)
    assert summary["placed"] == 5
    assert sorted(p.name for p in (fiq_root / "images").iterdir()) == \
        sorted(f"{a}.png" for a in val[:5])
    assert not (fiq_root / ".images-import").exists()


def small_fiq(root: Path, asins: list[str]) -> None:
    (root / "image_splits").mkdir(parents=True)
    for split in ("train", "val", "test"):
        names = asins if split == "val" else []
        (root / "image_splits" / f"split.dress.{split}.json").write_text(json.dumps(names))


def test_asin2url_lines_split_on_space_tab_space(tmp_path):
    path = tmp_path / "asin2url.dress.txt"
    path.write_text("B001 \t http://h/a.jpg\nB002 \t http://h/b.jpg\n\n")
    assert parse_asin2url(path) == {"B001": "http://h/a.jpg", "B002": "http://h/b.jpg"}


def test_fashioniq_from_urls_skips_dead_links(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "A1.jpg").write_bytes(JPEG)
    (served / "A2.jpg").write_bytes(PNG)  # a PNG behind a .jpg URL lands as .png
    (served / "A3.jpg").write_bytes(b"<html>gone</html>")  # a placeholder page
    root = tmp_path / "fashioniq"
    small_fiq(root, ["A1", "A2", "A3", "A4", "A5"])
    with Mirror(served) as server:
        lines = [f"{a} \t {server.url(a + '.jpg')}" for a in ("A1", "A2", "A3", "A4")]
        lines.append("Z9 \t " + server.url("Z9.jpg"))  # not in any split: ignored
        (tmp_path / "asin2url.dress.txt").write_text("\n".join(lines) + "\n")
        result = fetch_fashioniq_images(root, {"dress": tmp_path / "asin2url.dress.txt"},
                                        workers=2, retries=0, backoff=0.01, progress=False)
        assert "Z9.jpg" not in {r["path"] for r in server.requests}
    assert result["fetched"] == 2 and result["without_url"] == ["A5"]
    assert set(result["failures"]) == {"A3", "A4"}
    assert "not a JPEG or PNG" in result["failures"]["A3"] and "404" in result["failures"]["A4"]
    assert sorted(p.name for p in (root / "images").iterdir()) == ["A1.jpg", "A2.png"]
    report = fashioniq_image_report(root, ("dress",))
    assert report["splits"]["val"]["dress"]["missing_asins"] == ["A3", "A4", "A5"]


def test_fashioniq_from_urls_stops_when_offline(tmp_path):
    root = tmp_path / "fashioniq"
    asins = [f"A{i}" for i in range(10)]
    small_fiq(root, asins)
    port = closed_port()
    lists = tmp_path / "asin2url.dress.txt"
    lists.write_text("".join(f"{a} \t http://127.0.0.1:{port}/{a}.jpg\n" for a in asins))
    with pytest.raises(OfflineError, match="offline"):
        fetch_fashioniq_images(root, {"dress": lists}, workers=1, retries=0,
                               max_unreachable=3, progress=False)


def cirr_root(shared_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cirr_dataset"
    shutil.copytree(shared_data / "cirr" / "image_splits", root / "cirr" / "image_splits")
    return root


def test_cirr_missing_images_give_manual_instructions(shared_data, tmp_path):
    root = cirr_root(shared_data, tmp_path)
    val = json.loads((root / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    first = next(iter(val.values()))
    (root / first).parent.mkdir(parents=True)
    (root / first).write_bytes(PNG)
    report = check_cirr_images(root)
    assert report["splits"]["val"]["present"] == 1
    assert report["splits"]["train"]["missing"] == 16939 and not report["complete"]
    with pytest.raises(LayoutError) as err:
        require_cirr_images(report)
    message = str(err.value)
    assert "NLVR2" in message and f"{root}/train/<NN>/<name>.png" in message
    assert f"{root}/dev/<name>.png" in message and "--from-folder" in message


def test_cirr_flat_train_folder_is_arranged_into_numbered_subfolders(shared_data, tmp_path):
    root = cirr_root(shared_data, tmp_path)
    splits = root / "cirr" / "image_splits"
    # Keep the test fast: the first 300 real train entries (train/<NN>/ paths) plus val.
    train = json.loads((splits / "split.rc2.train.json").read_text())
    train = dict(list(train.items())[:300])
    (splits / "split.rc2.train.json").write_text(json.dumps(train))
    expected = {**train, **json.loads((splits / "split.rc2.val.json").read_text())}
    flat = tmp_path / "nlvr2_flat"
    flat.mkdir()
    for name in expected:
        (flat / f"{name}.png").write_bytes(b"")
    (root / "train").mkdir()
    (root / "train" / "train-1-0-img0.png").write_bytes(b"")
    assert any("numbered sub-folders" in h for h in check_cirr_images(root)["hints"])
    summary = arrange_cirr_images(root, flat, method="hardlink", splits=("train", "val"))
    assert summary["placed"] == len(expected)
    report = check_cirr_images(root, splits=("train", "val"))
    assert report["complete"], report["splits"]
    assert not check_cirr_images(root)["complete"]  # test1 is still missing
    gallery = CIRR(root).load_gallery("train")
    path = gallery.image_path(gallery.names[0])
    assert path.parent.parent.name == "train" and path.parent.name.isdigit()
    assert len({p.parent.name for p in (root / "train").rglob("*.png")}) > 1


def test_circo_counts_the_coco_images(shared_data, tmp_path):
    root = tmp_path / "circo"
    shutil.copytree(shared_data / "circo" / "annotations", root / "annotations")
    assert "not found" in check_circo_images(root)["error"]
    queries = json.loads((root / "annotations" / "val.json").read_text())
    ids = sorted({q["reference_img_id"] for q in queries} | {g for q in queries
                                                            for g in q["gt_img_ids"]})
    info = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"}
                                           for i in ids]}))
    images = root / "COCO2017_unlabeled" / "unlabeled2017"
    images.mkdir()
    for i in ids[:-2]:
        (images / f"{i:012d}.jpg").write_bytes(JPEG)
    report = check_circo_images(root)
    assert (report["images"], report["present"], report["missing"]) == (len(ids),
                                                                       len(ids) - 2, 2)
    assert report["missing_examples"] == [str(i) for i in ids[-2:]]
    assert report["query_images"]["val"]["missing"] == 2


def test_verify_dataset_strict_prints_the_fix(fiq_root, tmp_path):
    out = tmp_path / "verify.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "workflow_scripts" / "verify_dataset.py"),
         "--dataset", "fashioniq", "--root", str(fiq_root), "--out", str(out), "--strict"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "74381 FashionIQ images are missing" in result.stderr
    assert "fetch_images.py --dataset fashioniq" in result.stderr
    report = json.loads(out.read_text())
    assert not report["ok"]
    assert {r["status"] for r in report["annotations"]} == {"ok"}
    assert report["images"]["totals"]["missing"] == 74381
    assert report["stats"]["splits"]["val"]["dress"]["queries"] == 2017

"""The loaders read the real annotation files and reproduce the published counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from qure.data import CIRCO, CIRR, FashionIQ, HPFashionIQ
from qure.data.stats import dataset_stats, has_problems
from qure.errors import DatasetFormatError, MissingImageError
from tests.conftest import REPO_ROOT

FIQ_VAL_QUERIES = {"dress": 2017, "shirt": 2038, "toptee": 1961}
FIQ_VAL_GALLERY = {"dress": 3817, "shirt": 6346, "toptee": 5373}
FIQ_TRAIN_TRIPLETS = {"dress": 5985, "shirt": 5988, "toptee": 6027}


@pytest.mark.parametrize("category", FIQ_VAL_QUERIES)
def test_fashioniq_counts(shared_data, category):
    fiq = FashionIQ(shared_data / "fashioniq")
    val = fiq.load_split("val", category)
    assert len(val) == FIQ_VAL_QUERIES[category]
    assert len(val.gallery) == FIQ_VAL_GALLERY[category]
    assert val.has_targets and not val.protocol.remove_reference
    # Each target appears exactly once in the corpus; candidate != target.
    targets = val.target_indices()
    assert torch.all(targets != val.reference_indices())
    train = fiq.load_split("train", category)
    assert len(train) == FIQ_TRAIN_TRIPLETS[category]
    # Training targets are unique within a category (the mining corpus relies on it).
    assert len({q.target for q in train}) == FIQ_TRAIN_TRIPLETS[category]
    test = fiq.load_split("test", category)
    assert not test.has_targets
    with pytest.raises(ValueError, match="no ground-truth targets"):
        test.target_indices()


def test_fashioniq_query_text_is_the_standard_protocol(shared_data):
    first = FashionIQ(shared_data / "fashioniq").load_queries("val", "dress")[0]
    # cap.dress.val.json[0]: ["is shiny and silver with shorter sleeves", "fit and flare"]
    assert first.text == "Is shiny and silver with shorter sleeves and fit and flare"
    assert (first.reference, first.target) == ("B005X4PL1G", "B0084Y8XIU")
    assert first.query_id == "dress-0"


def test_fashioniq_missing_images_are_reported_not_raised(shared_data):
    val = FashionIQ(shared_data / "fashioniq").load_split("val", "toptee")
    assert len(val.gallery.missing()) == FIQ_VAL_GALLERY["toptee"]
    with pytest.raises(MissingImageError) as err:
        val.image_path(val.queries[0].target)
    message = str(err.value)
    assert val.queries[0].target in message and "fashioniq/val/toptee" in message
    assert ".png" in message and ".jpg" in message


def test_cirr_counts_and_img_sets(shared_data):
    cirr = CIRR(shared_data)
    val = cirr.load_split("val")
    assert (len(val), len(val.gallery)) == (4181, 2297)
    assert val.protocol.remove_reference
    members = val.member_indices()
    assert members.shape == (4181, 6)
    assert torch.all((members == val.target_indices()[:, None]).any(dim=1))
    assert torch.all((members == val.reference_indices()[:, None]).any(dim=1))
    assert len({q.members for q in val}) == 503
    test1 = cirr.load_split("test1")
    assert (len(test1), len(test1.gallery)) == (4148, 2315)
    assert not test1.has_targets
    assert len(cirr.load_gallery("train")) == 16939


def test_cirr_train_images_live_in_numbered_subfolders(shared_data):
    gallery = CIRR(shared_data).load_gallery("train")
    (path,) = gallery.locate(gallery.names[0])
    assert path.parent.parent.name == "train" and path.parent.name.isdigit()


def test_circo_queries_and_ground_truths(shared_data):
    circo = CIRCO(shared_data / "circo")
    val = circo.load_queries("val")
    assert len(val) == 220
    assert sum(len(q.targets) for q in val) / len(val) == pytest.approx(4.16, abs=0.005)
    assert val[0].text == "a photo of $ that shows two people and has a more colorful background"
    assert len(circo.load_queries("test")) == 800
    custom = CIRCO(shared_data / "circo", template="{caption}")
    assert custom.load_queries("val")[0].text.startswith("shows two people")
    with pytest.raises(ValueError, match="caption"):
        CIRCO(shared_data / "circo", template="a photo")


def test_circo_without_gallery_index_names_the_missing_file(shared_data):
    with pytest.raises(DatasetFormatError, match=r"image_info_unlabeled2017\.json"):
        CIRCO(shared_data / "circo").load_split("val")


def test_circo_split_with_a_gallery_index(shared_data, tmp_path):
    (tmp_path / "annotations").mkdir()
    source = shared_data / "circo" / "annotations" / "val.json"
    (tmp_path / "annotations" / "val.json").write_bytes(source.read_bytes())
    queries = CIRCO(shared_data / "circo").load_queries("val")
    ids = sorted({int(n) for q in queries for n in (q.reference, *q.targets)})
    info = tmp_path / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"}
                                           for i in ids]}))
    split = CIRCO(tmp_path).load_split("val")
    gt = split.ground_truth_indices()
    assert gt.shape[0] == 220 and (gt >= 0).sum().item() == sum(len(q.targets) for q in split)
    assert torch.equal(gt[:, 0], split.target_indices())
    (path,) = split.gallery.locate(split.queries[0].target)
    assert path.name == f"{int(split.queries[0].target):012d}.jpg"


def test_hp_fashioniq_structure(shared_data):
    hp = HPFashionIQ(shared_data / "hp_fashioniq")
    assert len(hp) == 3050 and len(hp.users) == 61
    assert hp.category_counts() == {"shirt": 1800, "toptee": 1250}
    first = hp.comparisons[0]
    assert first.sentence == "is blue colored and a logo  and has short sleeves"
    assert len(first.set1) == len(first.set2) == 5
    assert sum(c.preferred == 1 for c in hp.comparisons) == 1641
    # Hyphens inside sentences survive: only the "/-/" path prefix is a placeholder.
    assert sum(s.sentence.count("-") for s in hp.comparisons) == 157
    with pytest.raises(MissingImageError, match="image_data/shirt"):
        hp.image_path(first.category, first.reference)


def test_hp_fashioniq_images_are_fashioniq_val_images(shared_data):
    hp = HPFashionIQ(shared_data / "hp_fashioniq")
    fiq = FashionIQ(shared_data / "fashioniq")
    for category in ("shirt", "toptee"):
        val = fiq.load_split("val", category)
        pairs = {(q.reference, q.target) for q in val}
        for c in (c for c in hp.comparisons if c.category == category):
            assert (c.reference, c.target) in pairs, c.record
            assert all(a in val.gallery for a in (*c.set1, *c.set2)), c.record


def test_dataset_stats_cli_on_real_annotations(shared_data):
    script = REPO_ROOT / "workflow_scripts" / "dataset_stats.py"
    result = subprocess.run(
        [sys.executable, str(script), "--dataset", "cirr", "--root", str(shared_data)],
        capture_output=True, text=True, check=True)
    stats = json.loads(result.stdout)
    assert stats["splits"]["val"]["queries"] == 4181
    assert stats["splits"]["val"]["images_missing"] == 2297
    assert stats["splits"]["train"]["gallery_images"] == 16939
    assert "cap.rc2.train.json" in stats["splits"]["train"]["queries_error"]
    strict = subprocess.run(
        [sys.executable, str(script), "--dataset", "hp_fashioniq", "--root",
         str(shared_data / "hp_fashioniq"), "--strict"], capture_output=True, text=True)
    assert strict.returncode == 1 and json.loads(strict.stdout)["images_missing"] == 5505


def test_dataset_stats_per_category(shared_data):
    stats = dataset_stats("fashioniq", shared_data / "fashioniq")
    assert {c: s["queries"] for c, s in stats["splits"]["val"].items()} == FIQ_VAL_QUERIES
    assert {c: s["gallery_images"] for c, s in stats["splits"]["val"].items()} == (
        FIQ_VAL_GALLERY)
    assert has_problems(stats)

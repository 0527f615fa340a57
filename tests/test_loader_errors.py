"""Bad input gives an error naming the file and the record; text processing is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qure.data import CIRR, FashionIQ, HPFashionIQ, open_dataset
from qure.data.text import blip_caption, fashioniq_query_text
from qure.errors import DatasetFormatError


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def make_fiq(root: Path, triplets, split_names=("A1", "A2", "A3")) -> FashionIQ:
    write_json(root / "captions" / "cap.dress.val.json", triplets)
    write_json(root / "image_splits" / "split.dress.val.json", list(split_names))
    return FashionIQ(root)


def test_malformed_json_names_file_and_line(tmp_path):
    fiq = make_fiq(tmp_path, [])
    (tmp_path / "captions" / "cap.dress.val.json").write_text('[{"candidate": "A1",\n oops]')
    with pytest.raises(DatasetFormatError, match=r"cap\.dress\.val\.json: malformed JSON at "
                       r"line 2"):
        fiq.load_split("val", "dress")


def test_missing_key_names_the_record(tmp_path):
    fiq = make_fiq(tmp_path, [{"candidate": "A1", "target": "A2", "captions": ["a", "b"]},
                              {"candidate": "A1", "captions": ["a", "b"]}])
    with pytest.raises(DatasetFormatError, match=r"cap\.dress\.val\.json \(record 1\): "
                       r"missing key\(s\) 'target'"):
        fiq.load_split("val", "dress")


def test_wrong_caption_shape(tmp_path):
    fiq = make_fiq(tmp_path, [{"candidate": "A1", "target": "A2", "captions": ["only one"]}])
    with pytest.raises(DatasetFormatError, match=r"record 0\): 'captions' must be"):
        fiq.load_split("val", "dress")


def test_target_outside_gallery_names_query(tmp_path):
    fiq = make_fiq(tmp_path, [{"candidate": "A1", "target": "ZZ", "captions": ["a", "b"]}])
    with pytest.raises(DatasetFormatError, match=r"record 0 \(dress-0\)\): target 'ZZ' is "
                       r"not in the gallery"):
        fiq.load_split("val", "dress")


def test_record_of_the_wrong_type(tmp_path):
    fiq = make_fiq(tmp_path, ["not an object"])
    with pytest.raises(DatasetFormatError, match=r"record 0\): expected an object"):
        fiq.load_split("val", "dress")


def test_top_level_of_the_wrong_type(tmp_path):
    fiq = make_fiq(tmp_path, {"candidate": "A1"})
    with pytest.raises(DatasetFormatError, match="expected a JSON list, got dict"):
        fiq.load_split("val", "dress")


def test_missing_file_and_unknown_split(tmp_path):
    fiq = FashionIQ(tmp_path)
    with pytest.raises(DatasetFormatError, match=r"split\.dress\.val\.json: file not found"):
        fiq.load_split("val", "dress")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        fiq.load_split("dev", "dress")
    with pytest.raises(ValueError, match="unknown category 'coat'"):
        fiq.load_split("val", "coat")
    with pytest.raises(ValueError, match="unknown dataset"):
        open_dataset("coco", tmp_path)


def test_fashioniq_accepts_png_or_jpg(tmp_path):
    fiq = make_fiq(tmp_path, [{"candidate": "A1", "target": "A2", "captions": ["a", "b"]}])
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "A1.jpg").write_bytes(b"x")
    (tmp_path / "images" / "A2.png").write_bytes(b"x")
    split = fiq.load_split("val", "dress")
    assert split.image_path("A1").suffix == ".jpg"
    assert split.image_path("A2").suffix == ".png"
    assert split.gallery.missing() == ["A3"]


def cirr_record(**overrides):
    record = {"pairid": 7, "reference": "dev-1-0-img0", "target_hard": "dev-1-0-img1",
              "target_soft": {"dev-1-0-img1": 1.0}, "caption": "make it red",
              "img_set": {"id": 1, "members": [f"dev-1-0-img{i}" for i in range(6)],
                          "reference_rank": 0, "target_rank": 1}}
    record.update(overrides)
    return record


def make_cirr(root: Path, records) -> CIRR:
    write_json(root / "cirr" / "captions" / "cap.rc2.val.json", records)
    write_json(root / "cirr" / "image_splits" / "split.rc2.val.json",
               {f"dev-1-0-img{i}": f"./dev/dev-1-0-img{i}.png" for i in range(6)})
    return CIRR(root)


def test_cirr_valid_record_and_paths(tmp_path):
    split = make_cirr(tmp_path, [cirr_record()]).load_split("val")
    assert split.queries[0].query_id == "7"
    (path,) = split.gallery.locate("dev-1-0-img3")
    assert path == tmp_path / "dev" / "dev-1-0-img3.png"


def test_cirr_target_outside_img_set(tmp_path):
    members = [f"dev-1-0-img{i}" for i in (0, 2, 3, 4, 5, 5)]
    cirr = make_cirr(tmp_path, [cirr_record(img_set={"id": 1, "members": members})])
    with pytest.raises(DatasetFormatError, match=r"pairid 7\)\): target 'dev-1-0-img1' is not "
                       r"an img_set member"):
        cirr.load_split("val")


def test_cirr_img_set_of_wrong_size(tmp_path):
    cirr = make_cirr(tmp_path, [cirr_record(img_set={"id": 1, "members": ["dev-1-0-img0"]})])
    with pytest.raises(DatasetFormatError, match="img_set has 1 members, expected 6"):
        cirr.load_split("val")


def hp_block(**overrides):
    path = "/-/image_data/shirt/{}.jpg"
    block = {
        "ref_img_paths": [path.format("R")],
        "targ_img_paths": [path.format("T")],
        "sentences": ["is a t-shirt and long-sleeved"],
        "retrieved_set1": [{"img_path": [path.format(f"a{i}") for i in range(5)],
                            "user_score": "4"}],
        "retrieved_set2": [{"img_path": [path.format(f"b{i}") for i in range(5)],
                            "user_score": "2"}],
        "preferred set": ["1"],
    }
    block.update(overrides)
    return block


def test_hp_keeps_hyphens_and_resolves_prefix(tmp_path):
    write_json(tmp_path / "hpfiq.json", {"user_1": {"question_set_1": hp_block()}})
    hp = HPFashionIQ(tmp_path, image_root=tmp_path / "fiq")
    (c,) = hp.comparisons
    assert c.sentence == "is a t-shirt and long-sleeved"
    assert (c.category, c.reference, c.score1, c.score2, c.preferred) == ("shirt", "R", 4, 2, 1)
    assert hp.image_candidates("shirt", "R") == (tmp_path / "fiq/image_data/shirt/R.jpg",)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"ref_img_paths": ["image_data/shirt/R.jpg"]}, "does not start with '/-/'"),
    ({"preferred set": ["3"]}, "'preferred set' must be '1' or '2'"),
    ({"sentences": []}, "must be parallel lists"),
    ({"retrieved_set1": [{"img_path": ["/-/image_data/shirt/x.jpg"], "user_score": "4"}]},
     "must list 5 images"),
    ({"retrieved_set2": [{"img_path": ["/-/image_data/shirt/x.jpg"] * 5, "user_score": "9"}]},
     "user_score must be '1'..'5'"),
])
def test_hp_bad_records_name_the_question_set(tmp_path, overrides, message):
    write_json(tmp_path / "hpfiq.json", {"user_3": {"question_set_2": hp_block(**overrides)}})
    with pytest.raises(DatasetFormatError, match=r"hpfiq\.json \(record user_3/question_set_2"):
        HPFashionIQ(tmp_path)
    with pytest.raises(DatasetFormatError, match=message):
        HPFashionIQ(tmp_path)


def test_fashioniq_query_text():
    assert fashioniq_query_text([" is red. ", "has a logo?"]) == "Is red and has a logo"
    assert fashioniq_query_text(["", "darker"]) == " and darker"
    assert fashioniq_query_text(["IS Red", "x"]) == "Is red and x"


def test_blip_caption():
    assert blip_caption('Is "Red" (really); with  long:sleeves!') == (
        "is red really with long sleeves")
    assert blip_caption("a photo of $ that shows dogs.") == "a photo of $ that shows dogs"
    assert blip_caption(" ".join(["w"] * 60)) == " ".join(["w"] * 50)
    assert blip_caption("is blue colored and a logo  and has short sleeves") == (
        "is blue colored and a logo and has short sleeves")

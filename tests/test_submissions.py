"""CIRR and CIRCO test-server files: content, format rules, and atomic writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import qure.io
from qure.metrics import target_ranks
from qure.submissions import (
    circo_submission,
    cirr_submissions,
    validate_circo_submission,
    validate_cirr_submission,
    write_circo_submission,
    write_cirr_submissions,
)


def cirr_case(n: int = 60, seed: int = 0):
    """4 queries over ``n`` images named img{j}; ties, reference ranked first in row 0."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (4, n), generator=gen).float()
    names = [f"test1-{j}-0-img{j % 2}" for j in range(n)]
    reference = torch.tensor([5, 0, n - 1, 17])
    members = torch.tensor([[5, 1, 2, 3, 4, 6],
                            [0, 7, 8, 9, 10, 11],
                            [n - 1, 12, 13, 14, 15, 16],
                            [17, 18, 19, 20, 21, 22]])
    scores[0, 5] = 100.0  # the reference would be first
    scores[1, 7:12] = 1.0  # members tied with each other
    return scores, [12063, 7, 300, 41], names, reference, members


def read_with_key_order(path: Path) -> tuple[dict, list[str]]:
    pairs = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=list)
    return dict(pairs), [k for k, _ in pairs]


# --- CIRR --------------------------------------------------------------------------------------


def test_cirr_submissions_content():
    scores, pair_ids, names, reference, members = cirr_case()
    recall, subset = cirr_submissions(scores, pair_ids, names, reference, members)
    assert recall["version"] == subset["version"] == "rc2"
    assert recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    assert set(recall) == set(subset) == {"version", "metric", "12063", "7", "300", "41"}
    index = {name: j for j, name in enumerate(names)}
    for row, pair in enumerate(pair_ids):
        top, group = recall[str(pair)], subset[str(pair)]
        ref_name = names[int(reference[row])]
        assert len(top) == 50 and len(set(top)) == 50 and ref_name not in top
        assert len(group) == 3 and ref_name not in group
        member_names = {names[int(m)] for m in members[row]}
        assert set(group) <= member_names
        # The listed order is the order target_ranks scores (reference removed).
        columns = torch.tensor([index[name] for name in top])
        ranks = target_ranks(scores[row].expand(50, -1), columns, reference[row].expand(50))
        assert ranks.tolist() == list(range(50))
        member_cols = [int(m) for m in members[row] if int(m) != int(reference[row])]
        expected = sorted(member_cols, key=lambda j: (-float(scores[row, j]), j))[:3]
        assert group == [names[j] for j in expected]
    assert subset["7"] == [names[7], names[8], names[9]]  # tied members: lower column first


def test_cirr_gallery_too_small_raises():
    scores, pair_ids, names, reference, members = cirr_case(n=51)
    recall, _ = cirr_submissions(scores, pair_ids, names, reference, members)
    assert all(len(recall[str(p)]) == 50 for p in pair_ids)
    scores, pair_ids, names, reference, members = cirr_case(n=50)
    with pytest.raises(ValueError, match="too few for 50"):
        cirr_submissions(scores, pair_ids, names, reference, members)


def test_cirr_too_few_members_raises():
    scores, pair_ids, names, reference, members = cirr_case()
    members[2] = torch.tensor([59, 12, 12, 59, -1, -1])
    with pytest.raises(ValueError, match="pair '300' has fewer than 3 img_set members"):
        cirr_submissions(scores, pair_ids, names, reference, members)


@pytest.mark.parametrize("change, message", [
    (lambda c: (c[0], [1, 1, 2, 3], *c[2:]), "pair_ids repeats the id '1'"),
    (lambda c: (c[0], [1, 2, 3], *c[2:]), "pair_ids has 3 entries"),
    (lambda c: (c[0], ["version", 2, 3, 4], *c[2:]), "reserved submission key"),
    (lambda c: (c[0], c[1], c[2][:-1], *c[3:]), "gallery_names has 59 entries"),
    (lambda c: (c[0], c[1], ["x"] * 60, *c[3:]), "duplicate names"),
    (lambda c: (c[0].masked_fill(c[0] > 2, float("nan")), *c[1:]), "scores contains NaN"),
])
def test_cirr_rejects_bad_input(change, message):
    with pytest.raises(ValueError, match=message):
        cirr_submissions(*change(cirr_case()))


def test_write_cirr_submissions(tmp_path):
    recall, subset = cirr_submissions(*cirr_case())
    out = tmp_path / "sub"
    paths = write_cirr_submissions(out, "qure_test1", recall, subset)
    assert paths == (out / "recall_submission_qure_test1.json",
                     out / "recall_subset_submission_qure_test1.json")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temps
    for path, expected in zip(paths, (recall, subset), strict=True):
        data, keys = read_with_key_order(path)
        assert data == expected
        assert keys == sorted(keys)  # sort_keys: "12063" < "300" < "41" < "7" < "metric"
        assert path.read_text(encoding="utf-8").count("\n") == 1  # compact: fits 5 MB


def test_write_cirr_validates_before_writing(tmp_path):
    recall, subset = cirr_submissions(*cirr_case())
    recall["41"] = recall["41"][:49]
    with pytest.raises(ValueError, match="pair 41: expected a list of 50"):
        write_cirr_submissions(tmp_path, "x", recall, subset)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="plain file-name part"):
        write_cirr_submissions(tmp_path, "../x", *cirr_submissions(*cirr_case()))


@pytest.mark.parametrize("edit, metric, message", [
    (lambda d: d.update(version="rc1"), "recall", "'version' must be 'rc2'"),
    (lambda d: d.update(metric="recall"), "recall_subset", "'metric' must be"),
    (lambda d: d.update({"7": ["a", "a", "b"]}), "recall_subset", "repeated image names"),
    (lambda d: d.update({"7": ["a", "b", 3]}), "recall_subset", "expected a list of 3"),
])
def test_validate_cirr_submission(edit, metric, message):
    recall, subset = cirr_submissions(*cirr_case())
    submission = recall if metric == "recall" else subset
    validate_cirr_submission(submission, metric)
    edit(submission)
    with pytest.raises(ValueError, match=message):
        validate_cirr_submission(submission, metric)


def test_write_is_atomic_when_the_rename_fails(tmp_path, monkeypatch):
    recall, subset = cirr_submissions(*cirr_case())
    paths = write_cirr_submissions(tmp_path, "x", recall, subset)
    before = [p.read_bytes() for p in paths]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(qure.io.os, "replace", failing_replace)
    recall["7"] = list(reversed(recall["7"]))
    with pytest.raises(OSError, match="disk full"):
        write_cirr_submissions(tmp_path, "x", recall, subset)
    assert [p.read_bytes() for p in paths] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


# --- CIRCO -------------------------------------------------------------------------------------


def circo_case(n: int = 70):
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 3, (3, n), generator=gen).float()
    scores[1, 9] = 50.0  # a reference ranked first stays in (CIRCO keeps it)
    gallery = [str(100000 + 7 * j) for j in range(n)]
    return scores, [0, 1, 2], gallery


def test_circo_submission_content():
    scores, query_ids, gallery = circo_case()
    sub = circo_submission(scores, query_ids, gallery)
    assert list(sub) == ["0", "1", "2"]
    index = {int(g): j for j, g in enumerate(gallery)}
    for row, key in enumerate(sub):
        ids = sub[key]
        assert len(ids) == 50 and len(set(ids)) == 50
        assert all(type(i) is int for i in ids)
        columns = torch.tensor([index[i] for i in ids])
        assert target_ranks(scores[row].expand(50, -1), columns).tolist() == list(range(50))
    assert sub["1"][0] == 100063


def test_circo_gallery_too_small_and_bad_ids():
    scores, query_ids, gallery = circo_case(n=49)
    with pytest.raises(ValueError, match="49 images, fewer than the 50"):
        circo_submission(scores, query_ids, gallery)
    scores, query_ids, gallery = circo_case()
    with pytest.raises(ValueError, match="is not an integer image id"):
        circo_submission(scores, query_ids, ["img"] * 70)
    with pytest.raises(ValueError, match="repeat an image id"):
        circo_submission(scores, query_ids, ["5"] * 70)
    with pytest.raises(ValueError, match="query_ids repeats"):
        circo_submission(scores, [0, 0, 1], gallery)
    with pytest.raises(ValueError, match="gallery_ids has 69 entries"):
        circo_submission(scores, query_ids, gallery[1:])


def test_write_circo_submission(tmp_path):
    scores, _, gallery = circo_case()
    query_ids = [2, 10, 1]
    sub = circo_submission(scores, query_ids, gallery)
    path = write_circo_submission(tmp_path / "circo_test.json", sub, expected_query_ids=query_ids)
    data, keys = read_with_key_order(path)
    assert data == sub and keys == ["1", "10", "2"]
    assert all(type(i) is int for ids in data.values() for i in ids)
    assert [p.name for p in tmp_path.iterdir()] == ["circo_test.json"]


@pytest.mark.parametrize("edit, expected, message", [
    (lambda d: d.update({"0": d["0"][:49]}), None, "expected a list of 50 int"),
    (lambda d: d.update({"0": [str(i) for i in d["0"]]}), None, "expected a list of 50 int"),
    (lambda d: d.update({"0": [d["0"][1], *d["0"][1:]]}), None, "repeated image ids"),
    (lambda d: d.pop("2"), [0, 1, 2], r"missing \['2'\]"),
    (lambda d: None, [0, 1], r"unexpected \['2'\]"),
])
def test_validate_circo_submission(tmp_path, edit, expected, message):
    sub = circo_submission(*circo_case())
    edit(sub)
    with pytest.raises(ValueError, match=message):
        validate_circo_submission(sub, expected)
    with pytest.raises(ValueError, match=message):
        write_circo_submission(tmp_path / "x.json", sub, expected)
    assert list(tmp_path.iterdir()) == []

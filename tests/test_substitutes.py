"""Substitutes files (qure.download.sources): a mirror's files that are not the upstream
bytes replace exactly the listed pins; every malformed file is a ConfigError naming it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import yaml

from qure.download.cli import catalogue
from qure.download.sources import (
    Substitute,
    apply_substitutes,
    dataset_sources,
    load_sources,
    load_substitutes,
    parse_substitutes,
)
from qure.errors import ConfigError

TRAIN = "cirr/captions/cap.rc2.train.json"  # upstream: size and sha256 unknown
VAL = "cirr/captions/cap.rc2.val.json"  # upstream: pinned
VAL_SHA = "a85c3a1aa464f1af7229918e8018d08b8b20ce5dab479ffdf39d61113140f919"
COCO_ZIP = "downloads/unlabeled2017.zip"  # upstream: size and md5 only
A, B, C = "a" * 64, "b" * 64, "c" * 64


def valid() -> dict:
    return {"version": 1, "reason": "loopback stand-ins",
            "files": {"cirr": {TRAIN: {"size": 10, "sha256": A},
                               VAL: {"size": 0, "sha256": B, "reason": "own reason"}},
                      "circo": {COCO_ZIP: {"size": 123, "sha256": C}}}}


def write(tmp_path: Path, data, name: str = "subs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def test_valid_file_replaces_exactly_the_listed_entries(tmp_path):
    path = write(tmp_path, valid())
    original = load_sources()
    cirr = dataset_sources("cirr", None, path)
    before = {f.path: f for f in original["cirr"].files}
    after = {f.path: f for f in cirr.files}
    assert list(after) == list(before)  # same files, same order
    for rel, entry in after.items():
        if rel not in (TRAIN, VAL):
            assert entry == before[rel], rel
            assert entry.substitute is None
    train, val = after[TRAIN], after[VAL]
    assert (train.size, train.sha256, train.md5, train.verified) == (10, A, None, True)
    assert (val.size, val.sha256, val.verified) == (0, B, True)
    assert (train.url, train.mirror, train.group) == (before[TRAIN].url, before[TRAIN].mirror,
                                                      before[TRAIN].group)
    # .substitute: the reason (the entry's own or the file's) and the upstream pins.
    assert "loopback stand-ins" in train.substitute
    assert "size unknown" in train.substitute and "no digest" in train.substitute
    assert "own reason" in val.substitute and "loopback stand-ins" not in val.substitute
    assert "size 1609916" in val.substitute and f"sha256 {VAL_SHA}" in val.substitute
    # An md5-only upstream entry mentions its md5; the size is the upstream one.
    coco = {f.path: f for f in dataset_sources("circo", None, path).files}[COCO_ZIP]
    upstream = {f.path: f for f in original["circo"].files}[COCO_ZIP]
    assert (coco.size, coco.sha256, coco.md5) == (123, C, None)
    assert f"md5 {upstream.md5}" in coco.substitute
    assert f"size {upstream.size}" in coco.substitute
    # A dataset the file does not list is unchanged.
    assert dataset_sources("fashioniq", None, path) == original["fashioniq"]
    assert dataset_sources("cirr") == original["cirr"]


def test_parse_and_apply_directly():
    subs = parse_substitutes(valid(), "mem.yaml")
    assert subs[("cirr", TRAIN)] == Substitute(10, A, "loopback stand-ins")
    assert subs[("cirr", VAL)] == Substitute(0, B, "own reason")
    assert len(subs) == 3
    sources = load_sources()["cirr"]
    out = apply_substitutes(sources, subs)
    assert sum(f.substitute is not None for f in out.files) == 2
    assert apply_substitutes(sources, {}) == sources


def _bad(mutate) -> dict:
    data = valid()
    mutate(data)
    return data


def _set(entry: str, key: str, value):
    def mutate(data):
        data["files"]["cirr"][entry][key] = value
    return mutate


MALFORMED = {
    "missing reason": (_bad(lambda d: d.pop("reason")), "'reason'"),
    "blank reason": (_bad(lambda d: d.update(reason="  ")), "'reason'"),
    "bad sha256": (_bad(_set(TRAIN, "sha256", "xyz")), f"files.cirr.{TRAIN}: 'sha256'"),
    "upper-case sha256": (_bad(_set(TRAIN, "sha256", "A" * 64)), f"files.cirr.{TRAIN}"),
    "missing sha256": (_bad(lambda d: d["files"]["cirr"][TRAIN].pop("sha256")),
                       f"files.cirr.{TRAIN}: 'sha256'"),
    "negative size": (_bad(_set(VAL, "size", -1)), f"files.cirr.{VAL}: 'size'"),
    "bool size": (_bad(_set(VAL, "size", True)), f"files.cirr.{VAL}: 'size'"),
    "missing size": (_bad(lambda d: d["files"]["cirr"][VAL].pop("size")),
                     f"files.cirr.{VAL}: 'size'"),
    "unknown entry key": (_bad(_set(TRAIN, "md5", "0" * 32)), f"files.cirr.{TRAIN}"),
    "entry not a mapping": (_bad(lambda d: d["files"]["cirr"].update({TRAIN: "x"})),
                            f"files.cirr.{TRAIN}"),
    "dataset not a mapping": (_bad(lambda d: d["files"].update(cirr=[TRAIN])), "files.cirr"),
    "unknown top-level key": (_bad(lambda d: d.update(extra=1)), "extra"),
    "no files": (_bad(lambda d: d.update(files={})), "'files'"),
    "version 2": (_bad(lambda d: d.update(version=2)), "version"),
    "no version": (_bad(lambda d: d.pop("version")), "version"),
    "not a mapping": ([1, 2], "version"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_names_the_file_and_the_entry(case, tmp_path):
    data, entry = MALFORMED[case]
    path = write(tmp_path, data, f"{case.replace(' ', '_')}.yaml")
    for call in (lambda: load_substitutes(path), lambda: dataset_sources("cirr", None, path),
                 lambda: parse_substitutes(data, str(path))):
        with pytest.raises(ConfigError) as err:
            call()
        message = str(err.value)
        assert str(path) in message
        assert entry in message


def test_path_not_in_the_catalogue_is_an_error_naming_it(tmp_path):
    data = valid()
    data["files"]["cirr"]["cirr/captions/cap.rc2.nope.json"] = {"size": 1, "sha256": A}
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=r"cirr.*cirr/captions/cap\.rc2\.nope\.json"):
        dataset_sources("cirr", None, path)
    # Not an error for another dataset of the same file: its own entries are known.
    dataset_sources("circo", None, path)


def test_path_not_in_the_catalogue_error_names_the_file(tmp_path):
    data = valid()
    data["files"]["cirr"]["cirr/captions/cap.rc2.nope.json"] = {"size": 1, "sha256": A}
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=str(path)):
        dataset_sources("cirr", None, path)


def test_unknown_dataset_in_substitutes_is_an_error(tmp_path):
    data = valid()
    data["files"]["cir"] = data["files"].pop("cirr")
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match="cir"):
        for name in load_sources():
            dataset_sources(name, None, path)


def test_file_not_found(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    for call in (lambda: load_substitutes(missing),
                 lambda: dataset_sources("cirr", None, missing)):
        with pytest.raises(ConfigError, match=rf"{missing}: substitutes file not found"):
            call()


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "version: 1\nfiles: {cirr: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}: not valid YAML"):
        load_substitutes(path)


# --- the CLI helper ------------------------------------------------------------------------


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"sources": None, "base_url": None, "substitutes": None, **kw})


def test_catalogue_refuses_substitutes_without_base_url(tmp_path):
    path = write(tmp_path, valid())
    with pytest.raises(ConfigError, match=r"--substitutes.*--base-url"):
        catalogue(args(substitutes=str(path)), "cirr")
    with pytest.raises(ConfigError, match="--base-url"):
        catalogue(args(substitutes=str(path), base_url=""), "cirr")


def test_catalogue_applies_substitutes_with_a_mirror(tmp_path, caplog):
    path = write(tmp_path, valid())
    with caplog.at_level(logging.WARNING, logger="qure.download.cli"):
        sources = catalogue(args(substitutes=str(path), base_url="http://127.0.0.1:1"), "cirr")
    assert sources == dataset_sources("cirr", None, path)
    warned = [r.getMessage() for r in caplog.records]
    assert sum(TRAIN in m for m in warned) == 1 and sum(VAL in m for m in warned) == 1
    assert len(warned) == 2
    assert catalogue(args(base_url="http://127.0.0.1:1"), "cirr") == load_sources()["cirr"]
    assert catalogue(args(), "cirr") == load_sources()["cirr"]

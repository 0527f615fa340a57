"""Atomic, path-safe archive extraction (including interrupted runs)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from qure.download import archives
from qure.download.archives import extract_archive, marker_path
from qure.errors import DownloadError

FILES = {"unlabeled2017/000000000001.jpg": b"one", "unlabeled2017/000000000002.jpg": b"two",
         "annotations/image_info_unlabeled2017.json": b'{"images": []}'}


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def visible(target: Path) -> set[str]:
    return {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()
            and not p.name.startswith(".")} if target.exists() else set()


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_extract_places_entries_and_is_idempotent(tmp_path, maker):
    archive = maker(tmp_path / ("a.zip" if maker is make_zip else "a.tar.gz"), FILES)
    target = tmp_path / "COCO2017_unlabeled"
    result = extract_archive(archive, target)
    assert result.status == "extracted" and result.members == 3
    assert set(result.entries) == {"unlabeled2017", "annotations"}
    assert visible(target) == set(FILES)
    assert (target / "unlabeled2017" / "000000000002.jpg").read_bytes() == b"two"
    assert json.loads(marker_path(archive, target).read_text())["members"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert extract_archive(archive, target).status == "present"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_path_traversal_is_refused(tmp_path, name):
    archive = make_zip(tmp_path / "bad.zip", {"ok/file.txt": b"x", name: b"evil"})
    target = tmp_path / "deep" / "target"
    with pytest.raises(DownloadError, match="leaves the extraction folder"):
        extract_archive(archive, target)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()
    assert not target.exists() or visible(target) == set()


def test_tar_links_are_refused(tmp_path):
    archive = make_tar(tmp_path / "bad.tar.gz", {"ok/file.txt": b"x"},
                       links={"ok/passwd": "/etc/passwd"})
    with pytest.raises(DownloadError, match="no links"):
        extract_archive(archive, tmp_path / "target")
    assert visible(tmp_path / "target") == set()


def test_interrupted_extraction_is_invisible_and_redone(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "a.zip", FILES)
    target = tmp_path / "target"
    real_copy, calls = archives.shutil.copyfileobj, []

    def failing_copy(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-extraction
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(archives.shutil, "copyfileobj", failing_copy)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, target)
    assert visible(target) == set() and not marker_path(archive, target).exists()
    monkeypatch.undo()
    assert extract_archive(archive, target).status == "extracted"
    assert visible(target) == set(FILES)


def test_interrupted_between_renames_is_cleaned_up(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "a.zip", FILES)
    target = tmp_path / "target"
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        if Path(dst).parent == target and not Path(dst).name.startswith("."):
            calls.append(dst)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(archives.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, target)
    # One entry is already in place, but the journal says it is unfinished: no marker.
    assert visible(target) == {"annotations/image_info_unlabeled2017.json"}
    assert (target / ".a.zip.pending.json").is_file()
    assert not marker_path(archive, target).exists()
    monkeypatch.undo()
    assert extract_archive(archive, target).status == "extracted"
    assert visible(target) == set(FILES)


def test_foreign_files_are_never_overwritten(tmp_path):
    archive = make_zip(tmp_path / "a.zip", FILES)
    target = tmp_path / "target"
    (target / "annotations").mkdir(parents=True)
    (target / "annotations" / "mine.json").write_text("keep")
    with pytest.raises(DownloadError, match="annotations already exist"):
        extract_archive(archive, target)
    assert (target / "annotations" / "mine.json").read_text() == "keep"
    assert not (target / "unlabeled2017").exists()


def test_unsupported_archive_names_the_fix(tmp_path):
    fake = tmp_path / "fashionIQ_dataset.rar"
    fake.write_bytes(b"Rar!\x1a\x07\x00 not really")
    with pytest.raises(DownloadError, match="unpacked by hand"):
        extract_archive(fake, tmp_path / "out")

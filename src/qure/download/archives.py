"""Atomic, path-safe extraction of zip and tar archives.

An archive is extracted into a hidden staging folder beside the target, then each of its
top-level entries is renamed into the target folder, and a marker file
(``.<archive>.extracted.json``) is written last. Before the renames a journal
(``.<archive>.pending.json``) lists the entries about to appear, so a run interrupted at
any point is redone from scratch by the next call: readers never see a half-extracted
folder under its final name without the journal saying so, and the marker exists only
after everything is in place. Member names that are absolute, contain ``..`` or are
links/devices are refused before anything is written.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from qure.errors import DownloadError
from qure.io import atomic_write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    archive: Path
    target: Path
    entries: tuple[str, ...]
    members: int
    status: str  # "extracted" or "present"

    def as_dict(self) -> dict:
        return {"archive": str(self.archive), "target": str(self.target),
                "entries": list(self.entries), "members": self.members, "status": self.status}


def marker_path(archive: str | Path, target: str | Path) -> Path:
    return Path(target) / f".{Path(archive).name}.extracted.json"


def _journal_path(archive: Path, target: Path) -> Path:
    return target / f".{archive.name}.pending.json"


def _safe_name(name: str, archive: Path) -> PurePosixPath | None:
    """The member's relative path, or None for the archive's root entry; refuses escapes."""
    cleaned = name.replace("\\", "/")
    path = PurePosixPath(cleaned)
    parts = [p for p in path.parts if p not in ("", ".")]
    if cleaned.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise DownloadError(f"{archive}: refusing to extract member {name!r}: its path "
                            "leaves the extraction folder")
    return PurePosixPath(*parts) if parts else None


def is_archive(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


MemberEntry = tuple[PurePosixPath | None, bool, Callable[[], IO[bytes]]]
"""(path inside the staging folder or None to skip, is a folder, opens the member)."""


def _write_members(entries: Iterable[MemberEntry], staging: Path) -> int:
    """Write checked archive members under ``staging``; returns the number of files."""
    count = 0
    for rel, is_dir, open_member in entries:
        if rel is None:
            continue
        out = staging.joinpath(*rel.parts)
        if is_dir:
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as source, out.open("wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        count += 1
    return count


def _extract_zip(archive: Path, staging: Path) -> int:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        plan = [(info, _safe_name(info.filename, archive)) for info in infos]
        for info, _rel in plan:
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise DownloadError(f"{archive}: refusing to extract symbolic link "
                                    f"{info.filename!r}")
        return _write_members(((rel, info.is_dir(), functools.partial(zf.open, info))
                               for info, rel in plan), staging)


def _extract_tar(archive: Path, staging: Path) -> int:
    with tarfile.open(archive) as tf:

        def reader(member: tarfile.TarInfo) -> IO[bytes]:
            source = tf.extractfile(member)
            if source is None:
                raise DownloadError(f"{archive}: cannot read member {member.name!r}")
            return source

        plan = []
        for member in tf.getmembers():
            rel = _safe_name(member.name, archive)
            if not (member.isfile() or member.isdir()):
                raise DownloadError(f"{archive}: refusing to extract {member.name!r}: only "
                                    "regular files and folders are allowed (no links or "
                                    "devices)")
            plan.append((member, rel))
        return _write_members(((rel, member.isdir(), functools.partial(reader, member))
                               for member, rel in plan), staging)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def extract_archive(archive: str | Path, target: str | Path) -> ExtractResult:
    """Extract ``archive`` so that its top-level entries appear inside ``target``.

    Idempotent: a completed extraction (marker present, entries on disk) is not redone.
    An entry that already exists in ``target`` and was not put there by an unfinished
    extraction of this archive is never overwritten; that raises instead.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DownloadError(f"{archive}: archive not found")
    marker, journal = marker_path(archive, target), _journal_path(archive, target)
    done = _read_json(marker) if marker.is_file() else None
    if done is not None and all((target / e).exists() for e in done.get("entries", [])):
        log.info("%s already extracted into %s", archive.name, target)
        return ExtractResult(archive, target, tuple(done["entries"]), int(done["members"]),
                             "present")
    marker.unlink(missing_ok=True)
    if journal.is_file():  # an earlier run stopped while moving entries into place
        pending = _read_json(journal) or {}
        for entry in pending.get("entries", []):
            if PurePosixPath(entry).name == entry and entry not in ("", ".", ".."):
                log.warning("removing %s left by an interrupted extraction of %s",
                            target / entry, archive.name)
                _remove(target / entry)
        journal.unlink()
    if zipfile.is_zipfile(archive):
        extractor = _extract_zip
    elif tarfile.is_tarfile(archive):
        extractor = _extract_tar
    else:
        raise DownloadError(f"{archive}: not a zip or tar archive (a .rar or .7z must be "
                            "unpacked by hand; then pass the folder instead)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.extracting.{archive.name}"
    _remove(staging)
    staging.mkdir()
    try:
        log.info("extracting %s into %s", archive, target)
        members = extractor(archive, staging)
        entries = tuple(sorted(p.name for p in staging.iterdir()))
        target.mkdir(parents=True, exist_ok=True)
        clashes = [e for e in entries if (target / e).exists() or (target / e).is_symlink()]
        if clashes:
            raise DownloadError(
                f"{archive}: cannot extract into {target}: {', '.join(clashes)} already "
                "exist(s) there and were not written by this tool; move them away and rerun")
        atomic_write_json(journal, {"archive": archive.name, "entries": list(entries)})
        for entry in entries:
            os.replace(staging / entry, target / entry)
        atomic_write_json(marker, {"archive": archive.name,
                                   "archive_size": archive.stat().st_size,
                                   "entries": list(entries), "members": members})
        journal.unlink()
    finally:
        _remove(staging)
    return ExtractResult(archive, target, entries, members, "extracted")

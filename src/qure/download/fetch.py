"""Catalogue-driven fetching and checking: what the workflow CLIs call."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from qure.download.http import download, file_digests
from qure.download.sources import SourceFile

log = logging.getLogger(__name__)


def fetch_files(files: Iterable[SourceFile], root: str | Path, *, base_url: str | None = None,
                retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
                progress: bool = True, skip_unverified_checksums: bool = False) -> list[dict]:
    """Download (or verify in place) each file under ``root``; one manifest row per file.

    ``skip_unverified_checksums`` ignores digests marked ``verified: false`` (third-party
    values, e.g. COCO's md5); the size is still checked and the sha256 recorded.
    """
    rows = []
    for entry in files:
        use_digests = entry.verified or not skip_unverified_checksums
        result = download(entry.resolve_url(base_url), entry.dest(root),
                          sha256=entry.sha256 if use_digests else None,
                          md5=entry.md5 if use_digests else None, size=entry.size,
                          retries=retries, backoff=backoff, timeout=timeout, progress=progress)
        rows.append({
            "path": entry.path, "dest": str(result.dest), "url": result.url,
            "group": entry.group, "size": result.size, "sha256": result.sha256,
            "md5": result.md5, "pinned": result.pinned, "checksum_verified": entry.verified,
            "status": result.status, "resumed_from": result.resumed_from,
            "substitute": entry.substitute,
        })
    return rows


def verify_files(files: Iterable[SourceFile], root: str | Path) -> list[dict]:
    """Check files already on disk against the catalogue (no network).

    ``status`` is ``ok``, ``mismatch``, ``missing`` or ``unpinned`` (present, no digest known).
    """
    rows = []
    for entry in files:
        dest = entry.dest(root)
        row: dict = {"path": entry.path, "dest": str(dest), "expected_sha256": entry.sha256,
                     "expected_size": entry.size, "substitute": entry.substitute}
        if not dest.is_file():
            row["status"] = "missing"
            rows.append(row)
            continue
        sha256, md5 = file_digests(dest, md5=entry.md5 is not None)
        size = dest.stat().st_size
        row.update(size=size, sha256=sha256)
        bad = ((entry.size is not None and size != entry.size)
               or (entry.sha256 is not None and sha256 != entry.sha256)
               or (entry.md5 is not None and md5 != entry.md5))
        row["status"] = "mismatch" if bad else ("ok" if entry.pinned else "unpinned")
        if bad:
            log.error("%s does not match the catalogue (sha256 %s, expected %s)", dest,
                      sha256, entry.sha256 or entry.md5)
        rows.append(row)
    return rows

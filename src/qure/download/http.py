"""Resumable, verified HTTP downloads with the standard library (urllib) and tqdm.

A download streams into ``<dest>.part`` and only a verified file is renamed to ``dest``,
so no partial or corrupt file ever sits under its final name. An existing ``.part`` is
resumed with an HTTP ``Range`` request; a server that ignores the range (answers 200) makes
the download restart from byte 0. Connection errors, 5xx/408/429 answers and truncated
bodies are retried with exponential backoff; the attempt counter restarts whenever an
attempt made progress, so a long file over a flaky link still completes.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from qure.errors import ChecksumError, DownloadError, OfflineError
from qure.io import atomic_write_json

log = logging.getLogger(__name__)

USER_AGENT = "qure-repro-downloader/1"
SIDECAR_SUFFIX = ".sha256.json"
DEFAULT_CHUNK = 1 << 20
_RETRIED_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class DownloadResult:
    """What :func:`download` did: ``status`` is ``downloaded`` or ``present``."""

    url: str
    dest: Path
    size: int
    sha256: str
    md5: str | None
    status: str
    pinned: bool
    resumed_from: int = 0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["dest"] = str(self.dest)
        return out


def part_path(dest: str | Path) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def sidecar_path(dest: str | Path) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.name + SIDECAR_SUFFIX)


class _Retry(Exception):
    """An attempt failed in a way worth retrying; ``progressed`` if bytes arrived."""

    def __init__(self, reason: str, progressed: bool = False, unreachable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.progressed = progressed
        self.unreachable = unreachable


class _Digests:
    """sha256 (always) and md5 (when asked) over the bytes of the ``.part`` file."""

    def __init__(self, want_md5: bool):
        self.want_md5 = want_md5
        self.reset()

    def reset(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if self.want_md5 else None
        self.count = 0

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.md5 is not None:
            self.md5.update(data)
        self.count += len(data)

    def catch_up(self, path: Path, upto: int, chunk_size: int) -> None:
        """Hash bytes ``count..upto`` of ``path`` (a ``.part`` left by an earlier run)."""
        if self.count > upto:
            self.reset()
        with path.open("rb") as handle:
            handle.seek(self.count)
            while self.count < upto:
                data = handle.read(min(chunk_size, upto - self.count))
                if not data:
                    break
                self.update(data)


def file_digests(path: str | Path, md5: bool = False,
                 chunk_size: int = DEFAULT_CHUNK) -> tuple[str, str | None]:
    """(sha256, md5 or None) of a file on disk."""
    digests = _Digests(md5)
    path = Path(path)
    digests.catch_up(path, path.stat().st_size, chunk_size)
    return digests.sha256.hexdigest(), digests.md5.hexdigest() if digests.md5 else None


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _offline_message(url: str, dest: Path, reason: object) -> str:
    return (f"could not reach host {_host(url)!r} for {url} ({reason}); this machine may be "
            f"offline or the host may be down. Download the file on a machine with access "
            f"and place it manually at {dest}, or point --base-url at a mirror, then rerun.")


def _is_dns_failure(reason: object) -> bool:
    return isinstance(reason, socket.gaierror)


def _mismatch(url: str, dest: Path, what: str, expected: object, actual: object,
              cleaned: str) -> ChecksumError:
    return ChecksumError(f"{what} mismatch for {url} -> {dest}: expected {expected}, got "
                         f"{actual}; {cleaned}", url=url, dest=dest)


class _Download:
    """One file's transfer state across attempts."""

    def __init__(self, url: str, dest: Path, *, sha256: str | None, md5: str | None,
                 size: int | None, timeout: float, progress: bool, chunk_size: int):
        self.url = url
        self.dest = dest
        self.part = part_path(dest)
        self.sha256 = sha256
        self.md5 = md5
        self.size = size
        self.timeout = timeout
        self.progress = progress
        self.chunk_size = chunk_size
        self.digests = _Digests(md5 is not None)
        self.resumed_from = 0

    def _open(self, offset: int) -> http.client.HTTPResponse:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(self.url, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 416 and offset:
                raise  # handled by the caller
            if err.code == 404:
                raise DownloadError(
                    f"{self.url}: not found (HTTP 404); the file was moved or removed "
                    f"upstream. Nothing was written to {self.dest}; use a mirror "
                    f"(--base-url) or place the file there manually.",
                    url=self.url, dest=self.dest) from None
            if err.code in _RETRIED_STATUS:
                raise _Retry(f"HTTP {err.code} {err.reason}") from None
            raise DownloadError(f"{self.url}: HTTP {err.code} {err.reason}; nothing was "
                                f"written to {self.dest}", url=self.url,
                                dest=self.dest) from None
        except urllib.error.URLError as err:
            if _is_dns_failure(err.reason):
                raise OfflineError(_offline_message(self.url, self.dest, err.reason),
                                   url=self.url, dest=self.dest) from None
            raise _Retry(f"{err.reason}", unreachable=True) from None
        except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as err:
            raise _Retry(f"{type(err).__name__}: {err}") from None

    def attempt(self) -> None:
        """One request; returns when the ``.part`` holds the whole body."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        if self.size is not None and offset > self.size:
            log.warning("%s is larger than the expected %d bytes; restarting", self.part,
                        self.size)
            self.part.unlink()
            offset = 0
        if self.size is not None and offset == self.size and offset:
            return  # complete from an earlier attempt; verification follows
        try:
            response = self._open(offset)
        except urllib.error.HTTPError:  # 416: our range starts past the end
            log.warning("%s: server refused the resume range (HTTP 416); restarting",
                        self.url)
            self.part.unlink(missing_ok=True)
            raise _Retry("HTTP 416 on resume") from None
        with response:
            mode, offset, length = self._start(response, offset)
            self._stream(response, mode, offset, length)

    def _start(self, response: http.client.HTTPResponse,
               offset: int) -> tuple[str, int, int | None]:
        """Decide append vs restart from the status; check the announced total size."""
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        total: int | None = None
        if offset and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                self.part.unlink(missing_ok=True)
                raise _Retry(f"bad Content-Range {response.headers.get('Content-Range')!r} "
                             f"for a resume at byte {offset}")
            total = int(match.group(3)) if match.group(3) != "*" else None
            self.resumed_from = offset
            log.info("resuming %s at byte %d", self.url, offset)
            mode = "ab"
        else:
            if offset:
                log.warning("%s: server ignored the Range request (HTTP %d); restarting from "
                            "byte 0", self.url, response.status)
            offset = 0
            self.resumed_from = 0
            self.digests.reset()
            total = length
            mode = "wb"
        if total is not None and self.size is not None and total != self.size:
            self.part.unlink(missing_ok=True)
            raise _mismatch(self.url, self.dest, "size", f"{self.size} bytes",
                            f"{total} bytes announced by the server",
                            "nothing was kept")
        if mode == "ab":
            self.digests.catch_up(self.part, offset, self.chunk_size)
        return mode, offset, length

    def _stream(self, response: http.client.HTTPResponse, mode: str, offset: int,
                length: int | None) -> None:
        received = 0
        total = offset + length if length is not None else self.size
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=self.dest.name, disable=not self.progress, mininterval=1.0,
                   leave=False)
        try:
            with self.part.open(mode) as handle:
                while True:
                    try:
                        data = response.read(self.chunk_size)
                    except (http.client.IncompleteRead, ConnectionError, TimeoutError,
                            http.client.HTTPException, OSError) as err:
                        raise _Retry(f"connection lost after {offset + received} bytes "
                                     f"({type(err).__name__})", progressed=received > 0) from None
                    if not data:
                        break
                    handle.write(data)
                    self.digests.update(data)
                    received += len(data)
                    bar.update(len(data))
        finally:
            bar.close()
        if length is not None and received < length:
            raise _Retry(f"truncated body: got {offset + received} of {offset + length} bytes",
                         progressed=received > 0)

    def verify_part(self) -> tuple[str, str | None, int]:
        actual_size = self.part.stat().st_size
        self.digests.catch_up(self.part, actual_size, self.chunk_size)
        sha256 = self.digests.sha256.hexdigest()
        md5 = self.digests.md5.hexdigest() if self.digests.md5 is not None else None
        cleaned = f"the partial download {self.part.name} was deleted"
        problem = None
        if self.size is not None and actual_size != self.size:
            problem = _mismatch(self.url, self.dest, "size", f"{self.size} bytes",
                                f"{actual_size} bytes", cleaned)
        elif self.sha256 is not None and sha256 != self.sha256:
            problem = _mismatch(self.url, self.dest, "sha256", self.sha256, sha256, cleaned)
        elif self.md5 is not None and md5 != self.md5:
            problem = _mismatch(self.url, self.dest, "md5", self.md5, md5, cleaned)
        if problem is not None:
            self.part.unlink(missing_ok=True)
            raise problem
        return sha256, md5, actual_size


def _write_sidecar(dest: Path, url: str, size: int, sha256: str, how: str) -> None:
    atomic_write_json(sidecar_path(dest), {"file": dest.name, "url": url, "size": size,
                                           "sha256": sha256, "recorded": how})
    log.warning("no pinned checksum for %s; recorded size %d and sha256 %s in %s", dest, size,
                sha256, sidecar_path(dest).name)


def _verify_existing(url: str, dest: Path, *, sha256: str | None, md5: str | None,
                     size: int | None, record: bool, chunk_size: int) -> DownloadResult:
    """``dest`` exists: accept it if it matches what is pinned (or recorded), else raise."""
    actual_size = dest.stat().st_size
    advice = "delete it to download it again, or replace it with a good copy"
    if size is not None and actual_size != size:
        raise _mismatch(url, dest, "size of the existing file", f"{size} bytes",
                        f"{actual_size} bytes", advice)
    actual_sha, actual_md5 = file_digests(dest, md5=md5 is not None, chunk_size=chunk_size)
    if sha256 is not None and actual_sha != sha256:
        raise _mismatch(url, dest, "sha256 of the existing file", sha256, actual_sha, advice)
    if md5 is not None and actual_md5 != md5:
        raise _mismatch(url, dest, "md5 of the existing file", md5, actual_md5, advice)
    pinned = sha256 is not None or md5 is not None
    if not pinned and record:
        side = sidecar_path(dest)
        if side.is_file():
            try:
                recorded = json.loads(side.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise DownloadError(f"{side}: unreadable checksum record ({err}); delete it "
                                    f"to record {dest} again", url=url, dest=dest) from err
            if (recorded.get("sha256"), recorded.get("size")) != (actual_sha, actual_size):
                raise _mismatch(url, dest, f"sha256 recorded in {side.name}",
                                recorded.get("sha256"), actual_sha, advice)
        else:
            _write_sidecar(dest, url, actual_size, actual_sha, "file was already present")
    part_path(dest).unlink(missing_ok=True)
    log.info("%s already present and verified", dest)
    return DownloadResult(url, dest, actual_size, actual_sha, actual_md5, "present", pinned)


def download(url: str, dest: str | Path, *, sha256: str | None = None, md5: str | None = None,
             size: int | None = None, retries: int = 5, backoff: float = 1.0,
             max_backoff: float = 60.0, timeout: float = 60.0, progress: bool = True,
             chunk_size: int = DEFAULT_CHUNK, record: bool = True) -> DownloadResult:
    """Fetch ``url`` to ``dest`` and verify it; a verified existing ``dest`` is kept as is.

    ``sha256``/``md5``/``size`` are checked when given. Without a digest, the computed size
    and sha256 are recorded in ``<dest>.sha256.json`` (unless ``record`` is False) and later
    runs check the file against that record. Raises :class:`OfflineError` when the host
    cannot be reached, :class:`ChecksumError` on a mismatch (nothing is left behind) and
    :class:`DownloadError` for HTTP errors such as 404.
    """
    dest = Path(dest)
    sha256 = sha256.lower() if sha256 else None
    md5 = md5.lower() if md5 else None
    if dest.exists():
        return _verify_existing(url, dest, sha256=sha256, md5=md5, size=size, record=record,
                                chunk_size=chunk_size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    job = _Download(url, dest, sha256=sha256, md5=md5, size=size, timeout=timeout,
                    progress=progress, chunk_size=chunk_size)
    failures = 0
    while True:
        try:
            job.attempt()
            break
        except _Retry as err:
            failures = 1 if err.progressed else failures + 1
            if failures > retries:
                if err.unreachable:
                    raise OfflineError(_offline_message(url, dest, err.reason), url=url,
                                       dest=dest) from None
                kept = (f"; the partial file {job.part} is kept and the next run resumes it"
                        if job.part.exists() else "")
                raise DownloadError(f"{url}: giving up after {retries + 1} attempts "
                                    f"({err.reason}){kept}", url=url, dest=dest) from None
            delay = min(max_backoff, backoff * 2 ** (failures - 1))
            log.warning("%s: %s; retry %d/%d in %.2fs", url, err.reason, failures, retries,
                        delay)
            time.sleep(delay)
    actual_sha, actual_md5, actual_size = job.verify_part()
    os.replace(job.part, dest)
    pinned = sha256 is not None or md5 is not None
    if not pinned and record:
        _write_sidecar(dest, url, actual_size, actual_sha, "first download")
    log.info("downloaded %s (%d bytes, sha256 %s)", dest, actual_size, actual_sha)
    return DownloadResult(url, dest, actual_size, actual_sha, actual_md5, "downloaded", pinned,
                          job.resumed_from)

"""Error types that name the file, record or config key at fault."""

from __future__ import annotations

from pathlib import Path


class QureError(Exception):
    """Base class for every error this package raises on bad input."""


class DatasetFormatError(QureError):
    """An annotation file is missing, malformed, or a record lacks a key."""

    def __init__(self, path: str | Path, message: str, record: str | int | None = None):
        self.path = Path(path)
        self.record = record
        where = f"{self.path}" if record is None else f"{self.path} (record {record})"
        super().__init__(f"{where}: {message}")


class MissingImageError(QureError):
    """An image a query or gallery needs is not on disk."""

    def __init__(self, name: str, tried: list[Path], record: str | None = None):
        self.name = name
        self.tried = list(tried)
        paths = ", ".join(str(p) for p in self.tried)
        rec = f" (needed by {record})" if record else ""
        super().__init__(f"image {name!r}{rec} not found; looked for: {paths}")


class ConfigError(QureError):
    """A configuration value is invalid; the message names the key."""


class DownloadError(QureError):
    """A download failed for good; the message names the URL and the destination file."""

    def __init__(self, message: str, url: str | None = None, dest: str | Path | None = None):
        self.url = url
        self.dest = Path(dest) if dest is not None else None
        super().__init__(message)


class ChecksumError(DownloadError):
    """A file's size or digest differs from the pinned value (nothing is left behind)."""


class OfflineError(DownloadError):
    """The host could not be reached at all (DNS failure, connection refused, no route)."""


class LayoutError(QureError):
    """Files on disk are not in the layout the loaders expect; the message says how to fix it."""

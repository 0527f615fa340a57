"""Atomic writes and JSON reading that report the offending file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from qure.errors import DatasetFormatError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it.

    A reader never sees a partial file under the final name, and a crash leaves the
    previous version (if any) untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = False) -> Path:
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save`` through :func:`atomic_write` (checkpoints, snapshots, models)."""
    import torch  # deferred: the data/synthetic CLIs should not pay torch's import

    return atomic_write(path, lambda handle: torch.save(obj, handle))


def read_json(path: str | Path, expected: type | tuple[type, ...] | None = None) -> Any:
    """Load a UTF-8 JSON file, raising :class:`DatasetFormatError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "file not found")
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(
            path, f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from err
    except UnicodeDecodeError as err:
        raise DatasetFormatError(path, f"not valid UTF-8: {err}") from err
    if expected is not None and not isinstance(data, expected):
        names = expected.__name__ if isinstance(expected, type) else "/".join(
            t.__name__ for t in expected)
        raise DatasetFormatError(path, f"expected a JSON {names}, got {type(data).__name__}")
    return data

"""Frozen image features computed once and read by training, mining and evaluation.

BLIP-2's image encoder is frozen in QuRe, yet the release re-runs ViT-L for every
reference, target and negative at each step and for the whole training gallery at each
negative re-definition. Here the frozen output is computed once per image and stored as
a float16 ``.npy`` (read through a memory map) beside a JSON index that records the row
order, shape, dtype and a fingerprint of the frozen weights plus the preprocessing. A
reader that brings a different encoder or preprocessing gets a
:class:`FeatureCacheMismatchError` naming the file instead of silently wrong features.

Both files are written under temporary names and renamed into place.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from qure import __version__
from qure.errors import QureError
from qure.io import atomic_write_json, read_json
from qure.models.interface import CIRBackbone
from qure.models.preprocess import ImageTransform, load_image

log = logging.getLogger(__name__)

FORMAT = "qure-feature-cache/1"
INDEX_SUFFIX = ".index.json"
STORAGE_DTYPE = np.float16


class FeatureCacheMismatchError(QureError):
    """A cache was built by another encoder/preprocessing than the one reading it."""

    def __init__(self, path: Path, cached: str, expected: str):
        self.path = path
        super().__init__(
            f"{path}: feature cache fingerprint {cached[:16]}... does not match the encoder "
            f"and preprocessing in use ({expected[:16]}...); rebuild the cache")


class FeatureCacheFormatError(QureError):
    """A cache's data file and index disagree or are missing."""

    def __init__(self, path: Path, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


def index_path(path: str | Path) -> Path:
    """The JSON index beside a cache's ``.npy`` data file."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"feature cache path must end in .npy, got {path}")
    return path.with_name(path.stem + INDEX_SUFFIX)


def image_loader(locate: Callable[[str], Path], transform: ImageTransform
                 ) -> Callable[[str], torch.Tensor]:
    """``name -> transform(image file)``; the file is opened in its own mode because
    TargetPad converts to RGB only after padding."""

    def load(name: str) -> torch.Tensor:
        return transform(load_image(locate(name), mode=None))

    return load


def build_feature_cache(path: str | Path, names: Sequence[str],
                        load: Callable[[str], torch.Tensor], backbone: CIRBackbone,
                        preprocess: Mapping[str, Any], *, batch_size: int = 64,
                        device: str | torch.device = "cpu", workers: int = 0,
                        progress: bool = True) -> FeatureCache:
    """Compute ``backbone.frozen_features`` for every name and write the cache at ``path``.

    ``load(name)`` returns one preprocessed image [3,H,W] (see :func:`image_loader`);
    ``preprocess`` is that preprocessing's config (e.g. ``transform.config``), which goes
    into the fingerprint. ``workers`` > 0 decodes images in that many threads.
    """
    path = Path(path)
    index_file = index_path(path)
    names = [str(n) for n in names]
    if not names:
        raise ValueError(f"{path}: no images to cache")
    duplicates = len(names) - len(set(names))
    if duplicates:
        raise ValueError(f"{path}: {duplicates} duplicate image name(s)")
    fingerprint = backbone.frozen_fingerprint(preprocess)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.npy", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    data: np.memmap | None = None
    try:
        starts = range(0, len(names), batch_size)
        for start in tqdm(starts, desc=f"features -> {path.name}", disable=not progress):
            chunk = names[start:start + batch_size]
            images = list(pool.map(load, chunk)) if pool else [load(n) for n in chunk]
            with torch.inference_mode():
                batch = torch.stack(images).to(device)
                feats = backbone.frozen_features(batch).float().cpu().numpy()
            stored = feats.astype(STORAGE_DTYPE)
            if not np.isfinite(stored).all():
                raise ValueError(f"{path}: features of {chunk[0]!r}.. overflow float16")
            if data is None:
                shape = (len(names), *feats.shape[1:])
                data = open_memmap(tmp, mode="w+", dtype=STORAGE_DTYPE, shape=shape)
            data[start:start + len(chunk)] = stored
        if data is None:  # unreachable: names is non-empty
            raise RuntimeError(f"{path}: no batches were written")
        shape = tuple(int(s) for s in data.shape)
        data.flush()
        del data
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        # No moment where an old index describes the new rows: drop it first.
        index_file.unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if pool is not None:
            pool.shutdown()
    index = {
        "format": FORMAT,
        "data_file": path.name,
        "names": names,
        "shape": list(shape),
        "dtype": np.dtype(STORAGE_DTYPE).name,
        "fingerprint": fingerprint,
        "backbone": backbone.name,
        "preprocess": dict(preprocess),
        "qure_version": __version__,
    }
    atomic_write_json(index_file, index, indent=None)
    log.info("wrote %s: %d images, features %s", path, len(names), shape[1:])
    return FeatureCache.open(path, fingerprint=fingerprint)


class FeatureCache:
    """Read-only access to a cache written by :func:`build_feature_cache`."""

    def __init__(self, path: Path, index: dict[str, Any], data: np.ndarray):
        self.path = path
        self.index = index
        self._data = data

    @classmethod
    def open(cls, path: str | Path, fingerprint: str | None = None) -> FeatureCache:
        """Open the cache at ``path`` (the ``.npy``); with ``fingerprint``, refuse a cache
        built from other frozen weights or preprocessing."""
        path = Path(path)
        index_file = index_path(path)
        index = read_json(index_file, dict)
        if index.get("format") != FORMAT:
            raise FeatureCacheFormatError(index_file, f"unknown format {index.get('format')!r}")
        if not path.is_file():
            raise FeatureCacheFormatError(path, "data file not found (index exists)")
        if fingerprint is not None and index["fingerprint"] != fingerprint:
            raise FeatureCacheMismatchError(path, index["fingerprint"], fingerprint)
        try:
            data = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise FeatureCacheFormatError(path, f"not a readable .npy file: {err}") from err
        if list(data.shape) != list(index["shape"]) or data.dtype.name != index["dtype"]:
            raise FeatureCacheFormatError(
                path, f"data {data.dtype.name}{list(data.shape)} disagrees with index "
                f"{index['dtype']}{index['shape']} ({index_file})")
        if len(index["names"]) != data.shape[0]:
            raise FeatureCacheFormatError(index_file, "names and rows differ in number")
        return cls(path, index, data)

    @classmethod
    def open_for(cls, path: str | Path, backbone: CIRBackbone,
                 preprocess: Mapping[str, Any]) -> FeatureCache:
        """Open ``path`` and check it matches ``backbone``'s frozen part and ``preprocess``."""
        return cls.open(path, fingerprint=backbone.frozen_fingerprint(preprocess))

    @staticmethod
    def recorded_preprocess(path: str | Path) -> Any:
        """The preprocessing a cache's index records (read without opening the data)."""
        return read_json(index_path(path), dict).get("preprocess")

    @property
    def names(self) -> list[str]:
        return self.index["names"]

    @property
    def fingerprint(self) -> str:
        return self.index["fingerprint"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @cached_property
    def rows(self) -> dict[str, int]:
        """Name -> row number."""
        return {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return self._data.shape[0]

    def __contains__(self, name: object) -> bool:
        return name in self.rows

    def __getitem__(self, names: str | Sequence[str]) -> torch.Tensor:
        """float32 features [B,P,C] for ``names`` (or [P,C] for a single name)."""
        if isinstance(names, str):
            return self.take([self._row(names)])[0]
        return self.take([self._row(n) for n in names])

    def _row(self, name: str) -> int:
        try:
            return self.rows[name]
        except KeyError:
            raise KeyError(f"image {name!r} is not in the feature cache {self.path}") from None

    def as_tensor(self) -> torch.Tensor:
        """The whole cache as a read-only fp16 tensor over the memory map (no copy):
        rows are paged in by the OS as they are indexed."""
        with warnings.catch_warnings():
            # The memmap is opened read-only on purpose; torch warns about that.
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self._data)

    def take(self, rows: Sequence[int] | torch.Tensor | np.ndarray) -> torch.Tensor:
        """float32 features of the given row numbers, [B,P,C]."""
        index = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows,
                           dtype=np.int64)
        return torch.from_numpy(np.asarray(self._data[index], dtype=np.float32))

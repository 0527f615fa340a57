"""The miner's error type, argument checks and the small tensor helpers its kernels share."""

from __future__ import annotations

from typing import Any

import torch

from qure.errors import QureError


class MiningError(QureError, ValueError):
    """Bad input to the miner; the message names the argument at fault."""


def _index_dtype(num_columns: int) -> torch.dtype:
    return torch.int32 if num_columns <= torch.iinfo(torch.int32).max else torch.int64


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MiningError(f"{name}: expected a positive int, got {value!r}")


def _as_long_1d(name: str, value: Any, length: int) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.ndim != 1 or tensor.shape[0] != length:
        raise MiningError(f"{name}: expected shape [{length}], got {list(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise MiningError(f"{name}: expected an integer tensor, got {tensor.dtype}")
    return tensor.long().cpu()


def _check_index(name: str, value: Any, num_rows: int, num_columns: int,
                 allow_missing: bool = False) -> torch.Tensor:
    index = _as_long_1d(name, value, num_rows)
    low = -1 if allow_missing else 0
    if index.numel() and (int(index.min()) < low or int(index.max()) >= num_columns):
        bad = ((index < low) | (index >= num_columns)).nonzero().flatten()[:5].tolist()
        allowed = f"[{low}, {num_columns})"
        raise MiningError(f"{name}: values outside {allowed} in row(s) {bad}")
    return index


class _Workspace:
    """Buffers reused across chunks (fresh large allocations cost page faults)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, int], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        key = (name, dtype, device)
        numel = shape[0] * shape[1]
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel].view(shape)


def _stable_descending(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank rows: descending scores, ties by lower column (equal values incl. ±0)."""
    return torch.sort(x, dim=1, descending=True, stable=True)

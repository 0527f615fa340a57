"""The result container: one hard-negative set per query, stored compactly (CSR)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qure.mining.base import MiningError, _index_dtype


@dataclass(frozen=True, eq=False)
class HardNegativeSets:
    """One set of gallery columns per query, stored compactly (CSR).

    ``sets[i]`` is the set of query ``i`` as a 1-D int64 tensor, sorted ascending.
    Storage is ``indices`` (all sets concatenated, int32) and ``offsets`` (int64,
    ``Q + 1`` entries, set ``i`` = ``indices[offsets[i]:offsets[i + 1]]``), so tens of
    thousands of sets cost one tensor, not one per query.

    ``fallback[i]`` is True when the strategy's own rule produced nothing for query ``i``
    and the configured fallback was applied instead (``qure``: no qualifying pair of
    drops; ``trns``: empty mid-zone).
    """

    indices: torch.Tensor
    offsets: torch.Tensor
    fallback: torch.Tensor
    num_columns: int
    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or self.offsets.numel() < 1:
            raise MiningError("offsets: must be a 1-D tensor with Q + 1 entries")
        if self.fallback.shape != (self.offsets.numel() - 1,):
            raise MiningError("fallback: must have one flag per set")
        if int(self.offsets[-1]) != self.indices.numel():
            raise MiningError("offsets: last offset must equal the number of indices")

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"set index {i} out of range for {n} sets")
        i %= n
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.indices[start:stop].long()

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]

    @property
    def sizes(self) -> torch.Tensor:
        """Set sizes, int64 [Q]."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def fallback_rows(self) -> torch.Tensor:
        """Queries whose set came from the fallback, int64, ascending."""
        return self.fallback.nonzero().flatten()

    @property
    def empty_rows(self) -> torch.Tensor:
        """Queries with an empty set, int64, ascending."""
        return (self.sizes == 0).nonzero().flatten()

    def to_lists(self) -> list[list[int]]:
        """Plain Python lists, e.g. for JSON."""
        flat = self.indices.tolist()
        bounds = self.offsets.tolist()
        return [flat[bounds[i] : bounds[i + 1]] for i in range(len(self))]

    def map_columns(self, columns: torch.Tensor, num_columns: int) -> HardNegativeSets:
        """Renumber columns through ``columns`` (local column ``c`` -> ``columns[c]``).

        ``columns`` must be strictly increasing so that sets stay sorted; this is the case
        for a sub-gallery's positions in the full gallery (see :func:`mine_grouped`).
        """
        columns = torch.as_tensor(columns).flatten().long().cpu()
        if columns.numel() != self.num_columns:
            raise MiningError(
                f"columns: expected {self.num_columns} entries, got {columns.numel()}"
            )
        if columns.numel() > 1 and not bool((columns[1:] > columns[:-1]).all()):
            raise MiningError("columns: must be strictly increasing")
        if columns.numel() and (int(columns[0]) < 0 or int(columns[-1]) >= num_columns):
            raise MiningError(f"columns: entries must lie in [0, {num_columns})")
        mapped = columns[self.indices.long()].to(_index_dtype(num_columns))
        return HardNegativeSets(mapped, self.offsets, self.fallback, num_columns,
                                self.strategy, dict(self.params))

    @staticmethod
    def merge(parts: Sequence[tuple[torch.Tensor, HardNegativeSets]],
              num_rows: int) -> HardNegativeSets:
        """Combine sets mined for disjoint groups of queries back into query order.

        ``parts`` holds ``(rows, sets)`` pairs: ``sets[j]`` belongs to query ``rows[j]``.
        Every query in ``range(num_rows)`` must be covered exactly once. All parts must
        share the strategy and column numbering (map them first).
        """
        if not parts:
            raise MiningError("parts: nothing to merge")
        seen = torch.zeros(num_rows, dtype=torch.int64)
        sizes = torch.zeros(num_rows, dtype=torch.int64)
        fallback = torch.zeros(num_rows, dtype=torch.bool)
        num_columns = parts[0][1].num_columns
        for rows, sets in parts:
            rows = torch.as_tensor(rows).flatten().long().cpu()
            if rows.numel() != len(sets):
                raise MiningError(f"parts: {rows.numel()} rows given for {len(sets)} sets")
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= num_rows):
                raise MiningError(f"parts: rows must lie in [0, {num_rows})")
            if sets.num_columns != num_columns or sets.strategy != parts[0][1].strategy:
                raise MiningError("parts: sets differ in strategy or column numbering")
            seen.index_add_(0, rows, torch.ones_like(rows))
            sizes[rows] = sets.sizes
            fallback[rows] = sets.fallback
        if not bool((seen == 1).all()):
            raise MiningError("parts: every query must be covered exactly once")
        offsets = torch.zeros(num_rows + 1, dtype=torch.int64)
        torch.cumsum(sizes, 0, out=offsets[1:])
        indices = torch.empty(int(offsets[-1]), dtype=_index_dtype(num_columns))
        for rows, sets in parts:
            rows = torch.as_tensor(rows).flatten().long().cpu()
            shift = offsets[rows] - sets.offsets[:-1]
            dest = torch.repeat_interleave(shift, sets.sizes) + torch.arange(
                sets.indices.numel())
            indices[dest] = sets.indices.to(indices.dtype)
        return HardNegativeSets(indices, offsets, fallback, num_columns,
                                parts[0][1].strategy, dict(parts[0][1].params))

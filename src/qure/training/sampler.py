"""One negative per query per epoch, drawn as a pure function of (seed, epoch).

Because a draw depends only on the seed, the epoch and the current hard sets, there is
no sampler state to lose: a resumed run redraws exactly what an uninterrupted run drew.
That is also why the released code's "no repeat" history could silently fail (it lived
in DataLoader workers and was lost every epoch); here it is exact by construction.

Modes:

* ``without_replacement`` (the paper's intent): within one definition period, epoch
  ``defined_at + j`` takes item ``j`` of a seeded random permutation of the query's set;
  after ``|set|`` epochs a fresh permutation starts.
* ``uniform`` (what the released code effectively does): an independent uniform draw
  from the set every epoch.

Warm-up draws uniformly from the query's corpus group minus its target (the released
``negative='random'``), without materialising the |Q| x |N| "all" sets.
"""

from __future__ import annotations

import hashlib

import torch

from qure.mining import HardNegativeSets
from qure.training.data import TrainingData

SAMPLING_MODES = ("without_replacement", "uniform")


def seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from ``parts`` (stable across processes and platforms)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which queries are visited in ``epoch``."""
    return torch.randperm(n, generator=seeded_generator(seed, "order", epoch))


def warmup_negatives(data: TrainingData, seed: int, epoch: int) -> torch.Tensor:
    """[Q] uniform column from the query's group, never its target."""
    starts, sizes = data.group_bounds()
    group_size = sizes[data.query_group]
    if bool((group_size < 2).any()):
        raise ValueError("a corpus group has fewer than two images: no negative exists")
    u = torch.rand(len(data), generator=seeded_generator(seed, "warmup", epoch),
                   dtype=torch.float64)
    offset = (u * (group_size - 1)).long().clamp(max=group_size - 2)
    column = starts[data.query_group] + offset
    return column + (column >= data.target).long()  # skip over the target


def set_negatives(sets: HardNegativeSets, seed: int, defined_at: int, epoch: int,
                  mode: str = "without_replacement") -> torch.Tensor:
    """[Q] one column per query from its hard set; -1 where the set is empty."""
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")
    if epoch < defined_at:
        raise ValueError(f"epoch {epoch} precedes the sets' definition epoch {defined_at}")
    sizes = sets.sizes
    offsets = sets.offsets
    n = sizes.numel()
    out = torch.full((n,), -1, dtype=torch.long)
    filled = sizes > 0
    if not bool(filled.any()):
        return out
    indices = sets.indices.long()
    safe = sizes.clamp(min=1)
    if mode == "uniform":
        u = torch.rand(n, generator=seeded_generator(seed, "uniform", defined_at, epoch),
                       dtype=torch.float64)
        position = (u * safe).long().clamp(max=safe - 1)
        out[filled] = indices[offsets[:-1][filled] + position[filled]]
        return out
    step = epoch - defined_at
    cycle = step // safe
    position = step % safe
    row_of_item = torch.repeat_interleave(torch.arange(n, dtype=torch.float64), sizes)
    for c in torch.unique(cycle[filled]).tolist():
        keys = torch.rand(indices.numel(), dtype=torch.float64,
                          generator=seeded_generator(seed, "perm", defined_at, c))
        # Sorting row + key (key in [0, 1)) shuffles every set independently at once.
        order = torch.argsort(row_of_item + keys, stable=True)
        rows = filled & (cycle == c)
        out[rows] = indices[order[offsets[:-1][rows] + position[rows]]]
    return out

"""QuRe's epoch-level schedule: cosine learning rate and hard-negative re-definitions."""

from __future__ import annotations

import math


def cosine_lr(epoch: int, epochs: int, init_lr: float, min_lr_ratio: float = 0.01) -> float:
    """Learning rate for ``epoch`` (0-based), stepped once per epoch as released.

    lr = min + (init - min) * (1 + cos(pi * epoch / epochs)) / 2 with min = init / 100:
    the release hard-codes ``init_lr / 100`` and ignores its ``min_lr`` config key.
    """
    min_lr = init_lr * min_lr_ratio
    return min_lr + (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def redefinition_interval(epochs: int, n_def: int) -> int:
    """Epochs between hard-negative re-definitions: ``epochs // n_def`` (at least 1)."""
    if n_def < 1:
        raise ValueError(f"n_def must be >= 1, got {n_def}")
    return max(1, epochs // n_def)


def redefinition_epochs(epochs: int, n_def: int, warmup: bool = True) -> list[int]:
    """Epochs at which hard-negative sets are (re)defined before the epoch's training.

    Released rule: ``epoch % (epochs // n_def) == 0``, skipping epoch 0 under warm-up
    (FashionIQ 30//6=5 gives epochs 5..25, only five re-definitions; CIRR 50//6=8 gives
    8..48, six). Without warm-up the sets are defined at epoch 0 from the untrained model.
    """
    interval = redefinition_interval(epochs, n_def)
    start = interval if warmup else 0
    return list(range(start, epochs, interval))

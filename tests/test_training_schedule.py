"""The epoch schedule and the stateless negative sampler."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from qure.mining import HardNegativeSets
from qure.training.data import TrainingData
from qure.training.sampler import epoch_permutation, set_negatives, warmup_negatives
from qure.training.schedule import cosine_lr, redefinition_epochs


def test_released_redefinition_epochs():
    assert redefinition_epochs(30, 6) == [5, 10, 15, 20, 25]  # FashionIQ: only five
    assert redefinition_epochs(50, 6) == [8, 16, 24, 32, 40, 48]  # CIRR: six
    assert redefinition_epochs(12, 6, warmup=False) == [0, 2, 4, 6, 8, 10]
    assert redefinition_epochs(4, 6) == [1, 2, 3]  # interval floors at one epoch
    with pytest.raises(ValueError, match="n_def"):
        redefinition_epochs(10, 0)


def test_cosine_lr_goes_to_one_hundredth():
    assert cosine_lr(0, 30, 5e-6) == pytest.approx(5e-6)
    assert cosine_lr(15, 30, 5e-6) == pytest.approx((5e-6 + 5e-8) / 2)
    assert cosine_lr(30, 30, 5e-6) == pytest.approx(5e-8)
    lrs = [cosine_lr(e, 10, 1.0) for e in range(10)]
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert math.isclose(lrs[-1], 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.9)))


def make_sets(lists: list[list[int]], num_columns: int) -> HardNegativeSets:
    sizes = torch.tensor([len(x) for x in lists])
    offsets = torch.zeros(len(lists) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(sizes, 0)
    flat = torch.tensor([c for x in lists for c in x], dtype=torch.int32)
    return HardNegativeSets(flat, offsets, torch.zeros(len(lists), dtype=torch.bool),
                            num_columns, "qure", {})


def test_without_replacement_visits_every_item_once_per_cycle():
    lists = [[1, 4, 7], [0], [2, 3, 5, 6, 8], [9, 1]]
    sets = make_sets(lists, 10)
    drawn = torch.stack([set_negatives(sets, seed=3, defined_at=5, epoch=5 + j)
                         for j in range(15)])  # [epochs, Q]
    for q, items in enumerate(lists):
        period = len(items)
        for cycle in range(15 // period):
            chunk = drawn[cycle * period:(cycle + 1) * period, q].tolist()
            assert sorted(chunk) == sorted(items), (q, cycle)
    # A pure function of (seed, defined_at, epoch): same call, same answer.
    assert torch.equal(set_negatives(sets, 3, 5, 9), drawn[4])


def test_without_replacement_depends_on_seed():
    sets = make_sets([list(range(50))] * 20, 50)
    a = set_negatives(sets, seed=0, defined_at=0, epoch=0)
    b = set_negatives(sets, seed=1, defined_at=0, epoch=0)
    assert not torch.equal(a, b)


def test_uniform_mode_and_empty_sets():
    sets = make_sets([[3, 4], [], [5]], 6)
    out = set_negatives(sets, 0, 0, 2, mode="uniform")
    assert out[1] == -1 and out[2] == 5 and out[0] in (3, 4)
    with pytest.raises(ValueError, match="sampling mode"):
        set_negatives(sets, 0, 0, 0, mode="greedy")
    with pytest.raises(ValueError, match="precedes"):
        set_negatives(sets, 0, 3, 2)


def tiny_data() -> TrainingData:
    # Two groups: columns 0..3 (group 0) and 4..9 (group 1).
    target = torch.tensor([0, 3, 4, 9, 6])
    group = torch.tensor([0, 0, 1, 1, 1])
    return TrainingData([f"q{i}" for i in range(5)], [f"r{i}" for i in range(5)],
                        ["t"] * 5, target, torch.full((5,), -1), group,
                        [f"c{i}" for i in range(10)], torch.tensor([0] * 4 + [1] * 6),
                        ["a", "b"], ["x"] * 5)


def test_warmup_negatives_stay_in_group_and_avoid_target():
    data = tiny_data()
    seen: dict[int, set[int]] = {q: set() for q in range(5)}
    for epoch in range(300):
        neg = warmup_negatives(data, seed=0, epoch=epoch)
        for q, column in enumerate(neg.tolist()):
            seen[q].add(column)
    assert seen[0] == {1, 2, 3} and seen[1] == {0, 1, 2}
    assert seen[2] == {5, 6, 7, 8, 9} and seen[3] == {4, 5, 6, 7, 8}
    assert seen[4] == {4, 5, 7, 8, 9}


def test_epoch_permutation_is_a_function_of_seed_and_epoch():
    assert torch.equal(epoch_permutation(100, 1, 2), epoch_permutation(100, 1, 2))
    assert not torch.equal(epoch_permutation(100, 1, 2), epoch_permutation(100, 1, 3))
    assert sorted(epoch_permutation(100, 1, 2).tolist()) == list(range(100))

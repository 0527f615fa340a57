"""Hard-negative mining: the two-drops rule against a per-query reference, the other
strategies on hand-computed cases, chunking, scoring, and input validation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from qure.mining import (
    STRATEGIES,
    HardNegativeSets,
    MiningError,
    hard_negative_sets,
    iter_max_token_scores,
    max_sim_scores,
    max_token_scores,
    mine_chunks,
    mine_from_embeddings,
    mine_grouped,
)
from qure.mining.base import _Workspace
from qure.mining.config import _MiningConfig
from qure.mining.two_drops import _two_drops_histogram
from tests.mining_reference import reference_hard_negative_sets, two_drops_reference

INF = float("inf")

# --- helpers ---------------------------------------------------------------------------------


def ranking(row: np.ndarray) -> list[int]:
    """Descending scores, ties by lower column: the ranking every strategy assumes."""
    return sorted(range(len(row)), key=lambda j: (-float(row[j]), j))


def assert_matches_reference(scores: torch.Tensor, targets: torch.Tensor,
                             exclude: torch.Tensor | None = None, **params) -> HardNegativeSets:
    sets = hard_negative_sets(scores, targets, "qure", exclude_index=exclude, **params)
    ref_params = {k: v for k, v in params.items()
                  if k in ("consecutive_threshold", "fallback", "fallback_k", "search_depth")}
    ref_sets, ref_flags = reference_hard_negative_sets(scores, targets, exclude_index=exclude,
                                                       **ref_params)
    assert len(sets) == len(ref_sets)
    for i, expected in enumerate(ref_sets):
        got = sets[i].numpy()
        assert np.array_equal(got, expected), (
            f"row {i}: got {got.tolist()[:12]} ({got.size}), "
            f"expected {expected.tolist()[:12]} ({expected.size})"
        )
    assert np.array_equal(sets.fallback.numpy(), ref_flags)
    return sets


def check_set_invariants(sets: HardNegativeSets, targets: torch.Tensor,
                         exclude: torch.Tensor | None = None) -> None:
    assert sets.sizes.dtype == torch.int64 and sets.sizes.shape == (len(sets),)
    for i in range(len(sets)):
        s = sets[i]
        assert s.dtype == torch.int64
        assert bool((s[1:] > s[:-1]).all()), "sets must be sorted and unique"
        assert int(targets[i]) not in s.tolist()
        if exclude is not None and int(exclude[i]) >= 0:
            assert int(exclude[i]) not in s.tolist()
        assert s.numel() == int(sets.sizes[i])


# Every knob setting must give the same sets: default, forced sorted path, tiny histogram.
KNOBS = [{}, {"n_buckets": 1}, {"n_buckets": 3, "n_candidates": 2}, {"n_buckets": 64}]


# --- the two-drops rule -----------------------------------------------------------------------


def test_toy_example_from_the_notes():
    # The notes' toy: target .95, then .90 .80 .79 .78 .60 .59 .58 .57 .30 .29. The two
    # largest drops after the target are .57->.30 and .78->.60, so the set is the plateau
    # {.60, .59, .58, .57}. Columns are shuffled so that ranking matters.
    values = [0.90, 0.95, 0.80, 0.79, 0.78, 0.60, 0.59, 0.58, 0.57, 0.30, 0.29]
    perm = [3, 0, 10, 7, 1, 9, 5, 2, 8, 4, 6]
    row = torch.empty(11)
    row[torch.tensor(perm)] = torch.tensor(values)
    target = perm[1]
    for knobs in KNOBS:
        sets = hard_negative_sets(row[None], torch.tensor([target]), "qure", **knobs)
        got = sorted(row[sets[0]].tolist())
        assert got == pytest.approx([0.57, 0.58, 0.59, 0.60])
        assert not bool(sets.fallback[0])
    ref = two_drops_reference(row.numpy(), target)
    assert ref is not None and sorted(row.numpy()[ref].tolist()) == pytest.approx(
        [0.57, 0.58, 0.59, 0.60])


def test_walk_pairs_consecutive_drops_never_first_with_third():
    # Tail drops by steepness: position 5 (-.5), position 6 (-.4), position 2 (-.3).
    # (1st, 2nd) = (5, 6) are adjacent, so the walk takes (2nd, 3rd) = (6, 2): the set is
    # tail positions 3..6. Pairing 1st with 3rd, (5, 2), would give positions 3..5.
    tail_drops = [-0.01, -0.02, -0.3, -0.03, -0.04, -0.5, -0.4, -0.05]
    tail = np.concatenate([[0.0], np.cumsum(tail_drops)]) + 5.0
    row = torch.tensor(np.concatenate([[10.0], tail]), dtype=torch.float64)
    sets = hard_negative_sets(row[None], torch.tensor([0]), "qure")
    # tail position p sits in column p + 1 (the target is column 0)
    assert sets[0].tolist() == [4, 5, 6, 7]
    assert_matches_reference(row[None], torch.tensor([0]))


def test_search_depth_keeps_the_drops_near_the_target():
    # Target first; a cluster boundary after 3 items, a second one after 7, then a long
    # continuum whose bottom spacings are the steepest drops of the whole tail.
    head = [10.0, 9.0, 8.9, 8.8, 8.0, 7.9, 7.8, 7.7, 7.6, 7.0]
    bottom = [6.95 - 0.01 * i for i in range(40)] + [2.0, 0.0]
    row = torch.tensor(head + bottom, dtype=torch.float64)[None]
    target = torch.tensor([0])
    whole = hard_negative_sets(row, target, "qure")
    # Released rule: the steepest drops are 6.56->2.0 and 2.0->0.0 (adjacent), so the
    # walk pairs 2.0->0.0 with 8.8->8.0: the set runs from 8.0 down to 2.0 (column 50).
    assert whole[0].tolist() == list(range(4, 51))
    near = hard_negative_sets(row, target, "qure", search_depth=9)
    # Within the first 10 items after the target the steepest drops are 8.8->8.0 (0.8)
    # and 7.6->7.0 (0.6): the set is the plateau 8.0 ... 7.6, columns 4..8.
    assert near[0].tolist() == [4, 5, 6, 7, 8]
    assert_matches_reference(row, target, search_depth=9)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 20, 1000])
@pytest.mark.parametrize("kind", ["gauss", "ties5", "neginf", "bimodal"])
def test_search_depth_equals_reference(kind, depth):
    g = torch.Generator().manual_seed(depth * 7 + len(kind))
    q, n = 24, int(torch.randint(2, 120, (1,), generator=g))
    if kind == "ties5":
        x = torch.randint(0, 5, (q, n), generator=g).float()
    elif kind == "bimodal":
        x = torch.randn(q, n, generator=g) + 8.0 * (torch.rand(q, n, generator=g) < 0.5)
    else:
        x = torch.randn(q, n, generator=g)
        if kind == "neginf":
            x[torch.rand(q, n, generator=g) < 0.2] = -INF
    targets = torch.randint(0, n, (q,), generator=g)
    targets[0], targets[1] = int(x[0].argmax()), int(x[1].argmin())
    exclude = torch.randint(-1, n, (q,), generator=g)
    for threshold in (0, 1, 3):
        sets = assert_matches_reference(x, targets, search_depth=depth,
                                        consecutive_threshold=threshold)
        check_set_invariants(sets, targets)
        sets = assert_matches_reference(x, targets, exclude, search_depth=depth,
                                        consecutive_threshold=threshold)
        check_set_invariants(sets, targets, exclude)
    # A depth covering the whole tail is the released rule.
    if depth >= n:
        unbounded = hard_negative_sets(x, targets, "qure")
        assert unbounded.to_lists() == hard_negative_sets(
            x, targets, "qure", search_depth=depth).to_lists()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["gauss32", "gauss64", "ties5", "ties40", "neginf",
                                  "skewed", "posinf", "signed_zero", "offset", "bimodal"])
def test_two_drops_equals_reference(kind, seed):
    g = torch.Generator().manual_seed(1000 * seed + len(kind))
    q = 24
    n = int(torch.randint(4, 400, (1,), generator=g))
    if kind == "gauss32":
        x = torch.randn(q, n, generator=g)
    elif kind == "gauss64":
        x = torch.randn(q, n, generator=g, dtype=torch.float64)
    elif kind == "ties5":
        x = torch.randint(0, 5, (q, n), generator=g).float()
    elif kind == "ties40":
        x = torch.randint(0, 40, (q, n), generator=g).float()
    elif kind == "neginf":
        x = torch.randn(q, n, generator=g)
        x[torch.rand(q, n, generator=g) < 0.2] = -INF
    elif kind == "posinf":
        x = torch.randn(q, n, generator=g)
        x[torch.rand(q, n, generator=g) < 0.05] = INF
    elif kind == "signed_zero":
        x = torch.randint(-2, 3, (q, n), generator=g).float() * 0.0
        x[:, ::3] = torch.randn(q, len(range(0, n, 3)), generator=g)
    elif kind == "offset":  # large offset: the bucket map loses most of its precision
        x = 1e4 + torch.randn(q, n, generator=g) * 1e-2
    elif kind == "bimodal":
        x = torch.randn(q, n, generator=g) + 8.0 * (torch.rand(q, n, generator=g) < 0.5)
    else:
        x = torch.randn(q, n, generator=g) ** 3
    targets = torch.randint(0, n, (q,), generator=g)
    targets[0] = int(x[0].argmax())
    targets[1] = int(x[1].argmin())
    exclude = torch.randint(-1, n, (q,), generator=g)
    for knobs in KNOBS:
        sets = assert_matches_reference(x, targets, **knobs)
        check_set_invariants(sets, targets)
        sets = assert_matches_reference(x, targets, exclude, **knobs)
        check_set_invariants(sets, targets, exclude)
    for threshold in (0, 2, 5):
        assert_matches_reference(x, targets, consecutive_threshold=threshold)


def test_two_drops_equals_reference_on_max_token_scores():
    # Scores shaped like QuRe's (max over 32 token products), gallery of a few thousand,
    # so both histogram levels and the sorted path all see work.
    g = torch.Generator().manual_seed(12)
    img = dyadic((2500, 32, 16), g)
    targets = torch.randint(0, 2500, (48,), generator=g)
    weight = torch.rand(48, 1, generator=g) * 0.5
    q = torch.round(64 * (weight * img[targets, 0] + (1 - weight) * dyadic((48, 16), g))) / 64
    scores = max_token_scores(q, img)
    sets = assert_matches_reference(scores, targets)
    assert (sets.sizes > 0).all()


def test_no_queries():
    sets = hard_negative_sets(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), "qure")
    assert len(sets) == 0 and sets.indices.numel() == 0 and sets.offsets.tolist() == [0]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_tiny_galleries(n):
    g = torch.Generator().manual_seed(n)
    rows = [torch.randn(n, generator=g), torch.zeros(n), torch.arange(n).float()]
    x = torch.stack(rows * n)
    targets = torch.arange(n).repeat_interleave(3)
    for knobs in KNOBS:
        sets = assert_matches_reference(x, targets, **knobs)
        check_set_invariants(sets, targets)
        if n <= 3:  # no pair of drops can exist: every query falls back
            assert bool(sets.fallback.all())


def test_target_first_and_last():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 300, generator=g)
    targets = torch.cat([x[:3].argmax(1), x[3:].argmin(1)])
    sets = assert_matches_reference(x, targets)
    # The lowest-scored target has nothing after it: fallback, and nothing to fall back on.
    assert sets.fallback[3:].all() and (sets.sizes[3:] == 0).all()
    assert not sets.fallback[:3].any()


def test_all_equal_rows_fall_back():
    x = torch.full((3, 50), 0.25)
    targets = torch.tensor([0, 25, 49])
    sets = assert_matches_reference(x, targets, fallback_k=4)
    assert sets.fallback.all()
    assert sets[0].tolist() == [1, 2, 3, 4]
    assert sets[1].tolist() == [26, 27, 28, 29]
    assert sets[2].tolist() == []


def test_adjacent_drop_chain_falls_back():
    # Drops grow steeper down the ranking, so the drop order is the reverse position
    # order and every consecutive pair in it is adjacent: no pair qualifies.
    drops = -np.arange(1, 40, dtype=np.float64)
    row = torch.tensor(np.concatenate([[1000.0], 500 + np.cumsum(drops)]))
    sets = assert_matches_reference(row[None], torch.tensor([0]))
    assert bool(sets.fallback[0])
    assert sets[0].tolist() == list(range(1, 11))  # default fallback_k = 10 after the target
    # With a threshold of 0 any two distinct positions qualify.
    sets = assert_matches_reference(row[None], torch.tensor([0]), consecutive_threshold=0)
    assert not bool(sets.fallback[0])


def test_fallback_modes_and_report(caplog):
    x = torch.tensor([[3.0, 2.0, 1.0, 0.0], [9.0, 1.0, 8.0, 7.0]])
    targets = torch.tensor([0, 3])  # row 0: 3 items after the target, row 1: 1 item
    with caplog.at_level(logging.INFO, logger="qure.mining"):
        sets = hard_negative_sets(x, targets, "qure", fallback_k=2)
    assert sets.fallback.tolist() == [True, True]
    assert sets.fallback_rows.tolist() == [0, 1]
    assert sets[0].tolist() == [1, 2] and sets[1].tolist() == [1]
    assert "fallback" in caplog.text
    sets = hard_negative_sets(x, targets, "qure", fallback_k=2, exclude_index=torch.tensor([1, -1]))
    assert sets[0].tolist() == [2, 3]
    empty = hard_negative_sets(x, targets, "qure", fallback="empty")
    assert empty.sizes.tolist() == [0, 0] and empty.empty_rows.tolist() == [0, 1]
    assert empty.fallback.tolist() == [True, True]
    with pytest.raises(MiningError, match="fallback='raise'"):
        hard_negative_sets(x, targets, "qure", fallback="raise")
    ok = torch.tensor([[0.9, 0.95, 0.8, 0.79, 0.78, 0.6, 0.59, 0.58, 0.57, 0.3, 0.29]])
    assert hard_negative_sets(ok, torch.tensor([1]), "qure", fallback="raise").sizes.tolist() == [4]


def test_exclude_is_removed_after_the_rule():
    row = torch.tensor([[0.90, 0.95, 0.80, 0.79, 0.78, 0.60, 0.59, 0.58, 0.57, 0.30, 0.29]])
    base = hard_negative_sets(row, torch.tensor([1]), "qure")[0].tolist()
    assert base == [5, 6, 7, 8]
    excluded = hard_negative_sets(row, torch.tensor([1]), "qure", exclude_index=torch.tensor([6]))
    assert excluded[0].tolist() == [5, 7, 8]


def test_histogram_path_handles_most_continuous_rows():
    # Performance guard: the sort-free path must not silently stop certifying rows.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(128, 3000, generator=g)
    targets = torch.randint(0, 3000, (128,), generator=g)
    cfg = _MiningConfig.build("qure", {})
    mask = torch.empty(128, 3000, dtype=torch.bool)
    coarse = _two_drops_histogram(x, x.amin(1), x.amax(1), targets, 3000 // 16, cfg,
                                  _Workspace(), mask)
    fine = _two_drops_histogram(x, x.amin(1), x.amax(1), targets, 3000 // 2, cfg,
                                _Workspace(), mask)
    assert coarse.float().mean() > 0.8 and fine.float().mean() > 0.95


def test_half_precision_is_upcast():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 200, generator=g).half()
    targets = torch.randint(0, 200, (20,), generator=g)
    a = hard_negative_sets(x, targets, "qure")
    b = hard_negative_sets(x.float(), targets, "qure")
    assert a.to_lists() == b.to_lists()


# --- other strategies -------------------------------------------------------------------------


def test_topk_and_after_target_hand_computed():
    x = torch.tensor([[0.5, 0.9, 0.9, 0.1, 0.7]])  # ranking: 1, 2, 4, 0, 3
    t = torch.tensor([2])
    assert hard_negative_sets(x, t, "topk", k=2)[0].tolist() == [1, 4]
    assert hard_negative_sets(x, t, "after_target_topk", k=2)[0].tolist() == [0, 4]
    e = torch.tensor([4])
    assert hard_negative_sets(x, t, "topk", k=2, exclude_index=e)[0].tolist() == [0, 1]
    assert hard_negative_sets(x, t, "after_target_topk", k=2, exclude_index=e)[0].tolist() == [0, 3]
    assert hard_negative_sets(x, t, "topk", k=10)[0].tolist() == [0, 1, 3, 4]
    assert hard_negative_sets(x, t, "after_target_topk", k=10)[0].tolist() == [0, 3, 4]
    assert hard_negative_sets(x, t, "all")[0].tolist() == [0, 1, 3, 4]
    assert hard_negative_sets(x, t, "all", exclude_index=e)[0].tolist() == [0, 1, 3]
    assert hard_negative_sets(x, t, "topk", k=0)[0].tolist() == []


@pytest.mark.parametrize("k", [0, 1, 5, 50])
def test_topk_strategies_match_plain_ranking(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randint(0, 8, (30, 40), generator=g).float()
    targets = torch.randint(0, 40, (30,), generator=g)
    exclude = torch.randint(-1, 40, (30,), generator=g)
    top = hard_negative_sets(x, targets, "topk", k=k, exclude_index=exclude)
    after = hard_negative_sets(x, targets, "after_target_topk", k=k, exclude_index=exclude)
    for i in range(30):
        order = ranking(x[i].numpy())
        skip = {int(targets[i]), int(exclude[i])}
        expected_top = [c for c in order if c not in skip][:k]
        tail = order[order.index(int(targets[i])) + 1 :]
        expected_after = [c for c in tail if c not in skip][:k]
        assert top[i].tolist() == sorted(expected_top)
        assert after[i].tolist() == sorted(expected_after)
        available = 40 - len(skip - {-1})
        assert int(top.sizes[i]) == min(k, available)
        assert int(after.sizes[i]) == min(k, len([c for c in tail if c not in skip]))


def test_trns_absolute_and_quantile_hand_computed():
    # Δ = s(target) - s(c): col1 .25, col2 .5, col3 1.0, col4 -.25 (target col0).
    x = torch.tensor([[1.0, 0.75, 0.5, 0.0, 1.25]])
    t = torch.tensor([0])
    absolute = hard_negative_sets(x, t, "trns", mode="absolute", low=0.25, high=0.5)
    assert absolute[0].tolist() == [1, 2]  # bounds are inclusive
    assert not absolute.fallback.any()
    # Candidate Δ sorted: -.25 .25 .5 1.0 -> q.25 = .125, q.75 = .625 (linear).
    assert hard_negative_sets(x, t, "trns", low=0.25, high=0.75)[0].tolist() == [1, 2]
    # q1/3 = .25 exactly, q.5 = .375
    assert hard_negative_sets(x, t, "trns", low=1 / 3, high=0.5)[0].tolist() == [1]
    # Excluding col2 removes it from the distribution: -.25 .25 1.0 -> q.25 = 0, q.75 = .625
    e = torch.tensor([2])
    assert hard_negative_sets(x, t, "trns", low=0.25, high=0.75,
                              exclude_index=e)[0].tolist() == [1]
    assert hard_negative_sets(x, t, "trns", low=0.0, high=1.0)[0].tolist() == [1, 2, 3, 4]
    # Empty zone: fallback to the columns ranked after the target (ranking 4, 0, 1, 2, 3).
    empty = hard_negative_sets(x, t, "trns", mode="absolute", low=0.3, high=0.4, fallback_k=2)
    assert empty.fallback.tolist() == [True] and empty[0].tolist() == [1, 2]
    none = hard_negative_sets(x, t, "trns", mode="absolute", low=0.3, high=0.4, fallback="empty")
    assert none[0].tolist() == [] and none.fallback.tolist() == [True]


def test_trns_matches_numpy_definition():
    g = torch.Generator().manual_seed(11)
    x = torch.randint(-20, 20, (25, 60), generator=g).double() / 8
    x[3, 7] = -INF
    targets = torch.randint(0, 60, (25,), generator=g)
    sets = hard_negative_sets(x, targets, "trns", low=0.1, high=0.3)
    for i in range(25):
        row, tgt = x[i].numpy(), int(targets[i])
        delta = np.where(row == row[tgt], 0.0, row[tgt] - row)
        cand = np.delete(np.arange(60), tgt)
        d = np.sort(delta[cand])
        lo, hi = (np.quantile(d, q) for q in (0.1, 0.3))
        expected = cand[(delta[cand] >= lo) & (delta[cand] <= hi)]
        assert sets[i].tolist() == expected.tolist()


@pytest.mark.parametrize("strategy,params", [
    ("qure", {}), ("all", {}), ("topk", {"k": 7}), ("after_target_topk", {"k": 7}),
    ("trns", {}), ("trns", {"mode": "absolute", "low": 0.5, "high": 1.5}),
])
def test_never_target_nor_exclude_and_chunking_is_invisible(strategy, params):
    g = torch.Generator().manual_seed(21)
    x = torch.randn(70, 90, generator=g)
    x[:10] = torch.randint(0, 3, (10, 90), generator=g).float()
    targets = torch.randint(0, 90, (70,), generator=g)
    exclude = torch.randint(-1, 90, (70,), generator=g)
    whole = hard_negative_sets(x, targets, strategy, exclude_index=exclude, **params)
    check_set_invariants(whole, targets, exclude)
    for chunk in (1, 7, 64):
        part = hard_negative_sets(x, targets, strategy, exclude_index=exclude,
                                  chunk_size=chunk, **params)
        assert torch.equal(part.indices, whole.indices)
        assert torch.equal(part.offsets, whole.offsets)
        assert torch.equal(part.fallback, whole.fallback)


# --- storage ----------------------------------------------------------------------------------


def test_csr_container_and_merge():
    x = torch.tensor([[0.5, 0.9, 0.9, 0.1, 0.7], [0.1, 0.2, 0.3, 0.4, 0.5]])
    sets = hard_negative_sets(x, torch.tensor([2, 0]), "topk", k=2)
    assert len(sets) == 2 and sets.indices.dtype == torch.int32
    assert sets.offsets.tolist() == [0, 2, 4]
    assert sets.to_lists() == [[1, 4], [3, 4]]
    assert [s.tolist() for s in sets] == [[1, 4], [3, 4]]
    assert sets[-1].tolist() == [3, 4]
    with pytest.raises(IndexError):
        sets[2]
    mapped = sets.map_columns(torch.tensor([10, 11, 20, 21, 30]), 40)
    assert mapped.to_lists() == [[11, 30], [21, 30]]
    other = hard_negative_sets(x[:1], torch.tensor([0]), "topk", k=1)
    merged = HardNegativeSets.merge([(torch.tensor([2, 0]), sets), (torch.tensor([1]), other)], 3)
    assert merged.to_lists() == [[3, 4], [1], [1, 4]]
    with pytest.raises(MiningError, match="exactly once"):
        HardNegativeSets.merge([(torch.tensor([0, 1]), sets)], 3)
    with pytest.raises(MiningError, match="increasing"):
        sets.map_columns(torch.tensor([1, 0, 2, 3, 4]), 5)


# --- scoring ----------------------------------------------------------------------------------


def dyadic(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Values k/64 with |k| <= 64: every dot product below is exact in float32."""
    return torch.randint(-64, 65, shape, generator=g).float() / 64


def test_max_token_scores_equals_naive_einsum():
    g = torch.Generator().manual_seed(2)
    q, img = dyadic((37, 16), g), dyadic((23, 5, 16), g)
    naive = torch.einsum("ik,jlk->ijl", q, img).amax(-1)
    for chunk, gchunk in ((None, None), (4, 3), (1, 23), (100, 100)):
        assert torch.equal(max_token_scores(q, img, chunk, gallery_chunk_size=gchunk), naive)
    blocks = list(iter_max_token_scores(q, img, 10, gallery_chunk_size=7))
    assert [b[0] for b in blocks] == [slice(0, 10), slice(10, 20), slice(20, 30), slice(30, 37)]
    assert torch.equal(torch.cat([b[1] for b in blocks]), naive)
    qr, ir = torch.randn(9, 8, generator=g), torch.randn(6, 4, 8, generator=g)
    torch.testing.assert_close(max_token_scores(qr, ir, 2, gallery_chunk_size=5),
                               torch.einsum("ik,jlk->ijl", qr, ir).amax(-1))


def test_models_and_miner_share_one_max_token_scorer():
    from qure.models import max_sim_scores as models_scorer
    from qure.models.interface import max_sim_scores as interface_scorer

    assert models_scorer is interface_scorer is max_sim_scores
    g = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.float64):
        # Random (not dyadic) values with ties: repeated images, a repeated token, and a
        # coarse grid. Equal block shapes of contiguous tokens mean equal matmuls, so the
        # models' path and the miner's path must agree bit for bit.
        q = (torch.randn(33, 24, generator=g, dtype=dtype) * 2).round() / 2
        img = torch.randn(41, 6, 24, generator=g, dtype=dtype)
        img[20:40] = img[:20].clone()
        img[:, 5] = img[:, 1]
        naive = torch.einsum("ik,jlk->ijl", q, img).amax(-1)
        for gchunk in (1, 7, 41, 100):
            models_path = max_sim_scores(q, img, chunk_size=gchunk)
            miner_path = max_token_scores(q, img, 33, gallery_chunk_size=gchunk)
            assert torch.equal(models_path, miner_path)
            torch.testing.assert_close(models_path, naive)
        assert torch.equal(max_sim_scores(q, img), max_sim_scores(q, img, 41))
        # Strided tokens (same values): close, though a 1-image block may reach the
        # matmul with other strides and so round differently.
        img_t = img.transpose(1, 2).contiguous().transpose(1, 2)
        for gchunk in (1, 7, 100):
            torch.testing.assert_close(max_sim_scores(q, img_t, chunk_size=gchunk), naive)
            torch.testing.assert_close(
                max_token_scores(q, img_t, 5, gallery_chunk_size=gchunk), naive)
    # Exact ties (dyadic values, repeated images): both paths equal the naive max exactly.
    q, img = dyadic((33, 16), g), dyadic((41, 5, 16), g)
    img[20:40] = img[:20].clone()
    naive = torch.einsum("ik,jlk->ijl", q, img).amax(-1)
    for gchunk in (1, 9, 100):
        assert torch.equal(max_sim_scores(q, img, chunk_size=gchunk), naive)
        assert torch.equal(max_token_scores(q, img, 4, gallery_chunk_size=gchunk), naive)
    assert torch.equal(naive[:, 20:40], naive[:, :20])
    # The models' path stays differentiable; writing into ``out`` matches it.
    q = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(9, 3, 8, generator=g, dtype=torch.float64)
    grad = torch.autograd.grad(max_sim_scores(q, x, 2).sum(), q)[0]
    naive = torch.autograd.grad(torch.einsum("ik,jlk->ijl", q, x).amax(-1).sum(), q)[0]
    torch.testing.assert_close(grad, naive)
    out = torch.empty(5, 9, dtype=torch.float64)
    with torch.no_grad():
        assert max_sim_scores(q, x, 2, out=out) is out
        assert torch.equal(out, max_sim_scores(q, x, 2))
    with pytest.raises(ValueError, match="expected queries"):
        max_sim_scores(torch.randn(3, 4), torch.randn(2, 3, 5))


def test_mining_from_embeddings_streams_the_same_sets():
    g = torch.Generator().manual_seed(4)
    q, img = dyadic((50, 16), g), dyadic((80, 4, 16), g)
    targets = torch.randint(0, 80, (50,), generator=g)
    exclude = torch.randint(-1, 80, (50,), generator=g)
    full = hard_negative_sets(max_token_scores(q, img), targets, "qure", exclude_index=exclude)
    streamed = mine_from_embeddings(q, img, targets, "qure", exclude_index=exclude,
                                    score_chunk_size=7, chunk_size=3)
    assert streamed.to_lists() == full.to_lists()
    assert torch.equal(streamed.fallback, full.fallback)


def test_grouped_mining_ranks_only_the_query_group():
    g = torch.Generator().manual_seed(6)
    q, img = dyadic((30, 16), g), dyadic((45, 4, 16), g)
    gallery_group = torch.randint(0, 3, (45,), generator=g)
    query_group = torch.randint(0, 3, (30,), generator=g)
    targets = torch.tensor([
        int((gallery_group == grp).nonzero()[i % int((gallery_group == grp).sum())])
        for i, grp in enumerate(query_group.tolist())
    ])
    exclude = torch.randint(-1, 45, (30,), generator=g)
    sets = mine_grouped(q, img, query_group, gallery_group, targets, "qure",
                        exclude_index=exclude, score_chunk_size=4)
    scores = max_token_scores(q, img)
    for i in range(30):
        cols = (gallery_group == query_group[i]).nonzero().flatten()
        local_t = int((cols == targets[i]).nonzero())
        ex = int(exclude[i])
        local_e = int((cols == ex).nonzero()) if ex >= 0 and bool((cols == ex).any()) else -1
        one = hard_negative_sets(scores[i : i + 1, cols], torch.tensor([local_t]), "qure",
                                 exclude_index=torch.tensor([local_e]))
        assert sets[i].tolist() == cols[one[0]].tolist()
        assert bool(sets.fallback[i]) == bool(one.fallback[0])
        assert set(sets[i].tolist()) <= set(cols.tolist())


# --- validation -------------------------------------------------------------------------------


def test_input_validation_names_the_argument():
    x = torch.randn(4, 6)
    t = torch.tensor([0, 1, 2, 3])
    with pytest.raises(MiningError, match="target_index: expected shape"):
        hard_negative_sets(x, t[:3], "qure")
    with pytest.raises(MiningError, match=r"target_index: values outside \[0, 6\)"):
        hard_negative_sets(x, torch.tensor([0, 1, 2, 6]), "qure")
    with pytest.raises(MiningError, match="target_index: values outside"):
        hard_negative_sets(x, torch.tensor([0, -1, 2, 3]), "qure")
    with pytest.raises(MiningError, match="target_index: expected an integer"):
        hard_negative_sets(x, t.float(), "qure")
    with pytest.raises(MiningError, match="exclude_index: values outside"):
        hard_negative_sets(x, t, "qure", exclude_index=torch.tensor([0, 1, 2, 9]))
    with pytest.raises(MiningError, match="strategy: unknown strategy 'nope'"):
        hard_negative_sets(x, t, "nope")
    bad = x.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(MiningError, match=r"scores: NaN in row\(s\) \[2\]"):
        hard_negative_sets(bad, t, "qure")
    with pytest.raises(MiningError, match="scores: expected a 2-D"):
        hard_negative_sets(x[0], t, "qure")
    with pytest.raises(MiningError, match="scores: expected a floating-point"):
        hard_negative_sets(x.long(), t, "qure")
    with pytest.raises(MiningError, match="k: strategy 'topk' needs k"):
        hard_negative_sets(x, t, "topk")
    with pytest.raises(MiningError, match="k: expected a non-negative int"):
        hard_negative_sets(x, t, "topk", k=-1)
    with pytest.raises(MiningError, match="fallback: unknown fallback"):
        hard_negative_sets(x, t, "qure", fallback="previous")
    with pytest.raises(MiningError, match="consecutive_threshold: expected"):
        hard_negative_sets(x, t, "qure", consecutive_threshold=1.5)
    with pytest.raises(MiningError, match="low, high: quantile bounds"):
        hard_negative_sets(x, t, "trns", low=0.5, high=1.5)
    with pytest.raises(MiningError, match=r"low, high: low \(0.5\) exceeds high"):
        hard_negative_sets(x, t, "trns", mode="absolute", low=0.5, high=0.1)
    for bad_depth in (0, -3, 2.5, True):
        with pytest.raises(MiningError, match="search_depth: expected a positive int"):
            hard_negative_sets(x, t, "qure", search_depth=bad_depth)
    with pytest.raises(MiningError, match="search_depth: not a parameter of strategy 'trns'"):
        hard_negative_sets(x, t, "trns", search_depth=5)
    with pytest.raises(MiningError, match="k: not a parameter of strategy 'qure'"):
        hard_negative_sets(x, t, "qure", k=3)
    with pytest.raises(MiningError, match="chunk_size: expected a positive int"):
        hard_negative_sets(x, t, "qure", chunk_size=0)
    with pytest.raises(MiningError, match="image_tokens: feature size 5"):
        max_token_scores(torch.randn(3, 4), torch.randn(2, 3, 5))
    with pytest.raises(MiningError, match="query_emb: expected a 2-D"):
        max_token_scores(torch.randn(3), torch.randn(2, 3, 5))
    blocks = [(slice(0, 2), x[:2]), (slice(3, 4), x[3:])]
    with pytest.raises(MiningError, match="not the next block"):
        mine_chunks(iter(blocks), t, "qure", num_rows=4, num_columns=6)
    with pytest.raises(MiningError, match="got 2 rows, expected 4"):
        mine_chunks(iter(blocks[:1]), t, "qure", num_rows=4, num_columns=6)
    assert isinstance(MiningError("x"), ValueError)
    assert set(STRATEGIES) == {"qure", "all", "topk", "after_target_topk", "trns"}

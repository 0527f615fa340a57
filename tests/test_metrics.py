"""Metrics: hand-computed cases, adversarial inputs, and a plain-Python cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qure.metrics import (
    circo_metrics,
    circo_per_query,
    cirr_metrics,
    fashioniq_metrics,
    hp_preference_rates,
    hp_set_scores,
    ranked_members,
    recall_at_k,
    stable_topk,
    subset_ranks,
    target_ranks,
)

# --- plain-Python references, written from the definitions ---------------------------------


def ref_ranking(row: list[float], exclude: int = -1) -> list[int]:
    """Stable descending order of a row's columns, ``exclude`` removed."""
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))
    return [j for j in order if j != exclude]


def ref_rank(row: list[float], target: int, exclude: int = -1) -> int:
    return ref_ranking(row, exclude).index(target)


def ref_subset_rank(row: list[float], target: int, members: list[int], exclude: int) -> int:
    subset = [j for j in ref_ranking(row, exclude) if j in set(members)]
    return subset.index(target)


def ref_ap(row: list[float], gt: list[int], k: int, depth: int = 50) -> float:
    """CIRCO AP@k over the top-``depth`` prediction list (definition in compute_metrics)."""
    pred = ref_ranking(row)[:depth]
    hits = 0
    total = 0.0
    for i, column in enumerate(pred[:k], start=1):
        if column in gt:
            hits += 1
            total += hits / i
    return total / min(k, len(gt))


def ref_preference(m1: list[float], m2: list[float], pref: list[int]) -> tuple[float, float]:
    conditioned = preferred = decided = agreed = 0
    for a, b, p in zip(m1, m2, pref, strict=True):
        if a > b:
            conditioned += 1
            decided += 1
            if p == 1:
                preferred += 1
                agreed += 1
        elif b > a:
            decided += 1
            if p == 2:
                agreed += 1
    return (preferred / conditioned if conditioned else 0.0,
            agreed / decided if decided else 0.0)


def tied_scores(seed: int, q: int, n: int, high: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (q, n), generator=gen).float()


# --- target_ranks ----------------------------------------------------------------------------


def test_target_ranks_hand_computed_with_ties():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5],
                           [0.9, 0.2, 0.2, 0.2]])
    # Row 0: target 3 ties column 1, which comes first; row 1: target 2 ties column 1.
    assert target_ranks(scores, [3, 2]).tolist() == [1, 2]
    assert target_ranks(scores, [1, 0]).tolist() == [0, 0]
    # Excluding the tied earlier column promotes the target; excluding a later one doesn't.
    assert target_ranks(scores, [3, 2], [1, 3]).tolist() == [0, 2]
    assert target_ranks(scores, [3, 2], [-1, 0]).tolist() == [1, 1]


def test_target_ranks_all_equal_row():
    scores = torch.zeros(1, 7)
    assert target_ranks(scores, [4]).tolist() == [4]
    assert target_ranks(scores, [4], [2]).tolist() == [3]
    assert target_ranks(scores, [4], [6]).tolist() == [4]


def test_target_ranks_single_image_gallery():
    assert target_ranks(torch.tensor([[0.3], [-1.0]]), [0, 0]).tolist() == [0, 0]


def test_target_ranks_accepts_numpy_and_integer_scores():
    scores = np.array([[3, 1, 3], [0, 2, 1]])
    assert target_ranks(scores, np.array([2, 2])).tolist() == [1, 1]


def test_target_ranks_is_chunk_invariant():
    scores = tied_scores(0, 37, 23)
    target = torch.randint(0, 23, (37,), generator=torch.Generator().manual_seed(1))
    exclude = (target + 1) % 23
    full = target_ranks(scores, target, exclude)
    for chunk in (1, 4, 36, 100):
        assert torch.equal(target_ranks(scores, target, exclude, chunk_size=chunk), full)


@pytest.mark.parametrize("bad, message", [
    (dict(scores=torch.tensor([[0.1, float("nan")]])), "scores contains NaN"),
    (dict(scores=torch.zeros(2)), "scores must be a 2-D"),
    (dict(scores=torch.zeros(1, 0), target_index=torch.zeros(1, dtype=torch.long)),
     "empty gallery"),
    (dict(target_index=torch.tensor([0, 1])), r"target_index must have shape \(1,\)"),
    (dict(target_index=torch.tensor([2])), "target_index"),
    (dict(target_index=torch.tensor([-1])), "target_index"),
    (dict(target_index=torch.tensor([0.0])), "target_index must hold integer"),
    (dict(exclude_index=torch.tensor([0, 1])), "exclude_index must have shape"),
    (dict(exclude_index=torch.tensor([1])), "target_index\\[0\\] == exclude_index\\[0\\]"),
])
def test_target_ranks_rejects_bad_input(bad, message):
    args = dict(scores=torch.tensor([[0.1, 0.2]]), target_index=torch.tensor([1]),
                exclude_index=None) | bad
    with pytest.raises(ValueError, match=message):
        target_ranks(args["scores"], args["target_index"], args["exclude_index"])


# --- stable_topk -----------------------------------------------------------------------------


def test_stable_topk_hand_computed():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5]])
    assert stable_topk(scores, 3).tolist() == [[1, 3, 2]]
    assert stable_topk(scores, 10).tolist() == [[1, 3, 2, 0]]  # K beyond the gallery
    assert stable_topk(scores, 2, [1]).tolist() == [[3, 2]]
    assert stable_topk(scores, 10, [1]).tolist() == [[3, 2, 0]]


def test_stable_topk_pads_rows_that_lose_a_column():
    scores = torch.ones(2, 3)
    assert stable_topk(scores, 5, [-1, 0]).tolist() == [[0, 1, 2], [1, 2, -1]]
    assert stable_topk(torch.ones(1, 1), 50).tolist() == [[0]]


@pytest.mark.parametrize("seed", range(4))
def test_stable_topk_agrees_with_reference_and_target_ranks(seed):
    gen = torch.Generator().manual_seed(seed)
    q, n = 25, 40
    scores = tied_scores(seed, q, n, high=3 + seed)
    scores[0] = 1.0  # a fully tied row
    scores[1, ::3] = float("inf")
    scores[2, ::2] = -float("inf")
    exclude = torch.randint(-1, n, (q,), generator=gen)
    for k in (1, 7, n - 1):
        top = stable_topk(scores, k, exclude, chunk_size=6)
        for row in range(q):
            expected = ref_ranking(scores[row].tolist(), int(exclude[row]))[:k]
            assert top[row].tolist() == expected
        # The submission order is the order target_ranks scores.
        ranks = target_ranks(scores.repeat_interleave(k, 0), top.flatten(),
                             exclude.repeat_interleave(k))
        assert ranks.view(q, k).tolist() == [list(range(k))] * q


# --- recall_at_k -----------------------------------------------------------------------------


def test_recall_at_k_hand_computed():
    ranks = torch.tensor([0, 4, 9, 10, 60])
    assert recall_at_k(ranks, (1, 5, 10, 50)) == {1: 20.0, 5: 40.0, 10: 60.0, 50: 80.0}
    assert recall_at_k([0], [1]) == {1: 100.0}


def test_recall_at_k_rejects_empty_and_bad_k():
    with pytest.raises(ValueError, match="ranks"):
        recall_at_k(torch.tensor([], dtype=torch.long), (1,))
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(torch.tensor([0]), (0,))


# --- FashionIQ -------------------------------------------------------------------------------


def test_fashioniq_metrics_hand_computed():
    # Dress: targets at ranks 0 and 2 (column 0 outranks column 1's tie); reference kept.
    dress = (torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.5, 0.5]]), torch.tensor([0, 2]))
    shirt = (torch.tensor([[0.3, 0.2, 0.1]]), torch.tensor([2]))
    out = fashioniq_metrics({"dress": dress, "shirt": shirt}, ks=(1, 3, 10, 50))
    assert out["dress_R@1"] == 50.0 and out["dress_R@3"] == 100.0
    assert out["shirt_R@1"] == 0.0 and out["shirt_R@3"] == 100.0
    assert out["average_R@1"] == 25.0  # unweighted over categories, not over queries
    assert out["average_R@10"] == out["average_R@50"] == 100.0
    assert out["average_recall"] == 100.0
    assert list(out)[:4] == ["dress_R@1", "dress_R@3", "dress_R@10", "dress_R@50"]


def test_fashioniq_target_outside_top_50():
    scores = torch.arange(60, 0, -1, dtype=torch.float32)[None]  # column j has rank j
    out = fashioniq_metrics({"toptee": (scores, [55])})
    assert out == {"toptee_R@10": 0.0, "toptee_R@50": 0.0, "average_R@10": 0.0,
                   "average_R@50": 0.0, "average_recall": 0.0}
    out = fashioniq_metrics({"toptee": (scores, [49])})
    assert out["toptee_R@50"] == 100.0 and out["average_recall"] == 50.0


def test_fashioniq_keeps_reference_and_omits_average_recall_without_10_and_50():
    out = fashioniq_metrics({"dress": (torch.tensor([[1.0, 0.5]]), [1])}, ks=(1,))
    assert out == {"dress_R@1": 0.0, "average_R@1": 0.0}


def test_fashioniq_names_the_category_on_error():
    with pytest.raises(ValueError, match=r"'shirt'.*NaN"):
        fashioniq_metrics({"shirt": (torch.tensor([[float("nan")]]), [0])})


# --- CIRR ------------------------------------------------------------------------------------


def test_cirr_reference_ranked_first_is_removed():
    # Columns: 0 = reference (best score), 1 = target, 2..6 others; members 0..5.
    scores = torch.tensor([[0.99, 0.9, 0.95, 0.1, 0.2, 0.3, 0.4, 0.5]])
    members = torch.tensor([[0, 1, 2, 3, 4, 5]])
    out = cirr_metrics(scores, [1], [0], members)
    # Full ranking without the reference: 2, 1, ... -> target rank 1.
    assert out["R@1"] == 0.0 and out["R@5"] == 100.0
    assert out["R_subset@1"] == 0.0 and out["R_subset@2"] == 100.0
    assert out["avg"] == 50.0
    # Without column 2 in the way the target is first in both rankings.
    scores[0, 2] = 0.0
    out = cirr_metrics(scores, [1], [0], members)
    assert out["R@1"] == 100.0 and out["R_subset@1"] == 100.0 and out["avg"] == 100.0
    assert target_ranks(scores, [1]).tolist() == [1]  # the reference would have beaten it


def test_cirr_subset_ignores_non_members_and_ties():
    # Non-members 6, 7 outrank everything; member 3 ties the target 4 and comes first.
    scores = torch.tensor([[0.0, 0.1, 0.2, 0.5, 0.5, 0.3, 0.9, 0.8]])
    members = torch.tensor([[5, 4, 3, 2, 1, 0]])
    assert subset_ranks(scores, [4], members, [3]).tolist() == [0]
    assert subset_ranks(scores, [4], members, [0]).tolist() == [1]
    out = cirr_metrics(scores, [4], [0], members, ks=(1, 5), subset_ks=(1, 2, 3))
    assert out == {"R@1": 0.0, "R@5": 100.0, "R_subset@1": 0.0, "R_subset@2": 100.0,
                   "R_subset@3": 100.0, "avg": 50.0}
    assert ranked_members(scores, members, [0]).tolist() == [[3, 4, 5, 2, 1, -1]]


def test_cirr_subset_handles_duplicate_and_padded_members():
    scores = torch.tensor([[0.5, 0.9, 0.1, 0.7]])
    members = torch.tensor([[1, 1, 0, -1, 3]])
    assert subset_ranks(scores, [0], members).tolist() == [2]
    assert ranked_members(scores, members).tolist() == [[1, 3, 0, -1, -1]]


def test_cirr_rejects_target_outside_members_and_target_as_reference():
    scores = torch.rand(1, 8)
    with pytest.raises(ValueError, match=r"target_index\[0\] = 7 is not among member_index"):
        cirr_metrics(scores, [7], [0], [[0, 1, 2, 3, 4, 5]])
    with pytest.raises(ValueError, match="exclude_index"):
        cirr_metrics(scores, [1], [1], [[0, 1, 2, 3, 4, 5]])
    with pytest.raises(ValueError, match="member_index must have shape"):
        subset_ranks(scores, [1], [0, 1, 2])
    with pytest.raises(ValueError, match="scores contains NaN"):
        cirr_metrics(torch.full((1, 8), float("nan")), [1], [0], [[0, 1, 2, 3, 4, 5]])


# --- CIRCO -----------------------------------------------------------------------------------


def test_circo_hand_computed():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                           [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                           [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    gt = torch.tensor([[1, 3, -1, -1],   # rel 0 1 0 1: P@2 = 1/2, P@4 = 2/4
                       [0, 1, 2, 3],     # four GTs, more than K = 2
                       [5, 0, 2, 4]])    # primary target last in the ranking
    aps, hits = circo_per_query(scores, gt, ks=(2, 5, 50))
    assert aps[2].tolist() == [0.5 / 2, 2 / 2, 1 / 2]
    assert aps[5].tolist() == [1.0 / 2, 4 / 4, pytest.approx((1 + 2 / 3 + 3 / 5) / 4)]
    # K = 50 > gallery of 6: list truncated, denominator still min(K, |GT|).
    assert aps[50].tolist() == [0.5, 1.0, pytest.approx((1 + 2 / 3 + 3 / 5 + 4 / 6) / 4)]
    assert hits[2].tolist() == [1.0, 1.0, 0.0] and hits[50].tolist() == [1.0, 1.0, 1.0]
    out = circo_metrics(scores, gt, ks=(2, 50))
    assert out["mAP@2"] == pytest.approx(100 * (0.25 + 1 + 0.5) / 3)
    assert out["R@2"] == pytest.approx(200 / 3) and out["R@50"] == 100.0
    assert set(out) == {"mAP@2", "mAP@50", "R@2", "R@50"}


def test_circo_keeps_reference_and_breaks_ties_stably():
    # All scores tie: ranking is 0, 1, 2, ...; nothing (no reference) is removed.
    aps, hits = circo_per_query(torch.zeros(1, 4), [[2, 0]], ks=(1, 3))
    assert aps[1].tolist() == [1.0] and aps[3].tolist() == [(1 + 2 / 3) / 2]
    assert hits[1].tolist() == [0.0] and hits[3].tolist() == [1.0]


def test_circo_single_image_gallery():
    out = circo_metrics(torch.tensor([[0.2]]), [[0]])
    assert out == {**{f"mAP@{k}": 100.0 for k in (5, 10, 25, 50)},
                   **{f"R@{k}": 100.0 for k in (5, 10, 25, 50)}}


def test_circo_target_outside_top_50():
    scores = torch.arange(80, 0, -1, dtype=torch.float32)[None]
    out = circo_metrics(scores, [[60, 2]])
    assert out["R@50"] == 0.0
    assert out["mAP@5"] == pytest.approx(100 * (1 / 3) / 2)


@pytest.mark.parametrize("gt, message", [
    ([[-1, 0]], "column 0 must be the target"),
    ([[1, 1]], "repeats a column"),
    ([[0, 9]], "ground_truth"),
    ([0, 1], "ground_truth must have shape"),
])
def test_circo_rejects_bad_ground_truth(gt, message):
    with pytest.raises(ValueError, match=message):
        circo_metrics(torch.rand(1, 4), gt)


def test_circo_rejects_nan():
    with pytest.raises(ValueError, match="scores contains NaN"):
        circo_metrics(torch.tensor([[0.1, float("nan")]]), [[0]])


# --- cross-checks against the plain-Python references ---------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_ranks_match_reference_on_tied_random_scores(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    q, n = 30, 20 + seed
    scores = tied_scores(seed, q, n)
    if seed % 2:
        scores = scores + torch.rand(q, n, generator=gen)  # continuous scores too
    perm = torch.stack([torch.randperm(n, generator=gen)[:6] for _ in range(q)])
    target, exclude = perm[:, 0], perm[:, 1]
    members = perm[:, torch.randperm(6, generator=gen)]
    got = target_ranks(scores, target, exclude, chunk_size=7).tolist()
    got_kept = target_ranks(scores, target).tolist()
    got_subset = subset_ranks(scores, target, members, exclude).tolist()
    ordered = ranked_members(scores, members, exclude).tolist()
    for row in range(q):
        values, t, e = scores[row].tolist(), int(target[row]), int(exclude[row])
        assert got[row] == ref_rank(values, t, e)
        assert got_kept[row] == ref_rank(values, t)
        assert got_subset[row] == ref_subset_rank(values, t, members[row].tolist(), e)
        expected = [j for j in ref_ranking(values, e) if j in set(members[row].tolist())]
        assert ordered[row] == [*expected, -1]
    cirr = cirr_metrics(scores, target, exclude, members)
    for k in (1, 5, 10, 50):
        assert cirr[f"R@{k}"] == pytest.approx(100 * np.mean([r < k for r in got]))


@pytest.mark.parametrize("seed", range(4))
def test_circo_matches_reference_on_tied_random_scores(seed):
    gen = torch.Generator().manual_seed(200 + seed)
    q, n, width = 20, 70, 8
    scores = tied_scores(seed, q, n, high=4)
    gt = torch.full((q, width), -1)
    for row in range(q):
        size = int(torch.randint(1, width + 1, (1,), generator=gen))
        gt[row, :size] = torch.randperm(n, generator=gen)[:size]
    ks = (1, 5, 10, 25, 50, 100)
    aps, hits = circo_per_query(scores, gt, ks, chunk_size=3)
    for row in range(q):
        values = scores[row].tolist()
        truth = [g for g in gt[row].tolist() if g >= 0]
        for k in ks:
            assert aps[k][row].item() == pytest.approx(ref_ap(values, truth, k, depth=100))
            assert hits[k][row].item() == float(truth[0] in ref_ranking(values)[:k])
    summary = circo_metrics(scores, gt, ks)
    for k in ks:
        assert summary[f"mAP@{k}"] == pytest.approx(100 * aps[k].mean().item())


# --- HP-FashionIQ ----------------------------------------------------------------------------


def test_hp_preference_hand_computed():
    m1 = [0.9, 0.8, 0.5, 0.1, 0.2, 0.4]
    m2 = [0.1, 0.7, 0.5, 0.3, 0.9, 0.4]
    pref = [1, 2, 1, 2, 1, 2]
    out = hp_preference_rates(m1, m2, pref)
    # m1 > m2 in rows 0, 1 (prefs 1, 2); ties in rows 2, 5; m2 > m1 in rows 3, 4 (2, 1).
    assert out == {
        "released_preference_ratio": 0.5, "released_conditioned": 2, "released_preferred": 1,
        "symmetric_preference_ratio": 0.5, "symmetric_decided": 4, "symmetric_agreed": 2,
        "n_comparisons": 6, "n_ties": 2,
    }


def test_hp_released_ignores_second_set_wins_but_symmetric_counts_them():
    out = hp_preference_rates([0.9, 0.1, 0.1], [0.1, 0.9, 0.9], [1, 2, 2])
    assert out["released_preference_ratio"] == 1.0 and out["released_conditioned"] == 1
    assert out["symmetric_agreed"] == 3 and out["symmetric_preference_ratio"] == 1.0
    out = hp_preference_rates([0.9, 0.1, 0.1], [0.1, 0.9, 0.9], [2, 1, 1])
    assert out["released_preference_ratio"] == 0.0 and out["symmetric_preference_ratio"] == 0.0


def test_hp_conditioned_zero_gives_zero():
    out = hp_preference_rates([0.1, 0.5], [0.2, 0.5], [1, 1])
    assert out["released_conditioned"] == 0 and out["released_preference_ratio"] == 0.0
    assert out["symmetric_decided"] == 1 and out["symmetric_preference_ratio"] == 0.0
    out = hp_preference_rates([0.5], [0.5], [2])
    assert out["symmetric_decided"] == 0 and out["symmetric_preference_ratio"] == 0.0


def test_hp_set_score_is_mean_of_image_scores():
    set1 = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    set2 = torch.tensor([[3.0, 3.0, 3.0, 3.0, 3.0], [0.1, 0.1, 0.0, 0.0, 0.0]])
    assert torch.equal(hp_set_scores(set1), torch.tensor([3.0, 0.2]))  # float32 kept
    # Means 3 == 3 (tie, dropped) and 0.2 > 0.04 (conditioned, preferred 1).
    out = hp_preference_rates(set1, set2, [2, 1])
    assert out["n_ties"] == 1 and out["released_conditioned"] == 1
    assert out["released_preference_ratio"] == 1.0
    assert hp_set_scores(torch.tensor([[1, 2]])).dtype == torch.float64


def test_hp_matches_reference_on_random_ties():
    gen = torch.Generator().manual_seed(7)
    m1 = torch.randint(0, 4, (500,), generator=gen).float()
    m2 = torch.randint(0, 4, (500,), generator=gen).float()
    pref = torch.randint(1, 3, (500,), generator=gen)
    out = hp_preference_rates(m1, m2, pref)
    released, symmetric = ref_preference(m1.tolist(), m2.tolist(), pref.tolist())
    assert out["released_preference_ratio"] == released
    assert out["symmetric_preference_ratio"] == symmetric
    assert out["n_ties"] == int((m1 == m2).sum())


@pytest.mark.parametrize("args, message", [
    (([0.1, math.nan], [0.2, 0.3], [1, 2]), "set1_scores contains NaN"),
    (([0.1], [[0.2, math.nan]], [1]), "set2_scores contains NaN"),
    (([0.1], [0.2], [3]), r"preferred\[0\] = 3"),
    (([0.1], [0.2], [1.0]), "preferred must hold the integers"),
    (([0.1, 0.2], [0.2], [1, 1]), "disagree in length"),
    (([[[0.1]]], [0.2], [1]), "set1_scores must be"),
])
def test_hp_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        hp_preference_rates(*args)

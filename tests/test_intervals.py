"""qure.intervals: per-query records reproduce qure.metrics exactly, and the percentile
bootstrap (plain and paired) is deterministic, calibrated and fast."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from qure import metrics
from qure.intervals import (
    bootstrap_intervals,
    metrics_from_records,
    paired_difference_intervals,
    per_query_records,
)


def _scores(gen: torch.Generator, q: int, n: int) -> torch.Tensor:
    """Scores with many exact ties: a few integer levels, plus a few real-valued rows."""
    scores = torch.randint(0, 4, (q, n), generator=gen).double()
    scores[: q // 4] = torch.rand(q // 4, n, generator=gen, dtype=torch.float64)
    return scores


def _fashioniq(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    per_category = {}
    for category, (q, n) in {"dress": (70, 120), "shirt": (55, 90), "toptee": (64, 75)}.items():
        per_category[category] = (_scores(gen, q, n), torch.randint(0, n, (q,), generator=gen))
    return per_category


def _cirr(seed: int = 0, q: int = 80, n: int = 40):
    gen = torch.Generator().manual_seed(seed)
    scores = _scores(gen, q, n)
    members = torch.stack([torch.randperm(n, generator=gen)[:6] for _ in range(q)])
    target, reference = members[:, 1].clone(), members[:, 0].clone()
    reference[::7] = -1  # a reference missing from the gallery
    return scores, target, reference, members


def _circo(seed: int = 0, q: int = 60, n: int = 45):
    gen = torch.Generator().manual_seed(seed)
    scores = _scores(gen, q, n)
    gt = torch.stack([torch.randperm(n, generator=gen)[:5] for _ in range(q)])
    n_gt = torch.randint(1, 6, (q,), generator=gen)
    gt[torch.arange(5)[None, :] >= n_gt[:, None]] = -1
    return scores, gt


def _hp(seed: int = 0, c: int = 300):
    gen = torch.Generator().manual_seed(seed)
    set1 = torch.randint(0, 3, (c, 5), generator=gen).float()
    set2 = torch.randint(0, 3, (c, 5), generator=gen).float()
    set1[: c // 3] = torch.rand(c // 3, 5, generator=gen)
    return set1, set2, torch.randint(1, 3, (c,), generator=gen)


def _hp_reported(set1, set2, preferred):
    """hp_preference_rates plus the percentages qure.stages.evaluate.evaluate_hp adds."""
    rates = metrics.hp_preference_rates(set1, set2, preferred)
    rates["preference_rate"] = 100.0 * float(rates["released_preference_ratio"])
    rates["symmetric_preference_rate"] = 100.0 * float(rates["symmetric_preference_ratio"])
    return rates


def _cases(seed: int = 0):
    """(dataset, records, the metric dict qure.metrics reports) for each dataset."""
    fiq, cirr, circo, hp = _fashioniq(seed), _cirr(seed), _circo(seed), _hp(seed)
    small_circo = _circo(seed, q=30, n=20)  # gallery smaller than max(CIRCO_KS)
    return [
        ("fashioniq", per_query_records("fashioniq", fiq), metrics.fashioniq_metrics(fiq)),
        ("cirr", per_query_records("cirr", *cirr), metrics.cirr_metrics(*cirr)),
        ("circo", per_query_records("circo", *circo), metrics.circo_metrics(*circo)),
        ("circo", per_query_records("circo", *small_circo), metrics.circo_metrics(*small_circo)),
        ("hp_fashioniq", per_query_records("hp_fashioniq", *hp), _hp_reported(*hp)),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_estimates_equal_qure_metrics_exactly(seed):
    for dataset, records, expected in _cases(seed):
        got = metrics_from_records(dataset, records)
        assert list(got.items()) == list(expected.items()), dataset  # same keys, order, bits
        # a JSON round trip (how records are saved) changes nothing
        assert metrics_from_records(dataset, json.loads(json.dumps(records))) == expected


def test_a_resample_index_equals_qure_metrics_on_the_resampled_queries():
    rng = np.random.default_rng(3)
    fiq = _fashioniq()
    index = {c: rng.integers(0, len(t), len(t)) for c, (_, t) in fiq.items()}
    resampled = {c: (s[index[c]], t[index[c]]) for c, (s, t) in fiq.items()}
    got = metrics_from_records("fashioniq", per_query_records("fashioniq", fiq), index)
    assert got == metrics.fashioniq_metrics(resampled)
    scores, target, reference, members = _cirr()
    i = rng.integers(0, len(target), len(target))
    got = metrics_from_records("cirr", per_query_records("cirr", scores, target, reference,
                                                         members), i)
    assert got == metrics.cirr_metrics(scores[i], target[i], reference[i], members[i])
    scores, gt = _circo()
    k = rng.integers(0, len(gt), len(gt))
    got = metrics_from_records("circo", per_query_records("circo", scores, gt), k)
    assert got == pytest.approx(metrics.circo_metrics(scores[k], gt[k]), rel=1e-12)
    set1, set2, preferred = _hp()
    j = rng.integers(0, len(preferred), 500)  # a resample may have any size
    got = metrics_from_records("hp_fashioniq", per_query_records("hp_fashioniq", set1, set2,
                                                                 preferred), j)
    assert got == _hp_reported(set1[j], set2[j], preferred[j])
    with pytest.raises(ValueError, match="map each category"):
        metrics_from_records("fashioniq", per_query_records("fashioniq", fiq), i)
    with pytest.raises(ValueError, match="must lie in"):
        metrics_from_records("cirr", per_query_records("cirr", *_cirr()), [0, 80])


def test_intervals_are_deterministic_for_a_seed_and_change_with_it():
    for dataset, records, expected in _cases():
        first = bootstrap_intervals(dataset, records, n_resamples=200, seed=5)
        assert bootstrap_intervals(dataset, records, n_resamples=200, seed=5) == first
        other = bootstrap_intervals(dataset, records, n_resamples=200, seed=6)
        assert list(first) == list(expected)
        assert {k: v.point for k, v in first.items()} == expected
        assert any((a.low, a.high) != (b.low, b.high)
                   for a, b in zip(first.values(), other.values(), strict=True)), dataset
        for key, (point, low, high) in first.items():
            assert low <= high, (dataset, key)
            if key.endswith("_R@10"):  # a recall's interval brackets its estimate here
                assert low <= point <= high


def _recall_records(hits: np.ndarray) -> dict:
    """One-category FashionIQ records whose R@10 and R@50 are the hit rate."""
    return {"dataset": "fashioniq", "ks": [10, 50], "query_ids": None,
            "ranks": {"dress": np.where(hits, 0, 60).tolist()}}


def test_coverage_of_a_bernoulli_recall_is_about_95_percent():
    p, n, reps = 0.3, 2000, 200
    rng = np.random.default_rng(11)
    covered = 0
    for rep in range(reps):
        records = _recall_records(rng.random(n) < p)
        interval = bootstrap_intervals("fashioniq", records, n_resamples=500,
                                       seed=rep)["dress_R@10"]
        covered += interval.low <= 100 * p <= interval.high
    assert 0.91 <= covered / reps <= 0.99, covered


@pytest.mark.parametrize("n", [1000, 4000])
def test_width_of_a_recall_near_half_matches_the_normal_approximation(n):
    hits = np.random.default_rng(n).random(n) < 0.5
    p = hits.mean()
    _, low, high = bootstrap_intervals("fashioniq", _recall_records(hits),
                                       n_resamples=2000, seed=1)["dress_R@50"]
    expected = 2 * 1.96 * math.sqrt(p * (1 - p) / n) * 100
    assert abs((high - low) / expected - 1) < 0.15, (high - low, expected)


def test_paired_differences_of_identical_records_are_exactly_zero():
    for dataset, records, _ in _cases():
        copy = json.loads(json.dumps(records))
        diff = paired_difference_intervals(dataset, records, copy, n_resamples=300, seed=2)
        assert diff and all(v == (0.0, 0.0, 0.0) for v in diff.values()), dataset


def test_paired_interval_of_a_real_improvement_excludes_zero_and_is_narrower():
    rng = np.random.default_rng(4)
    hits_b = rng.random(2000) < 0.4
    hits_a = hits_b | (rng.random(2000) < 0.05)  # a fixes ~3 % of the queries, breaks none
    a, b = _recall_records(hits_a), _recall_records(hits_b)
    diff = paired_difference_intervals("fashioniq", a, b, n_resamples=1000, seed=0)["dress_R@10"]
    one_a = bootstrap_intervals("fashioniq", a, n_resamples=1000)["dress_R@10"]
    one_b = bootstrap_intervals("fashioniq", b, n_resamples=1000)["dress_R@10"]
    assert diff.point == pytest.approx(one_a.point - one_b.point)
    assert 0 < diff.low < diff.point < diff.high
    unpaired = math.hypot(one_a.high - one_a.low, one_b.high - one_b.low)
    assert diff.high - diff.low < 0.5 * unpaired


def test_mismatched_query_sets_raise_and_name_the_mismatch():
    scores, target, reference, members = _cirr()
    ids = [f"q{i}" for i in range(len(target))]
    a = per_query_records("cirr", scores, target, reference, members, query_ids=ids)
    shorter = per_query_records("cirr", scores[:-1], target[:-1], reference[:-1], members[:-1])
    with pytest.raises(ValueError, match="query count"):
        paired_difference_intervals("cirr", a, shorter)
    renamed = per_query_records("cirr", scores, target, reference, members,
                                query_ids=[*ids[:5], "other", *ids[6:]])
    with pytest.raises(ValueError, match=r"query ids .* position 5: 'q5' vs 'other'"):
        paired_difference_intervals("cirr", a, renamed)
    with pytest.raises(ValueError, match="subset_ks"):
        paired_difference_intervals("cirr", a, per_query_records(
            "cirr", scores, target, reference, members, subset_ks=(1, 2)))
    fiq = _fashioniq()
    two = {c: fiq[c] for c in ("dress", "shirt")}
    with pytest.raises(ValueError, match="categories"):
        paired_difference_intervals("fashioniq", per_query_records("fashioniq", fiq),
                                    per_query_records("fashioniq", two))
    with pytest.raises(ValueError, match="dataset"):
        paired_difference_intervals("cirr", a, per_query_records("circo", *_circo()))
    with pytest.raises(ValueError, match="3 query ids for 80 queries"):
        per_query_records("cirr", scores, target, reference, members, query_ids=ids[:3])
    with pytest.raises(ValueError, match="unknown dataset"):
        per_query_records("cifar", scores)


def test_1000_resamples_of_6000_fashioniq_queries_take_under_3_seconds():
    rng = np.random.default_rng(0)
    records = {"dataset": "fashioniq", "ks": [10, 50], "query_ids": None,
               "ranks": {c: rng.integers(0, 200, 2000).tolist()
                         for c in ("dress", "shirt", "toptee")}}
    started = time.perf_counter()
    out = bootstrap_intervals("fashioniq", records, n_resamples=1000)
    elapsed = time.perf_counter() - started
    assert len(out) == 9
    assert elapsed < 3.0, elapsed

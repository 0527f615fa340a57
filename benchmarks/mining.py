"""Benchmark the hard-negative miner at FashionIQ-train and CIRR-train scale.

Usage (from the repository root): ``python -m benchmarks.mining [--quick]``

Inputs are synthetic but exactly reproducible: query embeddings and 32-token image
features are seeded draws on the grid k/128 (|k| <= 128), so every product is a
multiple of 2^-14 and every 256-term score a float32-exact number whatever the BLAS
blocking or chunking. Each query is a noisy copy of one token of its target image, with
a per-query mixing weight, so target ranks spread from first to deep in the gallery.

Timed, per dataset:

* scoring: :func:`qure.mining.iter_max_token_scores` (max over tokens, chunked);
* (a) our vectorised miner (``strategy="qure"``) on every query;
* (b) the plain per-query NumPy reference (``reference_hard_negative_sets`` of
  ``tests/mining_reference.py``) on a subsample, checked equal to (a) on that subsample;
* (c) a released-style per-query loop (our re-implementation from the description of the
  released ``rerank_score``: per query a torch sort, a list of names, ``list.index`` for
  the target, ``tolist()``, NumPy diff/argsort, a ``set`` of names) on a subsample.

FashionIQ (three category galleries; each query ranks its own category) and CIRR (one
gallery, scored and mined block by block without a [Q, N] matrix) run in separate child
processes so that each one's peak RSS is its own. Human-readable lines go first; the
last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from qure.mining import (
    HardNegativeSets,
    hard_negative_sets,
    iter_max_token_scores,
    max_token_scores,
    mine_chunks,
)

# The per-query oracle lives with the tests: run from the repository root as a module,
# ``python -m benchmarks.mining`` (``tests`` is a package there).
from tests.mining_reference import reference_hard_negative_sets

FIQ_GALLERIES = {"dress": 5985, "shirt": 5988, "toptee": 6027}
# The released rerank_score itself, run unchanged on a machine like this one (two runs
# each; ../shared/research/performance.md). Quoted for context, not re-measured here.
RELEASED_CODE_QPS = {"fiq": (178, 192), "cirr": (98, 114)}
CIRR_QUERIES, CIRR_IMAGES = 28225, 16939
TOKENS, DIM = 32, 256
GRID = 128
SEED = 20250713


# --- synthetic inputs --------------------------------------------------------------------


def synthetic_embeddings(n_queries: int, n_images: int, seed: int,
                         targets: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dyadic query embeddings [Q, D], image tokens [N, T, D] and target columns [Q]."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.empty(n_images, TOKENS, DIM)
    for start in range(0, n_images, 1024):
        stop = min(n_images, start + 1024)
        tokens[start:stop] = torch.randint(-GRID, GRID + 1, (stop - start, TOKENS, DIM),
                                           generator=g, dtype=torch.float32)
    tokens /= GRID
    if targets is None:
        targets = torch.randint(0, n_images, (n_queries,), generator=g)
    token = torch.randint(0, TOKENS, (n_queries,), generator=g)
    weight = torch.rand(n_queries, 1, generator=g) * 0.3
    noise = torch.rand(n_queries, DIM, generator=g) * 2 - 1
    queries = torch.round(GRID * (weight * tokens[targets, token] + (1 - weight) * noise))
    queries = queries.clamp_(-GRID, GRID) / GRID
    return queries, tokens, targets


# --- the released-style loop -------------------------------------------------------------


def released_style(scores: torch.Tensor, targets: list[int], names: list[str],
                   consecutive_threshold: int = 1) -> list[list[str]]:
    """Per-query loop in the manner of the released ``rerank_score`` (see module notes)."""
    target_names = [names[t] for t in targets]
    start = end = 0
    hard_sets: list[list[str]] = []
    for i in range(scores.shape[0]):
        sorted_scores, sorted_idx = torch.sort(scores[i], descending=True)
        sorted_names = [names[j] for j in sorted_idx.tolist()]
        t = sorted_names.index(target_names[i])
        drops = np.diff(np.array(sorted_scores.tolist()[t + 1 :]))
        order = np.argsort(drops)
        idx = 0
        while idx < len(order) - 1:  # no qualifying pair: bounds of the previous query
            a, b = sorted(order[idx : idx + 2].tolist())
            if b - a > consecutive_threshold:
                start, end = a + t + 1, b + t + 1
                break
            idx += 1
        hard = list(set(sorted_names[start + 1 : end + 1]))
        if target_names[i] in hard:
            hard.remove(target_names[i])
        hard_sets.append(hard)
    return hard_sets


# --- helpers -----------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def subsample(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[: min(n, k)].sort().values


def compare_with_reference(ours: HardNegativeSets, rows: torch.Tensor, scores: torch.Tensor,
                           targets: torch.Tensor) -> tuple[float, bool]:
    """Time the reference on ``scores`` (rows ``rows`` of the run) and compare sets."""
    t0 = time.perf_counter()
    ref_sets, ref_flags = reference_hard_negative_sets(scores, targets)
    elapsed = time.perf_counter() - t0
    equal = all(np.array_equal(ours[int(r)].numpy(), ref) for r, ref in zip(rows, ref_sets,
                                                                            strict=True))
    equal &= bool(np.array_equal(ours.fallback[rows].numpy(), ref_flags))
    return elapsed, equal


def released_agreement(ours: HardNegativeSets, rows: torch.Tensor, names: list[str],
                       sets: list[list[str]]) -> float:
    agree = sum(sorted(names[c] for c in ours[int(r)].tolist()) == sorted(s)
                for r, s in zip(rows, sets, strict=True))
    return agree / max(1, len(sets))


# --- FashionIQ -----------------------------------------------------------------------------


def run_fiq(quick: bool) -> dict[str, Any]:
    scale = 10 if quick else 1
    sub_ref, sub_rel = (150, 60) if quick else (600, 300)
    score_s = mine_s = ref_s = rel_s = 0.0
    n_queries = n_ref = n_rel = 0
    equal = True
    agreement: list[float] = []
    sizes: list[torch.Tensor] = []
    fallbacks = 0
    for c, (category, full_n) in enumerate(FIQ_GALLERIES.items()):
        n = full_n // scale
        # FashionIQ training targets are unique per category: one query per gallery image.
        g = torch.Generator().manual_seed(SEED + c)
        targets = torch.randperm(n, generator=g)
        queries, tokens, targets = synthetic_embeddings(n, n, SEED + 10 + c, targets)
        t0 = time.perf_counter()
        scores = max_token_scores(queries, tokens)
        score_s += time.perf_counter() - t0
        del tokens

        t0 = time.perf_counter()
        sets = hard_negative_sets(scores, targets, "qure")
        mine_s += time.perf_counter() - t0
        n_queries += n
        sizes.append(sets.sizes)
        fallbacks += int(sets.fallback.sum())

        rows = subsample(n, sub_ref, SEED + 20 + c)
        elapsed, ok = compare_with_reference(sets, rows, scores[rows], targets[rows])
        ref_s += elapsed
        n_ref += rows.numel()
        equal &= ok

        rows = subsample(n, sub_rel, SEED + 30 + c)
        names = [f"B{category[:2].upper()}{i:08d}" for i in range(n)]
        t0 = time.perf_counter()
        rel = released_style(scores[rows], targets[rows].tolist(), names)
        rel_s += time.perf_counter() - t0
        n_rel += rows.numel()
        agreement.append(released_agreement(sets, rows, names, rel))
        print(f"  fiq/{category}: {n} queries x {n} images, mined {sets.sizes.sum():,} "
              f"negatives, {int(sets.fallback.sum())} fallbacks", flush=True)
        if c == 0:
            others = {} if quick else time_other_strategies(scores, targets)
        del scores

    all_sizes = torch.cat(sizes).double()
    result = {
        "queries": n_queries,
        "galleries": [n // scale for n in FIQ_GALLERIES.values()],
        "scoring_s": score_s,
        "miner_s": mine_s,
        "miner_qps": n_queries / mine_s,
        "reference_subsample": n_ref,
        "reference_qps": n_ref / ref_s,
        "released_style_subsample": n_rel,
        "released_style_qps": n_rel / rel_s,
        "equal_to_reference": equal,
        "released_style_agreement": float(np.mean(agreement)),
        "fallback_queries": fallbacks,
        "set_size_mean": all_sizes.mean().item(),
        "set_size_median": all_sizes.median().item(),
        "other_strategies_qps_first_category": others,
        "peak_rss_mb": peak_rss_mb(),
    }
    add_speedups(result, "fiq", quick)
    return result


def time_other_strategies(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Queries/s of the sort-based strategies on one category (informative only)."""
    out = {}
    for name, params in (("topk", {"k": 100}), ("after_target_topk", {"k": 100}),
                         ("trns", {}), ("all", {})):
        t0 = time.perf_counter()
        hard_negative_sets(scores, targets, name, **params)
        out[name] = scores.shape[0] / (time.perf_counter() - t0)
    return out


def add_speedups(result: dict[str, Any], dataset: str, quick: bool) -> None:
    result["speedup_vs_reference"] = result["miner_qps"] / result["reference_qps"]
    result["speedup_vs_released_style"] = result["miner_qps"] / result["released_style_qps"]
    if quick:  # the quoted figures are for the full scale only
        result["released_code_qps_quoted"] = None
        result["speedup_vs_released_code_quoted"] = None
        return
    low, high = RELEASED_CODE_QPS[dataset]
    result["released_code_qps_quoted"] = [low, high]
    result["speedup_vs_released_code_quoted"] = [result["miner_qps"] / high,
                                                 result["miner_qps"] / low]


# --- CIRR --------------------------------------------------------------------------------


def run_cirr(quick: bool) -> dict[str, Any]:
    scale = 10 if quick else 1
    n_queries, n_images = CIRR_QUERIES // scale, CIRR_IMAGES // scale
    sub_ref, sub_rel = (150, 60) if quick else (1000, 300)
    queries, tokens, targets = synthetic_embeddings(n_queries, n_images, SEED + 100)
    rss_inputs = peak_rss_mb()
    score_s = 0.0
    largest_block = 0

    def timed_blocks():
        nonlocal score_s, largest_block
        blocks = iter_max_token_scores(queries, tokens)
        while True:
            t0 = time.perf_counter()
            item = next(blocks, None)
            score_s += time.perf_counter() - t0
            if item is None:
                return
            largest_block = max(largest_block, item[1].numel() * item[1].element_size())
            yield item

    t0 = time.perf_counter()
    sets = mine_chunks(timed_blocks(), targets, "qure", num_rows=n_queries,
                       num_columns=n_images)
    total_s = time.perf_counter() - t0
    mine_s = total_s - score_s
    rss_after = peak_rss_mb()

    rows = subsample(n_queries, sub_ref, SEED + 120)
    scores = max_token_scores(queries[rows], tokens)
    ref_s, equal = compare_with_reference(sets, rows, scores, targets[rows])
    rows_rel = subsample(n_queries, sub_rel, SEED + 130)
    names = [f"train-{i}-img0" for i in range(n_images)]
    rel_scores = max_token_scores(queries[rows_rel], tokens)
    t0 = time.perf_counter()
    rel = released_style(rel_scores, targets[rows_rel].tolist(), names)
    rel_s = time.perf_counter() - t0
    sizes = sets.sizes.double()
    print(f"  cirr: {n_queries} queries x {n_images} images, mined {sets.sizes.sum():,} "
          f"negatives, {int(sets.fallback.sum())} fallbacks", flush=True)
    result = {
        "queries": n_queries,
        "images": n_images,
        "scoring_s": score_s,
        "miner_s": mine_s,
        "miner_qps": n_queries / mine_s,
        "scoring_plus_mining_s": total_s,
        "reference_subsample": rows.numel(),
        "reference_qps": rows.numel() / ref_s,
        "released_style_subsample": rows_rel.numel(),
        "released_style_qps": rows_rel.numel() / rel_s,
        "equal_to_reference": equal,
        "released_style_agreement": released_agreement(sets, rows_rel, names, rel),
        "fallback_queries": int(sets.fallback.sum()),
        "set_size_mean": sizes.mean().item(),
        "set_size_median": sizes.median().item(),
        "image_tokens_mb": tokens.numel() * tokens.element_size() / 2**20,
        "largest_score_block_mb": largest_block / 2**20,
        "sets_storage_mb": (sets.indices.numel() * sets.indices.element_size()
                            + sets.offsets.numel() * 8) / 2**20,
        "full_score_matrix_would_be_mb": n_queries * n_images * 4 / 2**20,
        "peak_rss_after_inputs_mb": rss_inputs,
        "peak_rss_mining_mb": rss_after,
        "peak_rss_mb": peak_rss_mb(),
    }
    add_speedups(result, "cirr", quick)
    return result


# --- driver ------------------------------------------------------------------------------


def run_child(part: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--part", part]
    if args.quick:
        cmd.append("--quick")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ)
    # On a shared machine, OpenMP's default busy-waiting makes every multi-threaded op
    # wait for a descheduled sibling; passive waiting keeps timings meaningful.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = proc.stdout.rstrip().splitlines()
    for line in lines[:-1]:
        print(line)
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"benchmark part {part!r} failed (exit {proc.returncode})")
    return json.loads(lines[-1])


def report(name: str, r: dict[str, Any]) -> None:
    print(f"{name}: {r['queries']:,} queries")
    print(f"  scoring (max over {TOKENS} tokens, chunked): {r['scoring_s']:.1f} s")
    print(f"  (a) vectorised miner, set definition: {r['miner_s']:.2f} s = "
          f"{r['miner_qps']:,.0f} queries/s")
    print(f"  (b) per-query NumPy reference, {r['reference_subsample']:,}-query subsample: "
          f"{r['reference_qps']:,.0f} queries/s -> speed-up {r['speedup_vs_reference']:.1f}x; "
          f"(a) == (b): {r['equal_to_reference']}")
    print(f"  (c) released-style loop (ours), {r['released_style_subsample']:,}-query "
          f"subsample: {r['released_style_qps']:,.0f} queries/s -> speed-up "
          f"{r['speedup_vs_released_style']:.1f}x (same sets as (a) for "
          f"{100 * r['released_style_agreement']:.1f}% of them)")
    if r["speedup_vs_released_code_quoted"]:
        low, high = r["speedup_vs_released_code_quoted"]
        print(f"  released code as measured in performance.md "
              f"({r['released_code_qps_quoted'][0]}-{r['released_code_qps_quoted'][1]} "
              f"queries/s, not re-run here): speed-up {low:.0f}-{high:.0f}x")
    print(f"  fallback queries: {r['fallback_queries']}; set size mean "
          f"{r['set_size_mean']:.1f}, median {r['set_size_median']:.0f}")
    if r.get("other_strategies_qps_first_category"):
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in
                          r["other_strategies_qps_first_category"].items())
        print(f"  other strategies, first category, queries/s: {rates}")
    print(f"  peak RSS of this run's process: {r['peak_rss_mb']:,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tenth of each scale")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--part", choices=("fiq", "cirr"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part:
        result = run_fiq(args.quick) if args.part == "fiq" else run_cirr(args.quick)
        result["threads"] = torch.get_num_threads()
        result["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
        print(json.dumps(result))
        return

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    print(f"mining benchmark ({'quick, 1/10 scale' if args.quick else 'full scale'}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load_start:.2f}", flush=True)
    fiq = run_child("fiq", args)
    report("FashionIQ-train" + (" (quick: 1/10)" if args.quick else ""), fiq)
    cirr = run_child("cirr", args)
    report("CIRR-train" + (" (quick: 1/10)" if args.quick else ""), cirr)
    print(f"  CIRR memory: image tokens {cirr['image_tokens_mb']:.0f} MB, largest score block "
          f"{cirr['largest_score_block_mb']:.0f} MB, sets {cirr['sets_storage_mb']:.0f} MB "
          f"(a full score matrix would be {cirr['full_score_matrix_would_be_mb']:,.0f} MB)")
    goals = {
        "fiq_speedup_vs_released_style_ge_50": fiq["speedup_vs_released_style"] >= 50,
        "fiq_speedup_vs_released_code_quoted_ge_50":
            bool(fiq["speedup_vs_released_code_quoted"])
            and fiq["speedup_vs_released_code_quoted"][0] >= 50,
        "fiq_miner_qps_ge_9000": fiq["miner_qps"] >= 9000,
        "cirr_peak_rss_lt_4gb": cirr["peak_rss_mb"] < 4096,
        "equal_to_reference": fiq["equal_to_reference"] and cirr["equal_to_reference"],
    }
    note = " (goals are set for the full scale)" if args.quick else ""
    print("goals" + note + ": " + ", ".join(f"{k}={v}" for k, v in goals.items()))
    wall = time.perf_counter() - started
    load_end = os.getloadavg()[0]
    print(f"total wall time {wall:.0f} s; load average {load_start:.2f} at start, "
          f"{load_end:.2f} at end (other processes share these CPUs)")
    print(json.dumps({
        "benchmark": "mining", "quick": args.quick, "torch": torch.__version__,
        "threads": fiq["threads"], "omp_wait_policy": fiq["omp_wait_policy"],
        "cpus": os.cpu_count(), "wall_s": wall, "load_average_start": load_start,
        "load_average_end": load_end, "fiq": fiq, "cirr": cirr, "goals": goals,
    }))


if __name__ == "__main__":
    main()

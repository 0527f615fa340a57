"""Hard-set analyses on one shared score matrix: every strategy mined on the basis
run's scores of the training queries and audited against the synthetic relevance oracle
(Fig. 9), and hard-negative examples (Fig. 6)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from qure.device import resolve_device
from qure.evaluation import FeaturesByName, encode_gallery, encode_queries
from qure.io import atomic_write_json
from qure.mining import HardNegativeSets, mine_grouped
from qure.stages.data import TRAIN_SPLIT, benchmark_oracle, load_splits, training_relevance
from qure.stages.evaluate import run_label
from qure.stages.models import load_run_model, open_features
from qure.training.data import TrainingData

log = logging.getLogger(__name__)


def _training_scores(backbone: Any, table: FeaturesByName, data: TrainingData,
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    queries = encode_queries(backbone, table, data.references, data.texts, batch_size)
    corpus = encode_gallery(backbone, table, data.corpus, batch_size)
    return queries, corpus


def _mine(strategy: str, params: Mapping[str, Any], queries: torch.Tensor,
          corpus: torch.Tensor, data: TrainingData) -> HardNegativeSets:
    return mine_grouped(queries, corpus, data.query_group, data.corpus_group, data.target,
                        strategy, **dict(params))


def _set_audit(sets: HardNegativeSets, relevant: torch.Tensor | None,
               graded: torch.Tensor | None) -> dict[str, Any]:
    sizes = sets.sizes.double()
    out: dict[str, Any] = {"size_mean": float(sizes.mean()),
                           "size_median": float(sizes.median()),
                           "fallback_queries": int(sets.fallback.sum()),
                           "queries": len(sets)}
    if relevant is not None and sets.indices.numel():
        rows = torch.repeat_interleave(torch.arange(len(sets)), sets.sizes)
        hits = relevant[rows, sets.indices.long()].double()
        per_query = torch.zeros(len(sets), dtype=torch.float64).index_add_(0, rows, hits)
        share = per_query / sizes.clamp(min=1)
        out.update(false_negative_share=float(hits.mean()),
                   false_negative_share_per_query_mean=float(share.mean()),
                   queries_with_false_negatives=int((per_query > 0).sum()))
        if graded is not None:
            out["graded_relevance_mean"] = float(graded[rows, sets.indices.long()].mean())
    return out


def audit_step(dataset: str, root: str | Path, basis_run: str | Path, features: str | Path,
               methods: Mapping[str, Mapping[str, Any]], out: str | Path, *,
               batch_size: int = 256, missing: str = "fail",
               device: str = "auto") -> dict[str, Any]:
    """Mine every strategy on one shared score matrix (the basis run's final model over
    the training queries) and measure how many oracle-relevant images (false negatives)
    each strategy's hard sets hold. Real data has no oracle: sizes only."""
    backbone, summary = load_run_model(basis_run, resolve_device(device))
    table = open_features(features, backbone)
    data = TrainingData.from_splits(load_splits(dataset, root, TRAIN_SPLIT[dataset],
                                                missing=missing))
    oracle = benchmark_oracle(root)
    relevant = training_relevance(oracle, data) if oracle is not None else None
    graded = None
    if oracle is not None:
        graded = oracle.graded_relevance("train", data.query_ids, data.corpus)
    queries, corpus = _training_scores(backbone, table, data, batch_size)
    result: dict[str, Any] = {"dataset": dataset, "basis_run": str(basis_run),
                              **run_label(summary), "oracle": oracle is not None,
                              "order": list(methods), "strategies": {}}
    if relevant is not None:
        in_group = data.query_group[:, None] == data.corpus_group[None, :]
        others = in_group.sum(1).double() - 1
        result["relevant_per_query_mean"] = float((relevant.sum(1) - 1).double().mean())
        result["relevant_share_of_corpus"] = float(
            ((relevant.sum(1) - 1).double() / others).mean())
    for name, spec in methods.items():
        sets = _mine(spec["strategy"], spec.get("strategy_params", {}), queries, corpus, data)
        entry = {"label": spec.get("label", name), "strategy": spec["strategy"],
                 "strategy_params": dict(spec.get("strategy_params", {})),
                 **_set_audit(sets, relevant, graded)}
        result["strategies"][name] = entry
        log.info("%s: mean size %.1f, false-negative share %s", name, entry["size_mean"],
                 entry.get("false_negative_share"))
    atomic_write_json(out, result)
    return result


def examples_step(dataset: str, root: str | Path, basis_run: str | Path,
                  features: str | Path, strategy: str, strategy_params: Mapping[str, Any],
                  out: str | Path, *, queries: int = 3, negatives: int = 6,
                  batch_size: int = 256, missing: str = "fail",
                  device: str = "auto") -> dict[str, Any]:
    """A few training queries with their target and hard negatives (names, scores,
    ranks and, on synthetic data, oracle relevance) for Fig. 6."""
    backbone, summary = load_run_model(basis_run, resolve_device(device))
    table = open_features(features, backbone)
    splits = load_splits(dataset, root, TRAIN_SPLIT[dataset], missing=missing)
    data = TrainingData.from_splits(splits)
    query_emb, corpus = _training_scores(backbone, table, data, batch_size)
    sets = _mine(strategy, strategy_params, query_emb, corpus, data)
    oracle = benchmark_oracle(root)
    # Evenly spaced queries whose set is real (not a fallback) and large enough to show.
    eligible = [i for i in range(len(data))
                if not bool(sets.fallback[i]) and int(sets.sizes[i]) >= negatives]
    if not eligible:
        eligible = [i for i in range(len(data)) if int(sets.sizes[i]) > 0]
    step = max(1, len(eligible) // queries)
    chosen = eligible[::step][:queries]
    locate = {}
    for split in splits:
        for name in split.gallery.names:
            locate.setdefault(name, split.gallery.find(name))
    items = []
    for i in chosen:
        scores = backbone.score(query_emb[i:i + 1], corpus)[0]
        in_group = data.corpus_group == data.query_group[i]
        scores = scores.masked_fill(~in_group, float("-inf"))
        order = torch.sort(scores, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))
        members = sets[i]
        members = members[torch.argsort(-scores[members], stable=True)][:negatives]
        relevant = None
        if oracle is not None:
            relevant = oracle.relevance_matrix("train", [data.query_ids[i]],
                                               [data.corpus[int(c)] for c in members])[0]

        def entry(col: int, k: int | None = None, *, scores=scores, rank=rank,
                  rel=relevant) -> dict[str, Any]:
            name = data.corpus[col]
            found = locate.get(name)
            out_entry = {"name": name, "score": float(scores[col]),
                         "rank": int(rank[col]) + 1, "path": str(found) if found else None}
            if rel is not None and k is not None:
                out_entry["oracle_relevant"] = bool(rel[k])
            return out_entry

        ref_path = locate.get(data.references[i])
        items.append({
            "query_id": data.query_ids[i], "text": data.texts[i],
            "reference": {"name": data.references[i],
                          "path": str(ref_path) if ref_path else None},
            "target": entry(int(data.target[i])),
            "set_size": int(sets.sizes[i]),
            "hard_negatives": [entry(int(c), k) for k, c in enumerate(members.tolist())],
        })
    result = {"dataset": dataset, "basis_run": str(basis_run), **run_label(summary),
              "strategy": strategy, "strategy_params": dict(strategy_params),
              "examples": items}
    atomic_write_json(out, result)
    return result

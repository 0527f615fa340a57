"""Whole workflow steps after training: evaluation (own validation split, zero-shot CIRCO,
HP-FashionIQ), the hard-set audit behind Fig. 9 and the hard-negative examples of Fig. 6.

Each step reads explicit paths and writes one JSON file atomically; tables and figures
are drawn from these files only (compute is separate from presentation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from qure.data import HPFashionIQ
from qure.data.text import blip_caption
from qure.errors import MissingImageError
from qure.evaluation import HEADLINE_METRIC, FeatureTable, encode_gallery, encode_queries, evaluate
from qure.experiment import (
    TRAIN_SPLIT,
    VAL_SPLIT,
    benchmark_oracle,
    load_encoder,
    load_splits,
    training_relevance,
)
from qure.io import atomic_write_json, read_json
from qure.metrics import hp_preference_rates
from qure.mining import HardNegativeSets, mine_grouped
from qure.models import load_backbone
from qure.models.feature_cache import FeatureCache, build_feature_cache, image_loader
from qure.models.preprocess import simple_transform
from qure.training.data import TrainingData

log = logging.getLogger(__name__)


# --- models and features --------------------------------------------------------------------


def load_run_model(run_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """The final backbone of a training run and its summary (``metrics.json``)."""
    run_dir = Path(run_dir)
    backbone, extra = load_backbone(run_dir / "model.pt")
    backbone.eval()
    summary = extra.get("summary") or read_json(run_dir / "metrics.json", dict)
    return backbone, summary


def open_features(path: str | Path, backbone: Any) -> FeatureTable:
    """A feature cache as a table, refused unless it came from ``backbone``'s frozen part."""
    cache = FeatureCache.open_for(path, backbone, FeatureCache.recorded_preprocess(path))
    return FeatureTable(list(cache.names), cache.as_tensor())


def hp_image_names(hp: HPFashionIQ) -> list[str]:
    """Every image an HP-FashionIQ comparison shows (reference and both sets), once."""
    names: list[str] = []
    for c in hp.comparisons:
        names.extend((c.reference, *c.set1, *c.set2))
    return list(dict.fromkeys(names))


def hp_image_locator(root: str | Path, image_root: str | Path | None
                     ) -> tuple[list[str], Any]:
    """The images HP-FashionIQ shows and a ``name -> file`` locator for them."""
    hp = HPFashionIQ(root, image_root)
    category: dict[str, str] = {}
    for c in hp.comparisons:
        for name in (c.reference, *c.set1, *c.set2):
            category.setdefault(name, c.category)

    def locate(name: str) -> Path:
        candidates = hp.image_candidates(category[name], name)
        for path in candidates:
            if path.is_file():
                return path
        raise MissingImageError(name, list(candidates), record="hpfiq.json")

    return hp_image_names(hp), locate


def hp_features_step(root: str | Path, image_root: str | Path | None,
                     encoder_path: str | Path, out: str | Path, *, batch_size: int = 128,
                     progress: bool = True) -> FeatureCache:
    """Cache the frozen features of every image HP-FashionIQ shows (mini encoder)."""
    from qure.experiment import mini_backbone

    names, locate = hp_image_locator(root, image_root)
    encoder = load_encoder(encoder_path)
    transform = simple_transform(encoder.config.image_size)
    return build_feature_cache(out, names, image_loader(locate, transform),
                               mini_backbone(encoder), transform.config,
                               batch_size=batch_size, progress=progress)


# --- evaluation -----------------------------------------------------------------------------


def _run_label(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {"train_dataset": summary.get("dataset"), "profile": summary.get("profile"),
            "backbone": summary.get("backbone"), "config": summary.get("config")}


def evaluate_step(benchmark: str, root: str | Path, run_dir: str | Path,
                  features: str | Path, out: str | Path, *, batch_size: int = 256,
                  hp_image_root: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a run's final model on ``benchmark``'s validation split (CIRCO and
    HP-FashionIQ zero-shot) and write the metrics with what produced them."""
    started = time.perf_counter()
    backbone, summary = load_run_model(run_dir)
    table = open_features(features, backbone)
    result: dict[str, Any] = {"benchmark": benchmark, "run": str(run_dir),
                              **_run_label(summary)}
    if benchmark == "hp_fashioniq":
        hp = HPFashionIQ(root, hp_image_root)
        result.update(split="all", metrics=evaluate_hp(backbone, table, hp, batch_size),
                      queries=len(hp))
    else:
        splits = load_splits(benchmark, root, VAL_SPLIT[benchmark])
        missing = sum(len(s.gallery.missing()) for s in splits)
        result.update(split=VAL_SPLIT[benchmark],
                      metrics=evaluate(backbone, table, splits, batch_size),
                      queries=sum(len(s) for s in splits),
                      gallery_images=sum(len(s.gallery.names) for s in splits),
                      missing_gallery_images=missing)
        if benchmark in HEADLINE_METRIC:
            result["headline_metric"] = HEADLINE_METRIC[benchmark]
    result["seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_json(out, result)
    return result


@torch.inference_mode()
def evaluate_hp(backbone: Any, table: FeatureTable, hp: HPFashionIQ,
                batch_size: int = 256) -> dict[str, float | int]:
    """HP-FashionIQ preference rates: each set scores the mean of its five image scores
    (no temperature) for the query (reference image + ``blip_caption`` of the sentence)."""
    comparisons = hp.comparisons
    queries = encode_queries(backbone, table, [c.reference for c in comparisons],
                             [blip_caption(c.sentence) for c in comparisons], batch_size)
    names = hp_image_names(hp)
    column = {n: i for i, n in enumerate(names)}
    gallery = encode_gallery(backbone, table, names, batch_size)
    set_scores = []
    for key in ("set1", "set2"):
        cols = torch.tensor([[column[n] for n in getattr(c, key)] for c in comparisons])
        rows = []
        for start in range(0, len(comparisons), batch_size):
            q = queries[start:start + batch_size]
            c = cols[start:start + batch_size]
            # score of query i against its own five images only: [B, 5]
            tokens = gallery[c.reshape(-1)].reshape(*c.shape, *gallery.shape[1:])
            rows.append(torch.stack([backbone.score(q[i:i + 1], tokens[i])[0]
                                     for i in range(len(q))]))
        set_scores.append(torch.cat(rows).float())
    preferred = torch.tensor([c.preferred for c in comparisons])
    rates = hp_preference_rates(set_scores[0], set_scores[1], preferred)
    # Tables print percentages, like every other metric here.
    rates["preference_rate"] = 100.0 * float(rates["released_preference_ratio"])
    rates["symmetric_preference_rate"] = 100.0 * float(rates["symmetric_preference_ratio"])
    return rates


# --- hard-set audit (Fig. 9) and examples (Fig. 6) -------------------------------------------


def _training_scores(backbone: Any, table: FeatureTable, data: TrainingData,
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
               batch_size: int = 256) -> dict[str, Any]:
    """Mine every strategy on one shared score matrix (the basis run's final model over
    the training queries) and measure how many oracle-relevant images (false negatives)
    each strategy's hard sets hold. Real data has no oracle: sizes only."""
    backbone, summary = load_run_model(basis_run)
    table = open_features(features, backbone)
    data = TrainingData.from_splits(load_splits(dataset, root, TRAIN_SPLIT[dataset]))
    oracle = benchmark_oracle(root)
    relevant = training_relevance(oracle, data) if oracle is not None else None
    graded = None
    if oracle is not None:
        graded = oracle.graded_relevance("train", data.query_ids, data.corpus)
    queries, corpus = _training_scores(backbone, table, data, batch_size)
    result: dict[str, Any] = {"dataset": dataset, "basis_run": str(basis_run),
                              **_run_label(summary), "oracle": oracle is not None,
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
                  batch_size: int = 256) -> dict[str, Any]:
    """A few training queries with their target and hard negatives (names, scores,
    ranks and, on synthetic data, oracle relevance) for Fig. 6."""
    backbone, summary = load_run_model(basis_run)
    table = open_features(features, backbone)
    splits = load_splits(dataset, root, TRAIN_SPLIT[dataset])
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
    result = {"dataset": dataset, "basis_run": str(basis_run), **_run_label(summary),
              "strategy": strategy, "strategy_params": dict(strategy_params),
              "examples": items}
    atomic_write_json(out, result)
    return result


def write_run_index(runs: Sequence[Mapping[str, Any]], out: str | Path) -> None:
    atomic_write_json(out, {"runs": list(runs)})

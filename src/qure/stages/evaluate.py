"""Stage 5: a run's final model on its own validation split, zero-shot on CIRCO
(CIRR models) and HP-FashionIQ (FashionIQ models), on the configured device. Each
evaluation file records the split, the device and the images the missing-image policy
left out."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from qure.data import HPFashionIQ
from qure.data.text import blip_caption
from qure.device import device_report, reset_peak_memory, resolve_device
from qure.evaluation import (
    HEADLINE_METRIC,
    FeaturesByName,
    encode_gallery,
    encode_queries,
    evaluate_with_records,
)
from qure.intervals import bootstrap_intervals, per_query_records
from qure.io import atomic_write_json
from qure.metrics import hp_preference_rates
from qure.stages.data import VAL_SPLIT, hp_image_names, load_hp, load_splits, missing_report
from qure.stages.models import load_run_model, open_features


def run_label(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {"train_dataset": summary.get("dataset"), "profile": summary.get("profile"),
            "backbone": summary.get("backbone"), "config": summary.get("config")}


def evaluate_step(benchmark: str, root: str | Path, run_dir: str | Path,
                  features: str | Path, out: str | Path, *, batch_size: int = 256,
                  hp_image_root: str | Path | None = None, missing: str = "fail",
                  device: str = "auto") -> dict[str, Any]:
    """Evaluate a run's final model on ``benchmark``'s validation split (CIRCO and
    HP-FashionIQ zero-shot) and write the metrics with what produced them."""
    started = time.perf_counter()
    where = resolve_device(device)
    reset_peak_memory(where)
    backbone, summary = load_run_model(run_dir, where)
    table = open_features(features, backbone)
    result: dict[str, Any] = {"benchmark": benchmark, "run": str(run_dir),
                              **run_label(summary)}
    counts: dict[str, dict[str, int]] = {}
    if benchmark == "hp_fashioniq":
        hp = load_hp(root, hp_image_root, missing=missing, report=counts)
        metrics, records = evaluate_hp(backbone, table, hp, batch_size, with_records=True)
        result.update(split="all", metrics=metrics, queries=len(hp.comparisons))
    else:
        splits = load_splits(benchmark, root, VAL_SPLIT[benchmark], missing=missing,
                             report=counts)
        metrics, records = evaluate_with_records(backbone, table, splits, batch_size)
        result.update(split=VAL_SPLIT[benchmark], metrics=metrics,
                      queries=sum(len(s) for s in splits),
                      gallery_images=sum(len(s.gallery.names) for s in splits))
        if benchmark in HEADLINE_METRIC:
            result["headline_metric"] = HEADLINE_METRIC[benchmark]
    result.update(metric_intervals(benchmark, metrics, records))
    result["missing_images"] = missing_report(counts, missing)
    result.update(device_report(where))
    result["seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_json(out, result)
    return result


#: The bootstrap behind every reproduced number's interval (recorded with it).
BOOTSTRAP = {"method": "percentile bootstrap over queries (FashionIQ: within each "
                       "category; HP-FashionIQ: over comparisons)",
             "resamples": 1000, "level": 0.95, "seed": 0}


def metric_intervals(benchmark: str, metrics: Mapping[str, Any],
                     records: Mapping[str, Any]) -> dict[str, Any]:
    """``intervals`` (metric -> [point, low, high]) for every real-valued metric, with
    the ``bootstrap`` settings and the ``per_query`` records they were resampled from
    (saved, so intervals and paired comparisons never need a re-run)."""
    intervals = bootstrap_intervals(benchmark, records, n_resamples=BOOTSTRAP["resamples"],
                                    level=BOOTSTRAP["level"], seed=BOOTSTRAP["seed"])
    out: dict[str, list[float]] = {}
    for key, value in metrics.items():
        if isinstance(value, float) and key in intervals:
            point, low, high = intervals[key]
            if abs(point - value) > 1e-6 * max(1.0, abs(value)):
                raise AssertionError(f"{benchmark} {key}: records give {point}, the metric "
                                     f"is {value}; per-query records out of step")
            out[key] = [float(value), float(low), float(high)]
    return {"intervals": out, "bootstrap": dict(BOOTSTRAP), "per_query": dict(records)}


@torch.inference_mode()
def evaluate_hp(backbone: Any, table: FeaturesByName, hp: HPFashionIQ,
                batch_size: int = 256, *, with_records: bool = False) -> Any:
    """HP-FashionIQ preference rates: each set scores the mean of its five image scores
    (no temperature) for the query (reference image + ``blip_caption`` of the sentence).
    With ``with_records``, also the per-comparison records (qure.intervals)."""
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
    if not with_records:
        return rates
    ids = [c.record for c in comparisons]
    return rates, per_query_records("hp_fashioniq", set_scores[0], set_scores[1], preferred,
                                    query_ids=ids)

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
    evaluate,
)
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
        result.update(split="all", metrics=evaluate_hp(backbone, table, hp, batch_size),
                      queries=len(hp.comparisons))
    else:
        splits = load_splits(benchmark, root, VAL_SPLIT[benchmark], missing=missing,
                             report=counts)
        result.update(split=VAL_SPLIT[benchmark],
                      metrics=evaluate(backbone, table, splits, batch_size),
                      queries=sum(len(s) for s in splits),
                      gallery_images=sum(len(s.gallery.names) for s in splits))
        if benchmark in HEADLINE_METRIC:
            result["headline_metric"] = HEADLINE_METRIC[benchmark]
    result["missing_images"] = missing_report(counts, missing)
    result.update(device_report(where))
    result["seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_json(out, result)
    return result


@torch.inference_mode()
def evaluate_hp(backbone: Any, table: FeaturesByName, hp: HPFashionIQ,
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

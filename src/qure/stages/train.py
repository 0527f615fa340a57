"""Stage 4: one training run per (dataset, backbone, method) over cached frozen
features, resumable from its last epoch, on the configured device."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from qure.device import device_report, reset_peak_memory, resolve_device
from qure.evaluation import HEADLINE_METRIC, evaluate
from qure.io import atomic_torch_save, atomic_write_json
from qure.models import save_backbone
from qure.models.feature_cache import FeatureCache
from qure.stages.data import (
    TRAIN_SPLIT,
    VAL_SPLIT,
    benchmark_oracle,
    load_splits,
    missing_report,
    training_relevance,
)
from qure.stages.models import (
    features_by_name,
    load_encoder,
    load_pretrained,
    mini_backbone,
    preprocess_config,
)
from qure.training.data import TrainingData
from qure.training.trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)


def train_step(dataset: str, root: str | Path, features: str | Path,
               encoder_path: str | Path | None, out_dir: str | Path, config: TrainConfig, *,
               single_vector: bool = False, qformer: Mapping[str, Any] | None = None,
               init: str | Path | None = None, missing: str = "fail", device: str = "auto",
               progress: bool = True) -> dict[str, Any]:
    """Train one (dataset, method, strategy, backbone variant) run and summarise it.

    Writes under ``out_dir``: ``checkpoint.pt`` (resume state, every epoch),
    ``epochs.jsonl`` (per-epoch history), ``snapshots/`` (score rows for the steepness
    figures), ``model.pt`` (the final backbone) and ``metrics.json`` (the summary this
    function returns). A run interrupted at any point resumes from its last epoch.
    ``model.pt`` and ``checkpoint.pt`` leave out the frozen part: ``model.pt`` records the
    file it came from (``init``, else ``encoder_path``, as given) and its fingerprint, so
    that file must stay where it is for :func:`~qure.stages.models.load_run_model`.
    ``device`` (auto, cpu, cuda) places the model; fp16 autocast applies on CUDA when
    the config asks for ``amp``.
    """
    out_dir = Path(out_dir)
    where = resolve_device(device)
    reset_peak_memory(where)
    missing_counts: dict[str, dict[str, int]] = {}
    train_splits = load_splits(dataset, root, TRAIN_SPLIT[dataset], missing=missing,
                               report=missing_counts)
    val_splits = load_splits(dataset, root, VAL_SPLIT[dataset], missing=missing,
                             report=missing_counts)
    if init is not None:
        # Start from pretrained weights (BLIP-2 / the mini Q-Former's pretraining stage).
        backbone = load_pretrained(init, single_vector=single_vector)
    elif encoder_path is not None:
        encoder = load_encoder(encoder_path)
        backbone = mini_backbone(encoder, (q.text for s in train_splits for q in s),
                                 seed=config.seed, single_vector=single_vector,
                                 qformer=qformer)
    else:
        raise ValueError("train_step needs a frozen encoder (mini backbone) or init weights")
    if encoder_path is not None:
        preprocess = preprocess_config(load_encoder(encoder_path))
    else:  # the cache records its preprocessing; the fingerprint still checks the weights
        preprocess = FeatureCache.recorded_preprocess(features)
    cache = FeatureCache.open_for(features, backbone, preprocess)
    discard_stale_checkpoint(out_dir, {"init": file_sha256(init) if init else None,
                                       "features": cache.fingerprint,
                                       "single_vector": single_vector})
    table = features_by_name(cache)
    data = TrainingData.from_splits(train_splits)
    oracle = benchmark_oracle(root)
    relevant = training_relevance(oracle, data) if oracle is not None else None
    backbone.to(where)
    untrained = evaluate(backbone, table, val_splits)
    trainer = Trainer(backbone, data, table, config, out_dir, val_splits=val_splits,
                      relevant=relevant, device=where, progress=progress)
    history = trainer.fit()
    headline = HEADLINE_METRIC[dataset]
    best = max(history, key=lambda r: r["val"][headline])
    summary = {
        "dataset": dataset,
        "profile": "synthetic" if oracle is not None else "real",
        "backbone": {"name": backbone.name, "single_vector": single_vector,
                     "parameters": backbone.parameter_counts(),
                     "init": str(init) if init is not None else "random"},
        "config": config.to_dict(),
        "headline_metric": headline,
        "untrained": untrained,
        "final": history[-1]["val"],
        "best_epoch": best["epoch"],
        "best": best["val"],
        "epochs": len(history),
        "train_seconds": round(sum(r["seconds"] for r in history), 3),
        "train_queries": len(data),
        "corpus_images": data.num_columns,
        "missing_images": missing_report(missing_counts, missing),
        **device_report(where),
    }
    bundle_snapshots(out_dir)
    save_backbone(out_dir / "model.pt", backbone, extra={"summary": summary},
                  frozen_source=init if init is not None else encoder_path)
    atomic_write_json(out_dir / "metrics.json", summary)
    return summary


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def discard_stale_checkpoint(out_dir: str | Path, inputs: Mapping[str, Any]) -> None:
    """Resume only from a checkpoint made from the same inputs (initial weights, feature
    cache, variant): a workflow that reruns a run because an input changed must not
    silently continue the old one. The training config itself is checked by the trainer."""
    out_dir = Path(out_dir)
    record = out_dir / "run_inputs.json"
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.exists():
        previous = json.loads(record.read_text()) if record.is_file() else None
        if previous != dict(inputs):
            log.warning("%s: inputs changed since the checkpoint was written; starting over",
                        out_dir)
            checkpoint.unlink()
            shutil.rmtree(out_dir / "snapshots", ignore_errors=True)
    atomic_write_json(record, dict(inputs))


def bundle_snapshots(run_dir: str | Path) -> Path:
    """Collect the run's per-definition score snapshots into one ``snapshots.pt``
    (``{"snapshots": [...]}`` in epoch order), the file the steepness figures read."""
    run_dir = Path(run_dir)
    files = sorted((run_dir / "snapshots").glob("epoch_*.pt"))
    snapshots = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    return atomic_torch_save(run_dir / "snapshots.pt", {"snapshots": snapshots})

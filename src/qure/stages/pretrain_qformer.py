"""Stage 2b (mini backbone only): each mini Q-Former pretrained by in-batch contrastive
learning on the separate synthetic corpus, so that study runs start, as QuRe starts from
BLIP-2, from a model that already ranks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from qure.data.base import CIRSplit
from qure.device import resolve_device
from qure.evaluation import FeaturesByName
from qure.io import atomic_write_json
from qure.models import save_backbone
from qure.models.feature_cache import FeatureCache
from qure.stages.data import TRAIN_SPLIT, VAL_SPLIT, load_splits
from qure.stages.models import load_encoder, mini_backbone, preprocess_config
from qure.stages.train import discard_stale_checkpoint
from qure.training.data import TrainingData
from qure.training.trainer import TrainConfig, Trainer


def pretrain_qformer_step(benchmarks: Mapping[str, str | Path],
                          features: Mapping[str, str | Path], encoder_path: str | Path,
                          out_dir: str | Path, config: TrainConfig, *,
                          single_vector: bool = False, device: str = "auto",
                          progress: bool = True) -> dict[str, Any]:
    """Stage-1 analogue of BLIP-2: train the mini Q-Former with in-batch contrastive
    learning on a *separate* pretraining corpus (synthetic benchmarks drawn with another
    seed, never the study's train/val data), so every study run starts, like QuRe from
    BLIP-2, from a model that already ranks reasonably. Writes ``model.pt`` and
    ``metrics.json`` under ``out_dir`` (resumable, like any run)."""
    out_dir = Path(out_dir)
    encoder = load_encoder(encoder_path)
    train_splits: list[CIRSplit] = []
    val_splits: list[CIRSplit] = []
    names: list[str] = []
    rows: list[torch.Tensor] = []
    fingerprints: list[str] = []
    for dataset, root in benchmarks.items():
        train_splits += load_splits(dataset, root, TRAIN_SPLIT[dataset])
        if not val_splits:  # metrics are per dataset; monitor the first one
            val_splits = load_splits(dataset, root, VAL_SPLIT[dataset])
    texts = [q.text for s in train_splits for q in s]
    backbone = mini_backbone(encoder, texts, seed=config.seed, single_vector=single_vector)
    for dataset in benchmarks:
        cache = FeatureCache.open_for(features[dataset], backbone, preprocess_config(encoder))
        names += list(cache.names)
        rows.append(cache.as_tensor())
        fingerprints.append(cache.fingerprint)
    if len(set(names)) != len(names):
        raise ValueError("pretraining benchmarks share image names; their feature caches "
                         "cannot be combined")
    table = FeaturesByName(names, torch.cat(rows))
    data = TrainingData.from_splits(train_splits)
    discard_stale_checkpoint(out_dir, {"features": fingerprints, "single_vector": single_vector})
    trainer = Trainer(backbone, data, table, config, out_dir, val_splits=val_splits,
                      device=resolve_device(device), progress=progress)
    history = trainer.fit()
    summary = {"benchmarks": {k: str(v) for k, v in benchmarks.items()},
               "config": config.to_dict(), "single_vector": single_vector,
               "train_queries": len(data), "final": history[-1]["val"],
               "train_seconds": round(sum(r["seconds"] for r in history), 3)}
    save_backbone(out_dir / "model.pt", backbone, extra={"summary": summary})
    atomic_write_json(out_dir / "metrics.json", summary)
    return summary

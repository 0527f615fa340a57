"""Stage 2 (mini backbone only): the analogue of BLIP-2's pretraining. The frozen
image encoder learns from image-caption pairs of a separate synthetic corpus, then each
mini Q-Former by in-batch contrastive learning on it, so that study runs start, as QuRe
starts from BLIP-2, from a model that already ranks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from qure.data.base import CIRSplit
from qure.device import resolve_device
from qure.evaluation import FeatureTable
from qure.io import atomic_write_json
from qure.models import PatchEncoder, PatchEncoderConfig, pretrain_image_encoder, save_backbone
from qure.models.feature_cache import FeatureCache
from qure.models.preprocess import load_image, simple_transform
from qure.stages.data import (
    TRAIN_SPLIT,
    VAL_SPLIT,
    attribute_caption,
    benchmark_oracle,
    image_locator,
    load_splits,
    split_images,
)
from qure.stages.models import load_encoder, mini_backbone, preprocess_config, save_encoder
from qure.stages.train import discard_stale_checkpoint
from qure.training.data import TrainingData
from qure.training.trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)


def load_image_tensor(names: Sequence[str], locate: Callable[[str], Path],
                      image_size: int) -> torch.Tensor:
    transform = simple_transform(image_size)
    return torch.stack([transform(load_image(locate(name))) for name in names])


def pretrain_encoder(images: torch.Tensor, captions: Sequence[str], *, epochs: int,
                     batch_size: int, lr: float, seed: int,
                     progress: bool = True) -> tuple[PatchEncoder, dict[str, Any]]:
    """Image-caption contrastive pretraining of the mini encoder (then frozen)."""
    config = PatchEncoderConfig(image_size=int(images.shape[-1]))
    return pretrain_image_encoder(images, captions, epochs=epochs, batch_size=batch_size,
                                  lr=lr, seed=seed, progress=progress, config=config)


def pretrain_encoder_step(benchmarks: Mapping[str, str | Path], out: str | Path, *,
                          image_size: int, epochs: int, batch_size: int, lr: float,
                          seed: int, progress: bool = True) -> dict[str, Any]:
    """Pretrain the mini frozen encoder on the training images of synthetic benchmarks.

    Captions come from each benchmark's oracle (the attributes drawn in each image), so
    this step exists only for the synthetic profile; the paper profile uses CLIP ViT-L.
    """
    images: list[torch.Tensor] = []
    captions: list[str] = []
    for dataset, root in benchmarks.items():
        oracle = benchmark_oracle(root)
        if oracle is None:
            raise ValueError(f"{root}: pretraining the mini encoder needs a synthetic "
                             "benchmark (oracle.json with image attributes)")
        splits = load_splits(dataset, root, TRAIN_SPLIT[dataset])
        names = split_images(splits)
        images.append(load_image_tensor(names, image_locator(splits), image_size))
        captions.extend(attribute_caption(oracle.attributes_of(n)) for n in names)
        log.info("%s: %d training images for encoder pretraining", dataset, len(names))
    encoder, history = pretrain_encoder(torch.cat(images), captions, epochs=epochs,
                                        batch_size=batch_size, lr=lr, seed=seed,
                                        progress=progress)
    save_encoder(out, encoder, history)
    return history


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
    table = FeatureTable(names, torch.cat(rows))
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

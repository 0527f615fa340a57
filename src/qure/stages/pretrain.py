"""Stage 2a (mini backbone only): the frozen image encoder, pretrained on the image-caption
pairs of a separate synthetic corpus (the analogue of BLIP-2's frozen CLIP ViT). The
Q-Former's pretraining on the same corpus is :mod:`qure.stages.pretrain_qformer` (kept
apart: it needs the trainer and the miner, the encoder does not)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from qure.models import PatchEncoder, PatchEncoderConfig, pretrain_image_encoder
from qure.models.preprocess import load_image, simple_transform
from qure.stages.data import (
    TRAIN_SPLIT,
    attribute_caption,
    benchmark_oracle,
    image_locator,
    load_splits,
    split_images,
)
from qure.stages.models import save_encoder

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

"""Stage 3: frozen image features of every image a benchmark's stages read, cached once
(fp16, memory-mapped). One path for every backbone family and benchmark: the device,
the decoding workers and the missing-image policy are applied here and nowhere else."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qure.device import device_report, reset_peak_memory, resolve_device
from qure.models import load_backbone
from qure.models.feature_cache import FeatureCache, build_feature_cache, image_loader
from qure.models.preprocess import simple_transform, targetpad_transform
from qure.stages.data import (
    hp_image_locator,
    hp_image_names,
    image_locator,
    load_hp,
    missing_report,
    split_images,
    study_splits,
)
from qure.stages.models import load_encoder, mini_backbone

log = logging.getLogger(__name__)

#: QuRe's preprocessing for BLIP-2: TargetPad 1.25, then 224 bicubic, CLIP normalisation.
TARGETPAD_RATIO, TARGETPAD_SIZE = 1.25, 224


def frozen_model(encoder: str | Path | None = None, backbone: str | Path | None = None
                 ) -> tuple[Any, Any]:
    """The model whose frozen part makes the features, and its image transform: the mini
    encoder (its own resize) or a saved backbone such as BLIP-2 ViT-L (TargetPad 224)."""
    if (encoder is None) == (backbone is None):
        raise ValueError("feature extraction needs exactly one of a mini encoder or a "
                         "saved backbone")
    if encoder is not None:
        frozen = load_encoder(encoder)
        return mini_backbone(frozen), simple_transform(frozen.config.image_size)
    model, _ = load_backbone(backbone)
    return model.eval(), targetpad_transform(TARGETPAD_RATIO, TARGETPAD_SIZE)


def features_step(dataset: str, root: str | Path, out: str | Path, *,
                  encoder: str | Path | None = None, backbone: str | Path | None = None,
                  image_root: str | Path | None = None, missing: str = "fail",
                  include_test: bool = False, device: str = "auto", workers: int = 0,
                  batch_size: int = 64, progress: bool = True) -> tuple[FeatureCache,
                                                                       dict[str, Any]]:
    """Cache the frozen features of every image the study reads of ``dataset``: its
    training and validation splits (and test split with ``include_test``), or every
    image HP-FashionIQ shows. Returns the cache and a report (device, missing images)."""
    where = resolve_device(device)
    model, transform = frozen_model(encoder, backbone)
    reset_peak_memory(where)
    report: dict[str, dict[str, int]] = {}
    if dataset == "hp_fashioniq":
        hp = load_hp(root, image_root, missing=missing, report=report)
        names, locate = hp_image_names(hp), hp_image_locator(hp)
    else:
        splits = study_splits(dataset, root, missing=missing, include_test=include_test,
                              report=report)
        names, locate = split_images(splits), image_locator(splits)
    model.to(where)
    cache = build_feature_cache(out, names, image_loader(locate, transform), model,
                                transform.config, batch_size=batch_size, device=where,
                                workers=workers, progress=progress)
    info = {"images": len(cache), "shape": list(cache.shape), **device_report(where),
            "missing_images": missing_report(report, missing)}
    log.info("%s: %d images on %s", out, len(cache), where)
    return cache, info

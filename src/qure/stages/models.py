"""Building, loading and placing the backbones every model stage uses: the mini BLIP-2
over its frozen encoder, pretrained and converted backbones, trained runs, and the
frozen-feature caches they read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from qure.evaluation import FeaturesByName
from qure.io import atomic_torch_save, read_json
from qure.models import (
    MiniBlip2Backbone,
    PatchEncoder,
    PatchEncoderConfig,
    QFormerConfig,
    WordTokenizer,
    load_backbone,
)
from qure.models.feature_cache import FeatureCache
from qure.models.preprocess import simple_transform


def save_encoder(path: str | Path, encoder: PatchEncoder, history: Mapping[str, Any]) -> Path:
    payload = {"config": encoder.config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
               "history": dict(history)}
    return atomic_torch_save(path, payload)


def load_encoder(path: str | Path) -> PatchEncoder:
    payload = torch.load(Path(path), map_location="cpu", weights_only=False)
    encoder = PatchEncoder(PatchEncoderConfig(**payload["config"]))
    encoder.load_state_dict(payload["state_dict"], strict=True)
    return encoder.freeze()


def mini_backbone(encoder: PatchEncoder, texts: Iterable[str] = (), *, seed: int = 0,
                  single_vector: bool = False,
                  qformer: Mapping[str, Any] | None = None) -> MiniBlip2Backbone:
    """The mini BLIP-2 over a frozen ``encoder``; its vocabulary comes from ``texts``."""
    torch.manual_seed(seed)
    tokenizer = WordTokenizer.from_corpus(texts)
    config = QFormerConfig.from_dict(dict(qformer)) if qformer else None
    return MiniBlip2Backbone(tokenizer, image_encoder=encoder, qformer=config,
                             single_vector=single_vector)


def preprocess_config(encoder: PatchEncoder) -> dict[str, Any]:
    return simple_transform(encoder.config.image_size).config


def load_pretrained(path: str | Path, *, single_vector: bool) -> Any:
    """A pretrained backbone checkpoint, refused if its variant differs from the run's."""
    backbone, _ = load_backbone(path)
    if bool(backbone.config.get("single_vector")) != single_vector:
        raise ValueError(f"{path}: pretrained backbone has single_vector="
                         f"{backbone.config.get('single_vector')}, the run wants {single_vector}")
    return backbone


def load_run_model(run_dir: str | Path, device: torch.device | str = "cpu", *,
                   frozen_source: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """The final backbone of a training run (on ``device``, in eval mode) and its
    summary (``metrics.json``). Its frozen part comes from ``frozen_source`` if given,
    else from the file ``model.pt`` records (see :func:`~qure.models.load_backbone`)."""
    run_dir = Path(run_dir)
    backbone, extra = load_backbone(run_dir / "model.pt", frozen_source=frozen_source)
    backbone.to(device).eval()
    summary = extra.get("summary") or read_json(run_dir / "metrics.json", dict)
    return backbone, summary


def features_by_name(cache: FeatureCache) -> FeaturesByName:
    """The cache as the trainer and evaluator read it (fp16 rows over the memory map)."""
    return FeaturesByName(list(cache.names), cache.as_tensor())


def open_features(path: str | Path, backbone: Any) -> FeaturesByName:
    """A feature cache as a table, refused unless it came from ``backbone``'s frozen part."""
    cache = FeatureCache.open_for(path, backbone, FeatureCache.recorded_preprocess(path))
    return features_by_name(cache)

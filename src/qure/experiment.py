"""Glue shared by the workflow's command-line steps: open benchmarks, pretrain the mini
frozen encoder, cache frozen features, build backbones and the oracle's relevance.

Each function takes explicit paths and settings (nothing is read from the environment or
a default location), so the same calls serve the synthetic default and real data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from qure.data import open_dataset
from qure.data.base import CIRSplit
from qure.errors import MissingImageError
from qure.evaluation import HEADLINE_METRIC, FeatureTable, evaluate
from qure.io import atomic_torch_save, atomic_write_json
from qure.models import (
    MiniBlip2Backbone,
    PatchEncoder,
    PatchEncoderConfig,
    QFormerConfig,
    WordTokenizer,
    pretrain_image_encoder,
    save_backbone,
)
from qure.models.feature_cache import FeatureCache, build_feature_cache, image_loader
from qure.models.preprocess import load_image, simple_transform
from qure.training.data import TrainingData
from qure.training.trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)

#: Splits used for training and validation per dataset (FashionIQ: every category).
TRAIN_SPLIT = {"fashioniq": "train", "cirr": "train"}
VAL_SPLIT = {"fashioniq": "val", "cirr": "val", "circo": "val"}


def load_splits(dataset: str, root: str | Path, split: str,
                **options: Any) -> list[CIRSplit]:
    """Every category of ``split`` (one entry for datasets without categories)."""
    benchmark = open_dataset(dataset, root, **options)
    return [benchmark.load_split(split, category) for category in benchmark.categories]


def split_images(splits: Iterable[CIRSplit]) -> list[str]:
    """Gallery and query images of the splits, each once, in first-seen order."""
    return list(dict.fromkeys(name for split in splits for name in split.images()))


def image_locator(splits: Sequence[CIRSplit]) -> Callable[[str], Path]:
    """``name -> image file`` over the splits' galleries; raises naming what is missing."""

    def locate(name: str) -> Path:
        tried: list[Path] = []
        for split in splits:
            if name in split.gallery:
                found = split.gallery.find(name)
                if found is not None:
                    return found
                tried.extend(split.gallery.locate(name))
        raise MissingImageError(name, tried)

    return locate


def attribute_caption(attributes: Mapping[str, str]) -> str:
    """A plain caption of an image's attributes for encoder pretraining."""
    return " ".join(f"{value} {name}" for name, value in attributes.items())


# --- the mini frozen encoder ---------------------------------------------------------------

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


def extract_features(path: str | Path, names: Sequence[str], locate: Callable[[str], Path],
                     encoder: PatchEncoder, *, batch_size: int = 128,
                     progress: bool = True) -> FeatureCache:
    """Frozen features of every name, cached (fp16, memory-mapped) at ``path``."""
    backbone = mini_backbone(encoder)
    transform = simple_transform(encoder.config.image_size)
    return build_feature_cache(path, names, image_loader(locate, transform), backbone,
                               transform.config, batch_size=batch_size, progress=progress)


def feature_table(cache: FeatureCache) -> FeatureTable:
    """The cache as the trainer and evaluator read it (fp16 rows over the memory map)."""
    return FeatureTable(list(cache.names), cache.as_tensor())


# --- the oracle ------------------------------------------------------------------------------

def training_relevance(oracle: Any, data: TrainingData, split: str = "train") -> torch.Tensor:
    """[Q, N] oracle relevance of corpus columns to training queries, within the group."""
    relevant = oracle.relevance_matrix(split, data.query_ids, data.corpus)
    return relevant & (data.query_group[:, None] == data.corpus_group[None, :])


# --- whole steps, as the workflow runs them ----------------------------------------------------

def benchmark_oracle(root: str | Path) -> Any | None:
    """The synthetic benchmark's relevance oracle, or None for real data."""
    from qure.synthetic.oracle import ORACLE_FILE, load_oracle

    return load_oracle(root) if (Path(root) / ORACLE_FILE).is_file() else None


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


def features_step(dataset: str, root: str | Path, encoder_path: str | Path,
                  out: str | Path, *, batch_size: int = 128,
                  progress: bool = True) -> FeatureCache:
    """Cache frozen features of every image of every split the dataset has on disk."""
    benchmark = open_dataset(dataset, root)
    splits = [benchmark.load_split(s, c) for s, c in benchmark.subsets()]
    return extract_features(out, split_images(splits), image_locator(splits),
                            load_encoder(encoder_path), batch_size=batch_size,
                            progress=progress)


def train_step(dataset: str, root: str | Path, features: str | Path,
               encoder_path: str | Path, out_dir: str | Path, config: TrainConfig, *,
               single_vector: bool = False, qformer: Mapping[str, Any] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Train one (dataset, method, strategy, backbone variant) run and summarise it.

    Writes under ``out_dir``: ``checkpoint.pt`` (resume state, every epoch),
    ``epochs.jsonl`` (per-epoch history), ``snapshots/`` (score rows for the steepness
    figures), ``model.pt`` (the final backbone) and ``metrics.json`` (the summary this
    function returns). A run interrupted at any point resumes from its last epoch.
    """
    out_dir = Path(out_dir)
    train_splits = load_splits(dataset, root, TRAIN_SPLIT[dataset])
    val_splits = load_splits(dataset, root, VAL_SPLIT[dataset])
    encoder = load_encoder(encoder_path)
    backbone = mini_backbone(encoder, (q.text for s in train_splits for q in s),
                             seed=config.seed, single_vector=single_vector, qformer=qformer)
    cache = FeatureCache.open_for(features, backbone, preprocess_config(encoder))
    table = feature_table(cache)
    data = TrainingData.from_splits(train_splits)
    oracle = benchmark_oracle(root)
    relevant = training_relevance(oracle, data) if oracle is not None else None
    untrained = evaluate(backbone, table, val_splits)
    trainer = Trainer(backbone, data, table, config, out_dir, val_splits=val_splits,
                      relevant=relevant, progress=progress)
    history = trainer.fit()
    headline = HEADLINE_METRIC[dataset]
    best = max(history, key=lambda r: r["val"][headline])
    summary = {
        "dataset": dataset,
        "profile": "synthetic" if oracle is not None else "real",
        "backbone": {"name": backbone.name, "single_vector": single_vector,
                     "parameters": backbone.parameter_counts()},
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
    }
    save_backbone(out_dir / "model.pt", backbone, extra={"summary": summary})
    atomic_write_json(out_dir / "metrics.json", summary)
    return summary

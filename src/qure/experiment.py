"""Glue shared by the workflow's command-line steps: open benchmarks, pretrain the mini
frozen encoder, cache frozen features, build backbones and the oracle's relevance.

Each function takes explicit paths and settings (nothing is read from the environment or
a default location), so the same calls serve the synthetic default and real data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
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
    load_backbone,
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


def study_splits(dataset: str, root: str | Path) -> list[CIRSplit]:
    """The splits the workflow trains and evaluates on (test splits are left out: their
    targets are hidden and the study reports validation numbers)."""
    names = [s for s in (TRAIN_SPLIT.get(dataset), VAL_SPLIT.get(dataset)) if s]
    return [split for name in names for split in load_splits(dataset, root, name)]


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
    """Cache frozen features of every image the study reads: the training split (where
    the dataset has one) and the validation split, every category."""
    splits = study_splits(dataset, root)
    return extract_features(out, split_images(splits), image_locator(splits),
                            load_encoder(encoder_path), batch_size=batch_size,
                            progress=progress)


def train_step(dataset: str, root: str | Path, features: str | Path,
               encoder_path: str | Path | None, out_dir: str | Path, config: TrainConfig, *,
               single_vector: bool = False, qformer: Mapping[str, Any] | None = None,
               init: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one (dataset, method, strategy, backbone variant) run and summarise it.

    Writes under ``out_dir``: ``checkpoint.pt`` (resume state, every epoch),
    ``epochs.jsonl`` (per-epoch history), ``snapshots/`` (score rows for the steepness
    figures), ``model.pt`` (the final backbone) and ``metrics.json`` (the summary this
    function returns). A run interrupted at any point resumes from its last epoch.
    """
    out_dir = Path(out_dir)
    train_splits = load_splits(dataset, root, TRAIN_SPLIT[dataset])
    val_splits = load_splits(dataset, root, VAL_SPLIT[dataset])
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
    }
    bundle_snapshots(out_dir)
    save_backbone(out_dir / "model.pt", backbone, extra={"summary": summary})
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


def load_pretrained(path: str | Path, *, single_vector: bool) -> Any:
    """A pretrained backbone checkpoint, refused if its variant differs from the run's."""
    backbone, _ = load_backbone(path)
    if bool(backbone.config.get("single_vector")) != single_vector:
        raise ValueError(f"{path}: pretrained backbone has single_vector="
                         f"{backbone.config.get('single_vector')}, the run wants {single_vector}")
    return backbone


def pretrain_qformer_step(benchmarks: Mapping[str, str | Path],
                          features: Mapping[str, str | Path], encoder_path: str | Path,
                          out_dir: str | Path, config: TrainConfig, *,
                          single_vector: bool = False, progress: bool = True
                          ) -> dict[str, Any]:
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
                      progress=progress)
    history = trainer.fit()
    summary = {"benchmarks": {k: str(v) for k, v in benchmarks.items()},
               "config": config.to_dict(), "single_vector": single_vector,
               "train_queries": len(data), "final": history[-1]["val"],
               "train_seconds": round(sum(r["seconds"] for r in history), 3)}
    save_backbone(out_dir / "model.pt", backbone, extra={"summary": summary})
    atomic_write_json(out_dir / "metrics.json", summary)
    return summary


def backbone_features_step(dataset: str, root: str | Path, backbone_path: str | Path,
                           out: str | Path, *, batch_size: int = 32,
                           image_root: str | Path | None = None,
                           progress: bool = True) -> FeatureCache:
    """Frozen features of a benchmark from a saved backbone (the BLIP-2 ViT-L path):
    QuRe's TargetPad 1.25 -> 224 bicubic transform with CLIP normalisation."""
    from qure.models.preprocess import targetpad_transform

    backbone, _ = load_backbone(backbone_path)
    backbone.eval()
    transform = targetpad_transform(1.25, 224)
    if dataset == "hp_fashioniq":
        from qure.workflow.steps import hp_image_locator

        names, locate = hp_image_locator(root, image_root)
    else:
        splits = study_splits(dataset, root)
        names, locate = split_images(splits), image_locator(splits)
    return build_feature_cache(out, names, image_loader(locate, transform), backbone,
                               transform.config, batch_size=batch_size, progress=progress)


def bundle_snapshots(run_dir: str | Path) -> Path:
    """Collect the run's per-definition score snapshots into one ``snapshots.pt``
    (``{"snapshots": [...]}`` in epoch order), the file the steepness figures read."""
    run_dir = Path(run_dir)
    files = sorted((run_dir / "snapshots").glob("epoch_*.pt"))
    snapshots = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    return atomic_torch_save(run_dir / "snapshots.pt", {"snapshots": snapshots})

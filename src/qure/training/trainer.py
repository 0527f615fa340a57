"""QuRe's training loop (and the contrastive baseline) with exact resume.

Per epoch, as released: the learning rate follows an epoch-wise cosine to init/100;
under warm-up the negatives come uniformly from the query's corpus group; at every
re-definition epoch the current model scores all training queries against the corpus
and the hard-negative sets are rebuilt; one negative per query is drawn; the reward
loss -log sigmoid((s_pos - s_neg) / tau) is minimised with AdamW.

Exact resume: every random choice (query order, negatives, dropout) is a pure function
of (seed, epoch), and the checkpoint written after each epoch holds the model, the
optimiser, the AMP scaler, the current hard sets and the history. A run killed at any
point restarts from the last finished epoch and produces identical numbers.

The checkpoint's model holds only the weights outside the backbone's frozen part
(:meth:`~qure.models.CIRBackbone.frozen_keys`; BLIP-2's ViT-L is never trained) plus the
frozen part's fingerprint: a resume takes the frozen weights from the backbone it is
given and refuses them unless their fingerprint is the recorded one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from qure.data.base import CIRSplit
from qure.evaluation import (
    HEADLINE_METRIC,
    FeaturesByName,
    encode_gallery,
    encode_queries,
    evaluate,
)
from qure.io import atomic_torch_save, atomic_write_text
from qure.losses import info_nce, reward_loss
from qure.mining import STRATEGIES, HardNegativeSets, mine_grouped
from qure.training.data import TrainingData
from qure.training.sampler import (
    SAMPLING_MODES,
    epoch_permutation,
    seeded_generator,
    set_negatives,
    warmup_negatives,
)
from qure.training.schedule import cosine_lr, redefinition_epochs

log = logging.getLogger(__name__)

METHODS = ("qure", "contrastive")
CHECKPOINT_FORMAT = 2
"""2: ``model`` without the frozen keys, plus ``frozen_fingerprint``. 1 (complete model
state) is still resumed from, strictly."""
LEGACY_CHECKPOINT_FORMATS = (1,)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's numbers."""

    method: str = "qure"
    """``qure``: reward loss with one sampled negative; ``contrastive``: in-batch InfoNCE."""
    strategy: str = "qure"
    """Hard-negative strategy after warm-up (``all`` = warm-up sampling throughout)."""
    strategy_params: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 0.05
    batch_size: int = 32
    n_def: int = 6
    warmup: bool = True
    min_lr_ratio: float = 0.01
    sampling: str = "without_replacement"
    exclude_reference: bool = False
    """Never use the query's reference as its negative (the release does not exclude it)."""
    seed: int = 0
    amp: bool = True
    """fp16 autocast + GradScaler, used only on CUDA (the CPU always runs fp32)."""
    eval_batch_size: int = 256
    snapshot_queries: int = 8

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, "method", f"one of {METHODS}"),
            (self.strategy in STRATEGIES, "strategy", f"one of {STRATEGIES}"),
            (self.sampling in SAMPLING_MODES, "sampling", f"one of {SAMPLING_MODES}"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.batch_size >= 2, "batch_size", ">= 2"),
            (self.n_def >= 1, "n_def", ">= 1"),
            (self.lr > 0, "lr", "> 0"),
            (0 < self.min_lr_ratio <= 1, "min_lr_ratio", "in (0, 1]"),
            (self.snapshot_queries >= 0, "snapshot_queries", ">= 0"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"train.{key} must be {expected}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["strategy_params"] = dict(self.strategy_params)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown train config key(s): {', '.join(unknown)}")
        return cls(**values)

    @property
    def mines(self) -> bool:
        return self.method == "qure" and self.strategy != "all"


def _set_stats(sets: HardNegativeSets, relevant: torch.Tensor | None) -> dict[str, Any]:
    sizes = sets.sizes.double()
    stats: dict[str, Any] = {
        "size_mean": float(sizes.mean()),
        "size_median": float(sizes.median()),
        "size_min": int(sizes.min()),
        "size_max": int(sizes.max()),
        "fallback_queries": int(sets.fallback.sum()),
        "empty_queries": int((sets.sizes == 0).sum()),
    }
    if relevant is not None:
        rows = torch.repeat_interleave(torch.arange(len(sets)), sets.sizes)
        hits = relevant[rows, sets.indices.long()]
        per_query = torch.zeros(len(sets), dtype=torch.float64).index_add_(
            0, rows, hits.double())
        stats["false_negative_rate"] = float(hits.double().mean()) if hits.numel() else 0.0
        stats["queries_with_false_negatives"] = int((per_query > 0).sum())
    return stats


class Trainer:
    """Trains ``backbone`` on ``data``; writes checkpoints, history and snapshots to
    ``out_dir``.

    ``relevant`` is an optional [Q, N] boolean oracle over training queries x corpus
    columns (synthetic benchmarks only): it measures how many false negatives each
    hard-negative set lets in. ``on_step`` is called with the global step after every
    optimiser step (tests use it to simulate a crash).
    """

    def __init__(self, backbone: torch.nn.Module, data: TrainingData, table: FeaturesByName,
                 config: TrainConfig, out_dir: str | Path, *,
                 val_splits: Sequence[CIRSplit] = (), relevant: torch.Tensor | None = None,
                 device: str | torch.device = "cpu",
                 on_step: Callable[[int], None] | None = None, progress: bool = True):
        self.backbone = backbone.to(device)
        # The frozen part never changes during a run: its keys and fingerprint once.
        frozen_keys = getattr(backbone, "frozen_keys", None)
        self.frozen_keys = frozenset(frozen_keys() if frozen_keys is not None else ())
        self.frozen_fingerprint = (backbone.frozen_fingerprint() if self.frozen_keys
                                   else None)
        self.data = data
        self.table = table
        self.config = config
        self.out_dir = Path(out_dir)
        self.val_splits = list(val_splits)
        if relevant is not None and tuple(relevant.shape) != (len(data), data.num_columns):
            raise ValueError(f"relevant must be [{len(data)}, {data.num_columns}], got "
                             f"{tuple(relevant.shape)}")
        self.relevant = relevant
        self.device = torch.device(device)
        self.on_step = on_step
        self.progress = progress
        self.use_amp = config.amp and self.device.type == "cuda"
        self.ref_rows = table.rows(data.references)
        self.corpus_rows = table.rows(data.corpus)
        params = list(backbone.trainable_parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.sets: HardNegativeSets | None = None
        self.defined_at: int | None = None
        self.history: list[dict[str, Any]] = []
        self.next_epoch = 0
        self.redefine_at = set(redefinition_epochs(config.epochs, config.n_def, config.warmup)
                               if config.mines else [])
        count = min(config.snapshot_queries, len(data))
        self.snapshot_rows = (torch.linspace(0, len(data) - 1, count).round().long()
                              if count else torch.zeros(0, dtype=torch.long))

    # --- paths -------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def history_path(self) -> Path:
        return self.out_dir / "epochs.jsonl"

    def snapshot_path(self, epoch: int) -> Path:
        return self.out_dir / "snapshots" / f"epoch_{epoch:03d}.pt"

    # --- checkpointing -----------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        sets = None
        if self.sets is not None:
            sets = {"indices": self.sets.indices, "offsets": self.sets.offsets,
                    "fallback": self.sets.fallback, "num_columns": self.sets.num_columns,
                    "strategy": self.sets.strategy, "params": dict(self.sets.params)}
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "backbone_config": getattr(self.backbone, "config", None),
            "next_epoch": self.next_epoch,
            "model": self._model_state(),
            "frozen_fingerprint": self.frozen_fingerprint,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sets": sets,
            "defined_at": self.defined_at,
            "history": self.history,
        }
        atomic_torch_save(self.checkpoint_path, state)
        self._write_history()

    def _model_state(self) -> dict[str, torch.Tensor]:
        """The model's state without its frozen part (what a resume needs)."""
        return {k: v for k, v in self.backbone.state_dict().items()
                if k not in self.frozen_keys}

    def _load_model_state(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint's model: exactly the non-frozen keys, over frozen weights
        whose fingerprint is the one the checkpoint was written with."""
        path = self.checkpoint_path
        if state.get("frozen_fingerprint") != self.frozen_fingerprint:
            raise ValueError(f"{path} was written over other frozen weights than this "
                             "backbone's (frozen fingerprints differ); remove it or "
                             "restore the original frozen weights")
        current = self.backbone.state_dict()
        expected = {k for k in current if k not in self.frozen_keys}
        saved = set(state["model"])
        missing, unexpected = sorted(expected - saved), sorted(saved - expected)
        if missing or unexpected:
            raise RuntimeError(f"{path}: model state does not match the backbone: missing "
                               f"{', '.join(missing[:5]) or 'none'}; unexpected "
                               f"{', '.join(unexpected[:5]) or 'none'}")
        full = {k: v for k, v in current.items() if k in self.frozen_keys}
        full.update(state["model"])
        self.backbone.load_state_dict(full, strict=True)

    def _resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("format") not in (CHECKPOINT_FORMAT, *LEGACY_CHECKPOINT_FORMATS):
            raise ValueError(f"{self.checkpoint_path}: unsupported checkpoint format "
                             f"{state.get('format')!r}")
        saved = state["config"]
        current = self.config.to_dict()
        differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if differ:
            raise ValueError(f"{self.checkpoint_path} was written with a different training "
                             f"config (keys: {', '.join(differ)}); remove it or restore "
                             "the config")
        if state["format"] == CHECKPOINT_FORMAT:
            self._load_model_state(state)
        else:  # format 1: the complete model state, frozen part included
            self.backbone.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if state["sets"] is not None:
            s = state["sets"]
            self.sets = HardNegativeSets(s["indices"], s["offsets"], s["fallback"],
                                         s["num_columns"], s["strategy"], s["params"])
        self.defined_at = state["defined_at"]
        self.history = state["history"]
        self.next_epoch = state["next_epoch"]
        log.info("resumed from %s at epoch %d", self.checkpoint_path, self.next_epoch)
        return True

    # --- pieces of an epoch --------------------------------------------------------------

    def _embed_training_queries(self) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            queries = encode_queries(self.backbone, self.table, self.data.references,
                                     self.data.texts, self.config.eval_batch_size)
            corpus = encode_gallery(self.backbone, self.table, self.data.corpus,
                                    self.config.eval_batch_size)
        finally:
            self.backbone.train(was_training)
        return queries, corpus

    def _snapshot(self, epoch: int, queries: torch.Tensor, corpus: torch.Tensor,
                  label: str) -> None:
        """Score rows of a few fixed queries over their corpus group (steepness figures)."""
        if not self.snapshot_rows.numel():
            return
        rows = self.snapshot_rows
        scores = self.backbone.score(queries[rows], corpus).float()
        in_group = self.data.corpus_group[None, :] == self.data.query_group[rows, None]
        state = {"epoch": epoch, "label": label, "rows": rows,
                 "query_ids": [self.data.query_ids[i] for i in rows.tolist()],
                 "scores": scores.masked_fill(~in_group, float("-inf")),
                 "target": self.data.target[rows], "strategy": self.config.strategy,
                 "strategy_params": dict(self.config.strategy_params)}
        atomic_torch_save(self.snapshot_path(epoch), state)

    def _define_sets(self, epoch: int, queries: torch.Tensor,
                     corpus: torch.Tensor) -> dict[str, Any]:
        cfg = self.config
        exclude = self.data.reference_column if cfg.exclude_reference else None
        started = time.perf_counter()
        self.sets = mine_grouped(queries, corpus, self.data.query_group,
                                 self.data.corpus_group, self.data.target, cfg.strategy,
                                 exclude_index=exclude, **cfg.strategy_params)
        self.defined_at = epoch
        stats = _set_stats(self.sets, self.relevant)
        stats["seconds"] = round(time.perf_counter() - started, 3)
        log.info("epoch %d: %s sets defined, mean size %.1f, median %.1f", epoch,
                 cfg.strategy, stats["size_mean"], stats["size_median"])
        return stats

    def _negatives(self, epoch: int) -> tuple[torch.Tensor, str]:
        cfg = self.config
        warm = warmup_negatives(self.data, cfg.seed, epoch)
        if self.sets is None or self.defined_at is None:
            return warm, "warmup"
        drawn = set_negatives(self.sets, cfg.seed, self.defined_at, epoch, cfg.sampling)
        # An empty set (fallback "empty") falls back to a warm-up draw for that query.
        return torch.where(drawn >= 0, drawn, warm), "hard_sets"

    def _step_loss(self, batch: torch.Tensor, negatives: torch.Tensor | None) -> torch.Tensor:
        features = self.table.features
        device = self.device
        refs = features[self.ref_rows[batch]].float().to(device)
        texts = [self.data.texts[i] for i in batch.tolist()]
        targets_cols = self.corpus_rows[self.data.target[batch]]
        with torch.autocast(device.type, dtype=torch.float16, enabled=self.use_amp):
            query = self.backbone.encode_queries(refs, texts)
            if negatives is None:
                target_tokens = self.backbone.encode_images(
                    features[targets_cols].float().to(device))
                return info_nce(query.float(), target_tokens.float(), self.backbone.temperature)
            # Targets and negatives go through the image branch in one batch.
            image_rows = torch.cat([targets_cols, self.corpus_rows[negatives[batch]]])
            tokens = self.backbone.encode_images(features[image_rows].float().to(device))
            pos_tokens, neg_tokens = tokens.float().split(len(batch))
            query = query.float()
            s_pos = torch.einsum("bd,btd->bt", query, pos_tokens).amax(-1)
            s_neg = torch.einsum("bd,btd->bt", query, neg_tokens).amax(-1)
            return reward_loss(s_pos, s_neg, self.backbone.temperature)

    def _train_epoch(self, epoch: int, negatives: torch.Tensor | None) -> tuple[float, int]:
        cfg = self.config
        order = epoch_permutation(len(self.data), cfg.seed, epoch)
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches = batches[:-1]  # a 1-query batch has no in-batch negative
        self.backbone.train()
        total, steps = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch}", leave=False,
                   disable=not self.progress or None)
        for batch in bar:
            loss = self._step_loss(batch, negatives)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}: non-finite loss {loss.item()}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.item()
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
            if self.on_step is not None:
                self.on_step(sum(r.get("steps", 0) for r in self.history) + steps)
        return total / max(steps, 1), steps

    # --- the loop ------------------------------------------------------------------------

    def fit(self) -> list[dict[str, Any]]:
        """Run (or resume) training to ``config.epochs``; return the per-epoch history."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._resume()
        headline = None
        if self.val_splits:
            headline = HEADLINE_METRIC.get(self.val_splits[0].dataset)
        for epoch in range(self.next_epoch, cfg.epochs):
            started = time.perf_counter()
            lr = cosine_lr(epoch, cfg.epochs, cfg.lr, cfg.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            # Dropout and any other torch randomness: a function of (seed, epoch) only.
            torch.manual_seed(int(seeded_generator(cfg.seed, "torch", epoch).initial_seed()))
            record: dict[str, Any] = {"epoch": epoch, "lr": lr}
            redefine = epoch in self.redefine_at
            if redefine or (epoch == 0 and self.snapshot_rows.numel()):
                queries, corpus = self._embed_training_queries()
                if epoch == 0:
                    self._snapshot(epoch, queries, corpus, "before training")
                if redefine:
                    if epoch != 0:
                        self._snapshot(epoch, queries, corpus, f"before epoch {epoch}")
                    record["hard_set"] = self._define_sets(epoch, queries, corpus)
            if cfg.method == "contrastive":
                negatives, source = None, "in_batch"
            else:
                negatives, source = self._negatives(epoch)
            record["negatives"] = source
            record["hard_set_defined_at"] = self.defined_at
            loss, steps = self._train_epoch(epoch, negatives)
            record.update(loss=loss, steps=steps,
                          temperature=float(self.backbone.temp.detach().float()))
            if self.val_splits:
                val = evaluate(self.backbone, self.table, self.val_splits,
                               cfg.eval_batch_size)
                record["val"] = val
                if headline in val:
                    record["val_headline"] = val[headline]
            record["seconds"] = round(time.perf_counter() - started, 3)
            self.history.append(record)
            self.next_epoch = epoch + 1
            self._save_checkpoint()
            log.info("epoch %d: loss %.4f, tau %.4f%s", epoch, loss, record["temperature"],
                     f", val {headline} {record['val_headline']:.2f}"
                     if "val_headline" in record else "")
        # A run resumed after its last epoch (its outputs deleted by a workflow rerun)
        # still leaves its history beside the checkpoint.
        self._write_history()
        return self.history

    def _write_history(self) -> None:
        lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in self.history)
        atomic_write_text(self.history_path, lines)

"""What a CIR backbone offers the trainer, the miner and the evaluator.

The split mirrors QuRe's BLIP-2 model (``blip2_qure``):

* :meth:`CIRBackbone.frozen_features` is the frozen image encoder (BLIP-2's CLIP ViT-L,
  ``freeze_vit=True``): expensive, never trained, so its output is cached once per image
  (:mod:`qure.models.feature_cache`) and every later stage starts from it;
* :meth:`CIRBackbone.encode_images` turns frozen features into T per-token target
  embeddings (``vision_proj`` of the Q-Former query outputs, T=32 in BLIP-2);
* :meth:`CIRBackbone.encode_queries` turns a reference's frozen features plus the
  modification text into one query embedding (mean of ``text_proj`` over the query
  outputs);
* :meth:`CIRBackbone.score` is the max over the T target tokens of the dot product (the
  release's ``score()``: ``einsum('ik,jlk->ijl')`` then ``.max(-1)``), without temperature.

The temperature is QuRe's raw ``temp`` parameter: initialised to 0.07, trained with the
rest (weight decay included) and *not* clamped, unlike LAVIS' ``blip2_qformer`` which
clamps it to [0.001, 0.5]. A backbone may opt into such a clamp through its config.

Backbones are rebuilt from their :attr:`CIRBackbone.config` by :func:`build_backbone`
and load state dicts strictly: QuRe's ``strict=False`` loading silently ignores
mismatched keys, which this package refuses to do.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from qure.io import atomic_torch_save

# Upper bound on the elements of one [Q, chunk, T] block in :func:`max_sim_scores`
# (2**24 float32 = 64 MiB), so a full train-set gallery never needs 60 GB at once.
SCORE_BLOCK_ELEMENTS = 1 << 24

_REGISTRY: dict[str, type[CIRBackbone]] = {}


def register_backbone(cls: type[CIRBackbone]) -> type[CIRBackbone]:
    """Class decorator: make ``cls`` buildable by :func:`build_backbone` under ``cls.name``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"backbone name {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def build_backbone(config: Mapping[str, Any]) -> CIRBackbone:
    """A freshly initialised backbone of the kind and sizes ``config`` describes."""
    name = config.get("name")
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ValueError(f"unknown backbone {name!r}; registered: {known}")
    return _REGISTRY[name].from_config(config)


def max_sim_scores(queries: torch.Tensor, images: torch.Tensor,
                   chunk_size: int | None = None) -> torch.Tensor:
    """``scores[q, n] = max_t <queries[q], images[n, t]>``; shape [Q, N].

    The gallery is processed in chunks of ``chunk_size`` images (default: as many as keep
    a [Q, chunk, T] block under :data:`SCORE_BLOCK_ELEMENTS`), so the full Q x N x T
    tensor is never materialised. Differentiable; chunking does not change the result.
    """
    if queries.dim() != 2 or images.dim() != 3 or queries.shape[-1] != images.shape[-1]:
        raise ValueError(f"expected queries [Q,D] and images [N,T,D], got "
                         f"{tuple(queries.shape)} and {tuple(images.shape)}")
    n, t, d = images.shape
    if chunk_size is None:
        chunk_size = max(1, SCORE_BLOCK_ELEMENTS // max(queries.shape[0] * t, 1))
    if chunk_size >= n:
        return (queries @ images.reshape(n * t, d).t()).view(-1, n, t).amax(-1)
    blocks = []
    for start in range(0, n, chunk_size):
        chunk = images[start:start + chunk_size]
        m = chunk.shape[0]
        blocks.append((queries @ chunk.reshape(m * t, d).t()).view(-1, m, t).amax(-1))
    return torch.cat(blocks, dim=1)


def state_fingerprint(state: Mapping[str, torch.Tensor], extra: Mapping[str, Any] | None = None
                      ) -> str:
    """SHA-256 over a state dict's names, shapes, dtypes and bytes, plus a JSON-able
    ``extra`` (e.g. the preprocessing config). Stable across processes and machines."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        header = f"{key}|{tuple(tensor.shape)}|{tensor.dtype}\n"
        digest.update(header.encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    if extra is not None:
        digest.update(json.dumps(extra, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


class CIRBackbone(nn.Module, ABC):
    """A composed-image-retrieval model split into a frozen and a trainable part."""

    name: ClassVar[str]
    temp: nn.Parameter
    temperature_clamp: tuple[float, float] | None = None

    # --- the frozen part ---------------------------------------------------------------

    @abstractmethod
    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [B,3,H,W] -> frozen patch features [B,P,C] (no gradient)."""

    @abstractmethod
    def frozen_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights :meth:`frozen_features` depends on (for cache fingerprints)."""

    # --- the trainable part ------------------------------------------------------------

    @abstractmethod
    def encode_images(self, frozen: torch.Tensor) -> torch.Tensor:
        """Frozen features [B,P,C] -> target embeddings [B,T,D], L2-normalised per token."""

    @abstractmethod
    def encode_queries(self, frozen_ref: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Reference features [B,P,C] + modification texts -> queries [B,D], L2-normalised."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: Mapping[str, Any]) -> CIRBackbone:
        """A freshly initialised backbone for ``config`` (see :func:`build_backbone`)."""

    @property
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able description that :func:`build_backbone` rebuilds this model from."""

    # --- shared behaviour --------------------------------------------------------------

    @property
    @abstractmethod
    def num_image_tokens(self) -> int:
        """T, the number of embeddings per gallery image."""

    @property
    def temperature(self) -> torch.Tensor:
        """The learned temperature τ (scores are divided by it in the losses).

        QuRe's raw ``temp`` parameter: not clamped unless ``temperature_clamp`` is set
        (from the config) (LAVIS ``blip2_qformer`` uses [0.001, 0.5]).
        """
        if self.temperature_clamp is None:
            return self.temp
        low, high = self.temperature_clamp
        return self.temp.clamp(low, high)

    def score(self, queries: torch.Tensor, images: torch.Tensor,
              chunk_size: int | None = None) -> torch.Tensor:
        """Max over the T image tokens of ⟨query, token⟩: [Q,D] x [N,T,D] -> [Q,N].

        No temperature (as the release's evaluation ``score()``); see
        :func:`max_sim_scores` for the chunking.
        """
        return max_sim_scores(queries, images, chunk_size)

    def encode_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`encode_images` of :meth:`frozen_features`, for images not in a cache."""
        return self.encode_images(self.frozen_features(images))

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter with ``requires_grad`` (QuRe hands all of them to AdamW)."""
        return [p for _, p in self.named_trainable_parameters()]

    def parameter_counts(self) -> dict[str, int]:
        """Number of trainable and frozen parameters."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": trainable, "frozen": total - trainable, "total": total}

    def frozen_fingerprint(self, preprocess: Mapping[str, Any] | None = None) -> str:
        """Hash of the frozen weights and the preprocessing that feeds them."""
        return state_fingerprint(self.frozen_state_dict(), {"preprocess": preprocess})

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Strict only: a missing or unexpected key is an error, never a warning."""
        if not strict:
            raise ValueError(f"{type(self).__name__} loads state dicts strictly "
                             "(QuRe's strict=False hides mismatched checkpoints)")
        return super().load_state_dict(state_dict, strict=True, assign=assign)


def save_backbone(path: str | Path, backbone: CIRBackbone,
                  extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"config", "state_dict", "extra"}`` atomically with ``torch.save``."""
    payload = {"config": backbone.config,
               "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
               "extra": dict(extra or {})}
    return atomic_torch_save(path, payload)


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu",
                  ) -> tuple[CIRBackbone, dict[str, Any]]:
    """Rebuild a backbone saved by :func:`save_backbone` (strict load); returns it and
    the saved ``extra`` dict."""
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    backbone = build_backbone(payload["config"])
    try:
        backbone.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise RuntimeError(f"{path}: checkpoint does not match its config: {err}") from err
    return backbone, payload.get("extra", {})


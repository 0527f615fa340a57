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

Trained models do not repeat the frozen part (for BLIP-2 ViT-L, ``visual_encoder.*``,
about 1.2 GB in fp32 per run): :func:`save_backbone` with ``frozen_source`` writes the
state dict without :meth:`CIRBackbone.frozen_keys` and records the file those weights
came from and their fingerprint; :func:`load_backbone` reads them back from that file
and refuses weights whose fingerprint differs.
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
from qure.scoring import max_sim_scores  # the one max-over-tokens scorer

# ``max_sim_scores`` lives in :mod:`qure.scoring`, shared with the miner;
# ``qure.models.max_sim_scores`` and ``qure.models.interface.max_sim_scores`` still work.

#: How many ``frozen`` payloads :func:`load_backbone` follows to reach the frozen weights.
MAX_FROZEN_CHAIN = 8

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


class FrozenWeightsError(RuntimeError):
    """The frozen weights a model file relies on are missing or not the ones it recorded."""


class CIRBackbone(nn.Module, ABC):
    """A composed-image-retrieval model split into a frozen and a trainable part."""

    name: ClassVar[str]
    temp: nn.Parameter
    temperature_clamp: tuple[float, float] | None = None
    frozen_prefix: ClassVar[str | None] = None
    """Where :meth:`frozen_state_dict`'s keys sit in :meth:`state_dict` (``"visual_encoder."``
    when the frozen part is ``self.visual_encoder``); a backbone that leaves it ``None``
    overrides :meth:`frozen_key_map`."""

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

    def frozen_key_map(self) -> dict[str, str]:
        """``{frozen_state_dict key: state_dict key}`` for every frozen weight.

        With :attr:`frozen_prefix` set, the prefix is prepended; otherwise each tensor of
        :meth:`frozen_state_dict` is found in :meth:`state_dict` as the same tensor (same
        storage, offset, shape, strides, dtype) under a name ending in its own key -- true
        whenever the frozen part is a submodule (``visual_encoder`` in both backbones).
        A frozen weight that cannot be placed this way is an error, never a guess.
        """
        full = self.state_dict()
        if self.frozen_prefix is not None:
            mapping = {key: self.frozen_prefix + key for key in self.frozen_state_dict()}
            missing = sorted(v for v in mapping.values() if v not in full)
            if missing:
                raise RuntimeError(f"{type(self).__name__}: frozen weights not in its state "
                                   f"dict: {', '.join(missing[:5])}")
            return mapping

        def identity(t: torch.Tensor) -> tuple[Any, ...]:
            return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(),
                    tuple(t.shape), tuple(t.stride()), t.dtype)

        by_identity: dict[tuple[Any, ...], list[str]] = {}
        for name, tensor in full.items():
            by_identity.setdefault(identity(tensor), []).append(name)
        mapping = {}
        for key, tensor in self.frozen_state_dict().items():
            names = [n for n in by_identity.get(identity(tensor), [])
                     if n == key or n.endswith("." + key)]
            if len(names) != 1:
                raise RuntimeError(
                    f"{type(self).__name__}: frozen weight {key!r} is "
                    f"{'ambiguous in' if names else 'not a tensor of'} its state dict "
                    f"({', '.join(names) or 'no match'}); set frozen_prefix or override "
                    "frozen_key_map")
            mapping[key] = names[0]
        return mapping

    def frozen_keys(self) -> list[str]:
        """The :meth:`state_dict` keys of the frozen part (what trained models omit)."""
        return sorted(self.frozen_key_map().values())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """:meth:`state_dict` without :meth:`frozen_keys` (everything training changes)."""
        frozen = set(self.frozen_keys())
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Strict only: a missing or unexpected key is an error, never a warning."""
        if not strict:
            raise ValueError(f"{type(self).__name__} loads state dicts strictly "
                             "(QuRe's strict=False hides mismatched checkpoints)")
        return super().load_state_dict(state_dict, strict=True, assign=assign)


def save_backbone(path: str | Path, backbone: CIRBackbone,
                  extra: Mapping[str, Any] | None = None, *,
                  frozen_source: str | Path | None = None) -> Path:
    """Write ``{"config", "state_dict", "extra"}`` atomically with ``torch.save``.

    Without ``frozen_source`` the state dict is complete (converted weights, pretrained
    models: files other models take their frozen part from). With it, the frozen keys are
    left out and ``"frozen": {"source", "fingerprint", "keys"}`` records the file that
    holds them (stored as given; a relative path resolves against the working directory
    at load time) and :meth:`CIRBackbone.frozen_fingerprint` of the weights.
    """
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    payload: dict[str, Any] = {"config": backbone.config, "state_dict": state,
                               "extra": dict(extra or {})}
    if frozen_source is not None:
        frozen = backbone.frozen_keys()
        for key in frozen:
            del state[key]
        payload["frozen"] = {"source": str(frozen_source),
                             "fingerprint": backbone.frozen_fingerprint(),
                             "keys": len(frozen)}
    return atomic_torch_save(path, payload)


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu", *,
                  frozen_source: str | Path | None = None,
                  ) -> tuple[CIRBackbone, dict[str, Any]]:
    """Rebuild a backbone saved by :func:`save_backbone` (strict load); returns it and
    the saved ``extra`` dict.

    A file saved without its frozen part takes it from ``frozen_source`` (default: the
    source it recorded) -- a complete :func:`save_backbone` file, a frozen-part file
    (``{"config", "state_dict"}`` of the frozen module alone, e.g. the mini encoder), or
    another file saved without its frozen part, which is followed in turn -- and is
    refused with :class:`FrozenWeightsError` unless those weights have the recorded
    fingerprint. ``frozen_source`` is ignored for a file that stores its frozen part.
    """
    return _load_backbone(Path(path), map_location, frozen_source, ())


def _load_backbone(path: Path, map_location: str | torch.device,
                   frozen_source: str | Path | None, chain: tuple[Path, ...]
                   ) -> tuple[CIRBackbone, dict[str, Any]]:
    payload = torch.load(path, map_location=map_location, weights_only=True)
    backbone = build_backbone(payload["config"])
    state = dict(payload["state_dict"])
    record = payload.get("frozen")
    if record is not None:
        source = Path(frozen_source if frozen_source is not None else record["source"])
        frozen = _frozen_weights(backbone, source, path, record, map_location,
                                 (*chain, path))
        stored = sorted(set(state) & set(frozen))
        if stored:
            raise RuntimeError(f"{path}: records its frozen weights in {record['source']} "
                               f"but also stores {', '.join(stored[:5])}")
        state.update(frozen)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError(f"{path}: checkpoint does not match its config: {err}") from err
    if record is not None and backbone.frozen_fingerprint() != record["fingerprint"]:
        raise FrozenWeightsError(
            f"the frozen weights in {source} are not those {path} was trained on "
            f"(fingerprint {backbone.frozen_fingerprint()[:12]}, recorded "
            f"{record['fingerprint'][:12]}); restore the original {source} or pass the "
            "file that holds them")
    return backbone, payload.get("extra", {})


def _frozen_weights(backbone: CIRBackbone, source: Path, model_path: Path,
                    record: Mapping[str, Any], map_location: str | torch.device,
                    chain: tuple[Path, ...]) -> dict[str, torch.Tensor]:
    """The frozen part of ``backbone`` as stored in ``source``, under state_dict keys."""
    key_map = backbone.frozen_key_map()
    if not source.is_file():
        raise FrozenWeightsError(
            f"{model_path} does not store its frozen weights ({len(key_map)} tensors); "
            f"they are read from {source}, which does not exist"
            f"{'' if source.is_absolute() else f' (relative to {Path.cwd()})'}: that file "
            "must be present, or pass its new location as frozen_source")
    resolved = source.resolve()
    if resolved in {p.resolve() for p in chain}:
        raise FrozenWeightsError(f"{model_path}: frozen-weights sources form a cycle: "
                                 + " -> ".join(str(p) for p in (*chain, source)))
    if len(chain) > MAX_FROZEN_CHAIN:
        raise FrozenWeightsError(f"{model_path}: more than {MAX_FROZEN_CHAIN} files in a "
                                 "row store no frozen weights: "
                                 + " -> ".join(str(p) for p in (*chain, source)))
    try:
        try:  # memory-mapped: only the frozen tensors of a large file are read
            payload = torch.load(source, map_location=map_location, weights_only=True,
                                 mmap=True)
        except RuntimeError:  # not a zip-format file: mmap is not supported
            payload = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as err:  # any unreadable file gets the same message
        raise FrozenWeightsError(f"{source} (the frozen weights of {model_path}) cannot be "
                                 f"read: {err}") from err
    if not (isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping)
            and isinstance(payload.get("config"), Mapping)):
        raise FrozenWeightsError(f"{source} (the frozen weights of {model_path}) is neither "
                                 "a saved backbone nor a saved frozen encoder")
    if "name" in payload["config"]:  # a save_backbone file
        if payload["config"]["name"] != backbone.name:
            raise FrozenWeightsError(
                f"{source} holds a {payload['config']['name']!r} backbone; {model_path} is "
                f"a {backbone.name!r} one and cannot take its frozen weights from it")
        inner = payload.get("frozen")
        if inner is not None:  # itself saved without its frozen part: follow it
            if inner.get("fingerprint") != record["fingerprint"]:
                raise FrozenWeightsError(
                    f"the frozen weights {source} was trained on are not those "
                    f"{model_path} was trained on (fingerprints differ)")
            del payload
            nested, _ = _load_backbone(source, map_location, None, chain)
            full = nested.state_dict()
            return {key: full[key] for key in key_map.values()}
        full = payload["state_dict"]
        missing = sorted(k for k in key_map.values() if k not in full)
        if missing:
            raise FrozenWeightsError(f"{source} lacks frozen weights {model_path} needs: "
                                     f"{', '.join(missing[:5])}")
        return {key: full[key] for key in key_map.values()}
    # A frozen-part file: the frozen module's own state dict (the mini encoder).
    part = payload["state_dict"]
    missing = sorted(k for k in key_map if k not in part)
    unexpected = sorted(k for k in part if k not in key_map)
    if missing or unexpected:
        raise FrozenWeightsError(
            f"{source} does not hold the frozen weights of {model_path}: missing "
            f"{', '.join(missing[:5]) or 'none'}; unexpected {', '.join(unexpected[:5]) or 'none'}")
    return {key_map[k]: v for k, v in part.items()}

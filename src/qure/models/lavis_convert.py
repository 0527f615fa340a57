"""Convert LAVIS BLIP-2 ViT-L weights into :class:`~qure.models.blip2_vitl.Blip2VitLBackbone`.

Two LAVIS files feed QuRe's ``blip2_qure`` (``pretrain_vitL``):

* the BLIP-2 stage-1 checkpoint ``blip2_pretrained_vitL.pth`` (or a QuRe checkpoint of
  the same model): ``{"model": state_dict}`` with the Q-Former (``Qformer.bert.*``,
  ``Qformer.cls.*``), ``query_tokens``, ``ln_vision``, ``vision_proj``, ``text_proj``,
  ``itm_head``, ``temp`` and possibly the frozen ViT under ``visual_encoder.*``;
* the CLIP ViT-L file ``clip_vit_L.pth`` that LAVIS' ``create_clip_vit_L`` loads into its
  own ``VisionTransformer`` (``conv1``, ``class_embedding``, ``positional_embedding``,
  ``ln_pre``, ``transformer.resblocks.N.*``) with ``strict=False``.

LAVIS loads both with ``strict=False``; here every key is accounted for. A key the model
needs and no file provides, a key no rule maps, or a tensor of the wrong shape is a
:class:`LavisConversionError` naming the key(s) and the file. The keys that are dropped
on purpose are listed in :data:`IGNORED_BLIP2_KEYS` and :data:`IGNORED_VIT_FILE_KEYS`, each
with its reason, and every dropped key is recorded in the :class:`ConversionReport`.

The 21-vs-23 trap (methods.md §E): PyPI ``salesforce-lavis`` 1.0.2 builds the ViT with
21 blocks (``layers=22`` and ``Transformer(width, layers - 1)``), LAVIS' later fix and
QuRe's vendored copy with 23. This converter expects ``Blip2VitLConfig.vision_layers``
(23) blocks: a checkpoint whose ``visual_encoder`` has 21 is reported as missing blocks
21 and 22, never silently padded with random weights. Only the stand-alone CLIP file may
carry blocks beyond the 23rd (CLIP ViT-L has 24), which LAVIS drops.

The ViT comes from ``visual_encoder.*`` in the BLIP-2 checkpoint if it has them, else from
the CLIP file; when both are given, their tensors must agree (compared at the lower of
the two precisions, as LAVIS stores the ViT in fp16).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qure.errors import QureError
from qure.models.blip2_vitl import (
    BERT_SPECIAL_TOKENS,
    BertTextTokenizer,
    Blip2VitLBackbone,
    Blip2VitLConfig,
)

log = logging.getLogger(__name__)

IGNORED_BLIP2_KEYS: tuple[tuple[str, str], ...] = (
    (r"Qformer\.cls\..*",
     "BERT language-model head of BLIP-2 stage 1 (image-grounded text generation); QuRe's "
     "query and image embeddings never read it (it gets no gradient in QuRe either)"),
    (r"itm_head\..*",
     "image-text matching head of BLIP-2 stage 1; QuRe's score and loss do not use it"),
    (r"Qformer\.bert\.embeddings\.position_ids",
     "constant arange buffer of BERT's embeddings; positions are recomputed"),
)
"""Keys of the BLIP-2 checkpoint dropped on purpose: (full-match regex, reason)."""

IGNORED_VIT_FILE_KEYS: tuple[tuple[str, str], ...] = (
    (r"ln_post\..*|proj",
     "CLIP's image head (final LayerNorm and projection to the joint space); BLIP-2 reads "
     "the unnormalised output of the last kept block"),
)
"""Keys of the stand-alone CLIP ViT file dropped on purpose: (full-match regex, reason).
Blocks at or beyond ``vision_layers`` are dropped too (see the module doc)."""

VIT_PREFIX = "visual_encoder."
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")


class LavisConversionError(QureError):
    """LAVIS weights that do not match the backbone; the message names keys and files."""


@dataclass
class ConversionReport:
    """What a conversion used and what it dropped (with reasons)."""

    sources: dict[str, str] = field(default_factory=dict)
    """Role (``blip2``, ``vit``) -> file name."""
    converted: int = 0
    """Number of tensors of the backbone's state dict written."""
    vit_source: str = ""
    ignored: dict[str, str] = field(default_factory=dict)
    """``"file: key"`` -> reason, for every key dropped on purpose."""
    source_dtypes: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for reason in self.ignored.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines = [f"converted {self.converted} tensors; ViT from {self.vit_source}"]
        lines += [f"  ignored {n} key(s): {reason}" for reason, n in reasons.items()]
        return "\n".join(lines)


# --- the key layout of the LAVIS model --------------------------------------------------------


def lavis_vit_keys(config: Blip2VitLConfig) -> list[str]:
    """Keys of LAVIS' CLIP ``VisionTransformer`` with ``config.vision_layers`` blocks."""
    keys = ["conv1.weight", "class_embedding", "positional_embedding",
            "ln_pre.weight", "ln_pre.bias"]
    for i in range(config.vision_layers):
        block = f"transformer.resblocks.{i}."
        keys += [block + name for name in (
            "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
            "attn.out_proj.bias", "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight",
            "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight",
            "ln_2.bias")]
    return keys


def lavis_blip2_keys(config: Blip2VitLConfig) -> list[str]:
    """Keys of the BLIP-2 checkpoint this backbone needs (without the ViT and without the
    keys in :data:`IGNORED_BLIP2_KEYS`)."""
    keys = ["query_tokens", "temp", "ln_vision.weight", "ln_vision.bias",
            "vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias"]
    bert = "Qformer.bert."
    keys += [bert + "embeddings." + name for name in (
        "word_embeddings.weight", "position_embeddings.weight", "LayerNorm.weight",
        "LayerNorm.bias")]
    attention = [f"self.{p}.{w}" for p in ("query", "key", "value") for w in ("weight", "bias")]
    attention += [f"output.{p}.{w}" for p in ("dense", "LayerNorm") for w in ("weight", "bias")]
    for i in range(config.qformer_layers):
        layer = f"{bert}encoder.layer.{i}."
        keys += [f"{layer}attention.{name}" for name in attention]
        if i % config.cross_attention_freq == 0:
            keys += [f"{layer}crossattention.{name}" for name in attention]
        for suffix in ("", "_query"):
            keys += [f"{layer}intermediate{suffix}.dense.{w}" for w in ("weight", "bias")]
            keys += [f"{layer}output{suffix}.{p}.{w}" for p in ("dense", "LayerNorm")
                     for w in ("weight", "bias")]
    return keys


Transform = Callable[[torch.Tensor], torch.Tensor]


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _chunk(index: int) -> Transform:
    """Row block ``index`` of nn.MultiheadAttention's packed q/k/v projection."""
    def take(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.chunk(3, dim=0)[index]
    return take


_VIT_BLOCK_RENAMES = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_VIT_RENAMES = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
}


def vit_targets(key: str) -> list[tuple[str, Transform]]:
    """Backbone keys (and how to cut the tensor) for one key of LAVIS' CLIP ViT
    (without the ``visual_encoder.`` prefix)."""
    out = "visual_encoder."
    if key in _VIT_RENAMES:
        return [(out + _VIT_RENAMES[key], _identity)]
    match = _RESBLOCK.fullmatch(key)
    if match is None:
        raise KeyError(key)
    block, name = match.groups()
    layer = f"{out}encoder.layers.{block}."
    if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if name.endswith("weight") else "bias"
        return [(f"{layer}self_attn.{proj}_proj.{kind}", _chunk(i))
                for i, proj in enumerate(("q", "k", "v"))]
    if name in _VIT_BLOCK_RENAMES:
        return [(layer + _VIT_BLOCK_RENAMES[name], _identity)]
    raise KeyError(key)


_QFORMER_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.weight"),
     r"text_embeddings.\1.weight"),
    (re.compile(r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)"), r"qformer.layernorm.\1"),
    (re.compile(r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(.+)"),
     r"qformer.encoder.layer.\1.\2.attention.\3"),
    (re.compile(r"Qformer\.bert\.encoder\.layer\.(.+)"), r"qformer.encoder.layer.\1"),
    (re.compile(r"(query_tokens|temp|(?:ln_vision|vision_proj|text_proj)\.(?:weight|bias))"),
     r"\1"),
)


def blip2_target(key: str) -> str:
    """Backbone key for one non-ViT key of the BLIP-2 checkpoint."""
    for pattern, replacement in _QFORMER_RULES:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    raise KeyError(key)


# --- loading ------------------------------------------------------------------------------------


def load_lavis_state_dict(path: str | Path, *, trust_pickle: bool = False
                          ) -> dict[str, torch.Tensor]:
    """The state dict in a LAVIS/QuRe file: ``checkpoint["model"]`` (LAVIS), a
    ``"state_dict"`` entry, or the file's dict itself; a ``module.`` prefix on every key
    (DistributedDataParallel) is removed.

    Files are read with ``torch.load(weights_only=True)``; ``trust_pickle=True`` allows
    arbitrary pickled objects (e.g. a training config saved beside the weights) and must
    only be used for files from a trusted source.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:
        hint = "" if trust_pickle else (
            " (if the file also pickles non-tensor objects and comes from a trusted source, "
            "retry with trust_pickle=True / --trust-pickle)")
        raise LavisConversionError(f"{path}: cannot read the checkpoint: {err}{hint}") from err
    state: Any = payload
    if isinstance(payload, Mapping):
        for entry in ("model", "state_dict"):
            if isinstance(payload.get(entry), Mapping):
                state = payload[entry]
                break
    if not isinstance(state, Mapping):
        raise LavisConversionError(f"{path}: no state dict found (got {type(state).__name__})")
    non_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if non_tensors:
        raise LavisConversionError(f"{path}: entries that are not tensors: {non_tensors[:10]}")
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


# --- conversion ---------------------------------------------------------------------------------


def _expected_shapes(config: Blip2VitLConfig) -> dict[str, torch.Size]:
    """Names and shapes of the backbone's state dict, from a weightless (meta) build."""
    with torch.device("meta"):
        model = Blip2VitLBackbone(BertTextTokenizer(BERT_SPECIAL_TOKENS), config)
    return {k: v.shape for k, v in model.state_dict().items()}


def _format_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _match_reason(key: str, rules: tuple[tuple[str, str], ...]) -> str | None:
    for pattern, reason in rules:
        if re.fullmatch(pattern, key):
            return reason
    return None


def _split_vit_file_keys(keys: list[str], config: Blip2VitLConfig, name: str,
                         report: ConversionReport) -> list[str]:
    """The CLIP file's keys the backbone uses; the rest must be listed as ignored."""
    used, unexpected = [], []
    for key in keys:
        reason = _match_reason(key, IGNORED_VIT_FILE_KEYS)
        block = _RESBLOCK.fullmatch(key)
        if reason is None and block is not None and int(block.group(1)) >= config.vision_layers:
            reason = (f"CLIP ViT-L block beyond the {config.vision_layers} LAVIS' pretrain_vitL "
                      "builds (create_clip_vit_L loads this file with strict=False)")
        if reason is not None:
            report.ignored[f"{name}: {key}"] = reason
        else:
            used.append(key)
    expected = set(lavis_vit_keys(config))
    unexpected = sorted(set(used) - expected)
    if unexpected:
        raise LavisConversionError(f"{name}: unexpected key(s) with no mapping: "
                                   f"{_format_keys(unexpected)}")
    return used


def _dtypes(state: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({str(v.dtype).replace("torch.", "") for v in state.values()})


def convert_lavis_state_dicts(blip2: Mapping[str, torch.Tensor],
                              vit: Mapping[str, torch.Tensor] | None = None,
                              config: Blip2VitLConfig | None = None, *,
                              blip2_name: str = "BLIP-2 checkpoint",
                              vit_name: str = "CLIP ViT file",
                              ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """The backbone state dict (float32) for LAVIS state dicts; see the module doc.

    ``blip2``: the BLIP-2/QuRe model state dict; ``vit``: the stand-alone CLIP ViT state
    dict (needed when ``blip2`` has no ``visual_encoder.*`` keys). The names are used in
    error messages (pass the file paths).
    """
    config = config or Blip2VitLConfig()
    report = ConversionReport(sources={"blip2": blip2_name})
    report.source_dtypes["blip2"] = _dtypes(blip2)
    expected_shapes = _expected_shapes(config)

    # 1. Sort the BLIP-2 keys: ViT, ignored on purpose, mapped; anything else is an error.
    embedded_vit = {k[len(VIT_PREFIX):]: v for k, v in blip2.items() if k.startswith(VIT_PREFIX)}
    rest = [k for k in blip2 if not k.startswith(VIT_PREFIX)]
    needed = lavis_blip2_keys(config)
    used = []
    for key in rest:
        reason = _match_reason(key, IGNORED_BLIP2_KEYS)
        if reason is not None:
            report.ignored[f"{blip2_name}: {key}"] = reason
        else:
            used.append(key)
    unexpected = sorted(set(used) - set(needed))
    if unexpected:
        raise LavisConversionError(f"{blip2_name}: unexpected key(s) with no mapping: "
                                   f"{_format_keys(unexpected)}")
    missing = [k for k in needed if k not in blip2]
    if missing:
        raise LavisConversionError(f"{blip2_name}: missing key(s): {_format_keys(missing)}")

    # 2. The ViT: from the checkpoint if it has one, else from the CLIP file.
    vit_expected = lavis_vit_keys(config)
    if embedded_vit:
        vit_state, vit_from = embedded_vit, blip2_name
        extra = sorted(set(embedded_vit) - set(vit_expected))
        if extra:
            raise LavisConversionError(
                f"{blip2_name}: unexpected key(s) with no mapping: "
                f"{_format_keys([VIT_PREFIX + k for k in extra])} (this backbone's ViT has "
                f"{config.vision_layers} blocks)")
        vit_missing = [VIT_PREFIX + k for k in vit_expected if k not in embedded_vit]
        if vit_missing:
            raise LavisConversionError(
                f"{blip2_name}: missing key(s): {_format_keys(vit_missing)} (its ViT is not "
                f"the {config.vision_layers}-block CLIP ViT-L; PyPI salesforce-lavis 1.0.2 "
                "builds 21 blocks)")
    elif vit is not None:
        vit_state, vit_from = dict(vit), vit_name
    else:
        raise LavisConversionError(f"{blip2_name} has no {VIT_PREFIX}* keys and no CLIP ViT "
                                   "file was given: the ViT weights are missing")
    if vit is not None:
        report.sources["vit"] = vit_name
        report.source_dtypes["vit"] = _dtypes(vit)
        vit_used = _split_vit_file_keys(list(vit), config, vit_name, report)
        vit_missing = [k for k in vit_expected if k not in vit_used]
        if vit_missing:
            raise LavisConversionError(f"{vit_name}: missing key(s): {_format_keys(vit_missing)}"
                                       f" (expected the {config.vision_layers}-block CLIP ViT-L)")
        if embedded_vit:
            _check_same_vit(embedded_vit, vit, vit_expected, blip2_name, vit_name)
    report.vit_source = vit_from

    # 3. Map, cut and check shapes.
    state: dict[str, torch.Tensor] = {}

    def put(target: str, tensor: torch.Tensor, source: str, file: str) -> None:
        shape = expected_shapes.get(target)
        if shape is None:  # a mapping rule disagrees with the model: a bug here
            raise LavisConversionError(f"{file}: {source} maps to {target}, which the "
                                       "backbone does not have")
        if tuple(tensor.shape) != tuple(shape):
            raise LavisConversionError(
                f"{file}: {source} has shape {tuple(tensor.shape)}, the backbone's {target} "
                f"needs {tuple(shape)} (check Blip2VitLConfig against the checkpoint)")
        state[target] = tensor.detach().to(torch.float32).contiguous()

    for key in needed:
        put(blip2_target(key), blip2[key], key, blip2_name)
    for key in vit_expected:
        for target, cut in vit_targets(key):
            source = (VIT_PREFIX + key) if vit_from == blip2_name else key
            tensor = vit_state[key]
            if cut is not _identity:
                if tensor.shape[0] % 3:
                    raise LavisConversionError(f"{vit_from}: {source} has shape "
                                               f"{tuple(tensor.shape)}, not a packed q/k/v")
                tensor = cut(tensor)
            put(target, tensor, source, vit_from)
    absent = sorted(set(expected_shapes) - set(state))
    if absent:  # every rule covered: only a bug in the tables can get here
        raise LavisConversionError(f"no source for backbone key(s): {_format_keys(absent)}")
    report.converted = len(state)
    log.info("%s", report.summary())
    return state, report


def _check_same_vit(embedded: Mapping[str, torch.Tensor], vit: Mapping[str, torch.Tensor],
                    keys: list[str], blip2_name: str, vit_name: str) -> None:
    for key in keys:
        a, b = embedded[key], vit[key]
        if a.shape != b.shape:
            raise LavisConversionError(f"{blip2_name}: {VIT_PREFIX}{key} {tuple(a.shape)} and "
                                       f"{vit_name}: {key} {tuple(b.shape)} differ in shape")
        low = a.dtype if torch.finfo(a.dtype).bits <= torch.finfo(b.dtype).bits else b.dtype
        if not torch.equal(a.to(low), b.to(low)):
            raise LavisConversionError(f"{blip2_name}: {VIT_PREFIX}{key} differs from "
                                       f"{vit_name}: {key}; give only one ViT source")


def backbone_from_lavis(blip2_path: str | Path, vocab: str | Path | BertTextTokenizer,
                        vit_path: str | Path | None = None,
                        config: Blip2VitLConfig | None = None, *,
                        trust_pickle: bool = False,
                        ) -> tuple[Blip2VitLBackbone, ConversionReport]:
    """A :class:`Blip2VitLBackbone` with LAVIS weights, loaded strictly.

    ``vocab``: bert-base-uncased's ``vocab.txt`` (or a folder holding it, or a tokenizer).
    The backbone's temperature is the checkpoint's ``temp``, as LAVIS'
    ``load_checkpoint`` leaves it after QuRe's ``temp = 0.07`` initialisation.
    """
    config = config or Blip2VitLConfig()
    tokenizer = vocab if isinstance(vocab, BertTextTokenizer) else (
        BertTextTokenizer.from_vocab_file(vocab))
    blip2 = load_lavis_state_dict(blip2_path, trust_pickle=trust_pickle)
    vit = None if vit_path is None else load_lavis_state_dict(vit_path,
                                                               trust_pickle=trust_pickle)
    state, report = convert_lavis_state_dicts(
        blip2, vit, config, blip2_name=str(blip2_path),
        vit_name=str(vit_path) if vit_path is not None else "CLIP ViT file")
    backbone = Blip2VitLBackbone(tokenizer, config)
    backbone.load_state_dict(state)
    return backbone, report

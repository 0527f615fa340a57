"""LAVIS-format BLIP-2 ViT-L checkpoints with random weights, for tests and the rehearsal.

:func:`lavis_checkpoint` and :func:`vit_file` hold every key name the real LAVIS files
hold for a given :class:`~qure.models.blip2_vitl.Blip2VitLConfig` (the converter's
:func:`~qure.models.lavis_convert.lavis_blip2_keys` / ``lavis_vit_keys``, plus the keys
LAVIS has and the converter drops on purpose: the LM and ITM heads, BERT's
``position_ids``, CLIP's later blocks, ``ln_post`` and ``proj``), so a conversion of
them exercises the strict key accounting exactly as the real files would. At the real
depth (23 ViT blocks, 12 Q-Former layers) and a reduced width they are small and fast.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from qure.models.blip2_vitl import (
    BERT_SPECIAL_TOKENS,
    BertTextTokenizer,
    Blip2VitLBackbone,
    Blip2VitLConfig,
)
from qure.models.lavis_convert import blip2_target, lavis_blip2_keys, lavis_vit_keys, vit_targets

#: The rehearsal's model: every real key name (23 ViT blocks, 12 Q-Former layers with
#: cross-attention every 2nd, 32 query tokens, 224 px input and 14 px patches, 512
#: positions) at a width that runs on a CPU in seconds. ``vocab_size`` follows the vocab.
REHEARSAL_MODEL = {
    "vision_width": 32, "vision_heads": 2, "vision_intermediate": 64,
    "qformer_width": 32, "qformer_heads": 2, "qformer_intermediate": 64, "embed_dim": 16,
}
CLIP_BLOCKS = 24
"""CLIP ViT-L/14 has 24 blocks; LAVIS' pretrain_vitL keeps 23 (the file holds all 24)."""


def lavis_checkpoint(model: Blip2VitLBackbone, with_vit: bool = True) -> dict[str, torch.Tensor]:
    """The LAVIS-named state dict that converts into ``model``'s weights, plus the keys
    LAVIS has and this backbone drops (LM head, ITM head, position_ids)."""
    ours = model.state_dict()
    config = model.model_config
    state = {key: ours[blip2_target(key)].clone() for key in lavis_blip2_keys(config)}
    if with_vit:
        for key in lavis_vit_keys(config):
            targets = [ours[name] for name, _ in vit_targets(key)]
            state["visual_encoder." + key] = torch.cat(targets).clone().half()
    width = config.qformer_width
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(
        config.max_position_embeddings)[None]
    state["Qformer.cls.predictions.bias"] = torch.zeros(config.vocab_size)
    state["Qformer.cls.predictions.transform.dense.weight"] = torch.zeros(width, width)
    state["Qformer.cls.predictions.decoder.weight"] = torch.zeros(config.vocab_size, width)
    state["itm_head.weight"] = torch.zeros(2, width)
    state["itm_head.bias"] = torch.zeros(2)
    return state


def vit_file(model: Blip2VitLBackbone, extra_blocks: int = 1) -> dict[str, torch.Tensor]:
    """A stand-alone CLIP ViT state dict: the kept blocks plus CLIP's later ones and head."""
    ckpt = lavis_checkpoint(model)
    vit = {k[len("visual_encoder."):]: v for k, v in ckpt.items()
           if k.startswith("visual_encoder.")}
    layers = model.model_config.vision_layers
    for i in range(layers, layers + extra_blocks):
        for key in [k for k in vit if k.startswith("transformer.resblocks.0.")]:
            vit[key.replace(".0.", f".{i}.", 1)] = vit[key].clone()
    width = model.model_config.vision_width
    vit.update({"ln_post.weight": torch.ones(width), "ln_post.bias": torch.zeros(width),
                "proj": torch.zeros(width, 8)})
    return vit


# --- a small BERT vocabulary -------------------------------------------------------------------

_WORD = re.compile(r"[a-z]+|[0-9]+")


def rehearsal_vocab(texts: Iterable[str], words: int = 2000) -> list[str]:
    """A ``vocab.txt`` token list the BERT tokenizer accepts: the special tokens, ASCII
    punctuation, digits and letters (also as ``##`` continuations, so every word has a
    WordPiece split and none becomes ``[UNK]``) and the ``words`` most frequent words of
    ``texts`` (ties broken alphabetically)."""
    specials = ["[PAD]", "[unused0]", *[t for t in BERT_SPECIAL_TOKENS if t != "[PAD]"]]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    counts = Counter(w for text in texts for w in _WORD.findall(text.lower()))
    frequent = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                if len(w) > 1][:words]
    return list(dict.fromkeys([*specials, *chars, *pieces, *frequent]))


def model_config(vocab_size: int, overrides: Mapping[str, Any] | None = None) -> Blip2VitLConfig:
    """:data:`REHEARSAL_MODEL` (plus ``overrides``) for a vocabulary of ``vocab_size``
    tokens (LAVIS' embedding matrix has one more: ``[DEC]``)."""
    values = {**REHEARSAL_MODEL, "vocab_size": vocab_size + 1, **dict(overrides or {})}
    return Blip2VitLConfig.from_dict(values)


def write_lavis_files(out_dir: str | Path, vocab: list[str], config: Blip2VitLConfig, *,
                      seed: int = 0) -> dict[str, Path]:
    """``blip2_pretrained_vitL.pth`` (``{"model": ...}``, without the frozen ViT, as LAVIS
    saves it), ``clip_vit_L.pth`` (all CLIP blocks and head) and
    ``bert-base-uncased-vocab.txt`` in ``out_dir``, from a random model of ``config``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Blip2VitLBackbone(BertTextTokenizer(vocab), config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    blip2 = {k: v for k, v in lavis_checkpoint(model, with_vit=False).items()}
    paths = {"blip2": out / "blip2_pretrained_vitL.pth", "vit": out / "clip_vit_L.pth",
             "vocab": out / "bert-base-uncased-vocab.txt"}
    torch.save({"model": blip2}, paths["blip2"])
    torch.save(vit_file(model, extra_blocks=CLIP_BLOCKS - config.vision_layers), paths["vit"])
    paths["vocab"].write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return paths

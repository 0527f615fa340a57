"""The mini backbone's frozen image encoder and its one-off contrastive pretraining.

It plays the part of BLIP-2's frozen CLIP ViT-L/14 (``create_clip_vit_L``): a ViT
patch encoder (patchify conv without bias, learned position embeddings, ``ln_pre``,
pre-LN transformer blocks, no final LayerNorm) whose per-patch outputs feed the
Q-Former's cross-attention. Where BLIP-2 loads CLIP weights, the mini encoder is
pretrained once, CLIP-style, with a symmetric image-caption InfoNCE on the synthetic
attribute captions, then frozen for all CIR training, as ``freeze_vit=True`` does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qure.models.tokenizer import WordTokenizer

log = logging.getLogger(__name__)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query/key-value widths (for cross-attention).

    Keys and values come from one fused projection (fewer, larger matmuls on a CPU).
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim if kv_dim is None else kv_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B,L,dim] attends to ``context`` [B,S,kv_dim] (default: itself).

        ``key_mask`` [B,S] is truthy where a key may be attended to (BERT's attention mask).
        """
        context = x if context is None else context
        b, length, dim = x.shape
        q = self.query(x).view(b, length, self.heads, -1).transpose(1, 2)
        k, v = self.key_value(context).view(b, context.shape[1], 2, self.heads, -1).unbind(2)
        mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(b, length, dim))


class PreNormBlock(nn.Module):
    """CLIP's residual attention block: x + attn(ln_1 x), then x + mlp(ln_2 x)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_mask=key_mask)
        return x + self.mlp(self.ln_2(x))


@dataclass(frozen=True)
class PatchEncoderConfig:
    """Sizes of the mini ViT. Defaults: 64x64 images, 8x8 patches -> 64 patch tokens."""

    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    in_channels: int = 3
    stem: str = "conv"
    """``"patch"``: one linear patchify conv, as CLIP's ViT; ``"conv"``: a few strided 3x3
    convolutions first (an "early convolutions" stem), which learns shape far faster on
    the small synthetic images; both give the same patch grid."""

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stem(c: PatchEncoderConfig) -> nn.Module:
    """The patchify layer: [B,3,H,W] -> [B,width,H/patch,W/patch]."""
    if c.stem == "patch":
        return nn.Conv2d(c.in_channels, c.width, c.patch_size, c.patch_size, bias=False)
    if c.stem != "conv":
        raise ValueError(f"unknown stem {c.stem!r}; expected 'patch' or 'conv'")
    layers: list[nn.Module] = []
    channels, stride = c.in_channels, c.patch_size
    hidden = max(c.width // 8, 16)
    while stride > 2:
        layers += [nn.Conv2d(channels, hidden, 3, 2, 1), nn.GELU()]
        channels, stride, hidden = hidden, stride // 2, hidden * 2
    layers.append(nn.Conv2d(channels, c.width, stride, stride, bias=False))
    return nn.Sequential(*layers)


class PatchEncoder(nn.Module):
    """A small ViT returning per-patch features [B, P, C] (no CLS token, no final LN).

    After :meth:`freeze` its parameters take no gradient and the module stays in eval
    mode even when a parent calls ``.train()`` (LAVIS replaces ``visual_encoder.train``
    by ``disabled_train`` for the same reason).
    """

    def __init__(self, config: PatchEncoderConfig | None = None):
        super().__init__()
        self.config = config or PatchEncoderConfig()
        c = self.config
        if c.image_size % c.patch_size:
            raise ValueError(f"image_size {c.image_size} is not a multiple of patch_size "
                             f"{c.patch_size}")
        self.conv1 = _stem(c)
        self.positional_embedding = nn.Parameter(torch.randn(c.num_patches, c.width) * 0.02)
        self.ln_pre = nn.LayerNorm(c.width)
        self.blocks = nn.ModuleList(
            PreNormBlock(c.width, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.frozen = False

    @property
    def width(self) -> int:
        return self.config.width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"expected images [B,{self.config.in_channels},{size},{size}], "
                             f"got {tuple(images.shape)}")
        x = self.conv1(images).flatten(2).transpose(1, 2)
        x = self.ln_pre(x + self.positional_embedding)
        for block in self.blocks:
            x = block(x)
        return x

    def freeze(self) -> PatchEncoder:
        """Stop gradients and pin eval mode for good."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> PatchEncoder:
        return super().train(mode and not self.frozen)


class CaptionEncoder(nn.Module):
    """The pretraining-only text tower: token + position embeddings, pre-LN blocks,
    masked mean pooling. Discarded after pretraining."""

    def __init__(self, vocab_size: int, max_length: int, width: int = 128, depth: int = 1,
                 heads: int = 4):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.blocks = nn.ModuleList(PreNormBlock(width, heads) for _ in range(depth))
        self.ln_final = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, key_mask=mask)
        x = self.ln_final(x)
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _caption_ids(captions: Sequence[str]) -> torch.Tensor:
    """Integer id per caption, equal ids for equal captions (first-seen order)."""
    seen: dict[str, int] = {}
    return torch.tensor([seen.setdefault(c, len(seen)) for c in captions], dtype=torch.long)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                     caption_ids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE; pairs sharing a caption all count as positives.

    Synthetic attribute captions repeat, so a plain diagonal target would push apart
    images that the text cannot tell apart; the target spreads uniformly over them.
    """
    logits = logit_scale * image_emb @ text_emb.t()
    same = (caption_ids[:, None] == caption_ids[None, :]).to(logits.dtype)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@torch.no_grad()
def caption_retrieval_accuracy(encoder: PatchEncoder, head: nn.Module, text: CaptionEncoder,
                               text_head: nn.Module, tokenizer: WordTokenizer,
                               images: torch.Tensor, captions: Sequence[str],
                               batch_size: int = 256) -> tuple[float, float]:
    """Image -> caption top-1 accuracy over the distinct captions, and its chance level."""
    distinct = list(dict.fromkeys(captions))
    ids, mask = tokenizer(distinct, padding="longest")
    text_emb = F.normalize(text_head(text(ids, mask)), dim=-1)
    lookup = {c: i for i, c in enumerate(distinct)}
    truth = torch.tensor([lookup[c] for c in captions])
    hits = 0
    for start in range(0, len(images), batch_size):
        feats = encoder(images[start:start + batch_size]).mean(1)
        emb = F.normalize(head(feats), dim=-1)
        pred = (emb @ text_emb.t()).argmax(1)
        hits += int((pred == truth[start:start + batch_size]).sum())
    return hits / max(len(images), 1), 1.0 / len(distinct)


def pretrain_image_encoder(images: torch.Tensor, captions: Sequence[str], epochs: int = 5,
                           batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                           progress: bool = True, config: PatchEncoderConfig | None = None,
                           embed_dim: int = 64, weight_decay: float = 0.05,
                           eval_size: int = 512) -> tuple[PatchEncoder, dict[str, Any]]:
    """Pretrain a :class:`PatchEncoder` by image-caption contrastive learning, then freeze it.

    ``images`` are [N,3,H,W] floats already preprocessed as :func:`frozen_features` will
    see them (e.g. with :func:`qure.models.preprocess.simple_transform`). The image side
    is the mean-pooled patch features; the text side a small transformer over the
    word-tokenised captions. AdamW with a linear warm-up (5% of steps) and cosine decay.

    Returns the frozen encoder and a history with the per-epoch mean loss, image->caption
    top-1 accuracy on up to ``eval_size`` images (and chance), and the wall time.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(images) < 2:
        raise ValueError("contrastive pretraining needs at least two images")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    config = config or PatchEncoderConfig(image_size=int(images.shape[-1]))
    encoder = PatchEncoder(config)
    tokenizer = WordTokenizer.from_corpus(captions)
    text = CaptionEncoder(tokenizer.vocab_size, tokenizer.max_length, width=config.width,
                          heads=config.heads)
    image_head = nn.Linear(config.width, embed_dim, bias=False)
    text_head = nn.Linear(config.width, embed_dim, bias=False)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    modules = nn.ModuleList([encoder, text, image_head, text_head])
    decay = [p for n, p in modules.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    no_decay = [p for n, p in modules.named_parameters() if p.dim() < 2 or "embedding" in n]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": [*no_decay, logit_scale], "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = max(epochs * steps_per_epoch, 1)
    warmup = max(int(0.05 * total), 1)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    all_ids, all_mask = tokenizer(list(captions), padding="longest")
    caption_ids = _caption_ids(captions)
    eval_rows = torch.randperm(len(images), generator=generator)[:eval_size]
    eval_images = images[eval_rows]
    eval_captions = [captions[i] for i in eval_rows.tolist()]
    history: dict[str, Any] = {"loss": [], "accuracy": [], "chance": None, "seconds": None}
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="pretrain image encoder", disable=not progress)
    for epoch in bar:
        modules.train()
        order = torch.randperm(len(images), generator=generator)
        losses = []
        for first in range(0, len(images), batch_size):
            rows = order[first:first + batch_size]
            if len(rows) < 2:
                continue
            image_emb = F.normalize(image_head(encoder(images[rows]).mean(1)), dim=-1)
            text_emb = F.normalize(text_head(text(all_ids[rows], all_mask[rows])), dim=-1)
            scale = logit_scale.exp().clamp(max=100.0)
            loss = contrastive_loss(image_emb, text_emb, scale, caption_ids[rows])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
        modules.eval()
        accuracy, chance = caption_retrieval_accuracy(
            encoder, image_head, text, text_head, tokenizer, eval_images, eval_captions)
        history["loss"].append(sum(losses) / max(len(losses), 1))
        history["accuracy"].append(accuracy)
        history["chance"] = chance
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", acc=f"{accuracy:.3f}")
        log.info("pretrain epoch %d/%d: loss %.4f, image->caption top-1 %.3f (chance %.3f)",
                 epoch + 1, epochs, history["loss"][-1], accuracy, chance)
    history["seconds"] = time.perf_counter() - start
    history["config"] = config.to_dict()
    return encoder.freeze(), history

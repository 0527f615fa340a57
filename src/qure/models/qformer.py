"""The mini Q-Former and the mini BLIP-2 backbone built on it.

:class:`MiniQFormer` mirrors the structure of BLIP-2's Q-Former (LAVIS ``Qformer.py``,
a BERT-base with query tokens), shrunk to train on a CPU:

* the input is ``[query tokens; text tokens]``; text tokens get word + position
  embeddings, and the concatenation goes through the embedding LayerNorm;
* each layer is post-LN (BERT): self-attention over queries and text together (the text
  attention mask hides padding), then, in every ``cross_attention_freq``-th layer
  (BLIP-2: every 2nd, starting with the first), cross-attention from the query
  positions to the frozen image features, then separate feed-forward blocks for the
  query positions (``*_query`` in BLIP-2) and the text positions.

:class:`MiniBlip2Backbone` wraps it as QuRe's ``blip2_qure`` does: ``ln_vision`` over the
frozen features, learnable ``query_tokens``, ``vision_proj`` and ``text_proj`` to the
shared dimension and a raw learned ``temp``. The query embedding is the mean over the
query positions of ``text_proj`` applied to the multimodal (query + text) pass; the
target embedding is ``vision_proj`` of each query position of the image-only pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qure.models.image_encoder import MultiHeadAttention, PatchEncoder, PatchEncoderConfig
from qure.models.interface import CIRBackbone, register_backbone
from qure.models.tokenizer import WordTokenizer


@dataclass(frozen=True)
class QFormerConfig:
    """Sizes of the mini Q-Former (BLIP-2: 32 queries, width 768, 12 layers, 12 heads,
    cross-attention every 2nd layer).

    The default, 2 layers both with cross-attention, has as many cross-attention layers
    as ``depth=4, cross_attention_freq=2`` and learns the toy tasks as well, at about
    0.7x the step time (CPU step time is dominated by per-operator overhead).
    """

    num_query_tokens: int = 8
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    cross_attention_freq: int = 1
    dropout: float = 0.1
    """BERT's hidden dropout (0.1 in BLIP-2's Q-Former)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities: 0.1 in BLIP-2, 0 here by default because any
    attention dropout sends CPU SDPA down its slow path (about +25% per step)."""
    init: str = "torch"
    """``"torch"``: PyTorch's default layer initialisation; ``"bert"``: BERT's normal(0.02).
    BLIP-2's Q-Former starts from pretrained weights, whereas the mini one trains from
    scratch, where BERT's small init leaves the cross-attention signal ~1% of the residual
    and the image embeddings of different images nearly equal for hundreds of steps."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QFormerConfig:
        return cls(**_known_fields(cls, data))


def _known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}")
    return dict(data)


class FeedForward(nn.Module):
    """BERT's intermediate + output: LN(x + drop(W2 gelu(W1 x)))."""

    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.dense_in = nn.Linear(width, hidden)
        self.dense_out = nn.Linear(hidden, width)
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.dense_out(F.gelu(self.dense_in(x)))))


class QFormerLayer(nn.Module):
    """One post-LN Q-Former layer (BLIP-2 ``BertLayer`` with ``query_length``)."""

    def __init__(self, config: QFormerConfig, encoder_width: int, cross_attention: bool):
        super().__init__()
        width, hidden = config.width, int(config.width * config.mlp_ratio)
        self.self_attn = MultiHeadAttention(width, config.heads,
                                            dropout=config.attention_dropout)
        self.self_norm = nn.LayerNorm(width, eps=1e-12)
        self.cross_attn: MultiHeadAttention | None = None
        self.cross_norm: nn.LayerNorm | None = None
        if cross_attention:
            self.cross_attn = MultiHeadAttention(width, config.heads, kv_dim=encoder_width,
                                                 dropout=config.attention_dropout)
            self.cross_norm = nn.LayerNorm(width, eps=1e-12)
        self.ffn_query = FeedForward(width, hidden, config.dropout)
        self.ffn_text = FeedForward(width, hidden, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None, num_queries: int,
                image: torch.Tensor) -> torch.Tensor:
        hidden = self.self_norm(hidden + self.dropout(self.self_attn(hidden, key_mask=mask)))
        queries, text = hidden[:, :num_queries], hidden[:, num_queries:]
        if self.cross_attn is not None and self.cross_norm is not None:
            queries = self.cross_norm(
                queries + self.dropout(self.cross_attn(queries, context=image)))
        queries = self.ffn_query(queries)
        if text.shape[1] == 0:
            return queries
        return torch.cat([queries, self.ffn_text(text)], dim=1)


class MiniQFormer(nn.Module):
    """Query tokens (+ optional text) attending to frozen image features; see module doc."""

    def __init__(self, config: QFormerConfig, encoder_width: int, vocab_size: int,
                 max_text_length: int):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(vocab_size, config.width,
                                            padding_idx=WordTokenizer.pad_id)
        self.position_embeddings = nn.Embedding(max_text_length, config.width)
        self.embed_norm = nn.LayerNorm(config.width, eps=1e-12)
        self.embed_dropout = nn.Dropout(config.dropout)
        every = config.cross_attention_freq
        self.layers = nn.ModuleList(
            QFormerLayer(config, encoder_width, cross_attention=i % every == 0)
            for i in range(config.depth))
        if config.init == "bert":
            self.apply(_bert_init)
        elif config.init != "torch":
            raise ValueError(f"unknown init {config.init!r}; expected 'torch' or 'bert'")

    def forward(self, query_embeds: torch.Tensor, image: torch.Tensor,
                text_ids: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Hidden states [B, Nq + L, width]; the first Nq rows are the query outputs.

        ``image`` [B,P,encoder_width] are the (``ln_vision``-normalised) frozen features.
        """
        b, num_queries, _ = query_embeds.shape
        mask: torch.Tensor | None = None  # no padding, no mask: SDPA's fast path
        if text_ids is None:
            hidden = query_embeds
        else:
            query_mask = torch.ones(b, num_queries, dtype=torch.bool, device=query_embeds.device)
            if text_mask is None:
                text_mask = torch.ones_like(text_ids)
            positions = torch.arange(text_ids.shape[1], device=text_ids.device)
            text = self.word_embeddings(text_ids) + self.position_embeddings(positions)
            hidden = torch.cat([query_embeds, text], dim=1)
            mask = torch.cat([query_mask, text_mask.bool()], dim=1)
        hidden = self.embed_dropout(self.embed_norm(hidden))
        for layer in self.layers:
            hidden = layer(hidden, mask, num_queries, image)
        return hidden


def _bert_init(module: nn.Module) -> None:
    """BERT's initialisation (normal std 0.02, zero bias, unit LayerNorm)."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_backbone
class MiniBlip2Backbone(CIRBackbone):
    """QuRe's ``blip2_qure`` at toy scale: frozen mini ViT + mini Q-Former.

    ``text_padding="longest"`` (default) pads each batch to its longest text instead of
    QuRe's fixed 32; padded keys are masked either way, so only float rounding differs,
    and it is several times cheaper on a CPU.

    ``single_vector=True`` gives the BLIP (non-2) style target: one vector per image,
    ``vision_proj`` of the mean query output, so the max-over-tokens score is a plain
    cosine (T=1). The query side is the same in both variants.

    A :class:`PatchEncoder` passed as ``image_encoder`` (e.g. from
    :func:`~qure.models.image_encoder.pretrain_image_encoder`) is used as is and frozen.
    """

    name = "mini_blip2"

    def __init__(self, tokenizer: WordTokenizer,
                 image_encoder: PatchEncoderConfig | PatchEncoder | None = None,
                 qformer: QFormerConfig | None = None, embed_dim: int = 64,
                 single_vector: bool = False, init_temperature: float = 0.07,
                 temperature_clamp: tuple[float, float] | None = None,
                 text_padding: str = "longest"):
        super().__init__()
        if isinstance(image_encoder, PatchEncoder):
            self.visual_encoder = image_encoder
        else:
            self.visual_encoder = PatchEncoder(image_encoder or PatchEncoderConfig())
        self.visual_encoder.freeze()
        self.tokenizer = tokenizer
        self.qformer_config = qformer or QFormerConfig()
        self.embed_dim = embed_dim
        self.single_vector = single_vector
        self.init_temperature = init_temperature
        self.temperature_clamp = None if temperature_clamp is None else (
            float(temperature_clamp[0]), float(temperature_clamp[1]))
        self.text_padding = text_padding
        encoder_width = self.visual_encoder.width
        width = self.qformer_config.width
        self.ln_vision = nn.LayerNorm(encoder_width)
        self.qformer = MiniQFormer(self.qformer_config, encoder_width, tokenizer.vocab_size,
                                   tokenizer.max_length)
        self.query_tokens = nn.Parameter(
            torch.randn(1, self.qformer_config.num_query_tokens, width) * 0.02)
        self.vision_proj = nn.Linear(width, embed_dim)
        self.text_proj = nn.Linear(width, embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(init_temperature)))

    # --- config ------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tokenizer": self.tokenizer.to_dict(),
            "image_encoder": self.visual_encoder.config.to_dict(),
            "qformer": self.qformer_config.to_dict(),
            "embed_dim": self.embed_dim,
            "single_vector": self.single_vector,
            "init_temperature": self.init_temperature,
            "temperature_clamp": None if self.temperature_clamp is None
            else list(self.temperature_clamp),
            "text_padding": self.text_padding,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MiniBlip2Backbone:
        if config.get("name") != cls.name:
            raise ValueError(f"not a {cls.name} config: name={config.get('name')!r}")
        allowed = {"name", "tokenizer", "image_encoder", "qformer", "embed_dim",
                   "single_vector", "init_temperature", "temperature_clamp", "text_padding"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"unknown {cls.name} config key(s): {', '.join(unknown)}")
        clamp = config.get("temperature_clamp")
        return cls(
            tokenizer=WordTokenizer.from_dict(config["tokenizer"]),
            image_encoder=PatchEncoderConfig(
                **_known_fields(PatchEncoderConfig, config.get("image_encoder", {}))),
            qformer=QFormerConfig.from_dict(config.get("qformer", {})),
            embed_dim=int(config.get("embed_dim", 64)),
            single_vector=bool(config.get("single_vector", False)),
            init_temperature=float(config.get("init_temperature", 0.07)),
            temperature_clamp=None if clamp is None else (clamp[0], clamp[1]),
            text_padding=str(config.get("text_padding", "longest")),
        )

    @property
    def num_image_tokens(self) -> int:
        return 1 if self.single_vector else self.qformer_config.num_query_tokens

    # --- frozen part -------------------------------------------------------------------

    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.visual_encoder(images)

    def frozen_state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.visual_encoder.state_dict())

    # --- trainable part ----------------------------------------------------------------

    def _query_outputs(self, frozen: torch.Tensor, text_ids: torch.Tensor | None = None,
                       text_mask: torch.Tensor | None = None) -> torch.Tensor:
        image = self.ln_vision(frozen)
        queries = self.query_tokens.expand(frozen.shape[0], -1, -1)
        hidden = self.qformer(queries, image, text_ids, text_mask)
        return hidden[:, : queries.shape[1]]

    def encode_images(self, frozen: torch.Tensor) -> torch.Tensor:
        outputs = self._query_outputs(frozen)
        if self.single_vector:
            outputs = outputs.mean(1, keepdim=True)
        return F.normalize(self.vision_proj(outputs), dim=-1)

    def encode_queries(self, frozen_ref: torch.Tensor, texts: list[str]) -> torch.Tensor:
        if len(texts) != frozen_ref.shape[0]:
            raise ValueError(f"{frozen_ref.shape[0]} references but {len(texts)} texts")
        ids, mask = self.tokenizer(texts, padding=self.text_padding)
        ids, mask = ids.to(frozen_ref.device), mask.to(frozen_ref.device)
        outputs = self._query_outputs(frozen_ref, ids, mask)
        return F.normalize(self.text_proj(outputs).mean(1), dim=-1)

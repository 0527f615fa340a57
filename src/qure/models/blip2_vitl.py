"""The paper backbone: QuRe's BLIP-2 ViT-L (``blip2_qure``, ``pretrain_vitL``) on ``transformers``.

Layout (research notes methods.md §B and §E):

* **Frozen image encoder**: OpenAI-CLIP ViT-L/14 at 224 px as LAVIS' ``create_clip_vit_L``
  builds it for ``pretrain_vitL``: patch conv without bias, class + position embeddings,
  ``ln_pre``, QuickGELU blocks of width 1024 / 16 heads, **23 blocks** (of CLIP's 24) and
  **no final LayerNorm**. It is ``transformers``' :class:`~transformers.CLIPVisionModel`
  configured with ``num_hidden_layers=23``; its ``last_hidden_state`` is the output of
  block 23 before ``post_layernorm`` (the same tensor as ``hidden_states[23]`` of a
  24-layer CLIP, i.e. CLIP's penultimate layer). ``post_layernorm`` only feeds the
  pooled output, which BLIP-2 never uses, so it is replaced by an identity and has no
  weights. (PyPI ``salesforce-lavis`` 1.0.2 builds only 21 blocks; the LAVIS fix and
  QuRe's vendored copy build 23: see :mod:`qure.models.lavis_convert`.)
* **Trainable part**: BLIP-2's ``ln_vision`` LayerNorm, learned ``query_tokens`` (32 x 768),
  the Q-Former (:class:`~transformers.Blip2QFormerModel` with
  ``use_qformer_text_input=True``: BERT-base, 12 layers, cross-attention to the 1024-wide
  image features every 2nd layer starting with the first, separate feed-forward blocks
  for query and text positions), ``vision_proj`` and ``text_proj`` (768 -> 256) and QuRe's
  raw temperature ``temp`` (0.07, not clamped).

Text input. ``Blip2QFormerModel`` takes the concatenated ``[query tokens; text
embeddings]`` together with ``query_length``, exactly like LAVIS' ``BertModel`` called
with ``query_embeds``: its first LayerNorm is BERT's embedding LayerNorm (applied to the
concatenation), and each layer runs self-attention over all positions, cross-attention
and the ``*_query`` feed-forward for the first ``query_length`` positions and the text
feed-forward for the rest. What it does not own are BERT's word and position
embeddings; :class:`QFormerTextEmbeddings` holds them (word + absolute position, text
positions numbered from 0 as in LAVIS). It is written here rather than taken from
``transformers``' ``Blip2TextEmbeddings`` because that class's contents have changed
across ``transformers`` releases, and this module's state-dict names must not.

Embeddings (interface in :mod:`qure.models.interface`):

* query = L2-normalised mean over the 32 query positions of ``text_proj`` of the
  multimodal pass (reference image features + modification text);
* image = ``vision_proj`` of each of the 32 query positions of the image-only pass,
  L2-normalised per token; the score is the max over tokens.

Text goes through LAVIS' ``blip_caption`` cleaning (:func:`qure.data.text.blip_caption`)
and a ``bert-base-uncased`` WordPiece tokenizer (:class:`BertTextTokenizer`, max 32
tokens). Nothing is downloaded: the vocabulary comes from a ``vocab.txt`` the user
supplies (or a folder holding one) and is stored inline in the backbone's config, so a
saved backbone is self-contained.

Only the sizes in :class:`Blip2VitLConfig` change between the paper model and the
reduced-width models the tests build.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qure.data.text import blip_caption
from qure.models.interface import CIRBackbone, register_backbone
from qure.models.tokenizer import pad_token_rows

log = logging.getLogger(__name__)

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DECODER_TOKEN = "[DEC]"
"""LAVIS' ``init_tokenizer`` adds ``[DEC]`` as BOS token: 30522 + 1 = 30523 word embeddings."""


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("the blip2_vitl backbone needs the 'blip2' extra: "
                          "pip install 'qure-repro[blip2]' (transformers)") from err
    return transformers


# --- tokenizer ------------------------------------------------------------------------------


def read_vocab_file(path: str | Path) -> list[str]:
    """The tokens of a BERT ``vocab.txt`` (one per line, line number = id)."""
    path = Path(path)
    if path.is_dir():
        path = path / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BERT vocabulary file not found (expected the "
                                "bert-base-uncased vocab.txt, or a folder holding it)")
    tokens = path.read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    return [t.rstrip("\r") for t in tokens]


class BertTextTokenizer:
    """``bert-base-uncased`` WordPiece tokenization as LAVIS' Q-Former uses it.

    Text is first cleaned with :func:`~qure.data.text.blip_caption` (LAVIS' ``blip_caption``
    eval processor), then lower-cased, split on whitespace and punctuation and encoded
    as ``[CLS] wordpieces [SEP]``, truncated to ``max_length`` (32) tokens. Built on the
    ``tokenizers`` library (BERT normaliser, pre-tokenizer and WordPiece model, the same
    pipeline as ``transformers``' fast BERT tokenizer), which ``transformers`` depends on.

    ``vocab`` is the token list of ``vocab.txt`` (:meth:`from_vocab_file`).
    """

    def __init__(self, vocab: Sequence[str], max_length: int = 32, do_lower_case: bool = True):
        from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordPiece

        vocab = list(vocab)
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        index = {token: i for i, token in enumerate(vocab)}
        if len(index) != len(vocab):
            raise ValueError("the BERT vocabulary has duplicate tokens")
        missing = [t for t in BERT_SPECIAL_TOKENS if t not in index]
        if missing:
            raise ValueError(f"the BERT vocabulary lacks the special token(s) {missing}")
        self.vocab = vocab
        self.max_length = int(max_length)
        self.do_lower_case = bool(do_lower_case)
        self.pad_id = index["[PAD]"]
        self.cls_id = index["[CLS]"]
        self.sep_id = index["[SEP]"]
        tokenizer = Tokenizer(WordPiece(index, unk_token="[UNK]", max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None,
            lowercase=self.do_lower_case)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", self.cls_id),
                                                     ("[SEP]", self.sep_id)])
        tokenizer.enable_truncation(max_length=self.max_length)
        self._tokenizer = tokenizer

    @classmethod
    def from_vocab_file(cls, path: str | Path, max_length: int = 32) -> BertTextTokenizer:
        """From ``bert-base-uncased``'s ``vocab.txt`` or a folder (e.g. a weights folder)
        that holds one."""
        return cls(read_vocab_file(path), max_length=max_length)

    @property
    def vocab_size(self) -> int:
        """Number of vocabulary tokens (LAVIS' embedding matrix has one more: ``[DEC]``)."""
        return len(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        """Ids of ``[CLS]`` + the cleaned text's wordpieces + ``[SEP]`` (at most 32)."""
        return list(self._tokenizer.encode(blip_caption(text)).ids)

    def __call__(self, texts: Sequence[str], padding: str = "max_length"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both ``long`` [B, L]: L = 32 with
        ``padding="max_length"`` (LAVIS), or the batch's longest with ``"longest"``."""
        if isinstance(texts, str):
            raise TypeError("expected a list of strings, got a single string")
        return pad_token_rows([self.tokenize(t) for t in texts], self.pad_id,
                              self.max_length, padding)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "bert_wordpiece", "max_length": self.max_length,
                "do_lower_case": self.do_lower_case, "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BertTextTokenizer:
        if data.get("type") != "bert_wordpiece":
            raise ValueError(f"not a BERT tokenizer description: type={data.get('type')!r}")
        return cls(list(data["vocab"]), max_length=int(data.get("max_length", 32)),
                   do_lower_case=bool(data.get("do_lower_case", True)))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BertTextTokenizer) and self.vocab == other.vocab
                and self.max_length == other.max_length
                and self.do_lower_case == other.do_lower_case)

    __hash__ = None  # type: ignore[assignment]


# --- config ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blip2VitLConfig:
    """Sizes of QuRe's BLIP-2 ViT-L; the defaults are the paper model."""

    # CLIP ViT-L/14 as LAVIS' create_clip_vit_L builds it.
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1024
    vision_layers: int = 23
    """Blocks of the frozen ViT: 23 (LAVIS ``layers=23``; CLIP ViT-L has 24)."""
    vision_heads: int = 16
    vision_intermediate: int = 4096
    vision_layer_norm_eps: float = 1e-5
    vit_precision: str = "fp16"
    """``fp16``: the ViT runs under fp16 autocast on CUDA (LAVIS converts its weights to
    fp16); always fp32 on the CPU. ``fp32``: always fp32."""
    # BLIP-2 stage-1 Q-Former (BERT-base).
    num_query_tokens: int = 32
    qformer_width: int = 768
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_intermediate: int = 3072
    cross_attention_freq: int = 2
    vocab_size: int = 30523
    """bert-base-uncased's 30522 tokens + LAVIS' ``[DEC]``."""
    max_position_embeddings: int = 512
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    # QuRe head.
    embed_dim: int = 256
    text_padding: str = "longest"
    """``longest`` pads each batch to its longest text, ``max_length`` to 32 as LAVIS;
    padded keys are masked either way, so only float rounding differs."""
    init_temperature: float = 0.07
    temperature_clamp: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.vit_precision not in ("fp16", "fp32"):
            raise ValueError(f"vit_precision must be 'fp16' or 'fp32', got {self.vit_precision!r}")
        if self.text_padding not in ("longest", "max_length"):
            raise ValueError(f"text_padding must be 'longest' or 'max_length', got "
                             f"{self.text_padding!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.temperature_clamp is not None:
            low, high = self.temperature_clamp
            object.__setattr__(self, "temperature_clamp", (float(low), float(high)))

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.temperature_clamp is not None:
            out["temperature_clamp"] = list(self.temperature_clamp)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Blip2VitLConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}")
        values = dict(data)
        if values.get("temperature_clamp") is not None:
            values["temperature_clamp"] = tuple(values["temperature_clamp"])
        return cls(**values)

    def clip_vision_config(self) -> Any:
        transformers = _require_transformers()
        return transformers.CLIPVisionConfig(
            hidden_size=self.vision_width, intermediate_size=self.vision_intermediate,
            num_hidden_layers=self.vision_layers, num_attention_heads=self.vision_heads,
            image_size=self.image_size, patch_size=self.patch_size, num_channels=3,
            hidden_act="quick_gelu", layer_norm_eps=self.vision_layer_norm_eps,
            attention_dropout=0.0)

    def qformer_config(self) -> Any:
        transformers = _require_transformers()
        return transformers.Blip2QFormerConfig(
            vocab_size=self.vocab_size, hidden_size=self.qformer_width,
            num_hidden_layers=self.qformer_layers, num_attention_heads=self.qformer_heads,
            intermediate_size=self.qformer_intermediate, hidden_act="gelu",
            hidden_dropout_prob=self.hidden_dropout,
            attention_probs_dropout_prob=self.attention_dropout,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range, layer_norm_eps=1e-12, pad_token_id=0,
            cross_attention_frequency=self.cross_attention_freq,
            encoder_hidden_size=self.vision_width, use_qformer_text_input=True)


# --- modules --------------------------------------------------------------------------------


def clip_vision_tower(config: Blip2VitLConfig) -> nn.Module:
    """``transformers``' CLIP vision transformer with ``config.vision_layers`` blocks and
    no final LayerNorm; calling it on pixels gives the last block's hidden states.

    Returns the module that owns ``embeddings``, ``pre_layrnorm`` and ``encoder`` (the
    ``CLIPVisionModel`` itself in transformers 5, its ``vision_model`` in 4.x), so the
    state-dict names do not depend on the ``transformers`` release.
    """
    transformers = _require_transformers()
    model = transformers.CLIPVisionModel(config.clip_vision_config())
    core = getattr(model, "vision_model", model)
    for name in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm"):
        if not hasattr(core, name):  # pragma: no cover - depends on the install
            raise RuntimeError(f"transformers {transformers.__version__}: CLIP vision model "
                               f"has no {name!r}; unsupported release")
    # The final LayerNorm only feeds CLIP's pooled output; BLIP-2 reads the unnormalised
    # patch tokens of the last kept block (LAVIS' VisionTransformer has no ln_post).
    core.post_layernorm = nn.Identity()
    return core


class QFormerTextEmbeddings(nn.Module):
    """BERT's word + absolute position embeddings of the Q-Former's text input (LAVIS
    ``Qformer.bert.embeddings`` without its LayerNorm, which ``Blip2QFormerModel`` owns)."""

    def __init__(self, vocab_size: int, width: int, max_positions: int, pad_id: int = 0):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_positions, width)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]


@register_backbone
class Blip2VitLBackbone(CIRBackbone):
    """QuRe's ``blip2_qure`` (``pretrain_vitL``) on ``transformers``; see the module doc.

    Build it fresh with random weights (``Blip2VitLBackbone(tokenizer, config)``), from
    converted LAVIS weights (:func:`qure.models.lavis_convert.backbone_from_lavis`), or
    from a saved backbone (:func:`qure.models.load_backbone`).
    """

    name = "blip2_vitl"

    def __init__(self, tokenizer: BertTextTokenizer, config: Blip2VitLConfig | None = None):
        super().__init__()
        transformers = _require_transformers()
        config = config or Blip2VitLConfig()
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the "
                             f"Q-Former only {config.vocab_size} word embeddings")
        self.model_config = config
        self.tokenizer = tokenizer
        self.temperature_clamp = config.temperature_clamp
        self.visual_encoder = clip_vision_tower(config)
        self.visual_encoder.requires_grad_(False)
        self.visual_encoder.eval()
        self.ln_vision = nn.LayerNorm(config.vision_width)
        qformer_config = config.qformer_config()
        self.qformer = transformers.Blip2QFormerModel(qformer_config)
        self.text_embeddings = QFormerTextEmbeddings(
            config.vocab_size, config.qformer_width, config.max_position_embeddings,
            pad_id=qformer_config.pad_token_id)
        self.query_tokens = nn.Parameter(
            torch.zeros(1, config.num_query_tokens, config.qformer_width))
        self.vision_proj = nn.Linear(config.qformer_width, config.embed_dim)
        self.text_proj = nn.Linear(config.qformer_width, config.embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(config.init_temperature)))
        self._init_new_weights()

    def _init_new_weights(self) -> None:
        """BERT-style init for what ``transformers`` does not initialise here (LAVIS:
        ``query_tokens`` ~ N(0, 0.02); embeddings and projections as BERT)."""
        std = self.model_config.initializer_range
        with torch.no_grad():
            self.query_tokens.normal_(0.0, std)
            for embedding in (self.text_embeddings.word_embeddings,
                              self.text_embeddings.position_embeddings):
                embedding.weight.normal_(0.0, std)
                if embedding.padding_idx is not None:
                    embedding.weight[embedding.padding_idx].zero_()
            for proj in (self.vision_proj, self.text_proj):
                proj.weight.normal_(0.0, std)
                proj.bias.zero_()

    # --- config ------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "tokenizer": self.tokenizer.to_dict(),
                "model": self.model_config.to_dict()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Blip2VitLBackbone:
        if config.get("name") != cls.name:
            raise ValueError(f"not a {cls.name} config: name={config.get('name')!r}")
        unknown = sorted(set(config) - {"name", "tokenizer", "model"})
        if unknown:
            raise ValueError(f"unknown {cls.name} config key(s): {', '.join(unknown)}")
        if "tokenizer" not in config:
            raise ValueError(f"{cls.name} config needs a 'tokenizer' (the BERT vocabulary)")
        return cls(BertTextTokenizer.from_dict(config["tokenizer"]),
                   Blip2VitLConfig.from_dict(config.get("model", {})))

    @property
    def num_image_tokens(self) -> int:
        return self.model_config.num_query_tokens

    def train(self, mode: bool = True) -> Blip2VitLBackbone:
        """The frozen ViT stays in eval mode (LAVIS' ``disabled_train``)."""
        super().train(mode)
        self.visual_encoder.eval()
        return self

    # --- frozen part -------------------------------------------------------------------

    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels [B,3,224,224] (targetpad_transform) -> ViT tokens [B,257,1024], fp32.

        The output of the 23rd block, before ``ln_vision`` (which is trained)."""
        autocast = self.model_config.vit_precision == "fp16" and images.device.type == "cuda"
        with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.float16,
                                             enabled=autocast):
            dtype = self.visual_encoder.embeddings.patch_embedding.weight.dtype
            out = self.visual_encoder(pixel_values=images.to(dtype))
        return out.last_hidden_state.float()

    def frozen_state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.visual_encoder.state_dict())

    # --- trainable part ----------------------------------------------------------------

    def _query_outputs(self, frozen: torch.Tensor, text_ids: torch.Tensor | None = None,
                       text_mask: torch.Tensor | None = None) -> torch.Tensor:
        image = self.ln_vision(frozen.to(self.ln_vision.weight.dtype))
        queries = self.query_tokens.expand(frozen.shape[0], -1, -1)
        num_queries = queries.shape[1]
        if text_ids is None:
            hidden, mask = queries, None
        else:
            text = self.text_embeddings(text_ids)
            hidden = torch.cat([queries, text.to(queries.dtype)], dim=1)
            query_mask = torch.ones(queries.shape[:2], dtype=torch.long, device=queries.device)
            if text_mask is None:
                text_mask = torch.ones_like(text_ids)
            mask = torch.cat([query_mask, text_mask.long()], dim=1)
        out = self.qformer(query_embeds=hidden, query_length=num_queries, attention_mask=mask,
                           encoder_hidden_states=image, return_dict=True)
        return out.last_hidden_state[:, :num_queries]

    def encode_images(self, frozen: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(self._query_outputs(frozen)), dim=-1)

    def encode_queries(self, frozen_ref: torch.Tensor, texts: list[str]) -> torch.Tensor:
        if len(texts) != frozen_ref.shape[0]:
            raise ValueError(f"{frozen_ref.shape[0]} references but {len(texts)} texts")
        ids, mask = self.tokenizer(texts, padding=self.model_config.text_padding)
        ids, mask = ids.to(frozen_ref.device), mask.to(frozen_ref.device)
        outputs = self._query_outputs(frozen_ref, ids, mask)
        return F.normalize(self.text_proj(outputs).mean(1), dim=-1)

"""Reference outputs of LAVIS' BLIP-2 ViT-L building blocks, for the parity test.

Run with the python of the environment tools/lavis_parity_env.sh creates (PyPI
salesforce-lavis 1.0.2), never with the project's:

    python tools/lavis_parity_dump.py --size reduced --vocab vocab.txt --out lavis.pt

It builds, with random weights and without any download:

* LAVIS' CLIP ``VisionTransformer`` (lavis/models/clip_vit.py) with **23** blocks. The
  1.0.2 class builds ``layers - 1`` blocks and its ``create_clip_vit_L`` passes
  ``layers=22`` (21 blocks); QuRe's LAVIS builds 23, so ``layers=24`` is passed here and
  the block count is asserted;
* the Q-Former, LAVIS' ``BertLMHeadModel`` (lavis/models/blip2_models/Qformer.py) with
  the configuration ``Blip2Base.init_Qformer`` gives it (cross-attention every 2nd layer,
  ``encoder_width`` = ViT width, ``query_length`` = number of query tokens), and the
  rest of ``blip2_qure``: ``ln_vision`` (LAVIS' LayerNorm), ``query_tokens``,
  ``vision_proj``, ``text_proj``, ``itm_head`` and ``temp``;
* the tokenizer as ``Blip2Base.init_tokenizer`` makes it (``BertTokenizer`` + ``[DEC]``),
  from the given vocabulary file, and LAVIS' ``blip_caption`` processor for the texts.

Every parameter is perturbed with noise, so LayerNorm gains and zero-initialised biases
carry distinct values and a mapping mistake cannot hide behind an initial value.

Then it computes, in fp32 and eval mode, QuRe's features the way ``blip2_qure`` does:
the frozen ViT tokens, the target embeddings ``normalize(vision_proj(Q-Former(query
tokens x ln_vision(ViT(image)))))`` and the query embeddings ``normalize(mean over the
query positions of text_proj(Q-Former([query tokens; text] x ln_vision(ViT(ref)))))``,
and saves everything, with the model's state dict in LAVIS naming (``{"model": ...}``,
as LAVIS checkpoints store it), to ``--out``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

# The sizes of the two models; keys are the project's Blip2VitLConfig fields.
SIZES = {
    "reduced": {
        "image_size": 56, "patch_size": 14, "vision_width": 64, "vision_layers": 23,
        "vision_heads": 4, "vision_intermediate": 256, "num_query_tokens": 8,
        "qformer_width": 48, "qformer_layers": 4, "qformer_heads": 4,
        "qformer_intermediate": 96, "cross_attention_freq": 2,
        "max_position_embeddings": 64, "embed_dim": 24,
    },
    "full": {
        "image_size": 224, "patch_size": 14, "vision_width": 1024, "vision_layers": 23,
        "vision_heads": 16, "vision_intermediate": 4096, "num_query_tokens": 32,
        "qformer_width": 768, "qformer_layers": 12, "qformer_heads": 12,
        "qformer_intermediate": 3072, "cross_attention_freq": 2,
        "max_position_embeddings": 512, "embed_dim": 256,
    },
}

TEXTS = [
    "Is red and has long sleeves.",
    "Make it BLUE!  (darker), with stripes; and a collar",
    "a photo of $ that shows two dogs playing",
    "the shirt is green and has a collar " * 6,
]


class LavisQuRe(nn.Module):
    """The parameters of ``blip2_qure`` under their LAVIS names."""

    def __init__(self, size: dict, vocab_size: int):
        super().__init__()
        from lavis.models.blip2_models.blip2 import LayerNorm
        from lavis.models.blip2_models.Qformer import BertConfig, BertLMHeadModel
        from lavis.models.clip_vit import VisionTransformer

        self.visual_encoder = VisionTransformer(
            input_resolution=size["image_size"], patch_size=size["patch_size"],
            width=size["vision_width"], layers=size["vision_layers"] + 1,
            heads=size["vision_heads"], use_grad_checkpointing=False)
        blocks = len(self.visual_encoder.transformer.resblocks)
        assert blocks == size["vision_layers"], f"LAVIS built {blocks} ViT blocks"
        assert size["vision_intermediate"] == 4 * size["vision_width"]
        self.ln_vision = LayerNorm(size["vision_width"])
        # bert-base-uncased's config.json values, with the sizes above.
        config = BertConfig(
            vocab_size=vocab_size, hidden_size=size["qformer_width"],
            num_hidden_layers=size["qformer_layers"],
            num_attention_heads=size["qformer_heads"],
            intermediate_size=size["qformer_intermediate"], hidden_act="gelu",
            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            max_position_embeddings=size["max_position_embeddings"], type_vocab_size=2,
            initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
            position_embedding_type="absolute")
        config.encoder_width = size["vision_width"]
        config.add_cross_attention = True
        config.cross_attention_freq = size["cross_attention_freq"]
        config.query_length = size["num_query_tokens"]
        self.Qformer = BertLMHeadModel(config)
        width = size["qformer_width"]
        self.query_tokens = nn.Parameter(torch.zeros(1, size["num_query_tokens"], width))
        self.vision_proj = nn.Linear(width, size["embed_dim"])
        self.text_proj = nn.Linear(width, size["embed_dim"])
        self.itm_head = nn.Linear(width, 2)
        self.temp = nn.Parameter(0.07 * torch.ones([]))

    def perturb(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            for name, param in self.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                if name.endswith("bias") or name == "temp":
                    param.add_(0.05 * noise)
                elif param.dim() == 1:  # LayerNorm gains, class embedding
                    param.add_(0.1 * noise)
                elif name == "query_tokens":
                    param.add_(0.5 * noise)
                else:
                    param.add_(0.1 * param.std().clamp(min=0.01) * noise)

    def image_embeds(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frozen = self.visual_encoder(images)
        return frozen, self.ln_vision(frozen)

    def target_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        out = self.Qformer.bert(query_embeds=queries, encoder_hidden_states=image_embeds,
                                encoder_attention_mask=atts, return_dict=True)
        return F.normalize(self.vision_proj(out.last_hidden_state), dim=-1)

    def query_features(self, image_embeds: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_atts = torch.ones(queries.shape[:-1], dtype=torch.long)
        out = self.Qformer.bert(input_ids, query_embeds=queries,
                                attention_mask=torch.cat([query_atts, attention_mask], dim=1),
                                encoder_hidden_states=image_embeds,
                                encoder_attention_mask=atts, return_dict=True)
        hidden = out.last_hidden_state[:, : queries.shape[1], :]
        return F.normalize(self.text_proj(hidden).mean(dim=1), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), required=True)
    parser.add_argument("--vocab", required=True, help="BERT vocab.txt to tokenize with")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    from importlib.metadata import version

    from lavis.processors.blip_processors import BlipCaptionProcessor
    from transformers import BertTokenizer

    imported = time.perf_counter() - started
    tokenizer = BertTokenizer(args.vocab, do_lower_case=True)  # as init_tokenizer, offline
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipCaptionProcessor()  # QuRe's txt_processors["eval"]
    texts = [processor(t) for t in TEXTS]
    tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=32,
                       return_tensors="pt")

    size = SIZES[args.size]
    torch.manual_seed(args.seed)
    model = LavisQuRe(size, vocab_size=len(tokenizer)).eval()
    model.perturb(torch.Generator().manual_seed(args.seed + 1))
    g = torch.Generator().manual_seed(args.seed + 2)
    images = torch.randn(len(TEXTS), 3, size["image_size"], size["image_size"], generator=g)
    with torch.no_grad():
        frozen, embeds = model.image_embeds(images)
        targets = model.target_features(embeds)
        queries = model.query_features(embeds, tokens.input_ids, tokens.attention_mask)
    torch.save({
        "size": size, "vocab_size": len(tokenizer), "lavis_version": version("salesforce-lavis"),
        "torch_version": str(torch.__version__), "raw_texts": TEXTS, "texts": texts,
        "input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask,
        "images": images, "frozen": frozen, "target_features": targets,
        "query_features": queries, "model": model.state_dict(),
    }, args.out)
    print(f"lavis {version('salesforce-lavis')}, torch {torch.__version__}: {args.size} dump in "
          f"{time.perf_counter() - started:.1f} s (imports {imported:.1f} s) -> {args.out}")


if __name__ == "__main__":
    main()

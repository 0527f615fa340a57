"""Backbones for composed image retrieval: the interface every backbone implements, the
mini BLIP-2 that trains on a CPU, and the frozen-feature cache they share.

Importing this package registers the mini backbone and the paper backbone (BLIP-2 ViT-L,
which needs the ``blip2`` extra only when built) with :func:`build_backbone`.
"""

from qure.models.blip2_vitl import BertTextTokenizer, Blip2VitLBackbone, Blip2VitLConfig
from qure.models.feature_cache import (
    FeatureCache,
    FeatureCacheMismatchError,
    build_feature_cache,
    image_loader,
)
from qure.models.image_encoder import PatchEncoder, PatchEncoderConfig, pretrain_image_encoder
from qure.models.interface import (
    CIRBackbone,
    FrozenWeightsError,
    build_backbone,
    load_backbone,
    max_sim_scores,
    register_backbone,
    save_backbone,
)
from qure.models.qformer import MiniBlip2Backbone, MiniQFormer, QFormerConfig
from qure.models.tokenizer import WordTokenizer

__all__ = [
    "BertTextTokenizer",
    "Blip2VitLBackbone",
    "Blip2VitLConfig",
    "CIRBackbone",
    "FeatureCache",
    "FeatureCacheMismatchError",
    "FrozenWeightsError",
    "MiniBlip2Backbone",
    "MiniQFormer",
    "PatchEncoder",
    "PatchEncoderConfig",
    "QFormerConfig",
    "WordTokenizer",
    "build_backbone",
    "build_feature_cache",
    "image_loader",
    "load_backbone",
    "max_sim_scores",
    "pretrain_image_encoder",
    "register_backbone",
    "save_backbone",
]

"""The paper backbone (BLIP-2 ViT-L on transformers) at reduced width, and the LAVIS
weight converter: strict key accounting, shapes, training through the trainer."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from PIL import Image

from qure.evaluation import FeaturesByName
from qure.models import (
    build_backbone,
    build_feature_cache,
    image_loader,
    load_backbone,
    save_backbone,
)
from qure.models.blip2_vitl import (
    BertTextTokenizer,
    Blip2VitLBackbone,
    Blip2VitLConfig,
)
from qure.models.lavis_convert import (
    IGNORED_BLIP2_KEYS,
    LavisConversionError,
    backbone_from_lavis,
    convert_lavis_state_dicts,
)
from qure.models.preprocess import load_image, targetpad_transform
from qure.rehearsal.weights import lavis_checkpoint, vit_file
from qure.training.data import TrainingData
from qure.training.trainer import TrainConfig, Trainer
from tests.conftest import REPO_ROOT

VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "!", "$",
         "make", "it", "blue", "red", "is", "has", "long", "sleeve", "##s", "and", "a",
         "photo", "of", "that", "shirt", "dark", "##er", "green", "collar"]
TINY = Blip2VitLConfig(
    image_size=28, patch_size=14, vision_width=32, vision_layers=3, vision_heads=2,
    vision_intermediate=128, num_query_tokens=4, qformer_width=32, qformer_layers=3,
    qformer_heads=2, qformer_intermediate=64, vocab_size=len(VOCAB) + 1,
    max_position_embeddings=32, embed_dim=16)
TEXTS = ["make it blue", "is red and has long sleeves", "a photo of $ that", "darker!"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0, **overrides) -> Blip2VitLBackbone:
    torch.manual_seed(seed)
    config = Blip2VitLConfig.from_dict({**TINY.to_dict(), **overrides})
    return Blip2VitLBackbone(BertTextTokenizer(VOCAB), config)


def pixels(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, TINY.image_size, TINY.image_size,
                       generator=torch.Generator().manual_seed(seed))


# --- tokenizer ------------------------------------------------------------------------------

def test_tokenizer_wordpieces_cleaning_truncation(tmp_path):
    tok = BertTextTokenizer(VOCAB)
    ids = tok.tokenize("Make it BLUE! (darker), sleeves")
    # blip_caption: lower-case, drop "!()" ; BERT: "," split off, "darker" -> dark ##er
    assert [tok.vocab[i] for i in ids] == ["[CLS]", "make", "it", "blue", "dark", "##er",
                                          ",", "sleeve", "##s", "[SEP]"]
    assert tok.tokenize("zebra")[1] == VOCAB.index("[UNK]")
    batch, mask = tok(["make it blue", "red " * 40])
    assert batch.shape == mask.shape == (2, 32)
    assert batch[1, 0] == tok.cls_id and batch[1, 31] == tok.sep_id and mask[1].all()
    assert mask[0].tolist() == [1] * 5 + [0] * 27 and (batch[0, 5:] == tok.pad_id).all()
    short, short_mask = tok(["make it blue", "red"], padding="longest")
    assert short.shape == (2, 5) and short_mask[1].tolist() == [1, 1, 1, 0, 0]
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    assert BertTextTokenizer.from_vocab_file(tmp_path) == tok
    assert BertTextTokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))) == tok
    with pytest.raises(ValueError, match=r"\[SEP\]"):
        BertTextTokenizer([t for t in VOCAB if t != "[SEP]"])
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt"):
        BertTextTokenizer.from_vocab_file(tmp_path / "nowhere")


# --- model ----------------------------------------------------------------------------------

def test_paper_sizes_and_23_block_vit_without_final_layernorm():
    config = Blip2VitLConfig()
    assert (config.vision_layers, config.num_query_tokens, config.qformer_width,
            config.embed_dim, config.vocab_size, config.num_patches) == (
        23, 32, 768, 256, 30523, 256)
    with torch.device("meta"):
        model = Blip2VitLBackbone(BertTextTokenizer(VOCAB), config)
    assert len(model.visual_encoder.encoder.layers) == 23
    keys = set(model.state_dict())
    assert not any("post_layernorm" in k for k in keys)
    assert {k for k in keys if "crossattention.attention.query.weight" in k} == {
        f"qformer.encoder.layer.{i}.crossattention.attention.query.weight"
        for i in range(0, 12, 2)}
    assert tuple(model.query_tokens.shape) == (1, 32, 768)
    assert tuple(model.text_embeddings.word_embeddings.weight.shape) == (30523, 768)
    assert config.init_temperature == 0.07 and config.temperature_clamp is None


def test_shapes_normalisation_and_frozen_part():
    model = tiny_model().eval()
    frozen = model.frozen_features(pixels(3))
    assert frozen.shape == (3, TINY.num_patches + 1, 32) and not frozen.requires_grad
    targets = model.encode_images(frozen)
    queries = model.encode_queries(frozen, TEXTS[:3])
    assert targets.shape == (3, 4, 16) and queries.shape == (3, 16)
    torch.testing.assert_close(targets.norm(dim=-1), torch.ones(3, 4))
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(3))
    naive = torch.einsum("ik,jlk->ijl", queries, targets).amax(-1)
    torch.testing.assert_close(model.score(queries, targets), naive)
    # Padding to 32 (LAVIS) or to the longest text gives the same queries.
    padded = tiny_model(text_padding="max_length").eval()
    torch.testing.assert_close(padded.encode_queries(frozen, TEXTS[:3]), queries)
    model.train()
    assert not model.visual_encoder.training
    assert all(not p.requires_grad for p in model.visual_encoder.parameters())
    counts = model.parameter_counts()
    assert counts["frozen"] == sum(p.numel() for p in model.visual_encoder.parameters())
    assert set(model.frozen_state_dict()) == {
        k[len("visual_encoder."):] for k in model.state_dict() if k.startswith("visual_encoder.")}


def test_gradients_reach_the_trainable_part_only():
    model = tiny_model().train()
    frozen = model.frozen_features(pixels(4))
    queries = model.encode_queries(frozen[:2], TEXTS[:2])
    scores = model.score(queries, model.encode_images(frozen[2:]))
    (scores.diagonal() / model.temperature).sum().backward()
    assert all(p.grad is None for p in model.visual_encoder.parameters())
    for name in ("query_tokens", "temp", "ln_vision.weight", "vision_proj.weight",
                 "text_proj.weight", "text_embeddings.word_embeddings.weight",
                 "qformer.layernorm.weight",
                 "qformer.encoder.layer.0.crossattention.attention.key.weight",
                 "qformer.encoder.layer.1.intermediate.dense.weight",
                 "qformer.encoder.layer.1.intermediate_query.dense.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_determinism_and_strict_round_trip(tmp_path):
    a, b = tiny_model(seed=4).eval(), tiny_model(seed=4).eval()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    frozen = a.frozen_features(pixels(2))
    assert torch.equal(frozen, b.frozen_features(pixels(2)))
    assert torch.equal(a.encode_queries(frozen, TEXTS[:2]), b.encode_queries(frozen, TEXTS[:2]))
    path = tmp_path / "model.pt"
    save_backbone(path, a)
    loaded, _ = load_backbone(path)
    loaded.eval()
    assert loaded.config == a.config
    assert torch.equal(loaded.encode_images(frozen), a.encode_images(frozen))
    state = a.state_dict()
    state.pop("qformer.encoder.layer.2.output_query.LayerNorm.bias")
    with pytest.raises(RuntimeError, match=r"output_query\.LayerNorm\.bias"):
        build_backbone(a.config).load_state_dict(state)
    with pytest.raises(ValueError, match="strictly"):
        a.load_state_dict(a.state_dict(), strict=False)


# --- LAVIS conversion -----------------------------------------------------------------------

def test_convert_every_expected_key_and_load_strictly(tmp_path):
    source = tiny_model(seed=2).eval()
    ckpt = lavis_checkpoint(source)
    state, report = convert_lavis_state_dicts(ckpt, None, TINY, blip2_name="ckpt.pth")
    target = tiny_model(seed=9)
    target.load_state_dict(state)  # strict
    for key, value in source.state_dict().items():
        if key.startswith("visual_encoder."):  # stored as fp16 by LAVIS
            torch.testing.assert_close(state[key], value.half().float())
        else:
            assert torch.equal(state[key], value), key
    assert report.vit_source == "ckpt.pth" and report.converted == len(state)
    dropped = {k.split(": ", 1)[1] for k in report.ignored}
    assert dropped == {k for k in ckpt if any(
        re.fullmatch(p, k) for p, _ in IGNORED_BLIP2_KEYS)}
    # The same from files, through the CLI, with a separate ViT file (CLIP's 24th block,
    # ln_post and proj are dropped with their reasons) and load_backbone.
    blip2 = {k: v for k, v in ckpt.items() if not k.startswith("visual_encoder.")}
    torch.save({"model": blip2}, tmp_path / "blip2.pth")
    torch.save(vit_file(source), tmp_path / "clip.pth")
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    script = REPO_ROOT / "workflow_scripts" / "convert_blip2_weights.py"
    overrides = {k: v for k, v in TINY.to_dict().items() if v != getattr(Blip2VitLConfig(), k)}
    result = subprocess.run(
        [sys.executable, str(script), "--blip2", str(tmp_path / "blip2.pth"),
         "--vit", str(tmp_path / "clip.pth"), "--vocab", str(tmp_path / "vocab.txt"),
         "--out", str(tmp_path / "out.pt"), "--report", str(tmp_path / "report.json"),
         "--config", json.dumps(overrides)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    loaded, extra = load_backbone(tmp_path / "out.pt")
    assert extra["converted_from"]["vit"].endswith("clip.pth")
    frozen = source.frozen_features(pixels(2))
    torch.testing.assert_close(loaded.eval().encode_queries(frozen, TEXTS[:2]),
                               source.encode_queries(frozen, TEXTS[:2]), atol=1e-3, rtol=0)
    report_json = json.loads((tmp_path / "report.json").read_text())
    ignored_vit = [k for k in report_json["ignored"] if "clip.pth" in k]
    assert any("resblocks.3." in k for k in ignored_vit)
    assert any(k.endswith(": proj") for k in ignored_vit)


def test_missing_key_fails_naming_key_and_file():
    ckpt = lavis_checkpoint(tiny_model())
    key = "Qformer.bert.encoder.layer.1.output_query.LayerNorm.bias"
    del ckpt[key]
    with pytest.raises(LavisConversionError, match=rf"ckpt\.pth: missing key\(s\): {key}"):
        convert_lavis_state_dicts(ckpt, None, TINY, blip2_name="ckpt.pth")


def test_unexpected_key_fails_naming_key_and_file():
    ckpt = lavis_checkpoint(tiny_model())
    ckpt["Qformer.bert.pooler.dense.weight"] = torch.zeros(32, 32)
    with pytest.raises(LavisConversionError,
                       match=r"ckpt\.pth: unexpected key\(s\).*Qformer\.bert\.pooler\.dense"):
        convert_lavis_state_dicts(ckpt, None, TINY, blip2_name="ckpt.pth")
    vit = vit_file(tiny_model())
    vit["ln_final.weight"] = torch.ones(32)
    blip2 = {k: v for k, v in lavis_checkpoint(tiny_model()).items()
             if not k.startswith("visual_encoder.")}
    with pytest.raises(LavisConversionError, match=r"clip\.pth: unexpected.*ln_final\.weight"):
        convert_lavis_state_dicts(blip2, vit, TINY, vit_name="clip.pth")


def test_vit_block_count_shape_and_source_errors():
    model = tiny_model()
    ckpt = lavis_checkpoint(model)
    last = TINY.vision_layers - 1
    short = {k: v for k, v in ckpt.items()
             if not k.startswith(f"visual_encoder.transformer.resblocks.{last}.")}
    with pytest.raises(LavisConversionError, match=rf"resblocks\.{last}\..*21 blocks"):
        convert_lavis_state_dicts(short, None, TINY, blip2_name="ckpt.pth")
    wrong = dict(ckpt)
    wrong["vision_proj.weight"] = torch.zeros(8, TINY.qformer_width)
    with pytest.raises(LavisConversionError, match=r"vision_proj\.weight has shape \(8, 32\)"):
        convert_lavis_state_dicts(wrong, None, TINY, blip2_name="ckpt.pth")
    blip2 = {k: v for k, v in ckpt.items() if not k.startswith("visual_encoder.")}
    with pytest.raises(LavisConversionError, match="ViT weights are missing"):
        convert_lavis_state_dicts(blip2, None, TINY, blip2_name="ckpt.pth")
    other = vit_file(tiny_model(seed=5))
    with pytest.raises(LavisConversionError, match="differs from"):
        convert_lavis_state_dicts(ckpt, other, TINY, blip2_name="ckpt.pth")


def test_backbone_from_lavis_file_errors_name_the_file(tmp_path):
    ckpt = lavis_checkpoint(tiny_model())
    del ckpt["text_proj.bias"]
    path = tmp_path / "blip2_pretrained_vitL.pth"
    torch.save({"model": ckpt}, path)
    tok = BertTextTokenizer(VOCAB)
    with pytest.raises(LavisConversionError, match=rf"{path}: missing key\(s\): text_proj\.bias"):
        backbone_from_lavis(path, tok, config=TINY)


# --- training through the project's trainer ---------------------------------------------------

def _toy_training(tmp_path) -> tuple[TrainingData, list[str], list[torch.Tensor]]:
    names = [f"img{i}" for i in range(6)]
    g = torch.Generator().manual_seed(0)
    images = []
    for i, name in enumerate(names):
        array = (torch.rand(40 + 4 * i, 34, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(array).save(tmp_path / f"{name}.png")
        images.append(tmp_path / f"{name}.png")
    texts = ["make it blue", "make it red", "has long sleeves", "is green", "darker",
             "a photo of $ that", "is red and blue", "has a collar"]
    refs = [names[i % 6] for i in range(8)]
    targets = torch.tensor([(i + 1) % 6 for i in range(8)])
    data = TrainingData([f"q{i}" for i in range(8)], refs, texts, targets,
                        torch.tensor([i % 6 for i in range(8)]), torch.zeros(8, dtype=torch.long),
                        names, torch.zeros(6, dtype=torch.long), ["toy"], ["toy/train"] * 8)
    return data, names, images


@pytest.mark.parametrize("cached", [True, False])
def test_trainer_runs_two_steps(tmp_path, cached):
    data, names, files = _toy_training(tmp_path)
    transform = targetpad_transform(1.25, TINY.image_size)
    model = tiny_model(seed=1)
    if cached:
        cache = build_feature_cache(tmp_path / "features.npy", names,
                                    image_loader(dict(zip(names, files, strict=True)).__getitem__,
                                                 transform),
                                    model, transform.config, batch_size=4, progress=False)
        assert cache.index["backbone"] == "blip2_vitl" and cache.as_tensor().dtype == torch.float16
        table = FeaturesByName(list(cache.names), cache.as_tensor())
    else:
        batch = torch.stack([transform(load_image(f, mode=None)) for f in files])
        table = FeaturesByName(names, model.frozen_features(batch))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=1, batch_size=4, n_def=1, lr=1e-4, seed=0, snapshot_queries=0)
    history = Trainer(model, data, table, config, tmp_path / "run", progress=False).fit()
    assert history[0]["steps"] == 2 and history[0]["loss"] > 0
    after = model.state_dict()
    assert not torch.equal(after["query_tokens"], before["query_tokens"])
    assert not torch.equal(after["temp"], before["temp"])
    for key in before:
        if key.startswith("visual_encoder."):
            assert torch.equal(after[key], before[key]), key

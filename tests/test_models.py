"""Mini BLIP-2 backbone: interface, tokenizer, encoder pretraining, training behaviour."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from qure.losses import reward_loss
from qure.models import (
    MiniBlip2Backbone,
    PatchEncoderConfig,
    QFormerConfig,
    WordTokenizer,
    build_backbone,
    load_backbone,
    max_sim_scores,
    pretrain_image_encoder,
    save_backbone,
)
from qure.models.tokenizer import split_words

CAPTIONS = ["make it blue", "make it red", "change the circle to a square",
            "Make it BLUE!", "add two more stars, please"]
TINY_ENCODER = PatchEncoderConfig(image_size=16, patch_size=4, width=32, depth=1, heads=2)
TINY_QFORMER = QFormerConfig(num_query_tokens=4, width=32, depth=2, heads=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine OpenMP's
    spinning threads make these tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_backbone(seed: int = 0, **kwargs) -> MiniBlip2Backbone:
    torch.manual_seed(seed)
    kwargs.setdefault("qformer", TINY_QFORMER)
    kwargs.setdefault("embed_dim", 16)
    return MiniBlip2Backbone(WordTokenizer.from_corpus(CAPTIONS), image_encoder=TINY_ENCODER,
                             **kwargs)


def frozen_batch(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, TINY_ENCODER.num_patches, TINY_ENCODER.width, generator=g)


# --- tokenizer ---------------------------------------------------------------------------

def test_tokenizer_vocabulary_order_and_cleaning():
    tok = WordTokenizer.from_corpus(CAPTIONS)
    # "it"/"make" (3x) then "blue" (2x) then singletons alphabetically; "," is a token.
    assert tok.words[:3] == ["it", "make", "blue"]
    assert tok.words[3:] == sorted(tok.words[3:])
    assert tok.itos[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    assert split_words("Make it BLUE!  (now)") == ["make", "it", "blue", "now"]
    assert tok.tokenize("make it green") == [tok.cls_id, tok.stoi["make"], tok.stoi["it"],
                                             tok.unk_id]


def test_tokenizer_padding_truncation_and_round_trip():
    tok = WordTokenizer.from_corpus(CAPTIONS)
    ids, mask = tok(["make it blue", "red " * 50])
    assert ids.shape == mask.shape == (2, 32)
    assert mask[0].tolist() == [1] * 4 + [0] * 28
    assert mask[1].sum() == 32 and ids[1, 0] == tok.cls_id
    assert (ids[mask == 0] == tok.pad_id).all()
    ids_l, mask_l = tok(["make it blue", "red"], padding="longest")
    assert ids_l.shape == (2, 4) and mask_l[1].tolist() == [1, 1, 0, 0]
    clone = WordTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert clone == tok and clone.stoi == tok.stoi
    assert tok.decode(tok.tokenize("make it blue")) == "make it blue"
    with pytest.raises(TypeError):
        tok("make it blue")  # type: ignore[arg-type]


# --- shapes, scores -----------------------------------------------------------------------

def test_shapes_and_normalisation():
    model = tiny_backbone().eval()
    images = torch.randn(3, 3, 16, 16)
    frozen = model.frozen_features(images)
    assert frozen.shape == (3, 16, 32) and not frozen.requires_grad
    targets = model.encode_images(frozen)
    queries = model.encode_queries(frozen, ["make it blue", "make it red", "x"])
    assert targets.shape == (3, 4, 16) and queries.shape == (3, 16)
    torch.testing.assert_close(targets.norm(dim=-1), torch.ones(3, 4))
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(3))
    assert model.score(queries, targets).shape == (3, 3)
    assert model.num_image_tokens == 4


def test_score_equals_naive_max_and_chunking_is_exact():
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(7, 16, generator=g), dim=-1)
    images = F.normalize(torch.randn(23, 5, 16, generator=g), dim=-1)
    naive = torch.einsum("ik,jlk->ijl", queries, images).max(-1).values
    full = max_sim_scores(queries, images)
    torch.testing.assert_close(full, naive)
    for chunk in (1, 4, 22, 23, 100):
        torch.testing.assert_close(max_sim_scores(queries, images, chunk_size=chunk), full)
    model = tiny_backbone()
    torch.testing.assert_close(model.score(queries, images, chunk_size=3), naive)
    # On a dyadic grid every product and partial sum is exact in float32, so chunking
    # must give bit-identical scores whatever the matmul kernel's blocking.
    q = torch.randint(-4, 5, (7, 16), generator=g).float() / 8
    x = torch.randint(-4, 5, (23, 5, 16), generator=g).float() / 8
    exact = max_sim_scores(q, x)
    assert torch.equal(exact, torch.einsum("ik,jlk->ijl", q, x).amax(-1))
    for chunk in (1, 4, 22):
        assert torch.equal(max_sim_scores(q, x, chunk_size=chunk), exact)


def test_single_vector_scores_are_plain_cosine():
    model = tiny_backbone(single_vector=True).eval()
    frozen = frozen_batch(5)
    targets = model.encode_images(frozen)
    queries = model.encode_queries(frozen[:3], ["make it blue"] * 3)
    assert targets.shape == (5, 1, 16) and model.num_image_tokens == 1
    cosine = F.cosine_similarity(queries[:, None], targets[None, :, 0], dim=-1)
    torch.testing.assert_close(model.score(queries, targets), cosine)


def test_text_padding_does_not_change_queries():
    model = tiny_backbone().eval()
    frozen = frozen_batch(2)
    texts = ["make it blue", "change the circle to a square"]
    longest = model.encode_queries(frozen, texts)
    model.text_padding = "max_length"
    torch.testing.assert_close(model.encode_queries(frozen, texts), longest)


# --- training behaviour --------------------------------------------------------------------

def _reward_step(model: MiniBlip2Backbone, optimiser: torch.optim.Optimizer,
                 frozen: torch.Tensor, texts: list[str]) -> torch.Tensor:
    b = len(texts)
    queries = model.encode_queries(frozen[:b], texts)
    pos = model.encode_images(frozen[b:2 * b])
    neg = model.encode_images(frozen[2 * b:3 * b])
    s_pos = model.score(queries, pos).diagonal()
    s_neg = model.score(queries, neg).diagonal()
    loss = reward_loss(s_pos, s_neg, model.temperature)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return loss


def test_determinism_same_seed_same_outputs_and_updates():
    frozen = frozen_batch(12)
    texts = ["make it blue", "make it red", "add two more stars", "make it blue"]
    states = []
    for _ in range(2):
        model = tiny_backbone(seed=3).train()
        optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
        torch.manual_seed(11)  # dropout masks
        losses = [_reward_step(model, optimiser, frozen, texts).item() for _ in range(3)]
        states.append((losses, model.state_dict()))
    assert states[0][0] == states[1][0]
    for key, value in states[0][1].items():
        assert torch.equal(value, states[1][1][key]), key


def test_gradients_reach_trainable_parts_only():
    model = tiny_backbone().train()
    assert not model.visual_encoder.training  # disabled_train: stays in eval mode
    frozen_params = list(model.visual_encoder.parameters())
    assert all(not p.requires_grad for p in frozen_params)
    images = torch.randn(9, 3, 16, 16, requires_grad=False)
    b = 3
    frozen = model.frozen_features(images)
    queries = model.encode_queries(frozen[:b], ["make it blue", "make it red", "add stars"])
    s_pos = model.score(queries, model.encode_images(frozen[b:2 * b])).diagonal()
    s_neg = model.score(queries, model.encode_images(frozen[2 * b:])).diagonal()
    reward_loss(s_pos, s_neg, model.temperature).backward()
    assert all(p.grad is None for p in frozen_params)
    # The last layer's text feed-forward feeds no output (only query positions are read),
    # as in BLIP-2's Q-Former; every other trainable tensor gets a gradient.
    last_text_ffn = f"qformer.layers.{TINY_QFORMER.depth - 1}.ffn_text."
    missing = [n for n, p in model.named_trainable_parameters()
               if not n.startswith(last_text_ffn) and (p.grad is None or not p.grad.any())
               and "embeddings" not in n]
    assert missing == []
    for name in ("query_tokens", "temp", "vision_proj.weight", "text_proj.weight",
                 "ln_vision.weight", "qformer.layers.0.cross_attn.key_value.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    counts = model.parameter_counts()
    assert counts["frozen"] == sum(p.numel() for p in frozen_params) > 0
    assert counts["trainable"] == sum(p.numel() for p in model.trainable_parameters())


def test_temperature_is_a_raw_parameter_initialised_to_007():
    model = tiny_backbone()
    assert isinstance(model.temp, torch.nn.Parameter)
    assert model.temperature.item() == pytest.approx(0.07)
    with torch.no_grad():
        model.temp.fill_(5.0)
    assert model.temperature.item() == 5.0  # not clamped, as in the release
    clamped = tiny_backbone(temperature_clamp=(0.001, 0.5))
    with torch.no_grad():
        clamped.temp.fill_(5.0)
    assert clamped.temperature.item() == 0.5


def test_strict_state_dict_round_trip(tmp_path):
    model = tiny_backbone(seed=5).eval()
    frozen_images = torch.randn(2, 3, 16, 16)
    path = save_backbone(tmp_path / "ckpt.pt", model, extra={"epoch": 3})
    loaded, extra = load_backbone(path)
    loaded.eval()
    assert extra == {"epoch": 3} and loaded.config == model.config
    for a, b in ((model, loaded),):
        fa, fb = a.frozen_features(frozen_images), b.frozen_features(frozen_images)
        assert torch.equal(fa, fb)
        assert torch.equal(a.encode_images(fa), b.encode_images(fb))
        assert torch.equal(a.encode_queries(fa, ["make it blue"] * 2),
                           b.encode_queries(fb, ["make it blue"] * 2))
    fresh = build_backbone(json.loads(json.dumps(model.config)))
    state = model.state_dict()
    state.pop("vision_proj.bias")
    with pytest.raises(RuntimeError, match=r"vision_proj\.bias"):
        fresh.load_state_dict(state)
    with pytest.raises(ValueError, match="strictly"):
        fresh.load_state_dict(model.state_dict(), strict=False)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone({"name": "nope"})


def test_default_sizes_are_small():
    model = MiniBlip2Backbone(WordTokenizer.from_corpus(CAPTIONS))
    assert model.num_image_tokens == 8
    assert model.visual_encoder.config.num_patches == 64
    counts = model.parameter_counts()
    assert counts["trainable"] < 1_000_000 and counts["frozen"] < 1_000_000


# --- image encoder pretraining ------------------------------------------------------------

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
           "yellow": (1.0, 1.0, 0.0), "white": (1.0, 1.0, 1.0), "purple": (0.5, 0.0, 0.5)}


def colour_squares(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """A coloured square at a random place on a dark noisy background: 'a red square'."""
    g = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    images = 0.15 * torch.rand(n, 3, size, size, generator=g)
    captions = []
    for i in range(n):
        colour = names[int(torch.randint(len(names), (1,), generator=g))]
        y, x = (int(v) for v in torch.randint(0, size - 6, (2,), generator=g))
        images[i, :, y:y + 6, x:x + 6] = torch.tensor(COLOURS[colour])[:, None, None]
        captions.append(f"a {colour} square")
    return (images - 0.45) / 0.27, captions


def test_pretraining_toy_learns():
    images, captions = colour_squares(192)
    config = PatchEncoderConfig(image_size=16, patch_size=4, width=32, depth=1, heads=2)
    encoder, history = pretrain_image_encoder(images, captions, epochs=6, batch_size=32,
                                              lr=3e-3, seed=0, progress=False,
                                              config=config, embed_dim=16)
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert history["chance"] == pytest.approx(1 / 6)
    assert history["accuracy"][-1] > 3 * history["chance"]
    assert encoder.frozen and not encoder.training
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training
    model = MiniBlip2Backbone(WordTokenizer.from_corpus(CAPTIONS), image_encoder=encoder,
                              qformer=TINY_QFORMER)
    assert model.visual_encoder is encoder
    assert build_backbone(model.config).visual_encoder.config == config


# --- end to end ---------------------------------------------------------------------------

def toy_cir_world(seed: int = 0):
    """Frozen "features" of six plain colour images (one colour code on every patch plus
    patch noise); query: a reference + 'make it <colour>', target: the image of that
    colour (the reference itself is a distractor)."""
    g = torch.Generator().manual_seed(seed)
    colours = ["red", "green", "blue", "yellow", "white", "purple"]
    codes = torch.randn(len(colours), 1, 32, generator=g)
    gallery = codes + 0.3 * torch.randn(len(colours), 16, 32, generator=g)
    queries = [(ref, f"make it {colours[tgt]}", tgt)
               for ref in range(len(colours)) for tgt in range(len(colours)) if tgt != ref]
    return gallery, queries, [f"make it {c}" for c in colours]


def top1_fraction(model: MiniBlip2Backbone, gallery: torch.Tensor, queries) -> float:
    model.eval()
    with torch.no_grad():
        q = model.encode_queries(gallery[[r for r, _, _ in queries]], [t for _, t, _ in queries])
        scores = model.score(q, model.encode_images(gallery))
    model.train()
    return (scores.argmax(1) == torch.tensor([t for _, _, t in queries])).float().mean().item()


def test_reward_training_learns_toy_cir():
    gallery, queries, corpus = toy_cir_world()
    torch.manual_seed(0)
    model = MiniBlip2Backbone(WordTokenizer.from_corpus(corpus), image_encoder=TINY_ENCODER,
                              qformer=QFormerConfig(num_query_tokens=4, width=32, depth=2,
                                                    heads=2, dropout=0.0), embed_dim=16)
    before = top1_fraction(model, gallery, queries)
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        batch = [queries[i] for i in torch.randint(len(queries), (16,), generator=g).tolist()]
        refs = torch.tensor([r for r, _, _ in batch])
        targets = torch.tensor([t for _, _, t in batch])
        offset = torch.randint(1, len(gallery), (len(batch),), generator=g)
        negatives = (targets + offset) % len(gallery)  # uniform over non-targets
        q = model.encode_queries(gallery[refs], [t for _, t, _ in batch])
        s_pos = model.score(q, model.encode_images(gallery[targets])).diagonal()
        s_neg = model.score(q, model.encode_images(gallery[negatives])).diagonal()
        loss = reward_loss(s_pos, s_neg, model.temperature)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = top1_fraction(model, gallery, queries)
    assert before < 0.4 and after >= 0.9, (before, after)

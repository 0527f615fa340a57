"""Trained models and training checkpoints leave out the frozen part of the backbone,
record where it came from and its fingerprint, and loading restores it or refuses."""

from __future__ import annotations

import pytest
import torch

from qure.evaluation import evaluate
from qure.models import (
    FrozenWeightsError,
    PatchEncoder,
    PatchEncoderConfig,
    load_backbone,
    save_backbone,
)
from qure.models.feature_cache import build_feature_cache, image_loader
from qure.models.preprocess import simple_transform
from qure.stages.data import image_locator, load_splits, split_images
from qure.stages.models import features_by_name, load_run_model, mini_backbone, save_encoder
from qure.stages.train import train_step
from qure.synthetic import synthesize
from qure.training.data import TrainingData
from qure.training.trainer import TrainConfig, Trainer

FROZEN = "visual_encoder."
CONFIG = {"epochs": 2, "n_def": 1, "lr": 1e-3, "batch_size": 8, "seed": 3,
          "snapshot_queries": 0}


class SimulatedCrash(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Smoke mini-FashionIQ, a saved mini encoder and the feature cache it makes."""
    root = tmp_path_factory.mktemp("frozen")
    synthesize(root / "data", seed=0, scale="smoke", benchmarks=("fashioniq",))
    train = load_splits("fashioniq", root / "data" / "fashioniq", "train")
    val = load_splits("fashioniq", root / "data" / "fashioniq", "val")
    torch.manual_seed(0)
    encoder = PatchEncoder(PatchEncoderConfig(image_size=64, width=32, depth=1)).freeze()
    save_encoder(root / "mini_encoder.pt", encoder, {"loss": [1.0]})
    transform = simple_transform(encoder.config.image_size)
    cache = build_feature_cache(root / "features.npy", split_images(train + val),
                                image_loader(image_locator(train + val), transform),
                                mini_backbone(encoder), transform.config, progress=False)
    return {"root": root, "encoder": encoder, "table": features_by_name(cache), "val": val,
            "data": TrainingData.from_splits(train),
            "texts": [q.text for s in train for q in s]}


def stored(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def frozen_stored(state):
    return sorted(k for k in state if k.startswith(FROZEN))


def trainer(setup, out_dir, encoder=None, on_step=None, **overrides):
    config = TrainConfig(**{**CONFIG, **overrides})
    backbone = mini_backbone(encoder or setup["encoder"], setup["texts"], seed=config.seed)
    return Trainer(backbone, setup["data"], setup["table"], config, out_dir,
                   val_splits=setup["val"], on_step=on_step, progress=False)


def scores(model, table, val):
    features = table.features.float()
    queries = model.encode_queries(features[:6], ["make it blue"] * 6)
    return model.score(queries, model.encode_images(features[:10]))


# --- (a) the mini backbone ------------------------------------------------------------------

def test_mini_run_stores_no_frozen_weights_yet_reloads_identically(setup, tmp_path,
                                                                   monkeypatch):
    root = setup["root"]
    monkeypatch.chdir(root)  # the workflow's working directory: paths stay relative
    out = tmp_path / "run"
    summary = train_step("fashioniq", "data/fashioniq", "features.npy", "mini_encoder.pt",
                         out, TrainConfig(**CONFIG), device="cpu", progress=False)
    model_file, checkpoint = stored(out / "model.pt"), stored(out / "checkpoint.pt")
    assert frozen_stored(model_file["state_dict"]) == []
    assert frozen_stored(checkpoint["model"]) == []
    assert model_file["state_dict"] and checkpoint["model"]
    record = model_file["frozen"]
    assert record["source"] == "mini_encoder.pt" and record["keys"] == 22
    backbone, loaded_summary = load_run_model(out)
    assert record["fingerprint"] == backbone.frozen_fingerprint()
    assert checkpoint["frozen_fingerprint"] == backbone.frozen_fingerprint()
    assert torch.equal(backbone.visual_encoder.conv1[-1].weight,
                       setup["encoder"].conv1[-1].weight)
    # The final validation numbers were computed by the in-memory model.
    assert loaded_summary == summary
    assert evaluate(backbone, setup["table"], setup["val"]) == summary["final"]


def test_saved_run_model_scores_like_the_in_memory_one(setup, tmp_path):
    run = trainer(setup, tmp_path / "run")
    run.fit()
    model = run.backbone.eval()
    path = save_backbone(tmp_path / "model.pt", model, frozen_source=setup["root"] /
                         "mini_encoder.pt")
    assert frozen_stored(stored(path)["state_dict"]) == []
    loaded, _ = load_backbone(path)
    loaded.eval()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(scores(loaded, setup["table"], setup["val"]),
                           scores(model, setup["table"], setup["val"]))


def test_killed_run_resumes_from_checkpoint_without_frozen_weights(setup, tmp_path):
    reference = trainer(setup, tmp_path / "ref")
    expected = reference.fit()

    per_epoch = expected[0]["steps"]

    def crash(step):  # mid-way through the second epoch
        if step == per_epoch + 1:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        trainer(setup, tmp_path / "run", on_step=crash).fit()
    killed = stored(tmp_path / "run" / "checkpoint.pt")
    assert killed["next_epoch"] == 1 and frozen_stored(killed["model"]) == []
    resumed = trainer(setup, tmp_path / "run")
    history = resumed.fit()
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in expected]
    for key, value in reference.backbone.state_dict().items():
        assert torch.equal(resumed.backbone.state_dict()[key], value), key


def test_resume_refuses_other_frozen_weights_and_mismatched_keys(setup, tmp_path):
    trainer(setup, tmp_path / "run", epochs=2).fit()
    torch.manual_seed(99)
    other = PatchEncoder(setup["encoder"].config).freeze()
    with pytest.raises(ValueError, match="frozen fingerprints differ"):
        trainer(setup, tmp_path / "run", encoder=other).fit()
    path = tmp_path / "run" / "checkpoint.pt"
    state = stored(path)
    state["model"].pop("vision_proj.bias")
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"missing vision_proj\.bias"):
        trainer(setup, tmp_path / "run").fit()
    state["model"]["vision_proj.bias"] = torch.zeros(64)
    state["model"][FROZEN + "ln_pre.bias"] = torch.zeros(32)
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"unexpected visual_encoder\.ln_pre\.bias"):
        trainer(setup, tmp_path / "run").fit()


def test_format_1_checkpoint_with_the_full_model_still_resumes(setup, tmp_path):
    first = trainer(setup, tmp_path / "run", epochs=1)
    first.fit()
    path = tmp_path / "run" / "checkpoint.pt"
    state = stored(path)
    state.update(format=1, model=first.backbone.state_dict())
    del state["frozen_fingerprint"]
    torch.save(state, path)
    again = trainer(setup, tmp_path / "run", epochs=1)
    again.fit()
    for key, value in first.backbone.state_dict().items():
        assert torch.equal(again.backbone.state_dict()[key], value), key


# --- (c), (d) tampered and missing sources; chains --------------------------------------------

def test_tampered_or_missing_mini_encoder_is_refused(setup, tmp_path):
    model = mini_backbone(setup["encoder"], setup["texts"])
    source = tmp_path / "encoder.pt"
    save_encoder(source, setup["encoder"], {})
    path = save_backbone(tmp_path / "model.pt", model, frozen_source=source)
    payload = stored(source)
    payload["state_dict"]["ln_pre.weight"] = payload["state_dict"]["ln_pre.weight"] + 1e-3
    torch.save(payload, source)
    with pytest.raises(FrozenWeightsError,
                       match=f"frozen weights in {source} are not those {path}"):
        load_backbone(path)
    source.unlink()
    with pytest.raises(FrozenWeightsError, match=f"{source}, which does not exist.*must be"):
        load_backbone(path)
    # Moved: pass the new location.
    moved = save_encoder(tmp_path / "moved.pt", setup["encoder"], {})
    loaded, _ = load_backbone(path, frozen_source=moved)
    assert loaded.frozen_fingerprint() == model.frozen_fingerprint()


def test_frozen_source_chains_are_followed_and_cycles_refused(setup, tmp_path):
    model = mini_backbone(setup["encoder"], setup["texts"])
    encoder = save_encoder(tmp_path / "encoder.pt", setup["encoder"], {})
    first = save_backbone(tmp_path / "first.pt", model, frozen_source=encoder)
    with torch.no_grad():
        model.temp.fill_(0.5)
    second = save_backbone(tmp_path / "second.pt", model, frozen_source=first)
    loaded, _ = load_backbone(second)
    assert loaded.temp.item() == 0.5
    assert loaded.frozen_fingerprint() == model.frozen_fingerprint()
    cyclic = save_backbone(tmp_path / "cyclic.pt", model, frozen_source=tmp_path / "cyclic.pt")
    with pytest.raises(FrozenWeightsError, match="cycle"):
        load_backbone(cyclic)


# --- (b) BLIP-2 ViT-L at reduced width ----------------------------------------------------------

def test_blip2_model_stores_no_visual_encoder_and_refuses_a_tampered_source(tmp_path):
    pytest.importorskip("transformers")
    from tests.test_blip2_vitl import TEXTS, pixels, tiny_model

    converted = save_backbone(tmp_path / "blip2_vitl.pt", tiny_model(seed=2))
    model, _ = load_backbone(converted)
    assert model.frozen_keys() == sorted(k for k in model.state_dict() if k.startswith(FROZEN))
    with torch.no_grad():  # "training": every trainable weight moves
        for parameter in model.trainable_parameters():
            parameter.add_(0.01)
    model.eval()
    path = save_backbone(tmp_path / "model.pt", model, frozen_source=converted)
    payload = stored(path)
    assert frozen_stored(payload["state_dict"]) == []
    assert payload["frozen"]["keys"] == len(model.frozen_keys())
    loaded, _ = load_backbone(path)
    loaded.eval()
    frozen = model.frozen_features(pixels(2))
    assert torch.equal(loaded.frozen_features(pixels(2)), frozen)
    assert torch.equal(loaded.encode_queries(frozen, TEXTS[:2]),
                       model.encode_queries(frozen, TEXTS[:2]))
    assert torch.equal(loaded.encode_images(frozen), model.encode_images(frozen))
    sizes = {"converted": converted.stat().st_size, "model": path.stat().st_size}
    full = save_backbone(tmp_path / "full.pt", model)
    sizes["model_full"] = full.stat().st_size
    assert sizes["model"] < sizes["model_full"]
    print("sizes (bytes):", sizes)

    source = stored(converted)
    key = FROZEN + "encoder.layers.0.mlp.fc1.weight"
    assert key in source["state_dict"]
    source["state_dict"][key] = source["state_dict"][key].clone()
    source["state_dict"][key][0, 0] += 1.0
    torch.save(source, converted)
    with pytest.raises(FrozenWeightsError,
                       match=f"frozen weights in {converted} are not those {path} was"):
        load_backbone(path)
    converted.unlink()
    with pytest.raises(FrozenWeightsError, match=f"{converted}, which does not exist"):
        load_backbone(path)


def test_blip2_checkpoint_stores_no_visual_encoder(tmp_path):
    pytest.importorskip("transformers")
    from qure.evaluation import FeaturesByName
    from tests.test_blip2_vitl import pixels, tiny_model

    names = [f"img{i}" for i in range(6)]
    texts = ["make it blue", "make it red", "has long sleeves", "is green", "darker",
             "a photo of $ that", "is red and blue", "has a collar"]
    data = TrainingData([f"q{i}" for i in range(8)], [names[i % 6] for i in range(8)], texts,
                        torch.tensor([(i + 1) % 6 for i in range(8)]),
                        torch.tensor([i % 6 for i in range(8)]),
                        torch.zeros(8, dtype=torch.long), names,
                        torch.zeros(6, dtype=torch.long), ["toy"], ["toy/train"] * 8)
    model = tiny_model(seed=1)
    table = FeaturesByName(names, model.frozen_features(pixels(6)))
    config = TrainConfig(epochs=1, batch_size=4, n_def=1, lr=1e-4, seed=0, snapshot_queries=0)
    Trainer(model, data, table, config, tmp_path / "run", progress=False).fit()
    state = stored(tmp_path / "run" / "checkpoint.pt")
    assert frozen_stored(state["model"]) == []
    assert set(state["model"]) == set(model.state_dict()) - set(model.frozen_keys())
    # A resume over another ViT is refused.
    other = tiny_model(seed=5)
    with pytest.raises(ValueError, match="frozen fingerprints differ"):
        Trainer(other, data, table, config, tmp_path / "run", progress=False).fit()

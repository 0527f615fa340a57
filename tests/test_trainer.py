"""The trainer on a smoke-scale synthetic benchmark: learning, determinism, exact resume."""

from __future__ import annotations

import pytest
import torch

from qure.models import PatchEncoder, PatchEncoderConfig
from qure.models.feature_cache import build_feature_cache, image_loader
from qure.models.preprocess import simple_transform
from qure.stages.data import image_locator, load_splits, split_images, training_relevance
from qure.stages.models import features_by_name, mini_backbone
from qure.synthetic import synthesize
from qure.synthetic.oracle import load_oracle
from qure.training.data import TrainingData
from qure.training.trainer import TrainConfig, Trainer


class SimulatedCrash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def fiq_setup(tmp_path_factory):
    """Smoke mini-FashionIQ with frozen features from a (randomly initialised) encoder."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("synthetic")
    synthesize(root, seed=0, scale="smoke", benchmarks=("fashioniq",))
    train = load_splits("fashioniq", root / "fashioniq", "train")
    val = load_splits("fashioniq", root / "fashioniq", "val")
    torch.manual_seed(0)
    encoder = PatchEncoder(PatchEncoderConfig(image_size=64, width=32, depth=1)).freeze()
    names = split_images(train + val)
    transform = simple_transform(encoder.config.image_size)
    cache = build_feature_cache(root / "features.npy", names,
                                image_loader(image_locator(train + val), transform),
                                mini_backbone(encoder), transform.config, progress=False)
    data = TrainingData.from_splits(train)
    relevant = training_relevance(load_oracle(root / "fashioniq"), data)
    return {"encoder": encoder, "table": features_by_name(cache), "data": data, "val": val,
            "relevant": relevant, "texts": [q.text for s in train for q in s]}


def run(setup, out_dir, *, on_step=None, **overrides):
    config = TrainConfig(**{"epochs": 4, "n_def": 2, "lr": 1e-3, "batch_size": 8,
                            "seed": 3, "snapshot_queries": 2, **overrides})
    backbone = mini_backbone(setup["encoder"], setup["texts"], seed=config.seed)
    trainer = Trainer(backbone, setup["data"], setup["table"], config, out_dir,
                      val_splits=setup["val"], relevant=setup["relevant"], on_step=on_step,
                      progress=False)
    return trainer.fit(), backbone


def strip_timing(history):
    return [{k: v for k, v in r.items() if k != "seconds" and not (
        k == "hard_set" and isinstance(v, dict))} | (
        {"hard_set": {k: v for k, v in r["hard_set"].items() if k != "seconds"}}
        if "hard_set" in r else {}) for r in history]


def test_training_history_and_outputs(fiq_setup, tmp_path):
    history, _ = run(fiq_setup, tmp_path)
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]
    assert [r["negatives"] for r in history] == ["warmup", "warmup", "hard_sets", "hard_sets"]
    assert "hard_set" in history[2] and history[2]["hard_set"]["size_mean"] > 0
    assert 0.0 <= history[2]["hard_set"]["false_negative_rate"] <= 1.0
    assert all(0.0 <= r["val"]["average_R@50"] <= 100.0 for r in history)
    assert history[0]["lr"] == pytest.approx(1e-3) and history[3]["lr"] < history[0]["lr"]
    assert (tmp_path / "epochs.jsonl").read_text().count("\n") == 4
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [
        "epoch_000.pt", "epoch_002.pt"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_same_seed_same_numbers(fiq_setup, tmp_path):
    first, model_a = run(fiq_setup, tmp_path / "a")
    second, model_b = run(fiq_setup, tmp_path / "b")
    assert strip_timing(first) == strip_timing(second)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_killed_mid_epoch_resumes_to_identical_metrics(fiq_setup, tmp_path):
    reference, reference_model = run(fiq_setup, tmp_path / "reference")
    steps_per_epoch = reference[0]["steps"]
    crash_at = 2 * steps_per_epoch + steps_per_epoch // 2  # inside epoch 2, after mining

    def crash(step: int) -> None:
        if step == crash_at:
            raise SimulatedCrash(f"killed at step {step}")

    with pytest.raises(SimulatedCrash):
        run(fiq_setup, tmp_path / "resumed", on_step=crash)
    resumed, resumed_model = run(fiq_setup, tmp_path / "resumed")
    assert strip_timing(resumed) == strip_timing(reference)
    for (name, a), b in zip(reference_model.state_dict().items(),
                            resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_resume_refuses_a_different_config(fiq_setup, tmp_path):
    run(fiq_setup, tmp_path, epochs=2)
    with pytest.raises(ValueError, match=r"different training config.*lr"):
        run(fiq_setup, tmp_path, epochs=2, lr=5e-4)


def test_contrastive_baseline_and_strategies_run(fiq_setup, tmp_path):
    history, _ = run(fiq_setup, tmp_path / "c", method="contrastive", epochs=2)
    assert [r["negatives"] for r in history] == ["in_batch", "in_batch"]
    for strategy, params in [("topk", {"k": 5}), ("trns", {}), ("all", {})]:
        history, _ = run(fiq_setup, tmp_path / strategy, strategy=strategy,
                         strategy_params=params, epochs=3)
        expected = "warmup" if strategy == "all" else "hard_sets"
        assert history[-1]["negatives"] == expected


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match=r"train\.strategy must be one of"):
        TrainConfig(strategy="hardest")
    with pytest.raises(ValueError, match="unknown train config key"):
        TrainConfig.from_dict({"epochz": 3})


def test_stale_checkpoint_is_discarded_when_inputs_change(tmp_path):
    from qure.stages.train import discard_stale_checkpoint

    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / "snapshots").mkdir()
    discard_stale_checkpoint(tmp_path, {"init": "a", "features": "f"})
    # No record of the inputs the checkpoint came from: it cannot be trusted.
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "snapshots").exists()
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    discard_stale_checkpoint(tmp_path, {"init": "a", "features": "f"})
    assert (tmp_path / "checkpoint.pt").exists()  # same inputs: resume
    discard_stale_checkpoint(tmp_path, {"init": "b", "features": "f"})
    assert not (tmp_path / "checkpoint.pt").exists()  # new init weights: start over

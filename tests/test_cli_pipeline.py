"""The workflow's command-line steps chained on a smoke synthetic benchmark."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qure.experiment import split_images, study_splits
from qure.models.feature_cache import FeatureCache
from tests.conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / "workflow_scripts"


def cli(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_synthesize_pretrain_extract_train(tmp_path):
    data = tmp_path / "synthetic"
    cli("synthesize.py", "--out", str(data), "--seed", "1", "--scale", "smoke")
    encoder = tmp_path / "encoder.pt"
    pretrain = cli("pretrain_encoder.py", "--benchmark", f"fashioniq={data / 'fashioniq'}",
                   "--benchmark", f"cirr={data / 'cirr'}", "--out", str(encoder),
                   "--epochs", "1", "--threads", "1")
    assert json.loads(pretrain.stdout.splitlines()[-1])["chance"] > 0
    features = tmp_path / "cirr.npy"
    cli("extract_features.py", "--dataset", "cirr", "--root", str(data / "cirr"),
        "--encoder", str(encoder), "--out", str(features), "--threads", "1")
    cache = FeatureCache.open(features)
    # Train and val images only (the study never reads test1).
    expected = split_images(study_splits("cirr", data / "cirr"))
    assert sorted(cache.names) == sorted(expected)
    assert len(expected) < sum(1 for _ in (data / "cirr").rglob("*.png"))
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 2\nn_def: 1\nbatch_size: 8\nlr: 0.001\nseed: 0\n")
    run = tmp_path / "run"
    train = cli("train.py", "--dataset", "cirr", "--root", str(data / "cirr"),
                "--features", str(features), "--encoder", str(encoder), "--out", str(run),
                "--train-config", str(config), "--set", "snapshot_queries=2",
                "--threads", "1", "--no-progress")
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["profile"] == "synthetic" and summary["headline_metric"] == "avg"
    assert summary["epochs"] == 2 and 0 <= summary["final"]["R@5"] <= 100
    assert set(summary["final"]) >= {"R@1", "R@5", "R@10", "R@50", "R_subset@1", "avg"}
    assert json.loads(train.stdout.splitlines()[-1])["avg"] == summary["final"]["avg"]
    assert (run / "model.pt").is_file() and (run / "epochs.jsonl").is_file()
    # A second invocation finds the finished checkpoint and trains nothing more.
    again = cli("train.py", "--dataset", "cirr", "--root", str(data / "cirr"),
                "--features", str(features), "--encoder", str(encoder), "--out", str(run),
                "--train-config", str(config), "--set", "snapshot_queries=2",
                "--threads", "1", "--no-progress")
    assert json.loads(again.stdout.splitlines()[-1]) == json.loads(train.stdout.splitlines()[-1])


def test_train_rejects_unknown_setting(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "train.py"), "--dataset", "cirr", "--root",
         str(tmp_path), "--features", "x.npy", "--encoder", "e.pt", "--out", str(tmp_path),
         "--set", "epochz=3"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown train config key(s): epochz")

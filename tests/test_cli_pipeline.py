"""The workflow's command-line steps chained on a smoke synthetic benchmark."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from qure.data import open_dataset
from qure.models.feature_cache import FeatureCache
from qure.stages.data import split_images, study_splits
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
    assert summary["device"] == "cpu" and summary["peak_gpu_memory_bytes"] is None
    assert summary["missing_images"]["total"]["queries_dropped"] == 0

    # Evaluation on the CPU reproduces the run's final metrics, and records where it ran.
    evaluation = tmp_path / "eval.json"
    evaluate = ["evaluate.py", "--benchmark", "cirr", "--root", str(data / "cirr"),
                "--run", str(run), "--features", str(features), "--threads", "1",
                "--device", "cpu"]
    cli(*evaluate, "--out", str(evaluation))
    result = json.loads(evaluation.read_text())
    assert result["metrics"] == summary["final"] and result["device"] == "cpu"
    # Every number with its bootstrap interval, from the saved per-query ranks.
    for key, value in result["metrics"].items():
        point, low, high = result["intervals"][key]
        assert point == value and low <= value <= high, key
    assert any(high > low for _, low, high in result["intervals"].values())
    assert len(result["per_query"]["ranks"]) == result["queries"]
    assert result["bootstrap"]["resamples"] == 1000
    assert result["missing_images"]["total"] == {
        "queries": result["queries"], "queries_dropped": 0,
        "gallery_images": result["gallery_images"], "gallery_images_missing": 0}

    # Two gallery-only images and one query's reference go missing: policy fail stops,
    # naming the image and the count; policy drop leaves them out and counts them.
    (val,) = study_splits("cirr", data / "cirr")[1:]
    needed = set(val.query_images())
    gallery_only = [n for n in val.gallery.names if n not in needed][:2]
    reference = val.queries[0].reference
    users = sum(1 for q in val if reference in (q.reference, *q.targets, *q.members))
    for name in [*gallery_only, reference]:
        val.gallery.image_path(name).unlink()
    failed = subprocess.run([sys.executable, str(SCRIPTS / evaluate[0]), *evaluate[1:],
                             "--out", str(tmp_path / "fail.json")],
                            capture_output=True, text=True)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert "3 image(s) missing in all" in failed.stderr and "cirr/val" in failed.stderr
    cli(*evaluate, "--missing-images", "drop", "--out", str(evaluation))
    dropped = json.loads(evaluation.read_text())["missing_images"]
    assert dropped["policy"] == "drop"
    assert dropped["splits"]["cirr/val"] == {
        "queries": len(val), "queries_dropped": users,
        "gallery_images": len(val.gallery), "gallery_images_missing": 3}


def test_train_rejects_unknown_setting(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "train.py"), "--dataset", "cirr", "--root",
         str(tmp_path), "--features", "x.npy", "--encoder", "e.pt", "--out", str(tmp_path),
         "--set", "epochz=3"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown train config key(s): epochz")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "extract_features.py",
                                    "analyze_hard_sets.py"])
def test_device_cuda_without_cuda_is_a_one_line_error(tmp_path, script):
    args = {"train.py": ["--dataset", "cirr", "--features", "x.npy", "--encoder", "e.pt",
                         "--out", str(tmp_path)],
            "evaluate.py": ["--benchmark", "cirr", "--run", str(tmp_path), "--features",
                            "x.npy", "--out", str(tmp_path / "e.json")],
            "extract_features.py": ["--dataset", "cirr", "--encoder", "e.pt", "--out",
                                    str(tmp_path / "f.npy")],
            "analyze_hard_sets.py": ["audit", "--dataset", "cirr", "--basis-run",
                                     str(tmp_path), "--features", "x.npy", "--methods",
                                     '{"qure": {"strategy": "qure"}}', "--out",
                                     str(tmp_path / "a.json")]}[script]
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *args, "--root",
                             str(tmp_path), "--device", "cuda"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: device: 'cuda' was asked for (--device cuda / config key `device`) but torch "
        "sees no CUDA device; use cpu or auto"]


def test_test_server_files_of_a_trained_model(tmp_path):
    """write_submission.py on a CIRR model: CIRR test1 (recall, recall_subset) and CIRCO
    test files, validated, covering every test query; a missing test image stops it."""
    from qure.submissions import validate_circo_submission, validate_cirr_submission

    data = tmp_path / "synthetic"
    # The default scale: the servers need 50 predictions, more than a smoke gallery holds.
    cli("synthesize.py", "--out", str(data), "--seed", "2", "--scale", "default",
        "--benchmarks", "cirr", "circo")
    encoder = tmp_path / "encoder.pt"
    cli("pretrain_encoder.py", "--benchmark", f"cirr={data / 'cirr'}", "--out", str(encoder),
        "--epochs", "1", "--threads", "1")
    features = {}
    for dataset in ("cirr", "circo"):
        features[dataset] = tmp_path / f"{dataset}.npy"
        cli("extract_features.py", "--dataset", dataset, "--root", str(data / dataset),
            "--encoder", str(encoder), "--out", str(features[dataset]), "--include-test",
            "--threads", "1")
    run = tmp_path / "run"
    cli("train.py", "--dataset", "cirr", "--root", str(data / "cirr"), "--features",
        str(features["cirr"]), "--encoder", str(encoder), "--out", str(run),
        "--set", "epochs=1", "--set", "n_def=1", "--set", "snapshot_queries=0",
        "--threads", "1", "--no-progress")
    out = tmp_path / "submissions"
    reports = {}
    for benchmark in ("cirr", "circo"):
        reports[benchmark] = out / f"{benchmark}.json"
        cli("write_submission.py", "--benchmark", benchmark, "--root", str(data / benchmark),
            "--run", str(run), "--features", str(features[benchmark]), "--out-dir", str(out),
            "--name", "mini_qure", "--report", str(reports[benchmark]), "--threads", "1")
    test1 = open_dataset("cirr", data / "cirr").load_split("test1")
    recall = json.loads((out / "recall_submission_mini_qure.json").read_text())
    subset = json.loads((out / "recall_subset_submission_mini_qure.json").read_text())
    validate_cirr_submission(recall, "recall")
    validate_cirr_submission(subset, "recall_subset")
    assert set(recall) - {"version", "metric"} == {q.query_id for q in test1}
    for query in test1:  # the reference never ranks; the subset ranks img_set members
        assert query.reference not in recall[query.query_id]
        assert set(subset[query.query_id]) <= set(query.members) - {query.reference}
    circo_test = open_dataset("circo", data / "circo").load_split("test")
    circo = json.loads((out / "circo_submission_mini_qure.json").read_text())
    validate_circo_submission(circo, [q.query_id for q in circo_test])
    report = json.loads(reports["cirr"].read_text())
    assert report["split"] == "test1" and report["queries"] == len(test1)
    assert [f["path"] for f in report["files"]] == [
        str(out / "recall_submission_mini_qure.json"),
        str(out / "recall_subset_submission_mini_qure.json")]
    # A test image gone: the server needs every query, so the policy is always fail.
    test1.gallery.image_path(test1.queries[0].reference).unlink()
    failed = subprocess.run([sys.executable, str(SCRIPTS / "write_submission.py"),
                             "--benchmark", "cirr", "--root", str(data / "cirr"), "--run",
                             str(run), "--features", str(features["cirr"]), "--out-dir",
                             str(tmp_path / "again"), "--name", "x", "--report",
                             str(tmp_path / "again.json")], capture_output=True, text=True)
    assert failed.returncode == 2 and "missing" in failed.stderr, failed.stderr
    assert not (tmp_path / "again.json").exists()

"""The offline rehearsal of the paper profile (``tools/paper_rehearsal.py``): every rule
config/paper.yaml schedules, against a loopback mirror of a fake upstream, on a subset
of the real annotations; and a broken piece of the real path makes it fail."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest
import torch
import yaml

from qure.rehearsal.run import rehearse
from qure.rehearsal.upstream import Upstream
from tests.conftest import REPO_ROOT, tool_env

#: Every rule of the paper profile's `snakemake all` (a rule the plan stops scheduling
#: would otherwise go unrehearsed silently).
PAPER_RULES = (
    "fetch_annotations", "fetch_weights", "convert_blip2_weights", "fetch_images",
    "subset_dataset", "verify_dataset", "dataset_stats", "extract_features_blip2", "train",
    "evaluate", "write_cirr_submission", "write_circo_submission", "audit_hard_sets",
    "hard_negative_examples", "table", "fig4_negative_strategies",
    "fig5_hard_negative_set_size", "fig6_hard_negative_examples", "fig7_score_steepness",
    "fig8_score_steepness_aggregate", "fig9_false_negatives_in_hard_sets")


def test_paper_rehearsal_runs_every_rule_and_passes_every_check(tmp_path, shared_data):
    out = tmp_path / "rehearsal"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "tools/paper_rehearsal.py", "--out", str(out),
                             "--shared", str(shared_data)], cwd=REPO_ROOT, env=tool_env(),
                            capture_output=True, text=True, timeout=1500)
    seconds = time.perf_counter() - started
    print(result.stdout[-4000:])
    print(f"rehearsal wall time: {seconds:.1f} s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((out / "rehearsal_report.json").read_text())
    assert report["returncode"] == 0 and not report["failed_rules"]
    assert {c["check"]: c["status"] for c in report["checks"]} == {
        "data_stage": "pass", "missing_images": "pass", "tables": "pass",
        "server_files": "pass", "checkpoints": "pass"}, report["checks"]
    missing = [rule for rule in PAPER_RULES if report["jobs"].get(rule, 0) < 1]
    assert not missing, f"rules the rehearsal never ran: {missing}"
    # Every file came from the loopback mirror (nothing reached the network).
    assert report["mirror_requests"] > 0


def _lose_a_cirr_dev_image(upstream: Upstream) -> None:
    # (An image in another NLVR2 folder is found: the import indexes the names.)
    sorted((upstream.nlvr2 / "dev").iterdir())[0].unlink()


KEY = "Qformer.bert.encoder.layer.0.attention.self.query.weight"


def _drop_a_blip2_key(upstream: Upstream) -> None:
    """The LAVIS checkpoint without one key, re-pinned in the substitutes file (so the
    download accepts it and the conversion is what must refuse it)."""
    path = upstream.mirror / "weights" / "blip2_pretrained_vitL.pth"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    del payload["model"][KEY]
    torch.save(payload, path)
    data = yaml.safe_load(upstream.substitutes.read_text())
    data["files"]["weights"]["blip2_pretrained_vitL.pth"].update(
        size=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    upstream.substitutes.write_text(yaml.safe_dump(data))


#: (how the upstream is broken, the job that must fail, what its log must say)
BREAKS = {
    # CIRR may miss nothing: the image import refuses the folder, naming image and fix.
    "cirr_image_missing": (_lose_a_cirr_dev_image, ("fetch_images", "dataset=cirr"),
                           ("dev", "missing")),
    # Strict conversion: a key of the real checkpoint layout absent is an error.
    "blip2_key_missing": (_drop_a_blip2_key, ("convert_blip2_weights", ""), (KEY,)),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_rehearsal_fails_when_the_real_path_is_broken(tmp_path, shared_data, name):
    break_it, job, words = BREAKS[name]
    result = rehearse(tmp_path / "broken", shared=shared_data, repo=REPO_ROOT, stage="data",
                      prepare=break_it, echo=lambda _: None)
    assert not result.ok
    assert result.returncode != 0
    (failure,) = result.failed_rules
    assert (failure["rule"], failure["wildcards"]) == job, failure
    for word in words:
        assert word in failure["log_tail"], failure

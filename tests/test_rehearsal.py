"""The offline rehearsal of the paper profile (``tools/paper_rehearsal.py``): every rule
config/paper.yaml schedules, against a loopback mirror of a fake upstream, on a subset
of the real annotations; and a broken piece of the real path makes it fail."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

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


@pytest.mark.parametrize("break_it", [_lose_a_cirr_dev_image])
def test_rehearsal_fails_when_the_real_data_is_broken(tmp_path, shared_data, break_it):
    # CIRR may miss nothing: one absent image stops verification, with the instructions.
    result = rehearse(tmp_path / "broken", shared=shared_data, repo=REPO_ROOT, stage="data",
                      prepare=break_it, echo=lambda _: None)
    assert not result.ok
    assert result.returncode != 0
    # The CIRR image import refuses the incomplete folder, naming the image and the fix.
    (failure,) = result.failed_rules
    assert (failure["rule"], failure["wildcards"]) == ("fetch_images", "dataset=cirr")
    assert "dev" in failure["log_tail"] and "missing" in failure["log_tail"], failure

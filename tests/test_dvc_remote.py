"""Sharing results through a DVC remote, for real: in a git copy of the repository,
``dvc repro`` runs the smoke study, ``dvc push`` fills a local-folder remote; a fresh
``git clone`` pulls checkpoints, metrics and score files, and rebuilds deleted tables and
figures without scheduling any training, feature extraction or pretraining.

One ``dvc repro`` of the smoke study (several minutes) is shared by every test here."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qure.workflow.dvc import STAGE_RULES, dvc_outputs
from qure.workflow.plan import FIGURE_NAMES

REPO = Path(__file__).resolve().parents[1]
#: Appended to every stage's Snakemake call (see qure.workflow.dvc).
SNAKEMAKE_ARGS = "--configfile config/smoke.yaml"
#: Rules whose jobs must not run when the tables and figures are rebuilt from pulled files.
FORBIDDEN = re.compile(r"^(train|pretrain\w*|extract\w*features\w*|synthesize\w*|evaluate"
                       r"|audit_hard_sets|hard_negative_examples)$")
PRESENTATION = {"table", *FIGURE_NAMES}
UP_TO_DATE = "Data and pipelines are up to date."

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "QURE_SNAKEMAKE_ARGS": SNAKEMAKE_ARGS, "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "qure-test", "GIT_AUTHOR_EMAIL": "qure-test@example.invalid",
            "GIT_COMMITTER_NAME": "qure-test",
            "GIT_COMMITTER_EMAIL": "qure-test@example.invalid"}


def _run(cwd: Path, *cmd: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _ok(result: subprocess.CompletedProcess) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, result.args))} failed:\n{out[-6000:]}"
    return out


def _dvc(cwd: Path, *args: str, timeout: int = 600) -> str:
    return _ok(_run(cwd, sys.executable, "-m", "dvc", *args, timeout=timeout))


def _git(cwd: Path, *args: str) -> str:
    return _ok(_run(cwd, "git", *args))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rules_run(output: str) -> list[str]:
    """Rules of the jobs Snakemake started, from its job headers ("rule train:")."""
    return re.findall(r"^\s*(?:local)?rule (\w+):\s*$", output, flags=re.MULTILINE)


def _stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A git copy of the repository after ``dvc repro`` of the smoke study and
    ``dvc push`` to a local-folder remote (dvc.lock committed)."""
    root = tmp_path_factory.mktemp("dvc_remote")
    work, remote = root / "origin", root / "remote"
    listed = _git(REPO, "ls-files", "--cached", "--others", "--exclude-standard")
    for rel in listed.splitlines():
        if (REPO / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, work / rel)
    _git(work, "init", "-q")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "copy")
    started = time.perf_counter()
    repro = _dvc(work, "repro", timeout=1800)
    seconds = time.perf_counter() - started
    print(f"\ndvc repro (smoke): {seconds:.1f} s, {len(_rules_run(repro))} Snakemake jobs")
    status = _dvc(work, "status")
    _dvc(work, "remote", "add", "--local", "-d", "shared", str(remote))
    started = time.perf_counter()
    _dvc(work, "push")
    print(f"dvc push: {time.perf_counter() - started:.1f} s")
    _git(work, "add", "dvc.lock")
    _git(work, "commit", "-q", "-m", "dvc.lock after repro")
    return {"work": work, "remote": remote, "repro": repro, "status": status}


@pytest.fixture(scope="module")
def clone(origin, tmp_path_factory):
    """A fresh ``git clone`` of the origin with the same remote, after ``dvc pull``."""
    work = tmp_path_factory.mktemp("dvc_clone") / "clone"
    _git(origin["work"].parent, "clone", "-q", str(origin["work"]), str(work))
    _dvc(work, "remote", "add", "--local", "-d", "shared", str(origin["remote"]))
    started = time.perf_counter()
    _dvc(work, "pull")
    print(f"\ndvc pull: {time.perf_counter() - started:.1f} s")
    return work


def _outputs(work: Path) -> list[str]:
    return dvc_outputs(yaml.safe_load((work / "dvc.yaml").read_text()))


def test_repro_runs_every_stage_and_leaves_dvc_status_clean(origin):
    document = yaml.safe_load((origin["work"] / "dvc.yaml").read_text())
    assert _stages_run(origin["repro"]) == set(document["stages"])
    assert UP_TO_DATE in origin["status"], origin["status"]
    # Each stage's Snakemake call ran only its own rules.
    rules = set(_rules_run(origin["repro"]))
    assert {"train", "evaluate", "table"} <= rules
    assert rules <= {r for group in STAGE_RULES.values() for r in group}


def test_stage_rules_exist_in_the_workflow():
    """Every rule named in a stage's --allowed-rules is a rule of some profile."""
    names: set[str] = set()
    for extra in ([], ["--configfile", "config/paper.yaml"]):
        result = _run(REPO, sys.executable, "-m", "snakemake", "--list-rules", *extra)
        names |= set(_ok(result).split())
    missing = {r for group in STAGE_RULES.values() for r in group} - names
    assert not missing, f"dvc.py names rules the workflow lacks: {sorted(missing)}"


def test_pull_restores_checkpoints_metrics_and_scores(origin, clone):
    outputs = _outputs(clone)
    assert any(p.endswith("model.pt") for p in outputs)
    assert any(p.startswith("results/eval/") for p in outputs)
    assert any(p.endswith("snapshots.pt") for p in outputs)
    for path in outputs:
        assert (clone / path).is_file(), f"{path} not pulled"
        assert _sha256(clone / path) == _sha256(origin["work"] / path), path
    assert UP_TO_DATE in _dvc(clone, "status")


def test_clone_rebuilds_tables_and_figures_without_training(clone):
    for folder in ("results/tables", "results/figures"):
        shutil.rmtree(clone / folder)
    started = time.perf_counter()
    out = _dvc(clone, "repro", timeout=900)
    seconds = time.perf_counter() - started
    rules = _rules_run(out)
    print(f"\nrebuild after pull: {seconds:.1f} s, jobs: {sorted(set(rules))}")
    assert _stages_run(out) == {"tables", "figures"}, out[-3000:]
    assert rules, out[-3000:]
    assert not [r for r in rules if FORBIDDEN.match(r)], out[-3000:]
    assert set(rules) <= PRESENTATION
    for path in _outputs(clone):
        if path.startswith(("results/tables/", "results/figures/")):
            assert (clone / path).is_file(), path
    assert UP_TO_DATE in _dvc(clone, "status")

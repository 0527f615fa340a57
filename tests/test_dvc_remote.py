"""Sharing results through a DVC remote, for real: in a git copy of the repository,
``dvc repro`` runs the smoke study, ``dvc push`` fills a local-folder remote; a fresh
``git clone`` pulls checkpoints, metrics and score files, and rebuilds deleted tables and
figures without scheduling any training, feature extraction or pretraining.

One ``dvc repro`` of the smoke study (several minutes) is shared by every test here."""

from __future__ import annotations

import hashlib
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
from tests.conftest import smoke_env

REPO = Path(__file__).resolve().parents[1]
#: Rules whose jobs must not run when the tables and figures are rebuilt from pulled files.
FORBIDDEN = re.compile(r"^(train|pretrain\w*|extract\w*features\w*|synthesize\w*|evaluate"
                       r"|audit_hard_sets|hard_negative_examples)$")
PRESENTATION = {"table", *FIGURE_NAMES}
UP_TO_DATE = "Data and pipelines are up to date."

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return smoke_env()


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


@pytest.fixture(scope="session")
def origin(smoke_study, tmp_path_factory):
    """The smoke study's repository (``dvc repro`` done, see conftest) after ``dvc push``
    to a local-folder remote, with dvc.lock committed."""
    work = smoke_study["work"]
    remote = tmp_path_factory.mktemp("dvc_remote") / "remote"
    _dvc(work, "remote", "add", "--local", "-d", "shared", str(remote))
    started = time.perf_counter()
    _dvc(work, "push", "dvc.yaml")
    print(f"dvc push: {time.perf_counter() - started:.1f} s")
    _git(work, "add", "dvc.lock")
    _git(work, "commit", "-q", "-m", "dvc.lock after repro")
    return {"work": work, "remote": remote, "repro": smoke_study["repro"],
            "status": smoke_study["status"]}


@pytest.fixture(scope="session")
def clone(origin, tmp_path_factory):
    """A fresh ``git clone`` of the origin with the same remote, after ``dvc pull``."""
    work = tmp_path_factory.mktemp("dvc_clone") / "clone"
    _git(origin["work"].parent, "clone", "-q", str(origin["work"]), str(work))
    _dvc(work, "remote", "add", "--local", "-d", "shared", str(origin["remote"]))
    started = time.perf_counter()
    _dvc(work, "pull", "dvc.yaml")
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


def test_stage_rules_exist_in_the_workflow(tmp_path):
    """Every rule named in a stage's --allowed-rules is a rule of some profile (the
    subset rule exists where data.subset is set)."""
    subset = tmp_path / "subset.yaml"
    subset.write_text("data: {subset: {queries: 2, gallery: 2}}\n")
    names: set[str] = set()
    for extra in ([], ["--configfile", "config/paper.yaml"],
                  ["--configfile", "config/paper.yaml", str(subset)]):
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
    assert UP_TO_DATE in _dvc(clone, "status", "dvc.yaml")


def _delete_tables_and_figures(clone: Path) -> None:
    for folder in ("results/tables", "results/figures"):
        shutil.rmtree(clone / folder)


def _assert_tables_and_figures(clone: Path) -> None:
    for path in _outputs(clone):
        if path.startswith(("results/tables/", "results/figures/")):
            assert (clone / path).is_file(), path


def test_clone_repro_restores_deleted_tables_and_figures_from_the_cache(clone):
    """Plain ``dvc repro`` after a pull: every stage is up to date by hash; DVC checks
    the deleted files out of its cache and runs nothing."""
    _delete_tables_and_figures(clone)
    out = _dvc(clone, "repro", timeout=900)
    assert not _stages_run(out) and not _rules_run(out), out[-3000:]
    _assert_tables_and_figures(clone)


def test_clone_rebuilds_tables_and_figures_without_training(clone):
    """Forced rebuild of the two presentation stages: Snakemake runs only the table and
    figure jobs on the pulled files, whatever their modification times."""
    _delete_tables_and_figures(clone)
    started = time.perf_counter()
    out = _dvc(clone, "repro", "--force", "--single-item", "tables", "figures", timeout=900)
    seconds = time.perf_counter() - started
    rules = _rules_run(out)
    print(f"\nrebuild after pull: {seconds:.1f} s, jobs: {sorted(set(rules))}")
    assert _stages_run(out) == {"tables", "figures"}, out[-3000:]
    assert rules, out[-3000:]
    assert not [r for r in rules if FORBIDDEN.match(r)], out[-3000:]
    assert set(rules) <= PRESENTATION
    _assert_tables_and_figures(clone)
    assert UP_TO_DATE in _dvc(clone, "status", "dvc.yaml")

"""Shared fixtures: the real annotation files in ``../shared/data`` beside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    override = os.environ.get("QURE_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


# --- test distribution over xdist workers -------------------------------------------------

#: Test files that share one expensive session fixture: each group runs on one worker
#: (a session fixture is built once per worker), the other files are spread file by file.
SHARED_FIXTURE_FILES = {"test_workflow_run.py": "smoke-study",
                        "test_dvc_remote.py": "smoke-study"}


#: The slowest files (minutes each: the smoke study, the paper rehearsal, the SLURM
#: cluster, the LAVIS parity env) are handed out first, so that the two workers share the
#: quick files at the end instead of one worker starting a long file last.
SLOW_FIRST = ("test_dvc_remote.py", "test_workflow_run.py", "test_rehearsal.py",
              "test_slurm_cluster.py", "test_lavis_parity.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, except that the files of :data:`SHARED_FIXTURE_FILES` form one
    work unit (the smoke study's ``dvc repro`` is built once, not on every worker)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SHARED_FIXTURE_FILES.get(scope.rsplit("/", 1)[-1], scope)

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real FashionIQ/CIRR/CIRCO/HP-FashionIQ annotations (no images).

    CI always has them; a developer checkout without ``../shared`` skips these tests
    locally (set QURE_SHARED_DATA to point elsewhere) but fails under CI.
    """
    path = _shared_data_dir()
    if not (path / "SHA256SUMS").is_file():
        message = f"real annotation files not found at {path} (set QURE_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# --- one smoke study, shared by the end-to-end tests ---------------------------------------

#: Appended to every DVC stage's Snakemake call (see qure.workflow.dvc); two cores speed
#: up the stages with many small jobs (evaluation, tables, figures).
SMOKE_SNAKEMAKE_ARGS = "--configfile config/smoke.yaml --cores 2"


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's folder (snakemake, dvc) first on PATH."""
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def smoke_env() -> dict[str, str]:
    return {**tool_env(), "QURE_SNAKEMAKE_ARGS": SMOKE_SNAKEMAKE_ARGS, "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "qure-test", "GIT_AUTHOR_EMAIL": "qure-test@example.invalid",
            "GIT_COMMITTER_NAME": "qure-test",
            "GIT_COMMITTER_EMAIL": "qure-test@example.invalid"}


def _checked(cmd: list[str], cwd: Path, timeout: int) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=smoke_env(), capture_output=True, text=True,
                            timeout=timeout)
    out = result.stdout + result.stderr
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-1500:]}"
                         for p in (cwd / "logs").rglob("*.log") if "rror" in p.read_text()
                         ) if (cwd / "logs").is_dir() else ""
        pytest.fail(f"{' '.join(cmd)} failed:\n{out[-5000:]}\n{logs[-5000:]}")
    return out


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> dict:
    """A git copy of the repository after ``dvc repro`` of the smoke study: every DVC
    stage, i.e. the whole Snakemake DAG on the smallest synthetic benchmarks."""
    work = tmp_path_factory.mktemp("smoke_study") / "origin"
    listed = _checked(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                      REPO_ROOT, 60)
    for rel in listed.splitlines():
        if (REPO_ROOT / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, work / rel)
    _checked(["git", "init", "-q"], work, 60)
    _checked(["git", "add", "-A"], work, 60)
    _checked(["git", "commit", "-q", "-m", "copy"], work, 60)
    started = time.perf_counter()
    repro = _checked([sys.executable, "-m", "dvc", "repro"], work, 1800)
    seconds = time.perf_counter() - started
    print(f"\ndvc repro (smoke study): {seconds:.1f} s")
    status = _checked([sys.executable, "-m", "dvc", "status", "dvc.yaml"], work, 300)
    return {"work": work, "repro": repro, "status": status, "seconds": seconds}


"""The smoke study's FashionIQ branch through SLURM, for real:
tools/slurm_local_cluster.sh installs Debian's slurm-wlm and munge and starts a one-node
cluster on loopback (2 CPUs, four fake GPUs); Snakemake submits every job with
snakemake-executor-plugin-slurm through profiles/slurm-local, in a copy of the
repository. The targets (Table 2, the hard-set audit, the Fig. 6 examples and the
dataset statistics) pull in every kind of rule but the training-curve figures: 17 jobs
instead of the whole smoke study's 44 (CI time). Checks the outputs, that every job went
through SLURM (the cluster's job-completion log against Snakemake's submissions), and
records the wall time.

Needs root (apt-get, daemons). Skipped only where the packages cannot be installed."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qure.workflow.config import load_config
from qure.workflow.plan import Plan

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tools" / "slurm_local_cluster.sh"
PLUGIN = "snakemake-executor-plugin-slurm"

pytestmark = pytest.mark.slow


def _run(cmd: list[str], timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _install_packages() -> None:
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (apt-get install, daemons)")
    result = _run(["bash", str(CLUSTER), "install"], timeout=900)
    if result.returncode != 0:
        pytest.skip("Debian's slurm-wlm and munge could not be installed:\n"
                    + (result.stdout + result.stderr)[-2000:])


def _install_plugin() -> None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        result = _run([sys.executable, "-m", "pip", "install", "--quiet",
                       "--disable-pip-version-check", PLUGIN], timeout=600)
        assert result.returncode == 0, (f"pip install {PLUGIN} failed:\n"
                                         + (result.stdout + result.stderr)[-3000:])


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    _install_packages()
    _install_plugin()
    state = tmp_path_factory.mktemp("slurm")
    started = _run(["bash", str(CLUSTER), "start", str(state)], timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield state
    finally:
        stopped = _run(["bash", str(CLUSTER), "stop", str(state)], timeout=120)
        print(stopped.stdout + stopped.stderr)


@pytest.fixture(scope="session")
def slurm_run(cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm_repo")
    listed = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    for rel in listed.stdout.splitlines():
        if (REPO / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, work / rel)
    env = {**os.environ, "SLURM_CONF": str(cluster / "slurm.conf"),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    config = load_config(REPO / "config" / "config.yaml", REPO / "config" / "smoke.yaml")
    plan = Plan(config)
    targets = [plan.table_file("table2_fashioniq", "md"), plan.audit("fashioniq"),
               plan.figure_file("fig6_hard_negative_examples", "png"),
               plan.dataset_stats("fashioniq")]
    started = time.perf_counter()
    result = _run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm-local",
                   "--configfile", "config/smoke.yaml", "--", *targets],
                  cwd=work, env=env, timeout=1800)
    seconds = time.perf_counter() - started
    out = result.stdout + result.stderr
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in (work / "logs").rglob("*.log")
                         if "rror" in p.read_text(errors="replace"))
        pytest.fail(f"smoke workflow through SLURM failed after {seconds:.0f} s:\n"
                    f"{out[-5000:]}\n{logs[-6000:]}")
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    jobcomp = (cluster / "jobcomp.log").read_text()
    # Finished jobs stay known to slurmctld for an hour (MinJobAge in slurm.conf).
    jobs = _run(["scontrol", "-o", "show", "job"], env=env).stdout
    print(f"\nsmoke workflow through SLURM: {seconds:.1f} s, {len(submitted)} SLURM jobs")
    return {"work": work, "targets": targets, "out": out, "submitted": submitted,
            "jobcomp": jobcomp, "jobs": jobs, "seconds": seconds}


def test_targets_are_built_through_slurm(slurm_run):
    work = slurm_run["work"]
    for path in slurm_run["targets"]:
        assert (work / path).is_file() and (work / path).stat().st_size > 0, path


def test_every_job_ran_as_a_slurm_job(slurm_run):
    out, submitted = slurm_run["out"], slurm_run["submitted"]
    finished = re.search(r"(\d+) of (\d+) steps \(100%\) done", out)
    assert finished, out[-3000:]
    # Every job is a SLURM job (the targets are files, no local target rule).
    assert len(submitted) == int(finished.group(2)) > 0
    completed = dict(re.findall(r"^JobId=(\d+) .*?JobState=(\w+)", slurm_run["jobcomp"],
                                flags=re.MULTILINE))
    for jobid in submitted:
        assert completed.get(jobid) == "COMPLETED", (jobid, completed.get(jobid))


def test_gpu_rules_asked_slurm_for_a_gpu(slurm_run):
    """The rules' gpu=1 became --gpus=1 (TresPerJob gres:gpu:1); CPU rules asked none."""
    gpu_by_rule: dict[str, set[bool]] = {}
    for line in slurm_run["jobs"].splitlines():
        rule = re.search(r"\bComment=rule_([a-z0-9_]+?)(?:_wildcards_\S*)?(?:\s|$)", line)
        if rule:
            gpu = re.search(r"\bTresPerJob=\S*gpu:1\b", line) is not None
            gpu_by_rule.setdefault(rule.group(1), set()).add(gpu)
    for name in ("train", "evaluate", "extract_features_mini", "pretrain_encoder",
                 "pretrain_qformer", "audit_hard_sets", "hard_negative_examples"):
        assert gpu_by_rule.get(name) == {True}, (name, gpu_by_rule)
    for name in ("table", "dataset_stats", "synthesize"):
        assert gpu_by_rule.get(name) == {False}, (name, gpu_by_rule)

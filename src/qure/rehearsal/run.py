"""Rehearse the paper profile offline: fake upstream, loopback mirror, ``snakemake all``.

:func:`rehearse` (``tools/paper_rehearsal.py --out DIR``):

1. builds the fake upstream under ``DIR/upstream`` (:mod:`qure.rehearsal.upstream`);
2. copies the repository's files (``git ls-files``: tracked and untracked-not-ignored,
   as the smoke study does) to ``DIR/repo``;
3. starts the loopback mirror and writes ``DIR/rehearsal.yaml``, an overlay over
   ``config/paper.yaml``: ``data.real.base_url`` = the mirror, its substitutes file,
   FashionIQ images from the mirror, CIRR images from the NLVR2 folder, a small
   ``data.subset``, the reduced model (``backbones.blip2_vitl.model_config``), short
   training, one thread, the CPU, and every path under ``DIR``;
4. runs ``snakemake -n`` (the job list, ``DIR/dryrun.txt``) and then
   ``snakemake <targets> --cores 2 --configfile config/paper.yaml DIR/rehearsal.yaml
   --resources gpu=1`` in ``DIR/repo`` (``DIR/snakemake.log``);
5. checks the outputs (:mod:`qure.rehearsal.checks`) and writes ``DIR/rehearsal_report.json``: the
   wall times, the failed rules with their log tails, and each check's status
   (``pass``, ``fail`` or, with ``--stage data`` only, ``pending``: its input comes
   from a later stage; after ``snakemake all`` a pending check is a failure).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qure.io import atomic_write_json
from qure.rehearsal.checks import CHECKS, DATA_CHECKS, DATASETS, Outputs
from qure.rehearsal.mirror import LoopbackMirror
from qure.rehearsal.upstream import UPSTREAM_MANIFEST, Upstream, build_upstream

log = logging.getLogger(__name__)

QUERIES = 8
GALLERY = 48
"""Other gallery images per gallery file: with 8 queries' images, every gallery of the
subset holds more than 50 images (the CIRR/CIRCO test-server files list a top 50)."""
OVERLAY = "rehearsal.yaml"
REPORT = "rehearsal_report.json"


@dataclass
class RehearsalResult:
    out: Path
    returncode: int
    seconds: dict[str, float]
    failed_rules: list[dict[str, str]]
    checks: list[dict[str, Any]]
    report: Path
    jobs: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and all(c["status"] != "fail" for c in self.checks)


# --- set-up ---------------------------------------------------------------------------------


def copy_repository(repo: Path, dest: Path) -> int:
    """The repository's files (tracked, and untracked but not ignored) copied to ``dest``."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                                cwd=repo, capture_output=True, text=True, check=True,
                                timeout=120).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise RuntimeError(f"{repo}: cannot list the repository's files with git ({err}); the "
                           "rehearsal copies a git checkout") from err
    if dest.exists():
        shutil.rmtree(dest)
    copied = 0
    for rel in listed.splitlines():
        source = repo / rel
        if source.is_file() and not source.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
            copied += 1
    return copied


def overlay_config(out: Path, base_url: str, upstream: dict[str, Any], *,
                   threads: int = 1) -> dict[str, Any]:
    """The overlay over config/paper.yaml (every path under ``out``)."""
    data = out / "data"
    return {
        "threads": threads, "workers": 0, "device": "cpu", "progress": False,
        "data": {
            "roots": {"fashioniq": str(data / "fashioniq"), "cirr": str(data / "cirr_dataset"),
                      "circo": str(data / "circo"), "hp_fashioniq": str(data / "hp_fashioniq")},
            "hp_image_root": str(data / "fashioniq"),
            "subset": dict(upstream["subset"]),
            "real": {"fashioniq_images": {"source": "mirror", "path": None},
                     "cirr_images": upstream["nlvr2"], "weights_dir": str(data / "weights"),
                     "base_url": base_url, "substitutes": upstream["substitutes"]},
        },
        "backbones": {"blip2_vitl": {"model_config": dict(upstream["model_config"])}},
        "training": {"defaults": {"batch_size": 8, "n_def": 2, "eval_batch_size": 32,
                                  "snapshot_queries": 4},
                     "fashioniq": {"epochs": 2}, "cirr": {"epochs": 2}},
        "evaluation": {"batch_size": 32},
    }


def write_overlay(out: Path, config: dict[str, Any]) -> Path:
    path = out / OVERLAY
    path.write_text("# Written by tools/paper_rehearsal.py: the paper profile against a "
                    "loopback mirror of a\n# fake upstream (see qure.rehearsal.run). Use with "
                    "--configfile config/paper.yaml <this file>.\n"
                    + yaml.safe_dump(config, sort_keys=False, width=100), encoding="utf-8")
    return path


def rehearsal_plan(repo: Path, overlay: Path) -> Any:
    """The study plan of the rehearsal's config (paper profile + overlay)."""
    from qure.workflow.config import load_config
    from qure.workflow.plan import Plan

    return Plan(load_config(repo / "config" / "config.yaml", repo / "config" / "paper.yaml",
                            overlay))


def data_targets(plan: Any) -> list[str]:
    """The data stage's files: every benchmark fetched, cut, verified and counted, and
    the converted BLIP-2 weights."""
    return [*(plan.dataset_stats(d) for d in DATASETS), plan.blip2_weights()]


def rehearsal_outputs(repo: Path, plan: Any) -> Outputs:
    return Outputs(repo, repo / plan.results, repo / plan.resources,
                   tuple(plan.submission_files()))


def _env() -> dict[str, str]:
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def snakemake_command(targets: Sequence[str], overlay: Path, cores: int,
                      *extra: str) -> list[str]:
    # Targets first: --configfile and --resources each take every following word.
    return [sys.executable, "-m", "snakemake", *targets, *extra, "--cores", str(cores),
            "--configfile", "config/paper.yaml", str(overlay), "--resources", "gpu=1"]


_JOB_LINE = re.compile(r"^(\w+)\s+(\d+)\s*$")


def job_counts(dry_run: str) -> dict[str, int]:
    """Rule -> jobs from Snakemake's "Job stats" table."""
    counts: dict[str, int] = {}
    in_table = False
    for line in dry_run.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = _JOB_LINE.match(line.strip())
            if match and match.group(1) != "total":
                counts[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


#: A job header ("rule x:" / "localrule x:") or an error block, with its indented fields.
_BLOCK = re.compile(r"^(?P<kind>(?:local)?rule|Error in rule) (?P<rule>\w+):\n"
                    r"(?P<fields>(?:[ \t]+\S.*\n?)+)", re.MULTILINE)


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key.isidentifier() and key not in out:
            out[key] = value.strip()
    return out


def failed_rules(log_text: str, repo: Path, tail: int = 1500) -> list[dict[str, str]]:
    """Each failed job: the rule, its wildcards (from the job's header: Snakemake's
    error block does not repeat them), its log file and the log's last lines."""
    wildcards: dict[str, str] = {}
    out = []
    for match in _BLOCK.finditer(log_text):
        fields = _fields(match["fields"])
        if match["kind"] != "Error in rule":
            wildcards[fields.get("jobid", "")] = fields.get("wildcards", "")
            continue
        log_file = fields.get("log", "").split("(check log")[0].strip()
        entry = {"rule": match["rule"], "wildcards": wildcards.get(fields.get("jobid", ""), ""),
                 "log": log_file, "log_tail": ""}
        path = repo / log_file if log_file else None
        if path is not None and path.is_file():
            entry["log_tail"] = path.read_text(errors="replace")[-tail:]
        out.append(entry)
    return out


# --- the rehearsal ----------------------------------------------------------------------------


def rehearse(out: str | Path, *, shared: str | Path, repo: str | Path,
             queries: int = QUERIES, gallery: int = GALLERY, cores: int = 2,
             stage: str = "all", timeout: float = 3600.0, keep_going: bool = True,
             prepare: Callable[[Upstream], None] | None = None,
             echo: Callable[[str], None] = print) -> RehearsalResult:
    """Run the rehearsal into ``out`` (see the module doc); ``stage`` ``data`` stops after
    the data stage (fetch, subset, verification, statistics, weight conversion).
    ``prepare`` may alter the fake upstream before the run (tests break it on purpose)."""
    if stage not in ("all", "data"):
        raise ValueError(f"stage must be 'all' or 'data', got {stage!r}")
    out, repo = Path(out).resolve(), Path(repo).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    upstream = build_upstream(out / "upstream", shared, queries, gallery)
    if prepare is not None:
        prepare(upstream)
    seconds["upstream"] = time.perf_counter() - started
    echo(f"fake upstream in {upstream.root} ({seconds['upstream']:.1f} s)")
    work = out / "repo"
    copied = copy_repository(repo, work)
    echo(f"copied {copied} repository files to {work}")
    with LoopbackMirror(upstream.mirror, lifetime=timeout + 120) as mirror:
        overlay = write_overlay(out, overlay_config(out, mirror.base, upstream.manifest))
        plan = rehearsal_plan(work, overlay)
        targets = ["all"] if stage == "all" else data_targets(plan)
        dry = subprocess.run(snakemake_command(targets, overlay, cores, "-n"), cwd=work,
                             env=_env(), capture_output=True, text=True, timeout=600)
        (out / "dryrun.txt").write_text(dry.stdout + dry.stderr, encoding="utf-8")
        jobs = job_counts(dry.stdout + dry.stderr)
        if dry.returncode != 0:
            raise RuntimeError(f"snakemake -n failed (see {out / 'dryrun.txt'}):\n"
                               f"{(dry.stdout + dry.stderr)[-3000:]}")
        listing = ", ".join(f"{k} {v}" for k, v in jobs.items())
        echo(f"snakemake -n: {sum(jobs.values())} jobs ({listing})")
        extra = ["--keep-going"] if keep_going else []
        run_started = time.perf_counter()
        with (out / "snakemake.log").open("w", encoding="utf-8") as handle:
            try:
                run = subprocess.run(snakemake_command(targets, overlay, cores, *extra),
                                     cwd=work, env=_env(), stdout=handle,
                                     stderr=subprocess.STDOUT, timeout=timeout)
                returncode = run.returncode
            except subprocess.TimeoutExpired:
                returncode = 124
        seconds["snakemake"] = time.perf_counter() - run_started
        served = len(mirror.requests)
    text = (out / "snakemake.log").read_text(encoding="utf-8", errors="replace")
    failures = failed_rules(text, work)
    outputs = rehearsal_outputs(work, plan)
    checks = [check(outputs, upstream.manifest) for check in CHECKS]
    if stage == "data":
        checks = [c for c in checks if c["check"] in DATA_CHECKS]
    else:
        # After `snakemake all` every output exists: a check still waiting is a failure.
        for check in checks:
            if check["status"] == "pending":
                check.update(status="fail", detail=f"after snakemake all: {check['detail']}")
    seconds["total"] = time.perf_counter() - started
    report = atomic_write_json(out / REPORT, {
        "out": str(out), "stage": stage, "targets": targets, "returncode": returncode,
        "seconds": seconds, "jobs": jobs, "mirror_requests": served,
        "failed_rules": failures, "checks": checks,
        "upstream": str(upstream.root / UPSTREAM_MANIFEST), "overlay": str(overlay),
        "snakemake_log": str(out / "snakemake.log")})
    return RehearsalResult(out, returncode, seconds, failures, checks, report, jobs)

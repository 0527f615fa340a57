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
5. checks the outputs (:data:`CHECKS`) and writes ``DIR/rehearsal_report.json``: the
   wall times, the failed rules with their log tails, and each check's status
   (``pass``, ``fail`` or, with ``--stage data`` only, ``pending``: its input comes
   from a later stage; after ``snakemake all`` a pending check is a failure).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
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

from qure.io import atomic_write_json, read_json
from qure.rehearsal.mirror import LoopbackMirror
from qure.rehearsal.upstream import UPSTREAM_MANIFEST, Upstream, build_upstream

log = logging.getLogger(__name__)

QUERIES = 8
GALLERY = 48
"""Other gallery images per gallery file: with 8 queries' images, every gallery of the
subset holds more than 50 images (the CIRR/CIRCO test-server files list a top 50)."""
OVERLAY = "rehearsal.yaml"
REPORT = "rehearsal_report.json"
DATASETS = ("fashioniq", "cirr", "circo", "hp_fashioniq")


@dataclass(frozen=True)
class Outputs:
    """Where the rehearsal's copy of the repository writes (``paths`` of the config)."""

    repo: Path
    results: Path
    resources: Path
    submissions: tuple[str, ...] = ()
    """The test-server files (and reports) the plan names, relative to ``repo``."""


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


_ERROR = re.compile(r"Error in rule (\w+):")


def failed_rules(log_text: str, repo: Path, tail: int = 1500) -> list[dict[str, str]]:
    """Each failed job: the rule, its wildcards, its log file and the log's last lines."""
    out = []
    blocks = _ERROR.split(log_text)
    for rule, body in zip(blocks[1::2], blocks[2::2], strict=True):
        entry = {"rule": rule, "wildcards": "", "log": "", "log_tail": ""}
        for line in body.splitlines()[:30]:
            line = line.strip()
            if line.startswith(("rule ", "localrule ", "[")):
                break  # the next job's block: its fields are not this failure's
            if line.startswith("wildcards:"):
                entry["wildcards"] = line.split(":", 1)[1].strip()
            elif line.startswith("log:"):
                entry["log"] = line.split(":", 1)[1].split("(check log")[0].strip()
        path = repo / entry["log"] if entry["log"] else None
        if path is not None and path.is_file():
            entry["log_tail"] = path.read_text(errors="replace")[-tail:]
        out.append(entry)
    return out


# --- checks ---------------------------------------------------------------------------------


def _result(name: str, status: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"check": name, "status": status, "detail": detail, **extra}


def check_data_stage(out: Outputs, upstream: dict[str, Any]) -> dict[str, Any]:
    """Every dataset fetched, cut and verified; substituted files exactly the stand-ins."""
    results = out.results / "data"
    problems, done = [], []
    for dataset in DATASETS:
        verified = results / f"{dataset}_verified.json"
        if not verified.is_file():
            problems.append(f"{verified.name} not written")
            continue
        report = read_json(verified, dict)
        bad = [r for r in report["annotations"] if r["status"] in ("missing", "mismatch")]
        if bad:
            problems.append(f"{dataset}: annotation(s) {[r['path'] for r in bad]} "
                            f"{bad[0]['status']}")
        expected_missing = dataset == "fashioniq"
        complete = bool(report["images"].get("complete"))
        if complete == expected_missing:
            problems.append(f"{dataset}: images {'complete' if complete else 'incomplete'}, "
                            f"expected {'missing ones' if expected_missing else 'all'}")
        done.append(dataset)
    substituted: dict[str, list[str]] = {}
    for manifest in [*results.glob("*_annotations.json"), *results.glob("*_images.json"),
                     results / "weights.json"]:
        if not manifest.is_file():
            continue
        data = read_json(manifest, dict)
        rows = data.get("files") or [*data.get("url_lists", []), *data.get("downloads", [])]
        for row in rows:
            if row.get("substitute"):
                dataset = (data.get("dataset") if manifest.name != "weights.json"
                           else "weights")
                substituted.setdefault(dataset, []).append(row["path"])
    expected = upstream["substituted"]
    for dataset, paths in expected.items():
        if sorted(substituted.get(dataset, [])) != sorted(paths):
            problems.append(f"{dataset}: manifests record substitutes "
                            f"{sorted(substituted.get(dataset, []))}, expected {sorted(paths)}")
    conversion = results / "blip2_conversion.json"
    if not conversion.is_file():
        problems.append("blip2_conversion.json not written")
    if problems:
        return _result("data_stage", "fail", "; ".join(problems))
    return _result("data_stage", "pass", f"verified {', '.join(done)}; substitutes recorded "
                   "for exactly the stand-ins; weights converted")


def _missing_in_fetch_report(out: Outputs, expected: dict[str, dict]) -> list[str]:
    report = read_json(out.results / "data" / "fashioniq_images.json", dict)
    problems = []
    for key, want in expected.items():
        split, category = key.split("/")
        got = report["images"]["splits"][split][category]
        names = sorted([*want["gallery_only"], *want["references"]])
        if got["missing_asins"] != names:
            problems.append(f"fetch report {key}: missing {got['missing_asins']}, expected "
                            f"{names}")
        if got["queries_affected"] != want["expected"]["queries_dropped"]:
            problems.append(f"fetch report {key}: {got['queries_affected']} queries affected, "
                            f"expected {want['expected']['queries_dropped']}")
    return problems


def _missing_in_evaluations(out: Outputs, expected: dict[str, dict]) -> tuple[int, list[str]]:
    files = sorted((out.results / "eval" / "fashioniq").glob("*/*.json"))
    problems, checked = [], 0
    for path in files:
        missing = read_json(path, dict).get("missing_images")
        if not isinstance(missing, dict):
            continue
        checked += 1
        for name, counts in missing.get("splits", {}).items():
            key = name.removeprefix("fashioniq/")
            want = expected.get(key, {}).get("expected")
            if want is None:
                continue
            for field_name in ("queries_dropped", "gallery_images_missing"):
                if counts.get(field_name) != want[field_name]:
                    problems.append(f"{path.relative_to(out.repo)} {name}: {field_name} "
                                    f"{counts.get(field_name)}, expected {want[field_name]}")
    return checked, problems


def check_missing_images(out: Outputs, upstream: dict[str, Any]) -> dict[str, Any]:
    """The FashionIQ images reported missing are exactly those the upstream left out: in
    the image fetch report now, and in the evaluation files' ``missing_images`` counts
    where the evaluations exist (expected per split and category: upstream.json)."""
    expected = upstream["fashioniq"]["missing"]["splits"]
    if not (out.results / "data" / "fashioniq_images.json").is_file():
        return _result("missing_images", "fail", "results/data/fashioniq_images.json not "
                       "written")
    problems = _missing_in_fetch_report(out, expected)
    checked, more = _missing_in_evaluations(out, expected)
    problems += more
    if problems:
        return _result("missing_images", "fail", "; ".join(problems[:10]))
    if not checked:
        return _result("missing_images", "pending",
                       f"fetch report matches the {upstream['fashioniq']['missing']['total']} "
                       "images left out; no FashionIQ evaluation with missing_images yet")
    return _result("missing_images", "pass", f"fetch report and {checked} evaluation file(s) "
                   "match the images left out")


def check_tables(out: Outputs, upstream: dict[str, Any]) -> dict[str, Any]:
    """Every table has reproduced rows, each carrying at least one finite number."""
    tables = sorted((out.results / "tables").glob("*.csv"))
    if not tables:
        return _result("tables", "fail", "no results/tables/*.csv")
    problems = []
    for path in tables:
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
        reproduced = [r for r in rows if r.get("source") == "reproduced"]
        if not reproduced:
            problems.append(f"{path.name}: no reproduced rows")
        for row in reproduced:
            numbers = []
            for key, value in row.items():
                if key in ("source", "method", "backbone", "profile", "split"):
                    continue
                with contextlib.suppress(TypeError, ValueError):
                    numbers.append(float(value))
            if not any(math.isfinite(n) for n in numbers):
                problems.append(f"{path.name}: reproduced row {row.get('method')} has no "
                                "number")
    if problems:
        return _result("tables", "fail", "; ".join(problems[:10]))
    return _result("tables", "pass", f"{len(tables)} tables, every reproduced row numeric")


def check_server_files(out: Outputs, upstream: dict[str, Any]) -> dict[str, Any]:
    """Every CIRR test1 and CIRCO test server file the plan names is written, passes the
    qure.submissions validators, covers exactly the subset's test queries (the first ones
    of the real test annotations) and predicts only images of the real test gallery."""
    from qure.data import CIRCO, CIRR
    from qure.submissions import validate_circo_submission, validate_cirr_submission

    files = [out.repo / f for f in out.submissions if not f.endswith("/submission.json")]
    if not files:
        return _result("server_files", "fail", "the plan names no server files "
                       "(evaluation.test_servers is off?)")
    absent = [str(f.relative_to(out.repo)) for f in files if not f.is_file()]
    if absent:
        return _result("server_files", "pending", f"{len(absent)} of {len(files)} server "
                       f"files not written yet (first: {absent[0]})")
    problems = []
    subset = out.resources / "subset"
    cirr = CIRR(subset / "cirr").load_split("test1")
    circo = CIRCO(subset / "circo").load_split("test")
    expected = {"cirr": ({q.query_id for q in cirr}, set(cirr.gallery.names)),
                "circo": ({q.query_id for q in circo}, {int(n) for n in circo.gallery.names})}
    counts = {"cirr": 0, "circo": 0}
    for path in files:
        try:
            data = read_json(path, dict)
            if path.name.startswith("circo_"):
                benchmark = "circo"
                validate_circo_submission(data, sorted(expected["circo"][0]))
                predicted = {i for ids in data.values() for i in ids}
            else:
                benchmark = "cirr"
                metric = ("recall_subset" if path.name.startswith("recall_subset_")
                          else "recall")
                validate_cirr_submission(data, metric)
                pairs = {k: v for k, v in data.items() if k not in ("version", "metric")}
                if set(pairs) != expected["cirr"][0]:
                    problems.append(f"{path.name}: {len(pairs)} pairs, expected the "
                                    f"subset's {len(expected['cirr'][0])} test1 queries")
                predicted = {n for names in pairs.values() for n in names}
            if unknown := predicted - expected[benchmark][1]:
                problems.append(f"{path.name}: predicts {len(unknown)} image(s) outside the "
                                f"test gallery, e.g. {sorted(map(str, unknown))[0]}")
            counts[benchmark] += 1
        except (ValueError, OSError) as err:
            problems.append(f"{path.name}: {err}")
    if problems:
        return _result("server_files", "fail", "; ".join(problems[:10]))
    return _result("server_files", "pass", f"{counts['cirr']} CIRR and {counts['circo']} "
                   "CIRCO server file(s) well formed, covering every test query of the subset")


def check_checkpoints(out: Outputs, upstream: dict[str, Any]) -> dict[str, Any]:
    """No training run's ``model.pt`` or ``checkpoint.pt`` holds a frozen-ViT tensor
    (``visual_encoder.*``): they record the converted weights they came from instead."""
    import torch

    files = sorted([*out.results.glob("runs/*/*/*/model.pt"),
                    *out.results.glob("runs/*/*/*/checkpoint.pt")])
    if not files:
        return _result("checkpoints", "pending", "no training run written yet")
    problems, sizes = [], []
    for path in files:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state = payload.get("state_dict", payload.get("model", {}))
        frozen = [k for k in state if k.startswith("visual_encoder.")]
        if frozen:
            problems.append(f"{path.relative_to(out.repo)}: {len(frozen)} frozen-ViT "
                            f"tensor(s), e.g. {frozen[0]}")
        sizes.append(path.stat().st_size)
    if problems:
        return _result("checkpoints", "fail", "; ".join(problems[:5]))
    return _result("checkpoints", "pass", f"{len(files)} model/checkpoint files without "
                   f"frozen-ViT tensors (largest {max(sizes)} bytes)")


CHECKS: tuple[Callable[[Outputs, dict[str, Any]], dict[str, Any]], ...] = (
    check_data_stage, check_missing_images, check_tables, check_server_files,
    check_checkpoints)
#: The checks of ``--stage data`` (the others need the later stages).
DATA_CHECKS = ("data_stage", "missing_images")


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

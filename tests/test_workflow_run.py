"""The whole DAG end to end on the smoke config (run once by ``dvc repro`` in a copy of
the repository, shared with the DVC tests): tables hold real numbers beside the paper's,
figures are real images, a second Snakemake invocation does nothing, and the HTML report
builds."""

from __future__ import annotations

import csv
import inspect
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qure.reporting.paper import paper_table
from qure.reporting.tables import TABLES, column_benchmarks
from qure.workflow.config import load_config
from qure.workflow.plan import FIGURE_NAMES, TABLE_NAMES, Plan
from tests.conftest import smoke_env, tool_env

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--configfile", "config/smoke.yaml"]


def _snakemake(cwd: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=tool_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(smoke_study):
    """The smoke study's repository after ``dvc repro`` (every stage; see conftest)."""
    config = load_config(REPO / "config" / "config.yaml", REPO / "config" / "smoke.yaml")
    return smoke_study["work"], Plan(config), smoke_study["seconds"]


@pytest.mark.slow
def test_tables_put_reproduced_numbers_beside_the_paper(smoke_run):
    work, plan, _ = smoke_run
    for table in TABLE_NAMES:
        paper = paper_table(TABLES[table])
        with open(work / plan.table_file(table, "csv"), newline="") as handle:
            rows = list(csv.DictReader(handle))
        printed = [r for r in rows if r["source"] == "paper"]
        reproduced = [r for r in rows if r["source"] == "reproduced"]
        assert len(printed) == len(paper.rows)
        assert len(reproduced) == len(plan.table_rows(table)) > 0, table
        for row in reproduced:
            assert row["profile"] == "synthetic"
            for key in paper.column_keys:
                value = float(row[key])  # a placeholder ("-", "") would raise here
                assert 0.0 <= value <= 100.0, (table, key, value)
        # Reproduced values are the evaluation files' numbers, not constants.
        spec = plan.table_rows(table)[0]
        for key, benchmark in column_benchmarks(paper).items():
            metrics = json.loads((work / spec["evaluations"][benchmark]).read_text())["metrics"]
            assert float(reproduced[0][key]) == pytest.approx(metrics[key], abs=0.006)
        md = (work / plan.table_file(table, "md")).read_text()
        tex = (work / plan.table_file(table, "tex")).read_text()
        assert "reproduced" in md and "\\begin{tabular}" in tex


@pytest.mark.slow
def test_figures_are_real_images(smoke_run):
    from PIL import Image

    work, plan, _ = smoke_run
    for figure in FIGURE_NAMES:
        with Image.open(work / plan.figure_file(figure, "png")) as img:
            assert img.width >= 400 and img.height >= 250, figure
            colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
            assert colours is None or len(colours) > 20, f"{figure} looks blank"
        assert (work / plan.figure_file(figure, "pdf")).read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
def test_every_run_has_metrics_and_evaluations(smoke_run):
    work, plan, _ = smoke_run
    for path in plan.evaluation_files():
        result = json.loads((work / path).read_text())
        assert result["profile"] == "synthetic" and result["metrics"], path
    audit = json.loads((work / plan.audit("fashioniq")).read_text())
    assert audit["oracle"] and set(audit["strategies"]) == set(
        plan.config["study"]["audit_methods"])


@pytest.mark.slow
def test_second_invocation_does_nothing(smoke_run, smoke_study):
    """``dvc repro`` again: every stage is up to date by hash, nothing runs."""
    work, _, _ = smoke_run
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=work,
                            env=smoke_env(), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-2000:]
    assert "Running stage" not in out and "rule train" not in out, out[-2000:]
    print(f"\nno-op dvc repro: {seconds:.1f} s")
    assert seconds <= 30.0


@pytest.mark.slow
def test_html_report_builds(smoke_run):
    work, _, _ = smoke_run
    result = _snakemake(work, "--cores", "1", *SMOKE, "--report", "report.html", "--", "all")
    assert result.returncode == 0, result.stderr[-2000:]
    html = (work / "report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "fig4_negative_strategies" in html


def _scheduled(work: Path) -> set[str]:
    """Rules of the jobs ``snakemake -n all`` would run (its job-stats table)."""
    result = _snakemake(work, "-n", "--cores", "1", *SMOKE, "--", "all")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return set()
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.MULTILINE)} - {"all"}


def _stale_stages(work: Path) -> set[str]:
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "dvc.yaml"], cwd=work,
                            env=smoke_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(re.findall(r"^(\w+):\s*$", result.stdout, re.MULTILINE))


def _fresh_copy(work: Path, copy: Path) -> Path:
    """A copy of the smoke study whose files Snakemake finds up to date. (``dvc repro``
    rewrites a stage's cached outputs when it commits them, after intermediate files of
    the same stage were written, so by modification time Snakemake would rerun from
    there; ``--touch`` puts the times back in DAG order, changing no content.)"""
    shutil.copytree(work, copy, symlinks=True)
    touched = _snakemake(copy, "--touch", "--cores", "1", *SMOKE, "--", "all")
    assert touched.returncode == 0, touched.stderr[-2000:]
    assert _scheduled(copy) == set()
    return copy


@pytest.mark.slow
def test_a_code_edit_reruns_exactly_what_it_can_change(smoke_run, tmp_path):
    """Each rule's CLI and the modules it imports are its inputs (and its DVC stage's
    deps): an edit reruns the jobs whose results it can change, and nothing else."""
    import qure.mining
    import qure.models.preprocess

    work, _, _ = smoke_run
    miner = Path(inspect.getsourcefile(qure.mining.hard_negative_sets)).relative_to(REPO)
    transform = Path(qure.models.preprocess.__file__).relative_to(REPO)
    cases = {
        # A table formatter: only the tables.
        "src/qure/reporting/tables.py": ({"table"}, {"tables"}),
        # Documentation: nothing.
        "README.md": (set(), set()),
        # A test: nothing.
        "tests/test_metrics.py": (set(), set()),
    }
    for rel, (rules, stages) in cases.items():
        copy = _fresh_copy(work, tmp_path / rel.replace("/", "_"))
        with (copy / rel).open("a", encoding="utf-8") as handle:
            handle.write("\n# edited by the code-provenance test\n")
        assert _scheduled(copy) == rules, rel
        assert _stale_stages(copy) == stages, rel
    # Wider edits: what they can change reruns, what they cannot does not.
    wide = {
        str(transform): ({"extract_features_mini", "train", "evaluate", "table"},
                         {"synthesize", "dataset_stats"}),
        str(miner): ({"train", "audit_hard_sets", "table"},
                     {"synthesize", "dataset_stats", "extract_features_mini", "pretrain_encoder"}),
        "src/qure/data/cirr.py": ({"dataset_stats", "train", "evaluate"}, set()),
    }
    for rel, (included, excluded) in wide.items():
        copy = _fresh_copy(work, tmp_path / rel.replace("/", "_"))
        with (copy / rel).open("a", encoding="utf-8") as handle:
            handle.write("\n# edited by the code-provenance test\n")
        scheduled = _scheduled(copy)
        assert included <= scheduled and not excluded & scheduled, (rel, scheduled)

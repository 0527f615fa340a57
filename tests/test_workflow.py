"""The workflow's wiring: config schema and validation, the study plan, the generated
dvc.yaml, Snakemake lint and dry runs (default, smoke and paper profiles)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qure.errors import ConfigError
from qure.workflow.config import (
    config_schema,
    load_config,
    merge_configs,
    training_runs,
    validate_config,
)
from qure.workflow.dvc import PAPER as PAPER_PIPELINE
from qure.workflow.dvc import dvc_outputs, render_dvc_yaml
from qure.workflow.plan import FIGURE_NAMES, TABLE_NAMES, Plan
from tests.conftest import tool_env

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "config" / "config.yaml"
SMOKE = REPO / "config" / "smoke.yaml"
PAPER = REPO / "config" / "paper.yaml"


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=tool_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def config() -> dict:
    return load_config(DEFAULT)


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [(DEFAULT,), (DEFAULT, SMOKE), (DEFAULT, PAPER)],
                         ids=["default", "smoke", "paper"])
def test_shipped_configs_validate(files):
    config = load_config(*files)
    assert training_runs(config)


def test_every_schema_key_is_documented_and_closed():
    def walk(node, where):
        if not isinstance(node, dict):
            return
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{where} is not closed"
            for key, sub in node["properties"].items():
                assert sub.get("description"), f"{where}.{key} has no description"
                walk(sub, f"{where}.{key}")
        for key in ("additionalProperties", "items"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{where}.{key}")
        for name, sub in node.get("$defs", {}).items():
            walk(sub, f"$defs.{name}")

    walk(config_schema(), "<root>")


def test_unknown_key_is_rejected_by_name(config):
    bad = merge_configs(config, {"training": {"fashioniq": {"epoch": 3}}})
    with pytest.raises(ConfigError, match=r"training\.fashioniq.*'epoch'"):
        validate_config(bad)


def test_wrong_type_names_the_key(config):
    bad = merge_configs(config, {"encoder": {"epochs": "six"}})
    with pytest.raises(ConfigError, match=r"config key encoder\.epochs"):
        validate_config(bad)


def test_cross_key_references_are_checked(config):
    bad = copy.deepcopy(config)
    bad["study"]["main_backbone"] = "vit_g"
    with pytest.raises(ConfigError, match=r"study\.main_backbone.*'vit_g'"):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["study"]["strategy_methods"].append("hardest")
    with pytest.raises(ConfigError, match=r"study\.strategy_methods.*'hardest'"):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["methods"]["trns"]["strategy_params"] = {"low": 0.5, "high": 0.1}
    with pytest.raises(ConfigError, match=r"methods\.trns"):
        validate_config(bad)


def test_pretraining_corpus_must_not_be_the_study_data(config):
    bad = copy.deepcopy(config)
    bad["pretraining"]["corpus_seed"] = bad["data"]["synthetic"]["seed"]
    with pytest.raises(ConfigError, match=r"pretraining\.corpus_seed"):
        validate_config(bad)


def test_bad_config_file_stops_snakemake_with_the_key(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("study: {main_backbone: nonexistent}\n")
    result = snakemake("-n", "--cores", "1", "--configfile", str(overlay), "--", "all")
    assert result.returncode != 0
    assert "study.main_backbone" in result.stdout + result.stderr


# --- plan -----------------------------------------------------------------------------------


def test_plan_covers_every_table_and_figure(config):
    plan = Plan(config)
    targets = plan.all_targets()
    for table in TABLE_NAMES:
        for fmt in ("csv", "md", "tex"):
            assert plan.table_file(table, fmt) in targets
        assert plan.table_rows(table), table
    for figure in FIGURE_NAMES:
        assert plan.figure_file(figure, "png") in targets
        assert plan.figure_file(figure, "pdf") in targets
    runs = training_runs(config)
    assert len(runs) == len(set(runs))
    methods = {(r.dataset, r.method) for r in runs}
    # Tables 2-5 need QuRe, the contrastive baseline and TRNS on both training datasets.
    for dataset in ("fashioniq", "cirr"):
        for method in ("qure", "contrastive", "trns"):
            assert (dataset, method) in methods


def test_zero_shot_tables_use_the_right_models(config):
    plan = Plan(config)
    (row,) = [r for r in plan.table_rows("table5_circo") if r["method"] == "QuRe"]
    assert row["evaluations"] == {"circo": plan.evaluation("circo", "blip2", "qure")}
    inputs = plan.evaluate_inputs("circo", "blip2", "qure")
    assert inputs["model"] == plan.run_file("cirr", "blip2", "qure", "model.pt")
    inputs = plan.evaluate_inputs("hp_fashioniq", "blip", "contrastive")
    assert inputs["model"] == plan.run_file("fashioniq", "blip", "contrastive", "model.pt")


def test_pretrained_init_only_for_mini_backbones(config):
    plan = Plan(config)
    assert plan.train_inputs("cirr", "blip2")["init"] == plan.pretrained("blip2")
    paper = Plan(load_config(DEFAULT, PAPER))
    inputs = paper.train_inputs("cirr", "blip2_vitl")
    assert inputs["init"] == paper.blip2_weights() and "encoder" not in inputs


# --- DVC ------------------------------------------------------------------------------------


def test_dvc_yaml_is_generated_from_the_default_config(config):
    assert (REPO / "dvc.yaml").read_text() == render_dvc_yaml(config), \
        "dvc.yaml is stale: run python workflow_scripts/write_dvc_yaml.py"


def test_paper_dvc_yaml_is_generated_from_the_paper_profile():
    config = load_config(DEFAULT, PAPER)
    assert (REPO / "paper" / "dvc.yaml").read_text() == render_dvc_yaml(
        config, PAPER_PIPELINE), "paper/dvc.yaml is stale: run workflow_scripts/write_dvc_yaml.py"


def test_paper_dvc_pipeline_runs_the_paper_profile_and_every_out_is_a_target():
    document = yaml.safe_load((REPO / "paper" / "dvc.yaml").read_text())
    stages = document["stages"]
    outputs = dvc_outputs(document)
    assert len(outputs) == len(set(outputs))
    for stage in stages.values():
        assert stage["wdir"] == ".." and "--configfile config/paper.yaml " in stage["cmd"]
    # No path is declared by both pipelines (DVC refuses overlapping outputs).
    default = set(dvc_outputs(yaml.safe_load((REPO / "dvc.yaml").read_text())))
    assert not default & set(outputs)
    # The server files are outputs; the big caches and converted weights are not cached.
    assert any("recall_submission_" in p for p in outputs)
    uncached = {next(iter(o)) for o in stages["features"]["outs"] if isinstance(o, dict)}
    assert {p for p in dvc_outputs({"stages": {"f": stages["features"]}})} == uncached
    result = snakemake("-n", "--quiet", "rules", "--cores", "1", "--configfile", str(PAPER),
                       "--resources", "gpu=1", "--", *outputs)
    assert result.returncode == 0, result.stderr[-2000:]


def _params_of(stage: dict) -> dict[str, list[str]]:
    return {name: keys for entry in stage.get("params", []) for name, keys in entry.items()}


def test_paper_dvc_params_name_the_file_that_sets_each_key():
    stages = yaml.safe_load((REPO / "paper" / "dvc.yaml").read_text())["stages"]
    train = _params_of(stages["train_fashioniq_blip2_vitl_topk"])
    # k = 100 is set in paper.yaml; the rest of the method in config.yaml.
    assert "methods.topk" in train["config/paper.yaml"]
    assert "methods.topk" in train["config/config.yaml"]
    assert "backbones.blip2_vitl" in train["config/paper.yaml"]
    assert "backbones.blip2_vitl" not in train.get("config/config.yaml", [])


def test_dvc_status_notices_an_edit_of_the_paper_profile(tmp_path):
    """Commit the benchmarks stage of both pipelines in a scratch copy, then edit
    config/paper.yaml: only the paper stage that reads the edited key goes stale."""
    work = tmp_path / "work"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in listed.splitlines():
        if (REPO / rel).is_file() and (rel.startswith(("config/", "src/", "rules/",
                                                       "workflow_scripts/", "paper/", ".dvc"))
                                       or rel in ("dvc.yaml", "Snakefile", ".dvcignore")):
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_bytes((REPO / rel).read_bytes())
    env = {**tool_env(), "DVC_NO_ANALYTICS": "1"}

    def run(*cmd: str) -> str:
        result = subprocess.run(list(cmd), cwd=work, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout + result.stderr

    dvc = [sys.executable, "-m", "dvc"]
    run("git", "init", "-q")
    for pipeline, config in (("dvc.yaml", [DEFAULT]), ("paper/dvc.yaml", [DEFAULT, PAPER])):
        plan = Plan(load_config(*config))
        for path in (plan.dataset_stats(d) for d in ("fashioniq", "cirr", "circo", "hp_fashioniq")):
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text("{}\n")
        run(*dvc, "commit", "-f", "-q", f"{pipeline}:benchmarks")
    clean = "Data and pipelines are up to date."
    assert clean in run(*dvc, "status", "paper/dvc.yaml:benchmarks")
    paper = work / "config" / "paper.yaml"
    # A key the stage does not read leaves it clean ...
    paper.write_text(paper.read_text().replace("n_def: 6", "n_def: 5"))
    assert clean in run(*dvc, "status", "paper/dvc.yaml:benchmarks")
    # ... one it reads makes it stale, naming the file and the key.
    paper.write_text(paper.read_text().replace("missing_images: drop", "missing_images: fail"))
    out = run(*dvc, "status", "paper/dvc.yaml:benchmarks")
    assert "config/paper.yaml:" in out and re.search(r"modified:\s+data\b", out), out
    # The embedded study does not read config/paper.yaml.
    assert clean in run(*dvc, "status", "dvc.yaml:benchmarks")


def test_dvc_has_real_stages_and_every_out_is_a_snakemake_target(config):
    document = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = document["stages"]
    assert {"benchmarks", "pretrain", "features", "evaluate", "analysis", "tables",
            "figures"} <= set(stages)
    assert sum(name.startswith("train_") for name in stages) == len(training_runs(config))
    outputs = dvc_outputs(document)
    assert len(outputs) == len(set(outputs)), "a path is declared by two stages"
    for stage in stages.values():
        assert stage["cmd"].startswith("snakemake ")
    # A dry run that names every DVC output as a target fails on any non-target.
    result = snakemake("-n", "--quiet", "rules", "--cores", "1", "--resources", "gpu=1",
                       "--", *outputs)
    assert result.returncode == 0, result.stderr[-2000:]


# --- Snakemake ------------------------------------------------------------------------------


def test_snakemake_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Lints for" not in result.stdout + result.stderr


def test_paper_profile_dry_run_schedules_real_data_and_gpu_jobs():
    result = snakemake("-n", "--cores", "1", "--resources", "gpu=1", "--configfile",
                       str(PAPER), "--", "all")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for rule in ("fetch_annotations", "fetch_images", "verify_dataset", "fetch_weights",
                 "convert_blip2_weights", "extract_features_blip2", "train", "evaluate",
                 "write_cirr_submission", "write_circo_submission"):
        assert f"rule {rule}:" in out or f"\n{rule} " in out, rule
    assert "synthesize" not in out and "pretrain_qformer" not in out
    # Every GPU job asks for the GPU resource.
    blocks = out.split("\nrule ")
    for block in blocks:
        name = block.split(":", 1)[0]
        if name in ("train", "extract_features_blip2", "evaluate", "write_cirr_submission",
                    "write_circo_submission"):
            assert "gpu=1" in block, f"{name} does not request gpu=1"


def test_rule_functions_ask_the_plan(config):
    from types import SimpleNamespace

    from qure.workflow.rules import RuleFunctions

    plan = Plan(config)
    rules = RuleFunctions(plan)
    w = SimpleNamespace(dataset="fashioniq", backbone="blip2", method="qure",
                        benchmark="circo", table="table2_fashioniq")
    assert rules.train_inputs(w) == plan.train_inputs("fashioniq", "blip2")
    assert rules.evaluate_inputs(w) == plan.evaluate_inputs("circo", "blip2", "qure")
    assert rules.cirr_submission_inputs(w)["model"].endswith("runs/cirr/blip2/qure/model.pt")
    assert rules.dataset_root(w) == plan.root("fashioniq")
    assert rules.benchmark_root(w) == plan.root("circo")
    assert rules.single_vector_arg(SimpleNamespace(backbone="blip")) == "--single-vector"
    assert rules.single_vector_arg(w) == ""
    assert json.loads(rules.table_rows(w)) == plan.table_rows("table2_fashioniq")
    hp = SimpleNamespace(dataset="hp_fashioniq")
    paper = load_config(DEFAULT, PAPER)
    assert RuleFunctions(Plan(paper)).image_root_arg(hp) == "--image-root resources/data/fashioniq"
    assert rules.image_root_arg(hp) == ""  # synthetic: HP has its own images
    output = ["results/tables/t.csv", "results/tables/t.md"]
    assert rules.output_prefix(w, output) == "results/tables/t"
    assert rules.output_folder(w, output) == "results/tables"


@pytest.mark.parametrize(("source", "expected"), [
    ("urls", "--from-urls --image-data-links"),
    ("mirror", "--from-urls --images-from-mirror --image-data-links"),
    ("archive", "--from-archive '/my copy/fiq.zip' --image-data-links"),
    ("folder", "--from-folder '/my copy/fiq.zip' --image-data-links")])
def test_image_source_args_follow_the_config(source, expected):
    paper = copy.deepcopy(load_config(DEFAULT, PAPER))
    paper["data"]["real"]["fashioniq_images"] = {"source": source, "path": "/my copy/fiq.zip"}
    plan = Plan(paper)
    assert plan.image_source_args("fashioniq") == expected
    assert plan.image_source_args("circo") == ""
    paper["data"]["real"]["cirr_images"] = "/nlvr2"
    assert Plan(paper).image_source_args("cirr") == "--from-folder /nlvr2"

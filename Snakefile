# qure-repro: the QuRe study as one DAG. Wiring only: which runs exist, their settings
# and every path come from the tested package (qure.workflow); each rule calls a thin CLI
# in workflow_scripts/.
#
#   snakemake all --cores 1 --resources gpu=1                      # embedded synthetic default
#   snakemake all --cores 1 --resources gpu=1 --configfile config/smoke.yaml   # CI smoke
#   snakemake all --cores 1 --resources gpu=1 --configfile config/paper.yaml   # real data, GPU

import json
import os

from snakemake.utils import min_version

from qure.workflow import prefer_interpreter_on_path
from qure.workflow.config import BENCHMARKS, validate_config
from qure.workflow.plan import TABLE_NAMES, Plan
from qure.workflow.rules import RuleFunctions

min_version("9.0")


configfile: "config/config.yaml"


validate_config(config)
# Rules call `python`: the interpreter running Snakemake (its venv) unless --use-conda
# activates the rule's own environment in front of it.
prefer_interpreter_on_path()
PLAN = Plan(config)
# Each rule's input and params functions (named, tested; no lambdas in the rules).
RULES = RuleFunctions(PLAN)
LOGS = "logs"
BENCH = "logs/benchmarks"


# One set of wildcard values for every rule; a rule serving fewer datasets narrows it.
wildcard_constraints:
    dataset="|".join(BENCHMARKS),
    benchmark="|".join(BENCHMARKS),
    table="|".join(TABLE_NAMES),
    backbone="|".join(config["backbones"]),
    method="|".join(config["methods"]),


# Downloads run where the workflow is started (compute nodes may have no internet).
localrules:
    fetch_annotations,
    fetch_images,
    fetch_weights,


report: "report/workflow.rst"


include: "rules/data.smk"
include: "rules/encoder.smk"
include: "rules/features.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/analysis.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"


rule all:
    input:
        PLAN.all_targets(),
    default_target: True

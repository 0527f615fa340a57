"""The Snakemake rules' input and parameter functions, named, instead of lambdas.

Each method takes Snakemake's ``wildcards`` (and ``input`` / ``output`` where a value is
read off them) and asks the :class:`~qure.workflow.plan.Plan` for the answer, so a rule
reads ``unpack(RULES.train_inputs)`` or ``root=RULES.dataset_root``. Nothing here knows
a path the plan does not define.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from qure.workflow.plan import Plan


class RuleFunctions:
    """Input and params functions of the rules, bound to one study plan."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.config = plan.config

    # --- inputs -----------------------------------------------------------------------

    def dataset_ready(self, wildcards: Any) -> str:
        return self.plan.dataset_ready(wildcards.dataset)

    def subset_inputs(self, wildcards: Any) -> list[str]:
        return self.plan.subset_inputs(wildcards.dataset)

    def images_inputs(self, wildcards: Any) -> list[str]:
        return self.plan.images_inputs(wildcards.dataset)

    def verify_inputs(self, wildcards: Any) -> list[str]:
        return self.plan.verify_inputs(wildcards.dataset)

    def train_inputs(self, wildcards: Any) -> dict[str, str]:
        return self.plan.train_inputs(wildcards.dataset, wildcards.backbone)

    def evaluate_inputs(self, wildcards: Any) -> dict[str, str]:
        return self.plan.evaluate_inputs(wildcards.benchmark, wildcards.backbone,
                                         wildcards.method)

    def cirr_submission_inputs(self, wildcards: Any) -> dict[str, str]:
        return self.plan.evaluate_inputs("cirr", wildcards.backbone, wildcards.method)

    def circo_submission_inputs(self, wildcards: Any) -> dict[str, str]:
        return self.plan.evaluate_inputs("circo", wildcards.backbone, wildcards.method)

    def analysis_inputs(self, wildcards: Any) -> dict[str, str]:
        return self.plan.analysis_inputs(wildcards.dataset)

    def table_inputs(self, wildcards: Any) -> list[str]:
        return self.plan.table_inputs(wildcards.table)

    # --- params from wildcards ----------------------------------------------------------

    def dataset_root(self, wildcards: Any) -> str:
        """Where the stages read the dataset (its subset root under data.subset)."""
        return self.plan.root(wildcards.dataset)

    def benchmark_root(self, wildcards: Any) -> str:
        return self.plan.root(wildcards.benchmark)

    def full_root(self, wildcards: Any) -> str:
        return self.plan.full_root(wildcards.dataset)

    def images_root(self, wildcards: Any) -> str:
        return self.plan.images_root(wildcards.dataset)

    def subset_root(self, wildcards: Any) -> str:
        return self.plan.subset_root(wildcards.dataset)

    def subset_size_args(self, wildcards: Any) -> str:
        return self.plan.subset_args(wildcards.dataset)

    def verify_args(self, wildcards: Any) -> str:
        return self.plan.verify_args(wildcards.dataset)

    def image_source_args(self, wildcards: Any) -> str:
        return self.plan.image_source_args(wildcards.dataset)

    def pretraining_root(self, wildcards: Any) -> str:
        return self.plan.pretraining_root(wildcards.dataset)

    def image_root_arg(self, wildcards: Any) -> str:
        """``--image-root`` for HP-FashionIQ (its images live in the FashionIQ root)."""
        dataset = getattr(wildcards, "dataset", None) or wildcards.benchmark
        root = self.config["data"]["hp_image_root"]
        return f"--image-root {shlex.quote(root)}" if dataset == "hp_fashioniq" and root else ""

    def feature_split_args(self, wildcards: Any) -> str:
        return self.plan.feature_split_args(wildcards.dataset)

    def train_settings(self, wildcards: Any) -> str:
        return self.plan.train_json(wildcards.dataset, wildcards.method)

    def single_vector_arg(self, wildcards: Any) -> str:
        single = self.config["backbones"][wildcards.backbone]["single_vector"]
        return "--single-vector" if single else ""

    def table_rows(self, wildcards: Any) -> str:
        return json.dumps(self.plan.table_rows(wildcards.table))

    # --- params read off the job's files ------------------------------------------------

    @staticmethod
    def model_run(wildcards: Any, input: Any) -> str:
        """The training run folder of the model a job reads."""
        return os.path.dirname(input.model)

    @staticmethod
    def init_arg(wildcards: Any, input: Any) -> str:
        # Snakemake's InputFiles is a list: `in` would look at the paths, not the names.
        return f"--init {input.init}" if "init" in input.keys() else ""  # noqa: SIM118

    @staticmethod
    def encoder_arg(wildcards: Any, input: Any) -> str:
        return f"--encoder {input.encoder}" if "encoder" in input.keys() else ""  # noqa: SIM118

    @staticmethod
    def output_folder(wildcards: Any, output: Any) -> str:
        """The folder of the job's first output."""
        return os.path.dirname(output[0])

    @staticmethod
    def output_parent(wildcards: Any, output: Any) -> str:
        """The folder above the first output's (a generator writing one folder per
        dataset under it)."""
        return os.path.dirname(os.path.dirname(output[0]))

    @staticmethod
    def output_prefix(wildcards: Any, output: Any) -> str:
        """The first output without its extension (writers add .csv/.md/.tex, .png/.pdf)."""
        return os.path.splitext(output[0])[0]

"""Every file the workflow produces, as a function of the validated config.

``paths.resources`` holds what the study is given: downloaded datasets and weights, and
the synthetic benchmarks that stand in for them; ``paths.results`` everything it
computes (subset roots, frozen-feature caches, converted and pretrained models, runs,
evaluations, server files, analyses, tables, figures).

The Snakemake rules and ``dvc.yaml`` name their inputs and outputs through this module,
so the layout is defined once and tested (for example: every DVC output is a Snakemake
target).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qure.workflow.config import (
    ZERO_SHOT,
    Run,
    blip2_model_config,
    dataset_root,
    evaluations,
    pretrains,
    train_settings,
    training_runs,
)
from qure.workflow.provenance import code_files

TABLE_NAMES = ("table2_fashioniq", "table3_cirr", "table4_hp_fashioniq", "table5_circo",
               "table6_cirr_backbones", "table7_fashioniq_backbones",
               "table8_hp_circo_backbones")
FIGURE_NAMES = ("fig4_negative_strategies", "fig5_hard_negative_set_size",
                "fig6_hard_negative_examples", "fig7_score_steepness",
                "fig8_score_steepness_aggregate", "fig9_false_negatives_in_hard_sets")
TABLE_FORMATS = ("csv", "md", "tex")
FIGURE_FORMATS = ("png", "pdf")
RUN_FILES = ("metrics.json", "model.pt", "epochs.jsonl", "snapshots.pt")
#: The test splits scored by a server (= qure.stages.data.TEST_SPLIT, which imports
#: torch; the Snakefile's parse should not).
TEST_SERVER_SPLITS = {"cirr": "test1", "circo": "test"}
#: Real benchmarks whose images are all obtainable (NLVR2, COCO): verification stops the
#: study if any is missing, with the instructions. FashionIQ's dead URLs are counted
#: under data.missing_images instead (and with them HP-FashionIQ's comparisons).
COMPLETE_DATASETS = ("cirr", "circo")

#: Benchmarks each table's reproduced rows are evaluated on.
TABLE_BENCHMARKS = {
    "table2_fashioniq": ("fashioniq",), "table3_cirr": ("cirr",),
    "table4_hp_fashioniq": ("hp_fashioniq",), "table5_circo": ("circo",),
    "table6_cirr_backbones": ("cirr",), "table7_fashioniq_backbones": ("fashioniq",),
    "table8_hp_circo_backbones": ("hp_fashioniq", "circo"),
}
BACKBONE_TABLES = ("table6_cirr_backbones", "table7_fashioniq_backbones",
                   "table8_hp_circo_backbones")


def train_dataset_of(benchmark: str) -> str:
    """The dataset whose models are evaluated on ``benchmark``."""
    return ZERO_SHOT.get(benchmark, benchmark)


class Plan:
    """Paths and parameters of one configured study."""

    def __init__(self, config: Mapping[str, Any], root: str | Path = "."):
        self.config = config
        self.results = Path(config["paths"]["results"])
        self.resources = Path(config["paths"]["resources"])
        self.repository = Path(root)
        """The workflow's working directory (the repository root)."""

    def code(self, script: str) -> list[str]:
        """The code a rule running ``script`` depends on: the script and every project
        module it imports (qure.workflow.provenance), as rule inputs, so that editing a
        module reruns exactly the jobs whose results it can change."""
        return code_files(self.repository, script)

    # --- data ---------------------------------------------------------------------------

    def root(self, dataset: str) -> str:
        """The folder every stage reads ``dataset`` from: the subset root when
        ``data.subset`` is set (profile real), else the full root."""
        if self.subset() is not None:
            return self.subset_root(dataset)
        return self.full_root(dataset)

    def full_root(self, dataset: str) -> str:
        """Where the full benchmark is fetched (``data.roots``; synthetic: generated)."""
        return dataset_root(self.config, dataset)

    def subset(self) -> dict[str, int] | None:
        """``data.subset`` (``{queries, gallery}``) under profile real, else None."""
        if self.config["profile"] != "real":
            return None
        return self.config["data"]["subset"]

    def subset_root(self, dataset: str) -> str:
        return str(self.results / "subset" / dataset)

    def subset_manifest(self, dataset: str) -> str:
        return str(Path(self.subset_root(dataset)) / "subset_manifest.json")

    def subset_inputs(self, dataset: str) -> list[str]:
        """What the subset of ``dataset`` is cut from: its annotations; CIRCO also the COCO
        index (from the image archive); FashionIQ also hpfiq.json, whose comparisons' images
        stay in the val galleries."""
        inputs = [self.annotations_manifest(dataset)]
        if dataset == "circo":
            inputs.append(self.images_report("circo"))
        if dataset == "fashioniq":
            inputs.append(self.annotations_manifest("hp_fashioniq"))
        return inputs

    def subset_args(self, dataset: str) -> str:
        subset = self.subset()
        if subset is None:
            raise ValueError("data.subset is not set")
        args = f"--queries {subset['queries']} --gallery {subset['gallery']}"
        if dataset == "fashioniq":
            args += f" --hp-root {shlex.quote(self.full_root('hp_fashioniq'))}"
        return args

    def annotations_manifest(self, dataset: str) -> str:
        return str(self.results / "data" / f"{dataset}_annotations.json")

    def images_report(self, dataset: str) -> str:
        return str(self.results / "data" / f"{dataset}_images.json")

    def images_root(self, dataset: str) -> str:
        """Where fetch_images lays out ``dataset``'s images: the root stages read (a
        subset root's image folders link to the full root, and only the subset's images
        are fetched), except COCO unlabeled2017: one archive, extracted into the full root
        before the CIRCO subset is cut from its index."""
        return self.full_root(dataset) if dataset == "circo" else self.root(dataset)

    def images_inputs(self, dataset: str) -> list[str]:
        inputs = [self.annotations_manifest(dataset)]
        if self.subset() is not None and dataset != "circo":
            inputs.append(self.subset_manifest(dataset))
        return inputs

    def image_source_args(self, dataset: str) -> str:
        """Where fetch_images takes ``dataset``'s images from (data.real): FashionIQ from
        its URL lists, a mirror, an archive or a folder; CIRR from the NLVR2 folder you
        were sent; COCO from its archive (no option)."""
        real = self.config["data"]["real"]
        if dataset == "fashioniq":
            source, path = real["fashioniq_images"]["source"], real["fashioniq_images"]["path"]
            quoted = shlex.quote(str(path))
            return {"urls": "--from-urls", "mirror": "--from-urls --images-from-mirror",
                    "archive": f"--from-archive {quoted}",
                    "folder": f"--from-folder {quoted}"}[source] + " --image-data-links"
        if dataset == "cirr" and real["cirr_images"]:
            return f"--from-folder {shlex.quote(real['cirr_images'])}"
        return ""

    def download_args(self) -> str:
        """``--base-url``/``--substitutes`` of every download job (empty: upstream)."""
        real = self.config["data"]["real"]
        args = []
        if real["base_url"]:
            args.append(f"--base-url {shlex.quote(real['base_url'])}")
        if real["substitutes"]:
            args.append(f"--substitutes {shlex.quote(real['substitutes'])}")
        return " ".join(args)

    def verify_args(self, dataset: str) -> str:
        """The options of verify_dataset (profile real): ``--strict`` where nothing may be
        missing, substitutes and, for a subset root, the full root holding the
        catalogue's annotation files."""
        args = []
        if dataset in COMPLETE_DATASETS:
            args.append("--strict")
        if self.config["data"]["real"]["substitutes"]:
            args.append(f"--substitutes {shlex.quote(self.config['data']['real']['substitutes'])}")
        if self.subset() is not None:
            args.append(f"--annotations-root {shlex.quote(self.full_root(dataset))}")
        return " ".join(args)

    def synthetic_manifest(self, dataset: str) -> str:
        return str(self.resources / "synthetic" / dataset / "synthetic_manifest.json")

    def pretraining_manifest(self, dataset: str) -> str:
        return str(self.resources / "synthetic_pretrain" / dataset / "synthetic_manifest.json")

    def pretraining_root(self, dataset: str) -> str:
        return str(self.resources / "synthetic_pretrain" / dataset)

    def pretrained(self, backbone: str) -> str:
        return str(self.results / "models" / f"pretrained_{backbone}" / "model.pt")

    def encoder_benchmarks(self) -> dict[str, str]:
        """Where the mini encoder learns: the pretraining corpus if there is one."""
        if self.config["pretraining"]["enabled"]:
            return {d: self.pretraining_root(d) for d in ("fashioniq", "cirr")}
        return {d: self.root(d) for d in ("fashioniq", "cirr")}

    def dataset_stats(self, dataset: str) -> str:
        return str(self.results / "data" / f"{dataset}_stats.json")

    # --- models and features ------------------------------------------------------------

    def encoder(self) -> str:
        return str(self.results / "models" / "mini_encoder.pt")

    def blip2_config_arg(self) -> str:
        """``--config`` of the LAVIS conversion: the backbones' ``model_config`` as JSON."""
        return "--config " + shlex.quote(json.dumps(blip2_model_config(self.config),
                                                     sort_keys=True))

    def blip2_weights(self) -> str:
        """The BLIP-2 ViT-L backbone converted from LAVIS's checkpoints (paper profile;
        computed, so under results/, beside the downloaded files' weights_dir)."""
        return str(self.results / "models" / "blip2_vitl.pt")

    def family(self, backbone: str) -> str:
        return str(self.config["backbones"][backbone]["family"])

    def features(self, family: str, dataset: str) -> str:
        return str(self.results / "features" / family / f"{dataset}.npy")

    def features_index(self, family: str, dataset: str) -> str:
        return str(self.results / "features" / family / f"{dataset}.index.json")

    def run_dir(self, dataset: str, backbone: str, method: str) -> str:
        return str(self.results / "runs" / dataset / backbone / method)

    def run_file(self, dataset: str, backbone: str, method: str, name: str) -> str:
        return str(Path(self.run_dir(dataset, backbone, method)) / name)

    def model_args(self) -> str:
        """The options every model job takes: the device and the missing-image policy."""
        return (f"--device {self.config['device']} "
                f"--missing-images {self.config['data']['missing_images']}")

    def feature_args(self) -> str:
        """:meth:`model_args` plus the image-decoding workers of feature extraction."""
        return f"{self.model_args()} --workers {self.config['workers']}"

    def train_json(self, dataset: str, method: str) -> str:
        return json.dumps(train_settings(self.config, dataset, method), sort_keys=True)

    def runs(self) -> list[Run]:
        return training_runs(self.config)

    # --- evaluation and analyses --------------------------------------------------------

    def evaluation(self, benchmark: str, backbone: str, method: str) -> str:
        return str(self.results / "eval" / benchmark / backbone / f"{method}.json")

    def evaluation_files(self) -> list[str]:
        return [self.evaluation(b, r.backbone, r.method) for b, r in evaluations(self.config)]

    # --- test-server files (evaluation.test_servers) ------------------------------------

    def submission_dir(self, benchmark: str, backbone: str, method: str) -> str:
        return str(self.results / "submissions" / benchmark / backbone / method)

    def submission_report(self, benchmark: str, backbone: str, method: str) -> str:
        return str(Path(self.submission_dir(benchmark, backbone, method)) / "submission.json")

    def submission_server_files(self, benchmark: str, backbone: str,
                                method: str) -> dict[str, str]:
        """The files to upload (qure.stages.submit.submission_files names them so)."""
        folder = Path(self.submission_dir(benchmark, backbone, method))
        name = f"{backbone}_{method}"
        if benchmark == "cirr":
            return {"recall": str(folder / f"recall_submission_{name}.json"),
                    "recall_subset": str(folder / f"recall_subset_submission_{name}.json")}
        if benchmark == "circo":
            return {"submission": str(folder / f"circo_submission_{name}.json")}
        raise ValueError(f"no test server for {benchmark!r}")

    def submission_files(self) -> list[str]:
        """Per run evaluated on CIRR or CIRCO (the CIRR-trained models of Tables 3 and 5):
        its test-server files and their report."""
        if not self.config["evaluation"]["test_servers"]:
            return []
        files = []
        for benchmark, run in evaluations(self.config):
            if benchmark in TEST_SERVER_SPLITS:
                files.append(self.submission_report(benchmark, run.backbone, run.method))
                files += self.submission_server_files(benchmark, run.backbone,
                                                      run.method).values()
        return files

    def includes_test(self, dataset: str) -> bool:
        """Whether ``dataset``'s feature cache holds its test split (for the servers)."""
        return bool(self.config["evaluation"]["test_servers"]) and dataset in TEST_SERVER_SPLITS

    def feature_split_args(self, dataset: str) -> str:
        return "--include-test" if self.includes_test(dataset) else ""

    def audit(self, dataset: str) -> str:
        return str(self.results / "analysis" / f"hard_set_audit_{dataset}.json")

    def examples(self, dataset: str) -> str:
        return str(self.results / "analysis" / f"hard_negative_examples_{dataset}.json")

    def audit_methods_json(self) -> str:
        methods = self.config["methods"]
        return json.dumps({name: {"label": methods[name]["label"],
                                  "strategy": methods[name]["strategy"],
                                  "strategy_params": methods[name]["strategy_params"]}
                           for name in self.config["study"]["audit_methods"]})

    # --- tables and figures -------------------------------------------------------------

    def table_rows(self, table: str) -> list[dict[str, Any]]:
        """Reproduced rows of ``table``: (method, backbone) with their evaluation files."""
        study, methods = self.config["study"], self.config["methods"]
        backbones = self.config["backbones"]
        if table in BACKBONE_TABLES:
            pairs = [(b, m) for b in study["backbones"] for m in study["backbone_methods"]]
        else:
            pairs = [(study["main_backbone"], m) for m in study["main_methods"]]
        rows = []
        for backbone, method in pairs:
            if any(train_dataset_of(b) not in study["datasets"]
                   for b in TABLE_BENCHMARKS[table]):
                continue
            rows.append({"method": methods[method]["label"],
                         "backbone": backbones[backbone]["label"],
                         "paper_method": methods[method].get("paper_method"),
                         "paper_backbone": backbones[backbone]["paper_backbone"],
                         "evaluations": {b: self.evaluation(b, backbone, method)
                                         for b in TABLE_BENCHMARKS[table]}})
        return rows

    def table_inputs(self, table: str) -> list[str]:
        return [p for row in self.table_rows(table) for p in row["evaluations"].values()]

    def table_file(self, table: str, fmt: str) -> str:
        return str(self.results / "tables" / f"{table}.{fmt}")

    def table_files(self) -> list[str]:
        return [self.table_file(t, f) for t in TABLE_NAMES for f in TABLE_FORMATS]

    def figure_file(self, figure: str, fmt: str) -> str:
        return str(self.results / "figures" / f"{figure}.{fmt}")

    def figure_files(self) -> list[str]:
        return [self.figure_file(f, x) for f in FIGURE_NAMES for x in FIGURE_FORMATS]

    # --- rule inputs (the Snakemake rules call these through lambdas) -------------------

    def dataset_ready(self, dataset: str) -> str:
        """The file whose existence means the benchmark is on disk and checked."""
        if self.config["profile"] == "synthetic":
            return self.synthetic_manifest(dataset)
        return self.verified(dataset)

    def verified(self, dataset: str) -> str:
        return str(self.results / "data" / f"{dataset}_verified.json")

    def verify_inputs(self, dataset: str) -> list[str]:
        images = "fashioniq" if dataset == "hp_fashioniq" else dataset
        inputs = [self.annotations_manifest(dataset), self.images_report(images)]
        if self.subset() is not None:
            inputs.append(self.subset_manifest(dataset))
        return inputs

    def encoder_inputs(self) -> list[str]:
        if self.config["pretraining"]["enabled"]:
            return [self.pretraining_manifest(d) for d in ("fashioniq", "cirr")]
        return [self.dataset_stats(d) for d in ("fashioniq", "cirr")]

    def train_inputs(self, dataset: str, backbone: str) -> dict[str, str]:
        family = self.family(backbone)
        inputs = {"npy": self.features(family, dataset),
                  "index": self.features_index(family, dataset)}
        if family == "blip2_vitl":
            inputs["init"] = self.blip2_weights()
        else:
            inputs["encoder"] = self.encoder()
            if pretrains(self.config, backbone):
                inputs["init"] = self.pretrained(backbone)
        return inputs

    def frozen_source(self, backbone: str) -> str:
        """The file a run's ``model.pt`` takes its frozen weights from (it does not hold
        them; qure.models.save_backbone): the init weights, else the mini encoder."""
        inputs = self.train_inputs("fashioniq", backbone)
        return inputs.get("init") or inputs["encoder"]

    def evaluate_inputs(self, benchmark: str, backbone: str, method: str) -> dict[str, str]:
        family = self.family(backbone)
        return {"model": self.run_file(train_dataset_of(benchmark), backbone, method,
                                       "model.pt"),
                "frozen": self.frozen_source(backbone),
                "npy": self.features(family, benchmark),
                "index": self.features_index(family, benchmark)}

    def analysis_inputs(self, dataset: str) -> dict[str, str]:
        study = self.config["study"]
        family = self.family(study["main_backbone"])
        return {"model": self.run_file(dataset, study["main_backbone"], study["audit_basis"],
                                       "model.pt"),
                "frozen": self.frozen_source(study["main_backbone"]),
                "npy": self.features(family, dataset),
                "index": self.features_index(family, dataset)}

    def history(self, dataset: str, method: str, backbone: str | None = None) -> str:
        backbone = backbone or self.config["study"]["main_backbone"]
        return self.run_file(dataset, backbone, method, "epochs.jsonl")

    def figure_histories(self, figure: str) -> list[tuple[str, str]]:
        """(label, epochs.jsonl) pairs a figure plots."""
        study, methods = self.config["study"], self.config["methods"]
        dataset = study["strategy_dataset"]
        if figure == "fig4_negative_strategies":
            return [(methods[m]["label"], self.history(dataset, m))
                    for m in study["strategy_methods"]]
        if figure == "fig5_hard_negative_set_size":
            return [(d, self.history(d, study["qure_method"])) for d in study["datasets"]]
        if figure == "fig9_false_negatives_in_hard_sets":
            # Training-time rates of the audited strategies that were trained anyway.
            return [(m, self.history(dataset, m)) for m in study["audit_methods"]
                    if methods[m]["strategy"] != "all" and m in study["strategy_methods"]]
        raise KeyError(f"figure {figure!r} plots no run histories")

    def history_args(self, figure: str) -> str:
        return " ".join(f"--history {shlex.quote(label + '=' + path)}"
                        for label, path in self.figure_histories(figure))

    def snapshots(self) -> str:
        study = self.config["study"]
        return self.run_file(study["strategy_dataset"], study["main_backbone"],
                             study["qure_method"], "snapshots.pt")

    def headline_metric(self) -> str:
        return {"fashioniq": "average_recall", "cirr": "avg"}[self.config["study"]
                                                                ["strategy_dataset"]]

    def all_targets(self) -> list[str]:
        study = self.config["study"]
        files = [self.dataset_stats(d) for d in ("fashioniq", "cirr", "circo", "hp_fashioniq")]
        files += self.evaluation_files() + self.submission_files()
        files += [self.audit(study["strategy_dataset"]), self.examples(study["strategy_dataset"])]
        return list(dict.fromkeys(files + self.table_files() + self.figure_files()))

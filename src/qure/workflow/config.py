"""The workflow configuration: strict schema validation, cross-key checks, and the
derived values the Snakemake rules need (dataset folders, run lists, train settings).

The Snakefile only wires: every decision about *which* runs exist and *what* settings
they get is made here, where it is tested.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from qure.errors import ConfigError

#: Training datasets and the benchmarks evaluated zero-shot with their models.
TRAIN_DATASETS = ("fashioniq", "cirr")
ZERO_SHOT = {"circo": "cirr", "hp_fashioniq": "fashioniq"}
BENCHMARKS = ("fashioniq", "cirr", "circo", "hp_fashioniq")


@functools.cache
def config_schema() -> dict[str, Any]:
    text = resources.files("qure.workflow").joinpath("config.schema.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def merge_configs(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overlay`` over ``base`` the way Snakemake merges ``--configfile``s."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Read and merge config files (later ones override), then validate."""
    merged: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        merged = merge_configs(merged, data)
    validate_config(merged)
    return merged


def validate_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first bad key (schema, then cross-key rules)."""
    validator = jsonschema.Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config key {_key_path(e)}: {e.message}" for e in errors[:10]]
        more = f"\n(and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise ConfigError("invalid workflow config:\n" + "\n".join(lines) + more)
    _check_references(config)


def _check_references(config: Mapping[str, Any]) -> None:
    from qure.training.trainer import TrainConfig

    study, backbones, methods = config["study"], config["backbones"], config["methods"]
    if study["main_backbone"] not in backbones:
        raise ConfigError(f"config key study.main_backbone: {study['main_backbone']!r} is "
                          f"not defined under backbones ({', '.join(backbones)})")
    if study["main_backbone"] not in study["backbones"]:
        raise ConfigError("config key study.backbones: must include study.main_backbone "
                          f"{study['main_backbone']!r}")
    for name in study["backbones"]:
        if name not in backbones:
            raise ConfigError(f"config key study.backbones: {name!r} is not defined under "
                              "backbones")
    for key in ("main_methods", "backbone_methods", "strategy_methods", "audit_methods"):
        for name in study[key]:
            if name not in methods:
                raise ConfigError(f"config key study.{key}: method {name!r} is not defined "
                                  f"under methods ({', '.join(methods)})")
    for key in ("qure_method", "audit_basis"):
        if study[key] not in methods:
            raise ConfigError(f"config key study.{key}: method {study[key]!r} is not defined "
                              "under methods")
    qure = methods[study["qure_method"]]
    if qure["method"] != "qure" or qure["strategy"] != "qure":
        raise ConfigError("config key study.qure_method: must name a method with method qure "
                          "and strategy qure")
    if study["qure_method"] not in study["main_methods"]:
        raise ConfigError("config key study.main_methods: must include study.qure_method")
    for name in study["audit_methods"]:
        if methods[name]["method"] != "qure":
            raise ConfigError(f"config key study.audit_methods: {name!r} is a "
                              f"{methods[name]['method']} method and defines no hard sets")
    if study["strategy_dataset"] not in study["datasets"]:
        raise ConfigError("config key study.strategy_dataset: "
                          f"{study['strategy_dataset']!r} is not in study.datasets")
    for name, spec in backbones.items():
        if spec["family"] == "mini_blip2" and ("weights" in spec or "vocab" in spec
                                               or "model_config" in spec):
            raise ConfigError(f"config key backbones.{name}: weights/vocab/model_config apply "
                              "only to family blip2_vitl")
    blip2_model_config(config)
    _check_data(config)
    pre = config["pretraining"]
    if pre["enabled"] and pre["corpus_seed"] == config["data"]["synthetic"]["seed"]:
        raise ConfigError("config key pretraining.corpus_seed: must differ from "
                          "data.synthetic.seed (the pretraining corpus must not be the "
                          "study's data)")
    try:
        TrainConfig.from_dict({**pre["settings"], "method": "contrastive"})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key pretraining.settings: {err}") from err
    from qure.mining import validate_strategy_params

    for name, spec in methods.items():
        try:
            validate_strategy_params(spec["strategy"], spec["strategy_params"])
        except ValueError as err:
            raise ConfigError(f"config key methods.{name}.strategy_params: {err}") from err
    # Every run's settings must make a valid TrainConfig (errors name the key).
    for dataset in study["datasets"]:
        for method in methods:
            try:
                TrainConfig.from_dict(train_settings(config, dataset, method))
            except (TypeError, ValueError) as err:
                raise ConfigError(f"config keys training.{dataset} / methods.{method}: "
                                  f"{err}") from err


def _check_data(config: Mapping[str, Any]) -> None:
    data = config["data"]
    real = data["real"]
    if data["subset"] is not None and config["profile"] != "real":
        raise ConfigError("config key data.subset: applies to profile real only (the "
                          "synthetic benchmarks have their own sizes, data.synthetic.scale)")
    if real["substitutes"] is not None and not real["base_url"]:
        raise ConfigError("config key data.real.substitutes: describes a mirror's files; "
                          "set data.real.base_url to the mirror")
    if real["fashioniq_images"]["source"] == "mirror" and not real["base_url"]:
        raise ConfigError("config key data.real.fashioniq_images.source: 'mirror' fetches "
                          "the images from data.real.base_url, which is null")


def blip2_model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Blip2VitLConfig overrides of the study's blip2_vitl backbones (one converted
    weights file serves them all, so they must agree); ``{}`` = the paper model."""
    from qure.models.blip2_vitl import Blip2VitLConfig

    chosen: tuple[str, dict[str, Any]] | None = None
    for name, spec in config["backbones"].items():
        if spec["family"] != "blip2_vitl":
            continue
        overrides = dict(spec.get("model_config") or {})
        try:
            Blip2VitLConfig.from_dict(overrides)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key backbones.{name}.model_config: {err}") from err
        if name not in config["study"]["backbones"]:
            continue
        if chosen is not None and chosen[1] != overrides:
            raise ConfigError(f"config key backbones.{name}.model_config: differs from "
                              f"backbones.{chosen[0]}.model_config; the blip2_vitl backbones "
                              "of a study share one converted weights file")
        chosen = chosen or (name, overrides)
    return chosen[1] if chosen else {}


# --- derived values -------------------------------------------------------------------------


def dataset_root(config: Mapping[str, Any], dataset: str) -> str:
    """The folder of benchmark ``dataset`` under this profile."""
    if dataset not in BENCHMARKS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {BENCHMARKS}")
    if config["profile"] == "synthetic":
        return str(Path(config["paths"]["resources"]) / "synthetic" / dataset)
    return str(config["data"]["roots"][dataset])


def train_settings(config: Mapping[str, Any], dataset: str, method: str) -> dict[str, Any]:
    """The full :class:`~qure.training.TrainConfig` mapping of one run."""
    spec = config["methods"][method]
    settings = {**config["training"]["defaults"], **config["training"][dataset]}
    settings.update(method=spec["method"], strategy=spec["strategy"],
                    strategy_params=dict(spec["strategy_params"]), seed=config["seed"])
    return settings


@dataclass(frozen=True)
class Run:
    """One training run: a model of ``method`` on ``backbone`` trained on ``dataset``."""

    dataset: str
    backbone: str
    method: str

    @property
    def folder(self) -> str:
        return f"{self.dataset}/{self.backbone}/{self.method}"


def training_runs(config: Mapping[str, Any]) -> list[Run]:
    """Every run the tables and figures need, each once, in a stable order."""
    study = config["study"]
    wanted: list[Run] = []
    for dataset in study["datasets"]:
        for method in study["main_methods"]:
            wanted.append(Run(dataset, study["main_backbone"], method))
        for backbone in study["backbones"]:
            for method in study["backbone_methods"]:
                wanted.append(Run(dataset, backbone, method))
    for method in (*study["strategy_methods"], study["audit_basis"]):
        wanted.append(Run(study["strategy_dataset"], study["main_backbone"], method))
    return list(dict.fromkeys(wanted))


def evaluations(config: Mapping[str, Any]) -> Iterator[tuple[str, Run]]:
    """(benchmark, run) pairs to evaluate: every run on its own validation split, and the
    zero-shot benchmarks with the tabled models of the dataset they borrow."""
    runs = training_runs(config)
    for run in runs:
        yield run.dataset, run
    study = config["study"]
    tabled = {(study["main_backbone"], m) for m in study["main_methods"]}
    tabled |= {(b, m) for b in study["backbones"] for m in study["backbone_methods"]}
    for benchmark, source in ZERO_SHOT.items():
        for run in runs:
            if run.dataset == source and (run.backbone, run.method) in tabled:
                yield benchmark, run


def feature_family(config: Mapping[str, Any], backbone: str) -> str:
    """Backbones of one family share their frozen-feature caches."""
    return str(config["backbones"][backbone]["family"])


def pretrains(config: Mapping[str, Any], backbone: str) -> bool:
    """Whether ``backbone`` starts from a pretrained mini Q-Former."""
    return (config["pretraining"]["enabled"]
            and config["backbones"][backbone]["family"] == "mini_blip2")


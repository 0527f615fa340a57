"""The rehearsal's checks of what `snakemake all` of the paper profile wrote.

Each check takes the :class:`Outputs` (where the rehearsal's copy of the repository
writes) and the fake upstream's manifest (``upstream.json``: what was left out on
purpose, what was substituted) and returns ``{check, status, detail}``; status ``pass``,
``fail`` or ``pending`` (its input comes from a stage not run yet).
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qure.io import read_json

DATASETS = ("fashioniq", "cirr", "circo", "hp_fashioniq")


@dataclass(frozen=True)
class Outputs:
    """Where the rehearsal's copy of the repository writes (``paths`` of the config)."""

    repo: Path
    results: Path
    resources: Path
    submissions: tuple[str, ...] = ()
    """The test-server files (and reports) the plan names, relative to ``repo``."""



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
    subset = out.results / "subset"
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

"""Pretrain the mini Q-Former (BLIP-2 stage-1 analogue) by in-batch contrastive learning
on a separate synthetic pretraining corpus; every study run then starts from it.

Example: python workflow_scripts/pretrain_qformer.py
    --benchmark fashioniq=resources/synthetic_pretrain/fashioniq
    --features fashioniq=results/features/mini_blip2/pretrain_fashioniq.npy
    --encoder results/models/mini_encoder.pt --out results/models/qformer_blip2
    --train-json '{"epochs": 10, "lr": 0.001}'
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from qure.cli import parse_pairs, reports_errors, setup_logging
from qure.device import add_device_argument
from qure.errors import ConfigError
from qure.stages.data import TRAIN_SPLIT
from qure.stages.pretrain_qformer import pretrain_qformer_step
from qure.training.trainer import TrainConfig


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", action="append", required=True, metavar="NAME=ROOT")
    parser.add_argument("--features", action="append", required=True, metavar="NAME=NPY")
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--out", required=True, help="output folder (model.pt, metrics.json)")
    parser.add_argument("--train-json", default="{}", help="TrainConfig settings as JSON")
    parser.add_argument("--single-vector", action="store_true")
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    benchmarks = parse_pairs(args.benchmark, "--benchmark", list(TRAIN_SPLIT))
    features = parse_pairs(args.features, "--features", list(TRAIN_SPLIT))
    if set(benchmarks) != set(features):
        raise ConfigError("--benchmark and --features must name the same datasets")
    try:
        settings = json.loads(args.train_json)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--train-json: not valid JSON: {err}") from err
    settings.setdefault("method", "contrastive")
    summary = pretrain_qformer_step(benchmarks, features, args.encoder, args.out,
                                    TrainConfig.from_dict(settings),
                                    single_vector=args.single_vector,
                                    device=args.device, progress=not args.no_progress)
    print(json.dumps({"out": args.out, "final": summary["final"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train one run: QuRe or the contrastive baseline, one hard-negative strategy, over
cached frozen features (mini BLIP-2 or BLIP-2 ViT-L). Resumes from OUT/checkpoint.pt.

Example: python workflow_scripts/train.py --dataset fashioniq \
    --root resources/synthetic/fashioniq --features results/features/mini_blip2/fashioniq.npy \
    --encoder results/models/mini_encoder.pt --set epochs=10 --out /tmp/run
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from qure.cli import add_missing_images_argument, read_mapping, reports_errors, setup_logging
from qure.device import add_device_argument
from qure.errors import ConfigError
from qure.stages.data import TRAIN_SPLIT
from qure.stages.train import train_step
from qure.training.trainer import TrainConfig


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=list(TRAIN_SPLIT))
    parser.add_argument("--root", required=True)
    parser.add_argument("--features", required=True, help="feature cache (.npy)")
    parser.add_argument("--encoder", default=None,
                        help="mini frozen encoder checkpoint (.pt); not needed with --init "
                             "of a full backbone such as BLIP-2 ViT-L")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--train-config", default=None,
                        help="YAML/JSON mapping of training settings (TrainConfig keys)")
    parser.add_argument("--train-json", default=None,
                        help="the training settings as one JSON object (as the workflow passes)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override one training setting, e.g. --set epochs=20")
    parser.add_argument("--single-vector", action="store_true",
                        help="BLIP-style single image vector instead of 8 query tokens")
    parser.add_argument("--init", default=None,
                        help="pretrained backbone (model.pt) to start from instead of random")
    add_missing_images_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    values = read_mapping(args.train_config) if args.train_config else {}
    if args.train_json:
        try:
            values.update(json.loads(args.train_json))
        except json.JSONDecodeError as err:
            raise ConfigError(f"--train-json: not valid JSON: {err}") from err
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    config = TrainConfig.from_dict(values)
    summary = train_step(args.dataset, args.root, args.features, args.encoder, args.out,
                         config, single_vector=args.single_vector, init=args.init,
                         missing=args.missing_images, device=args.device,
                         progress=not args.no_progress)
    headline = summary["headline_metric"]
    print(json.dumps({"out": args.out, headline: summary["final"][headline],
                      "untrained": summary["untrained"][headline],
                      "best_epoch": summary["best_epoch"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

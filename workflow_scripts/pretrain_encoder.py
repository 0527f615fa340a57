"""Pretrain the mini frozen image encoder on synthetic benchmarks' training images.

Example: python workflow_scripts/pretrain_encoder.py --benchmark fashioniq=DIR/fashioniq
    --benchmark cirr=DIR/cirr --out results/encoder/mini.pt
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from qure.cli import parse_pairs, reports_errors, setup_logging
from qure.stages.data import TRAIN_SPLIT
from qure.stages.pretrain import pretrain_encoder_step


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", action="append", required=True, metavar="NAME=ROOT",
                        help=f"a synthetic benchmark to learn from; NAME in {list(TRAIN_SPLIT)}")
    parser.add_argument("--out", required=True, help="encoder checkpoint to write (.pt)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    benchmarks = parse_pairs(args.benchmark, "--benchmark", allowed=list(TRAIN_SPLIT))
    history = pretrain_encoder_step(benchmarks, args.out, image_size=args.image_size,
                                    epochs=args.epochs, batch_size=args.batch_size,
                                    lr=args.lr, seed=args.seed)
    print(json.dumps({"out": args.out, "loss": history["loss"],
                      "accuracy": history["accuracy"], "chance": history["chance"],
                      "seconds": history["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

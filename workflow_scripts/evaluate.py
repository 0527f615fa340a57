"""Evaluate a training run's final model on a benchmark's validation split (CIRCO and
HP-FashionIQ zero-shot) and write the metrics JSON.

Example: python workflow_scripts/evaluate.py --benchmark circo --root DIR/circo
    --run results/runs/cirr/blip2/qure --features results/features/mini_blip2/circo.npy
    --out results/eval/circo/blip2/qure.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from qure.cli import add_missing_images_argument, reports_errors, setup_logging
from qure.device import add_device_argument
from qure.stages.evaluate import evaluate_step
from qure.workflow.config import BENCHMARKS


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    parser.add_argument("--root", required=True, help="benchmark folder")
    parser.add_argument("--run", required=True, help="training run folder (model.pt)")
    parser.add_argument("--features", required=True, help="frozen-feature cache (.npy)")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--image-root", default=None,
                        help="HP-FashionIQ images (image_data/<cat>/<ASIN>.jpg)")
    parser.add_argument("--batch-size", type=int, default=256)
    add_missing_images_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate_step(args.benchmark, args.root, args.run, args.features, args.out,
                           batch_size=args.batch_size, hp_image_root=args.image_root,
                           missing=args.missing_images, device=args.device)
    print(json.dumps({"out": args.out, **{k: round(v, 4) for k, v in result["metrics"].items()
                                         if isinstance(v, float)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

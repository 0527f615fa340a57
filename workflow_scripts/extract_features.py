"""Cache the frozen features of every image a benchmark's stages read (fp16, memory-mapped).

One path for both backbone families: the mini frozen encoder (``--encoder``) or a saved
backbone such as the converted BLIP-2 ViT-L (``--backbone``, QuRe's TargetPad 224).

Example: python workflow_scripts/extract_features.py --dataset cirr --root DIR/cirr \
    --encoder results/models/mini_encoder.pt --out results/features/mini_blip2/cirr.npy
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from qure.cli import add_missing_images_argument, reports_errors, setup_logging
from qure.data import CIR_DATASETS
from qure.device import add_device_argument
from qure.stages.features import features_step


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=[*CIR_DATASETS, "hp_fashioniq"])
    parser.add_argument("--root", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--encoder", help="mini frozen encoder checkpoint (.pt)")
    source.add_argument("--backbone", help="saved backbone (.pt), e.g. the converted BLIP-2 "
                        "ViT-L; images get QuRe's TargetPad 224 transform")
    parser.add_argument("--out", required=True, help="cache file to write (.npy)")
    parser.add_argument("--image-root", default=None,
                        help="hp_fashioniq only: folder with image_data/<cat>/<ASIN>.jpg")
    parser.add_argument("--include-test", action="store_true",
                        help="also the test-server split (CIRR test1, CIRCO test)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0,
                        help="image-decoding worker threads (0: decode in the main thread)")
    add_missing_images_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    _, info = features_step(args.dataset, args.root, args.out, encoder=args.encoder,
                            backbone=args.backbone, image_root=args.image_root,
                            missing=args.missing_images, include_test=args.include_test,
                            device=args.device, workers=args.workers,
                            batch_size=args.batch_size, progress=not args.no_progress)
    print(json.dumps({"out": args.out, **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

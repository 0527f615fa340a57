"""Cache the frozen encoder's features of every image of a benchmark (fp16, memory-mapped).

Example: python workflow_scripts/extract_features.py --dataset cirr --root DIR/cirr
    --encoder results/encoder/mini.pt --out results/features/cirr.npy
"""

from __future__ import annotations

import argparse
import sys

import torch

from qure.cli import reports_errors, setup_logging
from qure.data import CIR_DATASETS
from qure.experiment import backbone_features_step, features_step
from qure.workflow.steps import hp_features_step


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
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    if args.backbone:
        cache = backbone_features_step(args.dataset, args.root, args.backbone, args.out,
                                       batch_size=args.batch_size, image_root=args.image_root,
                                       progress=progress)
    elif args.dataset == "hp_fashioniq":
        cache = hp_features_step(args.root, args.image_root, args.encoder, args.out,
                                 batch_size=args.batch_size, progress=progress)
    else:
        cache = features_step(args.dataset, args.root, args.encoder, args.out,
                              batch_size=args.batch_size, progress=progress)
    print(f"{args.out}: {len(cache)} images, features {list(cache.shape[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

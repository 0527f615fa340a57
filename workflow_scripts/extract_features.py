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
from qure.experiment import features_step


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=list(CIR_DATASETS))
    parser.add_argument("--root", required=True)
    parser.add_argument("--encoder", required=True, help="frozen encoder checkpoint (.pt)")
    parser.add_argument("--out", required=True, help="cache file to write (.npy)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = features_step(args.dataset, args.root, args.encoder, args.out,
                          batch_size=args.batch_size)
    print(f"{args.out}: {len(cache)} images, features {list(cache.shape[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

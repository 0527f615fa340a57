"""Print one JSON object of counts per split (and category) for a benchmark on disk.

Example: python workflow_scripts/dataset_stats.py --dataset cirr --root resources/cirr_dataset
"""

from __future__ import annotations

import argparse
import json
import sys

from qure.data import DATASET_NAMES
from qure.data.stats import dataset_stats, has_problems
from qure.errors import QureError
from qure.io import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    parser.add_argument("--root", required=True,
                        help="dataset root (for CIRR the cirr_dataset folder)")
    parser.add_argument("--image-root", default=None,
                        help="hp_fashioniq only: folder holding image_data/<cat>/<ASIN>.jpg "
                             "(default: --root)")
    parser.add_argument("--circo-template", default=None,
                        help="circo only: query template with a {caption} slot")
    parser.add_argument("--out", default=None, help="also write the report to this JSON file")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if any file failed to load or any image is missing")
    args = parser.parse_args(argv)

    options = {}
    if args.image_root is not None:
        if args.dataset != "hp_fashioniq":
            parser.error("--image-root applies to hp_fashioniq only")
        options["image_root"] = args.image_root
    if args.circo_template is not None:
        if args.dataset != "circo":
            parser.error("--circo-template applies to circo only")
        options["template"] = args.circo_template
    try:
        stats = dataset_stats(args.dataset, args.root, **options)
    except (QureError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        atomic_write_json(args.out, stats)
    print(json.dumps(stats, indent=2))
    return 1 if args.strict and has_problems(stats) else 0


if __name__ == "__main__":
    sys.exit(main())

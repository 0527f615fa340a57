"""Cut a small subset of a real benchmark into a dataset root in the real on-disk format.

Per split (and category) the first --queries queries in file order; each gallery keeps
the images those queries name plus the first --gallery other images (see
qure.data.subset). Image folders are linked to the full root. Writes
<out>/subset_manifest.json (N, M, the counts per split, the files and their sources).

Example: python workflow_scripts/make_subset.py --dataset cirr \
    --root resources/data/cirr_dataset --out results/subset/cirr --queries 50 --gallery 200
"""

from __future__ import annotations

import argparse
import logging
import sys

from qure.cli import reports_errors, setup_logging
from qure.data.subset import write_subset

log = logging.getLogger("make_subset")
DATASETS = ("fashioniq", "cirr", "circo", "hp_fashioniq")


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, help="the full dataset root (read only)")
    parser.add_argument("--out", required=True, help="the subset root to write")
    parser.add_argument("--queries", type=int, required=True,
                        help="queries kept per split and category (HP-FashionIQ: "
                             "comparisons per category)")
    parser.add_argument("--gallery", type=int, required=True,
                        help="gallery images kept per gallery file besides those the kept "
                             "queries name")
    parser.add_argument("--hp-root", default=None,
                        help="fashioniq only: folder of hpfiq.json; the images of its first "
                             "--queries comparisons per category stay in the val galleries")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.hp_root is not None and args.dataset != "fashioniq":
        parser.error("--hp-root applies to fashioniq only")
    manifest = write_subset(args.dataset, args.root, args.out, args.queries, args.gallery,
                            hp_root=args.hp_root)
    for key, entry in manifest["splits"].items():
        log.info("%s %s: %d of %d queries", args.dataset, key, entry["queries"],
                 entry["queries_total"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

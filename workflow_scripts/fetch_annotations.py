"""Download and verify one dataset's annotation files; write a JSON manifest of them.

Example: python workflow_scripts/fetch_annotations.py --dataset cirr \
    --root resources/cirr_dataset --manifest resources/cirr_dataset/annotations.manifest.json
"""

from __future__ import annotations

import argparse
import logging
import sys

from qure.cli import reports_errors, setup_logging
from qure.download.cli import add_network_args, catalogue, network_options, write_json
from qure.download.fetch import fetch_files
from qure.download.sources import GROUPS

log = logging.getLogger("fetch_annotations")
DATASETS = ("fashioniq", "cirr", "circo", "hp_fashioniq")


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True,
                        help="dataset root (FashionIQ: fashioniq/, CIRR: the cirr_dataset "
                             "folder, CIRCO: circo/, HP-FashionIQ: hp_fashioniq/)")
    parser.add_argument("--manifest", required=True,
                        help="output JSON: every file fetched with its size and sha256")
    parser.add_argument("--group", action="append", choices=GROUPS, default=None,
                        help="catalogue groups to fetch (repeatable; default: annotations; "
                             "'image_urls' adds FashionIQ's asin2url lists)")
    parser.add_argument("--only", action="append", default=None, metavar="FILE",
                        help="fetch only this file (path under the root or file name; "
                             "repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="FILE",
                        help="skip this file (path under the root or file name; repeatable)")
    add_network_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    sources = catalogue(args, args.dataset)
    groups = tuple(args.group or ("annotations",))
    files = sources.select(groups, args.only)
    files = [f for f in files if f.path not in args.exclude
             and f.path.rsplit("/", 1)[-1] not in args.exclude]
    if not files:
        parser.error(f"no {args.dataset} files selected (groups {', '.join(groups)})")
    rows = fetch_files(files, args.root, **network_options(args))
    write_json(args.manifest, {
        "dataset": args.dataset, "root": str(args.root), "groups": list(groups),
        "base_url": args.base_url, "sources": args.sources, "substitutes": args.substitutes,
        "files": rows,
    })
    log.info("%d %s file(s) in place under %s", len(rows), args.dataset, args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())

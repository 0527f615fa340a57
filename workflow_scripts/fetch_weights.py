"""Download the BLIP-2 ViT-L Q-Former and CLIP ViT-L weights LAVIS uses into a folder.

Example: python workflow_scripts/fetch_weights.py --out-dir resources/weights \
    --manifest resources/weights/manifest.json
"""

from __future__ import annotations

import argparse
import logging
import sys

from qure.cli import reports_errors, setup_logging
from qure.download.cli import add_network_args, catalogue, network_options, write_json
from qure.download.fetch import fetch_files

log = logging.getLogger("fetch_weights")


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, help="folder the .pth files land in")
    parser.add_argument("--manifest", required=True,
                        help="output JSON: each file with its size and sha256")
    parser.add_argument("--only", action="append", default=None, metavar="FILE",
                        help="fetch only this file (blip2_pretrained_vitL.pth, clip_vit_L.pth "
                             "or bert-base-uncased-vocab.txt; repeatable)")
    add_network_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    files = catalogue(args, "weights").select(("weights",), args.only)
    rows = fetch_files(files, args.out_dir, **network_options(args))
    write_json(args.manifest, {"dataset": "weights", "root": str(args.out_dir),
                               "base_url": args.base_url, "sources": args.sources,
                               "substitutes": args.substitutes, "files": rows})
    log.info("%d weight file(s) in place under %s", len(rows), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

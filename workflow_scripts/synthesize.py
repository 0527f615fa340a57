"""Generate the synthetic mini-benchmarks (FashionIQ, CIRR, CIRCO, HP-FashionIQ formats).

    python workflow_scripts/synthesize.py --out data/synthetic --seed 0 --scale default

Writes ``<out>/{fashioniq,cirr,circo,hp_fashioniq}/`` in the datasets' real layouts, each
with an ``oracle.json`` and a ``synthetic_manifest.json``; see :mod:`qure.synthetic`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from qure.synthetic import BENCHMARKS, SCALES, synthesize


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, required=True, help="random seed")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default",
                        help="'smoke' for CI runs, 'default' for the embedded default")
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS),
                        help="which benchmarks to write (default: all four)")
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes (default: CPU count, at most 8)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        report = synthesize(args.out, seed=args.seed, scale=args.scale,
                            benchmarks=args.benchmarks, workers=args.workers)
    except (FileExistsError, ValueError) as err:
        logging.getLogger("synthesize").error("%s", err)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rehearse the paper profile end to end, offline, on the CPU, in a few minutes.

    python tools/paper_rehearsal.py --out /tmp/qure-rehearsal

Builds a fake upstream in OUT/upstream (the real annotation files from ../shared/data
plus small synthetic images, URL lists, COCO archives and LAVIS-format weights at
reduced width), serves it on a loopback HTTP mirror, copies the repository to OUT/repo
and runs `snakemake all` of config/paper.yaml there with the overlay OUT/rehearsal.yaml
(a small data.subset, the reduced model, the mirror as data.real.base_url). Then checks
the outputs and prints the wall time; OUT/rehearsal_report.json has the details (the
failed rules with their log tails, each check's status). Exit status 0 when Snakemake
succeeded and no check failed. Logic: qure.rehearsal.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from qure.rehearsal.run import GALLERY, QUERIES, rehearse

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for everything the rehearsal "
                        "writes (created; an earlier rehearsal's upstream is replaced)")
    parser.add_argument("--shared", default=os.environ.get("QURE_SHARED_DATA",
                                                           str(REPO.parent / "shared" / "data")),
                        help="the real annotation files (default: $QURE_SHARED_DATA or "
                             "../shared/data beside the checkout)")
    parser.add_argument("--queries", type=int, default=QUERIES,
                        help=f"data.subset.queries (default {QUERIES})")
    parser.add_argument("--gallery", type=int, default=GALLERY,
                        help=f"data.subset.gallery (default {GALLERY})")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    parser.add_argument("--stage", choices=("all", "data"), default="all",
                        help="all: `snakemake all`; data: only the data stage (fetch, "
                             "subset, verify, statistics, weight conversion)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds the Snakemake run may take (default 3600)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    result = rehearse(args.out, shared=args.shared, repo=REPO, queries=args.queries,
                      gallery=args.gallery, cores=args.cores, stage=args.stage,
                      timeout=args.timeout)
    for failure in result.failed_rules:
        print(f"FAILED rule {failure['rule']} ({failure['wildcards']}): log {failure['log']}")
        tail = failure["log_tail"].strip().splitlines()[-3:]
        for line in tail:
            print(f"    {line}")
    for check in result.checks:
        print(f"check {check['check']}: {check['status']} - {check['detail']}")
    times = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(f"snakemake exit status {result.returncode}; wall time: {times}")
    print(f"report: {result.report}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

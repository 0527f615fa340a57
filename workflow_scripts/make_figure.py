"""Draw one figure (PNG and PDF) from run histories, score snapshots, audit or example
files; nothing here trains or scores.

Examples:
  make_figure.py fig4 --history QuRe=results/runs/fashioniq/blip2/qure/epochs.jsonl ...
      --metric average_recall --dataset fashioniq --profile synthetic --out-prefix P
  make_figure.py fig5 --history fashioniq=.../epochs.jsonl --history cirr=... --out-prefix P
  make_figure.py fig6 --examples results/analysis/hard_negative_examples.json --out-prefix P
  make_figure.py fig7 --snapshots results/runs/fashioniq/blip2/qure/snapshots.pt -o P
  make_figure.py fig8 --snapshots ... --out-prefix P
  make_figure.py fig9 --audit results/analysis/hard_set_audit.json --history qure=... -o P
"""

from __future__ import annotations

import argparse
import sys

from qure.cli import parse_pairs, reports_errors, setup_logging
from qure.errors import ConfigError
from qure.reporting import figures


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=["fig4", "fig5", "fig6", "fig7", "fig8", "fig9"])
    parser.add_argument("--history", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--snapshots", default=None, help="fig7/fig8: a run's snapshots.pt")
    parser.add_argument("--examples", default=None)
    parser.add_argument("--audit", default=None)
    parser.add_argument("--metric", default="average_recall")
    parser.add_argument("--dataset", default="fashioniq")
    parser.add_argument("--profile", default="")
    parser.add_argument("--query", type=int, default=0, help="fig7: snapshot query row")
    parser.add_argument("-o", "--out-prefix", required=True, help="writes PREFIX.png/.pdf")
    args = parser.parse_args(argv)
    setup_logging()
    histories = parse_pairs(args.history, "--history")
    if args.figure == "fig4":
        fig = figures.fig4_negative_strategies(histories, args.metric, args.dataset,
                                               args.profile)
    elif args.figure == "fig5":
        fig = figures.fig5_hard_negative_set_size(histories, args.profile)
    elif args.figure == "fig6":
        if not args.examples:
            raise ConfigError("fig6 needs --examples")
        fig = figures.fig6_hard_negative_examples(args.examples)
    elif args.figure in ("fig7", "fig8"):
        if not args.snapshots:
            raise ConfigError(f"{args.figure} needs --snapshots")
        snapshots = figures.load_snapshots(args.snapshots)
        if args.figure == "fig7":
            fig = figures.fig7_score_steepness(snapshots, args.query, args.profile)
        else:
            fig = figures.fig8_score_steepness_aggregate(snapshots, args.profile)
    else:
        if not args.audit:
            raise ConfigError("fig9 needs --audit")
        fig = figures.fig9_false_negatives(args.audit, histories)
    for path in figures.save_figure(fig, args.out_prefix):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

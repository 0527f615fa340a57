"""Hard-set analyses on one shared score matrix: the audit of every strategy's sets
against the relevance oracle (Fig. 9) and hard-negative examples (Fig. 6).

Example: python workflow_scripts/analyze_hard_sets.py audit --dataset fashioniq
    --root DIR/fashioniq --basis-run results/runs/fashioniq/blip2/all
    --features results/features/mini_blip2/fashioniq.npy
    --methods '{"qure": {"strategy": "qure", "strategy_params": {}}}' --out audit.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from qure.cli import add_missing_images_argument, reports_errors, setup_logging
from qure.device import add_device_argument
from qure.errors import ConfigError
from qure.stages.analysis import audit_step, examples_step


def _json_mapping(text: str, option: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{option}: not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: expected a JSON object")
    return value


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("analysis", choices=["audit", "examples"])
    parser.add_argument("--dataset", required=True, choices=["fashioniq", "cirr"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--basis-run", required=True,
                        help="run whose final model scores the training queries")
    parser.add_argument("--features", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", default="{}",
                        help="audit: JSON {name: {label, strategy, strategy_params}}")
    parser.add_argument("--strategy", default="qure", help="examples: strategy to mine")
    parser.add_argument("--strategy-params", default="{}", help="examples: JSON params")
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    add_missing_images_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.analysis == "audit":
        methods = _json_mapping(args.methods, "--methods")
        if not methods:
            raise ConfigError("--methods: name at least one strategy to audit")
        audit_step(args.dataset, args.root, args.basis_run, args.features, methods, args.out,
                   batch_size=args.batch_size, missing=args.missing_images,
                   device=args.device)
    else:
        examples_step(args.dataset, args.root, args.basis_run, args.features, args.strategy,
                      _json_mapping(args.strategy_params, "--strategy-params"), args.out,
                      queries=args.queries, negatives=args.negatives,
                      batch_size=args.batch_size, missing=args.missing_images,
                      device=args.device)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

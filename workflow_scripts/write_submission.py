"""Write the test-server files of a training run's final model: CIRR test1 (recall and
recall_subset) or CIRCO test, with a report of what was written.

Example: python workflow_scripts/write_submission.py --benchmark cirr --root DIR/cirr_dataset
    --run results/runs/cirr/blip2_vitl/qure --features results/features/blip2_vitl/cirr.npy
    --out-dir results/submissions/cirr/blip2_vitl/qure --name blip2_vitl_qure
    --report results/submissions/cirr/blip2_vitl/qure/submission.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from qure.cli import reports_errors, setup_logging
from qure.device import add_device_argument
from qure.stages.data import TEST_SPLIT
from qure.stages.submit import submission_step


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", required=True, choices=sorted(TEST_SPLIT))
    parser.add_argument("--root", required=True, help="benchmark folder")
    parser.add_argument("--run", required=True, help="training run folder (model.pt)")
    parser.add_argument("--features", required=True,
                        help="frozen-feature cache (.npy) holding the test split's images")
    parser.add_argument("--out-dir", required=True, help="folder for the server files")
    parser.add_argument("--name", required=True,
                        help="file-name part of the server files (e.g. <backbone>_<method>)")
    parser.add_argument("--report", required=True, help="JSON report to write")
    parser.add_argument("--batch-size", type=int, default=256)
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = submission_step(args.benchmark, args.root, args.run, args.features, args.out_dir,
                             args.report, name=args.name, batch_size=args.batch_size,
                             device=args.device)
    print(json.dumps({"report": args.report, "queries": result["queries"],
                      "files": [f["path"] for f in result["files"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write dvc.yaml from the study plan of a config (default: config/config.yaml).

Example: python workflow_scripts/write_dvc_yaml.py --out dvc.yaml
"""

from __future__ import annotations

import argparse
import sys

from qure.cli import reports_errors
from qure.io import atomic_write_text
from qure.workflow.config import load_config
from qure.workflow.dvc import render_dvc_yaml


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None,
                        help="config file(s), merged in order (default config/config.yaml)")
    parser.add_argument("--out", default="dvc.yaml")
    args = parser.parse_args(argv)
    atomic_write_text(args.out, render_dvc_yaml(load_config(*(args.config or
                                                              ["config/config.yaml"]))))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the DVC pipelines from the study plan: dvc.yaml (config/config.yaml) and
paper/dvc.yaml (config/config.yaml + config/paper.yaml), or one pipeline of your own.

Example: python workflow_scripts/write_dvc_yaml.py            # both pipelines
         python workflow_scripts/write_dvc_yaml.py --config config/config.yaml \
             --config my.yaml --out mine/dvc.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qure.cli import reports_errors
from qure.io import atomic_write_text
from qure.workflow.config import load_config
from qure.workflow.dvc import CONFIG_FILE, PIPELINES, Pipeline, render_dvc_yaml


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None,
                        help="config file(s), merged in order, the first being "
                             f"{CONFIG_FILE} (default: the two shipped pipelines)")
    parser.add_argument("--out", default=None,
                        help="with --config: the dvc.yaml to write (its folder is the "
                             "pipeline's; stages run from the repository root)")
    args = parser.parse_args(argv)
    if args.config:
        if args.config[0] != CONFIG_FILE or not args.out:
            parser.error(f"--config starts with {CONFIG_FILE}, and --out is required")
        pipelines = [Pipeline(tuple(args.config), str(Path(args.out).parent))]
    else:
        pipelines = list(PIPELINES)
    for pipeline in pipelines:
        config = load_config(*pipeline.config_files)
        atomic_write_text(pipeline.dvc_yaml, render_dvc_yaml(config, pipeline))
        print(pipeline.dvc_yaml)
    return 0


if __name__ == "__main__":
    sys.exit(main())

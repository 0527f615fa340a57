"""Write one paper table (CSV, Markdown, LaTeX): the paper's rows beside the rows this
workflow reproduced, read from evaluation JSON files only.

Example: python workflow_scripts/make_table.py --table table2_fashioniq
    --rows '[{"method": "QuRe", "backbone": "mini BLIP-2",
              "evaluations": {"fashioniq": "results/eval/fashioniq/blip2/qure.json"}}]'
    --out-prefix results/tables/table2_fashioniq
"""

from __future__ import annotations

import argparse
import json
import sys

from qure.cli import reports_errors, setup_logging
from qure.errors import ConfigError
from qure.reporting.tables import TABLES, ReproducedRow, build_table, write_table


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, choices=list(TABLES))
    parser.add_argument("--rows", required=True,
                        help="JSON list of {method, backbone, evaluations: {benchmark: path}, "
                             "paper_method?, paper_backbone?}")
    parser.add_argument("--out-prefix", required=True, help="writes PREFIX.csv/.md/.tex")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        raw = json.loads(args.rows)
        rows = [ReproducedRow(r["method"], r["backbone"], r["evaluations"],
                              r.get("paper_method"), r.get("paper_backbone")) for r in raw]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"--rows: expected a JSON list of {{method, backbone, "
                          f"evaluations}} objects ({err})") from err
    for path in write_table(build_table(args.table, rows), args.out_prefix):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

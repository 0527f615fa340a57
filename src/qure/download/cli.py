"""Argument groups and output helpers the download CLIs in ``workflow_scripts/`` share."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qure.io import atomic_write_json


def add_network_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("download options")
    group.add_argument("--sources", default=None,
                       help="catalogue YAML to use instead of the packaged "
                            "qure/download/sources.yaml (same schema)")
    group.add_argument("--base-url", default=None,
                       help="fetch every file from <base-url>/<mirror path> instead of its "
                            "upstream URL (a mirror, or a loopback server in tests)")
    group.add_argument("--retries", type=int, default=5,
                       help="retries per file after a failed attempt (default 5)")
    group.add_argument("--backoff", type=float, default=1.0,
                       help="first retry delay in seconds, doubled each time (default 1)")
    group.add_argument("--timeout", type=float, default=60.0,
                       help="socket timeout in seconds (default 60)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def network_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"base_url": args.base_url, "retries": args.retries, "backoff": args.backoff,
            "timeout": args.timeout, "progress": not args.no_progress}


def write_json(path: str | Path, obj: Any) -> None:
    """Write an output atomically (Snakemake never sees a half-written file)."""
    atomic_write_json(path, obj)

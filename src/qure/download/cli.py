"""Argument groups and output helpers the download CLIs in ``workflow_scripts/`` share."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from qure.download.sources import DatasetSources, dataset_sources
from qure.errors import ConfigError
from qure.io import atomic_write_json

log = logging.getLogger(__name__)


def add_network_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("download options")
    group.add_argument("--sources", default=None,
                       help="catalogue YAML to use instead of the packaged "
                            "qure/download/sources.yaml (same schema)")
    group.add_argument("--base-url", default=None,
                       help="fetch every file from <base-url>/<mirror path> instead of its "
                            "upstream URL (a mirror, or a loopback server in tests)")
    group.add_argument("--substitutes", default=None, metavar="YAML",
                       help="with --base-url: the mirror files that are not the upstream "
                            "bytes, each with its reason, size and sha256 (see "
                            "qure.download.sources); every manifest row of one records it")
    group.add_argument("--retries", type=int, default=5,
                       help="retries per file after a failed attempt (default 5)")
    group.add_argument("--backoff", type=float, default=1.0,
                       help="first retry delay in seconds, doubled each time (default 1)")
    group.add_argument("--timeout", type=float, default=60.0,
                       help="socket timeout in seconds (default 60)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def catalogue(args: argparse.Namespace, dataset: str) -> DatasetSources:
    """``dataset``'s catalogue entries from ``--sources``, with ``--substitutes`` applied
    (only together with a mirror, ``--base-url``: substitutes describe a mirror's files)."""
    substitutes = getattr(args, "substitutes", None)
    if substitutes and not getattr(args, "base_url", None):
        raise ConfigError(f"--substitutes {substitutes}: describes a mirror's files; give "
                          "the mirror with --base-url")
    sources = dataset_sources(dataset, args.sources, substitutes)
    for entry in sources.files:
        if entry.substitute:
            log.warning("%s: the mirror's file is a substitute, checked against the pins of "
                        "%s: %s", entry.path, substitutes, entry.substitute)
    return sources


def network_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"base_url": args.base_url, "retries": args.retries, "backoff": args.backoff,
            "timeout": args.timeout, "progress": not args.no_progress}


def write_json(path: str | Path, obj: Any) -> None:
    """Write an output atomically (Snakemake never sees a half-written file)."""
    atomic_write_json(path, obj)

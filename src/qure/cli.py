"""Small helpers the workflow scripts share (logging setup, config files)."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from qure.errors import ConfigError, QureError
from qure.policies import MISSING_POLICIES


def setup_logging(verbose: bool = False) -> None:
    """Standard-library logging to stderr (Snakemake sends it to the rule's log file)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML/JSON file holding one mapping; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def parse_pairs(items: list[str], option: str,
                allowed: list[str] | None = None) -> dict[str, str]:
    """``["a=x", "b=y"]`` -> ``{"a": "x", "b": "y"}``; errors name the option and item."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value or (allowed is not None and name not in allowed):
            expected = "NAME=PATH" + (f" with NAME in {allowed}" if allowed is not None else "")
            raise ConfigError(f"{option} {item!r}: expected {expected}")
        out[name] = value
    return out


def add_missing_images_argument(parser: Any) -> None:
    """``--missing-images fail|drop``: the config's ``data.missing_images`` policy."""
    parser.add_argument("--missing-images", default="fail", choices=MISSING_POLICIES,
                        help="images absent on disk: fail (stop, naming the first) or drop "
                             "(leave the queries and gallery images out, counted; config "
                             "key data.missing_images; default: fail)")


def reports_errors(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Turn bad-input errors into one ``error: ...`` line on stderr and exit status 2.

    The message already names the file, record or key; a traceback would only bury it.
    Genuine bugs (any other exception) still raise with their traceback.
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except (QureError, ValueError, KeyError, FileNotFoundError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {message}", file=sys.stderr)
            return 2

    return wrapper

"""The Snakemake/DVC workflow: config schema and validation, the study plan, and the
steps after training (evaluation, hard-set analyses)."""

import os
import sys


def prefer_interpreter_on_path() -> None:
    """Put the running interpreter's folder first on PATH, so the workflow's ``python``
    commands use the environment Snakemake runs in (``--use-conda`` still prepends each
    rule's own environment in front of it)."""
    folder = os.path.dirname(sys.executable)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if parts[:1] != [folder]:
        os.environ["PATH"] = os.pathsep.join([folder, *parts])

"""Shared fixtures: the real annotation files in ``../shared/data`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    override = os.environ.get("QURE_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real FashionIQ/CIRR/CIRCO/HP-FashionIQ annotations (no images).

    CI always has them; a developer checkout without ``../shared`` skips these tests
    locally (set QURE_SHARED_DATA to point elsewhere) but fails under CI.
    """
    path = _shared_data_dir()
    if not (path / "SHA256SUMS").is_file():
        message = f"real annotation files not found at {path} (set QURE_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path

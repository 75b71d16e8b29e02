"""Shared fixtures: the real-data root and reproducible random generators."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tests read the real samples kept beside the project (never copied into it)
_DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Root of the real ModelNet / ShapeNetPart samples (``PCATTN_DATA`` overrides).

    Skips when absent, unless ``PCATTN_REQUIRE_DATA=1`` (CI), where it fails instead.
    """
    root = Path(os.environ.get("PCATTN_DATA", _DEFAULT_DATA))
    if not root.is_dir():
        msg = f"real data samples not found at {root} (set PCATTN_DATA)"
        if os.environ.get("PCATTN_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return root

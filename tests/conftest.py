"""Shared fixtures: the real-data root and reproducible random generators."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable
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


def _free_port() -> int:
    """A free TCP port below the ephemeral range. A port from ``bind(("", 0))`` lies inside it,
    where a rank still retrying its connection to the not-yet-listening store can draw that
    very port as its own source port and connect to itself: both ranks then hang."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.Random().sample(range(10000, max(low, 10001)), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it for a port for a process group's store (one per group started)."""
    return _free_port

"""Shared fixtures: the real-data root, free ports for process groups, and the gradient check
of the "every parameter gets a gradient" tests."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch

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


def _check_gradients(module: torch.nn.Module, dead: Mapping[str, str] | None = None) -> int:
    r"""After a backward pass: every trainable parameter of ``module`` has a finite gradient;
    those named in ``dead`` (parameter name -> why its gradient is zero in exact arithmetic) a
    gradient that is zero up to round-off, every other one a gradient that is not.

    "Zero up to round-off" is ``max |g| <= rel * scale``: ``scale`` the largest gradient entry
    of the module, ``rel`` the square root of the gradients' machine epsilon (1.5e-8 in
    float64, so run the check in float64). A gradient that vanishes in exact arithmetic (a
    bias that a softmax or a train-mode BatchNorm cancels) comes out as exactly 0 or as a few
    eps times ``scale``, depending on the order of the sums (SIMD width, threads), so no test
    may ask it to be nonzero, nor to be exactly zero. A stale or wrong ``dead`` entry fails, as
    does a parameter without a gradient. Frozen parameters (``requires_grad=False``) must have
    none and are not counted. Returns how many live parameters were checked.
    """
    dead = dict(dead or {})
    params = dict(module.named_parameters())
    unknown = sorted(set(dead) - set(params))
    assert not unknown, f"dead parameters that do not exist: {unknown}"
    for name, p in params.items():
        if not p.requires_grad:
            assert p.grad is None, f"{name} is frozen but has a gradient"
            continue
        assert p.grad is not None, f"{name} has no gradient"
        assert bool(torch.isfinite(p.grad).all()), f"{name} has a non-finite gradient"
    grads = {n: p.grad for n, p in params.items() if p.requires_grad}
    assert grads, "the module has no trainable parameters"
    frozen = sorted(set(dead) - set(grads))
    assert not frozen, f"dead parameters that are frozen (requires_grad=False): {frozen}"
    rel = max(torch.finfo(g.dtype).eps for g in grads.values()) ** 0.5
    scale = max(float(g.abs().max()) for g in grads.values() if g.numel())
    assert scale > 0, "every gradient is zero"
    size = {n: float(g.abs().max()) / scale if g.numel() else 0.0 for n, g in grads.items()}
    alive = sorted(n for n in dead if size[n] > rel)
    assert not alive, "stated dead, but get a gradient: " + ", ".join(
        f"{n} ({size[n]:.1e} of the largest)" for n in alive
    )
    starved = sorted(n for n in grads if n not in dead and size[n] <= rel)
    assert not starved, "get no gradient (zero up to round-off): " + ", ".join(
        f"{n} ({size[n]:.1e} of the largest)" for n in starved
    )
    return len(grads) - len(dead)


@pytest.fixture
def check_gradients() -> Callable[..., int]:
    """Call it after ``backward()`` as ``check_gradients(module, dead)``; see
    :func:`_check_gradients`."""
    return _check_gradients

"""The ``check_gradients`` fixture (tests/conftest.py) that the "every parameter gets a
gradient" tests share: it finds a parameter that a softmax cancels, accepts it once it is
stated dead, and refuses a wrong or stale statement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

DT = torch.float64


class _Pool(nn.Module):
    """``y = sum_i softmax_i(w . x_i + b) * (V x_i + c)``: ``b`` shifts every logit of the one
    softmax, so its gradient is zero in exact arithmetic; the others are live."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(4, 1)
        self.value = nn.Linear(4, 3)
        self.unused = nn.Parameter(torch.ones(2))
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.score(x), dim=0)  # (N, 1)
        return (a * self.value(x)).sum(0)  # (3,)


def _backward(m: _Pool, use_unused: bool = True) -> _Pool:
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(0), dtype=DT)
    y = m(x).square().sum()
    if use_unused:
        y = y + m.unused.square().sum()
    y.backward()
    return m


def _pool() -> _Pool:
    torch.manual_seed(0)
    return _Pool().double()


def test_the_softmax_shift_bias_is_found_and_accepted_when_stated(check_gradients):
    m = _backward(_pool())
    # the reason the check exists: the bias's gradient is round-off, 0 or not by summation order
    scale = max(float(p.grad.abs().max()) for p in m.parameters() if p.grad is not None)
    assert float(m.score.bias.grad.abs().max()) < 1e-12 * scale
    with pytest.raises(
        AssertionError, match=r"^get no gradient \(zero up to round-off\): score\.bias \("
    ):
        check_gradients(m)
    # score.weight, score.bias (dead), value.weight, value.bias, unused; frozen not counted
    assert check_gradients(m, {"score.bias": "shift of every logit of one softmax"}) == 4


def test_wrong_or_stale_dead_entries_fail(check_gradients):
    m = _backward(_pool())
    dead = {"score.bias": "softmax shift"}
    with pytest.raises(AssertionError, match=r"^stated dead, but get a gradient: value\.bias \("):
        check_gradients(m, {**dead, "value.bias": "wrong"})
    with pytest.raises(AssertionError, match=r"^dead parameters that do not exist: \['nope'\]"):
        check_gradients(m, {**dead, "nope": "stale"})
    with pytest.raises(AssertionError, match=r"^dead parameters that are frozen .*\['frozen'\]"):
        check_gradients(m, {**dead, "frozen": "frozen"})


def test_missing_and_non_finite_gradients_fail(check_gradients):
    m = _backward(_pool(), use_unused=False)
    with pytest.raises(AssertionError, match=r"^unused has no gradient"):
        check_gradients(m, {"score.bias": "softmax shift"})
    m = _pool()
    _backward(m)
    m.value.weight.grad[0, 0] = float("nan")
    with pytest.raises(AssertionError, match=r"^value\.weight has a non-finite gradient"):
        check_gradients(m, {"score.bias": "softmax shift"})
    m = _pool()
    _backward(m)
    m.frozen.grad = torch.ones(2, dtype=DT)
    with pytest.raises(AssertionError, match=r"^frozen is frozen but has a gradient"):
        check_gradients(m, {"score.bias": "softmax shift"})

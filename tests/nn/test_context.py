"""GCNet global context block and DANet position / channel attention against dense ports of
their formulas (mmcv ``ContextBlock``, DANet ``PAM_Module`` / ``CAM_Module``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pcattn.graphs import knn_graph
from pcattn.nn.context import (
    ChannelAttention,
    DualAttention,
    GlobalContextBlock,
    PositionAttention,
)

DT = torch.float64
ATOL = 1e-10


def _randomise(m: nn.Module, gen: torch.Generator, scale: float = 0.5) -> nn.Module:
    """Every parameter random (zero-initialised gates and last layers included)."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * scale)
    return m


# --------------------------------------------------------------------------------------------
# GCNet
# --------------------------------------------------------------------------------------------


def _transform(t: nn.Sequential, c: torch.Tensor) -> torch.Tensor:
    """``W2 ReLU(LN(W1 c))`` for ``c (B, C)``, written out."""
    lin1, ln, _, lin2 = t
    z = c @ lin1.weight.t() + lin1.bias
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    z = (z - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias
    return torch.relu(z) @ lin2.weight.t() + lin2.bias


def gc_dense(m: GlobalContextBlock, x: torch.Tensor) -> torch.Tensor:
    """mmcv ``ContextBlock`` (pooling 'att') on ``x (B, C, n)``."""
    mask = m.pool.similarity.mask
    logits = torch.einsum("c,bcn->bn", mask.weight[0], x) + mask.bias  # (B, n)
    a = torch.softmax(logits, dim=-1)
    context = torch.einsum("bcn,bn->bc", x, a)  # (B, C)
    out = x
    if m.channel_mul is not None:
        out = out * torch.sigmoid(_transform(m.channel_mul, context)).unsqueeze(-1)
    if m.channel_add is not None:
        out = out + _transform(m.channel_add, context).unsqueeze(-1)
    return out


@pytest.mark.parametrize("fusion", ["add", "mul", ("add", "mul")])
def test_gc_image_matches_dense(fusion):
    gen = torch.Generator().manual_seed(0)
    m = _randomise(GlobalContextBlock(16, ratio=1 / 4, fusion=fusion).double(), gen)
    x = torch.randn(2, 16, 5, 6, generator=gen, dtype=DT)
    y = m(x)
    assert y.shape == x.shape
    ref = gc_dense(m, x.view(2, 16, -1)).view_as(x)
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fusion", ["add", ("mul", "add")])
def test_gc_batch_of_clouds_equals_apart(fusion):
    gen = torch.Generator().manual_seed(1)
    m = _randomise(GlobalContextBlock(16, ratio=1 / 4, fusion=fusion).double(), gen)
    xa = torch.randn(7, 16, generator=gen, dtype=DT)
    xb = torch.randn(4, 16, generator=gen, dtype=DT)
    y = m(torch.cat([xa, xb]), batch=torch.tensor([0] * 7 + [1] * 4))
    torch.testing.assert_close(y, torch.cat([m(xa), m(xb)]), atol=ATOL, rtol=0)
    for xc, yc in ((xa, y[:7]), (xb, y[7:])):
        ref = gc_dense(m, xc.t().unsqueeze(0))[0].t()
        torch.testing.assert_close(yc, ref, atol=ATOL, rtol=0)


def test_gc_initialisation():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 4, 5, generator=gen, dtype=DT)
    add = GlobalContextBlock(16, ratio=1 / 4).double()
    torch.testing.assert_close(add(x), x, atol=0, rtol=0)  # zero last layer: identity
    mul = GlobalContextBlock(16, ratio=1 / 4, fusion="mul").double()
    torch.testing.assert_close(mul(x), 0.5 * x, atol=ATOL, rtol=0)
    w = add.pool.similarity.mask.weight
    assert w.abs().sum() > 0 and add.pool.similarity.mask.bias.abs().sum() == 0
    assert add.channel_add[-1].weight.abs().sum() == 0


def test_gc_attention_weights():
    gen = torch.Generator().manual_seed(3)
    m = _randomise(GlobalContextBlock(16, ratio=1 / 4).double(), gen)
    x = torch.randn(9, 16, generator=gen, dtype=DT)
    batch = torch.tensor([0] * 4 + [1] * 5)
    ei, w = m.attention_weights(x, batch=batch)
    assert torch.equal(ei[1], batch) and w.shape == (9, 1)
    mask = m.pool.similarity.mask
    s = x @ mask.weight[0] + mask.bias
    ref = torch.cat([torch.softmax(s[:4], 0), torch.softmax(s[4:], 0)])
    torch.testing.assert_close(w[:, 0], ref, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------
# DANet
# --------------------------------------------------------------------------------------------


def pam_dense(m: PositionAttention, x: torch.Tensor) -> torch.Tensor:
    """DANet ``PAM_Module`` on ``x (B, C, n)``."""
    sim, val = m.attn.similarity, m.attn.value.lin
    q = torch.einsum("oc,bcn->bno", sim.query.weight, x) + sim.query.bias  # (B, n, C')
    k = torch.einsum("oc,bcn->bon", sim.key.weight, x) + sim.key.bias.view(1, -1, 1)
    v = torch.einsum("oc,bcn->bon", val.weight, x) + val.bias.view(1, -1, 1)  # (B, C, n)
    attention = torch.softmax(torch.bmm(q, k), dim=-1)  # (B, n, n)
    out = torch.bmm(v, attention.permute(0, 2, 1))
    return m.gamma * out + x


def cam_dense(m: ChannelAttention, x: torch.Tensor) -> torch.Tensor:
    """DANet ``CAM_Module`` on ``x (B, C, n)``; ``variant="paper"`` uses softmax(E)."""
    energy = torch.bmm(x, x.permute(0, 2, 1))  # (B, C, C)
    if m.variant == "code":
        energy = energy.max(-1, keepdim=True)[0].expand_as(energy) - energy
    attention = torch.softmax(energy, dim=-1)
    return m.beta * torch.bmm(attention, x) + x


@pytest.mark.parametrize("key_channels", [None, 3])
def test_pam_image_matches_dense(key_channels):
    gen = torch.Generator().manual_seed(4)
    m = _randomise(PositionAttention(16, key_channels=key_channels).double(), gen)
    assert m.key_channels == (2 if key_channels is None else 3)
    x = torch.randn(2, 16, 5, 6, generator=gen, dtype=DT)
    ref = pam_dense(m, x.view(2, 16, -1)).view_as(x)
    torch.testing.assert_close(m(x), ref, atol=ATOL, rtol=0)


def test_pam_on_a_given_graph():
    gen = torch.Generator().manual_seed(5)
    m = _randomise(PositionAttention(16).double(), gen)
    n = 10
    x = torch.randn(n, 16, generator=gen, dtype=DT)
    ei = knn_graph(torch.randn(n, 3, generator=gen, dtype=DT), 3)
    sim, val = m.attn.similarity, m.attn.value.lin
    s = sim.query(x) @ sim.key(x).t()  # (N_i, N_j)
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[ei[1], ei[0]] = True
    a = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    ref = m.gamma * (a @ val(x)) + x
    torch.testing.assert_close(m(x, ei), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_cam_image_matches_dense(variant):
    gen = torch.Generator().manual_seed(6)
    m = _randomise(ChannelAttention(8, variant=variant).double(), gen)
    x = torch.randn(2, 8, 4, 5, generator=gen, dtype=DT) * 0.4
    ref = cam_dense(m, x.view(2, 8, -1)).view_as(x)
    torch.testing.assert_close(m(x), ref, atol=ATOL, rtol=0)


def test_cam_variants_differ():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 8, 4, 5, generator=gen, dtype=DT) * 0.4
    code = _randomise(ChannelAttention(8).double(), torch.Generator().manual_seed(0))
    paper = _randomise(
        ChannelAttention(8, variant="paper").double(), torch.Generator().manual_seed(0)
    )
    assert (code(x) - paper(x)).abs().max() > 1e-3
    _, w = code.attention_weights(x)
    xf = x.view(8, -1)
    e = xf @ xf.t()
    torch.testing.assert_close(w.view(8, 8), torch.softmax(-e, dim=-1), atol=ATOL, rtol=0)


def test_dual_attention_batch_of_clouds_equals_apart_and_dense():
    gen = torch.Generator().manual_seed(8)
    m = _randomise(DualAttention(16, pam_channels=4).double(), gen, scale=0.3)
    xa = torch.randn(7, 16, generator=gen, dtype=DT) * 0.4
    xb = torch.randn(4, 16, generator=gen, dtype=DT) * 0.4
    y = m(torch.cat([xa, xb]), batch=torch.tensor([0] * 7 + [1] * 4))
    torch.testing.assert_close(y, torch.cat([m(xa), m(xb)]), atol=ATOL, rtol=0)
    for xc, yc in ((xa, y[:7]), (xb, y[7:])):
        xd = xc.t().unsqueeze(0)
        ref = (pam_dense(m.pam, xd) + cam_dense(m.cam, xd))[0].t()
        torch.testing.assert_close(yc, ref, atol=ATOL, rtol=0)


def test_dual_attention_image_and_initialisation():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 16, 5, 6, generator=gen, dtype=DT)
    m = DualAttention(16).double()
    torch.testing.assert_close(m(x), 2 * x, atol=0, rtol=0)  # gamma = beta = 0
    _randomise(m, gen, scale=0.3)
    xd = x.view(2, 16, -1) * 0.3
    ref = (pam_dense(m.pam, xd) + cam_dense(m.cam, xd)).view_as(x)
    torch.testing.assert_close(m(x * 0.3), ref, atol=ATOL, rtol=0)


# Parameters whose gradient is zero in exact arithmetic (round-off decides whether it comes out
# as 0 or as 1e-17): both kept, as in the reference code, and named here with the reason.
_GC_DEAD = {
    # mmcv's conv_mask is a 1x1 conv with bias: one constant added to every logit of the
    # softmax over the positions, which that softmax removes
    "pool.similarity.mask.bias": "shift of every logit of one softmax",
}
_PAM_DEAD = {
    # DANet's key_conv has a bias: q_i . b_k is the same for every key j of query i
    "attn.similarity.key.bias": "q_i . b_k is constant over the keys of a softmax",
}


@pytest.mark.parametrize(
    "make, dead",
    [
        pytest.param(
            lambda: GlobalContextBlock(16, ratio=1 / 4, fusion=("add", "mul")), _GC_DEAD, id="gc"
        ),
        pytest.param(lambda: PositionAttention(16), _PAM_DEAD, id="pam"),
        pytest.param(lambda: ChannelAttention(16), {}, id="cam"),
        pytest.param(
            lambda: DualAttention(16), {f"pam.{n}": w for n, w in _PAM_DEAD.items()}, id="dual"
        ),
    ],
)
def test_every_parameter_gets_a_gradient(make, dead, check_gradients):
    gen = torch.Generator().manual_seed(10)
    m = _randomise(make().double(), gen, scale=0.3)
    x = torch.randn(9, 16, generator=gen, dtype=DT, requires_grad=True)
    m(x, batch=torch.tensor([0] * 4 + [1] * 5)).square().sum().backward()
    assert check_gradients(m, dead) > 0
    assert torch.isfinite(x.grad).all()


def test_errors():
    with pytest.raises(ValueError, match=r"ratio \(0.0625\) \* in_channels \(8\) must be >= 1"):
        GlobalContextBlock(8)
    with pytest.raises(ValueError, match="fusion must be 'add', 'mul'"):
        GlobalContextBlock(16, ratio=0.25, fusion="concat")
    with pytest.raises(ValueError, match="key_channels must be a positive int"):
        PositionAttention(4)
    with pytest.raises(ValueError, match="variant must be 'code' or 'paper'"):
        ChannelAttention(8, variant="negative")
    with pytest.raises(ValueError, match="x has 4 channels, in_channels is 8"):
        ChannelAttention(8)(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="batch must be None for an image input"):
        GlobalContextBlock(16, ratio=0.25)(torch.randn(1, 16, 3, 3), batch=torch.zeros(9))


@pytest.mark.parametrize(
    "make",
    [
        lambda: GlobalContextBlock(16, ratio=1 / 4),
        lambda: PositionAttention(16),
        lambda: ChannelAttention(16),
        lambda: DualAttention(16),
    ],
)
def test_empty_input_gives_empty_output(make):
    assert make().double()(torch.zeros(0, 16, dtype=DT)).shape == (0, 16)


def test_sample_without_nodes_is_skipped():
    """A batch id with no nodes (sample 1 here) changes nothing for the others."""
    gen = torch.Generator().manual_seed(11)
    m = _randomise(DualAttention(16, pam_channels=4).double(), gen, scale=0.3)
    g = _randomise(GlobalContextBlock(16, ratio=1 / 4).double(), gen)
    x = torch.randn(6, 16, generator=gen, dtype=DT) * 0.4
    for mod in (m, g):
        y = mod(x, batch=torch.tensor([0, 0, 0, 2, 2, 2]))
        torch.testing.assert_close(y, torch.cat([mod(x[:3]), mod(x[3:])]), atol=ATOL, rtol=0)

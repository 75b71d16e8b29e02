"""InterlacedSparseAttention against a dense, permutation-based grouping of the padded image."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pcattn.nn.interlaced import InterlacedSparseAttention

F64 = torch.float64


def _randomize_bn(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()


def _module(c=6, block=(2, 4), channels=4, seed=0):
    torch.manual_seed(seed)
    m = InterlacedSparseAttention(c, block=block, channels=channels).double()
    _randomize_bn(m)
    return m.eval()


# ---- dense reference: 1x1 convs as conv2d on (n, C, h, w) groups -------------------------


def _conv(x, lin):
    w = lin.weight.view(*lin.weight.shape, 1, 1)
    return F.conv2d(x, w, lin.bias)


def _cbr(x, lin, bn):
    x = _conv(x, lin)
    x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return F.relu(x)


def _block(x, blk, channels):
    """Self-attention within each image of x (n, C, h, w), as mmseg's SelfAttentionBlock."""
    sim = blk.attention.similarity
    q = _cbr(_cbr(x, sim.query[0], sim.query[1]), sim.query[3], sim.query[4])
    k = _cbr(_cbr(x, sim.key[0], sim.key[1]), sim.key[3], sim.key[4])
    v = _conv(x, blk.attention.value.lin)
    s = torch.einsum("ncp,ncq->npq", q.flatten(2), k.flatten(2)) * channels**-0.5
    a = torch.softmax(s, -1)
    ctx = torch.einsum("npq,ncq->ncp", a, v.flatten(2)).view_as(x)
    return _cbr(ctx, blk.project[0], blk.project[1])


def _dense(m, x, block, channels):
    n, c, h, w = x.shape
    lh, lw = block
    gh, gw = math.ceil(h / lh), math.ceil(w / lw)
    ph, pw = gh * lh - h, gw * lw - w
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    # long range: fixed position inside the block, all blocks
    x = x.view(n, c, gh, lh, gw, lw).permute(0, 3, 5, 1, 2, 4).reshape(-1, c, gh, gw)
    x = _block(x, m.long_range, channels)
    # short range: one block
    x = x.view(n, lh, lw, c, gh, gw).permute(0, 4, 5, 3, 1, 2).reshape(-1, c, lh, lw)
    x = _block(x, m.short_range, channels)
    x = x.view(n, gh, gw, c, lh, lw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, gh * lh, gw * lw)
    return x[:, :, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]


@pytest.mark.parametrize(
    ("size", "block"),
    [((5, 6), (2, 4)), ((5, 6), (3, 3)), ((4, 8), (2, 4)), ((3, 5), (1, 2)), ((5, 6), (8, 8))],
)
def test_image_matches_dense(size, block):
    m = _module(block=block)
    x = torch.randn(2, 6, *size, dtype=F64)
    out = m(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _dense(m, x, block, 4), atol=1e-10, rtol=0)


def test_batch_of_two_equals_apart():
    m = _module()
    x = torch.randn(2, 6, 5, 6, dtype=F64)
    torch.testing.assert_close(m(x), torch.cat([m(x[:1]), m(x[1:])]), atol=1e-10, rtol=0)


def _masked_attention(x, blk, mask, channels):
    sim = blk.attention.similarity

    def cbr(t, lin, bn):
        t = t @ lin.weight.t()
        t = (t - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        return torch.relu(t)

    q = cbr(cbr(x, sim.query[0], sim.query[1]), sim.query[3], sim.query[4])
    k = cbr(cbr(x, sim.key[0], sim.key[1]), sim.key[3], sim.key[4])
    lin = blk.attention.value.lin
    v = x @ lin.weight.t() + lin.bias
    s = (q @ k.t() * channels**-0.5).masked_fill(~mask, float("-inf"))
    y = torch.softmax(s, -1) @ v
    return cbr(y, blk.project[0], blk.project[1])


def test_node_mode_with_given_groupings_matches_dense():
    m = _module()
    n = 10
    x = torch.randn(n, 6, dtype=F64)
    g1 = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])  # long-range groups
    g2 = torch.tensor([0, 0, 1, 1, 0, 1, 1, 2, 2, 2])  # short-range groups

    def graph(g):
        j, i = torch.nonzero(g.view(-1, 1) == g.view(1, -1), as_tuple=True)
        return torch.stack([j, i])

    out = m(x, (graph(g1), graph(g2)))
    m1, m2 = g1.view(-1, 1) == g1.view(1, -1), g2.view(-1, 1) == g2.view(1, -1)
    ref = _masked_attention(_masked_attention(x, m.long_range, m1, 4), m.short_range, m2, 4)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_padded_pixels_are_unmasked_keys():
    """Dense masks on the padded 6 x 8 grid: with the padded pixels as keys the result is the
    module's; masking them out as keys gives something else."""
    m = _module(block=(2, 4))
    x = torch.randn(1, 6, 5, 6, dtype=F64)
    xp = F.pad(x, (1, 1, 0, 1))[0].permute(1, 2, 0).reshape(48, 6)  # (Hp * Wp, C)
    yy, xx = torch.arange(48) // 8, torch.arange(48) % 8
    long = ((yy % 2).view(-1, 1) == yy % 2) & ((xx % 4).view(-1, 1) == xx % 4)
    short = ((yy // 2).view(-1, 1) == yy // 2) & ((xx // 4).view(-1, 1) == xx // 4)
    real = (yy < 5) & (xx >= 1) & (xx < 7)  # (48,) pixels of the input

    def run(key_ok):
        y = _masked_attention(xp, m.long_range, long & key_ok, 4)
        y = _masked_attention(y, m.short_range, short & key_ok, 4)
        return y[real].view(5, 6, 6).permute(2, 0, 1).unsqueeze(0)

    out = m(x)
    torch.testing.assert_close(out, run(torch.ones(48, dtype=torch.bool)), atol=1e-10, rtol=0)
    assert (out - run(real.view(1, -1))).abs().max() > 1e-3


def test_attention_weights_on_padded_grid():
    m = _module(block=(2, 4))
    x = torch.randn(1, 6, 3, 6, dtype=F64)  # padded to 4 x 8
    ei, w = m.attention_weights(x, stage="long")
    # long range: 4 * 8 / (2 * 4) = 4 pixels per group, 32 targets
    assert ei.shape == (2, 32 * 4) and w.shape == (32 * 4, 1)
    y, xx = ei // 8, ei % 8
    assert bool(((y[0] - y[1]) % 2 == 0).all() and ((xx[0] - xx[1]) % 4 == 0).all())
    ei, w = m.attention_weights(x, stage="short")
    assert ei.shape == (2, 32 * 8)
    assert bool((y := ei // 8)[0].div(2, rounding_mode="floor").eq(y[1] // 2).all())
    sums = torch.zeros(32, dtype=F64).index_add_(0, ei[1], w[:, 0])
    torch.testing.assert_close(sums, torch.ones(32, dtype=F64), atol=1e-12, rtol=0)


def test_gradients_reach_every_parameter(check_gradients):
    m = _module().train()
    x = torch.randn(2, 6, 5, 6, dtype=F64, requires_grad=True)
    m(x).square().sum().backward()
    # the value conv's bias adds one constant to every output of a stage (its softmax weights
    # sum to one), which the stage's training-mode BN (1x1 conv, no bias, then BN) removes
    dead = {
        f"{stage}.attention.value.lin.bias": "constant shift, then a train-mode BatchNorm"
        for stage in ("long_range", "short_range")
    }
    assert check_gradients(m, dead) > 0
    assert torch.isfinite(x.grad).all()


def test_errors():
    with pytest.raises(ValueError, match=r"block must be a positive int or a pair of them"):
        InterlacedSparseAttention(6, block=(0, 2))
    m = InterlacedSparseAttention(6, channels=4)
    with pytest.raises(ValueError, match="x has 5 channels, in_channels is 6"):
        m(torch.randn(1, 5, 4, 4))
    with pytest.raises(ValueError, match=r"edge_index must be a pair \(long_range, short_range\)"):
        m(torch.randn(4, 6), torch.zeros(2, 3, dtype=torch.long))

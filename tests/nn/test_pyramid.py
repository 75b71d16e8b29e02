"""PyramidKeyAttention (ANN's APNB) against dense attention over F.adaptive_avg_pool2d keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pcattn.nn.pyramid import PyramidKeyAttention

F64 = torch.float64


def _module(c=6, d=4, scales=(1, 3, 6, 8), share=True, out_channels=None, seed=0):
    torch.manual_seed(seed)
    m = PyramidKeyAttention(
        c, key_channels=d, pool_scales=scales, share_key_query=share, out_channels=out_channels
    ).double()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.normal_()
                mod.bias.normal_()
        m.out_project.weight.normal_()  # zero at init would hide the attention
        m.out_project.bias.normal_()
    return m.eval()


def _conv(x, lin):
    return F.conv2d(x, lin.weight.view(*lin.weight.shape, 1, 1), lin.bias)


def _cbr(x, seq):
    lin, bn = seq[0], seq[1]
    x = F.batch_norm(
        _conv(x, lin), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
    )
    return F.relu(x)


def _dense(m, x, scales, d):
    b, c, h, w = x.shape
    q = _cbr(x, m.query_project)  # (B, d, H, W)
    k = q if m.key_project is None else _cbr(x, m.key_project)
    v = _conv(x, m.value_project)

    def pyramid(t):
        return torch.cat([F.adaptive_avg_pool2d(t, s).flatten(2) for s in scales], 2)  # (B, d, S)

    s = torch.einsum("bcn,bcs->bns", q.flatten(2), pyramid(k)) * d**-0.5
    ctx = torch.einsum("bns,bcs->bcn", torch.softmax(s, -1), pyramid(v)).view(b, d, h, w)
    ctx = _conv(ctx, m.out_project)
    return _cbr(torch.cat([ctx, x], 1), m.bottleneck)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize(("size", "scales"), [((5, 6), (1, 3, 6, 8)), ((7, 4), (1, 2, 3))])
def test_image_matches_dense(size, scales, share):
    m = _module(scales=scales, share=share)
    x = torch.randn(2, 6, *size, dtype=F64)
    out = m(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _dense(m, x, scales, 4), atol=1e-10, rtol=0)


def test_out_channels():
    m = _module(out_channels=3)
    x = torch.randn(2, 6, 4, 5, dtype=F64)
    out = m(x)
    assert out.shape == (2, 3, 4, 5)
    torch.testing.assert_close(out, _dense(m, x, (1, 3, 6, 8), 4), atol=1e-10, rtol=0)


def test_batch_of_two_equals_apart():
    m = _module()
    x = torch.randn(2, 6, 5, 6, dtype=F64)
    torch.testing.assert_close(m(x), torch.cat([m(x[:1]), m(x[1:])]), atol=1e-10, rtol=0)


def test_attention_weights_over_110_pooled_keys():
    m = _module()
    x = torch.randn(2, 6, 5, 6, dtype=F64)
    ei, w = m.attention_weights(x)
    assert ei.shape == (2, 2 * 30 * 110) and w.shape == (2 * 30 * 110, 1)
    q = _cbr(x, m.query_project).flatten(2)
    kp = torch.cat(
        [F.adaptive_avg_pool2d(_cbr(x, m.query_project), s).flatten(2) for s in (1, 3, 6, 8)], 2
    )
    a = torch.softmax(torch.einsum("bcn,bcs->bns", q, kp) * 0.5, -1)  # (B, 30, 110)
    ref = a[ei[1] // 30, ei[1] % 30, ei[0] % 110]
    torch.testing.assert_close(w[:, 0], ref, atol=1e-12, rtol=0)


def test_node_mode_with_cluster_pooling_matches_dense():
    """Points pooled into clusters at two resolutions (3 + 1 per cloud) by a given graph."""
    m = _module()
    x = torch.randn(9, 6, dtype=F64)
    batch = torch.tensor([0] * 5 + [1] * 4)
    fine = torch.tensor([0, 1, 1, 2, 0, 4, 5, 6, 6])  # per cloud: ids b * 4 + (0..2)
    coarse = batch * 4 + 3  # each cloud's mean
    pool_index = torch.stack([torch.arange(9).repeat(2), torch.cat([fine, coarse])])
    members = torch.zeros(8, 9, dtype=F64)
    members[pool_index[1], pool_index[0]] = 1.0
    same = batch.view(-1, 1) == (torch.arange(8) // 4).view(1, -1)  # (N, S_total)
    j, i = torch.nonzero(same.t(), as_tuple=True)
    edge_index = torch.stack([j, i])  # pooled -> node of the same cloud
    out = m(x, edge_index, pool_index=pool_index)

    def cbr(t, seq):
        lin, bn = seq[0], seq[1]
        t = (t @ lin.weight.t() - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        return torch.relu(t * bn.weight + bn.bias)

    q = cbr(x, m.query_project)
    v = x @ m.value_project.weight.t() + m.value_project.bias
    mean = members / members.sum(1, keepdim=True)  # (S_total, N)
    s = (q @ (mean @ q).t() * 0.5).masked_fill(~same, float("-inf"))
    ctx = torch.softmax(s, -1) @ (mean @ v)
    ctx = ctx @ m.out_project.weight.t() + m.out_project.bias
    ref = cbr(torch.cat([ctx, x], 1), m.bottleneck)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_context_starts_at_zero():
    torch.manual_seed(0)
    m = PyramidKeyAttention(6, key_channels=4).double().eval()
    x = torch.randn(1, 6, 3, 4, dtype=F64)
    only_input = torch.cat([torch.zeros_like(x), x], 1)
    torch.testing.assert_close(m(x), _cbr(only_input, m.bottleneck), atol=1e-12, rtol=0)


def test_gradients_reach_every_parameter(check_gradients):
    m = _module(share=False).train()
    x = torch.randn(2, 6, 5, 6, dtype=F64, requires_grad=True)
    m(x).square().sum().backward()
    # both biases shift the context by one constant (the softmax weights sum to one), which
    # the bottleneck's training-mode BN (1x1 conv, no bias, then BN) removes
    dead = {
        "value_project.bias": "constant shift of the context, then a train-mode BatchNorm",
        "out_project.bias": "constant shift of the context, then a train-mode BatchNorm",
    }
    assert check_gradients(m, dead) > 0
    assert torch.isfinite(x.grad).all()


def test_errors():
    with pytest.raises(ValueError, match="pool_scales must be >= 1, got 0"):
        PyramidKeyAttention(6, pool_scales=(1, 0))
    m = PyramidKeyAttention(6, key_channels=4)
    with pytest.raises(ValueError, match="x has 4 channels, in_channels is 6"):
        m(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match=r"pool_index must be a tensor \(2, E\)"):
        m(torch.randn(5, 6), torch.zeros(2, 5, dtype=torch.long))

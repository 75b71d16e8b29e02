"""PCT offset-attention against a PyTorch port of the reference ``SA_Layer`` formula."""

from __future__ import annotations

import pytest
import torch

from pcattn.graphs import knn_graph
from pcattn.nn.offset_attention import OffsetAttention

DT = torch.float64
ATOL = 1e-10


def _module(gen: torch.Generator, channels: int = 16, reduction: int = 4) -> OffsetAttention:
    m = OffsetAttention(channels, reduction=reduction).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * 0.5)
        m.norm.running_mean.copy_(torch.randn(channels, generator=gen, dtype=DT))
        m.norm.running_var.copy_(torch.rand(channels, generator=gen, dtype=DT) + 0.5)
    return m


def sa_layer(m: OffsetAttention, x: torch.Tensor) -> torch.Tensor:
    """The reference layer on ``x (B, C, N)`` (channels first, as the Jittor code)."""
    wq = m.attn.similarity.query.weight  # shared by q_conv and k_conv
    wv, bv = m.attn.value.lin.weight, m.attn.value.lin.bias
    x_q = torch.einsum("oc,bcn->bno", wq, x)  # (B, N, C/4)
    x_k = torch.einsum("oc,bcn->bon", wq, x)  # (B, C/4, N)
    x_v = torch.einsum("oc,bcn->bon", wv, x) + bv.view(1, -1, 1)  # (B, C, N)
    energy = torch.bmm(x_q, x_k)  # (B, N, N)
    attention = torch.softmax(energy, dim=-1)
    attention = attention / (1e-9 + attention.sum(dim=1, keepdim=True))
    x_r = torch.bmm(x_v, attention)  # (B, C, N)
    t = torch.einsum("oc,bcn->bon", m.trans.weight, x - x_r) + m.trans.bias.view(1, -1, 1)
    bn = m.norm
    t = (t - bn.running_mean.view(1, -1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1) + bn.eps)
    t = t * bn.weight.view(1, -1, 1) + bn.bias.view(1, -1, 1)
    return x + torch.relu(t)


@pytest.mark.parametrize("reduction", [4, 2])
def test_matches_reference_layer(reduction):
    gen = torch.Generator().manual_seed(0)
    m = _module(gen, reduction=reduction)
    x = torch.randn(2, 16, 9, generator=gen, dtype=DT)  # (B, C, N), equal sizes
    ref = sa_layer(m, x)  # (B, C, N)
    xn = x.permute(0, 2, 1).reshape(-1, 16)  # (B*N, C)
    batch = torch.arange(2).repeat_interleave(9)
    y = m(xn, batch=batch)
    torch.testing.assert_close(y, ref.permute(0, 2, 1).reshape(-1, 16), atol=ATOL, rtol=0)


def test_batch_of_different_sizes_equals_apart():
    gen = torch.Generator().manual_seed(1)
    m = _module(gen)
    xa = torch.randn(7, 16, generator=gen, dtype=DT)
    xb = torch.randn(5, 16, generator=gen, dtype=DT)
    batch = torch.tensor([0] * 7 + [1] * 5)
    y = m(torch.cat([xa, xb]), batch=batch)
    ya, yb = m(xa), m(xb)
    torch.testing.assert_close(y, torch.cat([ya, yb]), atol=ATOL, rtol=0)
    for xc, yc in ((xa, ya), (xb, yb)):
        ref = sa_layer(m, xc.t().unsqueeze(0))[0].t()
        torch.testing.assert_close(yc, ref, atol=ATOL, rtol=0)


def test_given_edge_index_matches_masked_formula():
    """On a kNN graph: softmax over the targets of each source, then L1 over the sources."""
    gen = torch.Generator().manual_seed(2)
    m = _module(gen)
    n = 10
    x = torch.randn(n, 16, generator=gen, dtype=DT)
    ei = knn_graph(torch.randn(n, 3, generator=gen, dtype=DT), 4, loop=True)
    y = m(x, ei)

    q = x @ m.attn.similarity.query.weight.t()  # (N, C/4)
    e = q @ q.t()  # (N_i, N_j), symmetric
    mult = torch.zeros(n, n, dtype=DT)
    mult.index_put_((ei[1], ei[0]), torch.ones(ei.size(1), dtype=DT), accumulate=True)
    ex = torch.exp(e - e.max()) * mult
    a = ex / ex.sum(0, keepdim=True)  # over the targets i of each source j
    w = a / (1e-9 + a.sum(1, keepdim=True))  # over the sources j of each target i
    f_sa = w @ m.attn.value.lin(x)
    bn = m.norm
    t = m.trans(x - f_sa)
    t = (t - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(y, x + torch.relu(t), atol=ATOL, rtol=0)

    ei_w, wts = m.attention_weights(x, ei)
    assert wts.shape == (ei.size(1), 1)
    torch.testing.assert_close(wts[:, 0], w[ei_w[1], ei_w[0]], atol=ATOL, rtol=0)


def test_every_parameter_gets_a_gradient(check_gradients):
    gen = torch.Generator().manual_seed(3)
    m = OffsetAttention(16).double().train()
    x = torch.randn(12, 16, generator=gen, dtype=DT, requires_grad=True)
    batch = torch.tensor([0] * 5 + [1] * 7)
    m(x, batch=batch).square().sum().backward()
    # both reach the output only as a per-channel constant that the training-mode BN after
    # trans removes: trans's own bias, and the value bias (a target's weights sum to one, up
    # to the normaliser's 1e-9 eps, so x - f_sa shifts by -b_v)
    dead = {
        "trans.bias": "followed by a train-mode BatchNorm",
        "attn.value.lin.bias": "constant shift (up to 1e-9), then a train-mode BatchNorm",
    }
    assert check_gradients(m, dead) > 0
    assert torch.isfinite(x.grad).all()


def test_errors():
    with pytest.raises(ValueError, match=r"channels \(3\) // reduction \(4\) must be >= 1"):
        OffsetAttention(3)
    m = OffsetAttention(16).double()
    with pytest.raises(ValueError, match="x has 8 channels, channels is 16"):
        m(torch.randn(4, 8, dtype=DT))
    with pytest.raises(ValueError, match="batch must be sorted ascending"):
        m(torch.randn(4, 16, dtype=DT), batch=torch.tensor([1, 0, 0, 1]))


def test_empty_input_gives_empty_output():
    assert OffsetAttention(16).double()(torch.zeros(0, 16, dtype=DT)).shape == (0, 16)

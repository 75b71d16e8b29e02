"""CrissCrossAttention against dense row/column-masked attention and mmcv's concatenated form."""

from __future__ import annotations

import pytest
import torch

from pcattn.graphs import criss_cross_graph, knn_graph
from pcattn.nn.criss_cross import CrissCrossAttention

F64 = torch.float64


def _module(c: int = 16, recurrence: int = 2, gamma: float = 0.7, seed: int = 0):
    torch.manual_seed(seed)
    m = CrissCrossAttention(c, recurrence=recurrence).double().eval()
    with torch.no_grad():
        m.gamma.fill_(gamma)  # Scale(0) at init would hide the attention
    return m


def _proj(m):
    sim, val = m.attention.similarity, m.attention.value
    return (
        (sim.query.weight, sim.query.bias),
        (sim.key.weight, sim.key.bias),
        (val.lin.weight, val.lin.bias),
    )


def _dense(m, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """R passes of y = gamma * softmax_masked(q k^T) v + x on (B, N, C) with mask (N, N)."""
    (wq, bq), (wk, bk), (wv, bv) = _proj(m)
    for _ in range(m.recurrence):
        q = torch.einsum("bnc,dc->bnd", x, wq) + bq
        k = torch.einsum("bnc,dc->bnd", x, wk) + bk
        v = torch.einsum("bnc,dc->bnd", x, wv) + bv
        s = torch.einsum("bid,bjd->bij", q, k).masked_fill(~mask, float("-inf"))
        a = torch.softmax(s, dim=-1)
        x = m.gamma * torch.einsum("bij,bjc->bic", a, v) + x
    return x


def _criss_cross_mask(h: int, w: int) -> torch.Tensor:
    r = torch.arange(h * w) // w
    c = torch.arange(h * w) % w
    return (r.view(-1, 1) == r.view(1, -1)) | (c.view(-1, 1) == c.view(1, -1))  # (HW, HW)


def _to_nodes(img: torch.Tensor) -> torch.Tensor:
    b, c, h, w = img.shape
    return img.permute(0, 2, 3, 1).reshape(b, h * w, c)


def _from_nodes(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x.view(x.size(0), h, w, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("recurrence", [1, 2])
@pytest.mark.parametrize("size", [(5, 6), (1, 4), (3, 1), (1, 1)])
def test_image_matches_dense(recurrence, size):
    h, w = size
    m = _module(recurrence=recurrence)
    x = torch.randn(2, 16, h, w, dtype=F64)
    out = m(x)
    ref = _from_nodes(_dense(m, _to_nodes(x), _criss_cross_mask(h, w)), h, w)
    assert out.shape == (2, 16, h, w)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_one_pass_matches_mmcv_concatenated_softmax():
    """mmcv's form: column energies with -inf on the diagonal, concatenated with the row
    energies, one softmax over H + W, out = gamma * (col + row aggregation) + x."""
    m = _module(recurrence=1)
    x = torch.randn(2, 16, 5, 6, dtype=F64)
    (wq, bq), (wk, bk), (wv, bv) = _proj(m)
    q = torch.einsum("bchw,dc->bdhw", x, wq) + bq.view(1, -1, 1, 1)
    k = torch.einsum("bchw,dc->bdhw", x, wk) + bk.view(1, -1, 1, 1)
    v = torch.einsum("bchw,dc->bdhw", x, wv) + bv.view(1, -1, 1, 1)
    h = x.size(2)
    diag = torch.diag(torch.full((h,), float("-inf"), dtype=F64))
    e_col = (torch.einsum("bchw,bciw->bwhi", q, k) + diag).transpose(1, 2)  # (B, H, W, H)
    e_row = torch.einsum("bchw,bchj->bhwj", q, k)  # (B, H, W, W)
    a = torch.softmax(torch.cat([e_col, e_row], -1), -1)
    y = torch.einsum("bciw,bhwi->bchw", v, a[..., :h]) + torch.einsum(
        "bchj,bhwj->bchw", v, a[..., h:]
    )
    torch.testing.assert_close(m(x), m.gamma * y + x, atol=1e-10, rtol=0)


def test_batch_of_two_equals_apart():
    m = _module()
    x = torch.randn(2, 16, 4, 5, dtype=F64)
    apart = torch.cat([m(x[:1]), m(x[1:])])
    torch.testing.assert_close(m(x), apart, atol=1e-10, rtol=0)


def test_node_mode_knn_graph_matches_dense():
    m = _module(recurrence=2)
    pos = torch.randn(12, 3, dtype=F64)
    x = torch.randn(12, 16, dtype=F64)
    ei = knn_graph(pos, 4)
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[ei[1], ei[0]] = True
    ref = _dense(m, x.unsqueeze(0), mask)[0]
    torch.testing.assert_close(m(x, ei), ref, atol=1e-10, rtol=0)


def test_node_mode_on_criss_cross_graph_equals_image_mode():
    m = _module()
    x = torch.randn(2, 16, 3, 4, dtype=F64)
    ei = criss_cross_graph(3, 4, batch_size=2)
    y = m(_to_nodes(x).reshape(-1, 16), ei)
    torch.testing.assert_close(_from_nodes(y.view(2, 12, 16), 3, 4), m(x), atol=1e-12, rtol=0)


def test_attention_weights_match_dense():
    m = _module(recurrence=2)
    x = torch.randn(2, 16, 3, 4, dtype=F64)
    ei, w = m.attention_weights(x)
    assert ei.shape == (2, 2 * 12 * (3 + 4 - 1)) and w.shape == (ei.size(1), 2)
    (wq, bq), (wk, bk), _ = _proj(m)
    xn = _to_nodes(x)
    q = torch.einsum("bnc,dc->bnd", xn, wq) + bq
    k = torch.einsum("bnc,dc->bnd", xn, wk) + bk
    s = torch.einsum("bid,bjd->bij", q, k).masked_fill(~_criss_cross_mask(3, 4), float("-inf"))
    a = torch.softmax(s, -1).reshape(-1, 12)  # (B * HW, HW)
    got = a[ei[1], ei[0] % 12]
    torch.testing.assert_close(w[:, 0], got, atol=1e-12, rtol=0)
    # each pass is a softmax over H + W - 1 keys
    sums = torch.zeros(24, 2, dtype=F64).index_add_(0, ei[1], w)
    torch.testing.assert_close(sums, torch.ones(24, 2, dtype=F64), atol=1e-12, rtol=0)


def test_starts_as_identity():
    torch.manual_seed(1)
    m = CrissCrossAttention(16).double()
    x = torch.randn(1, 16, 3, 3, dtype=F64)
    assert m.gamma.item() == 0.0
    torch.testing.assert_close(m(x), x, atol=0, rtol=0)


def test_gradients_reach_every_parameter(check_gradients):
    m = _module().train()
    x = torch.randn(2, 16, 4, 5, dtype=F64, requires_grad=True)
    m(x).square().sum().backward()
    # CCNet's key conv has a bias: q_i . b_k is the same for every key of query i's criss-cross
    dead = {"attention.similarity.key.bias": "q_i . b_k is constant over the keys of a softmax"}
    assert check_gradients(m, dead) > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_errors():
    with pytest.raises(ValueError, match=r"in_channels \(4\) must be >= reduction \(8\)"):
        CrissCrossAttention(4)
    with pytest.raises(ValueError, match="recurrence must be an int >= 1, got 0"):
        CrissCrossAttention(16, recurrence=0)
    m = CrissCrossAttention(16)
    with pytest.raises(ValueError, match="x has 8 channels, in_channels is 16"):
        m(torch.randn(1, 8, 3, 3))
    with pytest.raises(ValueError, match="edge_index is required"):
        m(torch.randn(5, 16))

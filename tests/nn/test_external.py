"""External attention against the dense formula (single head) and a port of EANet's
multi-head code."""

from __future__ import annotations

import copy

import pytest
import torch

from pcattn.nn.external import ExternalAttention

DT = torch.float64
ATOL = 1e-10


def _module(gen: torch.Generator, c: int = 8, **kw) -> ExternalAttention:
    m = ExternalAttention(c, **kw).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * 0.5)
    return m


def dense_single(m: ExternalAttention, x: torch.Tensor) -> torch.Tensor:
    """One sample ``x (n, d)``: softmax over the n queries, L1 over the S slots (+1e-9)."""
    mk = m.attn.similarity.memory.weight  # (S, d)
    mv = m.attn.value.memory.weight  # (d, S)
    attn = x @ mk.t()  # (n, S)
    attn = torch.softmax(attn, dim=0)
    attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))
    return attn @ mv.t()  # (n, d)


def dense_multi(m: ExternalAttention, x: torch.Tensor) -> torch.Tensor:
    """EANet's multi-head ``Attention`` on one sample ``x (n, d)``."""
    n = x.size(0)
    nh = m.heads * m.expansion
    t = m.expand(x).view(n, nh, -1).permute(1, 0, 2)  # (eH, n, d/H)
    lin0 = m.attn.similarity.memory  # Linear(d/H, S) with bias
    attn = t @ lin0.weight.t() + lin0.bias  # (eH, n, S)
    attn = torch.softmax(attn, dim=-2)
    attn = attn / (1e-9 + attn.sum(dim=-1, keepdim=True))
    out = attn @ m.attn.value.memory.weight.t() + m.value_bias  # linear_1: (eH, n, d/H)
    return m.proj(out.permute(1, 0, 2).reshape(n, -1))


def _dense(m, x):
    return dense_multi(m, x) if m.multi_head else dense_single(m, x)


@pytest.mark.parametrize(
    "kw",
    [
        dict(slots=6),
        dict(slots=5, heads=2),
        dict(slots=4, heads=4, expansion=2),
        dict(slots=3, expansion=4),
    ],
)
def test_matches_dense_on_a_batch_of_clouds(kw):
    gen = torch.Generator().manual_seed(0)
    m = _module(gen, **kw)
    xa = torch.randn(7, 8, generator=gen, dtype=DT)
    xb = torch.randn(4, 8, generator=gen, dtype=DT)
    batch = torch.tensor([0] * 7 + [1] * 4)
    y = m(torch.cat([xa, xb]), batch=batch)
    ref = torch.cat([_dense(m, xa), _dense(m, xb)])
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=0)
    # the batch equals the clouds run apart, and differs from treating them as one sample
    torch.testing.assert_close(y, torch.cat([m(xa), m(xb)]), atol=ATOL, rtol=0)
    assert (y - m(torch.cat([xa, xb]))).abs().max() > 1e-6


def test_single_head_has_no_projection_and_reference_init():
    m = ExternalAttention(32, slots=64)
    assert not m.multi_head and m.expand is None and m.value_bias is None
    assert sorted(n for n, _ in m.named_parameters()) == [
        "attn.similarity.memory.weight",
        "attn.value.memory.weight",
    ]
    assert m.attn.similarity.memory.weight.std() < 0.002


@pytest.mark.parametrize("kw", [dict(slots=6), dict(slots=5, heads=2)])
def test_image_path(kw):
    gen = torch.Generator().manual_seed(1)
    m = _module(gen, **kw)
    img = torch.randn(2, 8, 5, 6, generator=gen, dtype=DT)
    y = m(img)
    assert y.shape == (2, 8, 5, 6)
    for b in range(2):
        xb = img[b].reshape(8, -1).t()  # (HW, C)
        ref = _dense(m, xb).t().reshape(8, 5, 6)
        torch.testing.assert_close(y[b], ref, atol=ATOL, rtol=0)


def test_attention_weights_are_the_dense_weights():
    gen = torch.Generator().manual_seed(2)
    m = _module(gen, slots=5)
    x = torch.randn(6, 8, generator=gen, dtype=DT)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    ei, w = m.attention_weights(x, batch=batch)
    assert ei.shape == (2, 30) and w.shape == (30, 1)
    mk = m.attn.similarity.memory.weight
    for b in range(2):
        xb = x[3 * b : 3 * b + 3]
        a = torch.softmax(xb @ mk.t(), dim=0)
        a = a / (1e-9 + a.sum(1, keepdim=True))  # (3, S)
        sel = batch[ei[1]] == b
        got = torch.zeros(3, 5, dtype=DT)
        got[ei[1, sel] - 3 * b, ei[0, sel] - 5 * b] = w[sel, 0]
        torch.testing.assert_close(got, a, atol=ATOL, rtol=0)


# multi-head (EANet's code has both biases): the features reach the output only through the
# logits, and the softmax over the nodes of a slot removes anything constant over the nodes:
# M_k's bias, and M_k applied to the expansion's bias
_MULTI_HEAD_DEAD = {
    "attn.similarity.memory.bias": "shift of every logit of one softmax over the nodes",
    "expand.bias": "M_k b is a shift of every logit of one softmax over the nodes",
}


@pytest.mark.parametrize(
    "kw, dead",
    [(dict(slots=6), {}), (dict(slots=5, heads=2), _MULTI_HEAD_DEAD)],
    ids=["single_head", "multi_head"],
)
def test_every_parameter_gets_a_gradient(kw, dead, check_gradients):
    gen = torch.Generator().manual_seed(3)
    m = ExternalAttention(8, **kw).double()
    x = torch.randn(9, 8, generator=gen, dtype=DT, requires_grad=True)
    m(x, batch=torch.tensor([0] * 4 + [1] * 5)).square().sum().backward()
    assert check_gradients(m, dead) > 0
    assert torch.isfinite(x.grad).all()


def test_errors():
    with pytest.raises(ValueError, match=r"in_channels \(6\) must be divisible by heads \(4\)"):
        ExternalAttention(6, heads=4)
    with pytest.raises(ValueError, match="slots must be a positive int, got 0"):
        ExternalAttention(8, slots=0)
    m = ExternalAttention(8).double()
    with pytest.raises(ValueError, match="x has 3 channels, in_channels is 8"):
        m(torch.randn(5, 3, dtype=DT))
    with pytest.raises(ValueError, match="batch has 4 entries but x has 5 rows"):
        m(torch.randn(5, 8, dtype=DT), batch=torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("heads", [1, 2])
def test_empty_input_gives_empty_output(heads):
    m = ExternalAttention(8, slots=4, heads=heads).double()
    assert m(torch.zeros(0, 8, dtype=DT)).shape == (0, 8)


@pytest.mark.parametrize("heads, expansion", [(1, None), (2, 2)])
def test_node_slot_matrix_equals_message_passing(heads, expansion):
    # the default path (the (N, e H, S) matrix) against NodeAttention on slot_graph
    torch.manual_seed(4)
    layer = ExternalAttention(8, slots=5, heads=heads, expansion=expansion).double()
    graph = copy.deepcopy(layer)
    graph.dense = False
    with torch.no_grad():  # memories larger than the 0.001 init, so the softmax is not flat
        for p in layer.parameters():
            p.normal_()
        graph.load_state_dict(layer.state_dict())
    batch = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3])  # sample 1 is empty
    x = torch.randn(9, 8, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out, want = layer(x, batch=batch), graph(x2, batch=batch)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    out.square().sum().backward()
    want.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-12, rtol=0)
    for p, q in zip(layer.parameters(), graph.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=0)

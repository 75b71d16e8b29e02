"""MultiHeadSelfAttention and StructuredSelfAttention against torch.nn.MultiheadAttention and
dense re-implementations of Vaswani et al. (2017) and Lin et al. (2017)."""

from __future__ import annotations

import pytest
import torch

from pcattn.graphs import full_graph, knn_graph
from pcattn.nn.dense import multiplicity
from pcattn.nn.self_attention import MultiHeadSelfAttention, StructuredSelfAttention

DT = torch.float64


def _randomise(m: torch.nn.Module, seed: int = 0, std: float = 0.5) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, std)
    return m


def _mhsa_params(m: MultiHeadSelfAttention):
    sim, val = m.attention.similarity, m.attention.value
    return sim.query, sim.key, val.lin, m.out_proj


# ---------------------------------------------------------------------------------------------
# MultiHeadSelfAttention
# ---------------------------------------------------------------------------------------------


def dense_mhsa(m: MultiHeadSelfAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Z = [A^1 V^1 || ... || A^H V^H] W_O^T + b, A^h = softmax_j(Q^h K^hT / sqrt(d)) on mask."""
    wq, wk, wv, wo = _mhsa_params(m)
    h = m.heads
    q, k, v = (lin(x).view(x.size(0), h, -1).transpose(0, 1) for lin in (wq, wk, wv))  # (H, N, d)
    s = q @ k.transpose(1, 2) / q.size(-1) ** 0.5  # (H, N, N)
    a = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
    y = (a @ v).transpose(0, 1).reshape(x.size(0), -1)  # (N, H d)
    return wo(y)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_mhsa_equals_torch_multihead_attention(heads):
    c = 8
    m = _randomise(MultiHeadSelfAttention(c, c, heads=heads).to(DT).eval(), seed=heads)
    ref = torch.nn.MultiheadAttention(c, heads, bias=True, batch_first=True).to(DT).eval()
    wq, wk, wv, wo = _mhsa_params(m)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([wq.weight, wk.weight, wv.weight]))
        ref.in_proj_bias.copy_(torch.cat([wq.bias, wk.bias, wv.bias]))
        ref.out_proj.weight.copy_(wo.weight)
        ref.out_proj.bias.copy_(wo.bias)
    sizes = [5, 3, 4]  # clouds of different sizes, packed
    x = torch.randn(sum(sizes), c, dtype=DT)
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    y = m(x, full_graph(batch))

    dense = torch.zeros(len(sizes), max(sizes), c, dtype=DT)
    pad = torch.ones(len(sizes), max(sizes), dtype=torch.bool)  # True = padding key
    for b, xb in enumerate(x.split(sizes)):
        dense[b, : len(xb)] = xb
        pad[b, : len(xb)] = False
    want, _ = ref(dense, dense, dense, key_padding_mask=pad, need_weights=False)
    torch.testing.assert_close(y, want[~pad], atol=1e-10, rtol=0)


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_mhsa_full_graph_matches_dense(heads, bias):
    m = _randomise(MultiHeadSelfAttention(6, 8, heads=heads, bias=bias).to(DT).eval())
    x = torch.randn(7, 6, dtype=DT)
    mask = torch.ones(7, 7, dtype=torch.bool)
    torch.testing.assert_close(m(x, full_graph(7)), dense_mhsa(m, x, mask), atol=1e-10, rtol=0)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_mhsa_knn_graph_matches_dense_masked(heads):
    m = _randomise(MultiHeadSelfAttention(5, 8, heads=heads).to(DT).eval(), seed=3)
    torch.manual_seed(7)
    pos = torch.rand(14, 3, dtype=DT)
    batch = torch.tensor([0] * 8 + [1] * 6)
    ei = knn_graph(pos, 4, batch, loop=True)
    x = torch.randn(14, 5, dtype=DT)
    mask = multiplicity(ei, 14, 14) > 0
    assert mask.sum() == 14 * 4 and not mask[:8, 8:].any()
    torch.testing.assert_close(m(x, ei), dense_mhsa(m, x, mask), atol=1e-10, rtol=0)
    # weights: softmax per head over the 4 neighbours, as in the dense matrix
    ei_w, w = m.attention_weights(x, ei)
    assert w.shape == (ei.size(1), heads)
    wq, wk, _, _ = _mhsa_params(m)
    q, k = wq(x).view(14, heads, -1), wk(x).view(14, heads, -1)
    s = torch.einsum("ihd,jhd->hij", q, k) / q.size(-1) ** 0.5
    a = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)  # (H, N, N)
    torch.testing.assert_close(w, a[:, ei_w[1], ei_w[0]].T, atol=1e-10, rtol=0)


def test_mhsa_init_dropout_gradients_and_errors(check_gradients):
    m = MultiHeadSelfAttention(6, 8, heads=2, dropout=0.5).to(DT)
    wq, wk, wv, wo = _mhsa_params(m)
    assert all(torch.equal(t.bias, torch.zeros(8, dtype=DT)) for t in (wq, wk, wv, wo))
    x, ei = torch.randn(6, 6, dtype=DT), full_graph(6)
    m.train()
    torch.manual_seed(0)
    y_train = m(x, ei)
    m.eval()
    assert not torch.allclose(y_train, m(x, ei))  # dropout acts on the weights while training
    m(x, ei).square().sum().backward()
    # q_i . b_k is constant over the keys of a softmax
    assert check_gradients(m, {"attention.similarity.key.bias": "constant over a softmax"}) > 0
    with pytest.raises(ValueError, match=r"out_channels \(6\) must be divisible by heads \(4\)"):
        MultiHeadSelfAttention(6, 6, heads=4)


# ---------------------------------------------------------------------------------------------
# StructuredSelfAttention
# ---------------------------------------------------------------------------------------------


def dense_structured_a(m: StructuredSelfAttention, h: torch.Tensor) -> torch.Tensor:
    """A = softmax over tokens of W_s2 tanh(W_s1 H^T) (+ biases), (r, n)."""
    sim = m.attention.similarity
    w1, w2 = sim.ws1, sim.ws2
    z = torch.tanh(w1.weight @ h.T + (w1.bias[:, None] if w1.bias is not None else 0))  # (d_a, n)
    s = w2.weight @ z + (w2.bias[:, None] if w2.bias is not None else 0)  # (r, n)
    return torch.softmax(s, dim=1)


@pytest.mark.parametrize("bias", [True, False])
def test_structured_matches_dense_on_sequences_of_different_lengths(bias):
    m = _randomise(StructuredSelfAttention(6, hidden=5, hops=3, bias=bias).to(DT).eval())
    h1, h2 = torch.randn(5, 6, dtype=DT), torch.randn(3, 6, dtype=DT)
    batch = torch.tensor([0] * 5 + [1] * 3)
    y = m(torch.cat([h1, h2]), batch=batch)
    assert y.shape == (2, 3, 6)
    for b, h in enumerate((h1, h2)):
        torch.testing.assert_close(y[b], dense_structured_a(m, h) @ h, atol=1e-10, rtol=0)
    # one sequence (no batch) and a dense batch of equal lengths
    torch.testing.assert_close(m(h1), (dense_structured_a(m, h1) @ h1)[None], atol=1e-10, rtol=0)
    hd = torch.randn(2, 4, 6, dtype=DT)
    want = torch.stack([dense_structured_a(m, h) @ h for h in hd])
    torch.testing.assert_close(m(hd), want, atol=1e-10, rtol=0)


def test_structured_attention_weights_and_penalty_match_dense():
    m = _randomise(StructuredSelfAttention(4, hidden=6, hops=3).to(DT).eval(), seed=2)
    h1, h2 = torch.randn(6, 4, dtype=DT), torch.randn(2, 4, dtype=DT)
    x, batch = torch.cat([h1, h2]), torch.tensor([0] * 6 + [1] * 2)
    a1, a2 = dense_structured_a(m, h1), dense_structured_a(m, h2)
    ei, w = m.attention_weights(x, batch=batch)
    dense_a = torch.zeros(6, 8, dtype=DT)  # rows: hop nodes b * r + k; cols: packed tokens
    dense_a[:3, :6], dense_a[3:, 6:] = a1, a2
    assert ei.size(1) == 3 * 8
    torch.testing.assert_close(w[:, 0], dense_a[ei[1], ei[0]], atol=1e-10, rtol=0)
    eye = torch.eye(3, dtype=DT)
    per = torch.stack([torch.linalg.matrix_norm(a @ a.T - eye) ** 2 for a in (a1, a2)])
    torch.testing.assert_close(m.penalty(x, batch=batch, reduction="none"), per, atol=1e-10, rtol=0)
    torch.testing.assert_close(m.penalty(x, batch=batch), per.mean(), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        m.penalty(x, batch=batch, reduction="sum"), per.sum(), atol=1e-10, rtol=0
    )
    assert per.min() > 0.1


def test_structured_penalty_is_zero_for_disjoint_one_hot_hops():
    # tokens are one-hot; W_s1 saturates tanh, W_s2 picks token k for hop k with a logit 1000
    # above the rest, so A has exact one-hot, disjoint rows and A A^T = I
    m = StructuredSelfAttention(4, hidden=4, hops=2, bias=False).to(DT).eval()
    with torch.no_grad():
        m.attention.similarity.ws1.weight.copy_(40.0 * torch.eye(4, dtype=DT))
        m.attention.similarity.ws2.weight.copy_(1000.0 * torch.eye(4, dtype=DT)[[2, 0]])
    h = torch.eye(4, dtype=DT)
    assert m.penalty(h).item() == 0.0
    torch.testing.assert_close(m(h)[0], h[[2, 0]], atol=1e-10, rtol=0)
    # the same tokens with both hops on one token are maximally redundant: A A^T = ones
    with torch.no_grad():
        m.attention.similarity.ws2.weight.copy_(1000.0 * torch.eye(4, dtype=DT)[[1, 1]])
    torch.testing.assert_close(m.penalty(h), torch.tensor(2.0, dtype=DT), atol=1e-10, rtol=0)


def test_structured_gradients_and_errors(check_gradients):
    m = StructuredSelfAttention(4, hidden=5, hops=3).to(DT)
    assert torch.equal(m.attention.similarity.ws1.bias, torch.zeros(5, dtype=DT))
    x, batch = torch.randn(7, 4, dtype=DT), torch.tensor([0, 0, 0, 1, 1, 1, 1])
    (m(x, batch=batch).square().sum() + m.penalty(x, batch=batch)).backward()
    # W_s2's bias adds one constant per hop to the logits of that hop's softmax over tokens
    assert check_gradients(m, {"attention.similarity.ws2.bias": "shift of a softmax"}) > 0
    with pytest.raises(ValueError, match="x has 3 channels, in_channels is 4"):
        m(torch.randn(5, 3, dtype=DT))
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        m.penalty(x, batch=batch, reduction="max")
    with pytest.raises(ValueError, match="batch must be sorted ascending"):
        m(x, batch=torch.tensor([1, 1, 0, 0, 0, 0, 0]))

"""GridConv against conv2d; ConvAttention against conv2d (Cordonnier et al. 2020) and a dense
re-implementation; LocalSelfAttention against a dense SASA window formula (unfold / pad)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pcattn.graphs import full_graph, grid_graph
from pcattn.nn.conv_attention import ConvAttention, GridConv, LocalSelfAttention

DT = torch.float64
ALPHAS = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0]


def _conv(c_in: int, c_out: int, k: int, *, dilation: int = 1, bias: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    pad = (dilation * (k // 2)) if isinstance(k, int) else tuple(dilation * (t // 2) for t in k)
    return nn.Conv2d(c_in, c_out, k, padding=pad, dilation=dilation, bias=bias).to(DT)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).detach())


# ---------------------------------------------------------------------------------------------
# GridConv: the convolution path (window graph + offset value + f = 1 + no normaliser)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5, (3, 5)])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_grid_conv_equals_conv2d(k, dilation, bias):
    conv = _conv(3, 4, k, dilation=dilation, bias=bias)
    img = torch.randn(2, 3, 6, 7, dtype=DT)
    m = GridConv.from_conv2d(conv)
    want = F.conv2d(img, conv.weight, conv.bias, padding=conv.padding, dilation=dilation)
    torch.testing.assert_close(m(img), want, atol=1e-10, rtol=0)
    # node mode: the same pixels, the window graph and its offsets
    ei, off = grid_graph(6, 7, k, dilation, batch_size=2)
    x = img.permute(0, 2, 3, 1).reshape(-1, 3)
    y = m(x, ei, rel_pos=off).view(2, 6, 7, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, want, atol=1e-10, rtol=0)


def test_grid_conv_init_gradients(check_gradients):
    m = GridConv(3, 5, 3).to(DT)
    ref = nn.Conv2d(3, 5, 3)
    assert m.weight.shape == ref.weight.shape
    assert m.weight.abs().max() <= 1 / 27**0.5 and m.attention.bias.abs().max() <= 1 / 27**0.5
    m(torch.randn(2, 3, 4, 5, dtype=DT)).square().sum().backward()
    assert check_gradients(m) > 0


# ---------------------------------------------------------------------------------------------
# ConvAttention
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 5])
def test_conv_attention_converges_to_conv2d(k):
    conv = _conv(3, 4, k, seed=k)
    img = torch.randn(2, 3, 6, 7, dtype=DT)
    with torch.no_grad():
        want = conv(img)
        errs = [_rel_err(ConvAttention.from_conv2d(conv, a)(img), want) for a in ALPHAS]
    assert all(errs[i + 1] < errs[i] for i in range(len(errs) - 1)), errs  # falls monotonically
    assert errs[ALPHAS.index(1.0)] > 0.1, errs  # clearly not the conv at alpha = 1
    assert errs[ALPHAS.index(30.0)] < 1e-10 and errs[ALPHAS.index(40.0)] < 1e-10, errs


def test_conv_attention_matches_conv_path():
    conv = _conv(4, 3, 3, seed=5)
    img = torch.randn(2, 4, 5, 6, dtype=DT)
    att = ConvAttention.from_conv2d(conv, 40.0)
    grid = GridConv.from_conv2d(conv)
    assert _rel_err(att(img), grid(img)) < 1e-10
    # at a large alpha each head puts (almost) all weight on its own shift
    ei, w = att.attention_weights(img)
    assert w.shape == (ei.size(1), 9) and ei.size(1) == 2 * 30 * 7 * 8
    torch.testing.assert_close(
        torch.zeros(60, 9, dtype=DT).index_add_(0, ei[1], w), torch.ones(60, 9, dtype=DT)
    )
    wp, hp = 8, 7  # padded grid; target (y, x) is padded pixel (y + 1, x + 1)
    sy, sx = (ei[0] % (hp * wp)) // wp, ei[0] % wp
    ty, tx = (ei[1] % 30) // 6 + 1, ei[1] % 6 + 1
    for h in range(9):
        on = (sy - ty == h // 3 - 1) & (sx - tx == h % 3 - 1)
        assert torch.all(w[on, h] > 1 - 1e-14) and torch.all(w[~on, h] < 1e-14)


def dense_conv_attention(m: ConvAttention, img: torch.Tensor) -> torch.Tensor:
    """Per head softmax over all (padded) pixels of -alpha_h ||(k - q) - Delta_h||^2."""
    sim = m.attention.similarity
    p = m.kernel_size // 2 if m.padding == "zeros" else 0
    b, c, h, w = img.shape
    xp = F.pad(img, (p, p, p, p))
    hp, wp = h + 2 * p, w + 2 * p
    grid_k = torch.cartesian_prod(torch.arange(hp), torch.arange(wp)).to(DT)  # (Nk, 2)
    grid_q = torch.cartesian_prod(torch.arange(h), torch.arange(w)).to(DT) + p  # (Nq, 2)
    delta = grid_k[None, :, :] - grid_q[:, None, :]  # (Nq, Nk, 2)
    dist = ((delta[None] - sim.centers[:, None, None, :]) ** 2).sum(-1)  # (H, Nq, Nk)
    a = torch.softmax(-sim.alpha[:, None, None] * dist, -1)
    x = xp.flatten(2).transpose(1, 2)  # (B, Nk, C)
    v = (x @ m.attention.value.lin.weight.T).view(b, hp * wp, m.heads, -1)  # (B, Nk, H, Dh)
    y = torch.einsum("hqk,bkhd->bqhd", a, v).reshape(b, h * w, -1)
    return m.out_proj(y).transpose(1, 2).reshape(b, -1, h, w)


@pytest.mark.parametrize("padding", ["zeros", "none"])
@pytest.mark.parametrize("k", [1, 3])
def test_conv_attention_matches_dense(padding, k):
    torch.manual_seed(k)
    m = ConvAttention(3, 5, kernel_size=k, head_channels=2, padding=padding).to(DT).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.7)
        m.attention.similarity.alpha.uniform_(0.2, 2.0)  # per-head alpha, learned shifts
    img = torch.randn(2, 3, 4, 5, dtype=DT)
    torch.testing.assert_close(m(img), dense_conv_attention(m, img), atol=1e-10, rtol=0)


def test_conv_attention_node_mode_on_points():
    torch.manual_seed(3)
    m = ConvAttention(3, 4, kernel_size=3, alpha=0.7).to(DT).eval()
    pos = torch.rand(9, 2, dtype=DT) * 3
    x = torch.randn(9, 3, dtype=DT)
    batch = torch.tensor([0] * 5 + [1] * 4)
    y = m(x, full_graph(batch), pos)
    sim = m.attention.similarity
    for idx in (slice(0, 5), slice(5, 9)):
        delta = pos[idx][None, :, :] - pos[idx][:, None, :]  # (n, n, 2): p_j - p_i
        dist = ((delta[None] - sim.centers[:, None, None]) ** 2).sum(-1)  # (H, n, n)
        a = torch.softmax(-sim.alpha[:, None, None] * dist, -1)
        v = (x[idx] @ m.attention.value.lin.weight.T).view(-1, 9, 4)  # (n, H, D)
        want = m.out_proj(torch.einsum("hij,jhd->ihd", a, v).flatten(1))
        torch.testing.assert_close(y[idx], want, atol=1e-10, rtol=0)


def test_conv_attention_init_gradients_and_errors(check_gradients):
    m = ConvAttention(3, 4, kernel_size=3, alpha=2.0).to(DT)
    sim = m.attention.similarity
    assert torch.equal(sim.alpha, torch.full((9,), 2.0, dtype=DT))
    assert sim.centers[0].tolist() == [-1.0, -1.0] and sim.centers[5].tolist() == [0.0, 1.0]
    m(torch.randn(2, 3, 4, 4, dtype=DT)).square().sum().backward()
    assert check_gradients(m) > 0
    with pytest.raises(ValueError, match="kernel_size must be odd, got 4"):
        ConvAttention(3, 4, kernel_size=4)
    cases = [
        (nn.Conv2d(3, 4, 3, padding=1, stride=2), "stride"),
        (nn.Conv2d(3, 4, 3, padding=2, dilation=2), "dilation"),
        (nn.Conv2d(4, 4, 3, padding=1, groups=2), "groups"),
        (nn.Conv2d(3, 4, 3, padding=0), "padding"),
        (nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), "padding_mode"),
        (nn.Conv2d(3, 4, (3, 5), padding=(1, 2)), "odd square kernel_size"),
        (nn.Conv2d(3, 4, 2, padding=1), "odd square kernel_size"),
    ]
    for conv, what in cases:
        with pytest.raises(ValueError, match=f"ConvAttention.from_conv2d needs .*{what}"):
            ConvAttention.from_conv2d(conv, 10.0)
    # the conv path takes dilation and rectangular kernels, not strides
    GridConv.from_conv2d(nn.Conv2d(3, 4, (3, 5), padding=(2, 4), dilation=2))
    with pytest.raises(ValueError, match="GridConv.from_conv2d needs stride 1"):
        GridConv.from_conv2d(nn.Conv2d(3, 4, 3, padding=1, stride=2))


# ---------------------------------------------------------------------------------------------
# LocalSelfAttention (SASA)
# ---------------------------------------------------------------------------------------------


def _sasa(c_in, c_out, k, heads, padding, seed=0) -> LocalSelfAttention:
    torch.manual_seed(seed)
    m = LocalSelfAttention(c_in, c_out, kernel_size=k, heads=heads, padding=padding).to(DT)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.5)  # keep logits moderate: the softmax should not be one-hot
    return m.eval()


def dense_sasa(m: LocalSelfAttention, img: torch.Tensor) -> torch.Tensor:
    """The paper's window formula with F.pad / F.unfold, one scalar logit per head."""
    sim = m.attention.similarity
    b, _, h, w = img.shape
    k, p, nh = m.kernel_size, m.kernel_size // 2, m.heads
    d = m.out_channels // nh

    def proj(lin: nn.Linear) -> torch.Tensor:
        return torch.einsum("oc,bchw->bohw", lin.weight, img)

    q, key, val = proj(sim.query), proj(sim.key), proj(m.attention.value.lin)
    ku = F.unfold(F.pad(key, (p, p, p, p)), k).view(b, nh, d, k * k, h * w)  # zero padded
    vu = F.unfold(F.pad(val, (p, p, p, p)), k).view(b, nh, d, k * k, h * w)
    rows, cols = torch.arange(k).repeat_interleave(k), torch.arange(k).repeat(k)  # tap (a, b)
    r = torch.cat([sim.rel_row[rows], sim.rel_col[cols]], -1)  # (K*K, H, d)
    r = r.permute(1, 2, 0)[None, :, :, :, None]  # (1, H, d, K*K, 1)
    logits = (q.view(b, nh, d, 1, h * w) * (ku + r)).sum(2)  # (B, H, K*K, HW)
    if m.padding == "mask":
        inside = F.unfold(F.pad(torch.ones(1, 1, h, w, dtype=DT), (p, p, p, p)), k) > 0
        logits = logits.masked_fill(~inside.view(1, 1, k * k, h * w), float("-inf"))
    a = torch.softmax(logits, 2)
    y = (a.unsqueeze(2) * vu).sum(3)  # (B, H, d, HW)
    return y.reshape(b, -1, h, w)


@pytest.mark.parametrize("padding", ["mask", "zeros"])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("k", [3, 5])
def test_sasa_matches_dense_window_formula(padding, heads, k):
    m = _sasa(5, 8, k, heads, padding, seed=heads + k)
    img = torch.randn(2, 5, 5, 6, dtype=DT)
    want = dense_sasa(m, img)
    torch.testing.assert_close(m(img), want, atol=1e-10, rtol=0)
    # node mode: the pixels, the window graph (with the zero node for "zeros") and offsets
    ei, off = grid_graph(5, 6, k, 1, padding, batch_size=2)
    x = img.permute(0, 2, 3, 1).reshape(-1, 5)
    xs = (torch.cat([x, x.new_zeros(1, 5)]), x) if padding == "zeros" else x
    y = m(xs, ei, rel_pos=off).view(2, 5, 6, 8).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, want, atol=1e-10, rtol=0)


def test_sasa_paddings_differ_only_at_borders():
    img = torch.randn(1, 4, 5, 5, dtype=DT)
    ym = _sasa(4, 4, 3, 2, "mask")(img)
    yz = _sasa(4, 4, 3, 2, "zeros")(img)  # same seed, same weights
    torch.testing.assert_close(ym[..., 1:-1, 1:-1], yz[..., 1:-1, 1:-1], atol=1e-10, rtol=0)
    assert (ym[..., 0, :] - yz[..., 0, :]).abs().min() > 1e-8


def test_sasa_on_an_irregular_graph():
    m = _sasa(3, 4, 3, 2, "mask", seed=4)
    torch.manual_seed(1)
    x = torch.randn(6, 3, dtype=DT)
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 5, 0, 2], [0, 0, 0, 1, 1, 1, 2, 3, 3]])
    off = torch.randint(-1, 2, (ei.size(1), 2))
    sim = m.attention.similarity
    q, kk = x @ sim.query.weight.T, x @ sim.key.weight.T
    v = x @ m.attention.value.lin.weight.T
    want = torch.zeros(6, 4, dtype=DT)
    for h in range(2):
        c = slice(2 * h, 2 * h + 2)
        for i in range(6):
            edges = [e for e in range(ei.size(1)) if ei[1, e] == i]
            if not edges:
                continue
            s = []
            for e in edges:
                j, (a, b) = int(ei[0, e]), off[e].tolist()
                r = torch.cat([sim.rel_row[a + 1, h], sim.rel_col[b + 1, h]])
                s.append(q[i, c] @ (kk[j, c] + r))
            att = torch.softmax(torch.stack(s), 0)
            want[i, c] = sum(att[t] * v[int(ei[0, e]), c] for t, e in enumerate(edges))
    torch.testing.assert_close(m(x, ei, rel_pos=off), want, atol=1e-10, rtol=0)
    _, w = m.attention_weights(x, ei, rel_pos=off)
    assert w.shape == (9, 2)


def test_sasa_gradients_and_errors(check_gradients):
    m = LocalSelfAttention(4, 8, kernel_size=3, heads=2, padding="zeros").to(DT)
    m(torch.randn(2, 4, 4, 5, dtype=DT)).square().sum().backward()
    assert check_gradients(m) > 0
    with pytest.raises(ValueError, match=r"out_channels \(6\) must be divisible by 2 \* heads"):
        LocalSelfAttention(4, 6, heads=2)
    with pytest.raises(ValueError, match="padding must be 'mask' or 'zeros'"):
        LocalSelfAttention(4, 8, heads=2, padding="reflect")
    x = torch.randn(3, 4, dtype=DT)
    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"edge 1 has offset \[2, 0\], outside the 3x3 window"):
        m(x, ei, rel_pos=torch.tensor([[0, 1], [2, 0]]))

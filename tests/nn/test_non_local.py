"""NonLocalBlock against a dense re-implementation of Wang et al. (2018) written with 1x1 convs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pcattn.graphs import full_graph
from pcattn.nn.non_local import NonLocalBlock

DT = torch.float64
MODES = ["embedded_gaussian", "gaussian", "dot_product", "concatenation"]


def _block(c: int, seed: int = 0, **kw) -> NonLocalBlock:
    """A block with every parameter and BN statistic random (BN gamma non-zero)."""
    torch.manual_seed(seed)
    m = NonLocalBlock(c, **kw).to(DT).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
        if m.norm is not None:
            m.norm.running_mean.normal_(0.0, 0.3)
            m.norm.running_var.uniform_(0.5, 2.0)
    return m


def _conv1x1(lin: torch.nn.Linear, img: torch.Tensor) -> torch.Tensor:
    return F.conv2d(img, lin.weight[:, :, None, None], lin.bias)


def dense_non_local(m: NonLocalBlock, img: torch.Tensor) -> torch.Tensor:
    """z = BN(W_z y) + x with y = A g(x), A from the paper's pairwise function."""
    b, c, h, w = img.shape
    g = _conv1x1(m.g, img)  # (B, C', H, W)
    if m.mode == "gaussian":
        th, ph = img, img
    else:
        th, ph = _conv1x1(m.theta, img), _conv1x1(m.phi, img)
    if m.sub_sample:
        ph, g = F.max_pool2d(ph, 2), F.max_pool2d(g, 2)
    th, ph, g = th.flatten(2), ph.flatten(2), g.flatten(2)  # (B, Ck, N), (B, Ck, Nk), (B, C', Nk)
    nk = ph.size(-1)
    if m.mode == "concatenation":
        n = th.size(-1)
        pair = torch.cat(
            [th[:, :, :, None].expand(-1, -1, n, nk), ph[:, :, None, :].expand(-1, -1, n, nk)], 1
        )  # (B, 2C', N, Nk)
        wf = m.attention.similarity.weight
        a = F.relu(F.conv2d(pair, wf[None, :, None, None]))[:, 0] / nk  # (B, N, Nk)
    else:
        s = torch.einsum("bci,bcj->bij", th, ph)
        if m.mode == "dot_product":
            a = s / nk
        else:
            if m.mode == "embedded_gaussian" and m.use_scale:
                s = s / m.inter_channels**0.5
            a = torch.softmax(s, -1)
    y = torch.einsum("bij,bcj->bci", a, g).reshape(b, -1, h, w)  # (B, C', H, W)
    z = _conv1x1(m.conv_out, y)
    if m.norm is not None:
        bn = m.norm
        z = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return img + z


def test_embedded_gaussian_is_conv_softmax_self_attention():
    m = _block(6)
    assert m.norm.weight.abs().min() > 0  # the BN actually scales, so W_z and BN are tested
    img = torch.randn(2, 6, 5, 6, dtype=DT)
    # the formula spelled out on its own: softmax over keys of theta^T phi, then W_z, BN, + x
    th, ph, g = (_conv1x1(lin, img).flatten(2) for lin in (m.theta, m.phi, m.g))
    att = torch.softmax(th.transpose(1, 2) @ ph, dim=-1)  # (B, N, N)
    y = (g @ att.transpose(1, 2)).view(2, -1, 5, 6)
    bn = m.norm
    z = (_conv1x1(m.conv_out, y) - bn.running_mean[:, None, None]) / torch.sqrt(
        bn.running_var[:, None, None] + bn.eps
    ) * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(m(img), img + z, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("size", [(5, 6), (4, 4)])
def test_image_matches_dense(mode, sub_sample, size):
    m = _block(6, mode=mode, sub_sample=sub_sample)
    img = torch.randn(2, 6, *size, dtype=DT)
    torch.testing.assert_close(m(img), dense_non_local(m, img), atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product"])
def test_use_scale_and_no_norm_and_reduction(mode):
    m = _block(8, mode=mode, use_scale=True, norm=False, reduction=4)
    assert m.inter_channels == 2 and m.conv_out.bias is not None
    img = torch.randn(2, 8, 3, 5, dtype=DT)
    torch.testing.assert_close(m(img), dense_non_local(m, img), atol=1e-10, rtol=0)
    # use_scale changes the embedded Gaussian (and nothing else)
    plain = _block(8, mode=mode, use_scale=False, norm=False, reduction=4)
    same = torch.allclose(m(img), plain(img), atol=1e-12, rtol=0)
    assert same == (mode == "dot_product")


@pytest.mark.parametrize("mode", MODES)
def test_identity_at_init(mode):
    torch.manual_seed(1)
    img = torch.randn(2, 4, 3, 4, dtype=DT)
    for norm in (True, False):
        m = NonLocalBlock(4, mode=mode, norm=norm).to(DT).eval()
        assert torch.equal(m(img), img)
    assert m.g.weight.std() < 0.05 and torch.equal(m.g.bias, torch.zeros_like(m.g.bias))


@pytest.mark.parametrize("mode", MODES)
def test_node_mode_batch_equals_apart_and_image(mode):
    m = _block(5, mode=mode)
    x1, x2 = torch.randn(7, 5, dtype=DT), torch.randn(4, 5, dtype=DT)
    batch = torch.tensor([0] * 7 + [1] * 4)
    y = m(torch.cat([x1, x2]), full_graph(batch))
    torch.testing.assert_close(y[:7], m(x1, full_graph(7)), atol=1e-10, rtol=0)
    torch.testing.assert_close(y[7:], m(x2, full_graph(4)), atol=1e-10, rtol=0)
    # an image is its row-major pixels with the full graph of each image
    img = torch.randn(2, 5, 3, 4, dtype=DT)
    nodes = img.permute(0, 2, 3, 1).reshape(-1, 5)
    y = m(nodes, full_graph(torch.arange(2).repeat_interleave(12)))
    torch.testing.assert_close(y.view(2, 3, 4, 5).permute(0, 3, 1, 2), m(img), atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_node_mode_sub_sample_with_cluster(mode):
    m = _block(4, mode=mode, sub_sample=True)
    x = torch.randn(7, 4, dtype=DT)
    cluster = torch.tensor([0, 0, 1, 2, 2, 2, -1])  # the last node is in no pooled node
    groups = [[0, 1], [2], [3, 4, 5]]
    ei = torch.stack([torch.arange(3).repeat(7), torch.arange(7).repeat_interleave(3)])
    # dense: pooled key / value = max over the group of the projections
    g = x @ m.g.weight.T + m.g.bias
    if mode == "gaussian":
        th = ph = x
    else:
        th, ph = x @ m.theta.weight.T + m.theta.bias, x @ m.phi.weight.T + m.phi.bias
    ph_p = torch.stack([ph[i].amax(0) for i in groups])  # (3, Ck)
    g_p = torch.stack([g[i].amax(0) for i in groups])  # (3, C')
    if mode == "concatenation":
        wf = m.attention.similarity.weight
        k = th.size(1)
        a = F.relu((th @ wf[:k])[:, None] + (ph_p @ wf[k:])[None, :]) / 3
    elif mode == "dot_product":
        a = th @ ph_p.T / 3
    else:
        a = torch.softmax(th @ ph_p.T, -1)
    z = (a @ g_p) @ m.conv_out.weight.T
    bn = m.norm
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(m(x, ei, cluster=cluster), x + z, atol=1e-10, rtol=0)


def test_attention_weights_match_dense():
    m = _block(6, sub_sample=True)
    img = torch.randn(2, 6, 4, 5, dtype=DT)
    ei, w = m.attention_weights(img)
    assert w.shape == (ei.size(1), 1) and ei.size(1) == 2 * 20 * 4  # 2x2 pooled keys per image
    th = _conv1x1(m.theta, img).flatten(2)
    ph = F.max_pool2d(_conv1x1(m.phi, img), 2).flatten(2)
    a = torch.softmax(torch.einsum("bci,bcj->bij", th, ph), -1)  # (B, 20, 4)
    b, i = ei[1] // 20, ei[1] % 20
    torch.testing.assert_close(w[:, 0], a[b, i, ei[0] % 4], atol=1e-10, rtol=0)
    assert torch.equal(ei[0] // 4, b)  # keys come from the query's own image


@pytest.mark.parametrize("mode", MODES)
def test_every_parameter_gets_a_finite_gradient(mode, check_gradients):
    m = _block(4, mode=mode, sub_sample=True)
    img = torch.randn(2, 4, 4, 4, dtype=DT)
    m(img).square().sum().backward()
    # embedded Gaussian: theta_i . b_phi is the same for every key j of query i's softmax (the
    # dot-product and concatenation modes normalise by the count, where it is not cancelled)
    dead = {"phi.bias": "constant over the keys of a softmax"}
    assert check_gradients(m, dead if mode == "embedded_gaussian" else {}) > 0


def test_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        NonLocalBlock(4, mode="softmax")
    m = NonLocalBlock(4, sub_sample=True)
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"sub_sample=True on nodes needs cluster \(N,\)"):
        m(x, full_graph(5))
    with pytest.raises(ValueError, match="sub_sample=True needs an image of at least 2x2"):
        m(torch.randn(1, 4, 1, 5))
    with pytest.raises(ValueError, match="x has 3 channels, in_channels is 4"):
        NonLocalBlock(4)(torch.randn(5, 3), full_graph(5))
    with pytest.raises(ValueError, match="x has 3 channels, in_channels is 4"):
        NonLocalBlock(4)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="edge_index is required"):
        NonLocalBlock(4)(x)
    with pytest.raises(ValueError, match="cluster is only used with sub_sample=True"):
        NonLocalBlock(4)(x, full_graph(5), cluster=torch.zeros(5, dtype=torch.long))

"""SAN pairwise / patchwise against dense re-implementations written from the formula with
reflection padding (``F.pad(mode="reflect")`` + ``F.unfold``), as the reference's refpad
kernels compute them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pcattn.graphs import grid_graph, knn_graph
from pcattn.nn.san import SANPairwise, SANPatchwise

DT = torch.float64
ATOL = 1e-10


def _randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BN matters."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen, dtype=DT))
            m.running_var.copy_(torch.rand(c, generator=gen, dtype=DT) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(c, generator=gen, dtype=DT))
                m.bias.copy_(torch.randn(c, generator=gen, dtype=DT))


def _bn(z: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    """Eval-mode BN over dim 1 of ``z (B, C, ...)``."""
    shape = (1, -1) + (1,) * (z.dim() - 2)
    mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    return (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def _conv1x1(lin: nn.Linear, z: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv on ``z (B, C_in, ...)`` with a Linear's weights."""
    y = torch.einsum("oc,bc...->bo...", lin.weight, z)
    if lin.bias is not None:
        y = y + lin.bias.view((1, -1) + (1,) * (z.dim() - 2))
    return y


def _unfold(t: torch.Tensor, k: int, padding: str) -> torch.Tensor:
    """``(B, c, H, W)`` -> ``(B, c, k*k, H*W)``: window tap ``t`` of every pixel."""
    b, c = t.shape[:2]
    p = k // 2
    if padding == "reflect":
        u = F.unfold(F.pad(t, (p, p, p, p), mode="reflect"), k)
    else:
        u = F.unfold(t, k, padding=p)
    return u.view(b, c, k * k, -1)


def _position_map(h: int, w: int) -> torch.Tensor:
    """SAN's (1, 2, H, W) map: channel 0 = linspace over W, channel 1 = linspace over H."""
    lw = torch.linspace(-1, 1, w, dtype=DT).view(1, w).expand(h, w)
    lh = torch.linspace(-1, 1, h, dtype=DT).view(h, 1).expand(h, w)
    return torch.stack([lw, lh]).unsqueeze(0)


def dense_pairwise(m: SANPairwise, x: torch.Tensor, share: str = "interleaved") -> torch.Tensor:
    b, _, h, w = x.shape
    k, pad = m.kernel_size, m.padding
    sim = m.attn.similarity
    gamma = sim.mapping
    x1 = _conv1x1(sim.query, x).view(b, m.rel_channels, 1, h * w)  # phi(x_i)
    x2 = _unfold(_conv1x1(sim.key, x), k, pad)  # psi(x_j): (B, Cr, K, HW)
    if m.relation == "subtraction":
        delta = x1 - x2
    elif m.relation == "sum":
        delta = x1 + x2
    elif m.relation == "hadamard":
        delta = x1 * x2
    else:
        delta = torch.cat([x1.expand_as(x2), x2], 1)
    wp = m.attn.pos_encoding.lin.weight  # (2, 2)
    pm = torch.einsum("oc,bchw->bohw", wp, _position_map(h, w))  # W_p p
    prel = pm.view(1, 2, 1, h * w) - _unfold(pm, k, pad)  # W_p (p_i - p_j)
    z = torch.cat([delta, prel.expand(b, -1, -1, -1)], 1)  # (B, width, K, HW)
    z = torch.relu(_bn(z, gamma[0]))
    z = torch.relu(_bn(_conv1x1(gamma[2], z), gamma[3]))
    logits = _conv1x1(gamma[5], z)  # (B, Cf, K, HW)
    valid = _unfold(torch.ones(1, 1, h, w, dtype=DT), k, pad) > 0  # (1, 1, K, HW)
    a = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=2)
    v = _unfold(_conv1x1(m.attn.value.lin, x), k, pad)  # (B, Cmid, K, HW)
    cmid, cf = m.out_channels, logits.size(1)
    idx = torch.arange(cmid) % cf if share == "interleaved" else torch.arange(cmid) // (cmid // cf)
    return (a[:, idx] * v).sum(2).view(b, cmid, h, w)


def dense_patchwise(m: SANPatchwise, x: torch.Tensor, share: str = "interleaved") -> torch.Tensor:
    b, _, h, w = x.shape
    k = m.kernel_size
    sim = m.attn.similarity
    gamma = sim.mapping
    x1 = _conv1x1(sim.query, x).view(b, m.rel_channels, h * w)
    x2 = _unfold(_conv1x1(sim.key, x), k, "reflect").reshape(b, -1, h * w)  # channel-major
    z = torch.cat([x1, x2], 1)  # (B, Cr (K + 1), HW)
    z = torch.relu(_bn(z, gamma[0]))
    z = torch.relu(_bn(_conv1x1(gamma[2], z), gamma[3]))
    wts = _conv1x1(gamma[5], z).view(b, -1, k * k, h * w)  # (B, Cf, K, HW), no softmax
    v = _unfold(_conv1x1(m.attn.value.lin, x), k, "reflect")  # (B, Cmid, K, HW)
    cmid, cf = m.out_channels, wts.size(1)
    idx = torch.arange(cmid) % cf if share == "interleaved" else torch.arange(cmid) // (cmid // cf)
    return (wts[:, idx] * v).sum(2).view(b, cmid, h, w)


def _image(gen: torch.Generator, c: int = 8, h: int = 5, w: int = 6) -> torch.Tensor:
    return torch.randn(2, c, h, w, generator=gen, dtype=DT)


def _pairwise(gen: torch.Generator, **kw) -> SANPairwise:
    m = SANPairwise(8, 4, 16, **kw).double().eval()
    _randomise_bn(m, gen)
    return m


@pytest.mark.parametrize(
    "relation, kernel_size, share_planes",
    [
        ("subtraction", 3, 4),
        ("subtraction", 5, 2),
        ("sum", 3, 8),
        ("hadamard", 5, 4),
        ("concat", 3, 2),
    ],
)
def test_pairwise_matches_dense(relation, kernel_size, share_planes):
    gen = torch.Generator().manual_seed(0)
    m = _pairwise(gen, relation=relation, kernel_size=kernel_size, share_planes=share_planes)
    x = _image(gen)
    y = m(x)
    assert y.shape == (2, 16, 5, 6)
    torch.testing.assert_close(y, dense_pairwise(m, x), atol=ATOL, rtol=0)


def test_pairwise_mask_padding_matches_dense():
    gen = torch.Generator().manual_seed(1)
    m = _pairwise(gen, kernel_size=5, share_planes=4, padding="mask")
    x = _image(gen)
    torch.testing.assert_close(m(x), dense_pairwise(m, x), atol=ATOL, rtol=0)


def test_pairwise_reflect_keeps_multiplicity():
    """A corner pixel of a 3x3 window with reflection sees its mirrored neighbours twice: the
    weights of its edges still sum to 1 per channel, duplicated sources included."""
    gen = torch.Generator().manual_seed(2)
    m = _pairwise(gen, kernel_size=3, share_planes=4)
    x = _image(gen)
    ei, w = m.attention_weights(x)
    corner = ei[1] == 0
    assert int(corner.sum()) == 9
    assert ei[0, corner].unique().numel() == 4  # 9 slots, 4 distinct pixels
    torch.testing.assert_close(w[corner].sum(0), torch.ones(1, 4, dtype=DT), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kernel_size, share_planes", [(3, 4), (5, 2), (3, 8)])
def test_patchwise_matches_dense(kernel_size, share_planes):
    gen = torch.Generator().manual_seed(3)
    m = SANPatchwise(8, 4, 16, kernel_size=kernel_size, share_planes=share_planes).double()
    m.eval()
    _randomise_bn(m, gen)
    x = _image(gen)
    y = m(x)
    assert y.shape == (2, 16, 5, 6)
    torch.testing.assert_close(y, dense_patchwise(m, x), atol=ATOL, rtol=0)


def test_interleaved_sharing_is_not_contiguous():
    """The dense references above would fail with the contiguous map: the two differ."""
    gen = torch.Generator().manual_seed(4)
    x = _image(gen)
    m = _pairwise(gen, kernel_size=3, share_planes=4)
    y = m(x)
    assert (y - dense_pairwise(m, x, share="contiguous")).abs().max() > 1e-3
    torch.testing.assert_close(y, dense_pairwise(m, x), atol=ATOL, rtol=0)
    p = SANPatchwise(8, 4, 16, kernel_size=3, share_planes=4).double().eval()
    _randomise_bn(p, gen)
    y = p(x)
    assert (y - dense_patchwise(p, x, share="contiguous")).abs().max() > 1e-3


def test_pairwise_node_path_on_knn_graph():
    """Points in 3-D with a kNN graph against the dense masked formula over all pairs."""
    gen = torch.Generator().manual_seed(5)
    n, c = 11, 8
    m = _pairwise(gen, share_planes=4, relation="subtraction", pos_dim=3)
    x = torch.randn(n, c, generator=gen, dtype=DT)
    pos = torch.randn(n, 3, generator=gen, dtype=DT)
    ei = knn_graph(pos, 4, loop=True)
    y = m(x, ei, pos)

    sim, gamma = m.attn.similarity, m.attn.similarity.mapping
    q, k = sim.query(x), sim.key(x)  # (N, Cr)
    delta = q[:, None, :] - k[None, :, :]  # (N_i, N_j, Cr)
    wp = m.attn.pos_encoding.lin.weight  # (2, 3)
    prel = (pos[:, None, :] - pos[None, :, :]) @ wp.t()  # (N_i, N_j, 2)
    z = torch.cat([delta, prel], -1).permute(2, 0, 1).unsqueeze(0)  # (1, width, N, N)
    z = torch.relu(_bn(z, gamma[0]))
    z = torch.relu(_bn(_conv1x1(gamma[2], z), gamma[3]))
    logits = _conv1x1(gamma[5], z)[0]  # (Cf, N_i, N_j)
    mult = torch.zeros(n, n, dtype=DT)
    mult.index_put_((ei[1], ei[0]), torch.ones(ei.size(1), dtype=DT), accumulate=True)
    e = torch.exp(logits - logits.amax(-1, keepdim=True)) * mult
    a = e / e.sum(-1, keepdim=True)  # (Cf, N_i, N_j)
    v = m.attn.value.lin(x)  # (N, Cmid)
    idx = torch.arange(16) % 4
    ref = torch.einsum("cij,jc->ic", a[idx], v)
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=0)


def test_node_path_equals_image_path():
    gen = torch.Generator().manual_seed(6)
    x = _image(gen)
    b, c, h, w = x.shape
    xn = x.permute(0, 2, 3, 1).reshape(-1, c)
    ei, _ = grid_graph(h, w, 3, padding="reflect", batch_size=b)
    p = SANPatchwise(8, 4, 16, kernel_size=3, share_planes=4).double().eval()
    _randomise_bn(p, gen)
    yn = p(xn, ei).view(b, h, w, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(yn, p(x), atol=ATOL, rtol=0)

    m = _pairwise(gen, kernel_size=3, share_planes=4)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    lin_w, lin_h = torch.linspace(-1, 1, w, dtype=DT), torch.linspace(-1, 1, h, dtype=DT)
    pos = torch.stack([lin_w[xx.reshape(-1)], lin_h[yy.reshape(-1)]], 1).repeat(b, 1)
    yn = m(xn, ei, pos).view(b, h, w, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(yn, m(x), atol=ATOL, rtol=0)


# phi's and psi's biases enter gamma as one constant (phi(x_i) - psi(x_j), or the
# concatenation of patchwise) that gamma's leading training-mode BN removes; pairwise's last
# logit bias is a shift of every logit of a per-channel softmax over the window
_SAN_DEAD = {
    "attn.similarity.query.bias": "constant input of a train-mode BatchNorm",
    "attn.similarity.key.bias": "constant input of a train-mode BatchNorm",
}
_PAIRWISE_DEAD = {**_SAN_DEAD, "attn.similarity.mapping.5.bias": "shift of a softmax's logits"}


@pytest.mark.parametrize(
    "cls, dead",
    [(SANPairwise, _PAIRWISE_DEAD), (SANPatchwise, _SAN_DEAD)],
    ids=["SANPairwise", "SANPatchwise"],
)
def test_every_parameter_gets_a_gradient(cls, dead, check_gradients):
    gen = torch.Generator().manual_seed(7)
    m = cls(8, 4, 16, kernel_size=3, share_planes=4).double().train()
    x = _image(gen).requires_grad_(True)
    m(x).square().sum().backward()
    assert check_gradients(m, dead) > 0
    assert torch.isfinite(x.grad).all()


def test_errors():
    with pytest.raises(ValueError, match=r"out_channels \(10\) must be divisible by share_planes"):
        SANPairwise(8, 4, 10, share_planes=4)
    with pytest.raises(ValueError, match="kernel_size must be odd, got 4"):
        SANPatchwise(8, 4, 16, kernel_size=4)
    with pytest.raises(ValueError, match="relation must be 'subtraction'"):
        SANPairwise(8, 4, 16, relation="dot")
    with pytest.raises(ValueError, match="padding must be 'reflect'"):
        SANPatchwise(8, 4, 16, padding="mask")
    m = SANPairwise(8, 4, 16, kernel_size=3, share_planes=4).double()
    with pytest.raises(ValueError, match="x has 7 channels, in_channels is 8"):
        m(torch.randn(1, 7, 5, 5, dtype=DT))
    with pytest.raises(ValueError, match=r"pos \(N, 2\) is required"):
        m(torch.randn(4, 8, dtype=DT), torch.zeros(2, 1, dtype=torch.long))
    p = SANPatchwise(8, 4, 16, kernel_size=3, share_planes=4).double()
    ei = knn_graph(torch.randn(12, 3, dtype=DT), 8, loop=True)  # 8 edges per target, not 9
    with pytest.raises(ValueError, match="exactly 9 edges per target"):
        p(torch.randn(12, 8, dtype=DT), ei)


def test_empty_input_gives_empty_output():
    x = torch.zeros(0, 8, dtype=DT)
    ei = torch.zeros(2, 0, dtype=torch.long)
    m = SANPairwise(8, 4, 16, share_planes=4).double()
    assert m(x, ei, torch.zeros(0, 2, dtype=DT)).shape == (0, 16)
    assert SANPatchwise(8, 4, 16, share_planes=4).double()(x, ei).shape == (0, 16)

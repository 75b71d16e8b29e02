"""DoubleAttention (A^2-Net) against the paper's dense einsum formula."""

from __future__ import annotations

import pytest
import torch

from pcattn.nn.double_attention import DoubleAttention

F64 = torch.float64


def _module(c: int = 8, c_m: int | None = None, c_n: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    m = DoubleAttention(c, c_m=c_m, c_n=c_n).double().eval()
    with torch.no_grad():  # non-zero biases, so a wrong bias path shows
        for p in m.parameters():
            if p.dim() == 1:
                p.normal_()
    return m


def lin(t: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return torch.einsum("bnc,dc->bnd", t, layer.weight) + layer.bias


def _dense(m, x: torch.Tensor) -> torch.Tensor:
    """Paper: G = A softmax_N(B)^T, z_i = G softmax_{c_n}(v_i), y = x + W_z z. x: (B, N, C)."""
    a = lin(x, m.gather.value.lin)  # (B, N, c_m)   phi
    b = lin(x, m.gather.similarity.lin)  # (B, N, c_n) theta
    v = lin(x, m.distribute.similarity.lin)  # (B, N, c_n) rho
    g = torch.einsum("bnm,bnk->bmk", a, torch.softmax(b, dim=1))  # softmax over positions
    z = torch.einsum("bmk,bnk->bnm", g, torch.softmax(v, dim=2))  # softmax over c_n
    return x + lin(z, m.reconstruct)


def _to_nodes(img):
    b, c, h, w = img.shape
    return img.permute(0, 2, 3, 1).reshape(b, h * w, c)


@pytest.mark.parametrize(("c_m", "c_n"), [(None, None), (3, 5), (6, 1)])
def test_image_matches_dense(c_m, c_n):
    m = _module(c_m=c_m, c_n=c_n)
    x = torch.randn(2, 8, 5, 6, dtype=F64)
    out = m(x)
    ref = _dense(m, _to_nodes(x)).view(2, 5, 6, 8).permute(0, 3, 1, 2)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_nodes_with_batch_match_dense_per_sample():
    m = _module(c_m=4, c_n=3)
    x = torch.randn(11, 8, dtype=F64)
    batch = torch.tensor([0] * 7 + [1] * 4)
    out = m(x, batch=batch)
    ref = torch.cat([_dense(m, x[:7].unsqueeze(0))[0], _dense(m, x[7:].unsqueeze(0))[0]])
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    # without batch: one sample of 11 nodes
    torch.testing.assert_close(m(x), _dense(m, x.unsqueeze(0))[0], atol=1e-10, rtol=0)


def test_batch_of_two_images_equals_apart():
    m = _module()
    x = torch.randn(2, 8, 4, 3, dtype=F64)
    torch.testing.assert_close(m(x), torch.cat([m(x[:1]), m(x[1:])]), atol=1e-10, rtol=0)


def test_gather_axis_is_positions_not_batch():
    """The reference's dim-less softmax normalises over the batch axis; ours must not mix
    samples: changing sample 1 leaves sample 0 unchanged."""
    m = _module()
    x = torch.randn(2, 8, 3, 3, dtype=F64)
    x2 = x.clone()
    x2[1] = torch.randn(8, 3, 3, dtype=F64)
    torch.testing.assert_close(m(x)[0], m(x2)[0], atol=1e-12, rtol=0)
    assert not torch.allclose(m(x)[1], m(x2)[1])


def test_attention_weights():
    m = _module(c_m=4, c_n=3)
    x = torch.randn(2, 8, 2, 3, dtype=F64)
    xn = _to_nodes(x)
    ei, w = m.attention_weights(x, stage="gather")  # node j -> virtual b * c_n + k
    ref = torch.softmax(lin(xn, m.gather.similarity.lin), dim=1)  # (B, N, c_n)
    assert ei.shape == (2, 2 * 6 * 3) and w.shape == (ei.size(1), 1)
    torch.testing.assert_close(w[:, 0], ref[ei[1] // 3, ei[0] % 6, ei[1] % 3], atol=1e-12, rtol=0)
    ei, w = m.attention_weights(x)  # virtual -> node i
    ref = torch.softmax(lin(xn, m.distribute.similarity.lin), dim=2)
    torch.testing.assert_close(w[:, 0], ref[ei[1] // 6, ei[1] % 6, ei[0] % 3], atol=1e-12, rtol=0)


def test_gradients_reach_every_parameter(check_gradients):
    m = _module().train()
    x = torch.randn(2, 8, 3, 4, dtype=F64, requires_grad=True)
    m(x).square().sum().backward()
    # theta's bias b_k is added to every logit of the gather softmax over the nodes j
    # (the reference conv has it too)
    dead = {"gather.similarity.lin.bias": "shift of every logit of one softmax"}
    assert check_gradients(m, dead) > 0
    assert torch.isfinite(x.grad).all()


def test_defaults_and_errors():
    m = DoubleAttention(16)
    assert (m.c_m, m.c_n) == (4, 4)
    with pytest.raises(ValueError, match="c_n must be a positive int, got 0"):
        DoubleAttention(8, c_n=0)
    with pytest.raises(ValueError, match="x has 3 channels, in_channels is 16"):
        m(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="batch must be sorted ascending"):
        m(torch.randn(3, 16), batch=torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match="stage must be 'gather' or 'distribute'"):
        m.attention_weights(torch.randn(1, 16, 2, 2), stage="both")

"""EMAttention (EMANet) against a dense EM loop, reconstruction and buffer update."""

from __future__ import annotations

import pytest
import torch

from pcattn.nn.em_attention import EMAttention

F64 = torch.float64


def _module(c=6, k=4, stages=3, momentum=0.1, seed=0):
    torch.manual_seed(seed)
    m = EMAttention(c, bases=k, stages=stages, momentum=momentum).double()
    with torch.no_grad():
        m.mid_project.bias.normal_()
        bn = m.out_norm
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return m.eval()


def _dense_em(m, x):
    """x (B, N, C) -> f, Z (B, N, K), mu (B, C, K): the reference's einsum loop."""
    f = torch.einsum("bnc,dc->bnd", x, m.mid_project.weight) + m.mid_project.bias
    mu = m.bases.unsqueeze(0).repeat(x.size(0), 1, 1)  # (B, C, K)
    for _ in range(m.stages):
        z = torch.softmax(torch.einsum("bnc,bck->bnk", f, mu), dim=2)
        zn = z / z.sum(1, keepdim=True)  # L1 over positions
        mu = torch.einsum("bnc,bnk->bck", f, zn)
        mu = mu / mu.norm(dim=1, keepdim=True)  # L2 over channels
    return f, z, mu


def _dense(m, x):
    _, z, mu = _dense_em(m, x)
    recon = torch.einsum("bck,bnk->bnc", mu, z)
    y = torch.relu(recon) @ m.out_project.weight.t()
    bn = m.out_norm
    y = (y - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return torch.relu(x + y)


def _to_nodes(img):
    b, c, h, w = img.shape
    return img.permute(0, 2, 3, 1).reshape(b, h * w, c)


@pytest.mark.parametrize(("k", "stages"), [(4, 1), (4, 3), (7, 2)])
def test_image_matches_dense(k, stages):
    m = _module(k=k, stages=stages)
    x = torch.randn(2, 6, 5, 6, dtype=F64)
    out = m(x)
    ref = _dense(m, _to_nodes(x)).view(2, 5, 6, 6).permute(0, 3, 1, 2)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_nodes_with_batch_match_dense_per_sample():
    m = _module()
    x = torch.randn(10, 6, dtype=F64)
    batch = torch.tensor([0] * 6 + [1] * 4)
    ref = torch.cat([_dense(m, x[:6].unsqueeze(0))[0], _dense(m, x[6:].unsqueeze(0))[0]])
    torch.testing.assert_close(m(x, batch=batch), ref, atol=1e-10, rtol=0)


def test_batch_of_two_equals_apart():
    m = _module()
    x = torch.randn(2, 6, 4, 3, dtype=F64)
    torch.testing.assert_close(m(x), torch.cat([m(x[:1]), m(x[1:])]), atol=1e-10, rtol=0)


def test_attention_weights_are_last_estep():
    m = _module()
    x = torch.randn(2, 6, 3, 4, dtype=F64)
    ei, w = m.attention_weights(x)
    _, z, _ = _dense_em(m, _to_nodes(x))  # (B, N, K)
    assert ei.shape == (2, 2 * 12 * 4) and w.shape == (ei.size(1), 1)
    torch.testing.assert_close(w[:, 0], z[ei[1] // 12, ei[1] % 12, ei[0] % 4], atol=1e-12, rtol=0)


def test_initial_bases_are_unit_columns():
    m = EMAttention(6, bases=5)
    assert m.bases.shape == (6, 5)
    torch.testing.assert_close(m.bases.norm(dim=0), torch.ones(5), atol=1e-6, rtol=0)


def test_training_updates_bases_with_momentum():
    m = _module(momentum=0.3)
    x = torch.randn(2, 6, 4, 5, dtype=F64)
    before = m.bases.clone()
    _, _, mu = _dense_em(m, _to_nodes(x))  # (B, C, K)
    mean = mu.mean(0)
    expected = 0.7 * before + 0.3 * mean / mean.norm(dim=0, keepdim=True)
    m.eval()(x)
    torch.testing.assert_close(m.bases, before, atol=0, rtol=0)  # eval: no update
    m.train()(x)
    torch.testing.assert_close(m.bases, expected, atol=1e-12, rtol=0)
    after = m.bases.clone()
    m.attention_weights(x)  # inspection never updates
    torch.testing.assert_close(m.bases, after, atol=0, rtol=0)


def test_gradients_and_no_grad_loop(check_gradients):
    m = _module().train()
    x = torch.randn(2, 6, 4, 5, dtype=F64, requires_grad=True)
    out = m(x)
    out.sum().backward()
    assert check_gradients(m) == 3  # the frozen mid_project has no gradient
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        "out_project.weight",
        "out_norm.weight",
        "out_norm.bias",
    }
    # the EM branch carries no gradient: d sum(relu(x + y)) / dx = [x + y > 0]
    torch.testing.assert_close(x.grad, (out > 0).to(F64), atol=0, rtol=0)


def test_errors():
    with pytest.raises(ValueError, match="bases must be >= 1, got 0"):
        EMAttention(6, bases=0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        EMAttention(6, momentum=1.5)
    m = EMAttention(6, bases=3)
    with pytest.raises(ValueError, match="x has 2 channels, in_channels is 6"):
        m(torch.randn(1, 2, 3, 3))

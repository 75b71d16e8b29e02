"""PointTransformerLayer against PyG's PointTransformerConv (weights copied across) and against
a dense re-implementation of the paper's formula, plus invariances, gradients and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.nn import PointTransformerConv

from pcattn import graphs
from pcattn.nn.point_transformer import PointTransformerLayer

D64 = torch.float64
ATOL = 1e-10


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cloud(n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.rand(n, 3, generator=g, dtype=D64), torch.randn(n, c, generator=g, dtype=D64)


def _randomise(layer: nn.Module, seed: int = 1) -> None:
    """Random weights, biases and BatchNorm statistics, so eval-mode BN is a real affine map."""
    g = _gen(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.6)
        for m in layer.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=D64) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=D64) + 0.5)


# --------------------------------------------------------------------------------------------
# PyG
# --------------------------------------------------------------------------------------------


def _pyg_pair(c_in: int, c: int, attn: str) -> tuple[PointTransformerLayer, PointTransformerConv]:
    """Our layer in PyG's setting and PyG's layer with the same weights."""
    share, ours_attn, ref_attn = 1, nn.Identity(), None
    if attn == "mlp":
        ours_attn = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
        ref_attn = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
    elif attn == "scalar":  # one score for all channels: PyG broadcasts, we share it C ways
        share = c
        ours_attn, ref_attn = nn.Linear(c, 1), nn.Linear(c, 1)
    ours = PointTransformerLayer(
        c_in,
        c,
        share_planes=share,
        pos_nn=nn.Linear(3, c),
        attn_nn=ours_attn,
        order="query_minus_key",
        pos_order="query_minus_key",
        add_self_loops=True,
        bias=False,
    ).double()
    _randomise(ours)
    ref = PointTransformerConv(c_in, c, attn_nn=ref_attn).double()
    with torch.no_grad():
        ref.lin_dst.weight.copy_(ours.phi.weight)
        ref.lin_src.weight.copy_(ours.psi.weight)
        ref.lin.weight.copy_(ours.alpha.weight)
    ref.pos_nn.load_state_dict(ours.theta.state_dict())
    if ref_attn is not None:
        ref.attn_nn.load_state_dict(ours.gamma.state_dict())
    return ours, ref


@pytest.mark.parametrize("attn", ["none", "mlp", "scalar"])
@pytest.mark.parametrize("graph", ["knn", "knn_loop", "radius"])
def test_matches_pyg(attn, graph):
    n, c_in, c = 40, 5, 8
    pos, x = _cloud(n, c_in)
    if graph == "radius":
        ei = graphs.radius_graph(pos, 0.3, max_num_neighbors=12)
    else:
        ei = graphs.knn_graph(pos, 6, loop=graph == "knn_loop")
    ours, ref = _pyg_pair(c_in, c, attn)
    torch.testing.assert_close(ours(x, ei, pos), ref(x, pos, ei), atol=ATOL, rtol=0)


def test_gradients_match_pyg():
    n, c_in, c = 30, 4, 8
    pos, x = _cloud(n, c_in, 2)
    ei = graphs.knn_graph(pos, 5)
    ours, ref = _pyg_pair(c_in, c, "mlp")
    g = torch.randn(n, c, generator=_gen(3), dtype=D64)
    (ours(x, ei, pos) * g).sum().backward()
    (ref(x, pos, ei) * g).sum().backward()
    for a, b in (
        (ours.phi, ref.lin_dst),
        (ours.psi, ref.lin_src),
        (ours.alpha, ref.lin),
        (ours.theta, ref.pos_nn),
    ):
        torch.testing.assert_close(a.weight.grad, b.weight.grad, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------
# the paper's formula, densely
# --------------------------------------------------------------------------------------------


def _dense_mlp(net: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """Apply a Linear / BatchNorm1d (eval: running statistics) / ReLU stack by its formulas."""
    mods = list(net) if isinstance(net, nn.Sequential) else [net]
    for m in mods:
        if isinstance(m, nn.Linear):
            t = t @ m.weight.t() + (m.bias if m.bias is not None else 0.0)
        elif isinstance(m, nn.BatchNorm1d):
            t = (t - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias
        elif isinstance(m, nn.ReLU):
            t = t.clamp_min(0.0)
        else:
            raise AssertionError(f"unexpected module {m}")
    return t


def _dense_point_transformer(layer: PointTransformerLayer, x, pos, ei) -> torch.Tensor:
    r"""y_i = sum_j softmax_j(gamma(rel_ij + delta_ij)) * (alpha(x_j) + delta_ij) over dense
    N x N x C tensors; score channel c mod C/s for output channel c."""
    n, c = x.size(0), layer.out_channels
    cs = c // layer.share_planes
    q = _dense_mlp(layer.phi, x)  # (N, C) varphi(x_i)
    k = _dense_mlp(layer.psi, x)  # (N, C) psi(x_j)
    v = _dense_mlp(layer.alpha, x)  # (N, C)
    rel = pos[None, :, :] - pos[:, None, :]  # (N_i, N_j, 3) p_j - p_i
    if layer.pos_order == "query_minus_key":
        rel = -rel
    delta = _dense_mlp(layer.theta, rel.reshape(-1, 3)).view(n, n, c)
    rel_x = k[None, :, :] - q[:, None, :]  # psi(x_j) - varphi(x_i)
    if layer.order == "query_minus_key":
        rel_x = -rel_x
    s = _dense_mlp(layer.gamma, (rel_x + delta).reshape(-1, c)).view(n, n, cs)
    m = torch.zeros(n, n, dtype=D64)
    m.index_put_((ei[1], ei[0]), torch.ones(ei.size(1), dtype=D64), accumulate=True)
    z = s.masked_fill((m == 0)[:, :, None], float("-inf"))
    e = torch.exp(z - z.amax(1, keepdim=True)) * m[:, :, None]
    a = e / e.sum(1, keepdim=True)  # (N_i, N_j, C/s), softmax over j
    a_c = a[:, :, torch.arange(c) % cs]  # (N_i, N_j, C), interleaved sharing
    return (a_c * (v[None, :, :] + delta)).sum(1)  # (N, C)


@pytest.mark.parametrize("share_planes", [1, 2, 4, 8])
@pytest.mark.parametrize("graph", ["knn", "radius"])
def test_paper_defaults_match_dense(share_planes, graph):
    n, c_in, c = 36, 5, 16
    pos, x = _cloud(n, c_in, 4)
    if graph == "knn":
        ei = graphs.knn_graph(pos, 8, loop=True)  # the paper's kNN holds the point itself
    else:
        ei = graphs.radius_graph(pos, 0.35, max_num_neighbors=10, loop=True)
    layer = PointTransformerLayer(c_in, c, share_planes=share_planes).double().eval()
    _randomise(layer)
    want = _dense_point_transformer(layer, x, pos, ei)
    torch.testing.assert_close(layer(x, ei, pos), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("order", ["key_minus_query", "query_minus_key"])
@pytest.mark.parametrize("pos_order", ["key_minus_query", "query_minus_key"])
def test_sign_conventions_match_dense_and_are_a_reparametrisation(order, pos_order):
    n, c_in, c = 25, 4, 8
    pos, x = _cloud(n, c_in, 5)
    ei = graphs.knn_graph(pos, 6, loop=True)
    layer = PointTransformerLayer(c_in, c, share_planes=4, order=order, pos_order=pos_order)
    layer = layer.double().eval()
    _randomise(layer)
    y = layer(x, ei, pos)
    torch.testing.assert_close(y, _dense_point_transformer(layer, x, pos, ei), atol=ATOL, rtol=0)
    # the official convention with negated varphi, psi (and theta's input map) is the same
    ref = PointTransformerLayer(c_in, c, share_planes=4).double().eval()
    ref.load_state_dict(layer.state_dict())
    with torch.no_grad():
        if order == "query_minus_key":
            for lin in (ref.phi, ref.psi):
                lin.weight.neg_()
                lin.bias.neg_()
        if pos_order == "query_minus_key":
            ref.theta[0].weight.neg_()
    torch.testing.assert_close(ref(x, ei, pos), y, atol=ATOL, rtol=0)
    if (order, pos_order) != ("key_minus_query", "key_minus_query"):
        plain = PointTransformerLayer(c_in, c, share_planes=4).double().eval()
        plain.load_state_dict(layer.state_dict())
        assert (plain(x, ei, pos) - y).abs().max() > 1e-6  # the signs do matter


def test_attention_weights_sum_to_one_per_channel():
    n, c = 20, 16
    pos, x = _cloud(n, 3, 6)
    ei = graphs.knn_graph(pos, 5, loop=True)
    layer = PointTransformerLayer(3, c, share_planes=4).double().eval()
    _randomise(layer)
    used, w = layer.attention_weights(x, ei, pos)
    assert torch.equal(used, ei)
    assert w.shape == (ei.size(1), 4)
    sums = torch.zeros(n, 4, dtype=D64).index_add_(0, used[1], w)
    torch.testing.assert_close(sums, torch.ones(n, 4, dtype=D64), atol=ATOL, rtol=0)
    layer.add_self_loops = True
    used, w = layer.attention_weights(x, graphs.knn_graph(pos, 5), pos)
    assert w.shape == (n * 6, 4)
    assert used.size(1) == n * 6 and int((used[0] == used[1]).sum()) == n


def test_self_loops_are_replaced_once():
    n, c_in, c = 24, 4, 8
    pos, x = _cloud(n, c_in, 7)
    layer = PointTransformerLayer(c_in, c, share_planes=2).double().eval()
    _randomise(layer)
    with_loop = graphs.knn_graph(pos, 6, loop=True)  # point itself + 5 neighbours
    without = graphs.knn_graph(pos, 5)  # the same 5 neighbours
    y = layer(x, with_loop, pos)
    layer.add_self_loops = True
    torch.testing.assert_close(layer(x, without, pos), y, atol=ATOL, rtol=0)
    torch.testing.assert_close(layer(x, with_loop, pos), y, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------
# invariances and gradients
# --------------------------------------------------------------------------------------------


def _paper_layer(c_in: int = 4, c: int = 16) -> PointTransformerLayer:
    layer = PointTransformerLayer(c_in, c, share_planes=4).double().eval()
    _randomise(layer)
    return layer


def test_edge_order_does_not_matter():
    n = 30
    pos, x = _cloud(n, 4, 8)
    ei = graphs.knn_graph(pos, 6, loop=True)
    layer = _paper_layer()
    perm = torch.randperm(ei.size(1), generator=_gen(0))
    torch.testing.assert_close(layer(x, ei[:, perm], pos), layer(x, ei, pos), atol=ATOL, rtol=0)
    layer.add_self_loops = True  # the unsorted path of the loop insertion
    torch.testing.assert_close(layer(x, ei[:, perm], pos), layer(x, ei, pos), atol=ATOL, rtol=0)


def test_permuting_points_permutes_the_output():
    n = 30
    pos, x = _cloud(n, 4, 9)
    ei = graphs.knn_graph(pos, 6, loop=True)
    layer = _paper_layer()
    perm = torch.randperm(n, generator=_gen(1))  # new point k is old point perm[k]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    got = layer(x[perm], inv[ei], pos[perm])
    torch.testing.assert_close(got, layer(x, ei, pos)[perm], atol=ATOL, rtol=0)


def test_batch_of_two_clouds_equals_the_two_apart():
    (p1, x1), (p2, x2) = _cloud(20, 4, 10), _cloud(14, 4, 11)
    layer = _paper_layer()  # eval mode: BatchNorm statistics do not mix the clouds
    pos, x = torch.cat([p1, p2]), torch.cat([x1, x2])
    batch = torch.cat([torch.zeros(20, dtype=torch.long), torch.ones(14, dtype=torch.long)])
    ei = graphs.knn_graph(pos, 6, batch, loop=True)
    got = layer(x, ei, pos)
    want = torch.cat(
        [
            layer(x1, graphs.knn_graph(p1, 6, loop=True), p1),
            layer(x2, graphs.knn_graph(p2, 6, loop=True), p2),
        ]
    )
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_isolated_point_gives_zeros_not_nan():
    n = 6
    pos, x = _cloud(n, 4, 12)
    ei = torch.tensor([[1, 2, 0, 2], [0, 0, 1, 1]])  # points 2..5 receive nothing
    y = _paper_layer()(x, ei, pos)
    assert bool(torch.isfinite(y).all())
    assert torch.equal(y[2:], torch.zeros(4, 16, dtype=D64))
    assert float(y[:2].detach().abs().max()) > 1e-3


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_parameter_gets_a_finite_gradient(mode, check_gradients):
    n = 24
    pos, x = _cloud(n, 4, 13)
    x.requires_grad_()
    pos.requires_grad_()
    ei = graphs.knn_graph(pos.detach(), 6, loop=True)
    layer = PointTransformerLayer(4, 16, share_planes=4).double()
    layer.train(mode == "train")
    if mode == "eval":
        _randomise(layer)
    y = layer(x, ei, pos)
    (y * torch.randn(y.shape, generator=_gen(2), dtype=D64)).sum().backward()
    # the last logit bias shifts every logit of a per-channel softmax; in training, the
    # BatchNorms (over the edges) also remove the biases of the Linear in front of them, and
    # q_i - k_j turns the query and key biases into one constant input of gamma's first BN
    dead = {"attn.similarity.mapping.net.5.bias": "shift of every logit of a softmax"}
    if mode == "train":
        dead |= {
            name: "constant input of a train-mode BatchNorm"
            for name in (
                "attn.similarity.query.bias",
                "attn.similarity.key.bias",
                "attn.similarity.mapping.net.2.bias",
                "attn.pos_encoding.net.0.bias",
            )
        }
    assert check_gradients(layer, dead) > 0
    for t in (x, pos):
        assert bool(torch.isfinite(t.grad).all()) and float(t.grad.abs().max()) > 0


def test_training_mode_updates_batchnorm_statistics_and_uses_them():
    n = 24
    pos, x = _cloud(n, 4, 14)
    ei = graphs.knn_graph(pos, 6, loop=True)
    layer = PointTransformerLayer(4, 16).double()
    before = layer.gamma[0].running_mean.clone()
    y_train = layer(x, ei, pos)
    assert (layer.gamma[0].running_mean - before).abs().max() > 0
    layer.eval()
    assert (layer(x, ei, pos) - y_train).abs().max() > 1e-6


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_errors():
    pos, x = _cloud(10, 4, 15)
    ei = graphs.knn_graph(pos, 3, loop=True)
    with pytest.raises(
        ValueError, match=r"out_channels \(12\) must be divisible by share_planes \(8\)"
    ):
        PointTransformerLayer(4, 12)
    with pytest.raises(ValueError, match="order must be one of"):
        PointTransformerLayer(4, 16, order="query-key")
    with pytest.raises(ValueError, match="pos_order must be one of"):
        PointTransformerLayer(4, 16, pos_order="p_i - p_j")
    with pytest.raises(ValueError, match="share_planes must be an int >= 1, got 0"):
        PointTransformerLayer(4, 16, share_planes=0)
    layer = PointTransformerLayer(4, 16).double().eval()
    with pytest.raises(ValueError, match=r"PointTransformerLayer: pos must be a tensor \(N, D\)"):
        layer(x, ei, None)
    with pytest.raises(ValueError, match=r"x must be \(10, C\) like pos, got \(9, 4\)"):
        layer(x[:9], ei, pos)
    with pytest.raises(ValueError, match="x has 5 channels, in_channels is 4"):
        layer(torch.randn(10, 5, dtype=D64), ei, pos)
    bad = PointTransformerLayer(4, 16, attn_nn=nn.Linear(16, 4)).double()  # needs 16 / 8 = 2
    with pytest.raises(ValueError, match=r"attn_nn must map \(E, 16\) to \(E, 2\), got \(30, 4\)"):
        bad(x, ei, pos)
    bad = PointTransformerLayer(4, 16, pos_nn=nn.Linear(3, 8)).double()
    with pytest.raises(ValueError, match=r"pos_nn must map \(E, 3\) to \(E, 16\), got \(30, 8\)"):
        bad(x, ei, pos)
    loops = PointTransformerLayer(4, 16, add_self_loops=True).double()
    with pytest.raises(ValueError, match=r"node ids in \[0, 10\] but x has 10 nodes"):
        loops(x, torch.tensor([[0, 10], [1, 2]]), pos)


@pytest.mark.parametrize("add_self_loops", [False, True])
def test_inference_in_blocks_equals_one_pass(add_self_loops):
    # eval + no_grad with a small chunk_edges: blocks of whole targets give the same output,
    # also with unsorted edges, a node without edges and the official BN-MLPs (running stats)
    torch.manual_seed(0)
    pos = torch.randn(70, 3, dtype=torch.float64)
    x = torch.randn(70, 16, dtype=torch.float64)
    ei = graphs.knn_graph(pos, 6, loop=True)
    ei = ei[:, ei[1] != 5]  # node 5 receives nothing
    ei = ei[:, torch.randperm(ei.size(1))]
    layer = PointTransformerLayer(16, 16, share_planes=4, add_self_loops=add_self_loops)
    layer = layer.double()
    layer.train()
    with torch.no_grad():
        layer(x, ei, pos)  # give the BatchNorms running statistics that are not the defaults
    layer.eval()
    with torch.no_grad():
        whole = layer(x, ei, pos)
        layer.chunk_edges = 25
        blocks = layer(x, ei, pos)
    torch.testing.assert_close(blocks, whole, atol=1e-10, rtol=0)
    assert not add_self_loops or blocks[5].abs().sum() > 0  # the self loop reaches node 5
    with pytest.raises(ValueError, match="chunk_edges must be >= 1, got 0"):
        PointTransformerLayer(16, 16, chunk_edges=0)

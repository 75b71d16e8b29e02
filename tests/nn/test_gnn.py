"""GCNLayer and GATLayer against PyG's GCNConv / GATConv / GATv2Conv (weights copied across)
and against dense re-implementations of the papers' formulas, plus invariances and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv, GATv2Conv, GCNConv

from pcattn import graphs
from pcattn.nn.gnn import GATLayer, GCNLayer

D64 = torch.float64
ATOL = 1e-10


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, generator=_gen(seed), dtype=D64)


def _graph(n: int, seed: int, *, loops: bool, p: float = 0.35) -> torch.Tensor:
    """Random directed graph without duplicate edges, in shuffled order; with ``loops`` some
    nodes (at most one loop each) have a self loop; node ``n - 1`` receives no edge."""
    g = _gen(seed)
    adj = torch.rand(n, n, generator=g) < p  # adj[i, j]: edge j -> i
    adj.fill_diagonal_(False)
    if loops:
        adj.diagonal().copy_(torch.rand(n, generator=g) < 0.5)
    adj[n - 1] = False
    dst, src = adj.nonzero().t()
    ei = torch.stack([src, dst])
    return ei[:, torch.randperm(ei.size(1), generator=g)]


def _weights(e: int, seed: int = 3) -> torch.Tensor:
    return torch.rand(e, generator=_gen(seed), dtype=D64) + 0.1


def _adjacency(ei: torch.Tensor, n: int, w: torch.Tensor | None = None) -> torch.Tensor:
    """A[i, j] = sum of the weights of the edges j -> i."""
    w = torch.ones(ei.size(1), dtype=D64) if w is None else w
    a = torch.zeros(n, n, dtype=D64)
    a.index_put_((ei[1], ei[0]), w, accumulate=True)
    return a


def _rand_(module: torch.nn.Module, seed: int = 5) -> None:
    """Give every parameter (biases included) random values, so nothing is zero by init."""
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


# --------------------------------------------------------------------------------------------
# GCN
# --------------------------------------------------------------------------------------------


def _gcn_pair(c_in: int, c_out: int, **kw) -> tuple[GCNLayer, GCNConv]:
    ours = GCNLayer(c_in, c_out, **kw).double()
    _rand_(ours)
    pyg_kw = {k: v for k, v in kw.items() if k in ("improved", "normalize", "bias")}
    pyg_kw["add_self_loops"] = kw.get("add_self_loops", True)
    ref = GCNConv(c_in, c_out, **pyg_kw).double()
    with torch.no_grad():
        ref.lin.weight.copy_(ours.lin.weight)
        if ref.bias is not None:
            ref.bias.copy_(ours.bias)
    return ours, ref


def _dense_gcn(layer: GCNLayer, x, ei, w, improved, add_loops, normalize) -> torch.Tensor:
    r"""Kipf & Welling: D^-1/2 (A + fill I) D^-1/2 X W + b, existing self loops kept."""
    n = x.size(0)
    a = _adjacency(ei, n, w)
    if add_loops:
        has_loop = torch.zeros(n, dtype=torch.bool)
        has_loop[ei[0][ei[0] == ei[1]]] = True
        diag = a.diagonal()
        diag[~has_loop] = 2.0 if improved else 1.0
    if normalize:
        d = a.sum(1)  # in-degree, loop included
        dinv = torch.where(d > 0, d.clamp_min(1e-300).rsqrt(), torch.zeros_like(d))
        a = dinv[:, None] * a * dinv[None, :]
    y = a @ (x @ layer.lin.weight.t())
    return y + layer.bias if layer.bias is not None else y


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("improved", [False, True])
@pytest.mark.parametrize("loops", [False, True])
def test_gcn_matches_pyg(weighted, improved, loops):
    n = 11
    ei = _graph(n, 1, loops=loops)
    w = _weights(ei.size(1)) if weighted else None
    x = _x(n, 5)
    ours, ref = _gcn_pair(5, 4, improved=improved)
    # PyG ignores improved=True when no weights are given (its loops then weigh 1); with all-one
    # weights it applies A + 2I, which is what GCNLayer does either way
    w_ref = torch.ones(ei.size(1), dtype=D64) if (w is None and improved) else w
    torch.testing.assert_close(ours(x, ei, w), ref(x, ei, w_ref), atol=ATOL, rtol=0)


@pytest.mark.parametrize("bias", [False, True])
def test_gcn_without_loops_or_normalisation_matches_pyg(bias):
    n = 10
    ei = _graph(n, 2, loops=True)
    w = _weights(ei.size(1))
    x = _x(n, 3)
    for normalize in (True, False):
        ours, ref = _gcn_pair(3, 6, add_self_loops=False, normalize=normalize, bias=bias)
        torch.testing.assert_close(ours(x, ei, w), ref(x, ei, w), atol=ATOL, rtol=0)
        torch.testing.assert_close(ours(x, ei), ref(x, ei), atol=ATOL, rtol=0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("improved", [False, True])
@pytest.mark.parametrize("loops", [False, True])
@pytest.mark.parametrize(
    "add_loops,normalize", [(True, True), (False, True), (True, False), (False, False)]
)
def test_gcn_matches_dense(weighted, improved, loops, add_loops, normalize):
    n = 12
    ei = _graph(n, 4, loops=loops)
    w = _weights(ei.size(1)) if weighted else None
    x = _x(n, 4)
    layer = GCNLayer(4, 3, improved=improved, add_self_loops=add_loops, normalize=normalize)
    layer = layer.double()
    _rand_(layer)
    want = _dense_gcn(layer, x, ei, w, improved, add_loops, normalize)
    torch.testing.assert_close(layer(x, ei, w), want, atol=ATOL, rtol=0)


def test_gcn_on_knn_graph_matches_dense():
    pos = torch.rand(30, 3, generator=_gen(7), dtype=D64)
    ei = graphs.knn_graph(pos, 5)
    x = _x(30, 6)
    layer = GCNLayer(6, 4).double()
    _rand_(layer)
    want = _dense_gcn(layer, x, ei, None, False, True, True)
    torch.testing.assert_close(layer(x, ei), want, atol=ATOL, rtol=0)


def test_gcn_init_is_glorot_and_zero_bias():
    torch.manual_seed(0)
    layer = GCNLayer(40, 60)
    bound = (6.0 / (40 + 60)) ** 0.5
    w = layer.lin.weight.detach()
    assert w.shape == (60, 40)
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound
    assert torch.equal(layer.bias, torch.zeros(60))


# --------------------------------------------------------------------------------------------
# GAT / GATv2
# --------------------------------------------------------------------------------------------


def _gat_pair(c_in: int, d: int, heads: int, concat: bool, v2: bool, share: bool = False):
    """Our layer and PyG's with the same weights (PyG's out_channels is per head)."""
    out = heads * d if concat else d
    ours = GATLayer(c_in, out, heads=heads, concat=concat, v2=v2, share_weights=share).double()
    _rand_(ours)
    sim = ours.attn.similarity
    if v2:
        ref = GATv2Conv(c_in, d, heads=heads, concat=concat, share_weights=share).double()
        with torch.no_grad():
            ref.lin_l.weight.copy_(ours.lin.weight)
            ref.lin_l.bias.copy_(ours.lin.bias)
            if not share:
                ref.lin_r.weight.copy_(sim.lin_r.weight)
                ref.lin_r.bias.copy_(sim.lin_r.bias)
            ref.att.copy_(sim.att)
            ref.bias.copy_(ours.bias)
    else:
        ref = GATConv(c_in, d, heads=heads, concat=concat).double()
        with torch.no_grad():
            ref.lin.weight.copy_(ours.lin.weight)
            ref.att_src.copy_(sim.att_src)
            ref.att_dst.copy_(sim.att_dst)
            ref.bias.copy_(ours.bias)
    return ours, ref


def _masked_softmax(s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Softmax of ``s (H, N, N)`` over the last axis, each key counted ``m (N, N)`` times."""
    z = s.masked_fill(m == 0, float("-inf"))
    top = z.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    e = torch.exp(z - top) * m
    den = e.sum(-1, keepdim=True)
    return torch.where(den > 0, e / den.clamp_min(1e-300), torch.zeros_like(e))


def _dense_gat(layer: GATLayer, x: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
    r"""GAT / GATv2 from the papers: dense logits, masked softmax over the keys, heads
    concatenated or averaged, bias."""
    n, h = x.size(0), layer.heads
    sim, slope = layer.attn.similarity, layer.attn.similarity.negative_slope
    z = (x @ layer.lin.weight.t()).view(n, h, -1)  # (N, H, D), W x_j (GAT) / W_l x_j (v2)
    if layer.lin.bias is not None:
        z = z + layer.lin.bias.view(1, h, -1)
    if layer.v2:
        if sim.lin_r is None:
            zr = z
        else:
            zr = (x @ sim.lin_r.weight.t() + sim.lin_r.bias).view(n, h, -1)
        pair = zr[:, None] + z[None, :]  # (N_i, N_j, H, D)
        s = torch.einsum("ijhd,hd->hij", F.leaky_relu(pair, slope), sim.att[0])
    else:
        a_src = torch.einsum("jhd,hd->hj", z, sim.att_src[0])
        a_dst = torch.einsum("ihd,hd->hi", z, sim.att_dst[0])
        s = F.leaky_relu(a_dst[:, :, None] + a_src[:, None, :], slope)  # (H, N, N)
    m = _adjacency(ei, n)
    if layer.add_self_loops:
        m.fill_diagonal_(1.0)  # existing loops replaced by exactly one
    a = _masked_softmax(s, m)  # (H, N, N)
    y = torch.einsum("hij,jhd->ihd", a, z)  # (N, H, D)
    y = y.reshape(n, -1) if layer.concat else y.mean(1)
    return y + layer.bias if layer.bias is not None else y


GAT_CASES = [
    (v2, share, heads, concat)
    for v2, share in ((False, False), (True, False), (True, True))
    for heads in (1, 2, 4)
    for concat in (True, False)
]


@pytest.mark.parametrize("v2,share,heads,concat", GAT_CASES)
def test_gat_matches_pyg(v2, share, heads, concat):
    n = 12
    x = _x(n, 5)
    ours, ref = _gat_pair(5, 3, heads, concat, v2, share)
    for ei in (_graph(n, 8, loops=True), _graph(n, 9, loops=False)):
        torch.testing.assert_close(ours(x, ei), ref(x, ei), atol=ATOL, rtol=0)


@pytest.mark.parametrize("v2,share,heads,concat", GAT_CASES)
def test_gat_matches_dense(v2, share, heads, concat):
    n = 12
    x = _x(n, 5, seed=1)
    out = 3 * heads if concat else 3
    layer = GATLayer(5, out, heads=heads, concat=concat, v2=v2, share_weights=share).double()
    _rand_(layer)
    ei = _graph(n, 10, loops=True)
    dup = torch.cat([ei, ei[:, :4]], 1)  # duplicate edges count twice in the softmax
    pos = torch.rand(n, 3, generator=_gen(2), dtype=D64)
    for g in (ei, dup, graphs.knn_graph(pos, 4)):
        torch.testing.assert_close(layer(x, g), _dense_gat(layer, x, g), atol=ATOL, rtol=0)


@pytest.mark.parametrize("v2", [False, True])
def test_gat_without_self_loops_matches_dense_and_pyg(v2):
    n = 10
    x = _x(n, 4)
    ei = _graph(n, 11, loops=True)
    ours, ref = _gat_pair(4, 2, 2, True, v2)
    ours.add_self_loops = ref.add_self_loops = False
    want = _dense_gat(ours, x, ei)
    torch.testing.assert_close(ours(x, ei), want, atol=ATOL, rtol=0)
    torch.testing.assert_close(ref(x, ei), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("heads", [1, 3])
def test_gat_attention_rows_sum_to_one_with_one_loop_per_node(v2, heads):
    n = 9
    ei = _graph(n, 12, loops=True)
    layer = GATLayer(4, 2 * heads, heads=heads, v2=v2).double()
    used, alpha = layer.attention_weights(_x(n, 4), ei)
    assert alpha.shape == (used.size(1), heads)
    loops = used[0] == used[1]
    assert torch.equal(used[0][loops].sort().values, torch.arange(n))
    assert used.size(1) == int((ei[0] != ei[1]).sum()) + n
    sums = torch.zeros(n, heads, dtype=D64).index_add_(0, used[1], alpha)
    torch.testing.assert_close(sums, torch.ones(n, heads, dtype=D64), atol=ATOL, rtol=0)
    assert bool((alpha > 0).all())


def test_gat_dropout_acts_on_attention_while_training_only():
    n = 20
    x = _x(n, 4)
    ei = _graph(n, 13, loops=False, p=0.5)
    layer = GATLayer(4, 8, heads=2, dropout=0.5).double()
    _rand_(layer)
    layer.eval()
    want = _dense_gat(layer, x, ei)
    torch.testing.assert_close(layer(x, ei), want, atol=ATOL, rtol=0)
    layer.train()
    torch.manual_seed(0)
    got = layer(x, ei)
    assert (got - want).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# invariances, shared by the three operators
# --------------------------------------------------------------------------------------------


def _layer(kind: str, c_in: int = 4) -> torch.nn.Module:
    if kind == "gcn":
        layer = GCNLayer(c_in, 6)
    else:
        layer = GATLayer(c_in, 6, heads=2, v2=kind == "gatv2")
    layer = layer.double()
    _rand_(layer)
    return layer


KINDS = ["gcn", "gat", "gatv2"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loops", [False, True])
def test_edge_order_does_not_matter(kind, loops):
    n = 14
    ei = _graph(n, 14, loops=loops)
    (ei,) = graphs.sort_by_target(ei)  # the sorted path of the self-loop insertion
    x = _x(n, 4)
    layer = _layer(kind)
    perm = torch.randperm(ei.size(1), generator=_gen(0))
    torch.testing.assert_close(layer(x, ei[:, perm]), layer(x, ei), atol=ATOL, rtol=0)
    if kind == "gcn":
        w = _weights(ei.size(1))
        torch.testing.assert_close(
            layer(x, ei[:, perm], w[perm]), layer(x, ei, w), atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("kind", KINDS)
def test_permuting_nodes_permutes_the_output(kind):
    n = 13
    ei = _graph(n, 15, loops=True)
    x = _x(n, 4)
    layer = _layer(kind)
    perm = torch.randperm(n, generator=_gen(1))  # new node k is old node perm[k]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    torch.testing.assert_close(layer(x[perm], inv[ei]), layer(x, ei)[perm], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_of_two_graphs_equals_the_two_apart(kind):
    n1, n2 = 9, 7
    e1, e2 = _graph(n1, 16, loops=True), _graph(n2, 17, loops=False)
    x1, x2 = _x(n1, 4, 1), _x(n2, 4, 2)
    layer = _layer(kind)
    batch = torch.cat([e1, e2 + n1], 1)
    got = layer(torch.cat([x1, x2]), batch)
    want = torch.cat([layer(x1, e1), layer(x2, e2)])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_isolated_node_without_self_loops_gives_the_bias(kind):
    n = 8
    ei = _graph(n, 18, loops=False)  # node n - 1 receives nothing
    layer = _layer(kind)
    layer.add_self_loops = False
    y = layer(_x(n, 4), ei)
    assert bool(torch.isfinite(y).all())
    torch.testing.assert_close(y[n - 1], layer.bias.detach(), atol=ATOL, rtol=0)
    assert (y[: n - 1] - layer.bias).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_empty_graph_gives_self_loop_only_output(kind):
    n = 5
    x = _x(n, 4)
    layer = _layer(kind)
    empty = torch.empty(2, 0, dtype=torch.long)
    loops = torch.arange(n).repeat(2, 1)
    torch.testing.assert_close(layer(x, empty), layer(x, loops), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["gcn", "gat", "gatv2", "gatv2_shared"])
def test_every_parameter_gets_a_finite_gradient(kind, check_gradients):
    n = 10
    if kind == "gatv2_shared":
        layer = GATLayer(4, 6, heads=3, v2=True, share_weights=True).double()
    else:
        layer = _layer(kind)
    x = _x(n, 4).requires_grad_()
    ei = _graph(n, 19, loops=True)
    w = _weights(ei.size(1)).requires_grad_() if kind == "gcn" else None
    y = layer(x, ei, w) if kind == "gcn" else layer(x, ei)
    (y * torch.randn(y.shape, generator=_gen(3), dtype=D64)).sum().backward()
    assert check_gradients(layer) > 0
    assert x.grad is not None and float(x.grad.abs().max()) > 0
    if w is not None:
        assert float(w.grad.abs().max()) > 0


def test_gradients_match_pyg():
    n = 10
    x = _x(n, 4)
    ei = _graph(n, 20, loops=True)
    ours, ref = _gat_pair(4, 3, 2, True, v2=True)
    g = torch.randn(n, 6, generator=_gen(4), dtype=D64)
    (ours(x, ei) * g).sum().backward()
    (ref(x, ei) * g).sum().backward()
    torch.testing.assert_close(ours.lin.weight.grad, ref.lin_l.weight.grad, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.attn.similarity.att.grad, ref.att.grad, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------
# self loops and errors
# --------------------------------------------------------------------------------------------


def test_errors():
    x = _x(6, 4)
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]])
    gcn = GCNLayer(4, 3).double()
    with pytest.raises(ValueError, match=r"GCNLayer: x must be a tensor \(N, C\), got tuple"):
        gcn((x, x), ei)
    with pytest.raises(ValueError, match="GCNLayer: x has 5 channels, in_channels is 4"):
        gcn(_x(6, 5), ei)
    with pytest.raises(ValueError, match=r"GCNLayer: edge_weight must be \(3,\), got \(4,\)"):
        gcn(x, ei, torch.ones(4))
    with pytest.raises(ValueError, match=r"node ids in \[0, 6\] but x has 6 nodes"):
        gcn(x, torch.tensor([[0, 6], [1, 2]]))
    with pytest.raises(ValueError, match=r"GATLayer: edge_index must be an int64 tensor"):
        GATLayer(4, 4).double()(x, ei.float())
    with pytest.raises(ValueError, match=r"out_channels \(6\) must be divisible by heads \(4\)"):
        GATLayer(4, 6, heads=4)
    with pytest.raises(ValueError, match="share_weights=True needs v2=True"):
        GATLayer(4, 6, share_weights=True)
    with pytest.raises(ValueError, match=r"heads must be an int >= 1, got 0"):
        GATLayer(4, 6, heads=0)
    assert GATLayer(4, 6, heads=4, concat=False).double()(x, ei).shape == (6, 6)

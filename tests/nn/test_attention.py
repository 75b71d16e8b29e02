"""NodeAttention and its plug-ins against the dense formula, plus invariances and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pcattn import graphs
from pcattn.nn import (
    AdditivePositionalValue,
    Concatenation,
    DotProduct,
    EdgeWeight,
    GATScore,
    GATv2Score,
    IdentityValue,
    LinearValue,
    MemoryKeys,
    NodeAttention,
    RelativeQuadratic,
    SlotValue,
    VectorRelation,
)
from pcattn.nn.dense import dense_aggregate, dense_normalize, multiplicity

D64 = torch.float64
ATOL = 1e-10


def _graphs(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Graph kinds: full, kNN (target-sorted), a shuffled multigraph with isolated nodes."""
    pos = torch.rand(n, 3, generator=gen, dtype=D64)
    e = 3 * n
    src = torch.randint(0, n, (e,), generator=gen)
    dst = torch.randint(0, n - 2, (e,), generator=gen)  # the last two nodes get nothing
    multi = torch.cat([torch.stack([src, dst]), torch.stack([src[:5], dst[:5]])], 1)  # duplicates
    return {
        "full": graphs.full_graph(n),
        "knn": graphs.knn_graph(pos, 4, loop=True),
        "multi": multi[:, torch.randperm(multi.size(1), generator=gen)],
    }


def _x(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=D64)


def _dense_layer(layer: NodeAttention, s: torch.Tensor, m: torch.Tensor, v: torch.Tensor, kind):
    """Y from dense logits ``s (H, N, N)`` or ``(H, Cf, N, N)`` and values ``v (N, H, D)``."""
    a = dense_normalize(s, m, kind)
    y = dense_aggregate(a, v, layer.similarity.share)  # (N, H, D)
    y = y.reshape(y.size(0), -1) if layer.concat else y.mean(1)
    return y + layer.bias if layer.bias is not None else y


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    return t.view(t.size(0), h, -1)  # (N, H, d)


def _rand_bias(layer: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("bias"):
                p.normal_()


@pytest.mark.parametrize("kind", ["full", "knn", "multi"])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize(
    "sim", ["dot_product", "scaled_dot_product", "embedded_gaussian", "concatenation"]
)
def test_dot_and_concat_similarities_match_dense(kind, heads, sim):
    n, c, out = 9, 5, 8
    ei = _graphs(n, torch.Generator().manual_seed(1))[kind]
    layer = NodeAttention(c, out, similarity=sim, heads=heads).double()
    _rand_bias(layer)
    x = _x(n, c)
    f = layer.similarity
    q = _heads(f.query(x), heads)  # (N, H, d)
    k = _heads(f.key(x), heads)
    if sim == "concatenation":
        d = out // heads
        a = torch.einsum("ihd,hd->hi", q, f.weight[:, :d])  # (H, N)
        b = torch.einsum("jhd,hd->hj", k, f.weight[:, d:])
        s = F.relu(a[:, :, None] + b[:, None, :])  # (H, N, N)
    else:
        s = torch.einsum("ihd,jhd->hij", q, k)
        if sim == "scaled_dot_product":
            s = s / (out // heads) ** 0.5
    kind_c = "mean" if sim in ("dot_product", "concatenation") else "softmax"
    m = multiplicity(ei, n, n)
    v = _heads(layer.value.lin(x), heads)
    torch.testing.assert_close(
        layer(x, ei), _dense_layer(layer, s, m, v, kind_c), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("heads", [1, 3])
def test_gaussian_uses_raw_features(heads):
    n, c = 8, 6
    ei = graphs.full_graph(n)
    layer = NodeAttention(c, c, similarity="gaussian", heads=heads, value="identity").double()
    x = _x(n, c)
    s = torch.einsum("ihd,jhd->hij", _heads(x, heads), _heads(x, heads))
    y = _dense_layer(layer, s, multiplicity(ei, n, n), _heads(x, heads), "softmax")
    torch.testing.assert_close(layer(x, ei), y, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["knn", "multi"])
@pytest.mark.parametrize("heads,concat", [(1, True), (2, True), (4, False)])
def test_gat_and_gatv2_scores_match_dense(kind, heads, concat):
    n, c, d = 10, 4, 3
    ei = _graphs(n, torch.Generator().manual_seed(2))[kind]
    x = _x(n, c, 3)
    m = multiplicity(ei, n, n)
    out = d * heads if concat else d
    v1 = NodeAttention(c, out, similarity="gat", heads=heads, concat=concat).double()
    z = _heads(v1.value.lin(x), heads)  # (N, H, d)
    sc = v1.similarity
    e = (z * sc.att_dst).sum(-1).t()[:, :, None] + (z * sc.att_src).sum(-1).t()[:, None, :]
    ref = _dense_layer(v1, F.leaky_relu(e, 0.2), m, z, "softmax")
    torch.testing.assert_close(v1(x, ei), ref, atol=ATOL, rtol=0)

    v2 = NodeAttention(c, out, similarity="gatv2", heads=heads, concat=concat).double()
    zl = _heads(v2.value.lin(x), heads)
    zr = _heads(v2.similarity.lin_r(x), heads)
    hid = F.leaky_relu(zr[:, None] + zl[None, :], 0.2)  # (N_i, N_j, H, d)
    s = torch.einsum("ijhd,hd->hij", hid, v2.similarity.att[0])
    torch.testing.assert_close(v2(x, ei), _dense_layer(v2, s, m, zl, "softmax"), atol=ATOL, rtol=0)


def test_gat_static_ranking_and_gatv2_dynamic():
    """GAT ranks keys the same for every query (static); GATv2 need not."""
    torch.manual_seed(0)
    n = 12
    x = _x(n, 4, 5)
    ei = graphs.full_graph(n)
    for sim, static in (("gat", True), ("gatv2", False)):
        layer = NodeAttention(4, 8, similarity=sim).double()
        _, w = layer.attention_weights(x, ei)
        order = torch.argsort(w.view(n, n), dim=1)  # (N, N) key ranking of each query
        assert bool((order == order[0]).all()) is static


@pytest.mark.parametrize("norm", ["sym", "mean", "none", "softmax", "double"])
def test_edge_weight_with_every_normaliser(norm):
    n = 8
    gen = torch.Generator().manual_seed(4)
    ei = graphs.add_self_loops(_graphs(n, gen)["multi"], num_nodes=n)[0]
    w = torch.rand(ei.size(1), generator=gen, dtype=D64) + 0.1
    layer = NodeAttention(3, 5, similarity=EdgeWeight(), normalize=norm).double()
    x = _x(n, 3, 6)
    s = torch.zeros(n, n, dtype=D64).index_put_((ei[1], ei[0]), w, accumulate=True)
    m = multiplicity(ei, n, n)
    if norm in ("softmax", "double"):
        # duplicates sum their weights in s, so give every duplicate the same weight
        w = s[ei[1], ei[0]] / m[ei[1], ei[0]]
        s = s / m.clamp_min(1)
    else:
        s = torch.where(m > 0, s / m.clamp_min(1), s)
    v = _heads(layer.value.lin(x), 1)
    y = layer(x, ei, edge_weight=w)
    torch.testing.assert_close(y, _dense_layer(layer, s[None], m, v, norm), atol=ATOL, rtol=0)


def test_relative_quadratic_attends_to_its_shift():
    """Head h with a large alpha copies the value at p_i + Delta_h."""
    gen = torch.Generator().manual_seed(5)
    h, w = 4, 5
    x, pos, _ = graphs.image_to_nodes(torch.randn(1, 3, h, w, generator=gen, dtype=D64))
    ei = graphs.full_graph(h * w)
    centers = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=D64)
    sim = RelativeQuadratic(2, alpha=3.0, centers=centers).double()
    layer = NodeAttention(6, 6, similarity=sim, value=IdentityValue(6, heads=2), heads=2)
    layer = layer.double()
    xx = x.repeat(1, 2)  # (N, 6): both heads see the pixel
    # dense: softmax_j(-alpha ||(p_j - p_i) - Delta||^2)
    rel = (pos[None, :, :] - pos[:, None, :]).double()  # (N_i, N_j, 2)
    s = -3.0 * ((rel[None] - centers[:, None, None]) ** 2).sum(-1)  # (H, N, N)
    ref = _dense_layer(layer, s, multiplicity(ei, h * w, h * w), _heads(xx, 2), "softmax")
    y = layer(xx, ei, pos.double())
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=0)
    with torch.no_grad():
        sim.alpha.fill_(60.0)
    y = layer(xx, ei, pos.double())
    img = x.view(h, w, 3)
    torch.testing.assert_close(
        y[: (h - 1) * w].view(h - 1, w, 6)[:, :, 3:], img[1:], atol=1e-12, rtol=0
    )
    torch.testing.assert_close(y.view(h, w, 6)[:, : w - 1, :3], img[:, 1:], atol=1e-12, rtol=0)


@pytest.mark.parametrize("share", ["interleaved", "contiguous"])
@pytest.mark.parametrize("relation", ["subtraction", "sum", "hadamard", "concat"])
def test_vector_relation_matches_dense(share, relation):
    n, c, cf, d = 10, 4, 3, 6
    pos = torch.rand(n, 3, generator=torch.Generator().manual_seed(7), dtype=D64)
    ei = graphs.knn_graph(pos, 5, loop=True)
    pe = torch.nn.Linear(3, d).double()  # rho: shared by the score and the value
    width = 2 * 6 if relation == "concat" else 6
    sim = VectorRelation(
        c,
        6,
        cf,
        relation=relation,
        pos="concat" if relation == "concat" else "add",
        pos_channels=6,
        share=share,
    )
    if relation == "concat":
        sim.mapping = torch.nn.Linear(width + 6, cf)
    value = AdditivePositionalValue(c, d)
    layer = NodeAttention(c, d, similarity=sim, value=value, pos_encoding=pe).double()
    x = _x(n, c, 8)
    rel = pos[None, :, :] - pos[:, None, :]  # (N_i, N_j, 3): p_j - p_i
    rho = pe(rel)  # (N, N, 6)
    q, k = sim.query(x)[:, None].expand(n, n, -1), sim.key(x)[None].expand(n, n, -1)
    r = {"subtraction": q - k, "sum": q + k, "hadamard": q * k, "concat": torch.cat([q, k], -1)}
    r = r[relation]
    r = torch.cat([r, rho], -1) if relation == "concat" else r + rho
    s = sim.mapping(r).permute(2, 0, 1)[None]  # (1, Cf, N, N)
    a = dense_normalize(s, multiplicity(ei, n, n), "softmax")  # (1, Cf, N, N)
    vals = value.lin(x)[None, :, :] + rho  # (N_i, N_j, D): value depends on the edge
    pick = torch.arange(d) % cf if share == "interleaved" else torch.arange(d) // (d // cf)
    y = torch.einsum("cij,ijc->ic", a[0][pick], vals) + layer.bias
    torch.testing.assert_close(layer(x, ei, pos), y, atol=ATOL, rtol=0)


def test_channel_sharing_maps_differ():
    """The interleaved and contiguous maps give different outputs (so a mix-up is caught)."""
    torch.manual_seed(0)
    n = 8
    pos = torch.rand(n, 3, dtype=D64)
    ei = graphs.knn_graph(pos, 4, loop=True)
    x = _x(n, 4)
    outs = []
    for share in ("interleaved", "contiguous"):
        torch.manual_seed(1)
        sim = VectorRelation(4, 4, 2, pos=None, share=share)
        layer = NodeAttention(4, 8, similarity=sim, value=LinearValue(4, 8)).double()
        outs.append(layer(x, ei, pos))
    assert (outs[0] - outs[1]).abs().max() > 1e-3


@pytest.mark.parametrize("heads", [1, 2])
def test_memory_slots_with_double_normalisation(heads):
    """External attention: S learned slots as sources, softmax over queries then L1 over slots."""
    n, d, slots = 7, 4, 5
    sim = MemoryKeys(d, slots, heads=heads)
    layer = NodeAttention(
        d * heads,
        d * heads,
        similarity=sim,
        normalize="double",
        value=SlotValue(slots, d, heads=heads),
        heads=heads,
        bias=False,
    ).double()
    x = _x(n, d * heads, 9)
    src = torch.arange(slots).repeat(n)
    dst = torch.arange(n).repeat_interleave(slots)
    y = layer((None, x), torch.stack([src, dst]), num_src=slots)
    a = torch.einsum("nhd,sd->hns", _heads(x, heads), sim.memory.weight)  # (H, N, S)
    a = torch.softmax(a, dim=1)  # over the queries
    a = a / (1e-9 + a.sum(-1, keepdim=True))  # over the slots
    ref = torch.einsum("hns,ds->nhd", a, layer.value.memory.weight).reshape(n, -1)
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=0)


def test_bipartite_queries_differ_from_keys():
    gen = torch.Generator().manual_seed(10)
    pos = torch.rand(30, 3, generator=gen, dtype=D64)
    centres = graphs.fps(pos, ratio=0.25)
    ei = graphs.knn(pos, pos[centres], 5)  # sources: all points; targets: the centres
    x = _x(30, 4)
    layer = NodeAttention((4, 4), 6, similarity="scaled_dot_product", heads=2).double()
    y = layer((x, x[centres]), ei, (pos, pos[centres]))
    f = layer.similarity
    q = _heads(f.query(x[centres]), 2)
    k = _heads(f.key(x), 2)
    s = torch.einsum("ihd,jhd->hij", q, k) / 3**0.5
    m = multiplicity(ei, centres.numel(), 30)
    ref = _dense_layer(layer, s, m, _heads(layer.value.lin(x), 2), "softmax")
    assert y.shape == (centres.numel(), 6)
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# invariances
# ---------------------------------------------------------------------------------------------


def _layers():
    torch.manual_seed(3)
    return {
        "softmax": NodeAttention(4, 6, similarity="scaled_dot_product", heads=2),
        "gat": NodeAttention(4, 6, similarity="gat", heads=3),
        "mean": NodeAttention(4, 6, similarity="dot_product"),
        "vector": NodeAttention(
            4,
            4,
            similarity=VectorRelation(4, 4, 2),
            value=AdditivePositionalValue(4, 4),
            pos_encoding=torch.nn.Linear(3, 4),
        ),
    }


@pytest.mark.parametrize("name", ["softmax", "gat", "mean", "vector"])
def test_permutations_and_batching(name):
    layer = _layers()[name].double()
    gen = torch.Generator().manual_seed(11)
    pos_a, pos_b = (
        torch.rand(9, 3, generator=gen, dtype=D64),
        torch.rand(6, 3, generator=gen, dtype=D64),
    )
    x_a, x_b = _x(9, 4, 1), _x(6, 4, 2)
    ei_a, ei_b = graphs.knn_graph(pos_a, 4, loop=True), graphs.knn_graph(pos_b, 3, loop=True)
    y_a, y_b = layer(x_a, ei_a, pos_a), layer(x_b, ei_b, pos_b)

    # a batch of two equals the two apart
    pos = torch.cat([pos_a, pos_b])
    batch = torch.tensor([0] * 9 + [1] * 6)
    ei = torch.cat([ei_a, ei_b + 9], 1)
    y = layer(torch.cat([x_a, x_b]), ei, pos)
    torch.testing.assert_close(y, torch.cat([y_a, y_b]), atol=ATOL, rtol=0)
    assert graphs.knn_graph(pos, 4, batch, loop=True).size(1) > 0

    # permuting the edges changes nothing
    perm = torch.randperm(ei.size(1), generator=gen)
    torch.testing.assert_close(layer(torch.cat([x_a, x_b]), ei[:, perm], pos), y, atol=ATOL, rtol=0)

    # permuting the nodes permutes the output
    p = torch.randperm(15, generator=gen)
    inv = torch.argsort(p)
    y_p = layer(torch.cat([x_a, x_b])[p], inv[ei], pos[p])
    torch.testing.assert_close(y_p, y[p], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["softmax", "gat", "mean", "vector"])
def test_isolated_nodes_and_empty_graph(name):
    layer = _layers()[name].double()
    with torch.no_grad():
        layer.bias.zero_()
    x, pos = _x(5, 4), torch.rand(5, 3, dtype=D64)
    ei = torch.tensor([[0, 1, 2], [1, 2, 1]])  # nodes 0, 3, 4 receive nothing
    y = layer(x, ei, pos)
    assert torch.isfinite(y).all()
    assert (y[[0, 3, 4]] == 0).all() and (y[[1, 2]] != 0).any()
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
    empty = layer(x, torch.empty(2, 0, dtype=torch.long), pos)
    assert empty.shape == (5, layer.out_channels) and (empty == 0).all()
    no_nodes = layer(x[:0], torch.empty(2, 0, dtype=torch.long), pos[:0])
    assert no_nodes.shape == (0, layer.out_channels)


def test_attention_weights_are_the_forward_weights():
    torch.manual_seed(4)
    layer = NodeAttention(4, 6, similarity="scaled_dot_product", heads=2).double()
    x = _x(7, 4)
    ei = graphs.full_graph(7)
    ei_out, w = layer.attention_weights(x, ei)
    assert torch.equal(ei_out, ei) and w.shape == (49, 2)
    torch.testing.assert_close(
        w.view(7, 7, 2).sum(1), torch.ones(7, 2, dtype=D64), atol=1e-12, rtol=0
    )
    v = _heads(layer.value.lin(x), 2)  # (N, H, D)
    y = torch.einsum("ijh,jhd->ihd", w.view(7, 7, 2), v).reshape(7, 6) + layer.bias
    torch.testing.assert_close(layer(x, ei), y, atol=ATOL, rtol=0)


def test_dropout_only_in_training():
    torch.manual_seed(5)
    layer = NodeAttention(4, 4, similarity="gat", dropout=0.5).double()
    x, ei = _x(8, 4), graphs.full_graph(8)
    layer.eval()
    assert torch.equal(layer(x, ei), layer(x, ei))
    layer.train()
    assert not torch.allclose(layer(x, ei), layer(x, ei))


def test_gradcheck():
    torch.manual_seed(6)
    layer = NodeAttention(3, 4, similarity="gatv2", heads=2).double()
    x = _x(5, 3).requires_grad_()
    ei = graphs.full_graph(5)
    assert torch.autograd.gradcheck(lambda t: layer(t, ei), (x,))


# "vector": its mapping gamma is a Linear, so gamma(q_i - k_j + rho_ij) = gamma(q_i) - W k_j +
# W rho_ij, and gamma(q_i) is constant over the neighbours of each channel's softmax: the whole
# query and the key and mapping biases cancel (a nonlinear gamma, as in Point Transformer,
# keeps them)
_DEAD = {
    "vector": {
        name: "constant over the neighbours of a softmax (linear gamma)"
        for name in (
            "similarity.query.weight",
            "similarity.query.bias",
            "similarity.key.bias",
            "similarity.mapping.bias",
        )
    },
}


def test_gradients_reach_every_parameter(check_gradients):
    for name, layer in _layers().items():
        layer = layer.double()
        pos = torch.rand(8, 3, dtype=D64)
        y = layer(_x(8, 4), graphs.knn_graph(pos, 3, loop=True), pos)
        y.square().sum().backward()
        assert check_gradients(layer, _DEAD.get(name, {})) > 0, name


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_errors_name_the_argument():
    layer = NodeAttention(4, 6, heads=2)
    x = torch.randn(5, 4)
    ei = graphs.full_graph(5)
    with pytest.raises(ValueError, match=r"NodeAttention: x has 3 channels, in_channels is 4"):
        layer(torch.randn(5, 3), ei)
    with pytest.raises(ValueError, match=r"source ids in \[0, 7\] but there are 5 source nodes"):
        layer(x, torch.tensor([[0, 7], [1, 2]]))
    with pytest.raises(
        ValueError, match=r"edge_index must be an int64 tensor \(2, E\), got \(3, 2\)"
    ):
        layer(x, torch.zeros(3, 2, dtype=torch.long))
    bad = torch.rand(5, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"pos contains NaN or inf \(first at row 2"):
        layer(x, ei, bad)
    with pytest.raises(ValueError, match=r"out_channels \(7\) must be divisible by heads \(2\)"):
        NodeAttention(4, 7, heads=2)
    with pytest.raises(ValueError, match=r"similarity must be one of .* got 'cosine'"):
        NodeAttention(4, 4, similarity="cosine")
    with pytest.raises(ValueError, match=r"normalize must be one of .* got 'l2'"):
        NodeAttention(4, 4, normalize="l2")
    with pytest.raises(ValueError, match=r"RelativeQuadratic needs pos or rel_pos"):
        NodeAttention(4, 4, similarity=RelativeQuadratic(1))(x, ei)
    with pytest.raises(ValueError, match=r"edge_weight must be \(25,\), got \(3,\)"):
        layer(x, ei, edge_weight=torch.ones(3))
    with pytest.raises(ValueError, match=r"value gives 1 heads x 6 channels, but heads=2"):
        NodeAttention(4, 6, heads=2, similarity=DotProduct(4, 6), value=LinearValue(4, 6))


def test_similarity_modules_are_plain_modules():
    """Plug-ins register their parameters (they train and save with the layer)."""
    layer = NodeAttention(4, 4, similarity=Concatenation(4, 4), normalize="mean")
    names = {n for n, _ in layer.named_parameters()}
    assert {"similarity.query.weight", "similarity.key.weight", "similarity.weight"} <= names
    assert {"value.lin.weight", "bias"} <= names
    gat = NodeAttention(4, 4, similarity=GATScore(4), value=LinearValue(4, 4))
    assert {"similarity.att_src", "similarity.att_dst"} <= {n for n, _ in gat.named_parameters()}
    assert isinstance(NodeAttention(4, 4, similarity="gatv2").similarity, GATv2Score)

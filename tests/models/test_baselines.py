"""DGCNN and PointNet++ against dense re-implementations of the papers' formulas (written
here with explicit loops: own kNN, own farthest point sampling, own ball query, own
interpolation, layers evaluated from their parameters), plus batching, permutation,
gradient and error checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from pcattn.models.dgcnn import DGCNNCls, DGCNNSeg, EdgeConv
from pcattn.models.pointnet2 import PointNet2Cls, PointNet2Seg, SetAbstraction

D64 = torch.float64
ATOL = 1e-10
SIZES = (64, 80)
NUM_CATEGORIES = 4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(module: nn.Module, seed: int = 1) -> nn.Module:
    """Random float64 weights and BatchNorm statistics, so eval-mode BN is a real affine map."""
    module.to(D64)
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=D64) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=D64) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=D64) + 0.5)
    return module.eval()


def _clouds(sizes=SIZES, in_channels: int = 3, seed: int = 0) -> list[Data]:
    g = _gen(seed)
    out = []
    for i, n in enumerate(sizes):
        pos = torch.rand(n, 3, generator=g, dtype=D64)
        x = torch.randn(n, in_channels, generator=g, dtype=D64)
        out.append(Data(pos=pos, x=x, category=torch.tensor([(i + 1) % NUM_CATEGORIES])))
    return out


# --------------------------------------------------------------------------------------------
# dense references
# --------------------------------------------------------------------------------------------


def _layers(h: Tensor, module: nn.Module) -> Tensor:
    """Eval-mode Linear / BatchNorm1d / (Leaky)ReLU / Dropout layers of ``module``, in order,
    computed from their parameters."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            h = h @ m.weight.t() + (0.0 if m.bias is None else m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            h = (h - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias
        elif isinstance(m, nn.LeakyReLU):
            h = torch.where(h > 0, h, m.negative_slope * h)
        elif isinstance(m, nn.ReLU):
            h = torch.where(h > 0, h, torch.zeros_like(h))
        elif not isinstance(m, (nn.Sequential, nn.ModuleList, nn.Dropout)):
            raise AssertionError(f"reference does not know {type(m).__name__}")
    return h


def _nearest(d2: Tensor, ids: Tensor, k: int) -> Tensor:
    """The ``k`` candidates with the smallest (squared distance, index)."""
    order = sorted(range(ids.numel()), key=lambda t: (float(d2[t]), int(ids[t])))
    return ids[order[:k]]


def _smallest(batch: Tensor) -> int:
    return min(int((batch == b).sum()) for b in batch.unique())


def _ref_edgeconv(conv: EdgeConv, x: Tensor, batch: Tensor, graph: Tensor | None = None):
    """max over the k nearest j (in ``graph`` space, default ``x``; the point itself
    included) of h([x_i; x_j - x_i])."""
    g = x if graph is None else graph
    k = min(conv.k, _smallest(batch))
    rows = []
    for i in range(x.size(0)):
        ids = torch.nonzero(batch == batch[i]).flatten()
        nbr = _nearest(((g[ids] - g[i]) ** 2).sum(1), ids, k)
        e = torch.cat([x[i].expand(k, -1), x[nbr] - x[i]], dim=1)  # (k, 2 C)
        rows.append(_layers(_layers(e, conv.lin), conv.rest).max(0).values)
    return torch.stack(rows)


def _ref_fps(pos: Tensor, batch: Tensor, ratio: float) -> Tensor:
    """Textbook farthest point sampling from each cloud's first point."""
    out = []
    for b in batch.unique():
        ids = torch.nonzero(batch == b).flatten()
        p = pos[ids]
        take = math.ceil(ratio * ids.numel())
        chosen = [0]
        mind = torch.full((ids.numel(),), math.inf, dtype=D64)
        while len(chosen) < take:
            mind = torch.minimum(mind, ((p - p[chosen[-1]]) ** 2).sum(1))
            chosen.append(int(torch.argmax(mind)))
        out.append(ids[chosen])
    return torch.cat(out)


def _ref_sa(sa: SetAbstraction, x: Tensor, pos: Tensor, batch: Tensor):
    """max over the ball (nearest ``max_neighbors`` within ``radius``) of mlp([p_j - p_c; x_j])."""
    centres = _ref_fps(pos, batch, sa.ratio)
    rows = []
    for c in centres:
        ids = torch.nonzero(batch == batch[c]).flatten()
        d2 = ((pos[ids] - pos[c]) ** 2).sum(1)
        inside = d2 <= sa.radius**2
        nbr = _nearest(d2[inside], ids[inside], sa.max_neighbors)
        h = _layers(torch.cat([pos[nbr] - pos[c], x[nbr]], dim=1), sa.mlp)
        rows.append(h.max(0).values)
    return torch.stack(rows), pos[centres], batch[centres]


def _ref_interpolate(x, pos, batch, pos_to, batch_to, k: int = 3) -> Tensor:
    k = min(k, _smallest(batch))
    rows = []
    for i in range(pos_to.size(0)):
        ids = torch.nonzero(batch == batch_to[i]).flatten()
        d2_all = ((pos[ids] - pos_to[i]) ** 2).sum(1)
        nbr = _nearest(d2_all, ids, k)
        w = 1.0 / (((pos[nbr] - pos_to[i]) ** 2).sum(1) + 1e-8)  # (k,)
        rows.append((w[:, None] * x[nbr]).sum(0) / w.sum())
    return torch.stack(rows)


def _cloud_mean(h: Tensor, batch: Tensor) -> Tensor:
    return torch.stack([h[batch == b].mean(0) for b in range(int(batch.max()) + 1)])


def _cloud_max(h: Tensor, batch: Tensor) -> Tensor:
    return torch.stack([h[batch == b].max(0).values for b in range(int(batch.max()) + 1)])


def _ref_dgcnn(model, data) -> Tensor:
    x = torch.cat([data.pos, data.x], dim=1)
    xs = []
    for i, conv in enumerate(model.convs):
        x = _ref_edgeconv(conv, x, data.batch, data.pos if i == 0 else None)
        xs.append(x)
    e = _layers(torch.cat(xs, dim=1), model.emb)
    if isinstance(model, DGCNNCls):
        g = torch.cat([_cloud_max(e, data.batch), _cloud_mean(e, data.batch)], dim=1)
        return _layers(g, model.head)
    onehot = nn.functional.one_hot(data.category[data.batch], NUM_CATEGORIES).to(D64)
    g = _cloud_max(e, data.batch)[data.batch]
    return _layers(torch.cat([g, _layers(onehot, model.category), *xs], dim=1), model.head)


def _ref_pointnet2(model, data) -> Tensor:
    x0 = torch.cat([data.pos, data.x], dim=1)
    levels = [(x0, data.pos, data.batch)]
    for sa in model.levels:
        levels.append(_ref_sa(sa, *levels[-1]))
    x, pos, batch = levels[-1]
    g = _cloud_max(_layers(torch.cat([pos, x], dim=1), model.global_level.mlp), batch)
    if isinstance(model, PointNet2Cls):
        return _layers(g, model.head)
    onehot = nn.functional.one_hot(data.category[data.batch], NUM_CATEGORIES).to(D64)
    levels[0] = (torch.cat([onehot, x0], dim=1), data.pos, data.batch)
    x, pos, batch = g, None, None
    for fp, (skip, pos_s, batch_s) in zip(model.fp_levels, reversed(levels), strict=True):
        up = x[batch_s] if pos is None else _ref_interpolate(x, pos, batch, pos_s, batch_s)
        x, pos, batch = _layers(torch.cat([up, skip], dim=1), fp.mlp), pos_s, batch_s
    return _layers(x, model.head)


# --------------------------------------------------------------------------------------------
# models, small
# --------------------------------------------------------------------------------------------

_PN2 = dict(
    ratios=(0.5, 0.5),
    radii=(0.3, 0.5),
    max_neighbors=(8, 12),
    sa_channels=((8, 12), (12, 16)),
    global_channels=(16, 24),
)


def _make(name: str) -> nn.Module:
    if name == "dgcnn_cls":
        return DGCNNCls(3, 5, k=6, channels=(8, 8, 12, 16), emb_channels=24, head_channels=(16, 12))
    if name == "dgcnn_seg":
        return DGCNNSeg(
            3,
            7,
            num_categories=NUM_CATEGORIES,
            k=6,
            channels=(8, 8, 8),
            edge_layers=(2, 2, 1),
            emb_channels=24,
            category_channels=6,
            head_channels=(16, 16, 12),
        )
    if name == "pointnet2_cls":
        return PointNet2Cls(3, 5, head_channels=(16, 12), **_PN2)
    if name == "pointnet2_seg":
        return PointNet2Seg(
            3,
            7,
            num_categories=NUM_CATEGORIES,
            fp_channels=((16,), (16, 12), (12, 12)),
            head_channels=(12,),
            **_PN2,
        )
    raise AssertionError(name)


MODELS = ["dgcnn_cls", "dgcnn_seg", "pointnet2_cls", "pointnet2_seg"]


# --------------------------------------------------------------------------------------------
# layers against the dense references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("sizes", [SIZES, (5, 30)])  # (5, 30): k = 8 capped at 5
def test_edgeconv_matches_dense_reference(num_layers, sizes):
    conv = _randomise(EdgeConv(4, 6, k=8, num_layers=num_layers))
    g = _gen(3)
    x = torch.randn(sum(sizes), 4, generator=g, dtype=D64)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    with torch.no_grad():
        out = conv(x, batch)
        ref = _ref_edgeconv(conv, x, batch)
    assert out.shape == (sum(sizes), 6)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_edgeconv_uses_given_graph():
    """With ``edge_index`` (here the kNN graph of other coordinates) no graph is rebuilt."""
    conv = _randomise(EdgeConv(4, 6, k=5))
    g = _gen(4)
    x = torch.randn(50, 4, generator=g, dtype=D64)
    pos = torch.rand(50, 3, generator=g, dtype=D64)
    batch = torch.zeros(50, dtype=torch.long)
    idx = [_nearest(((pos - pos[i]) ** 2).sum(1), torch.arange(50), 5) for i in range(50)]
    edge_index = torch.stack(
        [torch.cat(idx), torch.arange(50).repeat_interleave(5)]
    )  # dense-built kNN of pos, self included, sorted by target
    with torch.no_grad():
        out = conv(x, batch, edge_index)
    torch.testing.assert_close(out, _ref_edgeconv(conv, x, batch, graph=pos), atol=ATOL, rtol=0)
    assert not torch.allclose(out, _ref_edgeconv(conv, x, batch))  # differs from x's graph


@pytest.mark.parametrize(("radius", "max_neighbors"), [(0.3, 6), (0.25, 64)])
def test_set_abstraction_matches_dense_reference(radius, max_neighbors):
    """(0.3, 6): most balls are cut to their 6 nearest; (0.25, 64): none is, some hold only
    their centre or a few points."""
    sa = _randomise(
        SetAbstraction(4, (8, 10), ratio=0.3, radius=radius, max_neighbors=max_neighbors)
    )
    g = _gen(5)
    pos = torch.rand(sum(SIZES), 3, generator=g, dtype=D64)
    x = torch.randn(sum(SIZES), 4, generator=g, dtype=D64)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor(SIZES))
    with torch.no_grad():
        out, pos_c, batch_c = sa(x, pos, batch)
    ref, ref_pos, ref_batch = _ref_sa(sa, x, pos, batch)
    assert out.shape == (math.ceil(0.3 * 64) + math.ceil(0.3 * 80), 10)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert torch.equal(pos_c, ref_pos) and torch.equal(batch_c, ref_batch)


# --------------------------------------------------------------------------------------------
# models against the dense references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_model_matches_dense_reference(name):
    model = _randomise(_make(name))
    data = Batch.from_data_list(_clouds())
    with torch.no_grad():
        out = model(data)
        ref = (_ref_dgcnn if name.startswith("dgcnn") else _ref_pointnet2)(model, data)
    expect = (2, 5) if name.endswith("cls") else (sum(SIZES), 7)
    assert out.shape == expect
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------
# invariances
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_batch_equals_clouds_apart(name):
    model = _randomise(_make(name))
    clouds = _clouds(seed=7)
    with torch.no_grad():
        together = model(Batch.from_data_list(clouds))
        apart = [model(c) for c in clouds]  # a lone Data is one cloud
    assert together.shape == ((2, 5) if name.endswith("cls") else (sum(SIZES), 7))
    torch.testing.assert_close(together, torch.cat(apart), atol=ATOL, rtol=0)


def _permute(clouds: list[Data], keep_first: bool, seed: int) -> tuple[list[Data], list[Tensor]]:
    g = _gen(seed)
    out, perms = [], []
    for c in clouds:
        n = c.pos.size(0)
        perm = torch.randperm(n, generator=g)
        if keep_first:  # the first point stays first: farthest point sampling starts there
            perm = torch.cat([torch.tensor([0]), perm[perm != 0]])
        out.append(Data(pos=c.pos[perm], x=c.x[perm], category=c.category))
        perms.append(perm)
    return out, perms


@pytest.mark.parametrize("name", MODELS)
def test_permuting_points(name):
    """DGCNN: any permutation within a cloud permutes the part logits and leaves the class
    logits unchanged. PointNet++ samples its centres from each cloud's first point, so only
    permutations keeping that point first leave the centres (hence the output) unchanged."""
    model = _randomise(_make(name))
    clouds = _clouds(seed=8)
    permuted, perms = _permute(clouds, keep_first=name.startswith("pointnet2"), seed=9)
    assert not all(torch.equal(p, torch.arange(p.numel())) for p in perms)
    with torch.no_grad():
        out = model(Batch.from_data_list(clouds))
        out_p = model(Batch.from_data_list(permuted))
    if name.endswith("cls"):
        torch.testing.assert_close(out_p, out, atol=ATOL, rtol=0)
    else:
        offsets = [0, SIZES[0]]
        index = torch.cat([p + o for p, o in zip(perms, offsets, strict=True)])
        torch.testing.assert_close(out_p, out[index], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------
# training step, tiny clouds
# --------------------------------------------------------------------------------------------


# With clouds of 64 to 80 points every last embedding BatchNorm bias before a per-cloud max
# shifts that max equally in every cloud (all maxima are past the ReLU's kink), and the next
# BatchNorm (the head's, or the first feature propagation's) removes the shift: zero in exact
# arithmetic. With a 5-point cloud some maxima sit at the kink and the bias is alive.
_DEAD_AT_LARGE = {
    "dgcnn_seg": {"emb.1.bias"},
    "pointnet2_cls": {"global_level.mlp.4.bias"},
    "pointnet2_seg": {"global_level.mlp.4.bias"},
}


@pytest.mark.parametrize("name", MODELS)
# three clouds: with two, a classifier head's train-mode BatchNorm maps every sample to +-1 and
# starves the layers before it (their gradients fall to about 1e-8 of the largest); 5 points is
# smaller than k and the balls
@pytest.mark.parametrize("sizes", [(64, 80, 72), (5, 40, 33)])
def test_train_step_gives_every_parameter_a_gradient(name, sizes, check_gradients):
    torch.manual_seed(0)
    model = _make(name).to(D64).train()
    data = Batch.from_data_list(_clouds(sizes, seed=11))
    out = model(data)
    n = len(sizes) if name.endswith("cls") else sum(sizes)
    c = 5 if name.endswith("cls") else 7
    assert out.shape == (n, c) and bool(torch.isfinite(out).all())
    target = torch.arange(n) % c
    nn.functional.cross_entropy(out, target).backward()
    why = "a shift of a per-cloud max that the next BatchNorm removes"
    dead = dict.fromkeys(_DEAD_AT_LARGE.get(name, ()), why) if min(sizes) > 5 else {}
    assert check_gradients(model, dead) > 0


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_wrong_feature_width_is_an_error(name):
    data = Batch.from_data_list(_clouds(in_channels=2))
    with pytest.raises(ValueError, match=r"expects data\.x of shape \(N, 3\), got \(144, 2\)"):
        _make(name).eval()(data)


@pytest.mark.parametrize("name", ["dgcnn_seg", "pointnet2_seg"])
def test_category_errors(name):
    model = _make(name).eval()
    clouds = _clouds()
    clouds[1].category = torch.tensor([7])
    with pytest.raises(ValueError, match=r"category must be in \[0, 4\), got values in \[1, 7\]"):
        model(Batch.from_data_list(clouds))
    for c in clouds:
        del c.category
    with pytest.raises(ValueError, match=r"needs data\.category .* \(2\), got none"):
        model(Batch.from_data_list(clouds))


def test_constructor_errors():
    with pytest.raises(ValueError, match="one entry per set abstraction level"):
        PointNet2Cls(0, 5, ratios=(0.5,), radii=(0.2, 0.4))
    with pytest.raises(ValueError, match=r"fp_channels needs one entry .* \(3\), got 2"):
        PointNet2Seg(0, 5, num_categories=2, fp_channels=((8,), (8,)))
    with pytest.raises(ValueError, match="channels and edge_layers"):
        DGCNNSeg(0, 5, num_categories=2, channels=(8, 8), edge_layers=(1,))
    with pytest.raises(ValueError, match=r"k must be an int >= 1, got 0"):
        EdgeConv(3, 8, k=0)
    with pytest.raises(ValueError, match=r"EdgeConv expects x of shape \(N, 3\), got \(4, 2\)"):
        EdgeConv(3, 8, k=2)(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))

"""The model registry and the attention models: a smoke test over every entry of ``MODELS``
(forward, backward, every parameter reached), the config contract of the constructors, the
point-hierarchy pieces of ``common`` against dense re-implementations written here (own
farthest point sampling, own kNN by a distance matrix, own interpolation, layers evaluated
from their parameters), batching, per-stage operators, the residual attention block against
its formula, and the GCN node classifier against the dense matrix product."""

from __future__ import annotations

import inspect
import math
import re
import typing

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from pcattn.models import (
    MODELS,
    OPERATORS,
    AttentionBlock,
    AttentionNetCls,
    AttentionNetSeg,
    GraphNodeClassifier,
)
from pcattn.models.common import (
    TransitionDown,
    TransitionUp,
    category_onehot,
    global_pool,
    interpolate,
    node_features,
)
from pcattn.nn import ExternalAttention, GATLayer, PointTransformerLayer

D64 = torch.float64
ATOL = 1e-10
IN_CHANNELS = 3
NUM_CLASSES = 5
NUM_PARTS = 7
NUM_CATEGORIES = 3
TASKS = {"classification", "segmentation", "node"}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(module: nn.Module, seed: int = 1, scale: float = 0.3) -> nn.Module:
    """float64, random weights and BatchNorm statistics (eval-mode BN is then a real affine
    map), eval mode."""
    module.to(D64)
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=D64) * scale)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=D64) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=D64) + 0.5)
    return module.eval()


def _clouds(sizes, in_channels: int = IN_CHANNELS, seed: int = 0) -> list[Data]:
    g = _gen(seed)
    out = []
    for i, n in enumerate(sizes):
        pos = torch.rand(n, 3, generator=g, dtype=D64)
        x = torch.randn(n, in_channels, generator=g, dtype=D64)
        out.append(Data(pos=pos, x=x, category=torch.tensor([(i + 1) % NUM_CATEGORIES])))
    return out


def _batch_of(sizes) -> Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


# --------------------------------------------------------------------------------------------
# dense references
# --------------------------------------------------------------------------------------------


def _bn(h: Tensor, m: nn.BatchNorm1d) -> Tensor:
    return (h - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias


def _layers(h: Tensor, module: nn.Module) -> Tensor:
    """Eval-mode Linear / BatchNorm1d / ReLU / Dropout layers of ``module``, in order,
    computed from their parameters."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            h = h @ m.weight.t() + (0.0 if m.bias is None else m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            h = _bn(h, m)
        elif isinstance(m, nn.ReLU):
            h = torch.where(h > 0, h, torch.zeros_like(h))
        elif not isinstance(m, (nn.Sequential, nn.Dropout)):
            raise AssertionError(f"reference does not know {type(m).__name__}")
    return h


def _nearest(cands: Tensor, ids: Tensor, query: Tensor, k: int) -> Tensor:
    """The ``k`` of ``ids`` (ascending) whose positions ``cands`` are nearest to ``query``,
    by a full distance vector; ties to the smaller index (stable sort)."""
    d2 = ((cands - query) ** 2).sum(1)
    order = torch.sort(d2, stable=True).indices
    return ids[order[:k]]


def _ref_fps(pos: Tensor, batch: Tensor, stride: int) -> Tensor:
    """Textbook farthest point sampling, ``ceil(n / stride)`` points from each cloud's first."""
    out = []
    for b in batch.unique():
        ids = torch.nonzero(batch == b).flatten()
        p = pos[ids]
        take = -(-ids.numel() // stride)
        chosen = [0]
        mind = torch.full((ids.numel(),), math.inf, dtype=pos.dtype)
        while len(chosen) < take:
            mind = torch.minimum(mind, ((p - p[chosen[-1]]) ** 2).sum(1))
            chosen.append(int(torch.argmax(mind)))
        out.append(ids[chosen])
    return torch.cat(out)


def _ref_transition_down(td: TransitionDown, x: Tensor, pos: Tensor, batch: Tensor, k: int):
    """max over the k nearest j (dense distances, the centre included) of mlp([p_j - p_i; x_j])
    at the farthest-point centres."""
    centres = _ref_fps(pos, batch, td.stride)
    rows = []
    for c in centres:
        ids = torch.nonzero(batch == batch[c]).flatten()
        nbr = _nearest(pos[ids], ids, pos[c], k)
        e = torch.cat([pos[nbr] - pos[c], x[nbr]], dim=1)  # (k, D + C)
        rows.append(_layers(e, td.mlp).max(0).values)
    return torch.stack(rows), pos[centres], batch[centres]


def _ref_interpolate(x, pos, batch, pos_to, batch_to, k: int = 3) -> Tensor:
    rows = []
    for i in range(pos_to.size(0)):
        ids = torch.nonzero(batch == batch_to[i]).flatten()
        nbr = _nearest(pos[ids], ids, pos_to[i], k)
        w = 1.0 / (((pos[nbr] - pos_to[i]) ** 2).sum(1) + 1e-8)  # (k,)
        rows.append((w[:, None] * x[nbr]).sum(0) / w.sum())
    return torch.stack(rows)


def _dense_knn_edges(pos: Tensor, batch: Tensor, k: int) -> Tensor:
    """kNN graph (self included) built from a distance matrix, sorted by target."""
    src = []
    for i in range(pos.size(0)):
        ids = torch.nonzero(batch == batch[i]).flatten()
        src.append(_nearest(pos[ids], ids, pos[i], k))
    return torch.stack([torch.cat(src), torch.arange(pos.size(0)).repeat_interleave(k)])


# --------------------------------------------------------------------------------------------
# small instances of every registered model
# --------------------------------------------------------------------------------------------

_ATTN = dict(channels=(8, 16, 32), blocks=(1, 1, 1), k=8, stride=4)
_PN2 = dict(
    ratios=(0.5, 0.5),
    radii=(0.3, 0.5),
    max_neighbors=(8, 12),
    sa_channels=((8, 12), (12, 16)),
    global_channels=(16, 24),
)
_SMALL: dict[str, dict] = {
    "point_transformer_cls": dict(_ATTN),
    "point_transformer_seg": dict(_ATTN, num_categories=NUM_CATEGORIES),
    "attention_net_cls": dict(_ATTN, operators=("point_transformer", "gat", "external"), slots=8),
    "attention_net_seg": dict(
        _ATTN, num_categories=NUM_CATEGORIES, operators=("san", "gcn", "offset")
    ),
    "dgcnn_cls": dict(k=6, channels=(8, 8, 12), emb_channels=16, head_channels=(16, 12)),
    "dgcnn_seg": dict(
        num_categories=NUM_CATEGORIES,
        k=6,
        channels=(8, 8),
        edge_layers=(2, 1),
        emb_channels=16,
        category_channels=4,
        head_channels=(16, 12),
    ),
    "pointnet2_cls": dict(_PN2, head_channels=(16, 12)),
    "pointnet2_seg": dict(
        _PN2,
        num_categories=NUM_CATEGORIES,
        fp_channels=((16,), (16, 12), (12,)),
        head_channels=(12,),
    ),
    "graph_node_classifier": dict(hidden=8, layers=2),
}


def _expected_task(name: str) -> str:
    """What the config name says the model does."""
    if name.endswith("_cls"):
        return "classification"
    if name.endswith("_seg"):
        return "segmentation"
    assert name == "graph_node_classifier", name
    return "node"


# A bias whose only effect is a per-channel constant that the next layer removes in training:
# a train-mode BatchNorm (which subtracts the batch mean) or a softmax over the neighbours
# (invariant to a shift of all logits of a target). Its gradient is zero up to round-off, so
# the "every parameter gets a gradient" rule cannot hold for it; each entry says why.
# Inside an attention block: the parameter's name below ``<block>.op.layer.``, per operator.
_OP_SHIFT_CANCELLED: dict[str, set[str]] = {
    # q_i - k_j turns the query and key biases into one constant that enters the mapping MLP
    # through its leading BatchNorm; mapping.net.2 is followed by a BatchNorm; mapping.net.5 is
    # the last logit bias before the softmax over neighbours; the value bias adds a constant
    # (the weights of a target sum to one) that the block's bn2 removes; the positional MLP's
    # first bias is followed by a BatchNorm, its last adds a constant to the values and to the
    # mapping's BatchNorm input
    "point_transformer": {
        "attn.similarity.query.bias",
        "attn.similarity.key.bias",
        "attn.similarity.mapping.net.2.bias",
        "attn.similarity.mapping.net.5.bias",
        "attn.value.lin.bias",
        "attn.pos_encoding.net.0.bias",
        "attn.pos_encoding.net.3.bias",
    },
    # as Point Transformer: query / key biases, the last logit bias, the value bias
    "san": {
        "attn.similarity.query.bias",
        "attn.similarity.key.bias",
        "attn.similarity.mapping.5.bias",
        "attn.value.lin.bias",
    },
    # the output bias, followed by the block's bn2 (GATv2's value bias also enters its
    # scores, so it is not cancelled)
    "gat": {"attn.bias"},
    "gatv2": {"attn.bias"},
    "gcn": {"attn.bias"},
    # the value bias (softmax rows sum to one, then the block's own norm), the key bias
    # (theta_i . b is constant over j: softmax), the output norm's bias (then bn2)
    "non_local": {"g.bias", "phi.bias", "norm.bias"},
    # a Linear followed by its BatchNorm; the value bias (the weights of a target sum to one
    # up to the normaliser's 1e-9 eps, then that BatchNorm)
    "offset": {"trans.bias", "attn.value.lin.bias"},
    "external": set(),
}
# Whole models at the sizes of _SMALL: a last BatchNorm bias that only reaches the output
# through a per-cloud max, which it shifts equally in every cloud (the max is past the ReLU's
# kink), before the head's (or the first feature propagation's) BatchNorm.
_MODEL_SHIFT_CANCELLED: dict[str, set[str]] = {
    "dgcnn_seg": {"emb.1.bias"},
    "pointnet2_cls": {"global_level.mlp.4.bias"},
    "pointnet2_seg": {"global_level.mlp.4.bias"},
}


def _shift_cancelled(model: nn.Module, model_name: str, param_name: str) -> bool:
    if param_name in _MODEL_SHIFT_CANCELLED.get(model_name, ()):
        return True
    block, sep, tail = param_name.partition(".op.layer.")
    return bool(sep) and tail in _OP_SHIFT_CANCELLED[model.get_submodule(block).operator]


def _make(name: str) -> nn.Module:
    cls = MODELS[name]
    if name == "graph_node_classifier":
        return cls(6, 4, **_SMALL[name])
    out = NUM_CLASSES if cls.task == "classification" else NUM_PARTS
    return cls(IN_CHANNELS, out, **_SMALL[name])


def _input(name: str, sizes=(40, 56)) -> Data:
    if name == "graph_node_classifier":
        g = _gen(21)
        n = 30
        edge_index = torch.randint(0, n, (2, 90), generator=g)
        edge_index = edge_index[:, edge_index[0] != edge_index[1]]
        return Data(x=torch.randn(n, 6, generator=g, dtype=D64), edge_index=edge_index)
    return Batch.from_data_list(_clouds(sizes, seed=11))


def _wake_zero_init(model: nn.Module) -> None:
    """A weight initialised to zero (the non-local block's output BatchNorm scale, after Wang
    et al.) stops the gradient behind it on the first step only; give it a nonzero value so
    the check sees the parameters behind it."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and not bool(p.any()):
                p.fill_(1.0)


def _check_gradients(model: nn.Module, name: str, only: str = "") -> int:
    """Every parameter (under ``only``) has a finite gradient; every one but the shift-cancelled
    biases a gradient that is not zero up to round-off. Returns how many were checked."""
    grads = {n: p.grad for n, p in model.named_parameters()}
    for n, g in grads.items():
        assert g is not None, f"{n} has no gradient"
        assert bool(torch.isfinite(g).all()), f"{n} has a non-finite gradient"
    scale = max(float(g.abs().max()) for g in grads.values())
    assert scale > 0
    checked = 0
    for n, g in grads.items():
        if not n.startswith(only) or _shift_cancelled(model, name, n):
            continue
        assert float(g.abs().max()) > 1e-8 * scale, f"{n} gets no gradient"
        checked += 1
    return checked


# --------------------------------------------------------------------------------------------
# registry and constructor contract
# --------------------------------------------------------------------------------------------


def test_registry_has_every_model_once():
    assert len(set(MODELS.values())) == len(MODELS)
    assert set(_SMALL) == set(MODELS)
    for name, cls in MODELS.items():
        assert cls.task in TASKS, name
        assert cls.task == _expected_task(name), name


@pytest.mark.parametrize("name", list(MODELS))
def test_constructor_options_have_types_and_defaults(name):
    """train.py builds a model from a config by keyword and type-checks each value against the
    constructor's annotations, so: two positional ints, then keyword-only options, each with a
    type hint and a default of that type (``num_categories`` is required, segmentation only);
    no ``*args`` / ``**kwargs``."""
    cls = MODELS[name]
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    hints = typing.get_type_hints(cls.__init__)
    assert [p.name for p in params[:2]] == ["in_channels", "num_classes"]
    for p in params[:2]:
        assert p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
        assert hints[p.name] is int
    options = params[2:]
    assert options, name
    for p in options:
        assert p.kind is p.KEYWORD_ONLY, f"{name}.{p.name} is not keyword-only"
        assert p.name in hints, f"{name}.{p.name} has no type hint"
        if p.name == "num_categories":
            assert cls.task == "segmentation" and p.default is p.empty and hints[p.name] is int
            continue
        assert p.default is not p.empty, f"{name}.{p.name} has no default"
        hint = hints[p.name]
        if hint is int:
            assert isinstance(p.default, int) and not isinstance(p.default, bool), p.name
        elif hint is float:
            assert isinstance(p.default, (int, float)) and not isinstance(p.default, bool), p.name
        elif hint in (str, bool):
            assert isinstance(p.default, hint), p.name
    if cls.task == "segmentation":
        assert "num_categories" in [p.name for p in options]


# --------------------------------------------------------------------------------------------
# smoke test: every registered model trains
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_model_forward_backward(name):
    torch.manual_seed(0)
    model = _make(name).to(D64).train()
    _wake_zero_init(model)
    data = _input(name)
    out = model(data)
    if model.task == "classification":
        expect = (2, NUM_CLASSES)
    elif model.task == "segmentation":
        expect = (96, NUM_PARTS)
    else:
        expect = (30, 4)
    assert out.shape == expect
    assert out.dtype == D64 and bool(torch.isfinite(out).all())
    target = torch.arange(expect[0]) % expect[1]
    nn.functional.cross_entropy(out, target).backward()
    assert _check_gradients(model, name) > 0


@pytest.mark.parametrize("name", [n for n in MODELS if n != "graph_node_classifier"])
def test_an_empty_cloud_is_refused_and_a_one_point_cloud_runs(name):
    # an empty cloud would be classified from nothing (PointNet++ did, silently); one point is
    # the smallest real cloud, and every kNN stage caps its k at it
    model = _make(name).to(D64).eval()
    batch = _input(name, sizes=(40, 0))
    with pytest.raises(
        ValueError, match=r"^cloud 1 of the batch has no points; drop empty clouds before"
    ):
        model(batch)
    with pytest.raises(ValueError, match=r"^cloud 0 of the batch has no points"):
        model(_clouds((0,), seed=3)[0])
    out = model(_input(name, sizes=(40, 1)))
    assert out.shape[0] == (2 if model.task == "classification" else 41)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("operator", list(OPERATORS))
def test_every_operator_trains_inside_attention_net(operator):
    torch.manual_seed(0)
    model = (
        AttentionNetCls(
            IN_CHANNELS,
            NUM_CLASSES,
            operators=(operator,),
            channels=(8, 16),
            blocks=(1, 1),
            k=6,
            stride=4,
            slots=8,
        )
        .to(D64)
        .train()
    )
    _wake_zero_init(model)
    out = model(Batch.from_data_list(_clouds((32, 40), seed=12)))
    assert out.shape == (2, NUM_CLASSES) and bool(torch.isfinite(out).all())
    nn.functional.cross_entropy(out, torch.tensor([1, 3])).backward()
    _check_gradients(model, "attention_net_cls")
    for s, stage in enumerate(model.encoder.stages):
        (block,) = stage
        assert block.operator == operator
        assert len(list(block.op.parameters())) > 0, f"{operator} has no parameters"
        assert _check_gradients(model, "attention_net_cls", f"encoder.stages.{s}.0.op.") > 0
    # the exempted biases exist and are cancelled indeed: a stale or wrong entry fails here
    scale = max(float(p.grad.abs().max()) for p in model.parameters())
    own = dict(model.encoder.stages[0][0].op.layer.named_parameters())
    for tail in _OP_SHIFT_CANCELLED[operator]:
        assert float(own[tail].grad.abs().max()) < 1e-8 * scale, tail


# --------------------------------------------------------------------------------------------
# transitions against the dense references
# --------------------------------------------------------------------------------------------


def test_transition_down_matches_dense_reference():
    sizes = (50, 70)
    td = _randomise(TransitionDown(4, 6, stride=4, k=8))
    g = _gen(3)
    pos = torch.rand(sum(sizes), 3, generator=g, dtype=D64)
    x = torch.randn(sum(sizes), 4, generator=g, dtype=D64)
    batch = _batch_of(sizes)
    with torch.no_grad():
        y, pos_d, batch_d = td(x, pos, batch)
        ref, ref_pos, ref_batch = _ref_transition_down(td, x, pos, batch, k=8)
    assert y.shape == (13 + 18, 6)  # ceil(50 / 4) + ceil(70 / 4)
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=0)
    assert torch.equal(pos_d, ref_pos) and torch.equal(batch_d, ref_batch)


def test_transition_down_small_cloud_pools_all_its_points():
    """A cloud of 5 points with k = 8: each kept point max-pools over the whole cloud."""
    sizes = (5, 40)
    td = _randomise(TransitionDown(4, 6, stride=2, k=8))
    g = _gen(4)
    pos = torch.rand(sum(sizes), 3, generator=g, dtype=D64)
    x = torch.randn(sum(sizes), 4, generator=g, dtype=D64)
    batch = _batch_of(sizes)
    with torch.no_grad():
        y, pos_d, batch_d = td(x, pos, batch)
    assert y.shape == (3 + 20, 6)
    assert torch.equal(batch_d, _batch_of((3, 20)))
    small = pos_d[:3]
    for i in range(3):
        e = torch.cat([pos[:5] - small[i], x[:5]], dim=1)  # (5, 7): every point of the cloud
        torch.testing.assert_close(y[i], _layers(e, td.mlp).max(0).values, atol=ATOL, rtol=0)


def _coarse_fine(seed: int):
    g = _gen(seed)
    sizes = (40, 60)
    pos = torch.rand(sum(sizes), 3, generator=g, dtype=D64)
    batch = _batch_of(sizes)
    coarse = _ref_fps(pos, batch, 4)  # coarse points coincide with fine ones: d = 0 occurs
    return pos[coarse], batch[coarse], pos, batch, g


def test_interpolate_matches_dense_reference():
    pos_c, batch_c, pos, batch, g = _coarse_fine(5)
    x = torch.randn(pos_c.size(0), 6, generator=g, dtype=D64)
    out = interpolate(x, pos_c, batch_c, pos, batch)
    assert out.shape == (100, 6)
    ref = _ref_interpolate(x, pos_c, batch_c, pos, batch)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_transition_up_matches_dense_reference():
    pos_c, batch_c, pos, batch, g = _coarse_fine(6)
    tu = _randomise(TransitionUp(8, 5, 6))
    x = torch.randn(pos_c.size(0), 8, generator=g, dtype=D64)
    skip = torch.randn(pos.size(0), 5, generator=g, dtype=D64)
    with torch.no_grad():
        out = tu(x, pos_c, batch_c, skip, pos, batch)
    ref = _layers(skip, tu.fine) + _ref_interpolate(
        _layers(x, tu.coarse), pos_c, batch_c, pos, batch
    )
    assert out.shape == (100, 6)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------

# Clouds of 70 and 90 points, stride 2, k = 8: the stages hold 70 / 35 / 18 and 90 / 45 / 23
# points, so no stage's k (8 for the kNN graphs and transitions down, 3 for the interpolation)
# is capped by the smaller cloud and each cloud sees the same neighbourhoods alone or batched.
_BATCH_SIZES = (70, 90)
_BATCH_NET = dict(channels=(8, 16, 32), blocks=(1, 1, 1), k=8, stride=2, slots=8)


@pytest.mark.parametrize("operators", [("point_transformer",), ("gat", "external", "offset")])
@pytest.mark.parametrize("task", ["cls", "seg"])
def test_batch_equals_clouds_apart(task, operators):
    if task == "cls":
        model = AttentionNetCls(IN_CHANNELS, NUM_CLASSES, operators=operators, **_BATCH_NET)
    else:
        model = AttentionNetSeg(
            IN_CHANNELS,
            NUM_PARTS,
            num_categories=NUM_CATEGORIES,
            operators=operators,
            **_BATCH_NET,
        )
    model = _randomise(model)
    clouds = _clouds(_BATCH_SIZES, seed=7)
    with torch.no_grad():
        together = model(Batch.from_data_list(clouds))
        apart = [model(Batch.from_data_list([c])) for c in clouds]
    n = 2 if task == "cls" else sum(_BATCH_SIZES)
    assert together.shape == (n, NUM_CLASSES if task == "cls" else NUM_PARTS)
    torch.testing.assert_close(together, torch.cat(apart), atol=ATOL, rtol=0)
    assert not torch.allclose(together[0], together[-1])  # the two clouds do differ


# --------------------------------------------------------------------------------------------
# operators per stage
# --------------------------------------------------------------------------------------------


def test_one_operator_per_stage():
    ops = ("point_transformer", "gat", "external")
    model = AttentionNetCls(0, 4, operators=ops, channels=(8, 16, 32), blocks=(1, 2, 1))
    got = [[b.operator for b in stage] for stage in model.encoder.stages]
    assert got == [["point_transformer"], ["gat", "gat"], ["external"]]
    kinds = [type(stage[0].op.layer) for stage in model.encoder.stages]
    assert kinds == [PointTransformerLayer, GATLayer, ExternalAttention]
    seg = AttentionNetSeg(
        0, 4, num_categories=2, operators=ops, channels=(8, 16, 32), blocks=(1, 1, 1)
    )
    assert [b.operator for b in seg.up_blocks] == ["point_transformer", "gat"]
    one = AttentionNetCls(0, 4, operators=("gcn",), channels=(8, 16, 32), blocks=(1, 1, 1))
    assert [stage[0].operator for stage in one.encoder.stages] == ["gcn"] * 3


@pytest.mark.parametrize("cls", [AttentionNetCls, AttentionNetSeg])
def test_operator_errors(cls):
    extra = {"num_categories": 2} if cls is AttentionNetSeg else {}
    msg = "operators must name one operator or one per stage (3), got 2"
    with pytest.raises(ValueError, match=re.escape(msg)):
        cls(0, 4, operators=("gat", "gcn"), channels=(8, 16, 32), blocks=(1, 1, 1), **extra)
    with pytest.raises(ValueError, match="unknown operator 'nope'") as info:
        cls(0, 4, operators=("gat", "nope", "gcn"), channels=(8, 16, 32), blocks=(1, 1, 1), **extra)
    for name in OPERATORS:
        assert repr(name) in str(info.value)


# --------------------------------------------------------------------------------------------
# the residual block against its formula
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("operator", list(OPERATORS))
def test_attention_block_matches_formula(operator):
    """y = relu(x + bn3(W2 relu(bn2(op(relu(bn1(W1 x)))))))"""
    sizes = (20, 26)
    block = _randomise(AttentionBlock(8, operator))
    g = _gen(8)
    x = torch.randn(sum(sizes), 8, generator=g, dtype=D64)
    pos = torch.rand(sum(sizes), 3, generator=g, dtype=D64)
    batch = _batch_of(sizes)
    edge_index = _dense_knn_edges(pos, batch, 6)
    with torch.no_grad():
        out = block(x, edge_index, pos, batch)
        h = _bn(x @ block.linear1.weight.t(), block.bn1).clamp(min=0)
        h = _bn(block.op(h, edge_index, pos, batch), block.bn2).clamp(min=0)
        h = _bn(h @ block.linear2.weight.t(), block.bn3)
        ref = (x + h).clamp(min=0)
    assert out.shape == (sum(sizes), 8)
    assert block.linear1.bias is None and block.linear2.bias is None
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert bool((out > 0).any()) and bool((out == 0).any())  # the final ReLU acts


# --------------------------------------------------------------------------------------------
# common helpers
# --------------------------------------------------------------------------------------------


def test_node_features():
    (c,) = _clouds((10,))
    assert torch.equal(node_features(c, 3), torch.cat([c.pos, c.x], dim=1))
    assert torch.equal(node_features(c, 0), c.pos)
    with pytest.raises(ValueError, match=re.escape("expects data.x of shape (N, 4), got (10, 3)")):
        node_features(c, 4)
    with pytest.raises(ValueError, match=re.escape("expects data.x of shape (N, 2), got none")):
        node_features(Data(pos=c.pos), 2)


def test_category_onehot():
    category = torch.tensor([2, 0])
    batch = _batch_of((3, 2))
    out = category_onehot(category, batch, 4)
    ref = torch.zeros(5, 4)
    for i, b in enumerate(batch.tolist()):
        ref[i, category[b]] = 1.0
    assert torch.equal(out, ref)
    with pytest.raises(
        ValueError, match=re.escape("category must be in [0, 4), got values in [0, 4]")
    ):
        category_onehot(torch.tensor([4, 0]), batch, 4)
    with pytest.raises(ValueError, match=re.escape("got values in [-1, 2]")):
        category_onehot(torch.tensor([2, -1]), batch, 4)


@pytest.mark.parametrize("reduce", ["mean", "max", "sum"])
def test_global_pool_matches_loop(reduce):
    g = _gen(9)
    sizes = (4, 7, 3)
    x = torch.randn(sum(sizes), 5, generator=g, dtype=D64)
    batch = _batch_of(sizes)
    out = global_pool(x, batch, 3, reduce)
    rows = []
    for b in range(3):
        part = x[batch == b]
        rows.append({"mean": part.mean(0), "max": part.max(0).values, "sum": part.sum(0)}[reduce])
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, torch.stack(rows), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------
# node classification
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_gcn_node_classifier_matches_dense(symmetric):
    """Two GCN layers: D^-1/2 (A + I) D^-1/2 X W^T + b, ReLU, again; A[i, j] = 1 for an edge
    j -> i and D the row sums of A + I (the in-degree plus the loop). Node 11 is isolated."""
    n = 12
    g = _gen(10)
    a = (torch.rand(n - 1, n - 1, generator=g) < 0.3).to(D64)
    if symmetric:
        a = torch.triu(a, 1)
        a = a + a.t()
    a.fill_diagonal_(0.0)
    a = nn.functional.pad(a, (0, 1, 0, 1))  # (n, n): the isolated node
    dst, src = torch.nonzero(a, as_tuple=True)
    edge_index = torch.stack([src, dst])
    x = torch.randn(n, 5, generator=g, dtype=D64)
    model = GraphNodeClassifier(5, 3, operator="gcn", hidden=8, layers=2, dropout=0.0)
    model = _randomise(model, seed=2)
    with torch.no_grad():
        out = model(Data(x=x, edge_index=edge_index))
    a_hat = a + torch.eye(n, dtype=D64)
    d = a_hat.sum(1).rsqrt()
    norm = d[:, None] * a_hat * d[None, :]
    l1, l2 = model.layers
    h = (norm @ x @ l1.lin.weight.t() + l1.bias).clamp(min=0)
    ref = norm @ h @ l2.lin.weight.t() + l2.bias
    assert out.shape == (n, 3)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cls", [AttentionNetCls, AttentionNetSeg])
def test_a_lone_data_is_one_cloud(cls):
    torch.manual_seed(0)
    cloud = Data(pos=torch.randn(40, 3, dtype=torch.float64), category=torch.tensor([1]))
    extra = {"num_categories": 2} if cls is AttentionNetSeg else {}
    model = cls(0, 3, channels=(8, 16), blocks=(1, 1), k=4, **extra).double().eval()
    with torch.no_grad():
        alone = model(cloud)
        batched = model(Batch.from_data_list([cloud]))
    assert torch.equal(alone, batched)


def test_segmentation_names_a_missing_or_short_category():
    model = AttentionNetSeg(0, 3, num_categories=2, channels=(8,), blocks=(1,), k=4)
    clouds = Batch.from_data_list([Data(pos=torch.randn(20, 3)) for _ in range(2)])
    with pytest.raises(
        ValueError, match=re.escape("needs data.category with one entry per cloud (2), got none")
    ):
        model(clouds)
    clouds.category = torch.tensor([0])
    with pytest.raises(ValueError, match=re.escape("(2), got (1,)")):
        model(clouds)

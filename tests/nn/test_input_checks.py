"""Every public layer refuses bad input at its boundary with one error naming the argument, and
never turns a bad value into a plausible-looking output.

One registry drives all checks: each public layer of :mod:`pcattn.nn`, how it is called on
nodes, and whether it also takes images. A test fails when a new layer is exported without an
entry here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import pcattn.nn as pnn
from pcattn.graphs import knn_graph

C = 8
N = 24


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    call: str  # "graph": (x, ei) | "points": (x, ei, pos) | "batch": (x, batch=) | "image"
    owner: str  # the name the layer's errors start with
    image: bool  # also takes (B, C, H, W)


LAYERS = {
    "NodeAttention": Case(
        lambda: pnn.NodeAttention(C, C, similarity="dot_product"), "graph", "NodeAttention", False
    ),
    "GCNLayer": Case(lambda: pnn.GCNLayer(C, C), "graph", "GCNLayer", False),
    "GATLayer": Case(lambda: pnn.GATLayer(C, C, heads=2), "graph", "GATLayer", False),
    "MultiHeadSelfAttention": Case(
        lambda: pnn.MultiHeadSelfAttention(C, C, heads=2), "graph", "NodeAttention", False
    ),
    "NonLocalBlock": Case(lambda: pnn.NonLocalBlock(C), "graph", "NonLocalBlock", True),
    "PointTransformerLayer": Case(
        lambda: pnn.PointTransformerLayer(C, C, share_planes=4),
        "points",
        "PointTransformerLayer",
        False,
    ),
    "SANPairwise": Case(
        lambda: pnn.SANPairwise(C, 4, C, kernel_size=3), "points", "SANPairwise", True
    ),
    "OffsetAttention": Case(lambda: pnn.OffsetAttention(C), "batch", "OffsetAttention", False),
    "ExternalAttention": Case(lambda: pnn.ExternalAttention(C), "batch", "ExternalAttention", True),
    "StructuredSelfAttention": Case(
        lambda: pnn.StructuredSelfAttention(C), "batch", "StructuredSelfAttention", False
    ),
    "GlobalContextBlock": Case(
        lambda: pnn.GlobalContextBlock(C, ratio=0.5), "batch", "GlobalContextBlock", True
    ),
    "PositionAttention": Case(
        lambda: pnn.PositionAttention(C, key_channels=4), "batch", "PositionAttention", True
    ),
    "ChannelAttention": Case(lambda: pnn.ChannelAttention(C), "batch", "ChannelAttention", True),
    "DualAttention": Case(
        lambda: pnn.DualAttention(C, pam_channels=4), "batch", "PositionAttention", True
    ),
    "DoubleAttention": Case(lambda: pnn.DoubleAttention(C), "batch", "DoubleAttention", True),
    "EMAttention": Case(lambda: pnn.EMAttention(C, bases=4), "batch", "EMAttention", True),
    "CrissCrossAttention": Case(
        lambda: pnn.CrissCrossAttention(C), "image", "CrissCrossAttention", True
    ),
    "InterlacedSparseAttention": Case(
        lambda: pnn.InterlacedSparseAttention(C, block=(2, 2), channels=4),
        "image",
        "InterlacedSparseAttention",
        True,
    ),
    "PyramidKeyAttention": Case(
        lambda: pnn.PyramidKeyAttention(C, key_channels=4, pool_scales=(1, 2)),
        "image",
        "PyramidKeyAttention",
        True,
    ),
    "SANPatchwise": Case(
        lambda: pnn.SANPatchwise(C, 4, C, kernel_size=3), "image", "SANPatchwise", True
    ),
    "GridConv": Case(lambda: pnn.GridConv(C, C, kernel_size=3), "image", "GridConv", True),
    "ConvAttention": Case(
        lambda: pnn.ConvAttention(C, C, kernel_size=3), "image", "ConvAttention", True
    ),
    "LocalSelfAttention": Case(
        lambda: pnn.LocalSelfAttention(C, C, kernel_size=3, heads=2),
        "image",
        "LocalSelfAttention",
        True,
    ),
}


def _inputs(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(N, 3, generator=g)
    batch = torch.arange(2).repeat_interleave(N // 2)
    return torch.randn(N, C, generator=g), knn_graph(pos, 5, batch, loop=True), pos, batch


def _image(seed: int = 0, h: int = 5, w: int = 6) -> Tensor:
    return torch.randn(2, C, h, w, generator=torch.Generator().manual_seed(seed))


def _run(name: str, layer: nn.Module, x: Tensor, ei: Tensor, pos: Tensor, batch: Tensor):
    call = LAYERS[name].call
    if call == "graph":
        return layer(x, ei)
    if call == "points":
        return layer(x, ei, pos[:, :2] if name == "SANPairwise" else pos)
    if call == "batch":
        return layer(x, batch=batch)
    return layer(x)  # images


def _call(name: str, x: Tensor | None = None, **change) -> Tensor:
    """Run layer ``name`` in eval mode on valid inputs with ``change`` applied."""
    torch.manual_seed(0)
    layer = LAYERS[name].build().eval()
    xs, ei, pos, batch = _inputs()
    if LAYERS[name].call == "image":
        xs = _image()
    args = dict(x=xs if x is None else x, ei=ei, pos=pos, batch=batch)
    args.update(change)
    return _run(name, layer, **args)


def test_every_public_layer_is_in_the_registry():
    # the layers are the exported modules other than NodeAttention's building blocks (f, C, g)
    blocks = (pnn.Similarity, pnn.Normalizer, pnn.ValueTransform)
    exported = (getattr(pnn, n) for n in pnn.__all__)
    layers = {
        obj.__name__
        for obj in exported
        if isinstance(obj, type) and issubclass(obj, nn.Module) and not issubclass(obj, blocks)
    }
    assert layers == set(LAYERS)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_valid_input_runs(name):
    out = _call(name)
    expected = {"image": (2, C, 5, 6)}.get(LAYERS[name].call, (N, C))
    if name == "StructuredSelfAttention":  # one embedding of r hops per sample
        expected = (2, 30, C)
    assert tuple(out.shape) == expected
    assert torch.isfinite(out).all()


def _features(name: str) -> Tensor:
    return _image() if LAYERS[name].call == "image" else _inputs()[0]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_integer_features_are_refused(name):
    owner = LAYERS[name].owner
    with pytest.raises(
        ValueError, match=rf"^{owner}: x must be a floating-point tensor, got torch.int64$"
    ):
        _call(name, x=_features(name).long())


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_features_of_another_dtype_than_the_layer_are_refused(name):
    owner = LAYERS[name].owner
    msg = (
        f"{owner}: x is torch.float64 but the layer's parameters are torch.float32; convert one "
        "of them (layer.to(torch.float64) or x.to(torch.float32))"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        _call(name, x=_features(name).double())


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_double_layer_takes_double_features(name):
    torch.manual_seed(0)
    layer = LAYERS[name].build().double().eval()
    x, ei, pos, batch = _inputs()
    x = _image().double() if LAYERS[name].call == "image" else x.double()
    out = _run(name, layer, x, ei, pos.double(), batch)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["GATLayer", "PointTransformerLayer", "NonLocalBlock"])
def test_autocast_features_are_accepted(name):
    # under autocast the layer casts for itself: bfloat16 features into float32 weights is fine
    x = _inputs()[0].bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _call(name, x=x)
    assert out.shape == (N, C) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", sorted(n for n, c in LAYERS.items() if c.call != "image"))
def test_wrong_channel_count_names_the_layer(name):
    owner, what = LAYERS[name].owner, "channels" if name == "OffsetAttention" else "in_channels"
    with pytest.raises(ValueError, match=rf"^{owner}: x has 5 channels, {what} is {C}$"):
        _call(name, x=_inputs()[0][:, :5])


@pytest.mark.parametrize(
    "name", sorted(n for n, c in LAYERS.items() if c.call in ("graph", "points"))
)
def test_edge_index_on_another_device_is_refused(name):
    # a "meta" tensor stands in for a GPU one: same check, no GPU needed
    owner = name if name in ("GCNLayer", "GATLayer") else "NodeAttention"  # wrappers: inner
    with pytest.raises(
        ValueError,
        match=rf"^{owner}: edge_index is on meta but x is on cpu; they must be on one device$",
    ):
        _call(name, ei=_inputs()[1].to("meta"))


@pytest.mark.parametrize("name", sorted(n for n, c in LAYERS.items() if c.call == "batch"))
def test_batch_on_another_device_is_refused(name):
    with pytest.raises(
        ValueError, match=r"^batch is on meta but x is on cpu; they must be on one device$"
    ):
        _call(name, batch=_inputs()[3].to("meta"))


@pytest.mark.parametrize("name", sorted(n for n, c in LAYERS.items() if c.call == "batch"))
@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda b: b[:-1], rf"^batch has {N - 1} entries but x has {N} rows; they must describe"),
        (lambda b: b.flip(0), r"^batch must be sorted ascending \(nodes grouped by sample\), but"),
        (lambda b: b.float(), r"^batch must be an integer tensor \(int64\), got torch.float32$"),
        (lambda b: b - 1, r"^batch must be non-negative, got min -1$"),
    ],
)
def test_bad_batch_vectors_are_refused(name, bad, message):
    with pytest.raises(ValueError, match=message):
        _call(name, batch=bad(_inputs()[3]))


@pytest.mark.parametrize(
    "name", sorted(n for n, c in LAYERS.items() if c.call in ("graph", "points"))
)
def test_edge_ids_out_of_range_are_refused(name):
    ei = _inputs()[1].clone()
    ei[0, 3] = N
    with pytest.raises(ValueError, match=rf"edge_index has (source|node) ids in \[0, {N}\]"):
        _call(name, ei=ei)
    ei[0, 3] = -1
    with pytest.raises(ValueError, match=r"edge_index has (source|node) ids in \[-1, "):
        _call(name, ei=ei)


@pytest.mark.parametrize("name", sorted(n for n, c in LAYERS.items() if c.call == "points"))
def test_nan_positions_are_refused(name):
    pos = _inputs()[2].clone()
    pos[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"pos contains NaN or inf \(first at row 7: "):
        _call(name, pos=pos)


@pytest.mark.parametrize("name", sorted(n for n, c in LAYERS.items() if c.image))
@pytest.mark.parametrize("shape", [(0, C, 5, 6), (2, C, 0, 6), (2, C, 5, 0)])
def test_empty_images_are_refused(name, shape):
    owner = LAYERS[name].owner
    msg = f"{owner}: x is an empty image {shape}; batch size, height and width must be >= 1"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        torch.manual_seed(0)
        LAYERS[name].build().eval()(torch.zeros(shape))


def _bad_rows(out: Tensor) -> Tensor:
    """Nodes (or pixels, or samples of sentence embeddings) whose output holds a NaN or inf."""
    if out.dim() == 3:  # StructuredSelfAttention (B, r, C): node 3 is in sample 0
        return (~torch.isfinite(out)).flatten(1).any(1).repeat_interleave(N // 2)
    if out.dim() == 4:
        return (~torch.isfinite(out)).any(1).flatten()  # (B*H*W,)
    return (~torch.isfinite(out)).any(1)  # (N,)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_feature_is_never_swallowed(name, value):
    # NaN / inf features are not checked (a full pass per layer); they must then reach the
    # output of every node that attends to them, never be averaged or maxed away into a
    # finite, wrong answer. Node 3 (pixel (0, 0, 0, 3)) is corrupted.
    x = _features(name).clone()
    if x.dim() == 4:
        x[0, 0, 0, 3] = value
    else:
        x[3, 0] = value
    bad = _bad_rows(_call(name, x=x))
    assert bool(bad.any()), "a non-finite input vanished from the output"
    assert bool(bad[3]), "the corrupted node's own output is finite"

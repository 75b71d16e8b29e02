"""One smoke test over every named operator (the timm habit): forward, backward, no NaN, every
parameter reached, a formula-first docstring, and the image / node paths agreeing."""

from __future__ import annotations

import pytest
import torch

import pcattn.nn as pnn
from pcattn import graphs

B, C, H, W = 2, 16, 6, 5


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed))


def _cloud(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(40, 3, generator=g)
    batch = torch.tensor([0] * 25 + [1] * 15)
    return torch.randn(40, C, generator=g), pos, batch


# name -> (factory, call); call(module) runs one forward and returns the output and the input
# tensor whose gradient is checked
def _img_call(m):
    x = _image().requires_grad_()
    return m(x), x


def _edges_call(kind):
    def call(m):
        x, pos, batch = _cloud()
        x.requires_grad_()
        if kind == "knn":
            return m(x, graphs.knn_graph(pos, 8, batch, loop=True), pos), x
        if kind == "graph":
            return m(x, graphs.knn_graph(pos, 6, batch)), x
        if kind == "full":
            return m(x, graphs.full_graph(batch)), x
        return m(x, batch=batch), x

    return call


OPERATORS = {
    "GCNLayer": (lambda: pnn.GCNLayer(C, 8), _edges_call("graph")),
    "GATLayer": (lambda: pnn.GATLayer(C, 4, heads=2), _edges_call("graph")),
    "GATLayer-v2": (lambda: pnn.GATLayer(C, 4, heads=2, v2=True), _edges_call("graph")),
    "PointTransformerLayer": (lambda: pnn.PointTransformerLayer(C, C), _edges_call("knn")),
    "NonLocalBlock": (lambda: pnn.NonLocalBlock(C), _img_call),
    "NonLocalBlock-sub": (lambda: pnn.NonLocalBlock(C, sub_sample=True), _img_call),
    "MultiHeadSelfAttention": (
        lambda: pnn.MultiHeadSelfAttention(C, C, heads=4),
        _edges_call("full"),
    ),
    "StructuredSelfAttention": (
        lambda: pnn.StructuredSelfAttention(C, hidden=8, hops=3),
        _edges_call("batch"),
    ),
    "GridConv": (lambda: pnn.GridConv(C, 8, 3), _img_call),
    "ConvAttention": (lambda: pnn.ConvAttention(C, 8, kernel_size=3), _img_call),
    "LocalSelfAttention": (lambda: pnn.LocalSelfAttention(C, C, kernel_size=3, heads=2), _img_call),
    "SANPairwise": (lambda: pnn.SANPairwise(C, 4, C, kernel_size=3, share_planes=4), _img_call),
    "SANPatchwise": (lambda: pnn.SANPatchwise(C, 4, C, kernel_size=3, share_planes=4), _img_call),
    "OffsetAttention": (lambda: pnn.OffsetAttention(C), _edges_call("batch")),
    "ExternalAttention": (lambda: pnn.ExternalAttention(C, slots=8), _edges_call("batch")),
    "ExternalAttention-mh": (
        lambda: pnn.ExternalAttention(C, slots=8, heads=2),
        _edges_call("batch"),
    ),
    "GlobalContextBlock": (lambda: pnn.GlobalContextBlock(C, ratio=0.25), _img_call),
    "PositionAttention": (lambda: pnn.PositionAttention(C), _img_call),
    "ChannelAttention": (lambda: pnn.ChannelAttention(C), _img_call),
    "DualAttention": (lambda: pnn.DualAttention(C), _img_call),
    "CrissCrossAttention": (lambda: pnn.CrissCrossAttention(C), _img_call),
    "DoubleAttention": (lambda: pnn.DoubleAttention(C), _img_call),
    "InterlacedSparseAttention": (
        lambda: pnn.InterlacedSparseAttention(C, block=(2, 2), channels=8),
        _img_call,
    ),
    "PyramidKeyAttention": (lambda: pnn.PyramidKeyAttention(C, key_channels=8), _img_call),
    "EMAttention": (lambda: pnn.EMAttention(C, bases=4), _img_call),
}

# parameters that get no gradient by design
NO_GRAD = {"EMAttention": {"mid_project.weight", "mid_project.bias"}}


def _wake_zero_inits(m: torch.nn.Module) -> None:
    """Zero-initialised gates and norms block gradients upstream; make them non-zero."""
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad and (p == 0).all():
                p.uniform_(0.5, 1.0)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_forward_backward_every_parameter(name):
    torch.manual_seed(0)
    factory, call = OPERATORS[name]
    m = factory()
    _wake_zero_inits(m)
    y, x = call(m)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in m.named_parameters():
        if pname in NO_GRAD.get(name, ()):
            assert p.grad is None or (p.grad == 0).all(), pname
            continue
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}.{pname}"


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_docstring_states_the_formula(name):
    cls = type(OPERATORS[name][0]())
    doc = cls.__doc__ or ""
    assert ".. math::" in doc and "Args:" in doc and "Shapes:" in doc, cls.__name__
    assert "arxiv.org" in doc or "openreview" in doc or "http" in doc, cls.__name__


def test_every_exported_operator_is_covered():
    names = {n.split("-")[0] for n in OPERATORS}
    exported = {
        n
        for n in pnn.__all__
        if isinstance(getattr(pnn, n), type)
        and issubclass(getattr(pnn, n), torch.nn.Module)
        and not issubclass(getattr(pnn, n), (pnn.Similarity, pnn.Normalizer, pnn.ValueTransform))
        and n != "NodeAttention"
    }
    assert exported == names


IMAGE_OPS = [n for n, (_, call) in OPERATORS.items() if call is _img_call]


@pytest.mark.parametrize("name", sorted(IMAGE_OPS))
def test_image_batch_equals_images_apart(name):
    torch.manual_seed(0)
    m = OPERATORS[name][0]().double().eval()
    _wake_zero_inits(m)
    x = _image(1).double()
    with torch.no_grad():
        y = m(x)
        apart = torch.cat([m(x[:1]), m(x[1:])])
    assert y.shape[0] == B and y.shape[2:] == (H, W)
    torch.testing.assert_close(y, apart, atol=1e-10, rtol=0)

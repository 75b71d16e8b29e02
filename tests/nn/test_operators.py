"""One smoke test over every named operator (the timm habit): forward, backward, no NaN, every
parameter reached, a formula-first docstring, and the image / node paths agreeing."""

from __future__ import annotations

import copy

import pytest
import torch

import pcattn.nn as pnn
from pcattn import graphs

B, C, H, W = 2, 16, 6, 5


def _image(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _cloud(seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(40, 3, generator=g).to(dtype)
    batch = torch.tensor([0] * 25 + [1] * 15)
    return torch.randn(40, C, generator=g).to(dtype), pos, batch


# name -> (factory, call); call(module, dtype) runs one forward and returns the output and the
# input tensor whose gradient is checked
def _img_call(m, dtype=torch.float32):
    x = _image(dtype=dtype).requires_grad_()
    return m(x), x


def _edges_call(kind):
    def call(m, dtype=torch.float32):
        x, pos, batch = _cloud(dtype=dtype)
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

# parameters that get no gradient by design (frozen: requires_grad=False)
NO_GRAD = {"EMAttention": {"mid_project.weight", "mid_project.bias"}}

# Parameters whose gradient is zero in exact arithmetic at these defaults, in training mode
# (round-off decides whether it comes out as 0 or as eps times the others): kept, as in each
# reference, and named with the reason. "shift": one constant added to every logit of a
# softmax, which the softmax removes (a logit bias; q_i . b_k for a key bias; M_k b for
# ExternalAttention's expansion bias). "BN": a per-channel constant that a train-mode
# BatchNorm removes next (a bias before it; a value bias, as a target's weights sum to one).
_SHIFT, _BN = "shift of every logit of one softmax", "constant before a train-mode BatchNorm"
DEAD = {
    "CrissCrossAttention": {"attention.similarity.key.bias": _SHIFT},
    "DoubleAttention": {"gather.similarity.lin.bias": _SHIFT},
    "DualAttention": {"pam.attn.similarity.key.bias": _SHIFT},
    "ExternalAttention-mh": {"attn.similarity.memory.bias": _SHIFT, "expand.bias": _SHIFT},
    "GlobalContextBlock": {"pool.similarity.mask.bias": _SHIFT},
    "InterlacedSparseAttention": {
        f"{s}.attention.value.lin.bias": _BN for s in ("long_range", "short_range")
    },
    "MultiHeadSelfAttention": {"attention.similarity.key.bias": _SHIFT},
    "NonLocalBlock": {"phi.bias": _SHIFT, "g.bias": _BN},
    "NonLocalBlock-sub": {"phi.bias": _SHIFT, "g.bias": _BN},  # max-pooling keeps a constant
    "OffsetAttention": {"trans.bias": _BN, "attn.value.lin.bias": _BN},  # sum 1 up to 1e-9
    "PointTransformerLayer": {
        "attn.similarity.mapping.net.5.bias": _SHIFT,
        "attn.similarity.mapping.net.2.bias": _BN,
        "attn.pos_encoding.net.0.bias": _BN,
        "attn.similarity.query.bias": _BN,  # q_i - k_j: one constant, then gamma's first BN
        "attn.similarity.key.bias": _BN,
    },
    "PositionAttention": {"attn.similarity.key.bias": _SHIFT},
    "PyramidKeyAttention": {"value_project.bias": _BN, "out_project.bias": _BN},
    "SANPairwise": {
        "attn.similarity.query.bias": _BN,
        "attn.similarity.key.bias": _BN,
        "attn.similarity.mapping.5.bias": _SHIFT,
    },
    "SANPatchwise": {"attn.similarity.query.bias": _BN, "attn.similarity.key.bias": _BN},
    "StructuredSelfAttention": {"attention.similarity.ws2.bias": _SHIFT},
}


def _wake_zero_inits(m: torch.nn.Module) -> None:
    """Zero-initialised gates and norms block gradients upstream; make them non-zero."""
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad and (p == 0).all():
                p.uniform_(0.5, 1.0)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_forward_backward_every_parameter(name, check_gradients):
    """Float32 forward and backward are finite; the same module in float64 gives every
    parameter but the dead ones a gradient. Float64 for that check: a gradient that vanishes in
    exact arithmetic is ~1e-16 of the largest there, far below any live one, whereas float32
    round-off (up to ~2e-6 of the largest here) is of the size of the smallest live ones (a
    std-0.001 memory gets ~2e-5)."""
    torch.manual_seed(0)
    factory, call = OPERATORS[name]
    m = factory()
    _wake_zero_inits(m)
    m64 = copy.deepcopy(m).double()
    for module, dtype in ((m, torch.float32), (m64, torch.float64)):
        y, x = call(module, dtype)
        assert y.dtype == dtype and torch.isfinite(y).all()
        y.square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in m.named_parameters():
        assert p.requires_grad == (pname not in NO_GRAD.get(name, ())), f"{name}.{pname}"
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{name}.{pname}"
    assert check_gradients(m64, DEAD.get(name, {})) > 0


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

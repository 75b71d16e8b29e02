"""pcattn.ops against dense references, PyG, gradcheck and torch-scatter (when installed)."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.utils import softmax as pyg_softmax

from pcattn import ops
from pcattn.ops import scatter, scatter_csr, segment_softmax, segment_softmax_csr

# trailing dims: (E,), (E, H), (E, H, D); the last is wide enough for the index kernels
SHAPES = [(), (3,), (2, 4), (2, 16)]


def _random_edges(num_nodes: int, num_edges: int, seed: int, sort: bool = False):
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, num_nodes, (num_edges,), generator=g)
    if sort:
        index = index.sort().values
    return index, g


def _dense_reduce(src: torch.Tensor, index: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    """Reference: a Python loop over target nodes."""
    out = torch.zeros((n,) + src.shape[1:], dtype=src.dtype)
    for i in range(n):
        rows = src[index == i]
        if rows.numel() == 0 or rows.size(0) == 0:
            continue
        if reduce == "sum":
            out[i] = rows.sum(0)
        elif reduce == "mean":
            out[i] = rows.mean(0)
        elif reduce == "max":
            out[i] = rows.max(0).values
        else:
            out[i] = rows.min(0).values
    return out


def _dense_softmax(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Reference: for each target, torch.softmax over its edges."""
    out = torch.empty_like(src)
    for i in range(n):
        mask = index == i
        if mask.any():
            out[mask] = torch.softmax(src[mask], dim=0)
    return out


@pytest.mark.parametrize("reduce", ops.REDUCTIONS)
@pytest.mark.parametrize("trailing", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_scatter_matches_loop_reference(reduce, trailing, seed):
    n = 25  # with 40 random edges some nodes stay empty
    index, g = _random_edges(n, 40, seed)
    src = torch.randn((40,) + trailing, generator=g, dtype=torch.float64)
    out = scatter(src, index, n, reduce)
    ref = _dense_reduce(src, index, n, reduce)
    assert out.shape == (n,) + trailing
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    empty = torch.bincount(index, minlength=n) == 0
    assert empty.any() and (out[empty] == 0).all()


@pytest.mark.parametrize("reduce", ops.REDUCTIONS)
@pytest.mark.parametrize("trailing", SHAPES)
def test_scatter_csr_equals_scatter_on_sorted_edges(reduce, trailing):
    n = 9
    index, g = _random_edges(n, 30, 3, sort=True)
    src = torch.randn((30,) + trailing, generator=g, dtype=torch.float64)
    ptr = ops.index_to_ptr(index, n)
    assert ptr.tolist() == [int((index < i).sum()) for i in range(n + 1)]
    torch.testing.assert_close(
        scatter_csr(src, ptr, reduce), _dense_reduce(src, index, n, reduce), rtol=0, atol=1e-12
    )


def test_dim_size_defaults_to_max_index_plus_one():
    index = torch.tensor([0, 4, 4])
    out = scatter(torch.ones(3), index)
    assert out.tolist() == [1.0, 0.0, 0.0, 0.0, 2.0]


@pytest.mark.parametrize("trailing", SHAPES)
@pytest.mark.parametrize("sort", [False, True])
def test_segment_softmax_matches_dense_and_pyg(trailing, sort):
    n = 13
    index, g = _random_edges(n, 60, 7, sort=sort)
    src = 3 * torch.randn((60,) + trailing, generator=g, dtype=torch.float64)
    out = segment_softmax(src, index, n)
    torch.testing.assert_close(out, _dense_softmax(src, index, n), rtol=0, atol=1e-12)
    # PyG, float32, the acceptance bound of 1e-6
    out32 = segment_softmax(src.float(), index, n)
    ref32 = pyg_softmax(src.float(), index, num_nodes=n)
    assert (out32 - ref32).abs().max() <= 1e-6
    # the rows of every non-empty target sum to one, per trailing position
    sums = scatter(out, index, n)
    has = torch.bincount(index, minlength=n) > 0
    torch.testing.assert_close(sums[has], torch.ones_like(sums[has]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("trailing", SHAPES)
def test_segment_softmax_csr_matches_coo_and_pyg_ptr(trailing):
    n = 10
    index, g = _random_edges(n, 50, 11, sort=True)
    src = torch.randn((50,) + trailing, generator=g)
    ptr = ops.index_to_ptr(index, n)
    out = segment_softmax_csr(src, ptr)
    # float32, two kernels (segment vs scatter reductions): a few ulp (1.2e-7 at 1) apart
    torch.testing.assert_close(out, segment_softmax(src, index, n), rtol=0, atol=1e-6)
    assert (out - pyg_softmax(src, ptr=ptr)).abs().max() <= 1e-6


def test_segment_softmax_is_stable_for_huge_scores():
    index = torch.tensor([0, 0, 0, 1, 1])
    src = torch.tensor([1e4, 1e4 - 1.0, -1e4, -3e4, -3e4 + 2.0])
    out = segment_softmax(src, index, 2)
    assert torch.isfinite(out).all()
    e1 = torch.exp(torch.tensor(-1.0))
    expect = torch.tensor([1 / (1 + e1), e1 / (1 + e1), 0.0, 0.0, 0.0])
    expect[3:] = torch.softmax(torch.tensor([0.0, 2.0]), 0)
    # float32 against a reference rounded in another order (and an exp that differs by an ulp
    # between SIMD widths): 1e-7 is under 2 ulp at 0.73; overflow would give NaN, not 1e-6
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-6)


def test_single_edge_target_gets_weight_one_and_isolated_nodes_are_fine():
    index = torch.tensor([2, 4, 4])
    out = segment_softmax(torch.tensor([5.0, 1.0, 1.0]), index, num_nodes=6)
    assert out.tolist() == [1.0, 0.5, 0.5]


@pytest.mark.parametrize("reduce", ops.REDUCTIONS)
def test_empty_input_gives_zero_rows(reduce):
    src = torch.zeros(0, 4)
    index = torch.zeros(0, dtype=torch.long)
    assert scatter(src, index, 3, reduce).shape == (3, 4)
    assert (scatter(src, index, 3, reduce) == 0).all()
    assert scatter_csr(src, torch.zeros(4, dtype=torch.long), reduce).shape == (3, 4)
    assert segment_softmax(src, index, 3).shape == (0, 4)


@pytest.mark.parametrize("reduce", ops.REDUCTIONS)
def test_scatter_gradcheck(reduce):
    index, g = _random_edges(5, 16, 2)
    # distinct values so max / min have a unique winner (the gradient is then well defined)
    src = torch.randperm(16 * 3, generator=g).double().view(16, 3).div_(7).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: scatter(s, index, 6, reduce), (src,))
    ptr = ops.index_to_ptr(index.sort().values, 6)
    assert torch.autograd.gradcheck(lambda s: scatter_csr(s, ptr, reduce), (src,))


@pytest.mark.parametrize("trailing", SHAPES)
@pytest.mark.parametrize("sort", [False, True])
def test_segment_softmax_gradcheck_and_gradgradcheck(trailing, sort):
    index, g = _random_edges(6, 20, 5, sort=sort)
    src = torch.randn((20,) + trailing, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda s: segment_softmax(s, index, 7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (src,))
    assert torch.autograd.gradgradcheck(fn, (src,))
    if sort:
        ptr = ops.index_to_ptr(index, 7)
        assert torch.autograd.gradcheck(lambda s: segment_softmax_csr(s, ptr), (src,))


def test_softmax_backward_equals_autograd_of_dense_reference():
    index, g = _random_edges(8, 40, 9)
    src = torch.randn(40, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 3, generator=g, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad((segment_softmax(src, index, 8) * w).sum(), src)
    (grad_ref,) = torch.autograd.grad((_dense_softmax(src, index, 8) * w).sum(), src)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=0, atol=1e-12)


def test_deterministic_mode_adds_each_row_in_edge_order():
    index, g = _random_edges(50, 5000, 4)
    src = torch.randn(5000, 8, generator=g) * 1e3
    with ops.deterministic():
        assert ops.is_deterministic()
        a = scatter(src, index, 50)
        b = scatter(src, index, 50)
        m = scatter(src, index, 50, "mean")
    assert not ops.is_deterministic()
    assert torch.equal(a, b)
    # reference: a strictly sequential float32 sum of each target's edges in edge order
    ref = torch.zeros(50, 8)
    for i in range(50):
        acc = torch.zeros(8)
        for row in src[index == i]:
            acc = acc + row
        ref[i] = acc
    assert torch.equal(a, ref)
    ref_mean = _dense_reduce(src.double(), index, 50, "mean").float()
    torch.testing.assert_close(m, ref_mean, rtol=1e-5, atol=1e-3)


def test_torch_deterministic_flag_turns_on_deterministic_mode():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert ops.is_deterministic()
    finally:
        torch.use_deterministic_algorithms(prev)


@pytest.mark.skipif(not ops.torch_scatter_available(), reason="torch-scatter not installed")
@pytest.mark.parametrize("reduce", ops.REDUCTIONS)
def test_torch_scatter_backend_gives_identical_results(reduce):
    index, g = _random_edges(30, 500, 8)
    src = torch.randn(500, 4, 5, generator=g, dtype=torch.float64)
    prev = ops.use_torch_scatter(True)  # forced on, also where "auto" would not use it
    try:
        with_ts = scatter(src, index, 31, reduce)
        sorted_index = index.sort().values
        ptr = ops.index_to_ptr(sorted_index, 31)
        csr_ts = scatter_csr(src, ptr, reduce)
        ops.use_torch_scatter(False)
        torch.testing.assert_close(with_ts, scatter(src, index, 31, reduce), rtol=0, atol=1e-12)
        torch.testing.assert_close(csr_ts, scatter_csr(src, ptr, reduce), rtol=0, atol=1e-12)
    finally:
        ops.use_torch_scatter(prev)


def test_bad_arguments_raise_clear_errors():
    src = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"reduce must be one of \('sum', 'mean', 'max', 'min'\)"):
        scatter(src, torch.zeros(4, dtype=torch.long), 2, "prod")
    with pytest.raises(ValueError, match="index has 3 entries but src has 4 rows"):
        scatter(src, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"index must be a 1-D tensor of shape \(E,\), got \(4, 1"):
        segment_softmax(src, torch.zeros(4, 1, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="index must be int64"):
        scatter(src, torch.zeros(4), 2)
    with pytest.raises(ValueError, match="ptr must be a 1-D tensor"):
        scatter_csr(src, torch.zeros(2, 2, dtype=torch.long))


def test_use_torch_scatter_refuses_unknown_modes():
    with pytest.raises(ValueError, match="mode must be 'auto', True or False, got 'yes'"):
        ops.use_torch_scatter("yes")


# --------------------------------------------------------------------------------------------
# weighted_aggregate: the sparse-product message passing step


def _random_graph(g, n_src, n_dst, e, sorted_edges):
    """``e`` random edges; the last target gets none, the first four are one edge repeated."""
    src = torch.randint(0, n_src, (e,), generator=g)
    dst = torch.randint(0, n_dst - 1, (e,), generator=g)
    src[:4], dst[:4] = 2, 1
    if sorted_edges:
        order = torch.argsort(dst, stable=True)
        src, dst = src[order], dst[order]
    return src, dst


def _aggregate_reference(w, v, src, dst, n):
    out = torch.zeros(n, *v.shape[1:], dtype=v.dtype)
    for e in range(src.numel()):  # one edge at a time, independent of any kernel
        out[dst[e]] += w[e][:, None] * v[src[e]]
    return out


@pytest.mark.parametrize("sorted_edges", [True, False])
def test_weighted_aggregate_matches_a_loop_and_its_gradients(sorted_edges):
    g = torch.Generator().manual_seed(3)
    n_src, n_dst, e, h, d = 9, 7, 40, 3, 5
    src, dst = _random_graph(g, n_src, n_dst, e, sorted_edges)
    w = torch.rand(e, h, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(n_src, h, d, dtype=torch.float64, generator=g, requires_grad=True)
    out = ops.weighted_aggregate(w, v, src, dst, n_dst)
    ref = _aggregate_reference(w, v, src, dst, n_dst)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    assert torch.equal(out[n_dst - 1], torch.zeros(h, d, dtype=torch.float64))
    gout = torch.randn(n_dst, h, d, dtype=torch.float64, generator=g)
    gw, gv = torch.autograd.grad(out, (w, v), gout)
    rw, rv = torch.autograd.grad(ref, (w, v), gout)
    torch.testing.assert_close(gw, rw, atol=1e-12, rtol=0)
    torch.testing.assert_close(gv, rv, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(
        lambda w_, v_: ops.weighted_aggregate(w_, v_, src, dst, n_dst), (w, v)
    )


def test_weighted_aggregate_float32_and_empty_graphs():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(0, 50, (300,), generator=g)
    dst = torch.sort(torch.randint(0, 40, (300,), generator=g)).values
    w, v = torch.rand(300, 4, generator=g), torch.randn(50, 4, 8, generator=g)
    ref = _aggregate_reference(w.double(), v.double(), src, dst, 40).float()
    torch.testing.assert_close(ops.weighted_aggregate(w, v, src, dst, 40), ref, atol=1e-5, rtol=0)
    empty = torch.empty(0, dtype=torch.long)
    out = ops.weighted_aggregate(torch.rand(0, 4), v, empty, empty, 6)
    assert out.shape == (6, 4, 8) and not out.any()
    with pytest.raises(ValueError, match=r"values must be \(N_src, H=4, D\), got \(50, 8\)"):
        ops.weighted_aggregate(w, v[:, 0], src, dst, 40)


def test_weighted_aggregate_in_deterministic_mode_equals_the_sparse_path():
    g = torch.Generator().manual_seed(5)
    src = torch.randint(0, 30, (200,), generator=g)
    dst = torch.randint(0, 25, (200,), generator=g)
    w = torch.rand(200, 2, dtype=torch.float64, generator=g)
    v = torch.randn(30, 2, 4, dtype=torch.float64, generator=g)
    fast = ops.weighted_aggregate(w, v, src, dst, 25)
    with ops.deterministic():
        slow = ops.weighted_aggregate(w, v, src, dst, 25)
        again = ops.weighted_aggregate(w, v, src, dst, 25)
    assert torch.equal(slow, again)
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# vector_attention: online softmax and aggregation over edge chunks


def _vector_reference(v, src, dst, n, logits, query, key, pos, pos_in_logits, share):
    """Edge-by-edge and target-by-target, with an explicit exp / sum softmax per channel."""
    e, c = src.numel(), v.size(1)
    z = torch.stack(
        [
            (logits[i] if logits is not None else 0)
            + (query[dst[i]] if query is not None else 0)
            + (key[src[i]] if key is not None else 0)
            + (pos[i] if pos_in_logits else 0)
            for i in range(e)
        ]
    )  # (E, C_f)
    cf = z.size(1)
    group = torch.arange(c) % cf if share == "interleaved" else torch.arange(c) // (c // cf)
    out = torch.zeros(n, c, dtype=v.dtype)
    for t in range(n):
        edges = (dst == t).nonzero().flatten().tolist()
        if not edges:
            continue
        zt = z[edges]  # (deg, C_f)
        w = torch.exp(zt - zt.max(0).values) / torch.exp(zt - zt.max(0).values).sum(0)
        for row, i in enumerate(edges):
            msg = v[src[i]] + (pos[i] if pos is not None else 0)  # (C,)
            out[t] = out[t] + w[row, group] * msg
    return out


@pytest.mark.parametrize(
    "cf, share, pos_in_logits, chunk",
    [
        (2, "interleaved", False, 1),
        (2, "interleaved", False, 7),
        (4, "contiguous", False, 5),
        (8, "interleaved", True, 3),
        (8, "contiguous", True, 1000),
        (1, "contiguous", False, 11),
    ],
)
def test_vector_attention_matches_a_loop_and_its_gradients(cf, share, pos_in_logits, chunk):
    g = torch.Generator().manual_seed(cf + chunk)
    n_src, n_dst, e, c = 9, 8, 60, 8
    src = torch.randint(0, n_src, (e,), generator=g)
    dst = torch.randint(0, n_dst - 1, (e,), generator=g)  # the last target has no edge
    src[:4], dst[:4] = 2, 1  # duplicate edges
    dst[dst == 3] = 4  # an empty target between others (a chunk spans it)

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g).requires_grad_()

    v, logits, q, k, pos = t(n_src, c), t(e, cf), t(n_dst, cf), t(n_src, cf), t(e, c)
    logits.data.mul_(3.0)  # spread the weights
    args = (v, src, dst, n_dst)
    out = ops.vector_attention(
        *args, logits=logits, query=q, key=k, pos=pos, pos_in_logits=pos_in_logits,
        share=share, chunk_edges=chunk,
    )  # fmt: skip
    ref = _vector_reference(*args, logits, q, k, pos, pos_in_logits, share)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    assert torch.equal(out[n_dst - 1], torch.zeros(c, dtype=torch.float64))
    assert torch.equal(out[3], torch.zeros(c, dtype=torch.float64))
    gout = torch.randn(n_dst, c, dtype=torch.float64, generator=g)
    inputs = (v, logits, q, k, pos)
    for got, want in zip(
        torch.autograd.grad(out, inputs, gout),
        torch.autograd.grad(ref, inputs, gout),
        strict=True,
    ):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    few = slice(0, 12)  # gradcheck on the first 12 edges (its cost grows with E x chunks)
    assert torch.autograd.gradcheck(
        lambda *a: ops.vector_attention(
            a[0],
            src[few],
            dst[few],
            n_dst,
            logits=a[1],
            query=a[2],
            key=a[3],
            pos=a[4],
            pos_in_logits=pos_in_logits,
            share=share,
            chunk_edges=chunk,
        ),  # fmt: skip
        (v, logits[few].detach().requires_grad_(), q, k, pos[few].detach().requires_grad_()),
    )


def test_vector_attention_chunks_do_not_change_float32_results():
    g = torch.Generator().manual_seed(1)
    n, e, c, cf = 300, 5000, 16, 4
    src = torch.randint(0, n, (e,), generator=g)
    dst = torch.randint(0, n, (e,), generator=g)  # unsorted: sorted inside
    v, logits = torch.randn(n, c, generator=g), 4 * torch.randn(e, cf, generator=g)
    pos = torch.randn(e, c, generator=g)
    whole = ops.vector_attention(v, src, dst, n, logits=logits, pos=pos, chunk_edges=e)
    ref = _vector_reference(v.double(), src, dst, n, logits.double(), None, None, pos.double(),
                            False, "interleaved").float()  # fmt: skip
    torch.testing.assert_close(whole, ref, atol=1e-5, rtol=0)
    for chunk in (1, 64, 999):
        part = ops.vector_attention(v, src, dst, n, logits=logits, pos=pos, chunk_edges=chunk)
        torch.testing.assert_close(part, whole, atol=1e-5, rtol=0)


def test_vector_attention_large_logits_stay_finite():
    # logits of 1e4 overflow exp(); the running max keeps every chunk's exponent <= 0
    src = torch.tensor([0, 1, 2, 0, 1])
    dst = torch.tensor([0, 0, 0, 1, 1])
    logits = torch.tensor([[1e4], [1e4 - 1.0], [-1e4], [5.0], [5.0]], dtype=torch.float64)
    v = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    out = ops.vector_attention(v, src, dst, 2, logits=logits, chunk_edges=1)
    w = torch.tensor([1.0, math.exp(-1.0)], dtype=torch.float64)
    want0 = float((w * torch.tensor([1.0, 2.0], dtype=torch.float64)).sum() / w.sum())
    torch.testing.assert_close(out[:, 0], torch.tensor([want0, 1.5], dtype=torch.float64))


def test_vector_attention_errors():
    v = torch.randn(5, 8)
    src, dst = torch.tensor([0, 1]), torch.tensor([0, 0])
    with pytest.raises(ValueError, match=r"give at least one of logits, query, key"):
        ops.vector_attention(v, src, dst, 3)
    with pytest.raises(ValueError, match=r"logits must be \(2, C_f\), got \(3, 2\)"):
        ops.vector_attention(v, src, dst, 3, logits=torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"query has 4 score channels but logits has 2"):
        ops.vector_attention(v, src, dst, 3, logits=torch.randn(2, 2), query=torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"value channels \(8\) must be a multiple of the score"):
        ops.vector_attention(v, src, dst, 3, logits=torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"pos must be \(E=2, C=8\), got \(2, 4\)"):
        ops.vector_attention(v, src, dst, 3, logits=torch.randn(2, 2), pos=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"pos_in_logits=True needs pos"):
        ops.vector_attention(v, src, dst, 3, logits=torch.randn(2, 2), pos_in_logits=True)
    with pytest.raises(ValueError, match=r"chunk_edges must be a positive int, got 0"):
        ops.vector_attention(v, src, dst, 3, logits=torch.randn(2, 2), chunk_edges=0)
    with pytest.raises(ValueError, match=r"src has 2 edges but dst has 1"):
        ops.vector_attention(v, src, dst[:1], 3, logits=torch.randn(2, 2))
    empty = torch.empty(0, dtype=torch.long)
    out = ops.vector_attention(v, empty, empty, 4, logits=torch.randn(0, 2))
    assert out.shape == (4, 8) and not out.any()


# --------------------------------------------------------------------------------------------
# edge_dot: per-edge dot products as sampled dense products


@pytest.mark.parametrize("sorted_edges", [True, False])
def test_edge_dot_matches_a_loop_and_its_gradients(sorted_edges):
    g = torch.Generator().manual_seed(7)
    n_src, n_dst, e, h, d = 9, 7, 40, 3, 5
    src, dst = _random_graph(g, n_src, n_dst, e, sorted_edges)
    q = torch.randn(n_dst, h, d, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(n_src, h, d, dtype=torch.float64, generator=g, requires_grad=True)
    out = ops.edge_dot(q, k, src, dst)
    ref = torch.stack([(q[dst[i]] * k[src[i]]).sum(-1) for i in range(e)])  # one edge at a time
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    gout = torch.randn(e, h, dtype=torch.float64, generator=g)
    for got, want in zip(
        torch.autograd.grad(out, (q, k), gout),
        torch.autograd.grad(ref, (q, k), gout),
        strict=True,
    ):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda a, b: ops.edge_dot(a, b, src, dst), (q, k))
    with ops.deterministic():  # the gather path
        torch.testing.assert_close(ops.edge_dot(q, k, src, dst), ref, atol=1e-12, rtol=0)


def test_edge_dot_float32_empty_and_errors():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(0, 50, (300,), generator=g)
    dst = torch.randint(0, 40, (300,), generator=g)
    q, k = torch.randn(40, 4, 8, generator=g), torch.randn(50, 4, 8, generator=g)
    ref = (q.double()[dst] * k.double()[src]).sum(-1).float()
    torch.testing.assert_close(ops.edge_dot(q, k, src, dst), ref, atol=1e-5, rtol=0)
    empty = torch.empty(0, dtype=torch.long)
    assert ops.edge_dot(q, k, empty, empty).shape == (0, 4)
    with pytest.raises(ValueError, match=r"query \(N_dst, H, d\) and key \(N_src, H, d\) must"):
        ops.edge_dot(q, k[:, :2], src, dst)


# --------------------------------------------------------------------------------------------
# max / min with gradients: the index-keeping kernel
# --------------------------------------------------------------------------------------------


def _loop_extremum_grad(src, index, n, reduce, grad_out):
    """Reference gradient: each output value's gradient goes to the first edge (in edge order)
    of its target that attains it."""
    grad = torch.zeros_like(src)
    flat_src, flat_grad = src.reshape(src.size(0), -1), grad.view(src.size(0), -1)
    flat_out = grad_out.reshape(n, -1)
    for i in range(n):
        edges = torch.nonzero(index == i).flatten().tolist()
        for c in range(flat_src.size(1)):
            vals = [float(flat_src[e, c]) for e in edges]
            if not vals:
                continue
            best = max(vals) if reduce == "max" else min(vals)
            flat_grad[edges[vals.index(best)], c] += flat_out[i, c]
    return grad


def _graph(kind, g):
    """Target indices of the kernel's three paths: equal degree (a view), ragged but compact
    (padded to the largest degree), and a hub (padding would more than double the edges), each
    sorted, plus the same ragged edges shuffled."""
    if kind == "equal":
        return torch.arange(12).repeat_interleave(5), 12
    ragged = torch.repeat_interleave(torch.arange(10), torch.tensor([3, 0, 4, 4, 1, 2, 4, 0, 3, 4]))
    if kind == "ragged":
        return ragged, 12  # nodes 1, 7, 10, 11 have no edge
    if kind == "shuffled":
        return ragged[torch.randperm(ragged.numel(), generator=g)], 12
    return torch.cat([torch.zeros(40, dtype=torch.long), torch.arange(1, 9)]), 12  # a hub


@pytest.mark.parametrize("kind", ["equal", "ragged", "shuffled", "hub"])
@pytest.mark.parametrize("reduce", ["max", "min"])
@pytest.mark.parametrize("trailing", [(), (3,), (2, 4)])
def test_max_min_with_gradient_match_the_first_extremum_reference(kind, reduce, trailing):
    g = torch.Generator().manual_seed(4)
    index, n = _graph(kind, g)
    src = torch.randn((index.numel(),) + trailing, generator=g, dtype=torch.float64)
    src[1] = src[0]  # a tie inside the first target: the gradient goes to the first edge
    src.requires_grad_(True)
    out = ops.scatter(src, index, n, reduce)
    torch.testing.assert_close(out, _dense_reduce(src.detach(), index, n, reduce), atol=0, rtol=0)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, src, grad_out)
    expect = _loop_extremum_grad(src.detach(), index, n, reduce, grad_out)
    torch.testing.assert_close(grad, expect, atol=1e-12, rtol=0)
    if kind != "shuffled":  # the CSR entry point runs the same kernel
        out_csr = ops.scatter_csr(src, ops.index_to_ptr(index, n), reduce)
        (grad_csr,) = torch.autograd.grad(out_csr, src, grad_out)
        torch.testing.assert_close(out_csr, out, atol=0, rtol=0)
        torch.testing.assert_close(grad_csr, expect, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["ragged", "shuffled", "hub"])
def test_max_with_gradient_is_twice_differentiable(kind):
    g = torch.Generator().manual_seed(5)
    index, n = _graph(kind, g)
    src = torch.randn(index.numel(), 2, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda s: ops.scatter(s, index, n, "max"), (src,))
    torch.autograd.gradgradcheck(lambda s: ops.scatter(s, index, n, "min"), (src,))


def test_max_of_all_negative_infinity_stays_in_its_row():
    # a row whose edges all equal the padding value must still point at one of its own edges
    index = torch.tensor([0, 1, 1, 1, 2])  # degrees 1, 3, 1: row 0 and 2 are padded
    src = torch.tensor([float("-inf"), 1.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    src = src.view(-1, 1).requires_grad_(True)
    out = ops.scatter(src, index, 3, "max")
    assert out.view(-1).tolist() == [float("-inf"), 3.0, 5.0]
    (grad,) = torch.autograd.grad(out.sum(), src)
    assert grad.view(-1).tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------------
# fixed-degree graphs (kNN): dense (N, k, *) views against the segment and scatter kernels
# --------------------------------------------------------------------------------------------


def _both(monkeypatch, fn):
    """``fn()`` with the dense fixed-degree paths on (checked to be taken), then with the
    reference kernels."""
    found = []
    detect = ops._fixed_degree

    def spy(*args):
        found.append(detect(*args))
        return found[-1]

    monkeypatch.setattr(ops, "_fixed_degree", spy)
    dense = fn()
    assert any(found), "the dense path was not taken"
    monkeypatch.setitem(ops._state, "dense_fixed_degree", False)
    ref = fn()
    monkeypatch.setitem(ops._state, "dense_fixed_degree", True)
    return dense, ref


def test_fixed_degree_is_detected_exactly():
    index = torch.arange(5).repeat_interleave(3)
    assert ops._fixed_degree(index, None, 5, 15) == 3
    assert ops._fixed_degree(None, ops.index_to_ptr(index, 5), 5, 15) == 3
    assert ops._fixed_degree(index, None, 6, 15) == 0  # a sixth target without edges
    assert ops._fixed_degree(index.flip(0), None, 5, 15) == 0  # not sorted by target
    uneven = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4])  # same E, degrees vary
    assert ops._fixed_degree(uneven, None, 5, 15) == 0


@pytest.mark.parametrize("reduce", ops.REDUCTIONS)
@pytest.mark.parametrize("trailing", [(), (3,), (2, 4)])
@pytest.mark.parametrize("grad", [True, False])
def test_fixed_degree_scatter_equals_the_kernels(monkeypatch, reduce, trailing, grad):
    g = torch.Generator().manual_seed(6)
    n, k = 20, 6
    index = torch.arange(n).repeat_interleave(k)
    src = torch.randn((n * k,) + trailing, generator=g, dtype=torch.float64)
    src[1] = src[0]  # a tie in the max / min of the first target
    src.requires_grad_(grad)
    ptr = ops.index_to_ptr(index, n)
    for run in (
        lambda: ops.scatter(src, index, n, reduce),
        lambda: ops.scatter_csr(src, ptr, reduce),
    ):
        dense, ref = _both(monkeypatch, run)
        torch.testing.assert_close(dense, ref, atol=1e-12, rtol=0)
        if grad:
            grad_out = torch.randn(dense.shape, generator=g, dtype=torch.float64)
            (gd,) = torch.autograd.grad(dense, src, grad_out)
            (gr,) = torch.autograd.grad(ref, src, grad_out)
            torch.testing.assert_close(gd, gr, atol=1e-12, rtol=0)  # ties: the first edge


@pytest.mark.parametrize("trailing", [(), (4,), (2, 3)])
def test_fixed_degree_softmax_equals_the_kernels(monkeypatch, trailing):
    g = torch.Generator().manual_seed(7)
    n, k = 15, 5
    index = torch.arange(n).repeat_interleave(k)
    src = (30 * torch.randn((n * k,) + trailing, generator=g, dtype=torch.float64)).requires_grad_()
    ptr = ops.index_to_ptr(index, n)
    for run in (
        lambda: ops.segment_softmax(src, index, n),
        lambda: ops.segment_softmax_csr(src, ptr),
    ):
        dense, ref = _both(monkeypatch, run)
        torch.testing.assert_close(dense, ref, atol=1e-12, rtol=0)
        grad_out = torch.randn(dense.shape, generator=g, dtype=torch.float64)
        (gd,) = torch.autograd.grad(dense, src, grad_out, create_graph=True)
        (gr,) = torch.autograd.grad(ref, src, grad_out, create_graph=True)
        torch.testing.assert_close(gd, gr, atol=1e-12, rtol=0)
        (ggd,) = torch.autograd.grad(gd.sum(), src)  # twice differentiable, as the kernel
        (ggr,) = torch.autograd.grad(gr.sum(), src)
        torch.testing.assert_close(ggd, ggr, atol=1e-10, rtol=0)


@pytest.mark.parametrize("share", ["interleaved", "contiguous"])
@pytest.mark.parametrize("chunk", [None, 7, 13])  # chunks shrink to whole targets
@pytest.mark.parametrize("pos_in_logits", [False, True])
def test_fixed_degree_vector_attention_equals_the_kernel(monkeypatch, share, chunk, pos_in_logits):
    g = torch.Generator().manual_seed(8)
    n, k, n_src, c = 12, 6, 20, 8
    cf = c if pos_in_logits else 4
    src = torch.randint(0, n_src, (n * k,), generator=g)
    dst = torch.arange(n).repeat_interleave(k)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    inputs = (rand(n_src, c), rand(n * k, cf), rand(n, cf), rand(n_src, cf), rand(n * k, c))
    values, logits, query, key, pos = inputs

    def run():
        return ops.vector_attention(
            values, src, dst, n, logits=logits, query=query, key=key, pos=pos,
            pos_in_logits=pos_in_logits, share=share, chunk_edges=chunk,
        )  # fmt: skip

    dense, ref = _both(monkeypatch, run)
    torch.testing.assert_close(dense, ref, atol=1e-12, rtol=0)
    grad_out = torch.randn(dense.shape, generator=g, dtype=torch.float64)
    for a, b in zip(
        torch.autograd.grad(dense, inputs, grad_out),
        torch.autograd.grad(ref, inputs, grad_out),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)

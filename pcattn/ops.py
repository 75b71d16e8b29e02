r"""Segment and scatter kernels for message passing.

Every reduction pcattn performs over the edges of a target node lives here, so a faster kernel
changes one file. Edges are indexed along dim 0 of ``src``; trailing dims (heads, channels) are
reduced independently.

Two addressing modes:

* **index** (COO): ``index (E,)`` gives the target node of each edge; edges may be in any order.
* **ptr** (CSR): edges are sorted by target and ``ptr (N + 1,)`` holds the row pointers, so the
  edges of node ``i`` are ``ptr[i]:ptr[i + 1]``. This is the fast path: every neighbourhood
  builder in :mod:`pcattn.graphs` returns target-sorted edges and :func:`pcattn.graphs.to_csr`
  derives ``ptr`` once per stage.

Conventions shared with PyG / torch-scatter: a node with no incoming edge gets ``0`` for every
reduction (not ``-inf`` or NaN).

Kernel choice (measured, ``benchmarks/bench_ops.py``): rows with few trailing values (``< 16``,
e.g. scores ``(E, H)``) reduce fastest with CSR segment kernels, wide rows (features ``(E, C)``)
with index scatter kernels, so every function picks by width and by what it was given.

Backends: pure PyTorch on every device. `torch-scatter <https://github.com/rusty1s/
pytorch_scatter>`_, when importable, is used where it is faster: for CSR reductions on CUDA.
On CPU it was measured no faster than the PyTorch kernels (its ``max`` 15-30x slower), so it is
not used there; :func:`use_torch_scatter` forces it on (``True``) or off (``False``) anywhere,
``"auto"`` restores the default. Results are equal either way (tested when it is installed).

Determinism: on CUDA, ``scatter_add`` uses atomics and sums in a non-reproducible order. Inside
``with pcattn.ops.deterministic():`` (or when ``torch.use_deterministic_algorithms(True)`` is on)
sums and means are computed, on every device, by CSR segment kernels (after a stable sort when
only ``index`` is given), which add the edges of each node in their original order, the same
on every run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "scatter",
    "scatter_csr",
    "segment_softmax",
    "segment_softmax_csr",
    "weighted_aggregate",
    "index_to_ptr",
    "ptr_to_index",
    "deterministic",
    "is_deterministic",
    "use_torch_scatter",
    "torch_scatter_available",
]

REDUCTIONS = ("sum", "mean", "max", "min")

_AMAX = {"max": "amax", "min": "amin"}

_WIDE = 16  # trailing values per row from which index kernels beat segment kernels

_state = {
    "deterministic": False,
    # "auto", True or False; PCATTN_NO_TORCH_SCATTER=1 turns it off for a whole process
    "torch_scatter": False if os.environ.get("PCATTN_NO_TORCH_SCATTER") == "1" else "auto",
}
_torch_scatter = None  # the module once imported; False when not installed


# --------------------------------------------------------------------------------------------
# switches
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def deterministic(mode: bool = True) -> Iterator[None]:
    r"""Context manager making every COO sum / mean reproducible bit for bit.

    Example::

        with pcattn.ops.deterministic():
            out = scatter(src, index, num_nodes)
    """
    previous = _state["deterministic"]
    _state["deterministic"] = bool(mode)
    try:
        yield
    finally:
        _state["deterministic"] = previous


def is_deterministic() -> bool:
    """Whether reductions currently run in deterministic mode (ours or torch's global flag)."""
    return _state["deterministic"] or torch.are_deterministic_algorithms_enabled()


def use_torch_scatter(mode: bool | str) -> bool | str:
    """Use torch-scatter where it is faster (``"auto"``, the default), wherever it has the
    operation (``True``) or never (``False``); returns the previous mode."""
    if mode not in ("auto", True, False):
        raise ValueError(f"mode must be 'auto', True or False, got {mode!r}")
    previous = _state["torch_scatter"]
    _state["torch_scatter"] = mode
    return previous


def torch_scatter_available() -> bool:
    """True when the optional ``torch_scatter`` package imports."""
    return _get_torch_scatter() is not None


def _get_torch_scatter():
    global _torch_scatter
    if _torch_scatter is None:
        _torch_scatter = False
        if importlib.util.find_spec("torch_scatter") is not None:
            try:
                import torch_scatter

                _torch_scatter = torch_scatter
            except (ImportError, OSError):  # a build against another torch fails to load
                _torch_scatter = False
    return _torch_scatter or None


def _ts(src: Tensor, csr: bool):
    """torch_scatter when installed and chosen for this call, else None."""
    mode = _state["torch_scatter"]
    if mode is False or (mode == "auto" and not (csr and src.is_cuda)):
        return None
    return _get_torch_scatter()


# --------------------------------------------------------------------------------------------
# index <-> ptr
# --------------------------------------------------------------------------------------------


def index_to_ptr(index: Tensor, num_nodes: int) -> Tensor:
    r"""CSR row pointers ``(num_nodes + 1,)`` of a **sorted** target index ``(E,)``."""
    counts = torch.bincount(index, minlength=num_nodes)  # (N,)
    ptr = index.new_zeros(num_nodes + 1)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr


def ptr_to_index(ptr: Tensor) -> Tensor:
    r"""Target index ``(E,)`` of row pointers ``(N + 1,)``: node ``i`` repeated ``deg(i)`` times."""
    num_nodes = ptr.numel() - 1
    counts = ptr[1:] - ptr[:-1]  # (N,)
    return torch.repeat_interleave(torch.arange(num_nodes, device=ptr.device), counts)


def _is_sorted(index: Tensor) -> bool:
    return index.numel() < 2 or bool((index[1:] >= index[:-1]).all())


# --------------------------------------------------------------------------------------------
# checks (cheap: shapes and dtypes only, never a device sync)
# --------------------------------------------------------------------------------------------


def _check_reduce(reduce: str) -> None:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


def _check_index(src: Tensor, index: Tensor) -> None:
    if not isinstance(src, Tensor) or src.dim() == 0:
        raise ValueError("src must be a tensor with the edge dimension first, shape (E, ...)")
    if not isinstance(index, Tensor) or index.dim() != 1:
        got = tuple(index.shape) if isinstance(index, Tensor) else type(index).__name__
        raise ValueError(f"index must be a 1-D tensor of shape (E,), got {got}")
    if index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"index must be int64 (or int32), got {index.dtype}")
    if index.numel() != src.size(0):
        raise ValueError(
            f"index has {index.numel()} entries but src has {src.size(0)} rows (dim 0 = edges)"
        )


def _check_ptr(src: Tensor, ptr: Tensor) -> None:
    if not isinstance(src, Tensor) or src.dim() == 0:
        raise ValueError("src must be a tensor with the edge dimension first, shape (E, ...)")
    if not isinstance(ptr, Tensor) or ptr.dim() != 1 or ptr.numel() < 1:
        raise ValueError("ptr must be a 1-D tensor of CSR row pointers, shape (N + 1,)")
    if ptr.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ptr must be int64 (or int32), got {ptr.dtype}")


def _dim_size(index: Tensor, dim_size: int | None) -> int:
    if dim_size is None:
        return int(index.max()) + 1 if index.numel() > 0 else 0
    if dim_size < 0:
        raise ValueError(f"dim_size must be >= 0, got {dim_size}")
    return int(dim_size)


# --------------------------------------------------------------------------------------------
# scatter (COO) and segment (CSR) reductions
# --------------------------------------------------------------------------------------------


def _per_row(values: Tensor, src: Tensor) -> Tensor:
    """View a per-row vector ``(R,)`` as ``(R, 1, ..., 1)`` to broadcast against ``src``."""
    return values.view((-1,) + (1,) * (src.dim() - 1))


def _broadcast(index: Tensor, src: Tensor) -> Tensor:
    """View ``index (E,)`` as ``(E, 1, ..., 1)`` expanded to ``src``'s shape (no copy)."""
    return _per_row(index, src).expand_as(src)


def _csr(src: Tensor, ptr: Tensor, reduce: str) -> Tensor:
    """Segment kernel on row pointers; empty rows give 0. Deterministic on every device."""
    num_nodes = ptr.numel() - 1
    if src.size(0) == 0:
        return src.new_zeros((num_nodes,) + src.shape[1:])
    out = torch.segment_reduce(src, reduce, offsets=ptr, axis=0, unsafe=True)
    if reduce != "sum":
        out = out.masked_fill(_per_row(ptr[1:] == ptr[:-1], src), 0.0)  # empty rows
    return out


def _coo(src: Tensor, index: Tensor, n: int, reduce: str) -> Tensor:
    """Index scatter kernel, edges in any order; empty rows give 0."""
    idx = _broadcast(index, src)
    out = src.new_zeros((n,) + src.shape[1:])
    if reduce == "sum":
        return out.scatter_add(0, idx, src)
    if reduce == "mean":
        total = out.scatter_add(0, idx, src)
        count = torch.bincount(index, minlength=n).clamp_(min=1)  # (N,)
        return total / _per_row(count, src).to(src.dtype)
    if not (src.requires_grad and torch.is_grad_enabled()):
        return out.scatter_reduce(0, idx, src, _AMAX[reduce], include_self=False)
    # for autograd start from NaN, not 0: torch's backward splits the gradient between src and
    # an initial value equal to the result, so a 0 start would halve the gradient of a true
    # extremum of 0
    out = out.fill_(float("nan")).scatter_reduce(0, idx, src, _AMAX[reduce], include_self=False)
    empty = torch.bincount(index, minlength=n) == 0  # (N,)
    return out.masked_fill(_per_row(empty, src), 0.0)


def _wide(src: Tensor) -> bool:
    return src[0].numel() >= _WIDE if src.size(0) > 0 else False


def _reduce(src: Tensor, index: Tensor | None, ptr: Tensor | None, n: int, reduce: str) -> Tensor:
    """The fastest exact kernel for what is known: ``ptr`` (target-sorted) and / or ``index``
    (at least one of them; ``index`` must be given for wide rows)."""
    if ptr is not None and (
        index is None or not _wide(src) or (is_deterministic() and reduce in ("sum", "mean"))
    ):
        return _csr(src, ptr, reduce)
    if ptr is None and is_deterministic() and reduce in ("sum", "mean"):
        # sums are the only order-dependent reduction: sort once, add each row's edges in order
        perm = torch.argsort(index, stable=True)
        return _csr(src[perm], index_to_ptr(index[perm], n), reduce)
    return _coo(src, index, n, reduce)


def scatter(src: Tensor, index: Tensor, dim_size: int | None = None, reduce: str = "sum") -> Tensor:
    r"""Reduce the rows of ``src`` that share a target index.

    .. math::
        \mathrm{out}_i = \bigoplus_{e \,:\, \mathrm{index}_e = i} \mathrm{src}_e,
        \qquad \oplus \in \{\textstyle\sum, \mathrm{mean}, \max, \min\}

    Args:
        src: values per edge, shape ``(E, *)``.
        index: target node of each edge, shape ``(E,)``, any order.
        dim_size: number of output rows ``N`` (default: ``index.max() + 1``).
        reduce: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"`` (default: ``"sum"``).

    Returns:
        ``(N, *)``; rows with no edge are 0. Differentiable in ``src``.
    """
    _check_reduce(reduce)
    _check_index(src, index)
    n = _dim_size(index, dim_size)
    if src.size(0) == 0:
        return src.new_zeros((n,) + src.shape[1:])
    if index.dtype != torch.int64:
        index = index.long()
    ts = _ts(src, csr=False)
    if ts is not None and not is_deterministic():
        return ts.scatter(src, index, dim=0, dim_size=n, reduce=reduce)
    return _reduce(src, index, None, n, reduce)


def scatter_csr(src: Tensor, ptr: Tensor, reduce: str = "sum") -> Tensor:
    r"""CSR version of :func:`scatter` for edges sorted by target (the fast path).

    Args:
        src: values per edge, shape ``(E, *)``, sorted by target.
        ptr: row pointers, shape ``(N + 1,)``, ``ptr[0] = 0``, ``ptr[-1] = E``.
        reduce: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"`` (default: ``"sum"``).

    Returns:
        ``(N, *)``; rows with no edge are 0. Differentiable in ``src``.
    """
    _check_reduce(reduce)
    _check_ptr(src, ptr)
    if ptr.dtype != torch.int64:
        ptr = ptr.long()
    n = ptr.numel() - 1
    if src.size(0) == 0:
        return src.new_zeros((n,) + src.shape[1:])
    ts = _ts(src, csr=True)
    if ts is not None:
        return ts.segment_csr(src, ptr, reduce=reduce)
    index = ptr_to_index(ptr) if _wide(src) else None
    return _reduce(src, index, ptr, n, reduce)


# --------------------------------------------------------------------------------------------
# softmax over the edges of each target
# --------------------------------------------------------------------------------------------


class _SegmentSoftmax(torch.autograd.Function):
    """Stable softmax per segment that stores only its output for backward.

    Forward: ``a = exp(s - max_seg(s)) / sum_seg(exp(s - max_seg(s)))``.
    Backward: ``ds = a * (g - sum_seg(a * g))``. The saved tensor is ``a`` alone, so the
    shifted scores and exponentials are freed as soon as forward returns.
    """

    @staticmethod
    def forward(ctx, src: Tensor, index: Tensor | None, ptr: Tensor | None, n: int) -> Tensor:
        smax = _reduce(src, index, ptr, n, "max")  # (N, *)
        out = (src - _expand(smax, index, ptr, src.size(0))).exp_()  # (E, *)
        denom = _reduce(out, index, ptr, n, "sum")  # (N, *)
        out = out / _expand(denom, index, ptr, src.size(0))
        ctx.save_for_backward(out, index, ptr)
        ctx.n = n
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out, index, ptr = ctx.saved_tensors
        ga = grad * out  # (E, *)
        dot = _reduce(ga, index, ptr, ctx.n, "sum")  # (N, *)
        return ga - out * _expand(dot, index, ptr, out.size(0)), None, None, None


def _expand(per_node: Tensor, index: Tensor | None, ptr: Tensor | None, e: int) -> Tensor:
    """``per_node[target of each edge]``: a gather, or on row pointers a repeat (cheaper)."""
    if index is None:
        counts = ptr[1:] - ptr[:-1]  # (N,)
        return per_node.repeat_interleave(counts, dim=0, output_size=e)
    return per_node.index_select(0, index)


def segment_softmax(src: Tensor, index: Tensor, num_nodes: int | None = None) -> Tensor:
    r"""Softmax of edge scores over the incoming edges of each target node.

    .. math::
        a_{e} = \frac{\exp(s_e - m_i)}{\sum_{e' : \mathrm{index}_{e'} = i} \exp(s_{e'} - m_i)},
        \qquad m_i = \max_{e' : \mathrm{index}_{e'} = i} s_{e'}

    computed separately for every trailing position (head, channel). The max subtraction keeps
    it finite for any finite scores; a target with a single edge gets weight exactly 1.
    When ``index`` is sorted, segment kernels are used where they are faster.

    Args:
        src: scores, shape ``(E,)``, ``(E, H)`` or ``(E, H, D)``.
        index: target node of each edge, shape ``(E,)``.
        num_nodes: number of target nodes (default: ``index.max() + 1``).

    Returns:
        weights with the shape of ``src``. Differentiable (twice) in ``src``.
    """
    _check_index(src, index)
    n = _dim_size(index, num_nodes)
    if src.size(0) == 0:
        return src.clone()
    if index.dtype != torch.int64:
        index = index.long()
    # segment kernels pay off for narrow rows when the edges happen to be target-sorted
    if not _wide(src) and _is_sorted(index):
        return _SegmentSoftmax.apply(src, None, index_to_ptr(index, n), n)
    return _SegmentSoftmax.apply(src, index, None, n)


def segment_softmax_csr(src: Tensor, ptr: Tensor) -> Tensor:
    r"""CSR version of :func:`segment_softmax` for edges sorted by target.

    Args:
        src: scores, shape ``(E, *)``, sorted by target.
        ptr: row pointers, shape ``(N + 1,)``.
    """
    _check_ptr(src, ptr)
    if src.size(0) == 0:
        return src.clone()
    if ptr.dtype != torch.int64:
        ptr = ptr.long()
    index = ptr_to_index(ptr) if _wide(src) else None  # narrow rows never need the index
    return _SegmentSoftmax.apply(src, index, ptr, ptr.numel() - 1)


# --------------------------------------------------------------------------------------------
# weighted aggregation as a sparse matrix product
# --------------------------------------------------------------------------------------------


def _sparse_csr(ptr: Tensor, col: Tensor, values: Tensor, rows: int, cols: int) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": what we use is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(ptr, col, values, size=(rows, cols), check_invariants=False)


class _WeightedAggregate(torch.autograd.Function):
    r"""``out[i, h] = sum_{e: dst_e = i} w[e, h] * v[src_e, h]`` as one CSR x dense product per
    head, with edges sorted by target. Backward: ``dv = A^T g`` (a CSR product on the
    source-sorted edges) and ``dw[e, h] = <g[dst_e, h], v[src_e, h]>`` (a sampled dense product
    on the sparsity pattern). No ``(E, H, D)`` message tensor is ever made."""

    @staticmethod
    def forward(ctx, w: Tensor, v: Tensor, ptr: Tensor, src: Tensor, num_dst: int) -> Tensor:
        n_src, heads, d = v.shape
        out = v.new_empty(num_dst, heads, d)
        for h in range(heads):
            a = _sparse_csr(ptr, src, w[:, h].contiguous(), num_dst, n_src)
            out[:, h] = a @ v[:, h].contiguous()  # (N_dst, D)
        ctx.save_for_backward(w, v, ptr, src)
        ctx.num_dst = num_dst
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        w, v, ptr, src = ctx.saved_tensors
        n_src, heads, d = v.shape
        g = g.contiguous()
        gw = gv = None
        if ctx.needs_input_grad[1]:  # A^T g on the edges sorted by source
            perm = torch.argsort(src, stable=True)  # (E,)
            dst = ptr_to_index(ptr)  # (E,)
            ptr_t = index_to_ptr(src.index_select(0, perm), n_src)
            col_t = dst.index_select(0, perm)
            w_t = w.index_select(0, perm)  # (E, H)
            gv = torch.empty_like(v)
            for h in range(heads):
                gv[:, h] = (
                    _sparse_csr(ptr_t, col_t, w_t[:, h].contiguous(), n_src, ctx.num_dst) @ g[:, h]
                )
        if ctx.needs_input_grad[0]:  # <g_i, v_j> on the pattern
            pattern = _sparse_csr(ptr, src, w.new_ones(src.numel()), ctx.num_dst, n_src)
            gw = torch.empty_like(w)
            for h in range(heads):
                s = torch.sparse.sampled_addmm(pattern, g[:, h], v[:, h].t(), beta=0.0)
                gw[:, h] = s.values()
        return gw, gv, None, None, None


def weighted_aggregate(
    weights: Tensor, values: Tensor, src: Tensor, dst: Tensor, num_dst: int
) -> Tensor:
    r"""Aggregate per-node values over edges with one scalar weight per edge and head:

    .. math::
        \mathrm{out}_{i,h} = \sum_{e:\, \mathrm{dst}_e = i} w_{e,h}\, v_{\mathrm{src}_e, h}

    the message-passing step of every attention whose value is a per-node transform (GCN, GAT,
    Transformer, non-local). On CPU and CUDA it runs as sparse-times-dense products (one per
    head) on the target-sorted edges, so no ``(E, H, D)`` message tensor is made in forward or
    backward (measured 3.7x faster than gather-multiply-scatter for 65,536 nodes x 17 edges,
    4 heads of 16, forward + backward). Unsorted edges are sorted first. Other devices, and
    :func:`deterministic` mode (whose edge-order sums a sparse library does not promise),
    gather and scatter.

    Args:
        weights: ``(E, H)``.
        values: ``(N_src, H, D)``.
        src, dst: source and target of each edge, ``(E,)``.
        num_dst: number of target nodes.

    Returns:
        ``(num_dst, H, D)``, differentiable (once) in ``weights`` and ``values``.
    """
    e, heads = weights.shape
    if values.dim() != 3 or values.size(1) != heads:
        raise ValueError(f"values must be (N_src, H={heads}, D), got {tuple(values.shape)}")
    sparse_ok = values.device.type in ("cpu", "cuda") and not is_deterministic()
    if e == 0 or values.size(0) == 0 or not sparse_ok:
        msg = values.index_select(0, src) * weights[..., None]  # (E, H, D)
        return scatter(msg, dst, num_dst)
    weights = weights.to(values.dtype)
    if not _is_sorted(dst):
        order = torch.argsort(dst, stable=True)
        src, dst, weights = src[order], dst[order], weights[order]
    return _WeightedAggregate.apply(weights, values, index_to_ptr(dst, num_dst), src, num_dst)

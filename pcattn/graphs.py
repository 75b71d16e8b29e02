r"""Neighbourhoods :math:`\mathcal N(i)` as ``edge_index`` tensors.

Every builder returns ``edge_index`` of shape ``(2, E)`` in PyG's convention: row 0 is the
source :math:`j` (key / value), row 1 the target :math:`i` (query). Edges are **sorted by
target** (and, within a target, by the order stated per builder), so :func:`to_csr` can derive
row pointers once and every layer of a stage can reuse them. Edges never connect two samples of
a batch.

Point clouds: :func:`knn_graph`, :func:`knn`, :func:`radius_graph`, :func:`fps`.
Pixels: :func:`grid_graph`, :func:`criss_cross_graph`, :func:`image_to_nodes`,
:func:`nodes_to_image`. Any node set: :func:`full_graph`, :func:`add_self_loops`,
:func:`remove_self_loops`, :func:`sort_by_target`, :func:`to_csr`.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from .checks import (
    batch_sizes,
    check_batch,
    check_distance_range,
    check_has_coordinates,
    check_positions,
    check_positive_int,
    distance_range_fault,
    first_descent,
    shape_of,
)
from .ops import index_to_ptr
from .search import cloud_bounds, knn_search, range_may_fault

__all__ = [
    "knn_graph",
    "knn",
    "radius_graph",
    "fps",
    "grid_graph",
    "criss_cross_graph",
    "image_to_nodes",
    "nodes_to_image",
    "full_graph",
    "slot_graph",
    "add_self_loops",
    "remove_self_loops",
    "replace_self_loops",
    "sort_by_target",
    "to_csr",
    "available_bytes",
]


def _edges_from_rows(idx: Tensor, dense: bool) -> Tensor:
    """``(M, k)`` neighbour table (``-1`` = none) -> target-sorted ``edge_index (2, E)``."""
    m, k = idx.shape
    dst = torch.arange(m, device=idx.device).repeat_interleave(k)  # (M * k,)
    src = idx.reshape(-1)
    if not dense:
        keep = src >= 0
        src, dst = src[keep], dst[keep]
    return torch.stack([src, dst])


def _check_cloud_sizes(counts: Tensor, need: int, what: str) -> None:
    small = torch.nonzero((counts < need) & (counts > 0)).flatten()  # empty ids are not samples
    if small.numel() > 0:
        b = int(small[0])
        where = f"sample {b} of the batch" if counts.numel() > 1 else "the cloud"
        raise ValueError(f"{what}: {where} has {int(counts[b])} points, need at least {need}")


# --------------------------------------------------------------------------------------------
# point clouds
# --------------------------------------------------------------------------------------------


def knn_graph(
    pos: Tensor,
    k: int,
    batch: Tensor | None = None,
    loop: bool = False,
    *,
    method: str = "auto",
) -> Tensor:
    r"""Exact k-nearest-neighbour graph: :math:`\mathcal N(i)` = the ``k`` points closest to ``i``
    in its own cloud.

    Neighbours are ordered by (distance, index), so ties are broken by the smaller index and
    the result equals a brute-force search. On CPU a kd-tree answers the whole batch in one
    multi-threaded query; on other devices a chunked ``topk`` whose memory is bounded.

    Squared distances are computed in float64 (float32 positions always fit); float64
    positions whose squared distances within a cloud would overflow float64, or underflow it
    so that they all tie at 0, are refused with a ``ValueError`` (rescale them).

    Args:
        pos: positions ``(N, D)``, finite floats, ``D >= 1``.
        k: neighbours per point; every cloud needs ``k`` points (``k + 1`` when ``loop=False``).
        batch: sample of each point ``(N,)``, sorted (default: one cloud).
        loop: count the point itself among its ``k`` neighbours (default: ``False``).
        method: ``"auto"`` (default), ``"kdtree"`` (CPU), ``"brute"`` or ``"matmul"`` (any
            device); ``"auto"`` takes ``"matmul"`` from 8 dimensions (feature spaces), exact
            like the others (:func:`pcattn.search.knn_search`).

    Returns:
        ``edge_index (2, N * k)``; ``edge_index[1]`` is ``0, ..., 0, 1, ..., 1, ...``
        (``k`` edges per target) and ``edge_index[0]`` its neighbours, nearest first.
    """
    check_positions(pos, "pos")
    check_has_coordinates(pos, "pos")
    k = check_positive_int(k, "k")
    if batch is not None:
        batch = check_batch(batch, pos.size(0), "batch", "pos", pos.device)
    if pos.size(0) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    counts = batch_sizes(batch, pos.size(0))
    _check_cloud_sizes(counts, k + (0 if loop else 1), f"knn_graph(k={k}, loop={loop})")
    idx, _ = knn_search(
        pos, pos, k, batch, batch, self_index=not loop, method=method, name="pos", distances=False
    )
    return _edges_from_rows(idx, dense=True)


def knn(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor | None = None,
    batch_y: Tensor | None = None,
    *,
    method: str = "auto",
) -> Tensor:
    r"""For every point of ``y``, its ``k`` nearest points of ``x`` in the same cloud (bipartite).

    Used to interpolate features from a coarse set ``x`` onto a fine set ``y``. Distances as
    in :func:`knn_graph`: float64, and float64 points out of its range are refused.

    .. note::
        The result follows this module's convention, ``edge_index[0]`` = source index into ``x``
        and ``edge_index[1]`` = target index into ``y``. ``torch_geometric.nn.knn`` returns the
        two rows the other way round (``[y_index, x_index]``).

    Args:
        x: candidate points ``(Nx, D)``.
        y: query points ``(Ny, D)``.
        k: neighbours per query; each cloud of ``x`` needs at least ``k`` points.
        batch_x, batch_y: sample of each point, sorted (default: one cloud each).
        method: ``"auto"`` (default), ``"kdtree"``, ``"brute"`` or ``"matmul"`` (as
            :func:`knn_graph`).

    Returns:
        ``edge_index (2, Ny * k)`` sorted by target (query), nearest first.
    """
    check_positions(x, "x")
    check_positions(y, "y")
    check_has_coordinates(x, "x")
    check_has_coordinates(y, "y")
    if x.size(1) != y.size(1):
        raise ValueError(f"x and y must have the same dimension D, got {x.size(1)} and {y.size(1)}")
    k = check_positive_int(k, "k")
    if (batch_x is None) != (batch_y is None):
        raise ValueError("give both batch_x and batch_y, or neither")
    if batch_x is not None:
        batch_x = check_batch(batch_x, x.size(0), "batch_x", "x", x.device)
        batch_y = check_batch(batch_y, y.size(0), "batch_y", "y", y.device)
    if y.size(0) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=y.device)
    if batch_x is None:
        counts_x = torch.tensor([x.size(0)])
        used = torch.tensor([0])
    else:
        b = max(int(batch_x.max()) if x.size(0) else -1, int(batch_y.max())) + 1
        counts_x = batch_sizes(batch_x, x.size(0), b)
        used = torch.unique(batch_y).cpu()
    empty = used[counts_x[used] == 0]
    if empty.numel() > 0:
        raise ValueError(f"knn: y has points in sample {int(empty[0])} but x has none there")
    _check_cloud_sizes(counts_x[used], k, f"knn(k={k}): x")
    idx, _ = knn_search(x, y, k, batch_x, batch_y, method=method, name="x and y", distances=False)
    return _edges_from_rows(idx, dense=True)


def radius_graph(
    pos: Tensor,
    r: float,
    batch: Tensor | None = None,
    max_num_neighbors: int = 32,
    loop: bool = False,
    *,
    method: str = "auto",
) -> Tensor:
    r"""Ball neighbourhood: :math:`\mathcal N(i) = \{j : \|p_j - p_i\| \le r\}`, at most
    ``max_num_neighbors`` of them.

    When a ball holds more than ``max_num_neighbors`` points, the **nearest** are kept (ties
    by index), unlike torch-cluster, which keeps whichever it meets first. Distances are
    compared as ``sum_d (p_j - p_i)_d^2 <= r^2`` in float64; float64 positions out of its range
    are refused as in :func:`knn_graph`.

    Args:
        pos: positions ``(N, D)``.
        r: radius, > 0 (inclusive).
        batch: sample of each point, sorted (default: one cloud).
        max_num_neighbors: cap per point (default: ``32``).
        loop: include the point itself (default: ``False``).
        method: ``"auto"`` (default), ``"kdtree"`` or ``"brute"``.

    Returns:
        ``edge_index (2, E)`` sorted by target, nearest first within a target.
    """
    check_positions(pos, "pos")
    check_has_coordinates(pos, "pos")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
        raise ValueError(f"r must be a finite number > 0, got {r!r}")
    max_num_neighbors = check_positive_int(max_num_neighbors, "max_num_neighbors")
    if batch is not None:
        batch = check_batch(batch, pos.size(0), "batch", "pos", pos.device)
    if pos.size(0) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    idx, _ = knn_search(
        pos,
        pos,
        max_num_neighbors,
        batch,
        batch,
        self_index=not loop,
        r=float(r),
        method=method,
        name="pos",
    )
    return _edges_from_rows(idx, dense=False)


def fps(
    pos: Tensor,
    ratio: float | None = None,
    num: int | None = None,
    batch: Tensor | None = None,
    random_start: bool = True,
    *,
    generator: torch.Generator | None = None,
    method: str = "auto",
) -> Tensor:
    r"""Farthest point sampling: repeatedly take the point farthest from those already taken.

    .. math::
        s_{t+1} = \arg\max_{i \notin \{s_0, \dots, s_t\}} \min_{u \le t} \|p_i - p_{s_u}\|^2

    Exact: squared distances in the precision of ``pos`` (float16 / bfloat16 in float32),
    summed coordinate by coordinate, ties to the lowest index; every method gives the same
    indices as that textbook loop. When a cloud of a float32 or bfloat16 ``pos`` has squared
    distances that would overflow float32, or underflow it so that they tie at 0 (a cloud
    spanning less than about 1e-12), the whole call runs in float64 instead (the float64
    loop's indices); a float64 cloud out of float64's range is refused with a ``ValueError``
    (rescale it). See :func:`pcattn.checks.distance_range_fault` for the bounds.

    The indices of a cloud are always distinct, so ``ratio=1`` returns a permutation: once every
    point not yet taken duplicates a taken one (all its distances are 0), the rest are taken in
    index order (where torch-cluster's ``fps`` repeats indices).

    Args:
        pos: positions ``(N, D)``, ``D >= 1``.
        ratio: fraction of each cloud to keep, in ``(0, 1]``; ``ceil(ratio * n)`` points.
        num: points to keep per cloud (give exactly one of ``ratio`` and ``num``).
        batch: sample of each point ``(N,)``, sorted (default: one cloud).
        random_start: start each cloud at a random point (default: ``True``); otherwise at its
            first point.
        generator: random generator for the start points.
        method: ``"auto"`` (default: the compiled kernel on CPU when it was built at install,
            else ``"torch"``), ``"compiled"`` or ``"torch"`` (one vectorised loop over all
            clouds of the batch at once; the GPU path).

    Returns:
        indices into ``pos`` ``(M,)``, grouped by sample, in sampling order.
    """
    check_positions(pos, "pos")
    check_has_coordinates(pos, "pos")
    if (ratio is None) == (num is None):
        raise ValueError("give exactly one of ratio and num")
    if method not in ("auto", "compiled", "torch"):
        raise ValueError(f"method must be 'auto', 'compiled' or 'torch', got {method!r}")
    n_total = pos.size(0)
    if batch is not None:
        batch = check_batch(batch, n_total, "batch", "pos", pos.device)
    if n_total == 0:
        return torch.empty(0, dtype=torch.long, device=pos.device)
    counts = batch_sizes(batch, n_total)  # (B,) on CPU
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        take = torch.ceil(counts.double() * ratio).long()
    else:
        num = check_positive_int(num, "num")
        _check_cloud_sizes(counts, num, f"fps(num={num})")
        take = torch.where(counts > 0, num, 0)
    if random_start:
        r = torch.rand(counts.numel(), generator=generator, dtype=torch.float64)
        start = torch.minimum((r * counts).long(), (counts - 1).clamp(min=0))
    else:
        start = torch.zeros(counts.numel(), dtype=torch.long)
    ptr = torch.zeros(counts.numel() + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=ptr[1:])
    dtype = pos.dtype if pos.dtype in (torch.float32, torch.float64) else torch.float32
    dtype = _fps_precision(pos, batch, ptr, dtype)

    ext = _fps_extension()
    compiled_ok = ext is not None and pos.device.type == "cpu" and pos.size(1) <= 8
    if method == "auto":
        method = "compiled" if compiled_ok else "torch"
    if method == "compiled" and not compiled_ok:
        raise ValueError(
            "method='compiled' needs a CPU tensor with D <= 8 and the compiled kernel "
            "pcattn._fps, which is built when pcattn is installed with a C compiler present"
        )
    if method == "compiled":
        soa = pos.detach().to(dtype).t().contiguous()  # (D, N): one row per coordinate
        out = torch.empty(int(take.sum()), dtype=torch.long)
        ext.fps(
            soa.numpy(),
            soa.size(0),
            dtype == torch.float64,
            ptr.numpy(),
            take.numpy(),
            start.numpy(),
            out.numpy(),
        )
        return out
    return _fps_torch(pos.detach().to(dtype), counts, ptr, take, start)


def _fps_precision(
    pos: Tensor, batch: Tensor | None, ptr: Tensor, dtype: torch.dtype
) -> torch.dtype:
    """``dtype``, or float64 for a float32 computation whose squared distances would leave
    float32's range in some cloud; a ``ValueError`` when float64 cannot hold them either."""
    if not range_may_fault(pos.dtype, pos.size(1), dtype):
        return dtype
    lo, hi = cloud_bounds(pos, batch, ptr_x=ptr)  # (B, D)
    if distance_range_fault(lo, hi, dtype) is None:
        return dtype
    check_distance_range(lo, hi, torch.float64, "pos", batched=batch is not None)
    return torch.float64


def _fps_extension():
    try:
        from . import _fps
    except ImportError:
        return None
    return _fps


def _fps_torch(pos: Tensor, counts: Tensor, ptr: Tensor, take: Tensor, start: Tensor) -> Tensor:
    """All clouds at once, padded to ``(B, nmax)``; same arithmetic as the compiled kernel."""
    device, dims, n_total = pos.device, pos.size(1), pos.size(0)
    b, nmax = counts.numel(), int(counts.max())
    local = torch.arange(n_total) - ptr[:-1].repeat_interleave(counts)  # (N,)
    flat = (torch.arange(b).repeat_interleave(counts) * nmax + local).to(device)  # (N,)
    grid = torch.zeros(dims, b * nmax, dtype=pos.dtype, device=device)
    grid[:, flat] = pos.t()
    grid = grid.view(dims, b, nmax)  # (D, B, nmax), one contiguous plane per coordinate
    mind = torch.full((b, nmax), -math.inf, dtype=pos.dtype, device=device)  # padding: never
    mind.view(-1)[flat] = math.inf

    steps = int(take.max())
    out = torch.empty(b, steps, dtype=torch.long, device=device)
    last = start.to(device).view(b, 1)  # (B, 1)
    rows = torch.arange(b, device=device).view(b, 1)
    d = torch.empty(b, nmax, dtype=pos.dtype, device=device)
    tmp = torch.empty_like(d)
    for t in range(steps):
        out[:, t : t + 1] = last
        mind[rows, last] = -math.inf  # taken: never again (ranks with the padding)
        for c in range(dims):  # separate kernels: no fused multiply-add, as in the reference
            coord = grid[c]  # (B, nmax)
            torch.sub(coord, coord[rows, last], out=tmp)
            tmp.square_()
            if c == 0:
                d.copy_(tmp)
            else:
                d.add_(tmp)
        torch.minimum(mind, d, out=mind)
        last = mind.argmax(dim=1, keepdim=True)  # (B, 1), the first maximum on ties

    keep = (torch.arange(steps).view(1, -1) < take.view(-1, 1)).to(device)  # (B, steps)
    return (out + ptr[:-1].to(device).view(-1, 1))[keep]


# --------------------------------------------------------------------------------------------
# pixels
# --------------------------------------------------------------------------------------------


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    vals = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(vals) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) for a in vals):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return vals


def grid_graph(
    height: int,
    width: int,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    padding: str = "mask",
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Pixel windows: :math:`\mathcal N(i)` = the ``kernel_size`` window centred on pixel ``i``.

    Nodes are pixels in row-major order (``node = b * H * W + y * W + x``, as
    :func:`image_to_nodes` makes them). Each edge also carries its window offset
    :math:`(\Delta y, \Delta x) \in \text{dilation} \cdot \{-P..P\}^2`, which a
    position-dependent value transform :math:`g_{ij} = W_{\Delta} x_j` indexes: with that ``g``,
    no normaliser and ``padding="mask"``, the layer is exactly a zero-padded ``conv2d``.
    The kernel slot of an edge is ``offset // dilation + kernel_size // 2``.

    Args:
        height, width: image size.
        kernel_size: odd window size, an int or ``(kh, kw)``.
        dilation: spacing between window taps (default: ``1``).
        padding: what window taps that fall outside the image become:
            ``"mask"`` (default): no edge (zero padding for sums; SASA's ``pad="mask"``);
            ``"reflect"``: the mirrored pixel, as in SAN (a border target may then have the
            same source twice, with two offsets);
            ``"zeros"``: an edge from the virtual node ``batch_size * H * W``, which a layer
            represents by a zero feature row, so padded positions still take part in a
            softmax (SASA reference, ISA).
        batch_size: number of images (default: ``1``).

    Returns:
        ``edge_index (2, E)`` sorted by target, window slots in row-major order within a target;
        ``offset (E, 2)`` int64 ``(dy, dx)``.
    """
    height = check_positive_int(height, "height")
    width = check_positive_int(width, "width")
    kh, kw = _pair(kernel_size, "kernel_size")
    dh, dw = _pair(dilation, "dilation")
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size!r}")
    if dh < 1 or dw < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation!r}")
    if padding not in ("mask", "reflect", "zeros"):
        raise ValueError(f"padding must be 'mask', 'reflect' or 'zeros', got {padding!r}")
    batch_size = check_positive_int(batch_size, "batch_size")
    ph, pw = kh // 2, kw // 2
    if padding == "reflect" and (ph * dh >= height or pw * dw >= width):
        raise ValueError(
            f"padding='reflect' needs the reach of the window ({ph * dh}, {pw * dw}) to be "
            f"smaller than the image ({height}, {width})"
        )

    dy = torch.arange(-ph, ph + 1, device=device) * dh  # (kh,)
    dx = torch.arange(-pw, pw + 1, device=device) * dw  # (kw,)
    off = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), -1).view(-1, 2)  # (K, 2)
    yy, xx = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    sy = yy.reshape(-1, 1) + off[:, 0]  # (HW, K) source rows
    sx = xx.reshape(-1, 1) + off[:, 1]  # (HW, K)
    inside = (sy >= 0) & (sy < height) & (sx >= 0) & (sx < width)  # (HW, K)
    if padding == "reflect":
        sy = torch.where(sy < 0, -sy, torch.where(sy >= height, 2 * (height - 1) - sy, sy))
        sx = torch.where(sx < 0, -sx, torch.where(sx >= width, 2 * (width - 1) - sx, sx))
        inside = torch.ones_like(inside)
    src = sy * width + sx  # (HW, K)
    hw = height * width
    dst = torch.arange(hw, device=device).view(-1, 1).expand_as(src)  # (HW, K)
    offs = off.view(1, -1, 2).expand(hw, -1, 2)  # (HW, K, 2)
    if padding == "zeros":
        src = torch.where(inside, src, -1)
        inside = torch.ones_like(inside)
    src, dst, offs = src[inside], dst[inside], offs[inside]  # (E1,), (E1,), (E1, 2)

    shift = (torch.arange(batch_size, device=device) * hw).view(-1, 1)  # (B, 1)
    dst = (dst.view(1, -1) + shift).reshape(-1)  # (B * E1,)
    virtual = batch_size * hw
    src = torch.where(src.view(1, -1) >= 0, src.view(1, -1) + shift, virtual).reshape(-1)
    offs = offs.repeat(batch_size, 1)  # (B * E1, 2)
    return torch.stack([src, dst]), offs


def criss_cross_graph(
    height: int, width: int, *, batch_size: int = 1, device: torch.device | str | None = None
) -> Tensor:
    r"""CCNet's criss-cross neighbourhood: :math:`\mathcal N(u)` = the pixels in ``u``'s row and
    in its column, ``H + W - 1`` distinct nodes (``u`` itself counted once).

    Applied twice (recurrence ``R = 2``), information reaches every pixel from every pixel.

    Returns:
        ``edge_index (2, B * H * W * (H + W - 1))`` sorted by target, sources ascending.
    """
    height = check_positive_int(height, "height")
    width = check_positive_int(width, "width")
    batch_size = check_positive_int(batch_size, "batch_size")
    yy, xx = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    yy, xx = yy.reshape(-1, 1), xx.reshape(-1, 1)  # (HW, 1)
    cand_y = torch.arange(height, device=device).view(1, -1)  # (1, H)
    cand_x = torch.arange(width, device=device).view(1, -1)  # (1, W)
    col = (cand_y * width + xx).expand(-1, height)  # (HW, H) same column
    row = (yy * width + cand_x).expand(-1, width)  # (HW, W) same row
    not_self = cand_y != yy  # (HW, H): drop the centre from the column part
    col = col[not_self].reshape(height * width, height - 1)  # (HW, H - 1)
    src = torch.sort(torch.cat([col, row], 1), dim=1).values  # (HW, H + W - 1)
    hw = height * width
    src = src.view(1, hw, -1) + (torch.arange(batch_size, device=device) * hw).view(-1, 1, 1)
    src = src.reshape(batch_size * hw, -1)  # (B * HW, H + W - 1)
    return _edges_from_rows(src, dense=True)


def image_to_nodes(img: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""An image batch ``(B, C, H, W)`` as nodes in row-major order.

    Returns:
        ``x (B * H * W, C)``; ``pos (B * H * W, 2)`` int64 ``(row, col)``; ``batch (B * H * W,)``.
    """
    if not isinstance(img, Tensor) or img.dim() != 4:
        got = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
        raise ValueError(f"img must be a tensor of shape (B, C, H, W), got {got}")
    b, c, h, w = img.shape
    x = img.permute(0, 2, 3, 1).reshape(b * h * w, c)  # (B*H*W, C)
    yy, xx = torch.meshgrid(
        torch.arange(h, device=img.device), torch.arange(w, device=img.device), indexing="ij"
    )
    pos = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1).repeat(b, 1)  # (B*H*W, 2)
    batch = torch.arange(b, device=img.device).repeat_interleave(h * w)  # (B*H*W,)
    return x, pos, batch


def nodes_to_image(x: Tensor, batch_size: int, height: int, width: int) -> Tensor:
    r"""Inverse of :func:`image_to_nodes`: ``x (B * H * W, C)`` -> ``(B, C, H, W)``."""
    batch_size = check_positive_int(batch_size, "batch_size")
    height = check_positive_int(height, "height")
    width = check_positive_int(width, "width")
    n = batch_size * height * width
    if not isinstance(x, Tensor) or x.dim() != 2 or x.size(0) != n:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"x must have shape (batch_size * height * width, C) = ({n}, C), got {got}"
        )
    return x.view(batch_size, height, width, -1).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------
# any node set
# --------------------------------------------------------------------------------------------


def _batch_arg(batch: Tensor | int) -> Tensor:
    """A sorted ``batch`` vector, or an int node count meaning one sample."""
    if isinstance(batch, int) and not isinstance(batch, bool):
        if batch < 0:
            raise ValueError(f"batch as a node count must be >= 0, got {batch}")
        return torch.zeros(batch, dtype=torch.long)
    if isinstance(batch, Tensor):
        return check_batch(batch, batch.numel() if batch.dim() == 1 else -1, "batch", "batch")
    raise ValueError(f"batch must be a tensor (N,) or an int, got {type(batch).__name__}")


def full_graph(
    batch: Tensor | int, *, loop: bool = True, batch_dst: Tensor | int | None = None
) -> Tensor:
    r"""All pairs within each sample: :math:`\mathcal N(i) = \{j : b_j = b_i\}` (global
    attention, non-local blocks).

    Args:
        batch: sample of each (source) node ``(N,)``, sorted; or an int ``N`` for one sample.
        loop: include ``i`` in :math:`\mathcal N(i)` (default: ``True``; one node set only).
        batch_dst: for a bipartite graph, the sample of each target node; every source of
            sample ``b`` then sends to every target of sample ``b`` (pooled keys, a padded
            grid, sampled centres). Default: the targets are the sources.

    Returns:
        ``edge_index (2, sum_b n_b m_b)`` (``n_b (n_b - 1)`` without loops), sorted by target,
        sources ascending.

    Raises:
        MemoryError: before allocating anything, when the pairs would not fit in the memory
            available on the device (a 100,000-node cloud has 10^10 pairs): free device
            memory, or on the host the least of MemAvailable and the headroom under the
            process's ``RLIMIT_AS`` / ``RLIMIT_DATA`` and its cgroup's memory limit
            (:func:`available_bytes`). Edge lists under 16 MiB (about 700 nodes all-pairs)
            are built without asking.
    """
    batch = _batch_arg(batch)
    target = batch if batch_dst is None else _batch_arg(batch_dst)
    if batch_dst is not None and not loop:
        raise ValueError("loop=False needs one node set; it has no meaning with batch_dst")
    device = batch.device
    if batch.numel() == 0 or target.numel() == 0:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    b = max(int(batch.max()), int(target.max())) + 1
    counts = torch.bincount(batch, minlength=b)  # (B,) sources per sample
    start = torch.cumsum(counts, 0) - counts  # (B,) first source of each sample
    deg = counts[target]  # (N_dst,) each target sees its whole sample
    _check_fits(int(deg.sum()), device)
    dst = torch.arange(target.numel(), device=device).repeat_interleave(deg)  # (E,)
    first = torch.cumsum(deg, 0) - deg  # (N_dst,) first edge of each target
    src = start[target][dst] + torch.arange(dst.numel(), device=device) - first[dst]  # (E,)
    edge_index = torch.stack([src, dst])
    if not loop:
        edge_index = edge_index[:, src != dst]
    return edge_index


_BYTES_PER_PAIR = 32  # full_graph's peak memory per pair (measured at 4,096 nodes; 16 are kept)
_GUARD_BYTES = 1 << 24  # smaller edge lists (up to ~700 nodes all-pairs) are built unasked
_NO_LIMIT = 1 << 62  # cgroup v1 writes "unlimited" as a number near 2^63


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take on ``device``: the free memory of a CUDA device; on the
    host the least of ``MemAvailable`` (``/proc/meminfo``), the headroom under the process's
    ``RLIMIT_AS`` and ``RLIMIT_DATA`` (``ulimit -v`` / ``-d``: the soft limit minus ``VmSize`` /
    ``VmData`` of ``/proc/self/status``) and under the memory limit of its cgroup and of every
    cgroup above it (v2 ``memory.max`` minus ``memory.current``, v1 ``memory.limit_in_bytes``
    minus ``memory.usage_in_bytes``; inactive page cache counted as free, as the kernel
    reclaims it). A source that cannot be read sets no limit; ``None`` when none can."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, ValueError):
            return None
    return _host_available_bytes()


def _host_available_bytes(
    meminfo: str | os.PathLike = "/proc/meminfo",
    status: str | os.PathLike = "/proc/self/status",
    cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
    self_cgroup: str | os.PathLike = "/proc/self/cgroup",
    rlimits: dict[str, int] | None = None,
) -> int | None:
    """:func:`available_bytes` on the host, reading the given files (for tests); ``rlimits``
    maps a ``/proc/self/status`` key (``"VmSize"``, ``"VmData"``) to its soft limit in bytes
    (default: ``resource.getrlimit`` of ``RLIMIT_AS`` and ``RLIMIT_DATA``)."""
    found = [
        v
        for v in (
            _meminfo_available(meminfo),
            _rlimit_available(status, rlimits),
            _cgroup_available(cgroup_root, self_cgroup),
        )
        if v is not None
    ]
    return max(0, min(found)) if found else None


def _read_int(path: str | os.PathLike) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _read_keys(path: str | os.PathLike, sep: str | None = None) -> dict[str, str]:
    """``key value ...`` lines (``key: value`` with ``sep=":"``) as a dict; empty if unreadable."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    pairs = (ln.split(sep, 1) for ln in lines)
    return {p[0].strip(): p[1].strip() for p in pairs if len(p) == 2}


def _kib(text: str | None) -> int | None:
    """``"123 kB"`` (a /proc field) in bytes."""
    try:
        return int(text.split()[0]) * 1024 if text else None
    except (ValueError, IndexError):
        return None


def _meminfo_available(meminfo: str | os.PathLike) -> int | None:
    return _kib(_read_keys(meminfo, ":").get("MemAvailable"))


def _rlimit_available(status: str | os.PathLike, rlimits: dict[str, int] | None) -> int | None:
    """Least headroom under the process's address-space and data-segment limits."""
    if rlimits is None:
        try:
            import resource
        except ImportError:  # not a Unix
            return None
        rlimits = {}
        for key, res in (("VmSize", resource.RLIMIT_AS), ("VmData", resource.RLIMIT_DATA)):
            soft = resource.getrlimit(res)[0]
            if soft != resource.RLIM_INFINITY:
                rlimits[key] = soft
    if not rlimits:
        return None
    used = _read_keys(status, ":")
    left = []
    for key, limit in rlimits.items():
        size = _kib(used.get(key))
        if size is not None:
            left.append(limit - size)
    return min(left) if left else None


def _cgroup_available(cgroup_root: str | os.PathLike, self_cgroup: str | os.PathLike) -> int | None:
    """Least headroom under the cgroup memory limits of this process and its ancestors.

    The process's cgroup comes from ``self_cgroup`` (``0::/path`` for v2, ``N:memory:/path``
    for v1); a path not visible under ``cgroup_root`` (a container without a cgroup namespace)
    falls back to its ancestors, down to the mount root, which is the container's own cgroup."""
    rel = {"v2": "/", "v1": "/"}
    try:
        with open(self_cgroup) as f:
            for line in f.read().splitlines():
                parts = line.split(":", 2)
                if len(parts) != 3:
                    continue
                if parts[0] == "0" and parts[1] == "":
                    rel["v2"] = parts[2]
                elif "memory" in parts[1].split(","):
                    rel["v1"] = parts[2]
    except OSError:
        pass
    root = os.fspath(cgroup_root)
    layouts = (
        (root, rel["v2"], "memory.max", "memory.current", "inactive_file"),
        (os.path.join(root, "unified"), rel["v2"], "memory.max", "memory.current", "inactive_file"),
        (
            os.path.join(root, "memory"),
            rel["v1"],
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "total_inactive_file",
        ),
    )
    left = []
    for base, path, limit_file, usage_file, inactive_key in layouts:
        parts = [p for p in path.split("/") if p not in ("", ".", "..")]
        for depth in range(len(parts), -1, -1):  # the cgroup, then each ancestor
            d = os.path.join(base, *parts[:depth])
            limit = _read_int(os.path.join(d, limit_file))  # None for v2's "max", or missing
            if limit is None or limit >= _NO_LIMIT:
                continue
            usage = _read_int(os.path.join(d, usage_file))
            if usage is None:
                continue
            try:
                stat = _read_keys(os.path.join(d, "memory.stat"))
                inactive = int(stat.get(inactive_key, "0"))
            except ValueError:
                inactive = 0
            left.append(limit - max(usage - inactive, 0))
    return min(left) if left else None


def _check_fits(pairs: int, device: torch.device) -> None:
    """Refuse, before allocating, an edge list of ``pairs`` edges that cannot fit (only asked
    above ``_GUARD_BYTES``: small graphs pay nothing)."""
    need = pairs * _BYTES_PER_PAIR
    if need <= _GUARD_BYTES:
        return
    have = available_bytes(device)
    if have is not None and need > have:
        where = (
            ""
            if device.type == "cuda"
            else (
                " (the least of MemAvailable and the headroom under the process's ulimit -v / -d "
                "and its cgroup memory limit)"
            )
        )
        raise MemoryError(
            f"full_graph: {pairs:,} pairs need about {need / 1e9:.1f} GB to build, but "
            f"{have / 1e9:.1f} GB is available on {device}; for local attention build "
            "knn_graph / radius_graph instead, and for all-pairs dot-product attention call "
            f"the layer with edge_index=None (its dense path never builds the pairs){where}"
        )


def slot_graph(batch: Tensor | int, num_slots: int) -> Tensor:
    r"""Bipartite edges from per-sample slots to nodes: node ``i`` of sample ``b`` receives
    from the ``num_slots`` slot nodes ``b * S, ..., b * S + S - 1`` (memory slots, virtual
    nodes, EM bases, pooled keys: one copy per sample, so a normaliser never mixes samples).

    Args:
        batch: sample of each node ``(N,)``, sorted; or an int ``N`` for one sample.
        num_slots: slots per sample ``S``.

    Returns:
        ``edge_index (2, N * S)``: row 0 the slot (``0 .. B * S - 1``), row 1 the node, sorted
        by node, slots ascending. ``edge_index.flip(0)`` is the reverse direction (nodes ->
        slots), sorted by :func:`sort_by_target` when needed.
    """
    num_slots = check_positive_int(num_slots, "num_slots")
    batch = _batch_arg(batch)
    b = int(batch.max()) + 1 if batch.numel() else 0
    slots = torch.arange(b, device=batch.device).repeat_interleave(num_slots)  # (B * S,)
    return full_graph(slots, batch_dst=batch)


def sort_by_target(
    edge_index: Tensor, *edge_attrs: Tensor, num_nodes: int | None = None
) -> tuple[Tensor, ...]:
    r"""Stable sort of edges (and their attributes) by target, for adjacency given by a user.

    Returns:
        ``(edge_index, *edge_attrs)`` permuted together; the order among the edges of a target
        is kept.
    """
    _check_edge_index(edge_index, num_nodes)
    perm = torch.argsort(edge_index[1], stable=True)
    return (edge_index[:, perm],) + tuple(a[perm] for a in edge_attrs)


def remove_self_loops(
    edge_index: Tensor, edge_attr: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    r"""Drop edges :math:`i \to i` (order of the rest kept)."""
    _check_edge_index(edge_index, None)
    _check_edge_attr(edge_attr, edge_index.size(1))
    keep = edge_index[0] != edge_index[1]
    return edge_index[:, keep], (None if edge_attr is None else edge_attr[keep])


def add_self_loops(
    edge_index: Tensor,
    edge_attr: Tensor | None = None,
    *,
    fill_value: float = 1.0,
    num_nodes: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    r"""Add one edge :math:`i \to i` per node, keeping the edges sorted by target.

    Existing self loops are kept (remove them first for exactly one per node). The new loop is
    the last edge of its target; its attribute is ``fill_value``.

    Returns:
        ``(edge_index, edge_attr)`` with ``E + N`` edges.
    """
    _check_edge_index(edge_index, num_nodes)
    _check_edge_attr(edge_attr, edge_index.size(1))
    n = _num_nodes(edge_index, num_nodes)
    loops = torch.arange(n, device=edge_index.device)
    ei = torch.cat([edge_index, torch.stack([loops, loops])], 1)
    attr = None
    if edge_attr is not None:
        fill = edge_attr.new_full((n,) + edge_attr.shape[1:], fill_value)
        attr = torch.cat([edge_attr, fill], 0)
    perm = torch.argsort(ei[1], stable=True)
    return ei[:, perm], (None if attr is None else attr[perm])


def replace_self_loops(
    edge_index: Tensor,
    edge_weight: Tensor | None = None,
    *,
    num_nodes: int | None = None,
    fill_value: float = 1.0,
    keep_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    r"""Drop the self loops of a graph and add exactly one edge :math:`i \to i` per node
    (GAT; GCN with ``keep_weights``), in :math:`O(E)`.

    With ``keep_weights`` (GCN, PyG's ``add_remaining_self_loops``) a node that had a self loop
    keeps that loop's weight (one of them when it had several); every other new loop gets
    ``fill_value``. When the edges are sorted by target, the loop is put after the other edges
    of its target and the result stays sorted (no sort needed: each edge moves by its target's
    id); otherwise the loops are appended.
    """
    _check_edge_index(edge_index, num_nodes)
    num_nodes = _num_nodes(edge_index, num_nodes)
    if edge_weight is not None and (
        not isinstance(edge_weight, Tensor) or edge_weight.shape != (edge_index.size(1),)
    ):
        raise ValueError(
            f"edge_weight must have shape ({edge_index.size(1)},), got {shape_of(edge_weight)}"
        )
    edge_index = edge_index.long()
    src, dst = edge_index[0], edge_index[1]
    loop_w = None
    is_loop = src == dst  # (E,)
    has_loops = bool(is_loop.any())
    if edge_weight is not None:
        loop_w = edge_weight.new_full((num_nodes,), fill_value)  # (N,)
        if keep_weights and has_loops:
            loop_w[src[is_loop]] = edge_weight[is_loop]
    if has_loops:
        keep = ~is_loop
        edge_index = edge_index[:, keep]  # (2, E')
        src, dst = edge_index[0], edge_index[1]
        edge_weight = None if edge_weight is None else edge_weight[keep]
    e = dst.numel()
    loops = torch.arange(num_nodes, device=dst.device)
    if e > 1 and not bool((dst[1:] >= dst[:-1]).all()):
        out = torch.cat([edge_index, torch.stack([loops, loops])], 1)  # (2, E' + N)
        w = None if edge_weight is None else torch.cat([edge_weight, loop_w])
        return out, w
    # sorted by target: edge k moves to k + dst[k]; node i's loop goes to end(i) + i
    end = torch.cumsum(torch.bincount(dst, minlength=num_nodes), 0)  # (N,)
    old_at = torch.arange(e, device=dst.device) + dst  # (E',)
    loop_at = end + loops  # (N,)
    out = edge_index.new_empty(2, e + num_nodes)
    out[:, old_at] = edge_index
    out[:, loop_at] = loops
    w = None
    if edge_weight is not None:
        w = edge_weight.new_empty(e + num_nodes)
        w[old_at] = edge_weight
        w[loop_at] = loop_w
    return out, w


def to_csr(edge_index: Tensor, num_nodes: int | None = None) -> Tensor:
    r"""Row pointers ``ptr (N + 1,)`` of target-sorted edges: the edges of node ``i`` are
    ``ptr[i]:ptr[i + 1]``.

    Raises:
        ValueError: when ``edge_index[1]`` is not sorted (call :func:`sort_by_target`).
    """
    _check_edge_index(edge_index, num_nodes)
    dst = edge_index[1]
    e = first_descent(dst)
    if e is not None:
        raise ValueError(
            f"edge_index must be sorted by target (edge_index[1]); edge {e} has target "
            f"{int(dst[e])} and edge {e + 1} has {int(dst[e + 1])}. "
            "Use pcattn.graphs.sort_by_target first"
        )
    return index_to_ptr(dst, _num_nodes(edge_index, num_nodes))


def _num_nodes(edge_index: Tensor, num_nodes: int | None) -> int:
    if num_nodes is not None:
        return num_nodes
    return int(edge_index.max()) + 1 if edge_index.numel() else 0


def _check_edge_attr(edge_attr: object, e: int) -> None:
    if edge_attr is not None and (
        not isinstance(edge_attr, Tensor) or edge_attr.dim() < 1 or edge_attr.size(0) != e
    ):
        got = shape_of(edge_attr)
        raise ValueError(f"edge_attr must be a tensor ({e}, ...) or None, got {got}")


def _check_edge_index(edge_index: Tensor, num_nodes: int | None) -> None:
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        got = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index)
        raise ValueError(f"edge_index must be a tensor of shape (2, E), got {got}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"edge_index must be int64, got {edge_index.dtype}")
    if num_nodes is None:
        if edge_index.numel() and int(edge_index.min()) < 0:
            raise ValueError(f"edge_index holds negative node ids (min {int(edge_index.min())})")
    else:
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
            raise ValueError(f"num_nodes must be an int >= 0, got {num_nodes!r}")
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
            raise ValueError(
                f"edge_index holds node ids in [{int(edge_index.min())}, {int(edge_index.max())}]"
                f" but num_nodes={num_nodes}"
            )

r"""Exact k-nearest-neighbour search, the engine behind :mod:`pcattn.graphs`.

Two interchangeable back ends return the same answer:

* ``"kdtree"`` (CPU): one SciPy ``cKDTree`` over every cloud of the batch. Clouds are kept apart
  by an extra coordinate ``batch * L`` with ``L`` larger than any distance inside the data, so
  one tree and one multi-threaded query serve the whole batch with no Python loop over samples,
  and distances inside a cloud are unchanged (the extra coordinate differs by exactly 0). A
  graph on one point set is queried in the tree's own leaf order, which keeps consecutive
  queries in the same part of the tree.
* ``"brute"`` (any device, the GPU path): chunked pairwise distances and ``topk``. Query rows are
  processed in chunks whose rows x candidate-columns stay under ``chunk_elements``, and each
  chunk only looks at the columns of the clouds its rows belong to.

Ties are broken the same way by both: neighbours are ordered by (squared distance, index), so the
result equals a brute-force reference exactly and is reproducible. The tree answers most rows; a
row whose k-th and (k+1)-th candidates are equally far (a tie at the boundary, common on grids)
is recomputed by the brute-force path, which resolves boundary ties by index.

Squared distances are computed in float64 as ``sum_d (y_d - x_d)^2`` on both paths. Clouds whose
squared distances would overflow float64 (or underflow it, so that all distances tie at 0) are
refused with a ``ValueError`` before any search (:func:`pcattn.checks.distance_range_fault`);
float32 / float16 / bfloat16 positions always fit. Clouds each in range but together too far
apart for the kd-tree's one shared tree (coordinates near float64's limit, a huge radius) are
searched by the brute-force path, which only ever compares points of one cloud.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .checks import DISTANCE_MARGIN, check_distance_range, check_has_coordinates
from .ops import ptr_to_index, scatter_csr

__all__ = ["knn_search", "cloud_bounds", "check_coordinate_range", "range_may_fault"]

_CHUNK_ELEMENTS = 1 << 24  # rows x columns of one brute-force distance block (128 MiB in float64)
#: from this many dimensions "auto" searches by matrix products (a kd-tree degrades with the
#: dimension: at 16 x 1,024 points, k = 20, it takes 0.05 s in 3-d but 0.5 s in 64-d)
MATMUL_MIN_DIM = 8


def knn_search(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor | None,
    batch_y: Tensor | None,
    *,
    self_index: bool = False,
    r: float | None = None,
    method: str = "auto",
    chunk_elements: int = _CHUNK_ELEMENTS,
    name: str | None = None,
    distances: bool = True,
) -> tuple[Tensor, Tensor | None]:
    r"""The ``k`` nearest points of ``x`` for every point of ``y``, within the same cloud.

    Args:
        x: candidates ``(Nx, D)``; y: queries ``(M, D)``; batches sorted (validated upstream).
        self_index: ``x`` is ``y`` and query ``i`` must not return point ``i`` itself.
        r: when set, only neighbours with squared distance ``<= r * r`` are kept.
        method: ``"auto"``, ``"kdtree"``, ``"brute"`` or ``"matmul"``. ``"auto"`` takes
            ``"matmul"`` for ``D >= MATMUL_MIN_DIM`` without ``r`` (feature spaces: DGCNN's
            dynamic graphs), else the kd-tree on CPU and brute force elsewhere. All give the
            same neighbours in the same order.
        name: what to call the points in errors (the caller's argument names).
        distances: also return the distances (default: ``True``; ``False`` returns ``None``
            in their place and saves their exact recomputation on the ``"matmul"`` path).

    Without ``r``, every cloud of ``x`` must hold at least ``k`` points (``k + 1`` with
    ``self_index``); the public builders check this.

    Returns:
        ``idx (M, k)`` int64 indices into ``x`` ordered by (distance, index), ``-1`` where a row
        has fewer than ``k`` neighbours; ``dist (M, k)`` float64 Euclidean distances, ``inf`` at
        those slots.

    Raises:
        ValueError: when the points have no coordinate (``D = 0``), or when the squared
            distances inside a cloud do not fit float64 (named ``name``; default ``"x"`` for
            one point set, ``"x and y"`` for two).
    """
    if name is None:
        name = "x" if x is y else "x and y"
    check_has_coordinates(x, name)
    check_has_coordinates(y, name)
    if x.size(0) > 0 and y.size(0) > 0:
        check_coordinate_range(x, y, batch_x, batch_y, name, torch.float64)
    if method not in ("auto", "kdtree", "brute", "matmul"):
        raise ValueError(f"method must be 'auto', 'kdtree', 'brute' or 'matmul', got {method!r}")
    if method == "matmul" and r is not None:
        raise ValueError("method 'matmul' searches the k nearest without a radius: r must be None")
    if method == "matmul" or (method == "auto" and r is None and x.size(1) >= MATMUL_MIN_DIM):
        found = _matmul(x, y, k, batch_x, batch_y, self_index, chunk_elements, distances)
        if found is not None:
            return found
        method = "auto"  # clouds too uneven to pad: the exact paths
    if method == "auto":
        method = "kdtree" if x.device.type == "cpu" else "brute"
    if method == "kdtree":
        return _kdtree(x, y, k, batch_x, batch_y, self_index, r, chunk_elements)
    return _brute(x, y, k, batch_x, batch_y, _self_cols(y, self_index), r, chunk_elements)


# --------------------------------------------------------------------------------------------
# the range of the coordinates
# --------------------------------------------------------------------------------------------


def cloud_bounds(
    x: Tensor,
    batch_x: Tensor | None,
    y: Tensor | None = None,
    batch_y: Tensor | None = None,
    *,
    ptr_x: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Coordinate bounds of each cloud over ``x`` and ``y`` together: ``lo, hi`` float64 on
    CPU, ``(B, D)`` with row ``b`` for sample ``b`` (``(1, D)`` without a batch). A sample
    missing from ``x`` or from ``y`` compares no points: its row is 0. ``x`` and ``y`` must be
    non-empty; batches sorted (checked upstream); ``ptr_x`` (optional) the row pointers of
    ``batch_x`` when the caller has them."""
    tensors = [(x, batch_x, ptr_x)] + ([] if y is None or y is x else [(y, batch_y, None)])
    if batch_x is None:
        lo = torch.stack([t.detach().amin(0) for t, _, _ in tensors]).amin(0, keepdim=True)
        hi = torch.stack([t.detach().amax(0) for t, _, _ in tensors]).amax(0, keepdim=True)
        return lo.double().cpu(), hi.double().cpu()
    if ptr_x is not None:
        num = ptr_x.numel() - 1
    else:
        num = max(int(b[-1]) for _, b, _ in tensors) + 1
    lo = torch.full((num, x.size(1)), math.inf, dtype=torch.float64)
    hi = torch.full((num, x.size(1)), -math.inf, dtype=torch.float64)
    both = torch.ones(num, dtype=torch.bool)
    for t, b, ptr in tensors:
        ptr = (_cloud_ptr(b, t.size(0), b.device, num) if ptr is None else ptr).to(t.device)
        t = t.detach()  # min and max are exact in any precision: reduce first, then widen
        lo = torch.minimum(lo, scatter_csr(t, ptr, "min").double().cpu())  # empty samples: 0
        hi = torch.maximum(hi, scatter_csr(t, ptr, "max").double().cpu())
        both &= (ptr[1:] > ptr[:-1]).cpu()
    lo, hi = lo.masked_fill(~both[:, None], 0.0), hi.masked_fill(~both[:, None], 0.0)
    return lo, hi


def check_coordinate_range(
    x: Tensor,
    y: Tensor,
    batch_x: Tensor | None,
    batch_y: Tensor | None,
    name: str,
    dtype: torch.dtype,
) -> None:
    """Refuse (``ValueError`` naming ``name``) clouds whose squared distances between ``x`` and
    ``y`` do not fit ``dtype`` (:func:`pcattn.checks.distance_range_fault`). Free when the
    dtype of the points can never fault in ``dtype`` (float32 points in float64)."""
    if not range_may_fault(x.dtype, x.size(1), dtype) and not range_may_fault(
        y.dtype, y.size(1), dtype
    ):
        return
    lo, hi = cloud_bounds(x, batch_x, y, batch_y)
    check_distance_range(lo, hi, dtype, name, batched=batch_x is not None)


def range_may_fault(data: torch.dtype, dims: int, work: torch.dtype) -> bool:
    """Whether points of dtype ``data`` in ``dims`` dimensions can over- or underflow squared
    distances computed in ``work``: the widest box, ``2 * finfo(data).max`` per coordinate,
    must fit, and the smallest non-zero difference (a subnormal step of ``data``) times
    ``work``'s eps must square to a normal number."""
    fd, fw = torch.finfo(data), torch.finfo(work)
    widest = 2.0 * fd.max
    step = fd.tiny * fd.eps  # the smallest positive subnormal of data
    return not (
        dims * widest * widest <= fw.max / DISTANCE_MARGIN and (step * fw.eps) ** 2 >= fw.tiny
    )


# --------------------------------------------------------------------------------------------
# brute force (device agnostic)
# --------------------------------------------------------------------------------------------


def _ranges(batch_x: Tensor | None, batch_y: Tensor | None, nx: int, m: int):
    """Per query row, the column range ``[lo, hi)`` of its cloud in ``x`` (numpy, int64)."""
    if batch_x is None:
        return np.zeros(m, dtype=np.int64), np.full(m, nx, dtype=np.int64)
    by = batch_y.cpu().numpy()
    num = int(max(batch_x.max().item() if nx else -1, by.max() if m else -1)) + 1
    ptr = np.zeros(num + 1, dtype=np.int64)
    np.cumsum(np.bincount(batch_x.cpu().numpy(), minlength=num), out=ptr[1:])
    return ptr[by], ptr[by + 1]


def _self_cols(y: Tensor, self_index: bool) -> Tensor | None:
    return torch.arange(y.size(0), device=y.device) if self_index else None


def _brute(x, y, k, batch_x, batch_y, self_cols, r, chunk_elements):
    """Brute force; ``self_cols (M,)`` (optional) is the column of ``x`` each row must skip."""
    m, nx, device = y.size(0), x.size(0), y.device
    idx_out = torch.full((m, k), -1, dtype=torch.long, device=device)
    d_out = torch.full((m, k), math.inf, dtype=torch.float64, device=device)
    if m == 0 or nx == 0:
        return idx_out, d_out
    x64, y64 = x.detach().to(torch.float64), y.detach().to(torch.float64)
    lo, hi = _ranges(batch_x, batch_y, nx, m)
    s = 0
    while s < m:
        e = _chunk_end(lo, hi, s, chunk_elements)
        c0, c1 = int(lo[s]), int(hi[e - 1])
        d2 = _sq_dist(y64[s:e], x64[c0:c1])  # (rows, cols)
        if batch_x is not None:
            other = batch_y[s:e, None] != batch_x[None, c0:c1]  # (rows, cols)
            d2.masked_fill_(other, math.inf)
        if self_cols is not None:
            rows = torch.arange(e - s, device=device)
            d2[rows, self_cols[s:e] - c0] = math.inf
        if r is not None:
            d2.masked_fill_(d2 > r * r, math.inf)
        idx, d = _topk_ties_by_index(d2, k)  # (rows, k') with k' = min(k, cols)
        idx = torch.where(torch.isinf(d), -1, idx + c0)
        idx_out[s:e, : idx.size(1)] = idx
        d_out[s:e, : d.size(1)] = d
        s = e
    return idx_out, d_out.sqrt_()


# --------------------------------------------------------------------------------------------
# matrix products, made exact (any device)
# --------------------------------------------------------------------------------------------


def _matmul(x, y, k, batch_x, batch_y, self_index, chunk_elements, distances):
    r"""kNN by ``|y|^2 + |x|^2 - 2 y.x``, one batched matrix product per group of clouds padded
    to the largest (as DGCNN's reference computes it), made exact: the product's squared
    distances ``v`` are within :math:`E_i = 2.5 (D + 4) u (|y_i|^2 + \max_j |x_j|^2)` of the true
    ones (the standard dot-product bound, ``u`` the unit round-off of the working precision),
    so a row whose ``k + 1`` smallest ``v`` are more than ``2 E_i`` apart from one to the next
    has exactly those ``k`` neighbours in exactly that order. Any other row (a tie, a gap
    within round-off) orders its ``k + 8`` smallest by their exact float64 distances (summed
    dimension by dimension, as :func:`_sq_dist`) and index, which is final when its ``k``-th is
    nearer than ``v - E_i`` of the last candidate; the few rows left are searched again by
    :func:`_brute` in their own cloud. The result always equals the brute-force path's.

    Returns ``None`` when padding would more than double the pairs (very uneven clouds).
    """
    m, nx, d, device = y.size(0), x.size(0), x.size(1), y.device
    if m == 0 or nx == 0:
        return None
    # the bound below holds for true float32 (or float64) products, not for TF32 / bfloat16 ones
    exact32 = torch.get_float32_matmul_precision() == "highest" and not (
        device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    )
    work = torch.float64 if x.dtype == torch.float64 or not exact32 else torch.float32
    ptr_y = _cloud_ptr(batch_y, m, device)
    b = ptr_y.numel() - 1  # the clouds with queries (upstream: each has points in x)
    ptr_x = _cloud_ptr(batch_x, nx, device, b)
    n_x, n_y = ptr_x.diff(), ptr_y.diff()  # (B,), (B,)
    nx_max, ny_max = int(n_x.max()), int(n_y.max())
    if nx_max < k + int(self_index) or b * nx_max * ny_max > 2 * int((n_x * n_y).sum()) + 4096:
        return None
    nx_used = int(ptr_x[-1])  # x's points in those clouds
    bx, by = ptr_to_index(ptr_x), ptr_to_index(ptr_y)  # (Nx used,), (M,): each row's cloud
    px = torch.arange(nx_used, device=device) - ptr_x[bx]
    py = torch.arange(m, device=device) - ptr_y[by]
    xs = x.new_zeros((b, nx_max, d), dtype=work)
    xs[bx, px] = x[:nx_used].detach().to(work)  # (B, n_x max, D)
    ys = y.new_zeros((b, ny_max, d), dtype=work)
    ys[by, py] = y.detach().to(work)  # (B, n_y max, D)
    xx, yy = xs.square().sum(-1), ys.square().sum(-1)  # (B, n_x max), (B, n_y max)
    col_pad = torch.arange(nx_max, device=device)[None, :] >= n_x[:, None]  # (B, n_x max)
    padded = bool(col_pad.any())
    xx_max = xx.masked_fill(col_pad, 0).amax(1).double()  # (B,)
    u = torch.finfo(work).eps / 2
    # |v - d^2| <= (2 D + 6) u (|y|^2 + |x|^2): the dot product's gamma_D bound, the norms'
    # own, and the two roundings of the sums; with 25% to spare for the norms' own round-off
    err = 2.5 * (d + 4) * u * (yy.double() + xx_max[:, None])  # (B, n_y max)
    kk = min(k + _EXTRA, nx_max)
    vals = torch.empty((b, ny_max, kk), dtype=work, device=device)
    ids = torch.empty((b, ny_max, kk), dtype=torch.long, device=device)
    # blocks of whole clouds, or of query rows of one cloud: at most chunk_elements products
    step = max(1, chunk_elements // max(1, nx_max * ny_max))
    rows_per = max(1, chunk_elements // nx_max)
    for c0 in range(0, b, step):
        c1 = min(b, c0 + step)
        for r0 in range(0, ny_max, rows_per):
            r1 = min(ny_max, r0 + rows_per)
            xt = xs[c0:c1].transpose(1, 2)  # (b, D, n_x max)
            v = torch.baddbmm(xx[c0:c1, None, :], ys[c0:c1, r0:r1], xt, alpha=-2)
            v.add_(yy[c0:c1, r0:r1, None])  # (b, rows, n_x max)
            if padded:
                v.masked_fill_(col_pad[c0:c1, None, :], math.inf)
            if self_index:
                v.diagonal(offset=r0, dim1=1, dim2=2).fill_(math.inf)  # the query's own column
            found = torch.topk(v, kk, dim=2, largest=False, sorted=True)
            vals[c0:c1, r0:r1], ids[c0:c1, r0:r1] = found
            del v
    vals, ids, err = vals[by, py], ids[by, py] + ptr_x[:-1][by, None], err[by, py]  # (M, kk)
    if not bool(torch.isfinite(vals[:, :k]).all()):
        return None  # a cloud with fewer than k points (upstream checks refuse them)
    # 1. rows whose order and cut are both beyond round-off
    gaps = vals[:, : k + 1].double().diff(dim=1)  # (M, k), inf or nan past a cloud's end
    ok = (~(gaps <= 2 * err[:, None])).all(1)  # inf - inf = nan counts: no point there
    idx = ids[:, :k].clone()  # (M, k) into x
    x, y = x.detach(), y.detach()
    rows = torch.nonzero(~ok).flatten()
    if rows.numel() > 0:
        # 2. the rest: exact distances of every candidate, final when the k-th is nearer than
        # anything past the candidates can be
        missing = ~torch.isfinite(vals[rows])  # (R, kk): padding or the query itself
        cand = ids[rows].masked_fill(missing, 0)  # (R, kk), padding may point past x
        exact = _exact_rows(x, y[rows], cand).masked_fill_(missing, math.inf)
        cand, exact = _sort_by_dist_then_index(cand, exact)
        bound = vals[rows, -1].double() - err[rows]  # (R,) below every point not a candidate
        final = (exact[:, k - 1] < bound) | torch.isinf(vals[rows, -1])
        idx[rows[final]] = cand[final, :k]
        # 3. ties at the cut or gaps within round-off: brute force within the row's cloud
        for q in rows[~final].tolist():
            c = int(by[q])
            c0, c1 = int(ptr_x[c]), int(ptr_x[c + 1])
            # with self_index x is y: the query's own column in its cloud is its position there
            own = torch.tensor([q - int(ptr_y[c])], device=device) if self_index else None
            found, _ = _brute(x[c0:c1], y[q : q + 1], k, None, None, own, None, chunk_elements)
            idx[q] = found[0] + c0
    if not distances:
        return idx, None
    return idx, _exact_rows(x, y, idx).sqrt_()


_EXTRA = 8  # candidates past the k-th the matmul path orders exactly when round-off is close


def _exact_rows(x: Tensor, y: Tensor, cand: Tensor) -> Tensor:
    """Squared distances ``(R, c)`` of the rows ``y (R, D)`` to their candidates ``cand`` of
    ``x``, dimension by dimension in float64 (the same sums as :func:`_sq_dist`)."""
    xt = x.t().to(torch.float64).contiguous()  # (D, N): one coordinate per row
    yt = y.t().to(torch.float64).contiguous()  # (D, R)
    d2 = torch.zeros(cand.shape, dtype=torch.float64, device=y.device)
    for dim in range(y.size(1)):
        d2.add_((yt[dim, :, None] - xt[dim].take(cand)).square_())
    return d2


def _cloud_ptr(batch: Tensor | None, n: int, device, clouds: int | None = None) -> Tensor:
    """Row pointers ``(B + 1,)`` of a sorted ``batch`` (one cloud without one), for the first
    ``clouds`` clouds when given."""
    if batch is None:
        return torch.tensor([0, n], device=device)
    counts = torch.bincount(batch, minlength=clouds or 0)[:clouds]
    ptr = torch.zeros(counts.numel() + 1, dtype=torch.long, device=device)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr


def _chunk_end(lo: np.ndarray, hi: np.ndarray, s: int, budget: int) -> int:
    """Largest ``e`` (at least ``s + 1``) with ``(e - s) * (hi[e-1] - lo[s]) <= budget``."""
    m = lo.shape[0]
    a, b = s + 1, m  # the cost is non-decreasing in e: binary search
    while a < b:
        mid = (a + b + 1) // 2
        if (mid - s) * (hi[mid - 1] - lo[s]) <= budget:
            a = mid
        else:
            b = mid - 1
    return a


def _sq_dist(y: Tensor, x: Tensor) -> Tensor:
    """``(rows, cols)`` squared distances, summed dimension by dimension (no cancellation)."""
    d2 = torch.zeros(y.size(0), x.size(0), dtype=y.dtype, device=y.device)
    for dim in range(y.size(1)):
        diff = y[:, dim, None] - x[None, :, dim]  # (rows, cols)
        d2.add_(diff.square_())
    return d2


def _topk_ties_by_index(d2: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest entries of each row, ties broken by column index, sorted."""
    cols = d2.size(1)
    kk = min(k + 1, cols)
    vals, ids = torch.topk(d2, kk, dim=1, largest=False, sorted=True)  # (rows, kk)
    kout = min(k, cols)
    if kk > kout:
        tie = (vals[:, kout - 1] == vals[:, kout]) & torch.isfinite(vals[:, kout - 1])  # (rows,)
        rows = torch.nonzero(tie).flatten()
        if rows.numel() > 0:
            # boundary tie: take everything strictly closer, then the tied columns by index
            sub = d2[rows]  # (t, cols)
            tau = vals[rows, kout - 1, None]  # (t, 1)
            closer = sub < tau
            tied = sub == tau
            room = kout - closer.sum(1, keepdim=True)  # (t, 1)
            keep = closer | (tied & (torch.cumsum(tied, 1) <= room))  # exactly kout per row
            ids[rows, :kout] = torch.nonzero(keep)[:, 1].view(-1, kout)
            vals[rows, :kout] = torch.gather(sub, 1, ids[rows, :kout])
    ids, vals = ids[:, :kout], vals[:, :kout]
    return _sort_by_dist_then_index(ids, vals)


def _sort_by_dist_then_index(ids: Tensor, vals: Tensor) -> tuple[Tensor, Tensor]:
    ids, order = torch.sort(ids, dim=1)
    vals = torch.gather(vals, 1, order)
    vals, order = torch.sort(vals, dim=1, stable=True)
    return torch.gather(ids, 1, order), vals


# --------------------------------------------------------------------------------------------
# kd-tree (CPU)
# --------------------------------------------------------------------------------------------


def _kdtree(x, y, k, batch_x, batch_y, self_index, r, chunk_elements):
    from scipy.spatial import cKDTree

    m, nx = y.size(0), x.size(0)
    if m == 0 or nx == 0:
        return _brute(x, y, k, batch_x, batch_y, None, r, chunk_elements)
    same = self_index or x is y  # a graph on one point set
    xs = x64 = x.detach().to(torch.float64).numpy()
    ys = y64 = xs if same else y.detach().to(torch.float64).numpy()
    batched = batch_x is not None and (
        int(batch_x[-1]) != int(batch_x[0]) or int(batch_y[-1]) != int(batch_y[0])
    )
    bxn = byn = None
    if batched:
        bxn, byn = batch_x.numpy(), batch_y.numpy()
        lo = np.minimum(xs.min(0), ys.min(0))
        with np.errstate(over="ignore"):
            diag = float(np.linalg.norm(np.maximum(xs.max(0), ys.max(0)) - lo))
            sep = 2.0 * diag + 2.0 * (r or 0.0) + 1.0  # > any distance
            top = max(int(bxn[-1]), int(byn[-1])) * sep  # the largest separator coordinate
            if not diag * diag + top * top <= np.finfo(np.float64).max / DISTANCE_MARGIN:
                # one tree over all clouds would compute distances beyond float64: each cloud
                # is in range (checked), and the brute-force path compares only within clouds
                return _brute(
                    x, y, k, batch_x, batch_y, _self_cols(y, self_index), r, chunk_elements
                )
        xs = np.concatenate([xs, (bxn * sep)[:, None]], axis=1)
        ys = xs if same else np.concatenate([ys, (byn * sep)[:, None]], axis=1)

    kq = k + int(self_index) + 1  # + self, + one more to see a tie at the boundary
    kq = min(kq, nx)
    bound = np.inf if r is None else np.nextafter(r, np.inf) * (1.0 + 1e-9)
    tree = cKDTree(xs, leafsize=16, balanced_tree=False, compact_nodes=False)
    if same:
        # query in the tree's leaf order: neighbouring queries walk the same nodes (about 1.4x
        # faster than the input order), then put the rows back
        order = tree.indices
        dist_l, idx_l = tree.query(xs[order], k=kq, workers=-1, distance_upper_bound=bound)
        dist = np.empty((m, kq))
        idx = np.empty((m, kq), dtype=idx_l.dtype)
        dist[order], idx[order] = dist_l.reshape(m, kq), idx_l.reshape(m, kq)
    else:
        dist, idx = tree.query(ys, k=kq, workers=-1, distance_upper_bound=bound)
        dist, idx = dist.reshape(m, kq), idx.reshape(m, kq)

    rows = np.arange(m)
    if self_index and (idx[:, 0] == rows).all():
        dist, idx = dist[:, 1:], idx[:, 1:]  # the common case: a point is its own nearest
        drop_self = False
    else:
        drop_self = self_index
    if r is not None and not drop_self:
        # the tree puts missing neighbours (beyond the bound, which is below the distance to
        # any other cloud) at the end of a row: mark them, no reordering needed
        missing = idx >= nx
        dist[missing], idx[missing] = np.inf, -1
    elif drop_self:
        invalid = (idx >= nx) | (idx == rows[:, None])  # missing, or the point itself
        if batched:
            invalid |= bxn[np.minimum(idx, nx - 1)] != byn[:, None]
        if invalid.any():
            order = np.argsort(invalid, axis=1, kind="stable")  # valid first, in order
            idx = np.take_along_axis(idx, order, 1)
            dist = np.take_along_axis(dist, order, 1)
            invalid = np.take_along_axis(invalid, order, 1)
            dist[invalid] = np.inf
            idx[invalid] = -1
    elif batched and idx.shape[1] > k:
        # without r, upstream checked that every cloud has k (+ self) points, and any point of
        # another cloud is farther than all of them: only the extra tie column can be invalid
        tie = idx[:, k]  # (m,) nx where the tree found nothing (no distance in range)
        other = (tie >= nx) | (bxn[np.minimum(tie, nx - 1)] != byn)  # reached another cloud
        dist[other, k] = np.inf
    if r is not None:
        dist = _exact_sq_dist(x64, y64, idx)  # compare d^2 <= r^2 exactly
        far = dist > r * r
        dist[far], idx[far] = np.inf, -1

    cols = idx.shape[1]
    if cols < k:  # radius with tiny clouds
        idx = np.pad(idx, ((0, 0), (0, k - cols)), constant_values=-1)
        dist = np.pad(dist, ((0, 0), (0, k - cols)), constant_values=np.inf)
    tie_rows = np.zeros(m, dtype=bool)
    if cols > k:  # the k-th and the (k+1)-th are equally far: the set itself needs the index
        tie_rows = (dist[:, k - 1] == dist[:, k]) & np.isfinite(dist[:, k - 1])
    idx, dist = idx[:, :k], dist[:, :k]

    # within a row, order by (squared distance, index): fix the rows where that can differ
    # from the tree's order (equal distances, or for radius any disorder after the recompute)
    if r is None:
        fix = np.nonzero((dist[:, 1:] == dist[:, :-1]).any(1))[0]
    else:
        key = np.where(idx < 0, nx, idx)
        bad = (dist[:, 1:] < dist[:, :-1]) | (
            (dist[:, 1:] == dist[:, :-1]) & (key[:, 1:] < key[:, :-1])
        )
        fix = np.nonzero(bad.any(1))[0]
    if fix.size:
        sub_i = idx[fix]
        sub_d = _exact_sq_dist(x64, y64[fix], sub_i)
        order = np.lexsort((np.where(sub_i < 0, nx, sub_i), sub_d), axis=1)
        idx[fix] = np.take_along_axis(sub_i, order, 1)
        sub_d = np.take_along_axis(sub_d, order, 1)
        dist[fix] = sub_d if r is not None else np.sqrt(sub_d)  # kNN rows hold distances

    edges = torch.from_numpy(np.ascontiguousarray(idx))
    if r is not None:
        dist = np.sqrt(dist)
    dist_t = torch.from_numpy(dist)
    if tie_rows.any():  # resolve boundary ties by index on the exact path
        t = torch.from_numpy(np.nonzero(tie_rows)[0])
        by = None if batch_y is None else batch_y[t]
        bi, bd = _brute(x, y[t], k, batch_x, by, t if self_index else None, r, chunk_elements)
        edges[t], dist_t[t] = bi, bd
    return edges, dist_t


def _exact_sq_dist(xs: np.ndarray, ys: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Squared distances of the rows ``ys`` to their candidates ``idx`` (``inf`` where ``-1``)."""
    cand = xs[np.maximum(idx, 0)]  # (m, c, D)
    d2 = np.zeros(idx.shape, dtype=np.float64)
    for dim in range(xs.shape[1]):
        d2 += np.square(ys[:, None, dim] - cand[:, :, dim])
    d2[idx < 0] = np.inf
    return d2

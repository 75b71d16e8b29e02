"""Extreme but finite coordinates, zero-dimensional positions and duplicate points in the
distance-based builders (knn_graph, knn, radius_graph, fps and the models' ball query and
interpolation): the right answer, or one clear error naming the argument.

The right answer is checked on clouds rescaled by a power of two: floating-point arithmetic
is exact under such a scaling as long as nothing over- or underflows, so a rescaled cloud must
give exactly the indices of the original one under the float64 reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pcattn import graphs

METHODS = ["kdtree", "brute"]
FPS_METHODS = ["torch"] + (["compiled"] if graphs._fps_extension() is not None else [])
F64_MAX = torch.finfo(torch.float64).max
F32_MAX = torch.finfo(torch.float32).max


def _cloud(seed: int, n: int = 40, d: int = 3, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _batch(sizes) -> torch.Tensor:
    return torch.cat([torch.full((n,), b, dtype=torch.long) for b, n in enumerate(sizes)])


# --------------------------------------------------------------------------------------------
# independent references (numpy float64)
# --------------------------------------------------------------------------------------------


def _ref_knn_graph(pos, k, batch=None, r=None) -> list[list[int]]:
    """Per point, its neighbours (not itself) nearest first, ties by index, from the full
    float64 distance matrix (within ``r`` when given)."""
    p = np.asarray(pos, dtype=np.float64)
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    if batch is not None:
        b = np.asarray(batch)
        d2[b[:, None] != b[None, :]] = np.inf
    if r is not None:
        d2[d2 > r * r] = np.inf
    cols = np.arange(p.shape[0])
    rows = []
    for i in range(p.shape[0]):
        order = np.lexsort((cols, d2[i]))[:k]
        rows.append([int(j) for j in order if np.isfinite(d2[i, j])])
    return rows


def _rows(edge_index: torch.Tensor, n: int) -> list[list[int]]:
    out = [[] for _ in range(n)]
    for j, i in edge_index.t().tolist():
        out[i].append(j)
    return out


def _ref_fps(pos, m: int, start: int) -> list[int]:
    """The textbook loop in the precision of ``pos``: take the point not yet taken whose
    distance to the taken set is largest, the lowest index on ties."""
    pos = np.asarray(pos)
    mind = np.full(pos.shape[0], np.inf, dtype=pos.dtype)
    taken = np.zeros(pos.shape[0], dtype=bool)
    out = [start]
    for _ in range(m - 1):
        taken[out[-1]] = True
        diff = pos - pos[out[-1]]
        d = diff[:, 0] * diff[:, 0]
        for c in range(1, pos.shape[1]):
            d = d + diff[:, c] * diff[:, c]
        mind = np.minimum(mind, d)
        out.append(int(np.argmax(np.where(taken, -np.inf, mind))))
    return out


# --------------------------------------------------------------------------------------------
# knn_graph / knn / radius_graph: float64 arithmetic, float64 input out of range refused
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_float64_coordinates_whose_squares_overflow_are_refused(method):
    pos = _cloud(0) * 1e160  # the issue: brute gave edge ids of -1, the kd-tree an IndexError
    msg = (
        r"pos has coordinates up to 9\.\d+e\+159 whose squared distances overflow float64: "
        r"the points span 1\.\d+e\+160, at most 6\.7e\+153 fits; rescale the positions"
    )
    with pytest.raises(ValueError, match=msg):
        graphs.knn_graph(pos, 3, method=method)
    with pytest.raises(ValueError, match=msg):
        graphs.radius_graph(pos, 1e160, method=method)
    with pytest.raises(ValueError, match=r"x and y have coordinates up to 9\.\d+e\+159 whose"):
        graphs.knn(pos, pos[:5], 2, method=method)
    batch = _batch([20, 20])
    scaled = torch.cat([_cloud(1, 20), _cloud(2, 20) * 1e160])
    with pytest.raises(ValueError, match=r"coordinates up to .* \(sample 1 of the batch\) whose"):
        graphs.knn_graph(scaled, 3, batch, method=method)


@pytest.mark.parametrize("dims", [1, 2])
def test_the_overflow_bound_is_the_squared_box_diagonal_against_finfo_max(dims):
    """Accepted while sum_d extent_d^2 <= finfo(float64).max / 4, refused beyond."""
    limit = math.sqrt(F64_MAX / 4 / dims)  # per-coordinate extent with the diagonal at the bound
    unit = torch.tensor([[0.0] * dims, [0.3] * dims, [1.0] * dims], dtype=torch.float64)
    for method in METHODS:
        ok = graphs.knn_graph(unit * (limit * 0.999), 1, method=method)
        assert ok.tolist() == [[1, 0, 1], [0, 1, 2]]  # 0.3 is nearer to 0 than to 1
        with pytest.raises(ValueError, match="whose squared distances overflow float64"):
            graphs.knn_graph(unit * (limit * 1.001), 1, method=method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("exponent", [-400, 400, 510])
def test_rescaled_float64_clouds_give_the_float64_reference(method, exponent):
    pos = _cloud(3)
    scale = 2.0**exponent  # exact: the arithmetic on pos * scale is the arithmetic on pos
    expect = _ref_knn_graph(pos.numpy(), 4)
    assert _rows(graphs.knn_graph(pos * scale, 4, method=method), 40) == expect
    r = 0.3
    got = graphs.radius_graph(pos * scale, r * scale, max_num_neighbors=40, method=method)
    assert _rows(got, 40) == _ref_knn_graph(pos.numpy(), 40, r=r)


@pytest.mark.parametrize("method", METHODS)
def test_clouds_each_in_range_but_far_apart_as_one_tree(method):
    """The second cloud spans 2^510 (in range); one kd-tree over both (with its separating
    coordinate) would not be, so the search compares within clouds only (brute force)."""
    pos = _cloud(4)
    batch = _batch([20, 20])
    scaled = pos.clone()
    scaled[20:] *= 2.0**510
    expect = _ref_knn_graph(pos.numpy(), 3, batch.numpy())
    assert _rows(graphs.knn_graph(scaled, 3, batch, method=method), 40) == expect
    # a radius so large that it cannot separate the clouds in one tree either
    got = graphs.radius_graph(pos, 1e300, batch, max_num_neighbors=40, method=method)
    assert _rows(got, 40) == _ref_knn_graph(pos.numpy(), 40, batch.numpy())


@pytest.mark.parametrize("method", METHODS)
def test_float64_coordinates_whose_squares_underflow_are_refused(method):
    pos = _cloud(5) * 2.0**-600  # squared differences below 1e-308: every distance would be 0
    msg = (
        r"pos has coordinates that differ by at most \d\.\d+e-181, so close that their squared "
        r"distances underflow float64 and tie at 0 \(they must span at least 6\.72e-139\); "
        r"rescale the positions"
    )
    with pytest.raises(ValueError, match=msg):
        graphs.knn_graph(pos, 3, method=method)
    with pytest.raises(ValueError, match=r"x and y have coordinates that differ by at most"):
        graphs.knn(pos, pos, 3, method=method)
    # identical points are not underflow: every distance is exactly 0, ties go by index
    same = torch.full((5, 3), 1e-300, dtype=torch.float64)
    assert graphs.knn_graph(same, 2, method=method)[0].tolist() == [1, 2, 0, 2, 0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("exponent", [-100, 100])
def test_float32_extremes_are_searched_in_float64(method, exponent):
    """float32 coordinates near 1e-30 or 1e30 square out of float32's range but never out of
    float64's, where the search runs: the float64 reference of the same points."""
    pos = _cloud(6, dtype=torch.float32) * 2.0**exponent
    expect = _ref_knn_graph(pos.double().numpy(), 4)
    assert _rows(graphs.knn_graph(pos, 4, method=method), 40) == expect
    assert (
        graphs.knn_graph(pos, 4, method=method).tolist()
        == graphs.knn_graph(pos.double() * 2.0**-exponent, 4, method=method).tolist()
    )


def test_ball_query_and_interpolate_refuse_coordinates_out_of_range():
    """The models' neighbourhoods reach the same check (through knn_search and knn)."""
    from pcattn.models.common import interpolate
    from pcattn.models.pointnet2 import ball_query

    pos = _cloud(7) * 1e160
    batch = torch.zeros(40, dtype=torch.long)
    with pytest.raises(ValueError, match="x and y have coordinates up to .* overflow float64"):
        ball_query(pos, pos[:4], 1.0, 8, batch, batch[:4])
    with pytest.raises(ValueError, match="x and y have coordinates up to .* overflow float64"):
        interpolate(torch.randn(40, 2, dtype=torch.float64), pos, batch, pos[:4], batch[:4])


# --------------------------------------------------------------------------------------------
# fps: float32 computed in float64 when needed, float64 out of range refused
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", FPS_METHODS)
@pytest.mark.parametrize("exponent", [-100, 70])
def test_fps_on_float32_extremes_equals_the_float64_reference(method, exponent):
    """The issue: float32 x1e20 gave [0, 1, 2, 3, 4] (every squared distance inf); x1e-30
    would give all zeros. Computed in float64 they give the float64 loop's indices."""
    base = _cloud(8, 60, dtype=torch.float32)
    pos = base * 2.0**exponent
    got = graphs.fps(pos, num=12, random_start=False, method=method)
    assert got.tolist() == _ref_fps(base.double().numpy(), 12, 0)
    assert got.tolist() == _ref_fps(pos.double().numpy(), 12, 0)
    bf = (base * 2.0**exponent).bfloat16()  # float32's range, so the same rule
    got = graphs.fps(bf, num=12, random_start=False, method=method)
    assert got.tolist() == _ref_fps(bf.double().numpy(), 12, 0)


@pytest.mark.parametrize("method", FPS_METHODS)
def test_fps_batched_with_one_cloud_out_of_float32_range(method):
    pos = _cloud(9, 50, dtype=torch.float32)
    pos[30:] *= 2.0**70
    batch = _batch([30, 20])
    got = graphs.fps(pos, num=6, batch=batch, random_start=False, method=method)
    p64 = pos.double().numpy()
    expect = _ref_fps(p64[:30], 6, 0) + [30 + i for i in _ref_fps(p64[30:], 6, 0)]
    assert got.tolist() == expect


@pytest.mark.parametrize("method", FPS_METHODS)
def test_fps_refuses_float64_out_of_range(method):
    with pytest.raises(ValueError, match=r"pos has coordinates up to .* overflow float64"):
        graphs.fps(_cloud(10) * 1e160, num=4, method=method)
    with pytest.raises(ValueError, match=r"pos has coordinates that differ by at most .* float64"):
        graphs.fps(_cloud(10) * 2.0**-600, num=4, method=method)
    batch = _batch([20, 20])
    pos = torch.cat([_cloud(11, 20), _cloud(12, 20) * 1e160])
    with pytest.raises(ValueError, match=r"\(sample 1 of the batch\) whose squared distances"):
        graphs.fps(pos, num=4, batch=batch, method=method)


# --------------------------------------------------------------------------------------------
# fps on duplicate points: distinct indices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", FPS_METHODS)
def test_fps_on_duplicates_takes_distinct_indices(method):
    pos = torch.tensor([[0.0, 0], [0, 0], [1, 1], [1, 1], [2, 2]])
    # 0, then the farthest 4, then 2 (ties with 3, lower index); only duplicates remain: 1, 3
    got = graphs.fps(pos, num=5, random_start=False, method=method)
    assert got.tolist() == [0, 4, 2, 1, 3] == _ref_fps(pos.numpy(), 5, 0)
    # identical points: the start, then the others in index order (the issue: 0, 0, 0, 0)
    same = torch.zeros(4, 3)
    assert graphs.fps(same, num=4, random_start=False, method=method).tolist() == [0, 1, 2, 3]
    gen = torch.Generator().manual_seed(0)
    got = graphs.fps(same, num=3, generator=gen, method=method).tolist()
    assert got == [got[0]] + [i for i in range(4) if i != got[0]][:2]


@pytest.mark.parametrize("method", FPS_METHODS)
def test_fps_ratio_one_on_a_cloud_with_duplicates_is_a_permutation(method):
    base = _cloud(13, 30, 2)
    pos = torch.cat([base, base[:10], base[:5]])  # 45 points, 30 distinct
    pos = pos[torch.randperm(45, generator=torch.Generator().manual_seed(1))]
    batch = _batch([45, 45])
    both = torch.cat([pos, pos.flip(0)])
    got = graphs.fps(both, ratio=1.0, batch=batch, random_start=False, method=method)
    assert got.tolist() == _ref_fps(pos.numpy(), 45, 0) + [
        45 + i for i in _ref_fps(pos.flip(0).numpy(), 45, 0)
    ]
    assert sorted(got[:45].tolist()) == list(range(45))
    # every distinct position is taken before any duplicate
    assert len({tuple(p) for p in pos[got[:30]].tolist()}) == 30


# --------------------------------------------------------------------------------------------
# zero-dimensional positions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 0])
def test_zero_dimensional_positions_are_refused_by_every_builder(n):
    pos = torch.zeros(n, 0)
    msg = r"must have at least one coordinate per point, shape \(N, D\) with D >= 1, got \("
    for method in METHODS:
        with pytest.raises(ValueError, match=r"pos " + msg + rf"{n}, 0\)"):
            graphs.knn_graph(pos, 2, method=method)
        with pytest.raises(ValueError, match=r"pos " + msg):
            graphs.radius_graph(pos, 1.0, method=method)
        with pytest.raises(ValueError, match=r"x " + msg):
            graphs.knn(pos, pos, 2, method=method)
        with pytest.raises(ValueError, match=r"y " + msg):
            graphs.knn(torch.zeros(5, 2), torch.zeros(3, 0), 2, method=method)
    for method in FPS_METHODS:
        with pytest.raises(ValueError, match=r"pos " + msg):
            graphs.fps(pos, num=2, method=method)

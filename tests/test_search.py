"""kNN by matrix products (``method="matmul"``, what ``"auto"`` takes in feature spaces) against
the brute-force path: the same neighbours in the same order, ties by index, on every route the
search can take (round-off far from every gap, exact distances of the candidates, brute force
of one row)."""

from __future__ import annotations

import pytest
import torch

from pcattn import search
from pcattn.graphs import knn, knn_graph
from pcattn.search import MATMUL_MIN_DIM, knn_search


def _batch(sizes) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def _same(x, y, k, bx, by, self_index=False):
    got, d_got = knn_search(x, y, k, bx, by, self_index=self_index, method="matmul")
    want, d_want = knn_search(x, y, k, bx, by, self_index=self_index, method="brute")
    assert torch.equal(got, want)
    assert torch.equal(d_got, d_want)  # both exact float64 sums, dimension by dimension
    return got


def _same_auto(x, y, k, bx, by):
    got, d_got = knn_search(x, y, k, bx, by, method="matmul")  # may hand over to the kd-tree
    want, d_want = knn_search(x, y, k, bx, by, method="brute")
    assert torch.equal(got, want)
    torch.testing.assert_close(d_got, d_want, rtol=1e-12, atol=0)  # SciPy's distances


@pytest.mark.parametrize("dim", [MATMUL_MIN_DIM, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("self_index", [False, True])
@pytest.mark.parametrize("sizes", [(40, 64, 29, 50), (48, 48, 48)])
def test_matmul_equals_brute_force(dim, dtype, self_index, sizes):
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(sum(sizes), dim, generator=g, dtype=dtype)
    _same(x, x, 12, _batch(sizes), _batch(sizes), self_index)


@pytest.mark.parametrize("self_index", [False, True])
@pytest.mark.parametrize("sizes", [(30, 45), (40, 40, 40)])  # padded, and equal clouds (views)
def test_matmul_breaks_exact_ties_by_index_as_brute_force(self_index, sizes):
    # integer coordinates in {0, 1, 2}: many exactly equal distances, at the cut and inside
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (sum(sizes), 16), generator=g).double()
    _same(x, x, 20, _batch(sizes), _batch(sizes), self_index)


def test_rows_whose_round_off_is_not_resolved_are_searched_by_brute_force(monkeypatch):
    # 40 identical points: every distance is 0, no gap tells the order, and the candidates' exact
    # distances cannot bound the rest, so each row is searched again (and ordered by index)
    x = torch.ones(40, 10)
    calls = []
    real = search._brute

    def spy(x_, y_, *args):
        calls.append(y_.size(0))
        return real(x_, y_, *args)

    monkeypatch.setattr(search, "_brute", spy)
    idx, _ = knn_search(x, x, 5, None, None, method="matmul")
    assert calls == [1] * 40
    assert idx.tolist() == [[0, 1, 2, 3, 4]] * 40


def test_matmul_bipartite_and_queries_in_fewer_clouds():
    g = torch.Generator().manual_seed(2)
    sizes_x = (33, 50, 41)
    x = torch.randn(sum(sizes_x), 24, generator=g)
    y = torch.randn(45, 24, generator=g)
    _same(x, y, 7, _batch(sizes_x), _batch((15, 15, 15)))
    _same(x, y[:20], 7, _batch(sizes_x), _batch((20,)))  # only the first cloud has queries
    _same(x, y, 7, None, None)


def test_auto_takes_matmul_in_feature_spaces_only(monkeypatch):
    calls = []
    real = search._matmul

    def spy(*args):
        calls.append(args[0].size(1))
        return real(*args)

    monkeypatch.setattr(search, "_matmul", spy)
    g = torch.Generator().manual_seed(3)
    feats, pos = torch.randn(100, 32, generator=g), torch.rand(100, 3, generator=g)
    batch = _batch((50, 50))
    e_auto = knn_graph(feats, 8, batch)
    assert calls == [32]
    assert torch.equal(e_auto, knn_graph(feats, 8, batch, method="brute"))
    knn_graph(pos, 8, batch)  # 3-d: the kd-tree
    knn_search(feats, feats, 8, batch, batch, r=1.0)  # a radius: never matmul
    assert calls == [32]
    e = knn(feats, feats[:10], 4, batch, torch.zeros(10, dtype=torch.long))
    assert torch.equal(e, knn(feats, feats[:10], 4, batch, torch.zeros(10, dtype=torch.long),
                              method="brute"))  # fmt: skip


def test_very_uneven_clouds_take_the_exact_paths():
    # padding a 200-point cloud beside ten 10-point ones would square the work: no matmul
    sizes = (200,) + (10,) * 10
    g = torch.Generator().manual_seed(4)
    x = torch.randn(sum(sizes), 16, generator=g)
    assert search._matmul(x, x, 5, _batch(sizes), _batch(sizes), False, 1 << 24, True) is None
    _same_auto(x, x, 5, _batch(sizes), _batch(sizes))


def test_distances_can_be_left_out():
    x = torch.randn(30, 12)
    idx, dist = knn_search(x, x, 4, None, None, method="matmul", distances=False)
    assert dist is None
    assert torch.equal(idx, knn_search(x, x, 4, None, None, method="brute")[0])


def test_matmul_refuses_a_radius_and_unknown_methods():
    x = torch.randn(10, 9)
    with pytest.raises(ValueError, match="method 'matmul' searches the k nearest without a "):
        knn_search(x, x, 3, None, None, r=0.5, method="matmul")
    with pytest.raises(ValueError, match="method must be 'auto', 'kdtree', 'brute' or 'matmul'"):
        knn_search(x, x, 3, None, None, method="faiss")


@pytest.mark.parametrize("self_index", [False, True])
def test_matmul_memory_is_bounded_by_blocks_of_rows(self_index):
    # chunk_elements far below one cloud's n x n products: blocks of query rows of one cloud
    g = torch.Generator().manual_seed(5)
    sizes = (70, 90)
    x = torch.randn(sum(sizes), 12, generator=g)
    b = _batch(sizes)
    got, _ = knn_search(x, x, 6, b, b, self_index=self_index, method="matmul", chunk_elements=500)
    want, _ = knn_search(x, x, 6, b, b, self_index=self_index, method="brute")
    assert torch.equal(got, want)

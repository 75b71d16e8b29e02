"""Digits and KarateClub against the arrays scikit-learn, networkx and PyG hold."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch_geometric.datasets import KarateClub as PyGKarateClub
from torch_geometric.loader import DataLoader

from pcattn import graphs
from pcattn.data.builtin import Digits, KarateClub


@pytest.fixture(scope="module")
def digits():
    return load_digits()


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_split_sizes_and_disjoint(digits):
    train, test = Digits("train"), Digits("test")
    assert (len(train), len(test)) == (1438, 359)
    assert len(train) + len(test) == len(digits.target) == 1797
    assert not set(train.indices) & set(test.indices)
    np.testing.assert_array_equal(np.sort(np.r_[train.indices, test.indices]), np.arange(1797))
    # stratified: each digit's test share is round(0.2 * its count)
    counts = np.bincount(digits.target)
    np.testing.assert_array_equal(
        np.bincount(test.labels(), minlength=10), np.floor(0.2 * counts + 0.5)
    )


def test_digits_split_is_deterministic_by_seed():
    a, b, c = Digits("test"), Digits("test"), Digits("test", seed=1)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert len(Digits("test", test_fraction=0.5)) == sum(
        int(np.floor(0.5 * n + 0.5)) for n in np.bincount(load_digits().target)
    )


def test_digits_items_match_load_digits(digits):
    ds = Digits("train")
    for i in (0, 1, 700, len(ds) - 1):
        d = ds[i]
        row = ds.indices[i]
        assert d.x.shape == (64, 1) and d.x.dtype == torch.float32
        np.testing.assert_allclose(d.x.numpy()[:, 0], digits.data[row] / 16.0, rtol=1e-7)
        np.testing.assert_allclose(d.x.numpy().reshape(8, 8), digits.images[row] / 16.0, rtol=1e-7)
        assert d.y.tolist() == [int(digits.target[row])]
        assert (d.height, d.width) == (8, 8)
        # node r * 8 + c sits at (r, c)
        np.testing.assert_array_equal(d.pos.numpy(), [[r, c] for r in range(8) for c in range(8)])
        assert d.pos.dtype == torch.float32


def test_digits_nodes_match_image_to_nodes(digits):
    ds = Digits("test")
    d = ds[5]
    img = torch.tensor(digits.images[ds.indices[5]] / 16.0, dtype=torch.float32).view(1, 1, 8, 8)
    x, pos, _ = graphs.image_to_nodes(img)
    assert torch.equal(d.x, x) and torch.equal(d.pos, pos.float())
    edge_index, _ = graphs.grid_graph(d.height, d.width, 3)
    assert int(edge_index.max()) == 63


def test_digits_batch_with_pyg_loader():
    batch = next(iter(DataLoader(Digits("train"), batch_size=5)))
    assert batch.x.shape == (320, 1) and batch.y.shape == (5,)
    assert batch.height.tolist() == [8] * 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "val"}, r"Digits: split must be 'train' or 'test', got 'val'"),
        ({"test_fraction": 0}, r"Digits: test_fraction must be in \(0, 1\), got 0"),
        ({"test_fraction": 1.0}, r"Digits: test_fraction must be in \(0, 1\), got 1.0"),
        ({"seed": -2}, r"Digits: seed must be a non-negative int, got -2"),
    ],
)
def test_digits_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Digits(**kwargs)


def test_digits_index_error():
    with pytest.raises(IndexError, match=r"Digits: index 359 out of range for 359 items"):
        Digits("test")[359]


# --------------------------------------------------------------------------------------------
# karate club
# --------------------------------------------------------------------------------------------


def test_karate_edges_match_networkx():
    d = KarateClub()[0]
    g = nx.karate_club_graph()
    assert d.num_nodes == 34 and d.edge_index.shape == (2, 156)
    src, dst = d.edge_index.tolist()
    ours = set(zip(src, dst, strict=True))
    ref = {(u, v) for u, v in g.edges()} | {(v, u) for u, v in g.edges()}
    assert ours == ref and len(ours) == 156  # no duplicates, both directions
    # sorted by target, then source
    keys = [t * 34 + s for s, t in zip(src, dst, strict=True)]
    assert keys == sorted(keys)
    assert torch.equal(
        graphs.to_csr(d.edge_index, 34)[1:] - graphs.to_csr(d.edge_index, 34)[:-1],
        torch.tensor([g.degree(i) for i in range(34)]),
    )


def test_karate_matches_pyg_graph():
    ours, ref = KarateClub()[0], PyGKarateClub()[0]
    assert ours.num_nodes == ref.num_nodes == 34
    assert torch.equal(ours.x, ref.x)  # one-hot identity in both
    a = {tuple(e) for e in ours.edge_index.t().tolist()}
    b = {tuple(e) for e in ref.edge_index.t().tolist()}
    assert a == b


def test_karate_club_labels_and_masks():
    d = KarateClub()[0]
    g = nx.karate_club_graph()
    ref = [0 if g.nodes[i]["club"] == "Mr. Hi" else 1 for i in range(34)]
    assert d.y.tolist() == ref
    assert (d.y == 0).sum() == 17 and (d.y == 1).sum() == 17
    assert d.train_mask.nonzero().view(-1).tolist() == [0, 33]
    assert d.y[0] == 0 and d.y[33] == 1
    assert torch.equal(d.test_mask, ~d.train_mask)


def test_karate_items_are_copies():
    ds = KarateClub()
    a = ds[0]
    a.y[0] = 1
    assert ds[0].y[0] == 0 and len(ds) == 1
    with pytest.raises(IndexError, match=r"KarateClub: index 1 out of range for 1 item"):
        ds[1]

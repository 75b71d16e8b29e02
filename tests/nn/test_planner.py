"""The dense path of all-pairs attention (``scaled_dot_product_attention`` on padded samples)
against the sparse path of the same layer and against ``torch.nn.MultiheadAttention``; the
detection of all-pairs graphs; the planner's choices and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pcattn import graphs
from pcattn.nn import MultiHeadSelfAttention, NodeAttention
from pcattn.nn.planner import all_pairs_sizes, plan_attention


def _batch(sizes: list[int]) -> torch.Tensor:
    return torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))


@pytest.mark.parametrize("sizes", [[7], [3, 5, 1], [4, 4]])
def test_all_pairs_sizes_recognises_full_graphs(sizes):
    batch = _batch(sizes)
    assert all_pairs_sizes(graphs.full_graph(batch), batch.numel()).tolist() == sizes


def test_all_pairs_sizes_rejects_everything_else():
    batch = _batch([3, 4])
    full = graphs.full_graph(batch)
    n = batch.numel()
    g = torch.Generator().manual_seed(0)
    shuffled = full[:, torch.randperm(full.size(1), generator=g)]
    swapped = full.clone()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]  # same edge set, sources out of order
    cross = graphs.full_graph(torch.zeros(n, dtype=torch.long))  # one sample of 7, not 3 + 4
    for ei in (
        graphs.full_graph(batch, loop=False),  # no self loops
        full[:, 1:],  # one pair missing
        shuffled,  # not target-sorted
        swapped,
        graphs.knn_graph(torch.rand(n, 3, generator=g), 2),
        torch.empty(2, 0, dtype=torch.long),
    ):
        assert all_pairs_sizes(ei, n) is None
    assert all_pairs_sizes(cross, n).tolist() == [7]
    assert all_pairs_sizes(full, n + 1) is None  # an extra node with no edges


def test_plan_attention_choices():
    even = torch.tensor([100, 100])
    plan = plan_attention(even, 20_000, heads=4, channels=64)
    assert (plan.backend, plan.reason, plan.padding) == ("dense", "all-pairs", 1.0)
    uneven = torch.tensor([100, 10, 10, 10])  # padding 4 * 100^2 / 10,300 = 3.9
    plan = plan_attention(uneven, 10_300, heads=4, channels=64)
    assert plan.backend == "sparse" and plan.reason == "all-pairs but padding x3.9"
    assert plan.sparse_bytes == 3 * 10_300 * 4 * 4
    plan = plan_attention(uneven, 10_300, heads=4, channels=64, budget_bytes=1000)
    assert (plan.backend, plan.reason) == ("dense", "all-pairs, sparse over budget")
    plan = plan_attention(even, 20_000, heads=4, channels=64, backend="sparse")
    assert (plan.backend, plan.reason) == ("sparse", "requested")
    plan = plan_attention(even, 20_000, heads=4, channels=64, supported=False)
    assert plan.backend == "sparse"
    assert plan_attention(None, 50, heads=1, channels=8).reason == "not all-pairs"
    with pytest.raises(ValueError, match=r"backend='dense' needs an all-pairs neighbourhood"):
        plan_attention(None, 50, heads=1, channels=8, backend="dense")
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'dense', 'sparse'\)"):
        plan_attention(even, 20_000, heads=4, channels=64, backend="flash")


@pytest.mark.parametrize("sizes", [[40, 40, 40], [30, 70, 5]])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_dense_equals_sparse_with_gradients(sizes, dtype, atol):
    torch.manual_seed(0)
    batch = _batch(sizes)
    layer = MultiHeadSelfAttention(12, 32, heads=4).to(dtype)
    layer.backend = "dense"
    sparse = copy.deepcopy(layer)
    sparse.backend = "sparse"
    x = torch.randn(batch.numel(), 12, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out = layer(x, graphs.full_graph(batch))
    assert layer.attention.last_plan.backend == "dense"
    want = sparse(x2, graphs.full_graph(batch))
    torch.testing.assert_close(out, want, atol=atol, rtol=atol)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (want * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=atol, rtol=atol)
    for p, q in zip(layer.parameters(), sparse.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=atol, rtol=atol)
    # edge_index=None with batch: the same, without building the graph
    torch.testing.assert_close(layer(x.detach(), batch=batch), want.detach(), atol=atol, rtol=atol)


def test_auto_runs_dense_and_matches_torch_multihead_attention():
    torch.manual_seed(1)
    b, n, c, h = 3, 25, 16, 4
    ours = MultiHeadSelfAttention(c, c, heads=h).double()
    ref = nn.MultiheadAttention(c, h, batch_first=True).double()
    with torch.no_grad():
        sim, val = ours.attention.similarity, ours.attention.value
        w = torch.cat([sim.query.weight, sim.key.weight, val.lin.weight])
        b_in = torch.cat([sim.query.bias, sim.key.bias, val.lin.bias])
        ref.in_proj_weight.copy_(w)
        ref.in_proj_bias.copy_(b_in)
        ref.out_proj.load_state_dict(ours.out_proj.state_dict())
    x = torch.randn(b, n, c, dtype=torch.float64)
    got = ours(x.reshape(b * n, c), batch=_batch([n] * b))
    assert ours.attention.last_plan.backend == "dense"
    want, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(got, want.reshape(b * n, c), atol=1e-12, rtol=0)


def test_embedded_gaussian_runs_dense_unscaled():
    torch.manual_seed(2)
    layer = NodeAttention(8, 8, similarity="embedded_gaussian", normalize="softmax").double()
    x = torch.randn(30, 8, dtype=torch.float64)
    ei = graphs.full_graph(30)
    got = layer(x, ei)
    assert layer.last_plan.backend == "dense"
    layer.backend = "sparse"
    torch.testing.assert_close(got, layer(x, ei), atol=1e-12, rtol=0)


def test_dense_errors_and_fallbacks():
    layer = NodeAttention(4, 4, backend="dense")
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"backend='dense' needs an all-pairs neighbourhood"):
        layer(x, graphs.knn_graph(torch.rand(6, 3), 2))
    with pytest.raises(ValueError, match=r"backend='dense' takes no pos, rel_pos or edge_weight"):
        layer(x, graphs.full_graph(6), torch.rand(6, 3))
    with pytest.raises(ValueError, match=r"batch is only used with edge_index=None"):
        layer(x, graphs.full_graph(6), batch=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"batch has 5 entries but x has 6 rows"):
        layer(x, None, batch=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"backend must be one of"):
        NodeAttention(4, 4, backend="flash")
    gat = NodeAttention(4, 4, similarity="gat")  # not a dot product: always sparse
    gat(x, graphs.full_graph(6))
    assert gat.last_plan.backend == "sparse" and gat.last_plan.reason == "layer not SDPA-shaped"
    # weights are always per edge, from the sparse path
    ei, w = layer.attention_weights(x, None)
    assert ei.shape == (2, 36) and w.shape == (36, 1)
    torch.testing.assert_close(graphs.full_graph(6).float(), ei.float())  # the full graph it built


def test_full_graph_too_big_is_refused_before_allocating(monkeypatch):
    from pcattn import graphs as g

    monkeypatch.setattr(g, "available_bytes", lambda device: 1_000_000)  # 1 MB free
    msg = (
        r"full_graph: 1,000,000 pairs need about 0\.0 GB to build, but 0\.0 GB is available on "
        r"cpu; for local attention build knn_graph / radius_graph instead, and for all-pairs "
        r"dot-product attention call the layer with edge_index=None"
    )
    with pytest.raises(MemoryError, match=msg):
        g.full_graph(1000)
    # a layer that must pass messages over all pairs refuses the same way
    gat = NodeAttention(4, 4, similarity="gat")
    with pytest.raises(MemoryError, match=r"full_graph: 1,000,000 pairs"):
        gat(torch.randn(1000, 4), None)
    # the dense path needs no pairs and runs
    mhsa = MultiHeadSelfAttention(4, 4, heads=1)
    assert mhsa(torch.randn(1000, 4)).shape == (1000, 4)
    assert g.full_graph(10).shape == (2, 100)  # small graphs still fit
    monkeypatch.undo()
    assert g.available_bytes(torch.device("cpu")) > 0

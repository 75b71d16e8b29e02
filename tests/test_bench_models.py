"""The model benchmark's own pieces: its tensor-memory counter and its reference architectures
(the numbers in RESULTS.md are only as good as these)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from pcattn import ops
from pcattn.models import DGCNNCls, PointNet2Cls

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # bench_models imports its sibling bench_common
    try:
        spec = importlib.util.spec_from_file_location("bench_models", BENCH / "bench_models.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_peak_counts_tensors_alive_at_once(bench):
    def fn():
        a = torch.empty(1000, 250)  # 1 MB
        b = torch.empty(1000, 500)  # 2 MB: 3 MB alive
        del a, b
        c = torch.empty(1000, 1000)  # 4 MB alone: the peak
        c.view(-1).add_(1.0)  # a view and an in-place result share c's storage
        del c

    with bench.PeakTensorMemory() as mem:
        fn()
    assert mem.peak == 4_000_000
    assert mem.current == 0


def test_peak_follows_autograd_and_frees(bench):
    x = torch.randn(1000, 1000, requires_grad=True)  # allocated outside: not counted

    def fn():
        y = (x * 2).relu()  # 4 MB for x * 2, 4 MB for the relu output kept for backward
        y.sum().backward()  # + x.grad (4 MB) and relu's gradient

    with bench.PeakTensorMemory() as mem:
        fn()
    assert mem.peak >= 12_000_000
    assert mem.current == 4_000_000  # x.grad is alive after the step


def test_extremum_keeps_no_edge_tensor_for_backward(bench):
    # the max of ops.scatter keeps one index per output value; PyTorch's scatter_reduce keeps
    # its (E, C) input and makes five (E, C) tensors in backward
    src = torch.randn(4096 * 16, 64, requires_grad=True)  # (E, C), 4.2 MB
    index = torch.arange(4096).repeat_interleave(16)

    def ours():
        ops.scatter(src, index, 4096, "max").sum().backward()

    def torch_amax():
        idx = index.view(-1, 1).expand_as(src)
        out = src.new_zeros(4096, 64).scatter_reduce(0, idx, src, "amax", include_self=False)
        out.sum().backward()

    src.grad = None
    ours_peak = bench.peak_mb(ours)
    src.grad = None
    ref_peak = bench.peak_mb(torch_amax)
    edge_mb = src.numel() * 4 / 1e6
    assert ours_peak <= 2.2 * edge_mb  # the gradient buffer and src.grad
    assert ref_peak >= 4 * edge_mb


@pytest.mark.parametrize(
    "ours, ref",
    [
        (lambda: PointNet2Cls(0, 40), "RefPointNet2SSG"),
        (lambda: DGCNNCls(0, 40), "RefDGCNN"),
    ],
)
def test_reference_architectures_match_ours_in_size_and_shape(bench, ours, ref):
    ref_model = getattr(bench, ref)(40).eval()
    n_ours = sum(p.numel() for p in ours().parameters())
    n_ref = sum(p.numel() for p in ref_model.parameters())
    assert abs(n_ours / n_ref - 1) < 0.005  # the same architecture, not another size
    with torch.no_grad():
        logits = ref_model(torch.rand(2, 3, 600))  # (B, 3, N)
    assert logits.shape == (2, 40)


def test_reference_ball_query_pads_with_the_first_point(bench):
    xyz = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [1.0, 0, 0], [0.05, 0, 0]]])  # (1, 4, 3)
    idx = bench.query_ball_point(0.2, 3, xyz, xyz[:, [0, 2]])  # centres: points 0 and 2
    assert idx.tolist() == [[[0, 1, 3], [2, 2, 2]]]


def test_reference_knn_is_brute_force(bench):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 30, generator=g)  # (B, C, N)
    idx = bench.knn_idx(x, 4)  # (B, N, 4)
    d = torch.cdist(x.transpose(1, 2), x.transpose(1, 2))  # (B, N, N)
    expect = d.topk(4, dim=-1, largest=False).indices
    assert torch.equal(idx.sort(-1).values, expect.sort(-1).values)

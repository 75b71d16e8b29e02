"""A Point Transformer layer over a million points: inference in blocks of whole targets.

    python benchmarks/bench_million.py [--points 1000000] [--k 16] [--channels 64]

Builds the kNN graph (the point itself included) of uniform random points, then runs
``PointTransformerLayer`` (the official configuration: BN-MLPs for the position encoding and the
attention, ``share_planes = 8``) in eval mode without gradients, where it processes at most
``chunk_edges`` (2**20) edges at a time. Prints the times and the process's peak resident
memory (``ru_maxrss``), before and after the layer; one pass in one process. PyG's
``PointTransformerConv`` materialises several ``(E, C)`` tensors at once: at E = 16M, C = 64 each
is 4 GB, so it is not run here.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from bench_common import cpu_name

from pcattn.graphs import knn_graph
from pcattn.nn import PointTransformerLayer


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--channels", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    n, c = args.points, args.channels
    pos, x = torch.rand(n, 3), torch.randn(n, c)  # (N, 3), (N, C)
    t0 = time.perf_counter()
    edge_index = knn_graph(pos, args.k, loop=True)  # (2, N k)
    t_knn = time.perf_counter() - t0
    layer = PointTransformerLayer(c, c).eval()
    before = peak_mb()
    t0 = time.perf_counter()
    with torch.no_grad():
        y = layer(x, edge_index, pos)  # (N, C)
    t_fwd = time.perf_counter() - t0
    assert torch.isfinite(y).all()
    print(f"{cpu_name()}, torch threads {torch.get_num_threads()}; torch {torch.__version__}")
    print()
    print("| N | E | kNN graph (s) | layer forward (s) | peak RSS before (MB) | after (MB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    e = edge_index.size(1)
    print(f"| {n:,} | {e:,} | {t_knn:.1f} | {t_fwd:.1f} | {before:.0f} | {peak_mb():.0f} |")


if __name__ == "__main__":
    main()

"""Neighbourhood builders of ``pcattn.graphs`` against SciPy, Open3D and plain torch, on CPU.

Random points in the unit cube (float32, seed 0), N = 16,384 and 100,000:

* kNN graph, k = 16: ``knn_graph`` (kd-tree path) vs SciPy ``cKDTree`` (build + query; the
  reference of the targets), Open3D ``NearestNeighborSearch`` (index + search) and a dense
  ``cdist`` + ``topk`` in chunks of 4,096 rows (16k only). The references return each point as
  one of its own 16 neighbours; ``knn_graph`` leaves it out (a ``loop=True`` row does the same
  work as the reference). Ours and the cKDTree reference are timed alternately.
* ``knn_graph(method="brute")`` (the GPU path, here on CPU), 16k only, vs ``cKDTree``.
* batched kNN: the 100k cloud as 16 clouds of 6,250 vs ``cKDTree`` per cloud in a Python loop
  and vs one ``cKDTree`` on all 100k points.
* radius graph (r = 0.05 at 16k, 0.03 at 100k, at most 32 neighbours) vs ``cKDTree.query``
  with ``distance_upper_bound`` and vs ``cKDTree.query_ball_point``, tree build included.
* FPS keeping 1/4 of the points vs Open3D ``farthest_point_down_sample`` and a naive torch
  loop (16k only). The 100k run is timed once.

Each time is the median of ``--repeats`` runs after one warm-up, with ``time.perf_counter``.

From the repository root, with pcattn installed (``pip install -e .``)::

    python benchmarks/bench_graphs.py            # full sizes (a few minutes)
    python benchmarks/bench_graphs.py --quick    # small sizes, smoke run
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy
import torch
import torch_geometric
from bench_common import cpu_name, log, median_ms, paired_ms, print_table
from scipy.spatial import cKDTree

from pcattn.graphs import fps, knn_graph, radius_graph

K = 16
CLOUDS = 16
RADIUS = {16_384: 0.05, 100_000: 0.03}


def machine_line(open3d_version: str) -> str:
    return (
        f"{cpu_name()}, torch threads {torch.get_num_threads()}; torch {torch.__version__}, "
        f"scipy {scipy.__version__}, PyG {torch_geometric.__version__}, "
        f"open3d {open3d_version}"
    )


def load_open3d():
    """(open3d, None), or (None, short reason) when it cannot be imported."""
    try:
        import open3d
        import open3d.core  # noqa: F401

        return open3d, None
    except Exception as exc:  # a missing system library raises ImportError or OSError
        return None, str(exc).split(":")[0][:50]


def dense_knn(pos: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    return torch.cat(
        [
            torch.cdist(pos[s : s + chunk], pos).topk(k, dim=1, largest=False).indices
            for s in range(0, pos.size(0), chunk)
        ]
    )


def naive_fps(pos: torch.Tensor, m: int) -> torch.Tensor:
    mind = torch.full((pos.size(0),), float("inf"))
    last, out = 0, [0]
    for _ in range(m - 1):
        dist = ((pos - pos[last]) ** 2).sum(1)
        mind = torch.minimum(mind, dist)
        last = int(mind.argmax())
        out.append(last)
    return torch.tensor(out)


def bench_size(n: int, small: bool, repeats: int, o3d, na: str, rows: list, res: dict) -> None:
    """Append the rows of one cloud size; ``small`` runs the 16k-only references."""
    log(f"N = {n:,}")
    pos_np = np.random.default_rng(0).random((n, 3), dtype=np.float32)
    pos = torch.from_numpy(pos_np)
    size = f"{n:,}"

    # kNN graph, one cloud
    knn_op = f"kNN graph k={K}"

    def kdtree():
        return cKDTree(pos_np).query(pos_np, k=K, workers=-1)

    ours, ref = paired_ms(lambda: knn_graph(pos, K), kdtree, repeats)
    res["knn", n], res["kdtree", n] = ours, ref
    rows.append((knn_op, size, ours, "scipy cKDTree build+query", ref))
    ours_loop, ref_loop = paired_ms(lambda: knn_graph(pos, K, loop=True), kdtree, repeats)
    rows.append((f"{knn_op} loop=True", size, ours_loop, "scipy cKDTree build+query", ref_loop))

    def o3d_knn():
        nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(pos_np))
        nns.knn_index()
        return nns.knn_search(o3d.core.Tensor(pos_np), K)

    ref = median_ms(o3d_knn, repeats) if o3d is not None else na
    rows.append((knn_op, size, ours, "Open3D NNS index+knn_search", ref))
    if small:
        ref = median_ms(lambda: dense_knn(pos, K), repeats)
        rows.append((knn_op, size, ours, "torch cdist+topk, 4096-row chunks", ref))
        log("  brute")
        ours_b = median_ms(lambda: knn_graph(pos, K, method="brute"), repeats)
        rows.append(
            (f"{knn_op} method=brute", size, ours_b, "scipy cKDTree build+query", res["kdtree", n])
        )
    else:
        rows.append((knn_op, size, ours, "torch cdist+topk", "skipped (too slow)"))
        log("  batched")
        m = n // CLOUDS
        batch = torch.arange(CLOUDS).repeat_interleave(m)
        clouds = [pos_np[b * m : (b + 1) * m] for b in range(CLOUDS)]
        bsize = f"{CLOUDS} x {m:,}"
        ours, ref = paired_ms(
            lambda: knn_graph(pos, K, batch),
            lambda: [cKDTree(c).query(c, k=K, workers=-1) for c in clouds],
            repeats,
        )
        rows.append((f"batched {knn_op}", bsize, ours, "cKDTree per cloud (Python loop)", ref))
        ours, ref = paired_ms(lambda: knn_graph(pos, K, batch), kdtree, repeats)
        res["batched", n], res["kdtree_b", n] = ours, ref
        rows.append((f"batched {knn_op}", bsize, ours, f"cKDTree one cloud of {n:,}", ref))

    # radius graph
    log("  radius")
    r = RADIUS.get(n, 0.05 * (16_384 / n) ** (1 / 3))
    op = f"radius graph r={r:.3g} max 32"
    ours = median_ms(lambda: radius_graph(pos, r, max_num_neighbors=32), repeats)
    ref = median_ms(
        lambda: cKDTree(pos_np).query(pos_np, k=33, distance_upper_bound=r, workers=-1),
        repeats,
    )
    rows.append((op, size, ours, "cKDTree.query k=33 bound=r", ref))
    ref = median_ms(lambda: cKDTree(pos_np).query_ball_point(pos_np, r, workers=-1), repeats)
    rows.append((op, size, ours, "cKDTree.query_ball_point", ref))

    # farthest point sampling of 1/4 of the points; the large size is timed once
    log("  fps")
    m = n // 4
    reps, warm = (repeats, 1) if small else (1, 0)
    fsize = f"{n:,} -> {m:,}"
    ours = res["fps", n] = median_ms(lambda: fps(pos, ratio=0.25, random_start=False), reps, warm)
    ref = na
    if o3d is not None:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pos_np.astype(np.float64)))
        ref = median_ms(lambda: pcd.farthest_point_down_sample(m), reps, warm)
    rows.append(("FPS ratio 0.25", fsize, ours, "Open3D farthest_point_down_sample", ref))
    if small:
        ref = median_ms(lambda: naive_fps(pos, m), reps, warm)
        rows.append(("FPS ratio 0.25", fsize, ours, "naive torch loop", ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per case")
    args = ap.parse_args()
    small, large = (2_048, 8_192) if args.quick else (16_384, 100_000)
    repeats = args.repeats or (2 if args.quick else 5)
    o3d, o3d_err = load_open3d()
    rows, res = [], {}
    for n in (small, large):
        bench_size(n, n == small, repeats, o3d, f"n/a (open3d: {o3d_err})", rows, res)

    print(machine_line(o3d.__version__ if o3d is not None else f"n/a ({o3d_err})"))
    print()
    print_table(rows)
    print()

    def verdict(ratio: float, limit: float) -> str:
        return "target met" if ratio <= limit else "target missed"

    single = res["knn", large] / res["kdtree", large]
    batched = res["batched", large] / res["kdtree_b", large]
    fps_ms = res["fps", small]
    note = " (quick sizes; the targets are set at 100,000 and 16,384)" if args.quick else ""
    print(
        f"Targets{note}: kNN {large:,} single cloud {single:.2f}x cKDTree, "
        f"{verdict(single, 1.2)}; batched {CLOUDS} x {large // CLOUDS:,} {batched:.2f}x "
        f"cKDTree on {large:,}, {verdict(batched, 1.2)} (<= 1.2x); "
        f"FPS {small:,} -> {small // 4:,} {fps_ms:.0f} ms, {verdict(fps_ms, 150)} (<= 150 ms)."
    )


if __name__ == "__main__":
    main()

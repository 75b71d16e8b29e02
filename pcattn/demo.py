"""``python -m pcattn.demo``: the neighbourhoods and kernels of pcattn on a synthetic batch.

Builds a batch of procedurally sampled shapes, then the graphs a point-cloud attention model
uses (kNN, radius, FPS down-sampling, kNN up-sampling), runs one attention-style aggregation
(segment softmax over the kNN edges, then a weighted sum) and a convolution written as message
passing on a pixel grid, and prints what each step produced and how long it took.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from . import graphs, ops


def _shapes(clouds: int, points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sphere, torus, cube surface and helix tube, in turn, with a little noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(clouds):
        u, v = torch.rand(points, generator=g), torch.rand(points, generator=g)
        kind = c % 4
        if kind == 0:  # sphere
            z, phi = 2 * u - 1, 2 * math.pi * v
            r = torch.sqrt(1 - z**2)
            p = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], 1)
        elif kind == 1:  # torus
            a, b = 2 * math.pi * u, 2 * math.pi * v
            p = torch.stack(
                [
                    (1 + 0.3 * torch.cos(b)) * torch.cos(a),
                    (1 + 0.3 * torch.cos(b)) * torch.sin(a),
                    0.3 * torch.sin(b),
                ],
                1,
            )
        elif kind == 2:  # cube surface
            p = torch.rand(points, 3, generator=g) * 2 - 1
            face = torch.randint(0, 3, (points,), generator=g)
            p[torch.arange(points), face] = torch.sign(u - 0.5)
        else:  # helix tube
            t, b = 4 * math.pi * u, 2 * math.pi * v
            p = torch.stack(
                [
                    torch.cos(t) + 0.2 * torch.cos(b),
                    torch.sin(t) + 0.2 * torch.sin(b),
                    t / (2 * math.pi) - 1,
                ],
                1,
            )
        out.append(p + 0.01 * torch.randn(points, 3, generator=g))
    return torch.cat(out), torch.arange(clouds).repeat_interleave(points)


def _timed(rows: list, name: str, fn):
    """Run ``fn`` once to warm up (imports, thread pools), then time a second run."""
    fn()
    t0 = time.perf_counter()
    result = fn()
    rows.append((name, (time.perf_counter() - t0) * 1e3))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clouds", type=int, default=8, help="shapes in the batch")
    parser.add_argument("--points", type=int, default=4096, help="points per shape")
    parser.add_argument("--k", type=int, default=16, help="neighbours per point")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pos, batch = _shapes(args.clouds, args.points, args.seed)
    n = pos.size(0)
    print(f"batch: {args.clouds} shapes x {args.points} points = {n} nodes, k = {args.k}")
    rows: list = []
    ei = _timed(rows, "knn_graph", lambda: graphs.knn_graph(pos, args.k, batch))
    ptr = graphs.to_csr(ei, n)
    rg = _timed(rows, "radius_graph r=0.1", lambda: graphs.radius_graph(pos, 0.1, batch))
    idx = _timed(
        rows, "fps ratio=0.25", lambda: graphs.fps(pos, ratio=0.25, batch=batch, random_start=False)
    )
    up = _timed(
        rows, "knn up-sampling k=3", lambda: graphs.knn(pos[idx], pos, 3, batch[idx], batch)
    )

    # one attention-style aggregation: y_i = sum_j softmax_j(-|p_i - p_j|^2 / s) x_j
    x = torch.randn(n, 64)

    def attend():
        score = -((pos[ei[1]] - pos[ei[0]]) ** 2).sum(1) / 0.01  # (E,)
        a = ops.segment_softmax_csr(score, ptr)  # (E,)
        return ops.scatter_csr(a[:, None] * x[ei[0]], ptr)  # (N, 64)

    y = _timed(rows, "softmax attention (E x 64)", attend)

    # a 3x3 convolution as message passing on the pixel grid (offset-dependent weights)
    img = torch.randn(4, 3, 32, 32)
    w = torch.randn(8, 3, 3, 3)

    def conv_as_graph():
        gi, off = graphs.grid_graph(32, 32, 3, batch_size=4)
        xn, _, _ = graphs.image_to_nodes(img)
        wk = w.permute(2, 3, 1, 0)[off[:, 0] + 1, off[:, 1] + 1]  # (E, 3, 8)
        msg = torch.einsum("ec,eco->eo", xn[gi[0]], wk)  # (E, 8)
        return graphs.nodes_to_image(ops.scatter(msg, gi[1], xn.size(0)), 4, 32, 32)

    conv = _timed(rows, "3x3 conv as a graph", conv_as_graph)
    err = (conv - F.conv2d(img, w, padding=1)).abs().max().item()

    print(f"{'step':<28}{'ms (warm)':>10}")
    for name, ms in rows:
        print(f"{name:<28}{ms:>10.1f}")
    print(
        f"knn edges {ei.size(1)} (cross-sample: {int((batch[ei[0]] != batch[ei[1]]).sum())}), "
        f"radius edges {rg.size(1)}, sampled {idx.numel()} centres, "
        f"up-sampling edges {up.size(1)}"
    )
    print(
        f"attention output {tuple(y.shape)}, finite: {bool(torch.isfinite(y).all())}; "
        f"conv-as-graph vs conv2d max |diff| = {err:.2e}"
    )


if __name__ == "__main__":
    main()

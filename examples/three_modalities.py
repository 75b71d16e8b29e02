"""One attention layer, three modalities: pixels, points and graph nodes.

The same ``NodeAttention`` instance (scaled dot-product, 4 heads, softmax over the
neighbourhood) runs on

* an image, whose pixels are nodes and whose neighbourhood is the 5x5 window of
  :func:`pcattn.graphs.grid_graph`;
* a point cloud, with the 16 nearest neighbours of :func:`pcattn.graphs.knn_graph`;
* a graph (Zachary's karate club, shipped inside PyTorch Geometric), with its own edges.

Only the neighbourhood and a per-modality input embedding change. Run::

    python examples/three_modalities.py
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.datasets import KarateClub

from pcattn import graphs
from pcattn.nn import NodeAttention

CHANNELS = 16


def make_image(height: int = 24, width: int = 32) -> Tensor:
    """A small RGB test card ``(1, 3, H, W)``: a colour ramp with a bright disc."""
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij"
    )
    disc = ((yy - 0.5) ** 2 + (xx - 0.6) ** 2 < 0.06).float()
    return torch.stack([xx, yy, disc]).unsqueeze(0)


def make_cloud(n: int = 2048, seed: int = 0) -> Tensor:
    """Points on a torus (major radius 1, minor 0.3), ``(N, 3)``."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.rand(n, generator=g) * 2 * math.pi, torch.rand(n, generator=g) * 2 * math.pi
    r = 1.0 + 0.3 * torch.cos(v)
    return torch.stack([r * torch.cos(u), r * torch.sin(u), 0.3 * torch.sin(v)], 1)


def run() -> tuple[NodeAttention, dict[str, dict[str, object]]]:
    """Run the shared layer on the three inputs; returns it and per-modality inputs, outputs
    and attention weights."""
    torch.manual_seed(0)
    layer = NodeAttention(CHANNELS, CHANNELS, similarity="scaled_dot_product", heads=4)
    layer.eval()
    results: dict[str, dict[str, object]] = {}

    # pixels: nodes in row-major order, a 5x5 window around every pixel
    img = make_image()
    _, _, h, w = img.shape
    x, pos, _ = graphs.image_to_nodes(img)  # (H*W, 3), (H*W, 2)
    edge_index, _ = graphs.grid_graph(h, w, 5)
    embed = nn.Linear(3, CHANNELS)
    results["image"] = _apply(layer, embed(x), edge_index)
    results["image"]["image"] = graphs.nodes_to_image(results["image"]["y"], 1, h, w)

    # points: kNN neighbourhood, xyz as input features
    cloud = make_cloud()
    edge_index = graphs.knn_graph(cloud, 16, loop=True)
    embed = nn.Linear(3, CHANNELS)
    results["points"] = _apply(layer, embed(cloud), edge_index)

    # graph nodes: the given edges plus a self loop per node
    data = KarateClub()[0]
    edge_index, _ = graphs.add_self_loops(
        graphs.sort_by_target(data.edge_index)[0], num_nodes=data.num_nodes
    )
    embed = nn.Linear(data.num_features, CHANNELS)
    results["graph"] = _apply(layer, embed(data.x), edge_index)
    return layer, results


@torch.no_grad()
def _apply(layer: NodeAttention, x: Tensor, edge_index: Tensor) -> dict:
    y = layer(x, edge_index)  # (N, C)
    ei, w = layer.attention_weights(x, edge_index)  # (E, H)
    return {"y": y, "edge_index": ei, "weights": w, "x": x}


def main() -> None:
    _, results = run()
    for name, r in results.items():
        y, ei, w = r["y"], r["edge_index"], r["weights"]
        deg = torch.bincount(ei[1], minlength=y.size(0)).float()
        print(
            f"{name:>6}: {y.size(0):5d} nodes, {ei.size(1):6d} edges "
            f"(mean neighbourhood {deg.mean():5.1f}), output {tuple(y.shape)}, "
            f"max attention weight {w.max():.3f}"
        )


if __name__ == "__main__":
    main()

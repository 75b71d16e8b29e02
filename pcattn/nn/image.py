r"""Images as nodes: the convenience path of the image-paper operators.

An image ``(B, C, H, W)`` becomes ``B * H * W`` nodes in row-major order with integer
positions ``(row, col)`` (:func:`pcattn.graphs.image_to_nodes`); an operator builds its graph
on them, runs the same node code as for points and graphs, and turns the ``(B * H * W, C_out)``
result back into ``(B, C_out, H, W)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..checks import check_batch, check_features, shape_of
from ..graphs import image_to_nodes, nodes_to_image

__all__ = [
    "ImageNodes",
    "image_nodes",
    "to_image",
    "is_image",
    "check_image",
    "check_nodes",
    "validate_image",
    "node_batch",
]


class ImageNodes(NamedTuple):
    x: Tensor  # (B*H*W, C)
    pos: Tensor  # (B*H*W, 2) int64 (row, col)
    batch: Tensor  # (B*H*W,)
    batch_size: int
    height: int
    width: int


def is_image(x: object) -> bool:
    """True for a 4-D tensor ``(B, C, H, W)``."""
    return isinstance(x, Tensor) and x.dim() == 4


def image_nodes(img: Tensor) -> ImageNodes:
    """``(B, C, H, W)`` -> nodes, positions, batch and the image size."""
    x, pos, batch = image_to_nodes(img)
    b, _, h, w = img.shape
    return ImageNodes(x, pos, batch, b, h, w)


def to_image(y: Tensor, nodes: ImageNodes) -> Tensor:
    """Node outputs ``(B*H*W, C)`` back to ``(B, C, H, W)`` (contiguous)."""
    return nodes_to_image(y, nodes.batch_size, nodes.height, nodes.width).contiguous()


def check_image(x: Tensor, in_channels: int, layer: nn.Module, **node_only: object) -> ImageNodes:
    """Validate an image input ``(B, in_channels, H, W)`` of ``layer`` and return its nodes.

    ``node_only`` are the node-mode arguments of the call (``edge_index=...``, ``batch=...``):
    with an image they must be ``None``, since the operator builds its graph itself.
    """
    validate_image(x, in_channels, layer, **node_only)
    return image_nodes(x)


def validate_image(x: Tensor, in_channels: int, layer: nn.Module, **node_only: object) -> None:
    """The checks of :func:`check_image`, for layers that keep the image layout."""
    owner = type(layer).__name__
    for arg, value in node_only.items():
        if value is not None:
            raise ValueError(f"{owner}: {arg} must be None for an image input (B, C, H, W)")
    if x.size(1) != in_channels:
        raise ValueError(f"{owner}: x has {x.size(1)} channels, in_channels is {in_channels}")
    check_features(x, layer, owner)
    if min(x.size(0), x.size(2), x.size(3)) < 1:
        raise ValueError(
            f"{owner}: x is an empty image {tuple(x.shape)}; batch size, height and width "
            "must be >= 1"
        )


def check_nodes(x: object, in_channels: int, layer: nn.Module) -> Tensor:
    """Validate node features ``(N, in_channels)`` given to ``layer``."""
    owner = type(layer).__name__
    if not isinstance(x, Tensor) or x.dim() != 2:
        got = shape_of(x)
        raise ValueError(f"{owner}: x must be an image (B, C, H, W) or nodes (N, C), got {got}")
    if x.size(1) != in_channels:
        raise ValueError(f"{owner}: x has {x.size(1)} channels, in_channels is {in_channels}")
    return check_features(x, layer, owner)


def node_batch(x: Tensor, batch: Tensor | None) -> Tensor:
    """``batch`` checked against ``x (N, C)``, or all zeros (one sample) when ``None``."""
    if batch is None:
        return torch.zeros(x.size(0), dtype=torch.long, device=x.device)
    return check_batch(batch, x.size(0), "batch", "x", x.device)

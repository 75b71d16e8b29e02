r"""Images as nodes: the convenience path of the image-paper operators.

An image ``(B, C, H, W)`` becomes ``B * H * W`` nodes in row-major order with integer
positions ``(row, col)`` (:func:`pcattn.graphs.image_to_nodes`); an operator builds its graph
on them, runs the same node code as for points and graphs, and turns the ``(B * H * W, C_out)``
result back into ``(B, C_out, H, W)``.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..graphs import image_to_nodes, nodes_to_image

__all__ = ["ImageNodes", "image_nodes", "to_image", "is_image"]


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

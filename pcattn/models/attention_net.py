r"""``AttentionNet``: Point Transformer's hierarchy with a pluggable operator per stage, and
Point Transformer itself as its paper configuration.

The hierarchy (Zhao et al., `"Point Transformer" <https://arxiv.org/abs/2012.09164>`_, Fig. 4):
a stem MLP, then stages at decreasing resolution; between stages a
:class:`~pcattn.models.common.TransitionDown` (FPS keeps ``1 / stride`` of the points, kNN
max-pooling); in each stage ``blocks[s]`` residual :class:`~pcattn.models.operators.
AttentionBlock` s over the stage's kNN graph (built once per stage, the point itself
included). Classification mean-pools the last stage; segmentation climbs back with
:class:`~pcattn.models.common.TransitionUp` (kNN interpolation plus skip connection) and one
block per level, and adds the shape category's one-hot before the head, as PointNet++ and
DGCNN do for part segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .common import (
    TransitionDown,
    TransitionUp,
    batch_of,
    global_pool,
    knn_edges,
    mlp,
    node_features,
    shape_category_onehot,
)
from .operators import OPERATORS, AttentionBlock, OperatorOptions

__all__ = ["AttentionNetCls", "AttentionNetSeg", "PointTransformerCls", "PointTransformerSeg"]


def _stage_operators(operators: Sequence[str], stages: int) -> list[str]:
    ops = [operators] if isinstance(operators, str) else list(operators)
    if len(ops) == 1:
        ops = ops * stages
    if len(ops) != stages:
        raise ValueError(
            f"operators must name one operator or one per stage ({stages}), got {len(ops)}"
        )
    for op in ops:
        if op not in OPERATORS:
            raise ValueError(f"unknown operator {op!r}; choose one of {sorted(OPERATORS)}")
    return ops


class _Encoder(nn.Module):
    """Stem and stages; returns each stage's ``(x, pos, batch, edge_index)``."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        blocks: Sequence[int],
        operators: Sequence[str],
        *,
        stride: int,
        k: int,
        options: OperatorOptions,
    ) -> None:
        super().__init__()
        if len(channels) != len(blocks) or not channels:
            raise ValueError(
                f"channels and blocks need one entry per stage, got {len(channels)} and "
                f"{len(blocks)}"
            )
        if any(b < 0 for b in blocks):
            raise ValueError(f"blocks must be >= 0, got {list(blocks)}")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels must be ints >= 1, got {list(channels)}")
        ops = _stage_operators(operators, len(channels))
        self.k, self.in_channels = k, in_channels
        self.stem = mlp([options.pos_dim + in_channels, channels[0]])
        self.down = nn.ModuleList(
            TransitionDown(c_in, c_out, stride=stride, k=k, pos_dim=options.pos_dim)
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        self.stages = nn.ModuleList(
            nn.ModuleList(AttentionBlock(c, op, options) for _ in range(b))
            for c, b, op in zip(channels, blocks, ops, strict=True)
        )

    def forward(self, data) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        pos, (batch, _) = data.pos, batch_of(data)
        x = self.stem(node_features(data, self.in_channels))  # (N, C_0)
        levels = []
        for s, stage in enumerate(self.stages):
            if s > 0:
                x, pos, batch = self.down[s - 1](x, pos, batch)  # (N_s, C_s)
            edge_index = knn_edges(pos, self.k, batch)  # (2, N_s k)
            for block in stage:
                x = block(x, edge_index, pos, batch)  # (N_s, C_s)
            levels.append((x, pos, batch, edge_index))
        return levels


class AttentionNetCls(nn.Module):
    r"""Point-cloud classifier: Point Transformer's encoder with the operator of each stage
    chosen by name (see :data:`~pcattn.models.operators.OPERATORS`), global mean pooling and
    an MLP head.

    Args:
        in_channels: width of ``data.x`` (``0``: positions only); the input is
            ``[pos; x]``.
        num_classes: number of classes.
        operators: one operator name for every stage, or one per stage (default:
            ``("point_transformer",)``).
        channels: width of each stage (default: ``(32, 64, 128, 256, 512)``, the paper's).
        blocks: attention blocks in each stage (default: ``(1, 2, 3, 5, 2)``, the paper's).
        stride: point reduction between stages (default: ``4``).
        k: neighbours of the kNN graphs and of the transitions (default: ``16``); a stage
            whose smallest cloud in the batch has fewer points uses that many for the whole
            batch, so mixing a cloud smaller than ``k`` into a batch changes the others.
        heads: heads of GAT / GATv2 (default: ``4``).
        share_planes: channels sharing one weight in vector attention (default: ``8``).
        slots: memory slots of external attention (default: ``64``).
        pos_dim: dimension of the positions (default: ``3``; ``2`` for pixels).
        dropout: dropout in the head (default: ``0.5``).

    Shapes:
        ``data.pos (N, pos_dim)``, ``data.x (N, in_channels)``, ``data.batch (N,)`` ->
        logits ``(B, num_classes)``
    """

    task = "classification"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        operators: Sequence[str] = ("point_transformer",),
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        blocks: Sequence[int] = (1, 2, 3, 5, 2),
        stride: int = 4,
        k: int = 16,
        heads: int = 4,
        share_planes: int = 8,
        slots: int = 64,
        pos_dim: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        options = OperatorOptions(
            heads=heads, share_planes=share_planes, slots=slots, pos_dim=pos_dim
        )
        self.encoder = _Encoder(
            in_channels, channels, blocks, operators, stride=stride, k=k, options=options
        )
        c = channels[-1]
        hidden = [c, max(c // 2, 32), max(c // 4, 32)]  # 512 -> 256 -> 128 in the paper
        self.head = nn.Sequential(
            mlp(hidden), nn.Dropout(dropout), nn.Linear(hidden[-1], num_classes)
        )

    def forward(self, data) -> Tensor:
        x, _, batch, _ = self.encoder(data)[-1]  # (N_last, C)
        g = global_pool(x, batch, batch_of(data)[1], "mean")  # (B, C)
        return self.head(g)  # (B, num_classes)


class AttentionNetSeg(nn.Module):
    r"""Part segmenter: the encoder of :class:`AttentionNetCls`, a decoder of
    :class:`~pcattn.models.common.TransitionUp` + one attention block per level, the shape
    category's one-hot joined to the full-resolution features, and a per-point MLP head.

    Args:
        in_channels: width of ``data.x`` (``0``: positions only).
        num_classes: number of part labels (over all categories).
        num_categories: number of shape categories (the one-hot width).
        operators, channels, blocks, stride, k, heads, share_planes, slots, pos_dim: as in
            :class:`AttentionNetCls`; the decoder level ``s`` uses the operator of stage ``s``.
        dropout: dropout in the head (default: ``0.5``).

    Shapes:
        ``data.pos (N, pos_dim)``, ``data.x (N, in_channels)``, ``data.batch (N,)``,
        ``data.category (B,)`` -> logits ``(N, num_classes)``
    """

    task = "segmentation"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        num_categories: int,
        operators: Sequence[str] = ("point_transformer",),
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        blocks: Sequence[int] = (1, 2, 3, 5, 2),
        stride: int = 4,
        k: int = 16,
        heads: int = 4,
        share_planes: int = 8,
        slots: int = 64,
        pos_dim: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        options = OperatorOptions(
            heads=heads, share_planes=share_planes, slots=slots, pos_dim=pos_dim
        )
        self.num_categories = num_categories
        self.encoder = _Encoder(
            in_channels, channels, blocks, operators, stride=stride, k=k, options=options
        )
        ops = _stage_operators(operators, len(channels))
        self.up = nn.ModuleList(
            TransitionUp(c_coarse, c_fine, c_fine)
            for c_fine, c_coarse in zip(channels[:-1], channels[1:], strict=True)
        )
        self.up_blocks = nn.ModuleList(
            AttentionBlock(c, op, options) for c, op in zip(channels[:-1], ops[:-1], strict=True)
        )
        c0 = channels[0]
        self.head = nn.Sequential(
            mlp([c0 + num_categories, c0]), nn.Dropout(dropout), nn.Linear(c0, num_classes)
        )

    def forward(self, data) -> Tensor:
        levels = self.encoder(data)
        x = levels[-1][0]  # (N_last, C_last)
        for s in range(len(levels) - 2, -1, -1):
            _, pos_c, batch_c, _ = levels[s + 1]
            skip, pos, batch, edge_index = levels[s]
            x = self.up[s](x, pos_c, batch_c, skip, pos, batch)  # (N_s, C_s)
            x = self.up_blocks[s](x, edge_index, pos, batch)  # (N_s, C_s)
        batch, num_graphs = batch_of(data)
        onehot = shape_category_onehot(data, batch, num_graphs, self.num_categories)  # (N, K)
        return self.head(torch.cat([x, onehot.to(x.dtype)], dim=1))  # (N, num_classes)


class PointTransformerCls(AttentionNetCls):
    r"""Point Transformer classification network (Zhao et al., ICCV 2021,
    `arXiv:2012.09164 <https://arxiv.org/abs/2012.09164>`_): :class:`AttentionNetCls` with
    :class:`~pcattn.nn.PointTransformerLayer` in every stage and the paper's widths
    ``(32, 64, 128, 256, 512)``, blocks ``(1, 2, 3, 5, 2)``, stride 4, ``k = 16``,
    ``share_planes = 8``.

    Args:
        in_channels, num_classes, channels, blocks, stride, k, share_planes, pos_dim, dropout:
            as in :class:`AttentionNetCls`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        blocks: Sequence[int] = (1, 2, 3, 5, 2),
        stride: int = 4,
        k: int = 16,
        share_planes: int = 8,
        pos_dim: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            operators=("point_transformer",),
            channels=channels,
            blocks=blocks,
            stride=stride,
            k=k,
            share_planes=share_planes,
            pos_dim=pos_dim,
            dropout=dropout,
        )


class PointTransformerSeg(AttentionNetSeg):
    r"""Point Transformer part-segmentation network (Zhao et al., ICCV 2021): the U-Net of
    :class:`AttentionNetSeg` with :class:`~pcattn.nn.PointTransformerLayer` at every level and
    the paper's widths and depths. The paper's extra MLP over the global mean at the start of
    the decoder is left out.

    Args:
        in_channels, num_classes, num_categories, channels, blocks, stride, k, share_planes,
            pos_dim, dropout: as in :class:`AttentionNetSeg`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        num_categories: int,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        blocks: Sequence[int] = (1, 2, 3, 5, 2),
        stride: int = 4,
        k: int = 16,
        share_planes: int = 8,
        pos_dim: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            num_categories=num_categories,
            operators=("point_transformer",),
            channels=channels,
            blocks=blocks,
            stride=stride,
            k=k,
            share_planes=share_planes,
            pos_dim=pos_dim,
            dropout=dropout,
        )

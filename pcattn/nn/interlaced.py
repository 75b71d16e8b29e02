r"""ISANet's interlaced sparse self-attention: a long-range stage over stride-``P`` groups,
then a short-range stage within ``P x P`` blocks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_positive_int
from ..graphs import full_graph
from .attention import NodeAttention
from .base import Edges, Similarity
from .image import check_image, check_nodes, image_nodes, is_image, to_image
from .value import LinearValue

__all__ = ["InterlacedSparseAttention", "ProjectedDotProduct"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    r"""A 1x1 convolution without bias, batch norm and ReLU (mmcv's ``ConvModule``) on nodes."""
    return nn.Sequential(
        nn.Linear(in_channels, out_channels, bias=False),
        nn.BatchNorm1d(out_channels),
        nn.ReLU(),
    )


def _reset_conv_bn(module: nn.Module) -> None:
    r"""mmcv's ``ConvModule`` init: Kaiming normal (``fan_out``, ReLU) convolutions with zero
    bias, batch norms at weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            m.reset_running_stats()
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ProjectedDotProduct(Similarity):
    r"""Scaled dot product of arbitrary query and key networks,
    :math:`s_{ij} = \tau\, q(x_i)^\top k(x_j)` (one head).

    Args:
        query: network applied to the targets' features, ``(N_dst, C_dst) -> (N_dst, d)``.
        key: network applied to the sources' features, ``(N_src, C_src) -> (N_src, d)``; may be
            the same module as ``query`` (shared weights).
        scale: :math:`\tau` (default: ``1.0``).
    """

    def __init__(self, query: nn.Module, key: nn.Module, *, scale: float = 1.0) -> None:
        super().__init__()
        self.query, self.key, self.tau = query, key, float(scale)

    def forward(self, x_dst: Tensor, x_src: Tensor, edges: Edges) -> Tensor:
        q = self.query(x_dst)  # (N_dst, d)
        k = self.key(x_src)  # (N_src, d)
        return (q.index_select(0, edges.dst) * k.index_select(0, edges.src)).sum(
            -1, keepdim=True
        ) * self.tau  # (E, 1)

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g}"


def _group_graph(group: Tensor) -> Tensor:
    r"""All pairs (each node with itself included) among the nodes that share a group id,
    sorted by target."""
    perm = torch.argsort(group, stable=True)  # nodes grouped
    ei = perm[full_graph(group[perm])]  # (2, E) back to node ids
    return ei[:, torch.argsort(ei[1], stable=True)]


def _interlaced_graphs(
    height: int, width: int, block: tuple[int, int], batch_size: int, device=None
) -> tuple[Tensor, Tensor]:
    r"""ISA's two graphs on ``batch_size`` row-major ``height x width`` grids whose sides are
    multiples of ``block = (P_h, P_w)``.

    Long range: pixel ``(y, x)`` with every ``(y', x')`` of its image such that
    :math:`y' \equiv y \pmod{P_h}` and :math:`x' \equiv x \pmod{P_w}`
    (``H W / (P_h P_w)`` pixels). Short range: with every pixel of its ``P_h x P_w`` block.
    """
    ph, pw = block
    gh, gw = height // ph, width // pw
    y = torch.arange(height, device=device).view(1, -1, 1)  # (1, H, 1)
    x = torch.arange(width, device=device).view(1, 1, -1)  # (1, 1, W)
    b = torch.arange(batch_size, device=device).view(-1, 1, 1)  # (B, 1, 1)
    long_group = (b * ph + y % ph) * pw + x % pw  # (B, H, W)
    short_group = (b * gh + y // ph) * gw + x // pw  # (B, H, W)
    return _group_graph(long_group.reshape(-1)), _group_graph(short_group.reshape(-1))


class _RelationBlock(nn.Module):
    r"""One ISA stage: attention with :math:`q, k` = 2 x (1x1 conv + BN + ReLU), value a 1x1
    conv with bias, logits scaled by :math:`d^{-1/2}`, then 1x1 conv + BN + ReLU."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        query = nn.Sequential(
            *_conv_bn_relu(in_channels, channels), *_conv_bn_relu(channels, channels)
        )
        key = nn.Sequential(
            *_conv_bn_relu(in_channels, channels), *_conv_bn_relu(channels, channels)
        )
        self.attention = NodeAttention(
            in_channels,
            in_channels,
            similarity=ProjectedDotProduct(query, key, scale=channels**-0.5),
            normalize="softmax",
            value=LinearValue(in_channels, in_channels, bias=True),
            bias=False,
        )
        self.project = _conv_bn_relu(in_channels, in_channels)

    def reset_parameters(self) -> None:
        _reset_conv_bn(self.attention.similarity)
        _reset_conv_bn(self.project)
        self.attention.value.lin.reset_parameters()  # a plain conv: PyTorch's default init

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.project(self.attention(x, edge_index))  # (N, C)


class InterlacedSparseAttention(nn.Module):
    r"""Interlaced sparse self-attention from `"Interlaced Sparse Self-Attention for Semantic
    Segmentation" <https://arxiv.org/abs/1907.12273>`_: two attention stages with their own
    weights, the second applied to the first's output,

    .. math::
        y^{(s)}_i = \rho_s\Big(\frac{1}{C_i} \sum_{j \in \mathcal N_s(i)}
            \exp\big(\tau\, q_s(x_i)^\top k_s(x_j)\big)\, v_s(x_j)\Big),
        \qquad s = 1 \text{ (long range)}, 2 \text{ (short range)}

    :math:`\mathcal N_1(i)` = the pixels congruent to ``i`` modulo the block size
    :math:`(P_h, P_w)` (stride-``P`` groups of ``H W / P_h P_w`` pixels) and
    :math:`\mathcal N_2(i)` = the pixels of ``i``'s contiguous ``P_h x P_w`` block, each
    including ``i``; ``f`` is the exponentiated dot product of :math:`q, k` = 2 x (1x1 conv +
    BN + ReLU) ``C -> channels`` scaled by :math:`\tau = \text{channels}^{-1/2}`, ``C_i`` its
    softmax over :math:`\mathcal N_s(i)`, ``g = v`` a 1x1 conv ``C -> C`` with bias, and
    :math:`\rho` a 1x1 conv + BN + ReLU.

    Images whose sides are not multiples of the block are zero-padded symmetrically (the extra
    row or column at the bottom / right), as mmseg's ``ISAHead``. The padded pixels are full
    nodes of both graphs, **unmasked** keys and queries: their zero input passes through the
    projections, so BN biases and the value conv's bias make their keys and values non-zero,
    and the long-range stage's output at padded pixels feeds the short-range stage. The
    padding is cropped at the end. mmseg's head around the block (a 3x3 conv before; crop,
    concatenation with the input and a 1x1 conv + BN + ReLU after) is left to the model.

    Node mode takes the two graphs directly, ``edge_index=(long_range, short_range)``: the
    grouping is defined by the pixel lattice (and its padding), so points or graph nodes need
    a grouping of their own (e.g. sampled vs. local clusters), built by the caller.

    Args:
        in_channels: input and output width ``C``.
        block: local group size :math:`(P_h, P_w)` (default: ``(8, 8)``, mmseg's
            ``down_factor``).
        channels: query/key width (default: ``256``, mmseg's ``isa_channels``).

    Shapes:
        - **x:** image ``(B, C, H, W)``, or nodes ``(N, C)`` with
          ``edge_index = (long (2, E_1), short (2, E_2))``
        - **output:** ``(B, C, H, W)`` or ``(N, C)``
    """

    def __init__(
        self, in_channels: int, *, block: int | tuple[int, int] = (8, 8), channels: int = 256
    ) -> None:
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        channels = check_positive_int(channels, "channels")
        pair = (block, block) if isinstance(block, int) and not isinstance(block, bool) else block
        if (
            not isinstance(pair, tuple | list)
            or len(pair) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in pair)
        ):
            raise ValueError(f"block must be a positive int or a pair of them, got {block!r}")
        self.in_channels, self.channels, self.block = in_channels, channels, tuple(pair)
        self.long_range = _RelationBlock(in_channels, channels)
        self.short_range = _RelationBlock(in_channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""mmcv ``ConvModule`` init for the conv + BN + ReLU layers, PyTorch's default for the
        value convs (as mmseg leaves them)."""
        self.long_range.reset_parameters()
        self.short_range.reset_parameters()

    def forward(self, x: Tensor, edge_index: tuple[Tensor, Tensor] | None = None) -> Tensor:
        r"""Long-range stage, then short-range stage.

        Args:
            x: an image ``(B, C, H, W)``, or node features ``(N, C)``.
            edge_index: node mode only, the pair ``(long_range, short_range)`` of ``(2, E)``
                graphs.
        """
        if is_image(x):
            xp, crop = self._pad(x, edge_index)
            nodes = image_nodes(xp)
            long, short = _interlaced_graphs(
                nodes.height, nodes.width, self.block, nodes.batch_size, x.device
            )
            y = self.short_range(self.long_range(nodes.x, long), short)  # (B * Hp * Wp, C)
            (top, left), (h, w) = crop
            return to_image(y, nodes)[:, :, top : top + h, left : left + w].contiguous()
        long, short = self._check_nodes(x, edge_index)
        return self.short_range(self.long_range(x, long), short)

    def attention_weights(
        self,
        x: Tensor,
        edge_index: tuple[Tensor, Tensor] | None = None,
        *,
        stage: str = "long",
    ) -> tuple[Tensor, Tensor]:
        r"""The softmax weights of one stage.

        Args:
            x, edge_index: as in :meth:`forward`.
            stage: ``"long"`` (default) or ``"short"``.

        Returns:
            ``(edge_index, weights (E, 1))``. For an image the node ids are those of the
            **padded** grid ``(B, Hp, Wp)`` in row-major order.
        """
        if stage not in ("long", "short"):
            raise ValueError(f"stage must be 'long' or 'short', got {stage!r}")
        if is_image(x):
            xp, _ = self._pad(x, edge_index)
            nodes = image_nodes(xp)
            x = nodes.x
            long, short = _interlaced_graphs(
                nodes.height, nodes.width, self.block, nodes.batch_size, x.device
            )
        else:
            long, short = self._check_nodes(x, edge_index)
        if stage == "long":
            return self.long_range.attention.attention_weights(x, long)
        return self.short_range.attention.attention_weights(self.long_range(x, long), short)

    def _pad(self, x: Tensor, edge_index) -> tuple[Tensor, tuple[tuple[int, int], tuple[int, int]]]:
        check_image(x, self.in_channels, self, edge_index=edge_index)
        h, w = x.shape[-2:]
        ph, pw = self.block
        pad_h, pad_w = math.ceil(h / ph) * ph - h, math.ceil(w / pw) * pw - w
        top, left = pad_h // 2, pad_w // 2
        xp = F.pad(x, (left, pad_w - left, top, pad_h - top))  # (B, C, Hp, Wp), zeros
        return xp, ((top, left), (h, w))

    def _check_nodes(self, x: Tensor, edge_index) -> tuple[Tensor, Tensor]:
        check_nodes(x, self.in_channels, self)
        if not isinstance(edge_index, tuple | list) or len(edge_index) != 2:
            raise ValueError(
                "edge_index must be a pair (long_range, short_range) of (2, E) graphs for node "
                f"features (N, C), got {type(edge_index).__name__}"
            )
        return edge_index[0], edge_index[1]

    def extra_repr(self) -> str:
        return f"{self.in_channels}, block={self.block}, channels={self.channels}"

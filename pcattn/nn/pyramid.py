r"""ANN's asymmetric pyramid non-local block: every pixel attends to a few pyramid-pooled keys."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_positive_int, shape_of
from ..graphs import slot_graph
from ..ops import scatter
from .attention import NodeAttention
from .base import ValueTransform
from .image import check_image, check_nodes, is_image, to_image
from .interlaced import ProjectedDotProduct, _conv_bn_relu, _reset_conv_bn

__all__ = ["PyramidKeyAttention"]


def _bins(size: int, out: int, device=None) -> Tensor:
    r"""Adaptive average pooling's bins: bin ``o`` covers
    :math:`[\lfloor o\, n / m \rfloor, \lceil (o + 1)\, n / m \rceil)`; ``(out, size)`` bool."""
    o = torch.arange(out, device=device).view(-1, 1)  # (m, 1)
    start = (o * size) // out
    end = -((-(o + 1) * size) // out)  # ceil
    i = torch.arange(size, device=device).view(1, -1)  # (1, n)
    return (i >= start) & (i < end)  # (m, n)


def _pyramid_pool_graph(
    height: int, width: int, scales: tuple[int, ...], batch_size: int, device=None
) -> tuple[Tensor, int]:
    r"""Edges pixel -> pooled node of adaptive average pooling at every scale ``s`` (``s x s``
    bins, which may overlap). Pooled nodes of image ``b`` are ``b * S + offset_s + oy * s + ox``
    with ``S = sum s^2`` (scales in the given order, bins row-major).

    Returns:
        ``pool_index (2, E)`` sorted by pooled node, and ``S``.
    """
    srcs, dsts, offset = [], [], 0
    for s in scales:
        inside = _bins(height, s, device)[:, None, :, None] & _bins(width, s, device)[None, :, None]
        oy, ox, y, x = inside.nonzero(as_tuple=True)  # (s, s, H, W) -> bins and their pixels
        srcs.append(y * width + x)
        dsts.append(offset + oy * s + ox)
        offset += s * s
    b = torch.arange(batch_size, device=device).view(-1, 1)  # (B, 1)
    src = (torch.cat(srcs).view(1, -1) + b * height * width).reshape(-1)  # (B * E_1,)
    dst = (torch.cat(dsts).view(1, -1) + b * offset).reshape(-1)  # (B * E_1,)
    return torch.stack([src, dst]), offset


class _Columns(nn.Module):
    r"""Columns ``[start, start + width)`` of the input."""

    def __init__(self, start: int, width: int) -> None:
        super().__init__()
        self.start, self.width = start, width

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.start : self.start + self.width]  # (N, width)


class _ColumnsValue(ValueTransform):
    r""":math:`g(x_j)` = columns ``[start, start + channels)`` of the source features (the
    pooled values, stored beside the pooled keys)."""

    def __init__(self, start: int, channels: int) -> None:
        super().__init__()
        self.start, self.heads, self.channels = start, 1, channels

    def node(self, x: Tensor) -> Tensor:
        return x[:, self.start : self.start + self.channels].unsqueeze(1)  # (N, 1, D)


class PyramidKeyAttention(nn.Module):
    r"""The asymmetric pyramid non-local block (APNB) from `"Asymmetric Non-local Neural
    Networks for Semantic Segmentation" <https://arxiv.org/abs/1908.07678>`_: queries are
    pixels, keys and values are a few pyramid-pooled nodes per image,

    .. math::
        c_i = W_o \frac{1}{C_i} \sum_{s \in \mathcal N(i)}
            \exp\big(\tau\, q(x_i)^\top \bar k_s\big)\, \bar v_s, \qquad
        \bar k_s = \frac{1}{|P_s|} \sum_{j \in P_s} k(x_j), \quad
        \bar v_s = \frac{1}{|P_s|} \sum_{j \in P_s} v(x_j), \qquad
        y_i = \beta([c_i; x_i])

    :math:`\mathcal N(i)` = the ``S`` pooled nodes of ``i``'s image (adaptive average pooling
    bins :math:`P_s` at every scale, ``S = 1 + 9 + 36 + 64 = 110`` for ``(1, 3, 6, 8)``), ``f``
    the exponentiated dot product with :math:`\tau = \text{key\_channels}^{-1/2}`, ``C_i`` its
    softmax over the ``S`` keys and ``g`` the pooled value. :math:`q` is a 1x1 conv + BN + ReLU
    ``C -> key_channels`` and ``k = q`` (APNB shares them; ``share_key_query=False`` gives
    ``k`` its own weights), :math:`v` a 1x1 conv ``C -> key_channels`` with bias, both pooled
    **after** projection as in mmseg. :math:`W_o` (1x1 conv ``key_channels -> C``, the
    reference's zero-initialised ``out_project``) and the fusion :math:`\beta` (1x1 conv + BN
    + ReLU on ``[context; input]``, ``2C -> out_channels``) follow mmseg's ``APNB`` with one
    query scale. With ``k = q``, :math:`q(x)` is computed once and serves as both (mmseg calls
    the shared projection twice; same values, but training BN's running statistics move once
    per call here). AFNB (keys from another feature map) is not covered.

    Node mode takes the pooling as a graph too: ``pool_index`` (node ``j`` -> pooled node
    ``s``, the key is the mean over its members) and ``edge_index`` (pooled node -> query
    node), e.g. voxel clusters at several resolutions for a point cloud.

    Args:
        in_channels: input width ``C``.
        key_channels: query/key/value width (default: ``256``, mmseg's
            ``project_channels``).
        pool_scales: adaptive pooling output sizes (default: ``(1, 3, 6, 8)``).
        share_key_query: one projection for queries and keys (default: ``True``, APNB).
        out_channels: output width (default: ``in_channels``).

    Shapes:
        - **x:** image ``(B, C, H, W)``, or nodes ``(N, C)`` with ``edge_index (2, E)``
          (pooled -> node), ``pool_index (2, E_p)`` (node -> pooled)
        - **output:** ``(B, C_out, H, W)`` or ``(N, C_out)``
    """

    def __init__(
        self,
        in_channels: int,
        *,
        key_channels: int = 256,
        pool_scales: tuple[int, ...] = (1, 3, 6, 8),
        share_key_query: bool = True,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        key_channels = check_positive_int(key_channels, "key_channels")
        out_channels = in_channels if out_channels is None else out_channels
        out_channels = check_positive_int(out_channels, "out_channels")
        if not isinstance(pool_scales, tuple | list) or not pool_scales:
            raise ValueError(f"pool_scales must be a non-empty tuple of ints, got {pool_scales!r}")
        scales = tuple(check_positive_int(s, "pool_scales") for s in pool_scales)
        self.in_channels, self.key_channels, self.out_channels = (
            in_channels,
            key_channels,
            out_channels,
        )
        self.pool_scales, self.share_key_query = scales, bool(share_key_query)
        d = key_channels
        self.query_project = _conv_bn_relu(in_channels, d)
        self.key_project = None if share_key_query else _conv_bn_relu(in_channels, d)
        self.value_project = nn.Linear(in_channels, d)
        # sources carry [pooled key; pooled value]; targets carry the projected query
        self.attention = NodeAttention(
            (2 * d, d),
            d,
            similarity=ProjectedDotProduct(nn.Identity(), _Columns(0, d), scale=d**-0.5),
            normalize="softmax",
            value=_ColumnsValue(d, d),
            bias=False,
        )
        self.out_project = nn.Linear(d, in_channels)
        self.bottleneck = _conv_bn_relu(2 * in_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""mmcv ``ConvModule`` init for conv + BN + ReLU, PyTorch's default for the value conv,
        zeros for ``out_project`` (so the context starts at 0)."""
        _reset_conv_bn(self.query_project)
        if self.key_project is not None:
            _reset_conv_bn(self.key_project)
        self.value_project.reset_parameters()
        nn.init.zeros_(self.out_project.weight)
        nn.init.zeros_(self.out_project.bias)
        _reset_conv_bn(self.bottleneck)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor | None = None,
        *,
        pool_index: Tensor | None = None,
        num_pooled: int | None = None,
    ) -> Tensor:
        r"""Project, pool, attend, fuse.

        Args:
            x: an image ``(B, C, H, W)`` (both graphs are built here), or node features
                ``(N, C)``.
            edge_index: node mode, pooled node ``s`` -> query node ``i``, ``(2, E)``.
            pool_index: node mode, node ``j`` -> pooled node ``s``, ``(2, E_p)``.
            num_pooled: node mode, number of pooled nodes (default: the largest id + 1).
        """
        if is_image(x):
            nodes, edge_index, pool_index, num_pooled = self._image(x, edge_index, pool_index)
            return to_image(self._nodes(nodes.x, edge_index, pool_index, num_pooled)[0], nodes)
        num_pooled = self._check_nodes(x, edge_index, pool_index, num_pooled)
        return self._nodes(x, edge_index, pool_index, num_pooled)[0]

    def attention_weights(
        self,
        x: Tensor,
        edge_index: Tensor | None = None,
        *,
        pool_index: Tensor | None = None,
        num_pooled: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""The softmax weights over the pooled keys.

        Returns:
            ``(edge_index, weights (E, 1))``: edges pooled node -> query node (for an image,
            pooled node ``b * S + offset_s + oy * s + ox`` -> pixel ``b * H * W + y * W + x``).
        """
        if is_image(x):
            nodes, edge_index, pool_index, num_pooled = self._image(x, edge_index, pool_index)
            x = nodes.x
        else:
            num_pooled = self._check_nodes(x, edge_index, pool_index, num_pooled)
        _, q, pooled = self._nodes(x, edge_index, pool_index, num_pooled)
        return self.attention.attention_weights((pooled, q), edge_index)

    def _nodes(
        self, x: Tensor, edge_index: Tensor, pool_index: Tensor, num_pooled: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        q = self.query_project(x)  # (N, d)
        k = q if self.key_project is None else self.key_project(x)  # (N, d)
        kv = torch.cat([k, self.value_project(x)], 1)  # (N, 2d)
        src, dst = pool_index[0], pool_index[1]
        pooled = scatter(kv[src], dst, num_pooled, reduce="mean")  # (S_total, 2d)
        context = self.out_project(self.attention((pooled, q), edge_index))  # (N, C)
        return self.bottleneck(torch.cat([context, x], 1)), q, pooled  # (N, C_out)

    def _image(self, x: Tensor, edge_index: Tensor | None, pool_index: Tensor | None):
        nodes = check_image(x, self.in_channels, self, edge_index=edge_index, pool_index=pool_index)
        pool_index, s = _pyramid_pool_graph(
            nodes.height, nodes.width, self.pool_scales, nodes.batch_size, x.device
        )
        edge_index = slot_graph(nodes.batch, s)  # every pooled node of the image -> pixel
        return nodes, edge_index, pool_index, nodes.batch_size * s

    def _check_nodes(
        self,
        x: Tensor,
        edge_index: Tensor | None,
        pool_index: Tensor | None,
        num_pooled: int | None,
    ) -> int:
        check_nodes(x, self.in_channels, self)
        for name, ei in (("edge_index", edge_index), ("pool_index", pool_index)):
            if not isinstance(ei, Tensor) or ei.dim() != 2 or ei.size(0) != 2:
                got = shape_of(ei)
                raise ValueError(f"{name} must be a tensor (2, E) for node features, got {got}")
        if pool_index.numel() and (
            int(pool_index[0].min()) < 0 or int(pool_index[0].max()) >= x.size(0)
        ):
            raise ValueError(f"pool_index[0] must hold node ids in [0, {x.size(0)})")
        if num_pooled is None:
            ids = torch.cat([pool_index[1], edge_index[0]])
            return int(ids.max()) + 1 if ids.numel() else 0
        num_pooled = check_positive_int(num_pooled, "num_pooled")
        if pool_index.numel() and (
            int(pool_index[1].min()) < 0 or int(pool_index[1].max()) >= num_pooled
        ):
            raise ValueError(f"pool_index[1] must hold pooled ids in [0, {num_pooled})")
        return num_pooled

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, key_channels={self.key_channels}, "
            f"pool_scales={self.pool_scales}, share_key_query={self.share_key_query}"
        )

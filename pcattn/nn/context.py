r"""Global-context operators of segmentation networks: GCNet's global context block and
DANet's position / channel attention.

All of them attend over a whole sample (an image, or a cloud given by ``batch``). GCNet pools
every sample into one context node; DANet's position branch is a full graph over the nodes of
a sample, its channel branch a full graph over the *channels* of a sample (nodes and channels
swap roles: channel ``c`` of sample ``b`` is node ``b * C + c``, its feature the column
:math:`X_{:, c}` of the sample).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_batch, check_features, shape_of
from ..graphs import full_graph
from ..ops import scatter
from .attention import NodeAttention
from .base import Edges, Similarity
from .image import ImageNodes, check_image, is_image, to_image, validate_image
from .normalize import Softmax
from .similarity import DotProduct
from .value import IdentityValue, LinearValue

__all__ = [
    "ContextScore",
    "GlobalContextBlock",
    "PositionAttention",
    "ChannelAttention",
    "DualAttention",
]


def _nodes(
    module: nn.Module, x: Tensor, batch: Tensor | None, in_channels: int
) -> tuple[Tensor, Tensor, int, ImageNodes | None]:
    """``x`` (image or nodes) -> node features, a sorted batch vector, the number of samples
    and the image layout (``None`` for nodes)."""
    name = type(module).__name__
    if is_image(x):
        nodes = check_image(x, in_channels, module, batch=batch)
        return nodes.x, nodes.batch, nodes.batch_size, nodes
    if not isinstance(x, Tensor) or x.dim() != 2:
        got = shape_of(x)
        raise ValueError(f"{name}: x must be (N, C) or an image (B, C, H, W), got {got}")
    if x.size(1) != in_channels:
        raise ValueError(f"{name}: x has {x.size(1)} channels, in_channels is {in_channels}")
    check_features(x, module, name)
    if batch is None:
        batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
    else:
        batch = check_batch(batch, x.size(0), "batch", "x", x.device)
    b = int(batch.max()) + 1 if batch.numel() else 0
    return x, batch, b, None


# --------------------------------------------------------------------------------------------
# GCNet
# --------------------------------------------------------------------------------------------


class ContextScore(Similarity):
    r"""A query-independent logit :math:`s_{ij} = w_k^\top x_j + b` (GCNet's ``conv_mask``, a
    ``C -> 1`` 1x1 conv): the score of a source does not depend on the target."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.mask = nn.Linear(in_channels, 1)  # w_k, b

    def forward(self, x_dst: Tensor | None, x_src: Tensor, edges: Edges) -> Tensor:
        return self.mask(x_src).index_select(0, edges.src)  # (E, 1)


def _transform(channels: int, planes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(channels, planes),
        nn.LayerNorm(planes),
        nn.ReLU(),
        nn.Linear(planes, channels),
    )


class GlobalContextBlock(nn.Module):
    r"""Global context block of `"GCNet: Non-local Networks Meet Squeeze-Excitation Networks
    and Beyond" <https://arxiv.org/abs/1904.11492>`_:

    .. math::
        c_b = \frac{1}{C_b} \sum_{j : b_j = b} e^{w_k^\top x_j + b_k}\, x_j, \qquad
        t_b = W_2\, \mathrm{ReLU}(\mathrm{LN}(W_1 c_b)), \qquad
        z_i = x_i \odot \sigma(t^{mul}_{b_i}) + t^{add}_{b_i}

    In the unified form every :math:`y_i` would have :math:`\mathcal N(i)` = all nodes of its
    sample, but ``f`` ignores :math:`x_i`, so all :math:`y_i` of a sample are equal and are
    computed once: :math:`\mathcal N` is a bipartite graph from every node of sample ``b`` to
    one feature-less context node ``b``, ``f`` = :math:`e^{w_k^\top x_j + b_k}`
    (:class:`ContextScore`), ``C`` = softmax over the sample and ``g`` = identity. The
    transform (``C -> floor(ratio C) -> C``) and the fusion are post-ops: ``"add"``
    (``channel_add``, default) adds :math:`t^{add}`, ``"mul"`` (``channel_mul``) scales by
    :math:`\sigma(t^{mul})`; with both, the scaling comes first (mmcv ``ContextBlock``).

    Initialisation follows mmcv: :math:`w_k` kaiming normal (fan_in) with zero bias, the last
    linear map of each transform zero, so the block starts as the identity (``"add"``) or as
    :math:`x / 2` (``"mul"``).

    The mask bias :math:`b_k` (mmcv's ``conv_mask`` is a 1x1 conv with bias) adds the same
    constant to every logit of the sample's softmax, so it changes no output and its gradient
    is zero (in floating point: 0 or round-off); it is kept, as in mmcv, and stays at 0.

    Args:
        in_channels: feature width ``C``.
        ratio: bottleneck ratio of the transform (default: ``1/16``, the paper's backbone
            plug-in; mmseg's ``GCHead`` uses ``1/4``).
        fusion: ``"add"``, ``"mul"`` or a sequence of both (default: ``"add"``).

    Shapes:
        - **x:** ``(N, C)`` with ``batch (N,)`` sorted (optional: one sample), or an image
          ``(B, C, H, W)``
        - **output:** same shape as ``x``
    """

    def __init__(
        self, in_channels: int, *, ratio: float = 1 / 16, fusion: str | Sequence[str] = "add"
    ) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        planes = int(in_channels * ratio)
        if planes < 1:
            raise ValueError(
                f"ratio ({ratio}) * in_channels ({in_channels}) must be >= 1 (got {planes} planes)"
            )
        fusions = (fusion,) if isinstance(fusion, str) else tuple(fusion)
        if not fusions or any(f not in ("add", "mul") for f in fusions):
            raise ValueError(f"fusion must be 'add', 'mul' or a sequence of them, got {fusion!r}")
        self.in_channels, self.ratio, self.planes = in_channels, ratio, planes
        self.fusion = tuple(f for f in ("mul", "add") if f in fusions)
        self.pool = NodeAttention(
            (in_channels, 0),
            in_channels,
            similarity=ContextScore(in_channels),
            normalize=Softmax(),
            value=IdentityValue(in_channels),
            bias=False,
        )
        self.channel_mul = _transform(in_channels, planes) if "mul" in fusions else None
        self.channel_add = _transform(in_channels, planes) if "add" in fusions else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Kaiming-normal (fan_in) context score with zero bias; default transforms with the
        last linear map zeroed."""
        mask = self.pool.similarity.mask
        nn.init.kaiming_normal_(mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(mask.bias)
        for t in (self.channel_mul, self.channel_add):
            if t is not None:
                for m in t:
                    if isinstance(m, (nn.Linear, nn.LayerNorm)):
                        m.reset_parameters()
                nn.init.zeros_(t[-1].weight)
                nn.init.zeros_(t[-1].bias)

    def _pool_graph(self, n: int, batch: Tensor) -> Tensor:
        return torch.stack([torch.arange(n, device=batch.device), batch])  # (2, N)

    def forward(self, x: Tensor, *, batch: Tensor | None = None) -> Tensor:
        r"""Add (and / or multiply by) the transformed context of each sample.

        Args:
            x: node features ``(N, C)`` or an image ``(B, C, H, W)``.
            batch: sample of each node ``(N,)``, sorted (node path only).
        """
        xn, batch, b, nodes = _nodes(self, x, batch, self.in_channels)
        if xn.size(0) == 0:  # no nodes: the core cannot view (0, -1)
            return xn.clone()
        ei = self._pool_graph(xn.size(0), batch)
        context = self.pool((xn, xn.new_zeros(b, 0)), ei)  # (B, C)
        out = xn
        if self.channel_mul is not None:
            out = out * torch.sigmoid(self.channel_mul(context))[batch]  # (N, C)
        if self.channel_add is not None:
            out = out + self.channel_add(context)[batch]  # (N, C)
        return out if nodes is None else to_image(out, nodes)

    def attention_weights(self, x: Tensor, *, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (N, 1))``: the pooling weight of every node ``j``, on edges
        ``j -> b_j`` (the context node of its sample)."""
        xn, batch, b, _ = _nodes(self, x, batch, self.in_channels)
        ei = self._pool_graph(xn.size(0), batch)
        return self.pool.attention_weights((xn, xn.new_zeros(b, 0)), ei)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, planes={self.planes}, fusion={self.fusion}"


# --------------------------------------------------------------------------------------------
# DANet
# --------------------------------------------------------------------------------------------


class PositionAttention(nn.Module):
    r"""Position attention module (PAM) of `"Dual Attention Network for Scene Segmentation"
    <https://arxiv.org/abs/1809.02983>`_, the SAGAN self-attention:

    .. math::
        z_i = \gamma \frac{1}{C_i} \sum_{j \in \mathcal N(i)} e^{q_i^\top k_j}\, W_v x_j + x_i,
        \quad q = W_q x + b_q,\ k = W_k x + b_k

    :math:`\mathcal N(i)` is every node of ``i``'s sample (self included) or the given
    ``edge_index``, ``f = e^{q_i^\top k_j}`` (unscaled), ``C`` = softmax over ``j`` and ``g``
    = :math:`W_v x_j + b_v` (``C -> C``); the scale :math:`\gamma` (initialised to 0) and the
    residual are post-ops.

    Args:
        in_channels: feature width ``C``.
        key_channels: query / key width (default: ``C // 8`` as the original; mmseg's
            ``pam_channels`` is 64).

    Shapes:
        - **x:** ``(N, C)`` with ``batch (N,)`` or ``edge_index (2, E)`` (optional), or an image
          ``(B, C, H, W)``
        - **output:** same shape as ``x``
    """

    def __init__(self, in_channels: int, *, key_channels: int | None = None) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        key_channels = in_channels // 8 if key_channels is None else key_channels
        if isinstance(key_channels, bool) or not isinstance(key_channels, int) or key_channels < 1:
            raise ValueError(
                f"key_channels must be a positive int (default in_channels // 8), "
                f"got {key_channels!r}"
            )
        self.in_channels, self.key_channels = in_channels, key_channels
        self.attn = NodeAttention(
            in_channels,
            in_channels,
            similarity=DotProduct(in_channels, key_channels, bias=True),
            normalize=Softmax(),
            value=LinearValue(in_channels, in_channels, bias=True),
            bias=False,
        )
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Default projections, :math:`\gamma = 0`."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        nn.init.zeros_(self.gamma)

    def _graph(
        self, x: Tensor, edge_index: Tensor | None, batch: Tensor | None
    ) -> tuple[Tensor, Tensor, ImageNodes | None]:
        if edge_index is not None:
            if is_image(x) or batch is not None:
                raise ValueError(
                    f"{type(self).__name__}: edge_index is for node features without batch"
                )
            xn, _, _, nodes = _nodes(self, x, None, self.in_channels)
            return xn, edge_index, nodes
        xn, batch, _, nodes = _nodes(self, x, batch, self.in_channels)
        return xn, full_graph(batch), nodes

    def forward(
        self, x: Tensor, edge_index: Tensor | None = None, *, batch: Tensor | None = None
    ) -> Tensor:
        r"""Self-attention over each sample (or ``edge_index``), scaled by :math:`\gamma`,
        plus ``x``."""
        xn, ei, nodes = self._graph(x, edge_index, batch)
        if xn.size(0) == 0:  # no nodes: the core cannot view (0, -1)
            return xn.clone()
        out = self.gamma * self.attn(xn, ei) + xn  # (N, C)
        return out if nodes is None else to_image(out, nodes)

    def attention_weights(
        self, x: Tensor, edge_index: Tensor | None = None, *, batch: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (E, 1))``: the softmax weights of every edge."""
        xn, ei, _ = self._graph(x, edge_index, batch)
        return self.attn.attention_weights(xn, ei)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, key_channels={self.key_channels}"


class ChannelAttention(nn.Module):
    r"""Channel attention module (CAM) of `"Dual Attention Network for Scene Segmentation"
    <https://arxiv.org/abs/1809.02983>`_: attention whose nodes are the channels.

    .. math::
        z_{:, c} = \beta \frac{1}{C_c} \sum_{c'} e^{s_{cc'}}\, X_{:, c'} + X_{:, c},
        \qquad s_{cc'} = \mp X_{:, c}^\top X_{:, c'} = \mp E_{cc'}

    per sample, with :math:`X \in \mathbb R^{n \times C}` its nodes. :math:`\mathcal N(c)` is
    every channel of the sample (self included), the feature of channel node ``c`` being the
    column :math:`X_{:, c}` (``n`` values); ``f`` = :math:`e^{s_{cc'}}`, ``C`` = softmax over
    :math:`c'` and ``g`` = identity; :math:`\beta` (initialised to 0) and the residual are
    post-ops. There are no other parameters.

    ``variant="code"`` (the default) follows the reference code (DANet, mmseg), which takes
    the softmax of :math:`\max_{c''} E_{cc''} - E_{cc'}`, i.e. of :math:`-E_{cc'}`: a channel
    attends most to the channels *least* similar to it. It is the default because every
    released DANet model was trained with it. ``variant="paper"`` uses
    :math:`\mathrm{softmax}(E)` as the paper's Eq. 3 writes it.

    Point clouds of different sizes have channel features of different lengths; they are
    zero-padded to the largest cloud, which changes neither :math:`E` nor the kept outputs.

    Args:
        in_channels: feature width ``C``.
        variant: ``"code"`` (default) or ``"paper"``.

    Shapes:
        - **x:** ``(N, C)`` with ``batch (N,)`` sorted (optional: one sample), or an image
          ``(B, C, H, W)``
        - **output:** same shape as ``x``
    """

    def __init__(self, in_channels: int, *, variant: str = "code") -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if variant not in ("code", "paper"):
            raise ValueError(f"variant must be 'code' or 'paper', got {variant!r}")
        self.in_channels, self.variant = in_channels, variant
        sign = -1.0 if variant == "code" else 1.0
        self.similarity = DotProduct(1, 1, project=False, scale=sign)  # -+ X_c^T X_c'
        self.normalize = Softmax()
        self.beta = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r""":math:`\beta = 0`."""
        nn.init.zeros_(self.beta)

    def _channels(
        self, x: Tensor, batch: Tensor | None
    ) -> tuple[Tensor, tuple[bool, Tensor | None, Tensor | None]]:
        """Channel nodes ``(B C, n)`` and what is needed to map them back."""
        c = self.in_channels
        if is_image(x):
            validate_image(x, c, self, batch=batch)
            return x.reshape(x.size(0) * c, -1), (True, None, None)  # (B C, H W)
        xn, batch, b, _ = _nodes(self, x, batch, c)
        counts = torch.bincount(batch, minlength=b)  # (B,)
        start = torch.cumsum(counts, 0) - counts  # (B,)
        local = torch.arange(xn.size(0), device=xn.device) - start[batch]  # (N,)
        n_max = int(counts.max()) if b else 0
        dense = xn.new_zeros(b, n_max, c)
        dense[batch, local] = xn  # (B, n_max, C), zero-padded
        return dense.permute(0, 2, 1).reshape(b * c, n_max), (False, batch, local)

    def _attend(self, xt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        bc = xt.size(0)
        cb = torch.arange(bc // self.in_channels, device=xt.device)
        ei = full_graph(cb.repeat_interleave(self.in_channels))  # (2, B C^2)
        edges = Edges(ei[0], ei[1], bc, bc)
        logits = self.similarity(xt, xt, edges)  # (E, 1)
        w = self.normalize(logits, edges)  # (E, 1)
        y = scatter(xt.index_select(0, edges.src) * w, edges.dst, bc)  # (B C, n)
        return y, ei, w

    def forward(self, x: Tensor, *, batch: Tensor | None = None) -> Tensor:
        r"""Attention over the channels of each sample, scaled by :math:`\beta`, plus ``x``."""
        xt, (image, batch, local) = self._channels(x, batch)
        if xt.size(0) == 0:  # no nodes: the core cannot view (0, -1)
            return x.clone()
        y, _, _ = self._attend(xt)  # (B C, n)
        if image:
            return self.beta * y.view_as(x) + x
        c = self.in_channels
        y = y.view(-1, c, xt.size(1)).permute(0, 2, 1)[batch, local]  # (N, C)
        return self.beta * y + x

    def attention_weights(self, x: Tensor, *, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (B C^2, 1))`` on channel nodes: edge ``b C + c' -> b C + c``
        carries the weight of channel :math:`c'` for channel ``c`` of sample ``b``."""
        xt, _ = self._channels(x, batch)
        _, ei, w = self._attend(xt)
        return ei, w

    def extra_repr(self) -> str:
        return f"{self.in_channels}, variant={self.variant!r}"


class DualAttention(nn.Module):
    r"""The two attention modules of `"Dual Attention Network for Scene Segmentation"
    <https://arxiv.org/abs/1809.02983>`_, summed:

    .. math::
        z = \mathrm{PAM}(x) + \mathrm{CAM}(x)
          = \gamma\, y^{pos} + \beta\, y^{ch} + 2x

    with :math:`y^{pos}` the position attention (:class:`PositionAttention`: full graph over
    the nodes of a sample, ``f`` = :math:`e^{q_i^\top k_j}`, ``C`` = softmax, ``g`` =
    :math:`W_v`) and :math:`y^{ch}` the channel attention (:class:`ChannelAttention`: full
    graph over the channels, ``g`` = identity). Each branch keeps its own residual, so the
    sum carries ``x`` twice, as the DANet head's ``feat_sum`` does; the 3x3 convs the head
    puts before and after each module are not part of this operator.

    Args:
        in_channels: feature width ``C``.
        pam_channels: query / key width of the position branch (default: ``C // 8``).
        cam_variant: ``"code"`` (default, softmax of :math:`-E`) or ``"paper"``
            (softmax of :math:`E`); see :class:`ChannelAttention`.

    Shapes:
        - **x:** ``(N, C)`` with ``batch (N,)`` sorted (optional: one sample), or an image
          ``(B, C, H, W)``
        - **output:** same shape as ``x``
    """

    def __init__(
        self, in_channels: int, *, pam_channels: int | None = None, cam_variant: str = "code"
    ) -> None:
        super().__init__()
        self.pam = PositionAttention(in_channels, key_channels=pam_channels)
        self.cam = ChannelAttention(in_channels, variant=cam_variant)

    def reset_parameters(self) -> None:
        r"""Both branches: default projections, :math:`\gamma = \beta = 0`."""
        self.pam.reset_parameters()
        self.cam.reset_parameters()

    def forward(self, x: Tensor, *, batch: Tensor | None = None) -> Tensor:
        r"""``PAM(x) + CAM(x)`` over each sample."""
        return self.pam(x, batch=batch) + self.cam(x, batch=batch)

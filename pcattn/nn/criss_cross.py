r"""CCNet's criss-cross attention: every pixel attends to its row and its column."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graphs import criss_cross_graph
from .attention import NodeAttention
from .image import ImageNodes, check_image, check_nodes, is_image, to_image
from .similarity import DotProduct
from .value import LinearValue

__all__ = ["CrissCrossAttention"]


class CrissCrossAttention(nn.Module):
    r"""Criss-cross attention from `"CCNet: Criss-Cross Attention for Semantic Segmentation"
    <https://arxiv.org/abs/1811.11721>`_, applied ``recurrence`` times with shared weights:

    .. math::
        y_i = \frac{1}{C_i} \sum_{j \in \mathcal N(i)} \exp\big(q(x_i)^\top k(x_j)\big)\, v(x_j),
        \qquad C_i = \sum_{j \in \mathcal N(i)} \exp\big(q(x_i)^\top k(x_j)\big),
        \qquad x_i \leftarrow \gamma\, y_i + x_i

    :math:`\mathcal N(i)` is pixel ``i``'s row and column (``H + W - 1`` distinct pixels, ``i``
    itself once, :func:`pcattn.graphs.criss_cross_graph`), ``f`` the unscaled exponentiated
    dot product of :math:`q, k` (1x1 convolutions with bias, ``C -> C / reduction``), ``C_i``
    the softmax denominator (one softmax over row and column together) and ``g = v`` a 1x1
    convolution ``C -> C`` with bias. :math:`\gamma` is a learned scalar initialised to ``0``
    (mmcv's ``Scale(0)``), so the block starts as the identity. With ``recurrence=2`` (CCNet's
    head) information reaches every pixel from every pixel. The code follows mmcv's
    ``CrissCrossAttention``, whose column logits are masked on the diagonal so the centre is
    counted once; here the graph simply holds the centre once.

    In node mode any ``edge_index`` may be given (e.g. a kNN graph), and the same layer runs on
    points or graph nodes.

    Args:
        in_channels: input and output width ``C``.
        reduction: query/key width is ``C // reduction`` (default: ``8``).
        recurrence: number of passes ``R`` with shared weights (default: ``2``, CCNet's
            ``CCHead``; mmcv's module alone is ``R = 1``).

    Shapes:
        - **x:** image ``(B, C, H, W)``, or nodes ``(N, C)`` with ``edge_index (2, E)``
        - **output:** ``(B, C, H, W)`` or ``(N, C)``
    """

    def __init__(self, in_channels: int, *, reduction: int = 8, recurrence: int = 2) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("reduction", reduction)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if in_channels < reduction:
            raise ValueError(
                f"in_channels ({in_channels}) must be >= reduction ({reduction}) so that the "
                "query/key width in_channels // reduction is at least 1"
            )
        if isinstance(recurrence, bool) or not isinstance(recurrence, int) or recurrence < 1:
            raise ValueError(f"recurrence must be an int >= 1, got {recurrence!r}")
        self.in_channels, self.reduction, self.recurrence = in_channels, reduction, recurrence
        qk = in_channels // reduction
        self.attention = NodeAttention(
            in_channels,
            in_channels,
            similarity=DotProduct(in_channels, qk, bias=True),
            normalize="softmax",
            value=LinearValue(in_channels, in_channels, bias=True),
            bias=False,
        )
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""PyTorch's default init for the 1x1 convolutions (as mmcv leaves them), and
        :math:`\gamma = 0`."""
        self.attention.similarity.query.reset_parameters()
        self.attention.similarity.key.reset_parameters()
        self.attention.value.lin.reset_parameters()
        nn.init.zeros_(self.gamma)

    def forward(self, x: Tensor, edge_index: Tensor | None = None) -> Tensor:
        r"""Run the ``R`` passes.

        Args:
            x: an image ``(B, C, H, W)`` (the criss-cross graph is built here), or node features
                ``(N, C)`` with ``edge_index``.
            edge_index: ``(2, E)`` in node mode (row 0 the source ``j``, row 1 the target ``i``).
        """
        if is_image(x):
            nodes = self._image(x, edge_index)
            ei = criss_cross_graph(
                nodes.height, nodes.width, batch_size=nodes.batch_size, device=x.device
            )
            return to_image(self._passes(nodes.x, ei), nodes)
        self._check_nodes(x, edge_index)
        return self._passes(x, edge_index)

    def attention_weights(
        self, x: Tensor, edge_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""The softmax weights of every pass.

        Returns:
            ``(edge_index, weights)``: the edges used (for an image, the criss-cross graph on
            its ``B * H * W`` row-major nodes) and ``weights (E, R)``, column ``r`` the weights
            of pass ``r``.
        """
        if is_image(x):
            nodes = self._image(x, edge_index)
            edge_index = criss_cross_graph(
                nodes.height, nodes.width, batch_size=nodes.batch_size, device=x.device
            )
            x = nodes.x
        else:
            self._check_nodes(x, edge_index)
        weights = []
        self._passes(x, edge_index, weights)
        return edge_index, torch.cat(weights, 1)  # (E, R)

    def _passes(self, x: Tensor, edge_index: Tensor, weights: list | None = None) -> Tensor:
        for _ in range(self.recurrence):
            if weights is not None:  # inspection only: one extra pass for the weights
                weights.append(self.attention.attention_weights(x, edge_index)[1])  # (E, 1)
            x = self.gamma * self.attention(x, edge_index) + x  # (N, C)
        return x

    def _image(self, x: Tensor, edge_index: Tensor | None) -> ImageNodes:
        return check_image(x, self.in_channels, self, edge_index=edge_index)

    def _check_nodes(self, x: Tensor, edge_index: Tensor | None) -> None:
        check_nodes(x, self.in_channels, self)
        if edge_index is None:
            raise ValueError(
                f"{type(self).__name__}: edge_index is required for node features (N, C)"
            )

    def extra_repr(self) -> str:
        return f"{self.in_channels}, reduction={self.reduction}, recurrence={self.recurrence}"

r"""PCT's offset-attention (Guo et al., "PCT: Point Cloud Transformer", 2021)."""

from __future__ import annotations

from torch import Tensor, nn

from ..checks import check_batch, check_features, shape_of
from ..graphs import full_graph
from .attention import NodeAttention
from .normalize import DoubleNormalize
from .similarity import DotProduct
from .value import LinearValue

__all__ = ["OffsetAttention"]


class OffsetAttention(nn.Module):
    r"""Offset-attention of `"PCT: Point Cloud Transformer"
    <https://arxiv.org/abs/2012.09688>`_:

    .. math::
        F_{sa,i} = \frac{1}{C_i} \sum_{j \in \mathcal N(i)} \frac{e^{e_{ij}}}{Z_j}\, v_j,
        \quad e_{ij} = (W_q x_i)^\top (W_q x_j),\quad
        Z_j = \sum_{k : j \in \mathcal N(k)} e^{e_{jk}},\quad
        C_i = \epsilon + \sum_{j \in \mathcal N(i)} \frac{e^{e_{ij}}}{Z_j}

    .. math::
        F_{out} = F_{in} + \mathrm{ReLU}(\mathrm{BN}(W_t(F_{in} - F_{sa})))

    :math:`\mathcal N(i)` is all points of ``i``'s cloud (or the given ``edge_index``), ``f`` is
    :math:`e^{e_{ij}}` divided by :math:`Z_j`, a softmax over the **targets** of source ``j``,
    ``C`` is the L1 sum of those over the sources of ``i`` plus :math:`\epsilon = 10^{-9}`
    (``C = double``, :class:`~pcattn.nn.normalize.DoubleNormalize`), and ``g`` is
    :math:`v_j = W_v x_j + b_v`; the offset step is the post-op.

    Axes, checked against the reference ``SA_Layer`` (Jittor, MenghaoGuo/PCT): it takes
    ``softmax(energy, dim=-1)`` with ``energy[n, m] = q_n^T k_m``, divides by ``1e-9 +`` the sum
    over ``dim=1`` (over ``n``) and returns ``x_r[:, m] = sum_n v_n A[n, m]``. So ``m`` is the
    output (target ``i``) and ``n`` the summed index (source ``j``): the softmax runs over the
    targets ``m`` of each source ``n`` and the L1 over the sources of each target, which is
    :class:`DoubleNormalize` on edges ``n -> m`` as given. :math:`W_q = W_k` are tied (no bias),
    so :math:`e` is symmetric and the logit of edge ``j -> i`` is the same either way. Logits
    are not scaled. On an edge set that is not symmetric, :math:`Z_j` sums over the edges
    leaving ``j``.

    Args:
        channels: feature width :math:`d_e` (input = output).
        reduction: :math:`d_a = d_e / \text{reduction}` is the query/key width (default: ``4``).

    Shapes:
        - **x:** ``(N, d_e)``; **batch:** ``(N,)`` sorted, optional (one cloud if absent);
          **edge_index:** ``(2, E)``, optional (default: all pairs within each cloud,
          self pairs included)
        - **output:** ``(N, d_e)``
    """

    def __init__(self, channels: int, *, reduction: int = 4) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction must be a positive int, got {reduction!r}")
        if channels // reduction < 1:
            raise ValueError(f"channels ({channels}) // reduction ({reduction}) must be >= 1")
        self.channels, self.reduction = channels, reduction
        self.attn = NodeAttention(
            channels,
            channels,
            similarity=DotProduct(channels, channels // reduction, tied=True, bias=False),
            normalize=DoubleNormalize(eps=1e-9),
            value=LinearValue(channels, channels, bias=True),
            bias=False,
        )
        self.trans = nn.Linear(channels, channels)  # W_t
        self.norm = nn.BatchNorm1d(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""PyTorch's default initialisation of every projection and of the BN."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.BatchNorm1d)):
                m.reset_parameters()

    def _graph(self, x: Tensor, edge_index: Tensor | None, batch: Tensor | None) -> Tensor:
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() != 2:
            got = shape_of(x)
            raise ValueError(f"{name}: x must be (N, C), got {got}")
        if x.size(1) != self.channels:
            raise ValueError(f"{name}: x has {x.size(1)} channels, channels is {self.channels}")
        check_features(x, self, name)
        if edge_index is not None:
            if batch is not None:
                raise ValueError(f"{name}: give edge_index or batch, not both")
            return edge_index
        if batch is None:
            return full_graph(x.size(0)).to(x.device)
        return full_graph(check_batch(batch, x.size(0), "batch", "x", x.device))

    def forward(
        self, x: Tensor, edge_index: Tensor | None = None, *, batch: Tensor | None = None
    ) -> Tensor:
        r"""Offset-attention over each cloud (``batch``) or over ``edge_index``."""
        ei = self._graph(x, edge_index, batch)
        if x.size(0) == 0:  # no nodes: the core cannot view (0, -1)
            return x.clone()
        f_sa = self.attn(x, ei)  # (N, d_e)
        return x + self.norm(self.trans(x - f_sa)).relu()  # (N, d_e)

    def attention_weights(
        self, x: Tensor, edge_index: Tensor | None = None, *, batch: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (E, 1))``: the doubly normalised weight of every edge."""
        return self.attn.attention_weights(x, self._graph(x, edge_index, batch))

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}"

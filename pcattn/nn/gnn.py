r"""Graph neural network layers written as :class:`~pcattn.nn.NodeAttention`: GCN, GAT, GATv2.

Each layer adds its self loops, then runs the shared message-passing layer with the plug-ins
that make it that operator. Parameter layouts follow PyG's ``GCNConv``, ``GATConv`` and
``GATv2Conv``, so trained weights copy across.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..checks import check_edge_index_shape, check_features, shape_of
from ..graphs import replace_self_loops
from .attention import NodeAttention
from .normalize import NoNormalize, SymmetricDegree
from .similarity import EdgeWeight, GATScore, GATv2Score
from .value import LinearValue

__all__ = ["GCNLayer", "GATLayer"]


def _glorot(t: Tensor) -> None:
    """Glorot uniform over the last two dims, as in the GCN and GAT papers (and PyG)."""
    bound = math.sqrt(6.0 / (t.size(-2) + t.size(-1)))
    nn.init.uniform_(t, -bound, bound)


def _check_graph(layer: nn.Module, x: object, edge_index: object, in_channels: int) -> int:
    """Validate ``x (N, C_in)`` and ``edge_index (2, E)`` with ids in ``[0, N)``; return ``N``."""
    name = type(layer).__name__
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{name}: x must be a tensor (N, C), got {shape_of(x)}")
    if x.size(1) != in_channels:
        raise ValueError(f"{name}: x has {x.size(1)} channels, in_channels is {in_channels}")
    check_features(x, layer, name)
    check_edge_index_shape(edge_index, name, x.device)
    n = x.size(0)
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"{name}: edge_index has node ids in [{lo}, {hi}] but x has {n} nodes")
    return n


class GCNLayer(nn.Module):
    r"""Graph convolution of `Kipf and Welling, "Semi-Supervised Classification with Graph
    Convolutional Networks" (ICLR 2017) <https://arxiv.org/abs/1609.02907>`_:
    :math:`Y = \tilde D^{-1/2} \tilde A \tilde D^{-1/2} X W + b`, node by node

    .. math::
        y_i = \sum_{j \in \mathcal N(i) \cup \{i\}}
        \frac{w_{ji}}{\sqrt{\tilde d_i \tilde d_j}}\, W x_j + b,
        \qquad \tilde d_i = \sum_{j \in \mathcal N(i) \cup \{i\}} w_{ji},

    which is the unified form
    :math:`y_i = \frac{1}{C_i} \sum_{j \in \mathcal N(i)} f(x_i, x_j, p_j - p_i)\, g(x_j)`
    with :math:`\mathcal N(i)` the in-neighbours of ``i`` plus ``i`` itself, ``f`` the edge
    weight over the square root of the two degrees (the structure only: no features, no
    positions), :math:`C_i = 1` (the symmetric normaliser cannot be written per node, so it
    lives in ``f``) and ``g`` the shared linear map :math:`W x_j`.

    Self loops follow PyG's ``add_remaining_self_loops``: a node that already has a self loop
    keeps it and its weight, every other node gets one of weight 1 (2 with ``improved``). The
    degree :math:`\tilde d` is summed at the target (in-degree) and used for both ends of an
    edge; a node of degree 0 gets weight 0, not :math:`\infty`.

    Two departures from PyG's ``GCNConv`` (2.8): with ``improved=True`` and no ``edge_weight``
    the new loops weigh 2 here, the paper's :math:`A + 2I`, whereas PyG then adds them with
    weight 1 (its fill value only reaches the loops when weights are given; pass
    ``edge_weight=ones`` to PyG to compare); and ``add_self_loops=True`` with
    ``normalize=False``, which PyG refuses, adds the loops and sums :math:`w_{ji} W x_j`
    unnormalised.

    Args:
        in_channels: input width ``C_in``.
        out_channels: output width ``C_out``.
        improved: self loops of weight 2, :math:`\tilde A = A + 2I` (default: ``False``).
        add_self_loops: add the self loops (default: ``True``).
        normalize: the symmetric normalisation; ``False`` gives :math:`C_i = 1`,
            :math:`f = w_{ji}` (default: ``True``).
        bias: learn :math:`b` (default: ``True``).

    Shapes:
        - **x:** ``(N, C_in)``
        - **edge_index:** ``(2, E)``, row 0 the source ``j``, row 1 the target ``i``
        - **edge_weight:** ``(E,)``, optional (default: all 1)
        - **output:** ``(N, C_out)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        improved: bool = False,
        add_self_loops: bool = True,
        normalize: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.improved, self.add_self_loops, self.normalize = improved, add_self_loops, normalize
        self.attn = NodeAttention(
            in_channels,
            out_channels,
            similarity=EdgeWeight(),
            normalize=SymmetricDegree() if normalize else NoNormalize(),
            value=LinearValue(in_channels, out_channels, bias=False),
            bias=bias,
        )
        self.reset_parameters()

    @property
    def lin(self) -> nn.Linear:
        """The weight :math:`W` (``lin.weight`` is ``(C_out, C_in)``, as PyG's ``lin``)."""
        return self.attn.value.lin

    @property
    def bias(self) -> nn.Parameter | None:
        return self.attn.bias

    def reset_parameters(self) -> None:
        _glorot(self.lin.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _graph(
        self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        n = _check_graph(self, x, edge_index, self.in_channels)
        if edge_weight is not None:
            if not isinstance(edge_weight, Tensor) or edge_weight.shape != (edge_index.size(1),):
                raise ValueError(
                    f"{type(self).__name__}: edge_weight must be ({edge_index.size(1)},), "
                    f"got {shape_of(edge_weight)}"
                )
        if not self.add_self_loops:
            return edge_index, edge_weight
        fill = 2.0 if self.improved else 1.0
        if edge_weight is None and fill != 1.0:
            edge_weight = x.new_ones(edge_index.size(1))  # (E,)
        return replace_self_loops(
            edge_index, edge_weight, num_nodes=n, fill_value=fill, keep_weights=True
        )

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        r"""Returns ``(N, C_out)``."""
        edge_index, edge_weight = self._graph(x, edge_index, edge_weight)
        return self.attn(x, edge_index, edge_weight=edge_weight)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, improved={self.improved}, "
            f"add_self_loops={self.add_self_loops}, normalize={self.normalize}"
        )


class GATLayer(nn.Module):
    r"""Graph attention of `Veličković et al., "Graph Attention Networks" (ICLR 2018)
    <https://arxiv.org/abs/1710.10903>`_ and, with ``v2=True``, of `Brody et al., "How
    Attentive are Graph Attention Networks?" (ICLR 2022) <https://arxiv.org/abs/2105.14491>`_:

    .. math::
        y_i = \big\Vert_{h=1}^{H} \sum_{j \in \mathcal N(i) \cup \{i\}}
        \frac{e^{s^h_{ij}}}{\sum_{k \in \mathcal N(i) \cup \{i\}} e^{s^h_{ik}}}\, W^h x_j + b,

    .. math::
        s^h_{ij} = \mathrm{LReLU}\big(a^{h\top}_{dst} W^h x_i + a^{h\top}_{src} W^h x_j\big)
        \;\text{(GAT)}, \qquad
        s^h_{ij} = a^{h\top} \mathrm{LReLU}\big(W^h_r x_i + W^h_l x_j\big) \;\text{(GATv2)},

    which is the unified form
    :math:`y_i = \frac{1}{C_i} \sum_{j \in \mathcal N(i)} f(x_i, x_j, p_j - p_i)\, g(x_j)`
    per head with :math:`\mathcal N(i)` the in-neighbours of ``i`` plus ``i`` itself,
    :math:`f = e^{s^h_{ij}}`, :math:`C_i` the softmax denominator over :math:`\mathcal N(i)`
    and ``g`` the head's linear map (:math:`W^h x_j`, :math:`W^h_l x_j` for GATv2). The heads
    are concatenated (hidden layers) or averaged (``concat=False``, the output layer), then
    the bias is added.

    As in the papers and PyG, existing self loops are dropped and one is added per node;
    dropout acts on the attention weights after the softmax (so rows do not sum to 1 while
    training). Unlike PyG's ``GATConv``, ``out_channels`` is the **output** width, as
    everywhere in pcattn: ``H * D`` with ``concat=True`` (``D = out_channels / heads`` per
    head), ``D`` with ``concat=False``. PyG's ``GATConv(C_in, D, heads=H)`` is
    ``GATLayer(C_in, H * D, heads=H)``; the parameters have PyG's layout
    (``lin`` / ``lin_l``: ``(H D, C_in)``, ``att_*``: ``(1, H, D)``).

    Args:
        in_channels: input width ``C_in``.
        out_channels: output width (see above).
        heads: number of heads ``H`` (default: ``1``).
        concat: concatenate the heads, else average them (default: ``True``).
        v2: GATv2's dynamic attention instead of GAT's static one (default: ``False``).
        negative_slope: slope of the leaky ReLU (default: ``0.2``).
        dropout: dropout probability on the attention weights (default: ``0``).
        add_self_loops: replace the self loops by one per node (default: ``True``).
        bias: learn the output bias; for GATv2 also the biases of :math:`W_l, W_r`, as PyG
            (default: ``True``).
        share_weights: GATv2 with :math:`W_r = W_l` (default: ``False``).

    Shapes:
        - **x:** ``(N, C_in)``
        - **edge_index:** ``(2, E)``, row 0 the source ``j``, row 1 the target ``i``
        - **output:** ``(N, out_channels)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        heads: int = 1,
        concat: bool = True,
        v2: bool = False,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        bias: bool = True,
        share_weights: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"heads must be an int >= 1, got {heads!r}")
        if concat and out_channels % heads != 0:
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by heads ({heads}) with "
                "concat=True (out_channels is the output width, heads * channels per head)"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if share_weights and not v2:
            raise ValueError("share_weights=True needs v2=True (GAT has one weight already)")
        width = out_channels if concat else heads * out_channels  # H * D
        d = width // heads
        self.in_channels, self.out_channels = in_channels, out_channels
        self.heads, self.concat, self.v2 = heads, concat, v2
        self.add_self_loops, self.share_weights = add_self_loops, share_weights
        if v2:
            value = LinearValue(in_channels, width, heads=heads, bias=bias)
            similarity = GATv2Score(
                in_channels,
                d,
                heads=heads,
                negative_slope=negative_slope,
                bias=bias,
                share_weights=share_weights,
            )
        else:
            value = LinearValue(in_channels, width, heads=heads, bias=False)
            similarity = GATScore(d, heads=heads, negative_slope=negative_slope)
        self.attn = NodeAttention(
            in_channels,
            out_channels,
            similarity=similarity,
            normalize="softmax",
            value=value,
            heads=heads,
            concat=concat,
            bias=bias,
            dropout=dropout,
        )
        self.reset_parameters()

    @property
    def lin(self) -> nn.Linear:
        """:math:`W` (GAT) or :math:`W_l` (GATv2), weight ``(H D, C_in)``."""
        return self.attn.value.lin

    @property
    def bias(self) -> nn.Parameter | None:
        return self.attn.bias

    def reset_parameters(self) -> None:
        sim = self.attn.similarity
        _glorot(self.lin.weight)
        linears = [self.lin]
        if self.v2:
            _glorot(sim.att)
            if sim.lin_r is not None:
                _glorot(sim.lin_r.weight)
                linears.append(sim.lin_r)
        else:
            _glorot(sim.att_src)
            _glorot(sim.att_dst)
        for lin in linears:  # PyG's default bias init of its Linear
            if lin.bias is not None:
                bound = 1.0 / math.sqrt(lin.in_features) if lin.in_features > 0 else 0.0
                nn.init.uniform_(lin.bias, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _graph(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n = _check_graph(self, x, edge_index, self.in_channels)
        if not self.add_self_loops:
            return edge_index
        return replace_self_loops(edge_index, num_nodes=n)[0]

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        r"""Returns ``(N, out_channels)``."""
        return self.attn(x, self._graph(x, edge_index))

    def attention_weights(self, x: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        r"""The softmax weights :math:`\alpha^h_{ij}` (before dropout) of one call.

        Returns:
            ``(edge_index, alpha)``: the edges actually used (self loops replaced) ``(2, E')``
            and ``alpha (E', H)``.
        """
        return self.attn.attention_weights(x, self._graph(x, edge_index))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, heads={self.heads}, "
            f"concat={self.concat}, v2={self.v2}"
        )

r"""Point Transformer vector self-attention as :class:`~pcattn.nn.NodeAttention`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_features, check_positive_int, shape_of
from ..graphs import replace_self_loops, sort_by_target
from ..ops import index_to_ptr
from .attention import NodeAttention
from .similarity import VectorRelation
from .value import AdditivePositionalValue

__all__ = ["PointTransformerLayer"]

_ORDERS = ("key_minus_query", "query_minus_key")


class _Checked(nn.Module):
    """Runs ``net`` and checks it gives ``width`` channels (a user module can get it wrong)."""

    def __init__(self, net: nn.Module, width: int, what: str, sign: float = 1.0) -> None:
        super().__init__()
        self.net, self.width, self.what, self.sign = net, width, what, sign

    def forward(self, t: Tensor) -> Tensor:
        out = self.net(t if self.sign > 0 else -t)  # (E, width)
        if out.dim() != 2 or out.size(-1) != self.width:
            raise ValueError(
                f"{self.what} must map (E, {t.size(-1)}) to (E, {self.width}), "
                f"got {tuple(out.shape)}"
            )
        return out

    def extra_repr(self) -> str:
        return f"width={self.width}" + (", input negated" if self.sign < 0 else "")


class PointTransformerLayer(nn.Module):
    r"""The vector self-attention layer of `Zhao et al., "Point Transformer" (ICCV 2021)
    <https://arxiv.org/abs/2012.09164>`_:

    .. math::
        y_i = \sum_{j \in \mathcal N(i)}
        \mathrm{softmax}_j\big(\gamma(\psi(x_j) - \varphi(x_i) + \delta_{ij})\big)
        \odot \big(\alpha(x_j) + \delta_{ij}\big),
        \qquad \delta_{ij} = \theta(p_j - p_i),

    which is the unified form
    :math:`y_i = \frac{1}{C_i} \sum_{j \in \mathcal N(i)} f(x_i, x_j, p_j - p_i) \odot g(x_j)`
    with :math:`\mathcal N(i)` the given neighbourhood (the paper's kNN, ``k = 16``, which
    holds the point itself: build it with ``knn_graph(pos, 16, loop=True)``), ``f`` the
    exponential of the vector logit :math:`\gamma(\cdot) \in \mathbb R^{C/s}` (one score per
    group of channels), :math:`C_i` its softmax denominator over :math:`\mathcal N(i)`, taken
    separately for each of the :math:`C/s` score channels, and ``g`` the additive-positional
    value :math:`\alpha(x_j) + \delta_{ij}`. Output channel ``c`` takes score channel
    :math:`c \bmod C/s` (interleaved sharing, as the official code's
    ``view(n, k, s, C / s)``). One :math:`\delta_{ij}` is computed per call and shared by the
    logit and the value.

    Defaults follow the official code (POSTECH-CVLab/point-transformer): :math:`\varphi, \psi,
    \alpha` are ``Linear(C_in, C)`` with bias; :math:`\theta` is
    ``Linear(3, 3)-BN-ReLU-Linear(3, C)``; :math:`\gamma` is
    ``BN-ReLU-Linear(C, C/s)-BN-ReLU-Linear(C/s, C/s)`` with ``s = share_planes = 8``; the
    BatchNorms normalise over all edges; PyTorch's default init.

    Sign conventions. The paper writes :math:`\varphi(x_i) - \psi(x_j)` and
    :math:`\theta(p_i - p_j)`; the official code computes key minus query and
    :math:`p_j - p_i` (neighbour minus centre), which is the default here
    (``order="key_minus_query"``, ``pos_order="key_minus_query"``). PyG's
    ``PointTransformerConv`` uses query minus key and :math:`p_i - p_j`
    (``"query_minus_key"`` for both). The conventions are the same operator up to negating
    learned weights; they matter when weights are copied across. ``PointTransformerConv(C_in,
    C)`` (no bias in its three linear maps, ``pos_nn = Linear(3, C)``, no ``attn_nn``, self loops
    replaced) is

    .. code-block:: python

        PointTransformerLayer(C_in, C, share_planes=1, pos_nn=nn.Linear(3, C),
                              attn_nn=nn.Identity(), order="query_minus_key",
                              pos_order="query_minus_key", add_self_loops=True, bias=False)

    with PyG's ``lin_dst``, ``lin_src``, ``lin``, ``pos_nn`` (and ``attn_nn``) as
    :attr:`phi`, :attr:`psi`, :attr:`alpha`, :attr:`theta` (and :attr:`gamma`).

    Args:
        in_channels: input width ``C_in``.
        out_channels: output width ``C``, a multiple of ``share_planes``.
        share_planes: ``s``, the number of output channels sharing one score channel
            (default: ``8``); the logit has ``C / s`` channels.
        pos_nn: :math:`\theta`, mapping ``(E, pos_dim)`` relative positions to ``(E, C)``
            (default: the official ``Linear-BN-ReLU-Linear`` above).
        attn_nn: :math:`\gamma`, mapping ``(E, C)`` to ``(E, C / s)`` (default: the official
            ``BN-ReLU-Linear-BN-ReLU-Linear`` above); ``nn.Identity()`` with
            ``share_planes=1`` for none (PyG's default).
        order: ``"key_minus_query"`` (:math:`\psi(x_j) - \varphi(x_i)`, official code;
            default) or ``"query_minus_key"`` (:math:`\varphi(x_i) - \psi(x_j)`, paper, PyG).
        pos_order: ``"key_minus_query"`` (:math:`\theta(p_j - p_i)`, official code; default)
            or ``"query_minus_key"`` (:math:`\theta(p_i - p_j)`, paper, PyG).
        add_self_loops: replace the graph's self loops by one per node (PyG's default);
            ``False`` uses ``edge_index`` as given (default: ``False``).
        bias: biases of :math:`\varphi, \psi, \alpha` (default: ``True``; PyG has none).
        pos_dim: dimension of the positions, the input width of the default :math:`\theta`
            (default: ``3``).
        chunk_edges: in inference (eval mode, no gradient), graphs with more edges run in
            blocks of whole targets with at most this many edges each, which bounds the memory
            (default: ``2**20``).

    Shapes:
        - **x:** ``(N, C_in)``
        - **edge_index:** ``(2, E)``, row 0 the source (neighbour) ``j``, row 1 the target ``i``
        - **pos:** ``(N, pos_dim)``
        - **output:** ``(N, C)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        share_planes: int = 8,
        pos_nn: nn.Module | None = None,
        attn_nn: nn.Module | None = None,
        order: str = "key_minus_query",
        pos_order: str = "key_minus_query",
        add_self_loops: bool = False,
        bias: bool = True,
        pos_dim: int = 3,
        chunk_edges: int = 1 << 20,
    ) -> None:
        super().__init__()
        self.chunk_edges = check_positive_int(chunk_edges, "chunk_edges")
        if isinstance(share_planes, bool) or not isinstance(share_planes, int) or share_planes < 1:
            raise ValueError(f"share_planes must be an int >= 1, got {share_planes!r}")
        if out_channels % share_planes != 0:
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by share_planes ({share_planes})"
            )
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
        if pos_order not in _ORDERS:
            raise ValueError(f"pos_order must be one of {_ORDERS}, got {pos_order!r}")
        c, cs = out_channels, out_channels // share_planes
        self.in_channels, self.out_channels, self.share_planes = in_channels, c, share_planes
        self.order, self.pos_order, self.add_self_loops = order, pos_order, add_self_loops
        self.pos_dim = pos_dim
        if pos_nn is None:
            pos_nn = nn.Sequential(
                nn.Linear(pos_dim, pos_dim),
                nn.BatchNorm1d(pos_dim),
                nn.ReLU(),
                nn.Linear(pos_dim, c),
            )
        if attn_nn is None:
            attn_nn = nn.Sequential(
                nn.BatchNorm1d(c),
                nn.ReLU(),
                nn.Linear(c, cs),
                nn.BatchNorm1d(cs),
                nn.ReLU(),
                nn.Linear(cs, cs),
            )
        if isinstance(attn_nn, nn.Identity) and cs != c:
            raise ValueError(
                f"attn_nn=nn.Identity() keeps {c} channels, which needs share_planes=1 "
                f"(got {share_planes})"
            )
        sign = 1.0 if pos_order == "key_minus_query" else -1.0  # the layer's rel is p_j - p_i
        similarity = VectorRelation(
            in_channels,
            c,
            cs,
            relation="subtraction",
            order=order,
            pos="add",
            mapping=attn_nn
            if isinstance(attn_nn, nn.Identity)
            else _Checked(attn_nn, cs, "attn_nn"),
            bias=bias,
            share="interleaved",
        )
        self.attn = NodeAttention(
            in_channels,
            c,
            similarity=similarity,
            normalize="softmax",
            value=AdditivePositionalValue(in_channels, c, bias=bias),
            pos_encoding=_Checked(pos_nn, c, "pos_nn", sign),
            bias=False,
        )
        self.reset_parameters()

    # the paper's names for the parts
    @property
    def phi(self) -> nn.Linear:
        r""":math:`\varphi`, applied to the query (centre) ``x_i``."""
        return self.attn.similarity.query

    @property
    def psi(self) -> nn.Linear:
        r""":math:`\psi`, applied to the key (neighbour) ``x_j``."""
        return self.attn.similarity.key

    @property
    def alpha(self) -> nn.Linear:
        r""":math:`\alpha`, the value map."""
        return self.attn.value.lin

    @property
    def theta(self) -> nn.Module:
        r""":math:`\theta`, the positional encoding."""
        return self.attn.pos_encoding.net

    @property
    def gamma(self) -> nn.Module:
        r""":math:`\gamma`, the attention MLP."""
        mapping = self.attn.similarity.mapping
        return mapping.net if isinstance(mapping, _Checked) else mapping

    def reset_parameters(self) -> None:
        for lin in (self.phi, self.psi, self.alpha):
            lin.reset_parameters()
        for net in (self.theta, self.gamma):  # PyTorch's default init, BN running stats too
            for m in net.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()

    def _graph(self, x: Tensor, edge_index: Tensor, pos: Tensor) -> Tensor:
        name = type(self).__name__
        if not isinstance(pos, Tensor) or pos.dim() != 2:
            got = shape_of(pos)
            raise ValueError(f"{name}: pos must be a tensor (N, D), got {got}")
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(0) != pos.size(0):
            got = shape_of(x)
            raise ValueError(f"{name}: x must be ({pos.size(0)}, C) like pos, got {got}")
        if x.size(1) != self.in_channels:
            raise ValueError(
                f"{name}: x has {x.size(1)} channels, in_channels is {self.in_channels}"
            )
        check_features(x, self, name)
        if not self.add_self_loops:
            return edge_index
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
            got = (
                tuple(edge_index.shape)
                if isinstance(edge_index, Tensor)
                else type(edge_index).__name__
            )
            raise ValueError(f"{name}: edge_index must be an int64 tensor (2, E), got {got}")
        n = x.size(0)
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
            raise ValueError(
                f"{name}: edge_index has node ids in [{int(edge_index.min())}, "
                f"{int(edge_index.max())}] but x has {n} nodes"
            )
        return replace_self_loops(edge_index, num_nodes=n)[0]

    def forward(self, x: Tensor, edge_index: Tensor, pos: Tensor) -> Tensor:
        r"""Returns ``(N, C)``. In inference (eval mode, no gradient) a graph with more than
        :attr:`chunk_edges` edges is processed in blocks of whole targets, so memory is bounded
        by the block, not the cloud (the result is the same: every target's softmax sees all of
        its edges, and the BatchNorms use their running statistics)."""
        edge_index = self._graph(x, edge_index, pos)
        if self.training or torch.is_grad_enabled() or edge_index.size(1) <= self.chunk_edges:
            return self.attn(x, edge_index, pos)
        return self._blocks(x, edge_index, pos)

    def _blocks(self, x: Tensor, edge_index: Tensor, pos: Tensor) -> Tensor:
        if not bool((edge_index[1, 1:] >= edge_index[1, :-1]).all()):
            (edge_index,) = sort_by_target(edge_index)
        src, dst = edge_index
        n = x.size(0)
        ptr = index_to_ptr(dst, n)  # (N + 1,)
        out = x.new_empty(n, self.out_channels)
        start = 0
        while start < n:
            # the targets whose edges fit in one block (at least one target)
            end = int(torch.searchsorted(ptr, ptr[start] + self.chunk_edges, right=True)) - 1
            end = min(max(end, start + 1), n)
            lo, hi = int(ptr[start]), int(ptr[end])
            sources, local = torch.unique(src[lo:hi], return_inverse=True)  # (S,), (E_b,)
            block = torch.stack([local, dst[lo:hi] - start])  # (2, E_b)
            x_pair = (x.index_select(0, sources), x[start:end])
            pos_pair = (pos.index_select(0, sources), pos[start:end])
            out[start:end] = self.attn(x_pair, block, pos_pair)  # (end - start, C)
            start = end
        return out

    def attention_weights(
        self, x: Tensor, edge_index: Tensor, pos: Tensor
    ) -> tuple[Tensor, Tensor]:
        r"""The per-channel softmax weights of one call.

        Returns:
            ``(edge_index, weights)``: the edges used ``(2, E')`` (self loops replaced with
            ``add_self_loops``) and the weights ``(E', C / s)``; output channel ``c`` uses
            column ``c mod C / s``.
        """
        ei, w = self.attn.attention_weights(x, self._graph(x, edge_index, pos), pos)
        return ei, w.squeeze(1)  # (E', C / s)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, share_planes={self.share_planes}, "
            f"order={self.order!r}, pos_order={self.pos_order!r}, "
            f"add_self_loops={self.add_self_loops}"
        )

r"""Self-attention for sequences and sets: multi-head scaled dot-product attention (Vaswani et
al. 2017) and the structured self-attentive embedding (Lin et al. 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_batch, check_features, check_positive_int, shape_of
from ..graphs import full_graph
from ..ops import scatter
from .attention import NodeAttention
from .base import Edges, Similarity
from .planner import BACKENDS
from .similarity import DotProduct
from .value import IdentityValue, LinearValue

__all__ = ["MultiHeadSelfAttention", "StructuredSelfAttention"]


class MultiHeadSelfAttention(nn.Module):
    r"""Multi-head scaled dot-product self-attention from `"Attention Is All You Need"
    <https://arxiv.org/abs/1706.03762>`_ (Vaswani et al., NeurIPS 2017), on any graph:

    .. math::
        y^h_i = \frac{1}{C^h_i} \sum_{j \in \mathcal N(i)}
            \exp\!\Big(\frac{(W^h_Q x_i)^\top (W^h_K x_j)}{\sqrt{d}}\Big)\, W^h_V x_j,
        \qquad
        z_i = W_O [y^1_i \| \dots \| y^H_i] + b_O.

    :math:`\mathcal N(i)` is the given ``edge_index`` (:func:`pcattn.graphs.full_graph` of the
    batch vector gives ordinary, global multi-head attention per sample; a kNN or radius graph
    gives local attention), ``f`` is the exponential of the scaled dot product of head ``h``,
    ``C`` the softmax sum over :math:`\mathcal N(i)` per head and :math:`g = W^h_V`, followed by
    the output projection :math:`W_O`. Heads own contiguous blocks of
    :math:`d = C_{out} / H` channels. With ``in_channels == out_channels`` and the full graph
    this is :class:`torch.nn.MultiheadAttention` (``batch_first``, ``key_padding_mask`` for
    samples of different sizes), whose initialisation it also follows (Xavier-uniform
    projections, zero biases).

    Args:
        in_channels: input width :math:`C_{in}`.
        out_channels: model width :math:`C_{out}` of queries, keys, values and output.
        heads: number of heads ``H`` (default: ``8``).
        bias: biases in :math:`W_Q, W_K, W_V, W_O` (default: ``True``).
        dropout: dropout on the attention weights while training (default: ``0.0``).

    Shapes:
        - **x:** ``(N, C_in)``
        - **edge_index:** ``(2, E)``, row 0 the key ``j``, row 1 the query ``i``
        - **output:** ``(N, C_out)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        heads: int = 8,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        out_channels = check_positive_int(out_channels, "out_channels")
        heads = check_positive_int(heads, "heads")
        if out_channels % heads != 0:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by heads ({heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.attention = NodeAttention(
            in_channels,
            out_channels,
            similarity=DotProduct(in_channels, out_channels, heads=heads, scale=True, bias=bias),
            normalize="softmax",
            value=LinearValue(in_channels, out_channels, heads=heads, bias=bias),
            heads=heads,
            bias=False,
            dropout=dropout,
        )
        self.out_proj = nn.Linear(out_channels, out_channels, bias=bias)  # W_O
        self.reset_parameters()

    def reset_parameters(self) -> None:
        sim, val = self.attention.similarity, self.attention.value
        for lin in (sim.query, sim.key, val.lin):
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.out_proj.reset_parameters()
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, x: Tensor, edge_index: Tensor | None = None, *, batch: Tensor | None = None
    ) -> Tensor:
        r"""Attend over ``edge_index`` and project: ``(N, C_in)`` -> ``(N, C_out)``.

        ``edge_index=None`` attends over all pairs within each sample of ``batch`` (default:
        one sample). All-pairs attention, given that way or as
        :func:`pcattn.graphs.full_graph`, runs through
        :func:`torch.nn.functional.scaled_dot_product_attention` when the planner picks it
        (:attr:`backend`, see :mod:`pcattn.nn.planner`)."""
        return self.out_proj(self.attention(x, edge_index, batch=batch))  # (N, C_out)

    @property
    def backend(self) -> str:
        """``"auto"``, ``"dense"`` or ``"sparse"``: how all-pairs attention runs."""
        return self.attention.backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        self.attention.backend = value

    def attention_weights(
        self, x: Tensor, edge_index: Tensor | None = None, *, batch: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (E, H))``: the softmax weight of every edge and head
        (``edge_index=None``: the full graph of ``batch``)."""
        return self.attention.attention_weights(x, edge_index, batch=batch)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, heads={self.heads}"


class _HopScore(Similarity):
    r"""Lin et al.'s score of token ``j`` for hop ``k``: :math:`w_{s2,k}^\top
    \tanh(W_{s1} h_j)`. Hop ``k`` of sample ``b`` is target node ``b * r + k``; the targets
    carry no features."""

    def __init__(self, in_channels: int, hidden: int, hops: int, *, bias: bool) -> None:
        super().__init__()
        self.hops = hops
        self.ws1 = nn.Linear(in_channels, hidden, bias=bias)  # W_s1 (d_a, C)
        self.ws2 = nn.Linear(hidden, hops, bias=bias)  # W_s2 (r, d_a)

    def forward(self, x_dst: Tensor, x_src: Tensor, edges: Edges) -> Tensor:
        a = self.ws2(torch.tanh(self.ws1(x_src)))  # (N_src, r): every hop scores every token
        return a[edges.src, edges.dst % self.hops].unsqueeze(-1)  # (E, 1)


class StructuredSelfAttention(nn.Module):
    r"""Structured self-attentive sentence embedding from `"A Structured Self-attentive
    Sentence Embedding" <https://arxiv.org/abs/1703.03130>`_ (Lin et al., ICLR 2017):

    .. math::
        m_k = \frac{1}{C_k} \sum_{j \in \mathcal N(k)}
            \exp\!\big(w_{s2,k}^\top \tanh(W_{s1} h_j)\big)\, h_j,
        \qquad k = 1, \dots, r,

    i.e. :math:`M = AH` with :math:`A = \mathrm{softmax}_{\text{tokens}}(W_{s2}
    \tanh(W_{s1} H^\top)) \in \mathbb R^{r \times n}`. The graph is bipartite: the targets
    are :math:`r` feature-less *hop* nodes per sample, :math:`\mathcal N(k)` is every token of
    the hop's sample, ``f`` the exponential above (row ``k`` of :math:`W_{s2}` is a learned
    query), ``C`` the softmax sum over the tokens and ``g`` the identity, :math:`g(h_j) = h_j`.

    :meth:`penalty` gives the paper's regulariser :math:`P = \|AA^\top - I\|_F^2` (squared;
    the reference code uses the non-squared norm). Like the reference code, :math:`W_{s1}` and
    :math:`W_{s2}` have biases by default (initialised to 0; the paper has none; ``bias=False``
    gives the paper). Padding tokens need no mask: tokens are packed with a ``batch`` vector.

    Args:
        in_channels: token width :math:`2u`.
        hidden: :math:`d_a` (default: ``350``).
        hops: :math:`r`, the number of attention hops (default: ``30``).
        bias: biases in :math:`W_{s1}, W_{s2}` (default: ``True``).

    Shapes:
        - **x:** packed tokens ``(N, C)`` with ``batch (N,)`` (sorted; default one sequence),
          or a dense batch ``(B, n, C)`` of equal-length sequences
        - **output:** ``(B, r, C)``, the matrix :math:`M` of every sample (its ``B * r`` hop
          nodes; ``.flatten(1)`` gives the paper's flattened embedding)
    """

    def __init__(
        self, in_channels: int, *, hidden: int = 350, hops: int = 30, bias: bool = True
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.hidden = check_positive_int(hidden, "hidden")
        self.hops = check_positive_int(hops, "hops")
        self.attention = NodeAttention(
            (in_channels, 0),
            in_channels,
            similarity=_HopScore(in_channels, hidden, hops, bias=bias),
            normalize="softmax",
            value=IdentityValue(in_channels),
            bias=False,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.attention.similarity.ws1, self.attention.similarity.ws2):
            lin.reset_parameters()
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, *, batch: Tensor | None = None) -> Tensor:
        r"""The embedding matrix :math:`M = AH` of every sample, ``(B, r, C)``."""
        x, _, edge_index, b = self._graph(x, batch)
        hop = x.new_zeros(b * self.hops, 0)  # (B * r, 0): hop nodes have no features
        m = self.attention((x, hop), edge_index)  # (B * r, C)
        return m.view(b, self.hops, -1)  # (B, r, C)

    def attention_weights(self, x: Tensor, *, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (E, 1))``: :math:`A_{kj}` on the edges from token ``j``
        (row 0, index into the packed tokens) to hop node ``b * r + k`` (row 1)."""
        x, _, edge_index, b = self._graph(x, batch)
        return self.attention.attention_weights((x, x.new_zeros(b * self.hops, 0)), edge_index)

    def penalty(self, x: Tensor, *, batch: Tensor | None = None, reduction: str = "mean") -> Tensor:
        r"""The redundancy penalty :math:`P = \|A A^\top - I_r\|_F^2` of every sample,
        averaged over the samples (``reduction="mean"``, default), summed (``"sum"``) or
        returned per sample (``"none"``, shape ``(B,)``)."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        x, batch, edge_index, b = self._graph(x, batch)
        _, w = self.attention.attention_weights((x, x.new_zeros(b * self.hops, 0)), edge_index)
        src, hop_node = edge_index
        n, r = x.size(0), self.hops
        a_t = scatter(w[:, 0], src * r + hop_node % r, n * r).view(n, r)  # (N, r): A^T per token
        outer = a_t.unsqueeze(2) * a_t.unsqueeze(1)  # (N, r, r)
        gram = scatter(outer, batch, b)  # (B, r, r): A A^T per sample
        eye = torch.eye(r, dtype=gram.dtype, device=gram.device)
        p = (gram - eye).square().sum((1, 2))  # (B,)
        if reduction == "mean":
            return p.mean()
        return p.sum() if reduction == "sum" else p

    # ----------------------------------------------------------------------------------------

    def _graph(self, x: Tensor, batch: Tensor | None) -> tuple[Tensor, Tensor, Tensor, int]:
        name = type(self).__name__
        if isinstance(x, Tensor) and x.dim() == 3:
            if batch is not None:
                raise ValueError(f"{name}: batch must be None for a dense x (B, n, C)")
            b, n, _ = x.shape
            batch = torch.arange(b, device=x.device).repeat_interleave(n)  # (B*n,)
            x = x.reshape(b * n, -1)  # (B*n, C)
        if not isinstance(x, Tensor) or x.dim() != 2:
            got = shape_of(x)
            raise ValueError(
                f"{name}: x must be tokens (N, C) or a dense batch (B, n, C), got {got}"
            )
        if x.size(1) != self.in_channels:
            raise ValueError(
                f"{name}: x has {x.size(1)} channels, in_channels is {self.in_channels}"
            )
        check_features(x, self, name)
        n = x.size(0)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=x.device)
        batch = check_batch(batch, n, "batch", "x", x.device)
        b = int(batch.max()) + 1 if n else 1
        hops = torch.arange(b, device=x.device).repeat_interleave(self.hops)  # (B * r,)
        edge_index = full_graph(batch, batch_dst=hops)  # every token -> every hop of its sample
        return x, batch, edge_index, b

    def extra_repr(self) -> str:
        return f"{self.in_channels}, hidden={self.hidden}, hops={self.hops}"

r"""Similarity plug-ins ``f``: node features and edges in, one logit per edge and head out.

Every class projects nodes first (``N`` matrix products) and only then gathers per edge, so the
``E``-sized work is element-wise. Logits are ``(E, H)`` for a scalar score per head or
``(E, H, C_f)`` for vector attention. What turns a logit into a weight (``exp`` and a softmax,
a division by a count, nothing) is the normaliser's job, so ``DotProduct`` is the embedded
Gaussian of the non-local paper under a softmax and its dot-product mode under a count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import edge_dot
from .base import Edges, Similarity

__all__ = [
    "EdgeWeight",
    "DotProduct",
    "Concatenation",
    "GATScore",
    "GATv2Score",
    "VectorRelation",
    "RelativeQuadratic",
    "MemoryKeys",
]


def _heads(x: Tensor, heads: int) -> Tensor:
    return x.view(x.size(0), heads, x.size(1) // heads)  # (N, H, d)


class EdgeWeight(Similarity):
    r"""Adjacency: :math:`f_{ij} = w_{ij}`, the given edge weight, or 1 (GCN with ``sym``)."""

    def forward(self, x_dst: Tensor | None, x_src: Tensor | None, edges: Edges) -> Tensor:
        if edges.weight is None:
            return edges.src.new_ones(edges.src.numel(), 1, dtype=_float(x_dst, x_src))
        return edges.weight.view(-1, 1)  # (E, 1)


def _float(*xs: Tensor | None) -> torch.dtype:
    for x in xs:
        if x is not None:
            return x.dtype
    return torch.get_default_dtype()


class DotProduct(Similarity):
    r"""Dot product of projected query and key, per head:
    :math:`s^h_{ij} = \tau\, \theta^h(x_i)^\top \phi^h(x_j)`.

    Under a softmax this is the embedded Gaussian of non-local networks and the scaled
    dot-product of transformers (:math:`\tau = d^{-1/2}`); under a count it is the non-local
    dot-product mode; with ``project=False`` (:math:`\theta = \phi =` identity) it is the
    plain Gaussian :math:`e^{x_i^\top x_j}`.

    Args:
        in_channels: input width ``C`` (int, or ``(C_src, C_dst)`` for bipartite inputs).
        channels: total query/key width ``H * d`` (ignored with ``project=False``).
        heads: number of heads ``H``; head ``h`` owns channels ``[h d, (h + 1) d)``.
        scale: ``False`` (:math:`\tau = 1`, default), ``True`` (:math:`\tau = d^{-1/2}`) or a
            number.
        bias: add a bias to the projections (default: ``False``).
        project: learn :math:`\theta, \phi` (default: ``True``).
        tied: use one projection for queries and keys, :math:`\theta = \phi` (PCT).
    """

    def __init__(
        self,
        in_channels: int | tuple[int, int],
        channels: int,
        *,
        heads: int = 1,
        scale: bool | float = False,
        bias: bool = False,
        project: bool = True,
        tied: bool = False,
    ) -> None:
        super().__init__()
        c_src, c_dst = (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        width = channels if project else c_dst
        if width % heads != 0:
            raise ValueError(f"channels ({width}) must be divisible by heads ({heads})")
        if tied and c_src != c_dst:
            raise ValueError("tied=True needs the same width for queries and keys")
        self.heads = heads
        self.head_channels = width // heads
        if scale is True:
            self.tau = 1.0 / math.sqrt(self.head_channels)
        elif scale is False:
            self.tau = 1.0
        else:
            self.tau = float(scale)
        self.query = nn.Linear(c_dst, channels, bias=bias) if project else None
        self.key = None if (not project or tied) else nn.Linear(c_src, channels, bias=bias)
        self.tied = tied

    def project(self, x_dst: Tensor, x_src: Tensor) -> tuple[Tensor, Tensor]:
        """Node-level queries ``(N_dst, H, d)`` and keys ``(N_src, H, d)``."""
        if self.query is None:
            return _heads(x_dst, self.heads), _heads(x_src, self.heads)
        key = self.query if self.tied else self.key
        return _heads(self.query(x_dst), self.heads), _heads(key(x_src), self.heads)

    def forward(self, x_dst: Tensor, x_src: Tensor, edges: Edges) -> Tensor:
        q, k = self.project(x_dst, x_src)  # (N_dst, H, d), (N_src, H, d)
        s = edge_dot(q, k, edges.src, edges.dst)  # (E, H), no per-edge q or k
        return s * self.tau if self.tau != 1.0 else s

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_channels={self.head_channels}, tau={self.tau:.4g}"


class Concatenation(Similarity):
    r"""Non-local concatenation:
    :math:`s^h_{ij} = \mathrm{ReLU}(w_f^{h\top} [\theta^h(x_i); \phi^h(x_j)])`.

    Since :math:`w_f^\top[a; b] = w_q^\top a + w_k^\top b`, both halves are scored per node
    before the gather.
    """

    def __init__(self, in_channels: int, channels: int, *, heads: int = 1, bias: bool = False):
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.query = nn.Linear(in_channels, channels, bias=bias)
        self.key = nn.Linear(in_channels, channels, bias=bias)
        self.weight = nn.Parameter(torch.empty(heads, 2 * (channels // heads)))  # w_f per head
        nn.init.normal_(self.weight, std=(1.0 / self.weight.size(1)) ** 0.5)

    def forward(self, x_dst: Tensor, x_src: Tensor, edges: Edges) -> Tensor:
        d = self.weight.size(1) // 2
        q = _heads(self.query(x_dst), self.heads)  # (N_dst, H, d)
        k = _heads(self.key(x_src), self.heads)  # (N_src, H, d)
        a = (q * self.weight[:, :d]).sum(-1)  # (N_dst, H)
        b = (k * self.weight[:, d:]).sum(-1)  # (N_src, H)
        return F.relu(a.index_select(0, edges.dst) + b.index_select(0, edges.src))  # (E, H)


class GATScore(Similarity):
    r"""GAT (static attention): :math:`s^h_{ij} = \mathrm{LReLU}(a^{h\top}_{dst} z^h_i +
    a^{h\top}_{src} z^h_j)` with :math:`z = W x` the layer's (per-node) values."""

    needs_values = True

    def __init__(self, channels: int, *, heads: int = 1, negative_slope: float = 0.2):
        super().__init__()
        self.heads = heads
        self.negative_slope = negative_slope
        self.att_src = nn.Parameter(torch.empty(1, heads, channels))
        self.att_dst = nn.Parameter(torch.empty(1, heads, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)

    def forward(self, x_dst: Tensor | None, x_src: Tensor | None, edges: Edges) -> Tensor:
        a_src = (edges.value_src * self.att_src).sum(-1)  # (N_src, H)
        a_dst = (edges.value_dst * self.att_dst).sum(-1)  # (N_dst, H)
        return F.leaky_relu(
            a_src.index_select(0, edges.src) + a_dst.index_select(0, edges.dst), self.negative_slope
        )  # (E, H)


class GATv2Score(Similarity):
    r"""GATv2 (dynamic attention): :math:`s^h_{ij} = a^{h\top}\mathrm{LReLU}(W_r x_i +
    W_l x_j)^h`, with :math:`W_l x_j` the layer's values (``share_weights``: :math:`W_r = W_l`)."""

    needs_values = True

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        heads: int = 1,
        negative_slope: float = 0.2,
        bias: bool = True,
        share_weights: bool = False,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.negative_slope = negative_slope
        self.lin_r = None if share_weights else nn.Linear(in_channels, heads * channels, bias=bias)
        self.att = nn.Parameter(torch.empty(1, heads, channels))
        nn.init.xavier_uniform_(self.att)

    def forward(self, x_dst: Tensor, x_src: Tensor | None, edges: Edges) -> Tensor:
        if self.lin_r is None:
            xr = edges.value_dst  # (N_dst, H, d)
        else:
            xr = _heads(self.lin_r(x_dst), self.heads)  # (N_dst, H, d)
        z = F.leaky_relu(
            xr.index_select(0, edges.dst) + edges.value_src.index_select(0, edges.src),
            self.negative_slope,
        )
        return (z * self.att).sum(-1)  # (E, H)


class VectorRelation(Similarity):
    r"""Vector attention (SAN pairwise, Point Transformer): one logit per channel group,
    :math:`s_{ij} = \gamma(\delta(x_i, x_j) \oplus \rho_{ij}) \in \mathbb R^{C_f}`.

    Args:
        in_channels: input width ``C``.
        rel_channels: width of :math:`\varphi, \psi` (``C_rel``).
        logit_channels: number of score channels ``C_f``; value channel ``c`` uses score
            channel ``c mod C_f`` (``share="interleaved"``) or ``c // (D / C_f)``.
        relation: :math:`\delta`: ``"subtraction"`` :math:`\varphi(x_i) - \psi(x_j)`,
            ``"sum"``, ``"hadamard"`` :math:`\varphi(x_i) \odot \psi(x_j)` or ``"concat"``
            :math:`[\varphi(x_i); \psi(x_j)]`.
        order: ``"query_minus_key"`` (SAN, PyG) or ``"key_minus_query"`` (Point Transformer
            official code) for subtraction.
        pos: how the layer's positional encoding :math:`\rho_{ij}` joins: ``"add"`` (Point
            Transformer), ``"concat"`` (SAN) or ``None``.
        pos_channels: width of :math:`\rho` when ``pos="concat"``.
        mapping: :math:`\gamma`; default ``Linear(width, C_f)``; ``nn.Identity()`` when the
            relation already has ``C_f`` channels (PyG ``PointTransformerConv``).
        bias: biases of :math:`\varphi, \psi` (default: ``True``).
        share: channel sharing (default: ``"interleaved"``).
    """

    def __init__(
        self,
        in_channels: int,
        rel_channels: int,
        logit_channels: int,
        *,
        relation: str = "subtraction",
        order: str = "query_minus_key",
        pos: str | None = "add",
        pos_channels: int = 0,
        mapping: nn.Module | None = None,
        bias: bool = True,
        share: str = "interleaved",
    ) -> None:
        super().__init__()
        if relation not in ("subtraction", "sum", "hadamard", "concat"):
            raise ValueError(
                f"relation must be 'subtraction', 'sum', 'hadamard' or 'concat', got {relation!r}"
            )
        if order not in ("query_minus_key", "key_minus_query"):
            raise ValueError(f"order must be 'query_minus_key' or 'key_minus_query', got {order!r}")
        if pos not in ("add", "concat", None):
            raise ValueError(f"pos must be 'add', 'concat' or None, got {pos!r}")
        if share not in ("interleaved", "contiguous"):
            raise ValueError(f"share must be 'interleaved' or 'contiguous', got {share!r}")
        self.relation, self.order, self.pos, self.share = relation, order, pos, share
        self.logit_channels = logit_channels
        self.query = nn.Linear(in_channels, rel_channels, bias=bias)  # varphi
        self.key = nn.Linear(in_channels, rel_channels, bias=bias)  # psi
        width = 2 * rel_channels if relation == "concat" else rel_channels
        width += pos_channels if pos == "concat" else 0
        self.mapping = nn.Linear(width, logit_channels) if mapping is None else mapping

    def node_terms(self, x_dst: Tensor, x_src: Tensor) -> tuple[Tensor, Tensor, bool] | None:
        r"""``(a (N_dst, C_f), b (N_src, C_f), pos_added)`` when the logit is
        :math:`a_i + b_j (+ \rho_{ij})`: a subtraction or sum with :math:`\gamma` the identity
        (PyG's ``PointTransformerConv``), which lets the fused path skip the per-edge logits;
        else ``None``."""
        if not isinstance(self.mapping, nn.Identity) or self.pos == "concat":
            return None
        if self.relation not in ("subtraction", "sum"):
            return None
        q, k = self.query(x_dst), self.key(x_src)  # (N_dst, C_rel), (N_src, C_rel)
        if self.relation == "subtraction":
            if self.order == "query_minus_key":
                k = -k
            else:
                q = -q
        return q, k, self.pos == "add"

    def forward(self, x_dst: Tensor, x_src: Tensor, edges: Edges) -> Tensor:
        q = self.query(x_dst).index_select(0, edges.dst)  # (E, C_rel)
        k = self.key(x_src).index_select(0, edges.src)  # (E, C_rel)
        if self.relation == "subtraction":
            r = q - k if self.order == "query_minus_key" else k - q
        elif self.relation == "sum":
            r = q + k
        elif self.relation == "hadamard":
            r = q * k
        else:
            r = torch.cat([q, k], -1)  # (E, 2 C_rel)
        if self.pos == "add":
            r = r + edges.pos_emb
        elif self.pos == "concat":
            r = torch.cat([r, edges.pos_emb], -1)
        return self.mapping(r).unsqueeze(1)  # (E, 1, C_f)


class RelativeQuadratic(Similarity):
    r"""Cordonnier et al.'s quadratic relative encoding, a logit that depends on position only:
    :math:`s^h_{ij} = -\alpha_h \|\delta_{ij} - \Delta_h\|^2 + \alpha_h \|\Delta_h\|^2
    = -\alpha_h (\|\delta_{ij}\|^2 - 2 \Delta_h^\top \delta_{ij})` with
    :math:`\delta_{ij} = p_j - p_i`. Under a softmax over keys, head ``h`` attends to the key
    at shift :math:`\Delta_h` as :math:`\alpha_h \to \infty`.

    Args:
        heads: number of heads.
        dim: position dimension (default: ``2``).
        alpha: initial :math:`\alpha` of every head (default: ``1.0``).
        centers: initial shifts :math:`\Delta`, ``(H, dim)`` (default: zeros).
    """

    needs_rel = True

    def __init__(
        self, heads: int, *, dim: int = 2, alpha: float = 1.0, centers: Tensor | None = None
    ) -> None:
        super().__init__()
        self.heads = heads
        self.alpha = nn.Parameter(torch.full((heads,), float(alpha)))
        c = torch.zeros(heads, dim) if centers is None else torch.as_tensor(centers).clone()
        if c.shape != (heads, dim):
            raise ValueError(f"centers must have shape ({heads}, {dim}), got {tuple(c.shape)}")
        self.centers = nn.Parameter(c.to(torch.get_default_dtype()))  # .double() etc. cast

    def forward(self, x_dst: Tensor | None, x_src: Tensor | None, edges: Edges) -> Tensor:
        d = edges.rel.to(self.alpha.dtype)  # (E, D)
        sq = (d * d).sum(-1, keepdim=True)  # (E, 1)
        return -self.alpha * (sq - 2.0 * d @ self.centers.t())  # (E, H)


class MemoryKeys(Similarity):
    r"""External attention: the sources are ``S`` learned memory slots, the logit is
    :math:`s^h_{ik} = x_i^{h\top} M_k[k] (+ b_k)`, the memory shared by the heads.

    Source ``b * S + k`` is slot ``k`` (one copy of the slots per sample, as
    :func:`pcattn.graphs.slot_graph` numbers them), so a normaliser over the queries of a slot
    never mixes samples.

    Args:
        channels: width of a query head ``d`` (the input is split into ``H`` heads of ``d``).
        slots: number of memory slots ``S``.
        heads: number of heads (default: ``1``).
        bias: a bias per slot (EANet's multi-head ``linear_0``; default: ``False``).
    """

    def __init__(self, channels: int, slots: int, *, heads: int = 1, bias: bool = False):
        super().__init__()
        self.heads = heads
        self.memory = nn.Linear(channels, slots, bias=bias)  # M_k, weight (S, d)

    def forward(self, x_dst: Tensor, x_src: Tensor | None, edges: Edges) -> Tensor:
        a = self.memory(_heads(x_dst, self.heads))  # (N_dst, H, S)
        return a[edges.dst, :, edges.src % self.memory.out_features]  # (E, H)

r"""The one message-passing layer every operator in pcattn is made of."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import (
    check_batch,
    check_edge_index_shape,
    check_features,
    check_positions,
    shape_of,
)
from ..graphs import full_graph
from ..ops import scatter, vector_attention, weighted_aggregate
from .base import Edges, Normalizer, Similarity, ValueTransform, share_channels
from .normalize import Softmax, make_normalizer
from .planner import BACKENDS, AttentionPlan, all_pairs_sizes, plan_attention
from .similarity import (
    Concatenation,
    DotProduct,
    EdgeWeight,
    GATScore,
    GATv2Score,
)
from .value import AdditivePositionalValue, IdentityValue, LinearValue

__all__ = ["NodeAttention", "Pair"]

Pair = Tensor | tuple[Tensor | None, Tensor]  # node tensor, or (x_src, x_dst) for bipartite

# similarity name -> the normaliser it is used with unless told otherwise
_DEFAULT_NORMALIZE = {
    "adjacency": "sym",
    "dot_product": "mean",
    "scaled_dot_product": "softmax",
    "embedded_gaussian": "softmax",
    "gaussian": "softmax",
    "concatenation": "mean",
    "gat": "softmax",
    "gatv2": "softmax",
}


class NodeAttention(nn.Module):
    r"""Attention as message passing with pluggable neighbourhood, similarity, normaliser and
    value:

    .. math::
        y_i = \frac{1}{C_i} \sum_{j \in \mathcal N(i)} f(x_i, x_j, p_j - p_i) \odot g(x_j)
        \;(+\, b)

    :math:`\mathcal N(i)` is the ``edge_index`` given to :meth:`forward` (build it with
    :mod:`pcattn.graphs`: kNN, radius, pixel window, full, criss-cross, ...); ``f``, ``C`` and
    ``g`` are the plug-ins of :mod:`pcattn.nn.similarity`, :mod:`pcattn.nn.normalize` and
    :mod:`pcattn.nn.value`. Heads are contiguous blocks of ``D`` channels; a vector similarity
    with ``C_f`` score channels shares them over a head's ``D`` value channels contiguously or
    interleaved (SAN, Point Transformer). Pixels, points and graph nodes all go through here.

    Args:
        in_channels: input width ``C_in``, or ``(C_src, C_dst)`` for bipartite inputs.
        out_channels: output width ``C_out`` (``H * D`` with ``concat=True``, else ``D``).
        similarity: a :class:`~pcattn.nn.base.Similarity`, or one of ``"adjacency"``,
            ``"dot_product"``, ``"scaled_dot_product"``, ``"embedded_gaussian"``,
            ``"gaussian"``, ``"concatenation"``, ``"gat"``, ``"gatv2"`` (default:
            ``"scaled_dot_product"``), built with query/key width ``C_out``.
        normalize: a :class:`~pcattn.nn.base.Normalizer` or ``"softmax"``, ``"sym"``,
            ``"mean"``, ``"double"``, ``"none"`` (default: the usual one for a named
            similarity, else ``"softmax"``).
        value: a :class:`~pcattn.nn.base.ValueTransform`, ``"linear"`` or ``"identity"``
            (default: ``"linear"``).
        heads: number of heads ``H`` (default: ``1``).
        concat: concatenate the heads (default) or average them.
        pos_encoding: a module mapping ``rel = p_j - p_i (E, D_p)`` to ``(E, C_p)``, computed
            once per call and shared by similarity and value (Point Transformer's
            :math:`\delta`), or ``None``.
        bias: add a learned bias to the output (default: ``True``).
        dropout: dropout on the weights :math:`f / C` while training (GAT; default: ``0``).
        fused: compute vector softmax attention (a similarity with ``C_f > 1`` score
            channels, or an additive-positional value) with :func:`pcattn.ops.vector_attention`:
            softmax and aggregation in one pass over chunks of edges, no ``(E, C)`` weight or
            message tensor kept for backward (default: ``True``). Similarities whose logit is
            a per-target plus a per-source term (Point Transformer with
            :math:`\gamma` the identity) do not even store the logits. ``False`` runs the
            reference path (separate normaliser and scatter), which gives the same numbers.
        chunk_edges: edges per chunk of the fused path (default: a 32 MB working set).
        backend: for an all-pairs neighbourhood (:func:`pcattn.graphs.full_graph` with self
            loops, or ``edge_index=None`` with ``batch``) of a softmax dot-product layer with
            per-node values: ``"auto"`` (default) lets :func:`~pcattn.nn.planner.plan_attention`
            choose, ``"dense"`` always runs
            :func:`torch.nn.functional.scaled_dot_product_attention` on the padded samples,
            ``"sparse"`` always passes messages. Both give the same numbers.
        memory_budget: bytes the sparse path's per-edge tensors may take before ``"auto"``
            runs dense despite padding (default: :data:`~pcattn.nn.planner.DEFAULT_BUDGET_BYTES`).

    Shapes:
        - **x:** ``(N, C_in)``, or ``(x_src (N_src, C_src) | None, x_dst (N_dst, C_dst))``;
          ``C_dst`` may be 0 for feature-less queries (learned hops, virtual nodes) whose
          similarity scores them by index
        - **edge_index:** ``(2, E)``, row 0 the source ``j``, row 1 the target ``i``
        - **pos:** ``(N, D_p)`` or ``(pos_src, pos_dst)``, optional
        - **output:** ``(N_dst, C_out)``
    """

    def __init__(
        self,
        in_channels: int | tuple[int, int],
        out_channels: int,
        *,
        similarity: str | Similarity = "scaled_dot_product",
        normalize: str | Normalizer | None = None,
        value: str | ValueTransform = "linear",
        heads: int = 1,
        concat: bool = True,
        pos_encoding: nn.Module | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        fused: bool = True,
        chunk_edges: int | None = None,
        backend: str = "auto",
        memory_budget: int | None = None,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.fused, self.chunk_edges = fused, chunk_edges
        self.backend, self.memory_budget = backend, memory_budget
        self.last_plan: AttentionPlan | None = None
        c_src, c_dst = (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        width = out_channels if concat else out_channels * heads  # H * D
        if width % heads != 0:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by heads ({heads})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.heads, self.concat, self.dropout = heads, concat, dropout
        d = width // heads

        if isinstance(value, str):
            if value == "linear":
                value = LinearValue(c_src, width, heads=heads)
            elif value == "identity":
                if c_src != width:
                    raise ValueError(
                        f"value='identity' needs in_channels ({c_src}) == heads * D ({width})"
                    )
                value = IdentityValue(width, heads=heads)
            else:
                raise ValueError(
                    f"value must be 'linear', 'identity' or a ValueTransform, got {value!r}"
                )
        if isinstance(similarity, str):
            if normalize is None:
                normalize = _DEFAULT_NORMALIZE.get(similarity, "softmax")
            similarity = _make_similarity(similarity, (c_src, c_dst), width, heads)
        if normalize is None:
            normalize = "softmax"
        if similarity.heads not in (1, value.heads):
            raise ValueError(
                f"the similarity has {similarity.heads} heads but the value has {value.heads}"
            )
        if similarity.logit_channels > 1 and value.channels % similarity.logit_channels:
            raise ValueError(
                f"value channels per head ({value.channels}) must be a multiple of the "
                f"similarity's score channels ({similarity.logit_channels})"
            )
        if value.heads != heads or value.channels != d:
            raise ValueError(
                f"value gives {value.heads} heads x {value.channels} channels, but heads={heads} "
                f"and out_channels={out_channels} need {heads} x {d}"
            )
        self.similarity = similarity
        self.normalize = make_normalizer(normalize)
        self.value = value
        self.pos_encoding = pos_encoding
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    # ----------------------------------------------------------------------------------------

    def forward(
        self,
        x: Pair,
        edge_index: Tensor | None,
        pos: Pair | None = None,
        *,
        rel_pos: Tensor | None = None,
        edge_weight: Tensor | None = None,
        num_src: int | None = None,
        batch: Tensor | None = None,
    ) -> Tensor:
        r"""Aggregate messages into every target node.

        Args:
            x: node features, or ``(x_src, x_dst)``; ``x_src`` may be ``None`` when the sources
                are learned slots (give ``num_src``).
            edge_index: ``(2, E)`` int64, any order (target-sorted is faster); ``None`` for
                all pairs within each sample of ``batch`` (no edge list is built when the
                dense path runs).
            pos: positions, or ``(pos_src, pos_dst)``; used for ``rel = p_j - p_i``.
            rel_pos: per-edge ``p_j - p_i`` ``(E, D_p)`` given directly (e.g. the offsets of
                :func:`pcattn.graphs.grid_graph`, including edges from a padding node); wins
                over ``pos``.
            edge_weight: ``(E,)`` weights for the ``adjacency`` similarity.
            num_src: number of source nodes when ``x_src`` is ``None``.
            batch: sample of each node ``(N,)``, sorted, with ``edge_index=None`` (default:
                one sample).

        Returns:
            ``(N_dst, C_out)``.
        """
        return self.propagate(
            x,
            edge_index,
            pos,
            rel_pos=rel_pos,
            edge_weight=edge_weight,
            num_src=num_src,
            batch=batch,
            need_weights=False,
        )[0]

    def attention_weights(
        self,
        x: Pair,
        edge_index: Tensor | None,
        pos: Pair | None = None,
        *,
        rel_pos: Tensor | None = None,
        edge_weight: Tensor | None = None,
        num_src: int | None = None,
        batch: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""The normalised weights :math:`w_{ij} = f_{ij} / C_i` of one call, for inspection.

        Same arguments as :meth:`forward`. Returns ``(edge_index, weights)`` with weights
        ``(E, H)`` (scalar similarity) or ``(E, H, C_f)`` (vector), aligned with the edges
        actually used (named operators may add self loops or padding edges first).
        """
        _, ei, w = self.propagate(
            x,
            edge_index,
            pos,
            rel_pos=rel_pos,
            edge_weight=edge_weight,
            num_src=num_src,
            batch=batch,
        )
        return ei, w

    # ----------------------------------------------------------------------------------------

    def propagate(
        self,
        x: Pair,
        edge_index: Tensor | None,
        pos: Pair | None = None,
        *,
        rel_pos: Tensor | None = None,
        edge_weight: Tensor | None = None,
        num_src: int | None = None,
        batch: Tensor | None = None,
        need_weights: bool = True,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        r"""Output and weights of one pass, for operators that chain passes and also expose
        their weights (CCNet's recurrence) without running each pass twice.

        Same arguments as :meth:`forward`, plus ``need_weights``. Returns ``(out (N_dst,
        C_out), edge_index, weights)``, the weights as in :meth:`attention_weights` (before
        dropout); with ``need_weights=False`` the weights may be ``None`` (the fused and
        dense paths never form them) and so may ``edge_index`` (the dense path of
        ``edge_index=None``).
        """
        x_src, x_dst = x if isinstance(x, tuple) else (x, x)
        num_src = self._nodes(x_src, x_dst, num_src)
        per_edge = pos is not None or rel_pos is not None or edge_weight is not None
        if per_edge and self.backend == "dense" and not need_weights:
            raise ValueError(
                f"{type(self).__name__}: backend='dense' takes no pos, rel_pos or edge_weight"
            )
        edge_index, sizes = self._all_pairs(x, edge_index, batch, need_weights or per_edge)
        if not (need_weights or per_edge) and self.backend != "sparse":
            plan = self.plan(x, edge_index, sizes)
            if plan.backend == "dense":
                return self._dense(x_dst, sizes), edge_index, None
        if edge_index is None:
            edge_index = full_graph(batch if batch is not None else x_dst.size(0))
        edges = self._edges(x_src, x_dst, edge_index, pos, rel_pos, edge_weight, num_src)
        if not need_weights and self._fusable():
            return self._fused(x_src, x_dst, edges), edge_index, None
        if self.pos_encoding is not None:
            if edges.rel is None:
                raise ValueError(f"{type(self).__name__} has a pos_encoding and needs pos")
            edges.pos_emb = self.pos_encoding(edges.rel.to(x_dst.dtype))  # (E, C_p)

        v = None
        if not self.value.per_edge:
            edges.value_src = v = self.value.node(x_src)  # (N_src, H, D)
            if self.similarity.needs_values:
                same = x_src is x_dst
                edges.value_dst = v if same else self.value.node(x_dst)  # (N_dst, H, D)
        logits = self.similarity(x_dst, x_src, edges)  # (E, H) or (E, H, C_f)
        w = self.normalize(logits, edges)  # same shape
        wd = F.dropout(w, self.dropout, self.training) if self.dropout > 0 else w
        if v is not None and wd.dim() == 2:  # scalar weights, per-node values: a sparse product
            out = weighted_aggregate(wd, v, edges.src, edges.dst, edges.num_dst)  # (N_dst, H, D)
        else:
            msg = (
                v.index_select(0, edges.src) if v is not None else self.value.edge(x_src, edges)
            )  # (E, H, D)
            msg = share_channels(wd, msg, self.similarity.share)  # (E, H, D)
            out = scatter(msg, edges.dst, edges.num_dst)  # (N_dst, H, D)
        return self._combine(out), edge_index, w

    def _combine(self, out: Tensor) -> Tensor:
        """Heads ``(N, H, D)`` concatenated or averaged, plus the bias: ``(N, C_out)``."""
        out = out.flatten(1) if self.concat else out.mean(1)
        return out + self.bias if self.bias is not None else out

    def _all_pairs(
        self, x: Pair, edge_index: Tensor | None, batch: Tensor | None, need_weights: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """``(edge_index, sample sizes or None)``; the sizes only when the graph is all-pairs
        (``edge_index=None``, or a full graph detected on a layer that could run dense)."""
        name = type(self).__name__
        x_dst = x[1] if isinstance(x, tuple) else x
        if edge_index is None:
            if isinstance(x, tuple):
                raise ValueError(f"{name}: edge_index=None (all pairs) needs one node set x")
            if not isinstance(x_dst, Tensor) or x_dst.dim() != 2:
                raise ValueError(f"{name}: x must be a tensor (N, C), got {shape_of(x_dst)}")
            n = x_dst.size(0)
            if batch is None:
                return None, torch.tensor([n], device=x_dst.device) if n else None
            counts = torch.bincount(check_batch(batch, n, "batch", "x", x_dst.device))  # (B,)
            return None, counts[counts > 0] if n else None
        if batch is not None:
            raise ValueError(f"{name}: batch is only used with edge_index=None")
        if need_weights or self.backend == "sparse" or not self._dense_supported(x):
            return edge_index, None
        edge_index = check_edge_index_shape(edge_index, name, x_dst.device)
        return edge_index, all_pairs_sizes(edge_index, x_dst.size(0))

    def _dense_supported(self, x: Pair) -> bool:
        """A softmax of a dot product with per-node values, one node set, no positions:
        exactly what ``scaled_dot_product_attention`` computes."""
        return (
            not isinstance(x, tuple)
            and type(self.similarity) is DotProduct
            and type(self.normalize) is Softmax
            and not self.value.per_edge
            and self.pos_encoding is None
            and self.similarity.heads == self.heads
        )

    def plan(self, x: Pair, edge_index: Tensor | None, sizes: Tensor | None) -> AttentionPlan:
        """The :class:`~pcattn.nn.planner.AttentionPlan` for this input (also kept as
        :attr:`last_plan`)."""
        x_dst = x[1] if isinstance(x, tuple) else x
        if edge_index is not None:
            e = edge_index.size(1)
        else:
            e = int((sizes.long() ** 2).sum()) if sizes is not None else 0
        plan = plan_attention(
            sizes,
            e,
            heads=self.heads,
            channels=self.value.heads * self.value.channels,
            element_size=x_dst.element_size(),
            backend=self.backend,
            budget_bytes=self.memory_budget,
            supported=self._dense_supported(x),
        )
        self.last_plan = plan
        return plan

    def _dense(self, x: Tensor, sizes: Tensor) -> Tensor:
        """All pairs per sample through ``scaled_dot_product_attention`` on a padded batch."""
        sim = self.similarity
        q, k = sim.project(x, x)  # (N, H, d), (N, H, d)
        v = self.value.node(x)  # (N, H, D)
        b, n_max = sizes.numel(), int(sizes.max())
        if bool((sizes == n_max).all()):  # equal samples: a view, no padding, no mask
            dense = [t.view(b, n_max, *t.shape[1:]).transpose(1, 2) for t in (q, k, v)]
            mask, rows = None, None
        else:
            batch = torch.arange(b, device=x.device).repeat_interleave(sizes)  # (N,)
            first = torch.cumsum(sizes, 0) - sizes  # (B,)
            slot = torch.arange(x.size(0), device=x.device) - first[batch]  # (N,)
            rows = (batch, slot)
            dense = []
            for t in (q, k, v):
                d = t.new_zeros(b, n_max, *t.shape[1:])  # (B, n_max, H, d)
                d[rows] = t
                dense.append(d.transpose(1, 2))  # (B, H, n_max, d)
            keep = torch.arange(n_max, device=x.device) < sizes[:, None]  # (B, n_max)
            mask = keep[:, None, None, :]  # (B, 1, 1, n_max): padded keys take no part
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            *dense, attn_mask=mask, dropout_p=drop, scale=sim.tau
        )  # (B, H, n_max, D)
        out = out.transpose(1, 2)  # (B, n_max, H, D)
        out = out.reshape(x.size(0), *out.shape[2:]) if rows is None else out[rows]  # (N, H, D)
        return self._combine(out)

    def _fusable(self) -> bool:
        """Whether :meth:`_fused` computes this layer: a plain softmax, no dropout now, values
        per node or additive-positional, vector scores (scalar ones take the sparse product of
        :func:`~pcattn.ops.weighted_aggregate`), one head or contiguous sharing."""
        if not self.fused or type(self.normalize) is not Softmax:
            return False
        if self.dropout > 0 and self.training:
            return False
        additive = type(self.value) is AdditivePositionalValue
        if self.value.per_edge and not additive:
            return False
        if self.similarity.logit_channels <= 1 and not additive:
            return False
        return self.heads == 1 or self.similarity.share == "contiguous"

    def _fused(self, x_src: Tensor | None, x_dst: Tensor, edges: Edges) -> Tensor:
        src, dst = edges.src, edges.dst
        if src.numel() > 1 and not bool((dst[1:] >= dst[:-1]).all()):
            order = torch.argsort(dst, stable=True)  # sort once, before anything per edge exists
            src, dst = src.index_select(0, order), dst.index_select(0, order)
            rel = edges.rel.index_select(0, order) if edges.rel is not None else None
            weight = edges.weight.index_select(0, order) if edges.weight is not None else None
            edges = Edges(src, dst, edges.num_src, edges.num_dst, rel=rel, weight=weight)
        if self.pos_encoding is not None:
            if edges.rel is None:
                raise ValueError(f"{type(self).__name__} has a pos_encoding and needs pos")
            edges.pos_emb = self.pos_encoding(edges.rel.to(x_dst.dtype))  # (E, C_p)
        additive = type(self.value) is AdditivePositionalValue
        if additive:
            if edges.pos_emb is None:
                raise ValueError(
                    "an additive positional value needs the layer's pos_encoding and pos"
                )
            v, pos_term = self.value.lin(x_src), edges.pos_emb  # (N_src, C), (E, C)
        else:
            v3 = self.value.node(x_src)  # (N_src, H, D)
            edges.value_src = v3
            if self.similarity.needs_values:
                edges.value_dst = v3 if x_src is x_dst else self.value.node(x_dst)
            v, pos_term = v3.flatten(1), None  # (N_src, H * D)
        heads = self.value.heads
        share = self.similarity.share if heads == 1 else "contiguous"
        query = key = logits = None
        pos_in_logits = False
        node_terms = getattr(self.similarity, "node_terms", None)
        terms = node_terms(x_dst, x_src) if node_terms is not None else None
        if terms is not None and (terms[2] == additive or not terms[2]):
            query, key, pos_in_logits = terms  # (N_dst, C_f), (N_src, C_f), bool
            if self.similarity.heads < heads:  # one score set shared by every head
                query, key = (t.repeat(1, heads) for t in (query, key))  # (N, H * C_f)
        else:
            logits = self.similarity(x_dst, x_src, edges)  # (E, H | 1) or (E, H | 1, C_f)
            if logits.dim() == 2:
                logits = logits.unsqueeze(-1)  # (E, H | 1, 1)
            logits = logits.expand(-1, heads, -1).flatten(1).to(v.dtype)  # (E, H * C_f)
        out = vector_attention(
            v,
            src,
            dst,
            edges.num_dst,
            logits=logits,
            query=query,
            key=key,
            pos=pos_term,
            pos_in_logits=pos_in_logits,
            share=share,
            chunk_edges=self.chunk_edges,
        )  # (N_dst, H * D)
        return self._combine(out.view(out.size(0), heads, self.value.channels))

    def _nodes(self, x_src: Tensor | None, x_dst: Tensor, num_src: int | None) -> int:
        """Check the node features against ``in_channels``; returns the number of sources."""
        name = type(self).__name__
        if not isinstance(x_dst, Tensor) or x_dst.dim() != 2:
            raise ValueError(f"{name}: x must be a tensor (N, C), got {shape_of(x_dst)}")
        c_src, c_dst = (
            (self.in_channels, self.in_channels)
            if isinstance(self.in_channels, int)
            else self.in_channels
        )
        if x_dst.size(1) != c_dst:
            raise ValueError(f"{name}: x has {x_dst.size(1)} channels, in_channels is {c_dst}")
        check_features(x_dst, self, name)
        if x_src is None:
            if num_src is None:
                raise ValueError(f"{name}: x_src is None, so num_src must be given")
            return num_src
        if not isinstance(x_src, Tensor) or x_src.dim() != 2:
            raise ValueError(f"{name}: x_src must be a tensor (N_src, C), got {shape_of(x_src)}")
        if x_src.size(1) != c_src:
            raise ValueError(f"{name}: x_src has {x_src.size(1)} channels, in_channels is {c_src}")
        check_features(x_src, self, name, "x_src")
        return x_src.size(0)

    def _edges(
        self,
        x_src: Tensor | None,
        x_dst: Tensor,
        edge_index: Tensor,
        pos: Pair | None,
        rel_pos: Tensor | None,
        edge_weight: Tensor | None,
        num_src: int,
    ) -> Edges:
        """The edges of one pass, checked; ``x_src`` / ``x_dst`` already passed :meth:`_nodes`
        (which gave ``num_src``)."""
        name = type(self).__name__
        num_dst = x_dst.size(0)
        edge_index = check_edge_index_shape(edge_index, name, x_dst.device)
        src, dst = edge_index[0], edge_index[1]
        if src.numel():
            for row, n, what in ((src, num_src, "source"), (dst, num_dst, "target")):
                lo, hi = int(row.min()), int(row.max())
                if lo < 0 or hi >= n:
                    raise ValueError(
                        f"{name}: edge_index has {what} ids in [{lo}, {hi}] but there are {n} "
                        f"{what} nodes"
                    )
        e = src.numel()
        rel = None
        if rel_pos is not None:
            if not isinstance(rel_pos, Tensor) or rel_pos.dim() != 2 or rel_pos.size(0) != e:
                raise ValueError(f"{name}: rel_pos must be (E={e}, D), got {shape_of(rel_pos)}")
            rel = rel_pos
        elif pos is not None:
            if isinstance(pos, tuple):
                p_src, p_dst = pos
                checks = ((p_src, num_src, "pos_src"), (p_dst, num_dst, "pos_dst"))
            else:
                p_src = p_dst = pos
                if num_src != num_dst:
                    raise ValueError(
                        f"{name}: with {num_src} sources and {num_dst} targets, pos must be a "
                        "pair (pos_src, pos_dst)"
                    )
                checks = ((pos, num_dst, "pos"),)
            for p, n, what in checks:
                if not isinstance(p, Tensor) or p.dim() != 2 or p.size(0) != n:
                    raise ValueError(f"{name}: {what} must be ({n}, D), got {shape_of(p)}")
                if p.is_floating_point():
                    check_positions(p, what)
            rel = p_src.index_select(0, src) - p_dst.index_select(0, dst)  # (E, D_p)
        if self.similarity.needs_rel and rel is None:
            raise ValueError(f"{name}: {type(self.similarity).__name__} needs pos or rel_pos")
        if edge_weight is not None:
            if not isinstance(edge_weight, Tensor) or edge_weight.shape != (e,):
                raise ValueError(f"{name}: edge_weight must be ({e},), got {shape_of(edge_weight)}")
        return Edges(src, dst, num_src, num_dst, rel=rel, weight=edge_weight)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, heads={self.heads}, concat={self.concat}"


def _make_similarity(name: str, in_channels: tuple[int, int], width: int, heads: int) -> Similarity:
    c_src, c_dst = in_channels
    if name == "adjacency":
        return EdgeWeight()
    if name in ("dot_product", "embedded_gaussian"):
        return DotProduct(in_channels, width, heads=heads)
    if name == "scaled_dot_product":
        return DotProduct(in_channels, width, heads=heads, scale=True)
    if name == "gaussian":
        return DotProduct(in_channels, width, heads=heads, project=False)
    if name == "concatenation":
        if c_src != c_dst:
            raise ValueError("similarity='concatenation' needs one input width")
        return Concatenation(c_src, width, heads=heads)
    if name == "gat":
        return GATScore(width // heads, heads=heads)
    if name == "gatv2":
        return GATv2Score(c_dst, width // heads, heads=heads)
    raise ValueError(
        f"similarity must be one of {sorted(_DEFAULT_NORMALIZE)} or a Similarity, got {name!r}"
    )

r"""The three plug-in kinds of :class:`~pcattn.nn.NodeAttention` and the edge context they share.

.. math::
    y_i = \frac{1}{C_i} \sum_{j \in \mathcal N(i)} f(x_i, x_j, p_j - p_i) \odot g(x_j)

* a :class:`Similarity` ``f`` maps node features and the edges to logits, ``(E, H)`` for one
  score per head or ``(E, H, C_f)`` for vector attention (one score per channel group);
* a :class:`Normalizer` ``C`` turns logits into weights (softmax over ``j``, degree, count,
  double normalisation, none);
* a :class:`ValueTransform` ``g`` gives the message of each source, either per node
  ``(N_src, H, D)`` (the layer gathers it: ``N`` transforms instead of ``E``) or per edge
  ``(E, H, D)`` when it depends on the edge (position-dependent or additive-positional values).

Relative positions are ``rel = p_j - p_i`` (source minus target, the same sign as the window
offsets of :func:`pcattn.graphs.grid_graph`); a plug-in that follows a paper written with
``p_i - p_j`` negates it and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["Edges", "Similarity", "Normalizer", "ValueTransform", "share_channels"]


@dataclass
class Edges:
    r"""Everything a plug-in may need about the edges of one call.

    Attributes:
        src: source (key / value) node of each edge, ``(E,)``.
        dst: target (query) node of each edge, ``(E,)``.
        num_src: number of source nodes.
        num_dst: number of target nodes.
        rel: relative position ``p_j - p_i`` per edge, ``(E, D)``, or ``None``.
        weight: given edge weight, ``(E,)``, or ``None``.
        pos_emb: the layer's positional encoding of ``rel``, ``(E, C_p)``, or ``None``.
        value_src: node-level values of the sources ``(N_src, H, D)`` when the value transform
            is per node (GAT scores them), else ``None``.
        value_dst: the same transform applied to the targets, or ``None``.
    """

    src: Tensor
    dst: Tensor
    num_src: int
    num_dst: int
    rel: Tensor | None = None
    weight: Tensor | None = None
    pos_emb: Tensor | None = None
    value_src: Tensor | None = None
    value_dst: Tensor | None = None


class Similarity(nn.Module):
    r"""Base class of a similarity ``f``.

    Subclasses set ``heads`` (``H``), ``logit_channels`` (``1`` for a scalar score per head,
    ``C_f`` for vector attention), ``share`` (``"contiguous"`` or ``"interleaved"``: how the
    ``D`` value channels of a head map onto its ``C_f`` score channels) and, when the score
    needs the layer's node values (GAT), ``needs_values = True``.

    ``forward(x_dst, x_src, edges)`` returns logits ``(E, H)`` (scalar) or ``(E, H, C_f)``.
    ``x_src`` may be ``None`` when the sources carry no features (memory slots).
    """

    heads: int = 1
    logit_channels: int = 1
    share: str = "contiguous"
    needs_values: bool = False
    needs_rel: bool = False


class Normalizer(nn.Module):
    r"""Base class of a normaliser ``C``: ``forward(logits, edges) -> weights`` of the same
    shape, so that :math:`y_i = \sum_j w_{ij} g_{ij}`."""


class ValueTransform(nn.Module):
    r"""Base class of a value transform ``g``.

    Subclasses set ``heads``, ``channels`` (``D`` per head) and ``per_edge``. A per-node
    transform implements ``node(x) -> (N, H, D)``; a per-edge one implements
    ``forward(x_src, edges) -> (E, H, D)``.
    """

    heads: int = 1
    channels: int = 1
    per_edge: bool = False

    def node(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def edge(self, x_src: Tensor | None, edges: Edges) -> Tensor:
        raise NotImplementedError


def share_channels(weights: Tensor, values: Tensor, share: str) -> Tensor:
    r"""Weight ``values (E, H, D)`` by ``weights (E, H)`` or ``(E, H, C_f)``.

    With ``C_f`` score channels, value channel ``c`` takes score channel
    :math:`\pi(c) = \lfloor c / (D / C_f) \rfloor` (``"contiguous"``, what heads do) or
    :math:`\pi(c) = c \bmod C_f` (``"interleaved"``, SAN and Point Transformer).
    """
    e, h, d = values.shape
    if weights.dim() == 2:
        return values * weights.unsqueeze(-1)  # (E, H, D)
    cf = weights.size(-1)
    if share == "interleaved":
        out = values.view(e, h, d // cf, cf) * weights.unsqueeze(2)  # (E, H, D/Cf, Cf)
    else:
        out = values.view(e, h, cf, d // cf) * weights.unsqueeze(-1)  # (E, H, Cf, D/Cf)
    return out.view(e, h, d)

r"""Normalisers ``C``: logits in, edge weights :math:`w_{ij} = f_{ij} / C_i` out.

All of them work per head and per score channel, on edges in any order, through
:mod:`pcattn.ops` (no direct scatter calls). Duplicate edges count with their multiplicity.
"""

from __future__ import annotations

from torch import Tensor

from ..ops import scatter, segment_softmax
from .base import Edges, Normalizer

__all__ = [
    "Softmax",
    "SymmetricDegree",
    "Mean",
    "DoubleNormalize",
    "NoNormalize",
    "make_normalizer",
]


def _per_edge(t: Tensor, like: Tensor) -> Tensor:
    return t.view(t.shape + (1,) * (like.dim() - t.dim()))


class Softmax(Normalizer):
    r"""Softmax over the sources of each target: :math:`f = e^{s_{ij}}`,
    :math:`C_i = \sum_{j \in \mathcal N(i)} e^{s_{ij}}`. A target without edges gets no weight
    (its output is 0, never NaN)."""

    def forward(self, logits: Tensor, edges: Edges) -> Tensor:
        return segment_softmax(logits, edges.dst, edges.num_dst)


class SymmetricDegree(Normalizer):
    r"""GCN: :math:`w_{ij} = s_{ij} / \sqrt{d_i d_j}` with :math:`d_i = \sum_{j} s_{ij}`
    summed at the target (so include self loops in the graph first). A zero degree gives
    weight 0. The sources must be the targets' node set."""

    def forward(self, logits: Tensor, edges: Edges) -> Tensor:
        deg = scatter(logits, edges.dst, edges.num_dst)  # (N, H)
        inv = deg.pow(-0.5)
        inv = inv.masked_fill(inv == float("inf"), 0.0)
        return inv.index_select(0, edges.src) * logits * inv.index_select(0, edges.dst)  # (E, H)


class Mean(Normalizer):
    r"""Count: :math:`w_{ij} = s_{ij} / n_i`, with :math:`n_i` the number of edges into ``i``
    (``count=None``, the non-local dot-product mode) or a fixed ``count``."""

    def __init__(self, count: float | None = None) -> None:
        super().__init__()
        self.count = count

    def forward(self, logits: Tensor, edges: Edges) -> Tensor:
        if self.count is not None:
            return logits / self.count
        ones = logits.new_ones(edges.dst.numel())
        n = scatter(ones, edges.dst, edges.num_dst).clamp_min(1.0)  # (N,)
        return logits / _per_edge(n.index_select(0, edges.dst), logits)

    def extra_repr(self) -> str:
        return "count=in-degree" if self.count is None else f"count={self.count}"


class DoubleNormalize(Normalizer):
    r"""Double normalisation (external attention, PCT offset-attention): a softmax over the
    **targets** of each source, then an L1 normalisation over the sources of each target,

    .. math::
        \hat a_{ij} = \frac{e^{s_{ij}}}{\sum_{i'} e^{s_{i'j}}}, \qquad
        w_{ij} = \frac{\hat a_{ij}}{\epsilon + \sum_{j'} \hat a_{ij'}}.
    """

    def __init__(self, eps: float = 1e-9) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: Tensor, edges: Edges) -> Tensor:
        a = segment_softmax(logits, edges.src, edges.num_src)  # over the targets of each source
        den = scatter(a, edges.dst, edges.num_dst) + self.eps  # (N_dst, H)
        return a / den.index_select(0, edges.dst)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class NoNormalize(Normalizer):
    r""":math:`C_i = 1`: the logits are the weights."""

    def forward(self, logits: Tensor, edges: Edges) -> Tensor:
        return logits


_NORMALIZERS = {
    "softmax": Softmax,
    "sym": SymmetricDegree,
    "mean": Mean,
    "double": DoubleNormalize,
    "none": NoNormalize,
}


def make_normalizer(name: str | Normalizer) -> Normalizer:
    """A normaliser from its name: ``"softmax"``, ``"sym"``, ``"mean"``, ``"double"``,
    ``"none"``; a :class:`Normalizer` instance is returned as is."""
    if isinstance(name, Normalizer):
        return name
    if name not in _NORMALIZERS:
        raise ValueError(
            f"normalize must be one of {sorted(_NORMALIZERS)} or a Normalizer, got {name!r}"
        )
    return _NORMALIZERS[name]()

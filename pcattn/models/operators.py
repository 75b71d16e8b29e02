r"""The attention operators a model stage can use, behind one call signature, and the residual
block that wraps them.

:data:`OPERATORS` maps a config name to a builder ``(channels, options) -> module``; every
built module is called as ``op(x, edge_index, pos, batch)`` and returns ``(N, channels)``, so
changing a stage's similarity ``f`` is one word in a config. The stage's ``edge_index`` is its
kNN graph (the point itself included); the global operator (``external``) ignores it and
attends over the whole cloud.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ..nn import (
    ExternalAttention,
    GATLayer,
    GCNLayer,
    NonLocalBlock,
    OffsetAttention,
    PointTransformerLayer,
    SANPairwise,
)

__all__ = ["OPERATORS", "OperatorOptions", "AttentionBlock", "build_operator"]


@dataclass(frozen=True)
class OperatorOptions:
    r"""The options a stage passes to its operator (each operator reads the ones it has).

    Args:
        heads: heads of GAT / GATv2 (default: ``4``).
        share_planes: channels sharing one weight in vector attention (Point Transformer, SAN)
            (default: ``8``).
        slots: memory slots of external attention (default: ``64``).
        pos_dim: dimension of the positions (default: ``3``).
    """

    heads: int = 4
    share_planes: int = 8
    slots: int = 64
    pos_dim: int = 3


class _Local(nn.Module):
    """Adapter for layers called as ``layer(x, edge_index, pos)`` or ``layer(x, edge_index)``."""

    def __init__(self, layer: nn.Module, *, uses_pos: bool) -> None:
        super().__init__()
        self.layer, self.uses_pos = layer, uses_pos

    def forward(self, x: Tensor, edge_index: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        if self.uses_pos:
            return self.layer(x, edge_index, pos)
        return self.layer(x, edge_index)


class _Global(nn.Module):
    """Adapter for layers that attend over the whole sample: ``layer(x, batch=batch)``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor, edge_index: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        return self.layer(x, batch=batch)


def _point_transformer(c: int, o: OperatorOptions) -> nn.Module:
    return _Local(
        PointTransformerLayer(c, c, share_planes=min(o.share_planes, c), pos_dim=o.pos_dim),
        uses_pos=True,
    )


def _san(c: int, o: OperatorOptions) -> nn.Module:
    s = min(o.share_planes, c)
    layer = SANPairwise(c, max(c // 4, 1), c, share_planes=s, pos_dim=o.pos_dim)
    return _Local(layer, uses_pos=True)


def _gat(c: int, o: OperatorOptions) -> nn.Module:
    return _Local(GATLayer(c, c, heads=o.heads), uses_pos=False)


def _gatv2(c: int, o: OperatorOptions) -> nn.Module:
    return _Local(GATLayer(c, c, heads=o.heads, v2=True), uses_pos=False)


def _gcn(c: int, o: OperatorOptions) -> nn.Module:
    return _Local(GCNLayer(c, c), uses_pos=False)


def _non_local(c: int, o: OperatorOptions) -> nn.Module:
    return _Local(NonLocalBlock(c), uses_pos=False)


def _offset(c: int, o: OperatorOptions) -> nn.Module:
    return _Local(OffsetAttention(c), uses_pos=False)


def _external(c: int, o: OperatorOptions) -> nn.Module:
    return _Global(ExternalAttention(c, slots=o.slots))


#: config name -> builder ``(channels, options) -> op(x, edge_index, pos, batch)``
OPERATORS: dict[str, Callable[[int, OperatorOptions], nn.Module]] = {
    "point_transformer": _point_transformer,  # vector attention, Zhao et al. 2021
    "san": _san,  # SAN pairwise vector attention, Zhao et al. 2020
    "gat": _gat,  # graph attention, Velickovic et al. 2018
    "gatv2": _gatv2,  # dynamic graph attention, Brody et al. 2022
    "gcn": _gcn,  # degree-normalised adjacency, Kipf & Welling 2017
    "non_local": _non_local,  # embedded-Gaussian non-local block on the kNN graph
    "offset": _offset,  # PCT offset attention on the kNN graph
    "external": _external,  # external memory slots over the whole cloud
}


def build_operator(name: str, channels: int, options: OperatorOptions) -> nn.Module:
    """Build the operator ``name`` of :data:`OPERATORS` for ``channels`` wide features."""
    if name not in OPERATORS:
        raise ValueError(f"unknown operator {name!r}; choose one of {sorted(OPERATORS)}")
    return OPERATORS[name](channels, options)


class AttentionBlock(nn.Module):
    r"""Point Transformer's residual block around any operator of :data:`OPERATORS`:

    .. math::
        y = \mathrm{ReLU}\Big(x + \mathrm{BN}\big(W_2\, \mathrm{ReLU}(\mathrm{BN}(
        \mathrm{op}(\mathrm{ReLU}(\mathrm{BN}(W_1 x)))))\big)\Big)

    Args:
        channels: width of the input and output.
        operator: a name of :data:`OPERATORS`.
        options: the operator's options (default: :class:`OperatorOptions()`).

    Shapes:
        ``x (N, C), edge_index (2, E), pos (N, D), batch (N,)`` -> ``(N, C)``
    """

    def __init__(
        self, channels: int, operator: str, options: OperatorOptions | None = None
    ) -> None:
        super().__init__()
        self.operator = operator
        self.linear1 = nn.Linear(channels, channels, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.op = build_operator(operator, channels, options or OperatorOptions())
        self.bn2 = nn.BatchNorm1d(channels)
        self.linear2 = nn.Linear(channels, channels, bias=False)
        self.bn3 = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor, edge_index: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        h = self.bn1(self.linear1(x)).relu()  # (N, C)
        h = self.bn2(self.op(h, edge_index, pos, batch)).relu()  # (N, C)
        h = self.bn3(self.linear2(h))  # (N, C)
        return (x + h).relu()

    def extra_repr(self) -> str:
        return f"operator={self.operator!r}"

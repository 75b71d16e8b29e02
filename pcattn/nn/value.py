r"""Value transforms ``g``: what each source sends.

* :class:`LinearValue`: shared :math:`W x_j` (per node, gathered by the layer);
* :class:`IdentityValue`: :math:`x_j` itself;
* :class:`OffsetValue`: position-dependent :math:`W_{p_j - p_i} x_j`, one matrix per window
  offset; on a pixel grid with no normaliser this is ``conv2d``;
* :class:`AdditivePositionalValue`: :math:`W x_j + \rho_{ij}` (Point Transformer);
* :class:`SlotValue`: a learned value per memory slot (external attention).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Edges, ValueTransform

__all__ = ["LinearValue", "IdentityValue", "OffsetValue", "AdditivePositionalValue", "SlotValue"]


class LinearValue(ValueTransform):
    r""":math:`g(x_j) = W x_j (+ b)`, in ``heads`` contiguous heads of ``channels // heads``."""

    def __init__(self, in_channels: int, channels: int, *, heads: int = 1, bias: bool = False):
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads, self.channels = heads, channels // heads
        self.lin = nn.Linear(in_channels, channels, bias=bias)

    def node(self, x: Tensor) -> Tensor:
        return self.lin(x).view(x.size(0), self.heads, self.channels)  # (N, H, D)


class IdentityValue(ValueTransform):
    r""":math:`g(x_j) = x_j`, split into ``heads`` contiguous heads."""

    def __init__(self, channels: int, *, heads: int = 1):
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads, self.channels = heads, channels // heads

    def node(self, x: Tensor) -> Tensor:
        return x.view(x.size(0), self.heads, self.channels)  # (N, H, D)


class OffsetValue(ValueTransform):
    r"""Position-dependent value :math:`g_{ij} = W_{p_j - p_i} x_j`: one ``(C_out, C_in)``
    matrix per offset of a ``kernel_size`` window with the given ``dilation``.

    ``weight`` has ``conv2d``'s layout ``(C_out, C_in, kh, kw)`` (cross-correlation: offset
    ``(dy, dx)`` uses ``weight[:, :, dy / dilation + kh // 2, dx / dilation + kw // 2]``), so a
    convolution's weights copy across unchanged. The edge's offset comes from ``rel`` (the
    layer's ``rel_pos`` or integer ``pos``); offsets outside the window raise.
    """

    per_edge = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        dilation: int | tuple[int, int] = 1,
    ) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
        self.kernel_size = (kh, kw)
        self.heads, self.channels = 1, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def slot(self, rel: Tensor) -> Tensor:
        """Kernel slot ``(E,)`` of each edge's offset ``rel (E, 2)``."""
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        r = torch.round(rel).long() if rel.is_floating_point() else rel.long()
        ky, ry = torch.div(r[:, 0], dh, rounding_mode="floor") + kh // 2, r[:, 0] % dh
        kx, rx = torch.div(r[:, 1], dw, rounding_mode="floor") + kw // 2, r[:, 1] % dw
        bad = (ry != 0) | (rx != 0) | (ky < 0) | (ky >= kh) | (kx < 0) | (kx >= kw)
        if bool(bad.any()):
            e = int(torch.nonzero(bad)[0, 0])
            raise ValueError(
                f"edge {e} has offset {r[e].tolist()}, which is not a tap of the "
                f"{kh}x{kw} window with dilation {self.dilation}"
            )
        return ky * kw + kx  # (E,)

    def edge(self, x_src: Tensor, edges: Edges) -> Tensor:
        if edges.rel is None:
            raise ValueError("a position-dependent value needs pos or rel_pos (the edge offsets)")
        k = self.weight.size(2) * self.weight.size(3)
        w = self.weight.flatten(2).permute(1, 2, 0)  # (C_in, K, C_out)
        w = w.reshape(self.weight.size(1), -1)  # (C_in, K * C_out)
        y = (x_src @ w).view(x_src.size(0), k, -1)  # (N_src, K, C_out)
        return y[edges.src, self.slot(edges.rel)].unsqueeze(1)  # (E, 1, C_out)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}"


class AdditivePositionalValue(ValueTransform):
    r""":math:`g_{ij} = W x_j (+ b) + \rho_{ij}`, with :math:`\rho` the layer's positional
    encoding (Point Transformer's :math:`\alpha(x_j) + \delta_{ij}`)."""

    per_edge = True

    def __init__(self, in_channels: int, channels: int, *, bias: bool = True):
        super().__init__()
        self.heads, self.channels = 1, channels
        self.lin = nn.Linear(in_channels, channels, bias=bias)

    def edge(self, x_src: Tensor, edges: Edges) -> Tensor:
        if edges.pos_emb is None:
            raise ValueError("an additive positional value needs the layer's pos_encoding and pos")
        return (self.lin(x_src).index_select(0, edges.src) + edges.pos_emb).unsqueeze(
            1
        )  # (E, 1, C)


class SlotValue(ValueTransform):
    r"""A learned value per memory slot, :math:`g_k = M_v[k]`, shared by the heads (external
    attention's ``Linear(S, d, bias=False)``: ``memory.weight`` is ``(d, S)``). Source
    ``b * S + k`` is slot ``k`` (per-sample copies, :func:`pcattn.graphs.slot_graph`)."""

    per_edge = True

    def __init__(self, slots: int, channels: int, *, heads: int = 1):
        super().__init__()
        self.heads, self.channels = heads, channels
        self.memory = nn.Linear(slots, channels, bias=False)  # M_v, weight (d, S)

    def edge(self, x_src: Tensor | None, edges: Edges) -> Tensor:
        m = self.memory.weight.t()  # (S, d)
        v = m[edges.src % m.size(0)]  # (E, d)
        return v.unsqueeze(1).expand(-1, self.heads, -1)  # (E, H, d)

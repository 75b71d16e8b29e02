r"""SAN: pairwise and patchwise self-attention in local pixel windows (Zhao, Jia and Koltun,
CVPR 2020).

Both operators are vector attention on a ``k x k`` window with reflection-padded borders: a
border target may then receive the same (mirrored) source twice, and it counts twice, exactly
as in the reference's ``ReflectionPad2d`` / refpad kernels. Value channel ``c`` takes weight
channel ``c mod (C_mid / s)`` (interleaved sharing).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import shape_of
from ..graphs import grid_graph
from .attention import NodeAttention
from .base import Edges, Similarity
from .image import ImageNodes, check_image, check_nodes, is_image, to_image
from .normalize import NoNormalize, Softmax
from .similarity import VectorRelation
from .value import LinearValue

__all__ = ["SANPairwise", "SANPatchwise", "PatchRelation"]


def _check_common(
    in_channels: int, rel_channels: int, out_channels: int, kernel_size: int, share_planes: int
) -> None:
    for name, v in (
        ("in_channels", in_channels),
        ("rel_channels", rel_channels),
        ("out_channels", out_channels),
        ("share_planes", share_planes),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if out_channels % share_planes != 0:
        raise ValueError(
            f"out_channels ({out_channels}) must be divisible by share_planes ({share_planes})"
        )


def _pixel_coordinates(pos: Tensor, height: int, width: int, dtype: torch.dtype) -> Tensor:
    """SAN's position map: ``(linspace(-1, 1, W)[col], linspace(-1, 1, H)[row])`` per pixel."""
    lin_w = torch.linspace(-1.0, 1.0, width, dtype=dtype, device=pos.device)  # (W,)
    lin_h = torch.linspace(-1.0, 1.0, height, dtype=dtype, device=pos.device)  # (H,)
    return torch.stack([lin_w[pos[:, 1]], lin_h[pos[:, 0]]], 1)  # (N, 2)


class _RelativePosition(nn.Module):
    r""":math:`W_p p_i - W_p p_j = -W_p\, \mathrm{rel}` from ``rel = p_j - p_i``. SAN's 1x1
    position conv has a bias, which cancels in the difference, so none is kept."""

    def __init__(self, pos_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(pos_dim, 2, bias=False)  # W_p

    def forward(self, rel: Tensor) -> Tensor:
        return self.lin(-rel)  # (E, 2)


class SANPairwise(nn.Module):
    r"""Pairwise self-attention of `"Exploring Self-attention for Image Recognition"
    <https://arxiv.org/abs/2004.13621>`_ (SAN):

    .. math::
        y_i = \sum_{j \in \mathcal R(i)} m_{ij}\,
        \frac{e^{\gamma([\delta(x_i, x_j);\, W_p(p_i - p_j)])_{\pi(c)}}}{C_{i, \pi(c)}}
        \, \beta(x_j)_c, \qquad \pi(c) = c \bmod (C_{mid} / s)

    :math:`\mathcal N(i) = \mathcal R(i)` is the ``k x k`` window around pixel ``i`` with
    reflection padding (a mirrored source counts :math:`m_{ij}` times), ``f`` is the vector
    :math:`e^{\gamma(\cdot)}` with :math:`C_{mid}/s` channels, ``C`` is the per-channel softmax
    over the window, and ``g`` is :math:`\beta`, a 1x1 conv ``C -> C_mid``; no post-op.

    * :math:`\delta`: ``"subtraction"`` :math:`\varphi(x_i) - \psi(x_j)` (the reference code's
      only relation, centre minus neighbour), ``"sum"`` :math:`\varphi(x_i) + \psi(x_j)`,
      ``"hadamard"`` :math:`\varphi(x_i) \odot \psi(x_j)`, ``"concat"``
      :math:`[\varphi(x_i); \psi(x_j)]`; :math:`\varphi, \psi` are 1x1 convs ``C -> C_rel``
      with bias. The paper's scalar dot-product relation is not offered (it is a plain
      embedded-Gaussian window attention).
    * position: the reference's 2-channel map ``(linspace(-1, 1, W), linspace(-1, 1, H))``
      through a 1x1 conv ``2 -> 2``; only :math:`W_p (p_i - p_j)` enters, so the conv's bias
      (which cancels) is not kept. A mirrored source has the position of the pixel it mirrors.
    * :math:`\gamma` = BN - ReLU - Lin(``C_rel + 2 -> C_rel``, no bias) - BN - ReLU -
      Lin(``C_rel -> C_mid / s``); with ``"concat"`` its input is ``2 C_rel + 2`` wide. The
      BNs normalise over all edges (the reference's ``BatchNorm2d`` over
      ``(B, C, k^2, H W)``).

    Follows the reference code (hszhao/SAN ``SAM`` with ``sa_type=0``): stride 1, no dilation.

    Args:
        in_channels: input width ``C``.
        rel_channels: width ``C_rel`` of :math:`\varphi, \psi` (SAN: ``planes / 16``).
        out_channels: output width ``C_mid`` (SAN: ``planes / 4``).
        kernel_size: odd window size ``k`` of the image path (default: ``7``).
        share_planes: ``s``, value channels per weight channel (default: ``8``).
        relation: :math:`\delta` (default: ``"subtraction"``).
        padding: window taps outside the image: ``"reflect"`` (default, SAN) mirrors them;
            ``"mask"`` drops them (truncated border windows).
        pos_dim: position dimension of the node path (default: ``2``; images use 2).

    Shapes:
        - **x:** ``(N, C)`` with ``edge_index (2, E)`` and ``pos (N, pos_dim)``, or an image
          ``(B, C, H, W)``
        - **output:** ``(N, C_mid)`` or ``(B, C_mid, H, W)``
    """

    def __init__(
        self,
        in_channels: int,
        rel_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 7,
        share_planes: int = 8,
        relation: str = "subtraction",
        padding: str = "reflect",
        pos_dim: int = 2,
    ) -> None:
        super().__init__()
        _check_common(in_channels, rel_channels, out_channels, kernel_size, share_planes)
        if relation not in ("subtraction", "sum", "hadamard", "concat"):
            raise ValueError(
                f"relation must be 'subtraction', 'sum', 'hadamard' or 'concat', got {relation!r}"
            )
        if padding not in ("reflect", "mask"):
            raise ValueError(f"padding must be 'reflect' or 'mask', got {padding!r}")
        if isinstance(pos_dim, bool) or not isinstance(pos_dim, int) or pos_dim < 1:
            raise ValueError(f"pos_dim must be a positive int, got {pos_dim!r}")
        self.in_channels, self.rel_channels, self.out_channels = (
            in_channels,
            rel_channels,
            out_channels,
        )
        self.kernel_size, self.share_planes = kernel_size, share_planes
        self.relation, self.padding, self.pos_dim = relation, padding, pos_dim
        weights = out_channels // share_planes  # C_f = C_mid / s
        width = (2 if relation == "concat" else 1) * rel_channels + 2
        gamma = nn.Sequential(
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Linear(width, rel_channels, bias=False),
            nn.BatchNorm1d(rel_channels),
            nn.ReLU(),
            nn.Linear(rel_channels, weights),
        )
        similarity = VectorRelation(
            in_channels,
            rel_channels,
            weights,
            relation=relation,
            order="query_minus_key",
            pos="concat",
            pos_channels=2,
            mapping=gamma,
            share="interleaved",
        )
        self.attn = NodeAttention(
            in_channels,
            out_channels,
            similarity=similarity,
            normalize=Softmax(),
            value=LinearValue(in_channels, out_channels, bias=True),  # beta
            pos_encoding=_RelativePosition(pos_dim),
            bias=False,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""PyTorch's default initialisation of every conv / BN (as the reference)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.BatchNorm1d)):
                m.reset_parameters()

    def _inputs(
        self, x: Tensor, edge_index: Tensor | None, pos: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, ImageNodes | None]:
        name = type(self).__name__
        if is_image(x):
            nodes = check_image(x, self.in_channels, self)
            edge_index, _ = grid_graph(
                nodes.height,
                nodes.width,
                self.kernel_size,
                padding=self.padding,
                batch_size=nodes.batch_size,
                device=x.device,
            )
            pos = _pixel_coordinates(nodes.pos, nodes.height, nodes.width, x.dtype)  # (N, 2)
            return nodes.x, edge_index, pos, nodes
        check_nodes(x, self.in_channels, self)
        if edge_index is None:
            raise ValueError(f"{name}: edge_index is required for node features (N, C)")
        if pos is None:
            raise ValueError(f"{name}: pos (N, {self.pos_dim}) is required for node features")
        if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.size(1) != self.pos_dim:
            got = shape_of(pos)
            raise ValueError(f"{name}: pos must be (N, {self.pos_dim}), got {got}")
        return x, edge_index, pos.to(x.dtype), None

    def forward(
        self, x: Tensor, edge_index: Tensor | None = None, pos: Tensor | None = None
    ) -> Tensor:
        r"""Attend within each window (image) or over ``edge_index`` (nodes).

        Args:
            x: an image ``(B, C, H, W)`` (the window graph and positions are built here), or
                node features ``(N, C)``.
            edge_index: ``(2, E)`` neighbourhoods of the node path (``grid_graph``, kNN, ...).
            pos: ``(N, pos_dim)`` positions of the node path.
        """
        x_n, ei, p, nodes = self._inputs(x, edge_index, pos)
        if x_n.size(0) == 0:  # no nodes: the core cannot view (0, -1)
            return x_n.new_zeros(0, self.out_channels)
        y = self.attn(x_n, ei, p)  # (N, C_mid)
        return y if nodes is None else to_image(y, nodes)

    def attention_weights(
        self, x: Tensor, edge_index: Tensor | None = None, pos: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (E, 1, C_mid / s))``: the per-channel softmax weights of
        every edge (for an image, of the window graph built for it)."""
        x_n, ei, p, _ = self._inputs(x, edge_index, pos)
        return self.attn.attention_weights(x_n, ei, p)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.rel_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, share_planes={self.share_planes}, "
            f"relation={self.relation!r}, padding={self.padding!r}"
        )


class PatchRelation(Similarity):
    r"""SAN's patchwise weights, a set function of the whole patch:
    :math:`w_i = \gamma([\varphi(x_i);\, \psi(x_j)\ \forall j \in \mathcal R(i)])
    \in \mathbb R^{k^2 \times C_f}`, slot ``t`` of the patch getting row ``t``.

    The edges must be sorted by target with exactly ``patch_size`` edges per target, in a fixed
    slot order (what :func:`~pcattn.graphs.grid_graph` returns with ``padding="reflect"``: the
    window taps in row-major order; a kNN graph gives its neighbours by distance). The
    concatenation and the output follow the reference's layout: :math:`\psi` channel ``c`` of
    slot ``t`` is input ``C_rel + c k^2 + t`` of :math:`\gamma`, and weight channel ``c'`` of slot
    ``t`` is its output ``c' k^2 + t``.

    :math:`\gamma` = BN - ReLU - Lin(``C_rel (k^2 + 1) -> C_f``, no bias) - BN - ReLU -
    Lin(``C_f -> k^2 C_f``), the BNs over targets.

    Args:
        in_channels: input width ``C``.
        rel_channels: width ``C_rel`` of :math:`\varphi, \psi` (1x1 convs with bias).
        logit_channels: weight channels ``C_f`` per slot.
        patch_size: number of slots ``k^2``.
    """

    share = "interleaved"

    def __init__(
        self, in_channels: int, rel_channels: int, logit_channels: int, patch_size: int
    ) -> None:
        super().__init__()
        self.logit_channels, self.patch_size = logit_channels, patch_size
        self.query = nn.Linear(in_channels, rel_channels)  # varphi
        self.key = nn.Linear(in_channels, rel_channels)  # psi
        width = rel_channels * (patch_size + 1)
        self.mapping = nn.Sequential(
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Linear(width, logit_channels, bias=False),
            nn.BatchNorm1d(logit_channels),
            nn.ReLU(),
            nn.Linear(logit_channels, patch_size * logit_channels),
        )

    def forward(self, x_dst: Tensor, x_src: Tensor, edges: Edges) -> Tensor:
        n, k, cf = edges.num_dst, self.patch_size, self.logit_channels
        expected = torch.arange(n, device=edges.dst.device).repeat_interleave(k)  # (N_dst k,)
        if edges.dst.shape != expected.shape or not torch.equal(edges.dst, expected):
            raise ValueError(
                f"edge_index must be sorted by target with exactly {k} edges per target "
                f"(patch_size = kernel_size ** 2) for the patchwise relation"
            )
        q = self.query(x_dst)  # (N_dst, C_rel)
        kj = self.key(x_src).index_select(0, edges.src).view(n, k, -1)  # (N_dst, k^2, C_rel)
        kj = kj.transpose(1, 2).reshape(n, -1)  # (N_dst, C_rel k^2), channel-major
        w = self.mapping(torch.cat([q, kj], 1))  # (N_dst, C_f k^2)
        w = w.view(n, cf, k).transpose(1, 2)  # (N_dst, k^2, C_f)
        return w.reshape(n * k, 1, cf)  # (E, 1, C_f)

    def extra_repr(self) -> str:
        return f"logit_channels={self.logit_channels}, patch_size={self.patch_size}"


class SANPatchwise(nn.Module):
    r"""Patchwise self-attention of `"Exploring Self-attention for Image Recognition"
    <https://arxiv.org/abs/2004.13621>`_ (SAN):

    .. math::
        y_i = \sum_{j \in \mathcal R(i)} m_{ij}\,
        \gamma\big([\varphi(x_i);\, \psi(x_{j'})\ \forall j' \in \mathcal R(i)]\big)_{j, \pi(c)}
        \, \beta(x_j)_c, \qquad \pi(c) = c \bmod (C_{mid} / s)

    :math:`\mathcal N(i) = \mathcal R(i)` is the ``k x k`` reflection-padded window (``k^2``
    slots, a mirrored source once per slot it fills), ``f`` is the weight vector of ``j``'s
    slot, computed from the whole patch (:class:`PatchRelation`), ``C_i = 1`` and ``g`` is
    :math:`\beta`, a 1x1 conv ``C -> C_mid``; no post-op.

    Follows the reference code (hszhao/SAN ``SAM`` with ``sa_type=1``), which applies **no
    softmax** (no normalisation at all) to the patchwise weights. Stride 1, no dilation.

    In the node path the edges must be sorted by target with exactly ``kernel_size ** 2`` edges
    per target, in the slot order the weights are learned for.

    Args:
        in_channels: input width ``C``.
        rel_channels: width ``C_rel`` of :math:`\varphi, \psi`.
        out_channels: output width ``C_mid``.
        kernel_size: odd window size ``k`` (default: ``7``).
        share_planes: ``s`` (default: ``8``).
        padding: only ``"reflect"`` (default), which keeps ``k^2`` slots per target.

    Shapes:
        - **x:** ``(N, C)`` with target-sorted ``edge_index (2, N k^2)``, or an image
          ``(B, C, H, W)``
        - **output:** ``(N, C_mid)`` or ``(B, C_mid, H, W)``
    """

    def __init__(
        self,
        in_channels: int,
        rel_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 7,
        share_planes: int = 8,
        padding: str = "reflect",
    ) -> None:
        super().__init__()
        _check_common(in_channels, rel_channels, out_channels, kernel_size, share_planes)
        if padding != "reflect":
            raise ValueError(
                f"padding must be 'reflect' (every target needs all k*k slots), got {padding!r}"
            )
        self.in_channels, self.rel_channels, self.out_channels = (
            in_channels,
            rel_channels,
            out_channels,
        )
        self.kernel_size, self.share_planes, self.padding = kernel_size, share_planes, padding
        similarity = PatchRelation(
            in_channels, rel_channels, out_channels // share_planes, kernel_size**2
        )
        self.attn = NodeAttention(
            in_channels,
            out_channels,
            similarity=similarity,
            normalize=NoNormalize(),
            value=LinearValue(in_channels, out_channels, bias=True),  # beta
            bias=False,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""PyTorch's default initialisation of every conv / BN (as the reference)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.BatchNorm1d)):
                m.reset_parameters()

    def _inputs(
        self, x: Tensor, edge_index: Tensor | None
    ) -> tuple[Tensor, Tensor, ImageNodes | None]:
        name = type(self).__name__
        if is_image(x):
            nodes = check_image(x, self.in_channels, self)
            edge_index, _ = grid_graph(
                nodes.height,
                nodes.width,
                self.kernel_size,
                padding="reflect",
                batch_size=nodes.batch_size,
                device=x.device,
            )
            return nodes.x, edge_index, nodes
        check_nodes(x, self.in_channels, self)
        if edge_index is None:
            raise ValueError(f"{name}: edge_index is required for node features (N, C)")
        return x, edge_index, None

    def forward(self, x: Tensor, edge_index: Tensor | None = None) -> Tensor:
        r"""Weight each window slot by the patch relation and sum.

        Args:
            x: an image ``(B, C, H, W)`` or node features ``(N, C)``.
            edge_index: ``(2, N k^2)`` target-sorted patches of the node path.
        """
        x_n, ei, nodes = self._inputs(x, edge_index)
        if x_n.size(0) == 0:  # no nodes: the core cannot view (0, -1)
            return x_n.new_zeros(0, self.out_channels)
        y = self.attn(x_n, ei)  # (N, C_mid)
        return y if nodes is None else to_image(y, nodes)

    def attention_weights(
        self, x: Tensor, edge_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (E, 1, C_mid / s))``: the (unnormalised) weight of every
        slot."""
        x_n, ei, _ = self._inputs(x, edge_index)
        return self.attn.attention_weights(x_n, ei)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.rel_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, share_planes={self.share_planes}"
        )

r"""Convolution and attention on pixel grids: the convolution as message passing
(:class:`GridConv`), multi-head attention that can express it (Cordonnier et al. 2020,
:class:`ConvAttention`) and stand-alone local self-attention (Ramachandran et al. 2019,
:class:`LocalSelfAttention`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_positive_int, shape_of
from ..graphs import full_graph, grid_graph
from .attention import NodeAttention
from .base import Edges, Similarity
from .image import check_image, image_nodes, is_image, to_image
from .similarity import EdgeWeight, RelativeQuadratic
from .value import LinearValue, OffsetValue

__all__ = ["GridConv", "ConvAttention", "LocalSelfAttention"]

Pair = Tensor | tuple[Tensor | None, Tensor]


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    for t in (a, b):
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return a, b


def _odd(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    k = _pair(v, name)
    if k[0] % 2 == 0 or k[1] % 2 == 0:
        raise ValueError(f"{name} must be odd, got {v!r}")
    return k


def _needs_edges(layer: nn.Module, x: object) -> ValueError:
    return ValueError(
        f"{type(layer).__name__}: edge_index is required for nodes x (N, C); x must be an "
        f"image (B, C, H, W) otherwise, got {shape_of(x)}"
    )


def _check_conv2d(conv: nn.Module, what: str, *, square: bool, dilation: bool) -> None:
    """Raise a ValueError naming the first attribute of ``conv`` that ``what`` cannot copy."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    kh, kw = conv.kernel_size
    if kh % 2 == 0 or kw % 2 == 0 or (square and kh != kw):
        shape = "an odd square" if square else "an odd"
        raise ValueError(f"{what} needs {shape} kernel_size, got {conv.kernel_size}")
    if conv.stride != (1, 1):
        raise ValueError(f"{what} needs stride 1, got stride={conv.stride}")
    if not dilation and conv.dilation != (1, 1):
        raise ValueError(f"{what} needs dilation 1, got dilation={conv.dilation}")
    if conv.groups != 1:
        raise ValueError(f"{what} needs groups=1, got groups={conv.groups}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"{what} needs padding_mode='zeros', got {conv.padding_mode!r}")
    same = (conv.dilation[0] * (kh // 2), conv.dilation[1] * (kw // 2))
    if conv.padding != "same" and tuple(conv.padding) != same:
        raise ValueError(
            f"{what} needs the 'same' zero padding {same} (dilation * (kernel_size // 2)), "
            f"got padding={conv.padding}"
        )


# ---------------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------------


class GridConv(nn.Module):
    r"""A 2-D convolution written as message passing over pixel windows (the convolution path
    of Cordonnier et al., `"On the Relationship between Self-Attention and Convolutional
    Layers" <https://arxiv.org/abs/1911.03584>`_):

    .. math::
        y_i = \frac{1}{C_i} \sum_{j \in \mathcal N(i)} f_{ij}\, W_{p_j - p_i} x_j + b,
        \qquad f_{ij} = 1,\; C_i = 1.

    :math:`\mathcal N(i)` is the ``kernel_size`` window around pixel ``i`` (taps outside the
    image have no edge, i.e. zero padding), ``f`` is 1, ``C`` is 1 and
    :math:`g_{ij} = W_{p_j - p_i} x_j` uses the weight matrix of the tap at offset
    :math:`p_j - p_i`. ``weight`` has :func:`torch.nn.functional.conv2d`'s layout (cross
    correlation), so on an image this is ``conv2d`` with stride 1 and 'same' zero padding.

    Args:
        in_channels: input width.
        out_channels: output width.
        kernel_size: odd window size, int or ``(kh, kw)`` (default: ``3``).
        dilation: spacing of the taps (default: ``1``).
        bias: learn an output bias (default: ``True``).

    Shapes:
        - **image mode:** ``x (B, C_in, H, W)`` -> ``(B, C_out, H, W)``
        - **node mode:** ``x (N, C_in)``, ``edge_index (2, E)`` and the integer offsets
          ``rel_pos (E, 2)`` (or ``pos``) of :func:`pcattn.graphs.grid_graph` -> ``(N, C_out)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        *,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = _odd(kernel_size, "kernel_size")
        self.dilation = _pair(dilation, "dilation")
        self.attention = NodeAttention(
            in_channels,
            out_channels,
            similarity=EdgeWeight(),
            normalize="none",
            value=OffsetValue(in_channels, out_channels, self.kernel_size, dilation=self.dilation),
            bias=bias,
        )
        self.reset_parameters()

    @property
    def weight(self) -> Tensor:
        """The ``(C_out, C_in, kh, kw)`` kernel."""
        return self.attention.value.weight

    def reset_parameters(self) -> None:
        # conv2d's default initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.attention.bias is not None:
            bound = 1.0 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.attention.bias, -bound, bound)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> GridConv:
        r"""A :class:`GridConv` with the weights of ``conv`` (odd kernel, stride 1, groups 1,
        'same' zero padding; any dilation)."""
        _check_conv2d(conv, "GridConv.from_conv2d", square=False, dilation=True)
        m = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            dilation=conv.dilation,
            bias=conv.bias is not None,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(conv.weight)
            if conv.bias is not None:
                m.attention.bias.copy_(conv.bias)
        return m

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor | None = None,
        pos: Tensor | None = None,
        *,
        rel_pos: Tensor | None = None,
    ) -> Tensor:
        r"""Convolve an image ``(B, C, H, W)``, or nodes ``(N, C)`` over ``edge_index`` with
        per-edge offsets ``rel_pos`` (or integer ``pos``)."""
        if is_image(x):
            nodes = check_image(x, self.in_channels, self)
            ei, off = grid_graph(
                nodes.height,
                nodes.width,
                self.kernel_size,
                self.dilation,
                "mask",
                batch_size=nodes.batch_size,
                device=x.device,
            )
            return to_image(self.attention(nodes.x, ei, rel_pos=off), nodes)
        if edge_index is None:
            raise _needs_edges(self, x)
        return self.attention(x, edge_index, pos, rel_pos=rel_pos)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}"
        )


# ---------------------------------------------------------------------------------------------
# attention that can express a convolution
# ---------------------------------------------------------------------------------------------


class ConvAttention(nn.Module):
    r"""Multi-head self-attention with the quadratic relative encoding of Cordonnier et al.,
    `"On the Relationship between Self-Attention and Convolutional Layers"
    <https://arxiv.org/abs/1911.03584>`_ (ICLR 2020), which can express any
    :math:`K \times K` convolution with :math:`K^2` heads:

    .. math::
        y^h_i = \frac{1}{C^h_i} \sum_{j \in \mathcal N(i)}
            e^{-\alpha_h \|(p_j - p_i) - \Delta_h\|^2}\, W^{(h)}_{val} x_j,
        \qquad z_i = W_{out} [y^1_i \| \dots \| y^{K^2}_i] + b_{out}.

    :math:`\mathcal N(i)` is every pixel of ``i``'s image (the full graph), ``f`` depends on
    the position only (:class:`~pcattn.nn.RelativeQuadratic`: the logit
    :math:`-\alpha_h(\|\delta\|^2 - 2\Delta_h^\top\delta)` differs from the one above by a
    constant of ``h`` that the softmax cancels), ``C`` is the softmax sum over all pixels and
    :math:`g = W^{(h)}_{val}`, a linear value per head, followed by :math:`W_{out}`.
    Head :math:`h = (\Delta_1 + P) K + (\Delta_2 + P)` starts at shift
    :math:`\Delta_h \in \{-P..P\}^2` (:math:`P = \lfloor K/2 \rfloor`, :math:`\Delta_1`
    along rows) and every head starts with the same :math:`\alpha`; as
    :math:`\alpha \to \infty` head ``h`` attends to the single pixel :math:`p_i + \Delta_h`.
    Shifts and :math:`\alpha` are learnable.

    :meth:`from_conv2d` builds the paper's construction (proof of its Theorem 1, "option A"):
    :math:`W^{(h)}_{val} = W_{\Delta_h}` (head width :math:`D_h = C_{out}`),
    :math:`W_{out} = [I; \dots; I]` and :math:`b_{out} = b`, which reproduces the convolution
    up to :math:`O(e^{-\alpha})`. For images, ``padding="zeros"`` pads the image with
    :math:`P` zero pixels that take part as keys and reads out the central :math:`H \times W`
    queries, which reproduces a zero-padded convolution; ``padding="none"`` attends over the
    image pixels only (as the paper's experiments; a convolution is then matched in the
    interior only). The graph is dense: an image has :math:`HW (H + 2P)(W + 2P)` edges, and
    the cost is :math:`O(N^2 K^2 (1 + D_h) + N D_{in} K^2 D_h)`.

    Args:
        in_channels: input width :math:`D_{in}`.
        out_channels: output width :math:`D_{out}`.
        kernel_size: odd :math:`K`, giving :math:`K^2` heads (default: ``3``).
        alpha: initial :math:`\alpha` of every head (default: ``1.0``).
        head_channels: :math:`D_h` (default: ``out_channels``, as in the construction).
        padding: ``"zeros"`` or ``"none"`` for images (default: ``"zeros"``).
        bias: :math:`b_{out}` (default: ``True``).

    Shapes:
        - **image mode:** ``x (B, D_in, H, W)`` -> ``(B, D_out, H, W)``
        - **node mode:** ``x (N, D_in)`` (or ``(x_src, x_dst)``), ``edge_index (2, E)`` and
          2-D ``pos`` (or per-edge ``rel_pos = p_j - p_i``) -> ``(N_dst, D_out)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        alpha: float = 1.0,
        head_channels: int | None = None,
        padding: str = "zeros",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        k = check_positive_int(kernel_size, "kernel_size")
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        d = out_channels
        if head_channels is not None:
            d = check_positive_int(head_channels, "head_channels")
        if padding not in ("zeros", "none"):
            raise ValueError(f"padding must be 'zeros' or 'none', got {padding!r}")
        self.kernel_size, self.head_channels, self.padding = k, d, padding
        self.heads = h = k * k
        self.alpha_init = float(alpha)
        self.attention = NodeAttention(
            in_channels,
            h * d,
            similarity=RelativeQuadratic(h, dim=2, alpha=alpha, centers=self._shifts()),
            normalize="softmax",
            value=LinearValue(in_channels, h * d, heads=h),
            heads=h,
            bias=False,
        )
        self.out_proj = nn.Linear(h * d, out_channels, bias=bias)  # W_out, b_out
        self.reset_parameters()

    def _shifts(self) -> Tensor:
        p = self.kernel_size // 2
        r = torch.arange(-p, p + 1, dtype=torch.float64)
        return torch.cartesian_prod(r, r)  # (K*K, 2), head h = (d1 + P) K + (d2 + P)

    def reset_parameters(self) -> None:
        sim = self.attention.similarity
        with torch.no_grad():
            sim.alpha.fill_(self.alpha_init)
            sim.centers.copy_(self._shifts())
        self.attention.value.lin.reset_parameters()
        self.out_proj.reset_parameters()

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, alpha: float) -> ConvAttention:
        r"""The attention layer reproducing ``conv`` (odd square kernel, stride 1, dilation 1,
        groups 1, zero padding ``kernel_size // 2``) up to :math:`O(e^{-\alpha})`."""
        _check_conv2d(conv, "ConvAttention.from_conv2d", square=True, dilation=False)
        k = conv.kernel_size[0]
        c_out = conv.out_channels
        m = cls(
            conv.in_channels,
            c_out,
            kernel_size=k,
            alpha=alpha,
            padding="zeros",
            bias=conv.bias is not None,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            # head h = a K + b takes tap (a, b): rows [h D_out, (h + 1) D_out) of W_val
            w_val = conv.weight.permute(2, 3, 0, 1).reshape(k * k * c_out, -1)  # (K*K*D_out, D_in)
            m.attention.value.lin.weight.copy_(w_val)
            eye = torch.eye(c_out, dtype=conv.weight.dtype, device=conv.weight.device)
            m.out_proj.weight.copy_(eye.repeat(1, k * k))  # (D_out, K*K*D_out)
            if conv.bias is not None:
                m.out_proj.bias.copy_(conv.bias)
        return m

    def forward(
        self,
        x: Pair,
        edge_index: Tensor | None = None,
        pos: Pair | None = None,
        *,
        rel_pos: Tensor | None = None,
    ) -> Tensor:
        r"""Attend over a whole image ``(B, C, H, W)``, or over ``edge_index`` between nodes
        with 2-D positions."""
        if is_image(x):
            return self._image(x)[0]
        if edge_index is None:
            raise _needs_edges(self, x)
        return self.out_proj(self.attention(x, edge_index, pos, rel_pos=rel_pos))

    def attention_weights(
        self,
        x: Pair,
        edge_index: Tensor | None = None,
        pos: Pair | None = None,
        *,
        rel_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (E, K*K))``. For an image the sources index the nodes of the
        padded image ``(B, C, H + 2P, W + 2P)`` and the targets the ``B * H * W`` pixels."""
        if is_image(x):
            return self._image(x, weights=True)
        if edge_index is None:
            raise _needs_edges(self, x)
        return self.attention.attention_weights(x, edge_index, pos, rel_pos=rel_pos)

    def _image(self, img: Tensor, weights: bool = False) -> tuple[Tensor, ...]:
        p = self.kernel_size // 2 if self.padding == "zeros" else 0
        dst = check_image(img, self.in_channels, self)
        src = image_nodes(F.pad(img, (p, p, p, p)))  # (B, C, H+2P, W+2P) as nodes
        ei = full_graph(src.batch, batch_dst=dst.batch)  # padded pixels -> pixels, per image
        pos = (src.pos, dst.pos + p)  # padded-grid coordinates of sources and targets
        if weights:
            return self.attention.attention_weights((src.x, dst.x), ei, pos)
        y = self.attention((src.x, dst.x), ei, pos)  # (B*H*W, K*K*D_h)
        return (to_image(self.out_proj(y), dst),)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"heads={self.heads}, head_channels={self.head_channels}, padding={self.padding!r}"
        )


# ---------------------------------------------------------------------------------------------
# stand-alone self-attention
# ---------------------------------------------------------------------------------------------


class _RelativeDotProduct(Similarity):
    r"""SASA's logit per head, :math:`s^h_{ij} = q^{h\top}_i (k^h_j + r^h_{p_j - p_i})` with
    :math:`r^h_{(a, b)} = [r^{h,row}_a; r^{h,col}_b]`, each half :math:`d/2` wide."""

    needs_rel = True

    def __init__(self, in_channels: int, out_channels: int, heads: int, kernel_size: int):
        super().__init__()
        self.heads, self.kernel_size = heads, kernel_size
        half = out_channels // heads // 2
        self.query = nn.Linear(in_channels, out_channels, bias=False)  # W_Q
        self.key = nn.Linear(in_channels, out_channels, bias=False)  # W_K
        self.rel_row = nn.Parameter(torch.empty(kernel_size, heads, half))  # r^row, (K, H, d/2)
        self.rel_col = nn.Parameter(torch.empty(kernel_size, heads, half))  # r^col, (K, H, d/2)

    def forward(self, x_dst: Tensor, x_src: Tensor, edges: Edges) -> Tensor:
        h, p = self.heads, self.kernel_size // 2
        q = self.query(x_dst).view(x_dst.size(0), h, -1)  # (N_dst, H, d)
        k = self.key(x_src).view(x_src.size(0), h, -1)  # (N_src, H, d)
        rel = torch.round(edges.rel).long() if edges.rel.is_floating_point() else edges.rel
        off = rel.long() + p  # (E, 2) window slots (row, col)
        bad = ((off < 0) | (off >= self.kernel_size)).any(1)
        if bool(bad.any()):
            e = int(torch.nonzero(bad)[0, 0])
            raise ValueError(
                f"edge {e} has offset {rel[e].tolist()}, outside the "
                f"{self.kernel_size}x{self.kernel_size} window"
            )
        half = self.rel_row.size(-1)
        q_row = torch.einsum("nhc,khc->nhk", q[..., :half], self.rel_row)  # (N_dst, H, K)
        q_col = torch.einsum("nhc,khc->nhk", q[..., half:], self.rel_col)  # (N_dst, H, K)
        s = (q.index_select(0, edges.dst) * k.index_select(0, edges.src)).sum(-1)  # (E, H): content
        return s + q_row[edges.dst, :, off[:, 0]] + q_col[edges.dst, :, off[:, 1]]  # (E, H)


class LocalSelfAttention(nn.Module):
    r"""Stand-alone local self-attention (SASA) from `"Stand-Alone Self-Attention in Vision
    Models" <https://arxiv.org/abs/1906.05909>`_ (Ramachandran et al., NeurIPS 2019):

    .. math::
        y^h_i = \frac{1}{C^h_i} \sum_{j \in \mathcal N_k(i)}
            \exp\!\big(q^{h\top}_i (k^h_j + r^h_{p_j - p_i})\big)\, v^h_j,

    with :math:`q = W_Q x_i`, :math:`k = W_K x_j`, :math:`v = W_V x_j` (1x1, no bias), heads
    of :math:`d = d_{out} / H` contiguous channels and the relative embedding
    :math:`r^h_{(a, b)} = [r^{h,row}_a; r^{h,col}_b]` of the offset :math:`(a, b) = p_j - p_i`
    (row and column halves of :math:`d/2` each, learned per offset). :math:`\mathcal N_k(i)`
    is the :math:`k \times k` window around ``i``, ``f`` the exponential of the scalar logit
    per head above (no :math:`\sqrt d` scaling, as in the paper), ``C`` the softmax sum over
    the window and :math:`g = W_V`.

    Borders: ``padding="mask"`` drops window taps outside the image (no edge);
    ``padding="zeros"`` is the reference code's behaviour: the input is zero-padded *before*
    the projections, so outside taps are keys with :math:`k = v = 0` that still get the
    weight :math:`e^{q^\top r}` (edges from a zero node, :func:`pcattn.graphs.grid_graph`
    ``padding="zeros"``).

    Differences from the PyTorch reference code (leaderj1001/Stand-Alone-Self-Attention),
    which the spec asks to follow the paper on: the reference takes a separate softmax per
    channel (vector attention); here the logit of a head is the sum over its channels.
    The reference splits :math:`r` into a row half and a column half *before* the head split
    (so with several heads some heads see only row offsets); here, as in the paper's per-head
    single-headed attention, every head has its own row and column halves. The paper also
    splits the *input* channels into groups per head (block-diagonal projections); here the
    projections are full :math:`d_{in} \to d_{out}` maps as in the reference (a superset).
    Initialisation follows the reference: He-normal (fan-out) projections, :math:`r \sim
    \mathcal N(0, 1)`.

    Args:
        in_channels: :math:`d_{in}`.
        out_channels: :math:`d_{out}`, divisible by ``2 * heads``.
        kernel_size: odd window size :math:`k` (default: ``7``).
        heads: number of heads (default: ``8``).
        padding: ``"mask"`` or ``"zeros"`` (default: ``"mask"``).

    Shapes:
        - **image mode:** ``x (B, d_in, H, W)`` -> ``(B, d_out, H, W)``
        - **node mode:** ``x (N, d_in)`` (or ``(x_src, x_dst)``, e.g. with an appended zero
          node for ``"zeros"`` padding), ``edge_index (2, E)`` and the integer window offsets
          ``rel_pos (E, 2)`` (or ``pos``) -> ``(N_dst, d_out)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 7,
        heads: int = 8,
        padding: str = "mask",
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.heads = check_positive_int(heads, "heads")
        k = check_positive_int(kernel_size, "kernel_size")
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if out_channels % (2 * heads) != 0:
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by 2 * heads ({2 * heads}): "
                "each head splits its relative embedding into a row and a column half"
            )
        if padding not in ("mask", "zeros"):
            raise ValueError(f"padding must be 'mask' or 'zeros', got {padding!r}")
        self.kernel_size, self.padding = k, padding
        self.attention = NodeAttention(
            in_channels,
            out_channels,
            similarity=_RelativeDotProduct(in_channels, out_channels, heads, k),
            normalize="softmax",
            value=LinearValue(in_channels, out_channels, heads=heads, bias=False),
            heads=heads,
            bias=False,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        sim = self.attention.similarity
        for lin in (sim.query, sim.key, self.attention.value.lin):
            nn.init.kaiming_normal_(lin.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(sim.rel_row)
        nn.init.normal_(sim.rel_col)

    def forward(
        self,
        x: Pair,
        edge_index: Tensor | None = None,
        pos: Pair | None = None,
        *,
        rel_pos: Tensor | None = None,
    ) -> Tensor:
        r"""Attend over the ``k x k`` window of every pixel of an image ``(B, C, H, W)``, or
        over ``edge_index`` with integer window offsets ``rel_pos`` (or ``pos``)."""
        if is_image(x):
            return self._image(x)[0]
        if edge_index is None:
            raise _needs_edges(self, x)
        return self.attention(x, edge_index, pos, rel_pos=rel_pos)

    def attention_weights(
        self,
        x: Pair,
        edge_index: Tensor | None = None,
        pos: Pair | None = None,
        *,
        rel_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (E, H))``; for an image, the edges of
        :func:`pcattn.graphs.grid_graph` (with ``padding="zeros"`` the padding node is
        ``B * H * W``)."""
        if is_image(x):
            return self._image(x, weights=True)
        if edge_index is None:
            raise _needs_edges(self, x)
        return self.attention.attention_weights(x, edge_index, pos, rel_pos=rel_pos)

    def _image(self, img: Tensor, weights: bool = False) -> tuple[Tensor, ...]:
        nodes = check_image(img, self.in_channels, self)
        ei, off = grid_graph(
            nodes.height,
            nodes.width,
            self.kernel_size,
            1,
            self.padding,
            batch_size=nodes.batch_size,
            device=img.device,
        )
        x: Pair = nodes.x
        if self.padding == "zeros":
            x = (torch.cat([nodes.x, nodes.x.new_zeros(1, nodes.x.size(1))]), nodes.x)
        if weights:
            return self.attention.attention_weights(x, ei, rel_pos=off)
        return (to_image(self.attention(x, ei, rel_pos=off), nodes),)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"heads={self.heads}, padding={self.padding!r}"
        )

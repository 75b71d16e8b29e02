r"""Non-local block (Wang, Girshick, Gupta, He, CVPR 2018) as message passing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_positive_int, shape_of
from ..graphs import full_graph
from ..ops import scatter
from .attention import NodeAttention
from .base import Edges, Similarity, ValueTransform
from .image import ImageNodes, check_image, check_nodes, is_image, to_image

__all__ = ["NonLocalBlock"]

_MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")


class _PairwiseScore(Similarity):
    r"""The pairwise function of a non-local block on already projected features.

    Targets carry the query :math:`\theta(x_i)` (``(N_dst, C_k)``); sources carry
    ``[key; value]`` (``(N_src, C_k + C')``) and only the first ``C_k`` channels are scored.
    ``"dot"``: :math:`\tau\,\theta_i^\top \phi_j`; ``"concatenation"``:
    :math:`\mathrm{ReLU}(w_f^\top [\theta_i; \phi_j])`.
    """

    def __init__(self, key_channels: int, *, concatenation: bool, tau: float = 1.0) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.tau = tau
        # w_f of the concatenation mode: a 1x1 conv 2C' -> 1 without bias
        self.weight = nn.Parameter(torch.empty(2 * key_channels)) if concatenation else None

    def forward(self, x_dst: Tensor, x_src: Tensor, edges: Edges) -> Tensor:
        q = x_dst  # (N_dst, C_k)
        k = x_src[:, : self.key_channels]  # (N_src, C_k)
        if self.weight is None:
            s = (q.index_select(0, edges.dst) * k.index_select(0, edges.src)).sum(
                -1, keepdim=True
            )  # (E, 1)
            return s * self.tau if self.tau != 1.0 else s
        a = q @ self.weight[: self.key_channels]  # (N_dst,)
        b = k @ self.weight[self.key_channels :]  # (N_src,)
        return F.relu(a.index_select(0, edges.dst) + b.index_select(0, edges.src)).unsqueeze(
            -1
        )  # (E, 1)


class _TailValue(ValueTransform):
    r"""The value :math:`g(x_j)` stored in the last ``channels`` channels of each source."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heads, self.channels = 1, channels

    def node(self, x: Tensor) -> Tensor:
        return x[:, -self.channels :].unsqueeze(1)  # (N_src, 1, C')


class NonLocalBlock(nn.Module):
    r"""The non-local block from `"Non-local Neural Networks"
    <https://arxiv.org/abs/1711.07971>`_ (Wang et al., CVPR 2018):

    .. math::
        y_i = \frac{1}{C_i} \sum_{j \in \mathcal N(i)} f(x_i, x_j)\, g(x_j), \qquad
        z_i = \mathrm{BN}(W_z y_i) + x_i,

    with, per ``mode``,

    * ``"embedded_gaussian"``: :math:`f = e^{\tau\,\theta(x_i)^\top \phi(x_j)}`, :math:`C_i =
      \sum_j f`;
    * ``"gaussian"``: :math:`f = e^{x_i^\top x_j}` (:math:`\theta = \phi =` identity),
      :math:`C_i = \sum_j f`;
    * ``"dot_product"``: :math:`f = \theta(x_i)^\top \phi(x_j)`, :math:`C_i = |\mathcal N(i)|`;
    * ``"concatenation"``: :math:`f = \mathrm{ReLU}(w_f^\top [\theta(x_i); \phi(x_j)])`,
      :math:`C_i = |\mathcal N(i)|`.

    :math:`\mathcal N(i)` is every node of ``i``'s sample (every pixel of its image), ``f`` is
    the pairwise function above, ``C`` a softmax or the key count, and :math:`g(x_j) = W_g x_j`;
    :math:`\theta, \phi, g` are 1x1 convolutions :math:`C \to C' = \max(\lfloor C / r
    \rfloor, 1)` and :math:`W_z` maps back :math:`C' \to C`.

    With ``sub_sample=True`` the keys and values are max-pooled after projection: the sources
    are the nodes of the 2x2 max-pooled grid of :math:`\phi(x)` and :math:`g(x)`
    (:math:`\lfloor H/2 \rfloor \lfloor W/2 \rfloor` pooled nodes, a bipartite graph from
    pooled keys to all queries), and the count of ``"dot_product"`` / ``"concatenation"`` is
    the number of pooled keys. In ``"gaussian"`` mode the pooled keys are the max-pooled
    :math:`x`. Internally each source node carries ``[phi(x_j); g(x_j)]`` (pooled together,
    since a channel-wise max commutes with concatenation) and the layer scores the first part
    and sends the second.

    Follows the paper, with these choices: no :math:`1/\sqrt{C'}` scaling by default
    (``use_scale=True`` divides the embedded-Gaussian logits by :math:`\sqrt{C'}` as mmcv
    does; it has no effect in the other modes, also as in mmcv); :math:`\theta, \phi, g` have
    a bias (initialised to 0, weights :math:`\mathcal N(0, 0.01^2)`); :math:`W_z` has a bias
    only without the norm; the BN :math:`\gamma` and :math:`\beta` (or, with ``norm=False``,
    :math:`W_z` and its bias) start at zero, so the block is the identity at initialisation.
    :math:`w_f` uses He-normal initialisation.

    Args:
        in_channels: input (and output) width ``C``.
        mode: ``"embedded_gaussian"``, ``"gaussian"``, ``"dot_product"`` or
            ``"concatenation"`` (default: ``"embedded_gaussian"``).
        reduction: :math:`r`, the bottleneck width is :math:`C' = \max(\lfloor C / r \rfloor, 1)`
            (default: ``2``).
        use_scale: divide the embedded-Gaussian logits by :math:`\sqrt{C'}` (default:
            ``False``, the paper; mmcv's default is ``True``).
        sub_sample: max-pool keys and values 2x2 (default: ``False``). In node mode it needs
            the pooling as ``cluster`` in :meth:`forward`.
        norm: batch normalisation after :math:`W_z` (default: ``True``). It normalises over all
            nodes of the call, which for an image is ``BatchNorm2d``.

    Shapes:
        - **image mode:** ``x (B, C, H, W)`` -> ``(B, C, H, W)``
        - **node mode:** ``x (N, C)``, ``edge_index (2, E)`` (e.g.
          :func:`pcattn.graphs.full_graph` of the batch vector) -> ``(N, C)``; with
          ``sub_sample=True`` also ``cluster (N,)`` (pooled node of each node, ``-1`` for
          none) and ``edge_index`` from the ``M = cluster.max() + 1`` pooled nodes to the
          ``N`` nodes.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        mode: str = "embedded_gaussian",
        reduction: int = 2,
        use_scale: bool = False,
        sub_sample: bool = False,
        norm: bool = True,
    ) -> None:
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        reduction = check_positive_int(reduction, "reduction")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
        self.in_channels, self.mode, self.reduction = in_channels, mode, reduction
        self.use_scale, self.sub_sample = bool(use_scale), bool(sub_sample)
        self.inter_channels = c_mid = max(in_channels // reduction, 1)
        gaussian = mode == "gaussian"
        c_key = in_channels if gaussian else c_mid

        self.g = nn.Linear(in_channels, c_mid)
        self.theta = None if gaussian else nn.Linear(in_channels, c_mid)
        self.phi = None if gaussian else nn.Linear(in_channels, c_mid)
        tau = 1.0 / math.sqrt(c_mid) if (use_scale and mode == "embedded_gaussian") else 1.0
        score = _PairwiseScore(c_key, concatenation=mode == "concatenation", tau=tau)
        normalize = "softmax" if mode in ("embedded_gaussian", "gaussian") else "mean"
        self.attention = NodeAttention(
            (c_key + c_mid, c_key),
            c_mid,
            similarity=score,
            normalize=normalize,
            value=_TailValue(c_mid),
            bias=False,
        )
        self.conv_out = nn.Linear(c_mid, in_channels, bias=not norm)  # W_z
        self.norm = nn.BatchNorm1d(in_channels) if norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.g, self.theta, self.phi):
            if lin is not None:
                nn.init.normal_(lin.weight, std=0.01)
                nn.init.zeros_(lin.bias)
        w_f = self.attention.similarity.weight
        if w_f is not None:
            nn.init.normal_(w_f, std=math.sqrt(2.0 / w_f.numel()))
        if self.norm is not None:
            self.conv_out.reset_parameters()
            self.norm.reset_parameters()
            nn.init.zeros_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)
        else:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    # ----------------------------------------------------------------------------------------

    def forward(
        self, x: Tensor, edge_index: Tensor | None = None, *, cluster: Tensor | None = None
    ) -> Tensor:
        r"""Run the block on an image ``(B, C, H, W)`` (the graph is built here) or on nodes
        ``(N, C)`` with a given ``edge_index`` (and ``cluster`` when sub-sampling)."""
        image = is_image(x)
        nodes = self._image(x, edge_index, cluster) if image else None
        x_n, edge_index, cluster, m = self._prepare(x, nodes, edge_index, cluster)
        y = self.attention(self._sources_targets(x_n, cluster, m), edge_index)  # (N, C')
        z = self.conv_out(y)  # (N, C)
        if self.norm is not None:
            z = self.norm(z)
        out = x_n + z  # (N, C)
        return to_image(out, nodes) if image else out

    def attention_weights(
        self, x: Tensor, edge_index: Tensor | None = None, *, cluster: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (E, 1))``: :math:`f_{ij} / C_i` on the edges used (for an
        image, the internal graph on its row-major pixel nodes, or from the pooled nodes)."""
        nodes = self._image(x, edge_index, cluster) if is_image(x) else None
        x_n, edge_index, cluster, m = self._prepare(x, nodes, edge_index, cluster)
        return self.attention.attention_weights(self._sources_targets(x_n, cluster, m), edge_index)

    # ----------------------------------------------------------------------------------------

    def _sources_targets(
        self, x: Tensor, cluster: Tensor | None, num_pooled: int
    ) -> tuple[Tensor, Tensor]:
        """Sources ``[phi(x_j); g(x_j)]`` (max-pooled over ``cluster``) and queries
        ``theta(x_i)``."""
        if self.theta is None:
            q = k = x  # (N, C)
        else:
            q, k = self.theta(x), self.phi(x)  # (N, C'), (N, C')
        kv = torch.cat([k, self.g(x)], -1)  # (N, C_k + C')
        if cluster is not None:
            keep = cluster >= 0
            kv = scatter(kv[keep], cluster[keep], num_pooled, reduce="max")  # (M, C_k + C')
        return kv, q

    def _prepare(
        self,
        x: Tensor,
        nodes: ImageNodes | None,
        edge_index: Tensor | None,
        cluster: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None, int]:
        if nodes is None:
            cluster, m = self._check_nodes(x, edge_index, cluster)
            return x, edge_index, cluster, m
        ei, cl, m = self._image_graph(nodes.batch_size, nodes.height, nodes.width, x.device)
        return nodes.x, ei, cl, m

    def _image(self, x: Tensor, edge_index: Tensor | None, cluster: Tensor | None) -> ImageNodes:
        return check_image(x, self.in_channels, self, edge_index=edge_index, cluster=cluster)

    def _image_graph(
        self, b: int, h: int, w: int, device: torch.device
    ) -> tuple[Tensor, Tensor | None, int]:
        if not self.sub_sample:
            batch = torch.arange(b, device=device).repeat_interleave(h * w)  # (B*H*W,)
            return full_graph(batch), None, 0
        if h < 2 or w < 2:
            raise ValueError(f"sub_sample=True needs an image of at least 2x2, got {h}x{w}")
        hp, wp = h // 2, w // 2
        yy = torch.arange(h, device=device).view(-1, 1).expand(h, w)  # (H, W)
        xx = torch.arange(w, device=device).view(1, -1).expand(h, w)  # (H, W)
        cell = (yy // 2) * wp + xx // 2  # (H, W) pooled node in its image
        cell = torch.where((yy < 2 * hp) & (xx < 2 * wp), cell, -1).reshape(-1)  # (H*W,)
        shift = torch.arange(b, device=device).view(-1, 1) * (hp * wp)  # (B, 1)
        cluster = torch.where(cell >= 0, cell + shift, -1).reshape(-1)  # (B*H*W,)
        samples = torch.arange(b, device=device)  # (B,)
        ei = full_graph(  # every pooled cell of an image -> every pixel of it
            samples.repeat_interleave(hp * wp), batch_dst=samples.repeat_interleave(h * w)
        )
        return ei, cluster, b * hp * wp

    def _check_nodes(
        self, x: Tensor, edge_index: Tensor | None, cluster: Tensor | None
    ) -> tuple[Tensor | None, int]:
        check_nodes(x, self.in_channels, self)
        if edge_index is None:
            raise ValueError(
                "edge_index is required for nodes x (N, C), e.g. pcattn.graphs.full_graph(batch)"
            )
        if not self.sub_sample:
            if cluster is not None:
                raise ValueError("cluster is only used with sub_sample=True")
            return None, 0
        if cluster is None:
            raise ValueError(
                "sub_sample=True on nodes needs cluster (N,), the pooled node of each node "
                "(pass an image (B, C, H, W) to pool 2x2 automatically)"
            )
        if (
            not isinstance(cluster, Tensor)
            or cluster.shape != (x.size(0),)
            or cluster.is_floating_point()
            or cluster.dtype == torch.bool
        ):
            got = shape_of(cluster)
            raise ValueError(f"cluster must be an int64 tensor ({x.size(0)},), got {got}")
        cluster = cluster.long()
        return cluster, int(cluster.max()) + 1 if cluster.numel() else 0

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, mode={self.mode!r}, inter_channels={self.inter_channels}, "
            f"use_scale={self.use_scale}, sub_sample={self.sub_sample}"
        )

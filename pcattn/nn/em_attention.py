r"""EMANet's expectation-maximisation attention: pixels and a few bases pass messages back and
forth, then every pixel is rebuilt from the bases."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_positive_int
from ..graphs import slot_graph
from ..ops import scatter
from .attention import NodeAttention
from .base import Edges, Normalizer
from .double_attention import _num_samples
from .image import ImageNodes, check_image, check_nodes, is_image, node_batch, to_image
from .normalize import Softmax
from .similarity import DotProduct

__all__ = ["EMAttention", "SumNormalize"]


class SumNormalize(Normalizer):
    r"""L1 over the sources of each target: :math:`w_{ij} = s_{ij} / \sum_{j'} s_{ij'}`, for
    non-negative scores (EMANet's M-step; a target without edges gets no weight)."""

    def forward(self, logits: Tensor, edges: Edges) -> Tensor:
        den = scatter(logits, edges.dst, edges.num_dst)  # (N_dst, H)
        return logits / den.index_select(0, edges.dst)


class EMAttention(nn.Module):
    r"""The expectation-maximisation attention module from `"Expectation-Maximization
    Attention Networks for Semantic Segmentation" <https://arxiv.org/abs/1907.13426>`_.

    Each sample starts from a copy of the ``K`` bases :math:`\mu` and alternates, ``T`` times,
    two bipartite message passes between its nodes and its bases, then rebuilds every node:

    .. math::
        z_{nk} = \frac{e^{f_n^\top \mu_k}}{\sum_{k'} e^{f_n^\top \mu_{k'}}}, \qquad
        \mu_k \leftarrow \mathrm{L2}\Big(\frac{1}{\sum_{n} z_{nk}} \sum_{n} z_{nk}\, f_n\Big),
        \qquad \tilde f_i = \sum_{k \in \mathcal N(i)} z_{ik}\, \mu_k

    E-step (node ``n`` <- bases): :math:`\mathcal N(n)` = its sample's ``K`` bases, ``f`` the
    exponentiated dot product with no projection, ``C`` the softmax over ``k``. M-step (basis
    ``k`` <- nodes): :math:`\mathcal N(k)` = its sample's nodes, ``f`` = :math:`z_{nk}` (an edge
    weight), ``C_k = \sum_n z_{nk}``, ``g`` the identity, then L2 over channels.
    Reconstruction: :math:`\mathcal N(i)` = the bases, ``f`` = the last E-step's :math:`z`,
    ``C = 1``, ``g`` the last M-step's :math:`\mu` (keys :math:`\mu^{(T-1)}`, values
    :math:`\mu^{(T)}`).

    Around the loop, as in mmseg's ``EMAHead``: :math:`f = W_1 x + b_1`, a **frozen** 1x1 conv
    (it maps the ReLU input to both signs); after it
    :math:`y = \mathrm{ReLU}(x + \mathrm{BN}(W_2\, \mathrm{ReLU}(\tilde f)))`. The head's 3x3
    conv + BN + ReLU that produces ``x`` is left to the model (it has no node-mode
    counterpart), so ``x`` is both the loop's input and the identity branch. The loop and the
    reconstruction run under ``no_grad``, as in the reference: :math:`\tilde f` carries no
    gradient, ``W_2`` and BN learn from it, ``x`` gets gradient through the identity only.

    While training, the buffer moves towards the batch's bases:
    :math:`\mu \leftarrow (1 - m)\mu + m\, \mathrm{L2}(\mathrm{mean}_b\, \mu_b)`, the mean also
    taken over processes when ``torch.distributed`` is initialised (as mmseg's
    ``reduce_mean``).

    Args:
        in_channels: width ``C`` of input, bases and output.
        bases: number of bases ``K`` (default: ``64``).
        stages: number of EM iterations ``T`` (default: ``3``).
        momentum: buffer momentum ``m`` (default: ``0.1``).

    Shapes:
        - **x:** image ``(B, C, H, W)``, or nodes ``(N, C)`` with an optional ``batch (N,)``
        - **output:** ``(B, C, H, W)`` or ``(N, C)``
        - **bases** (buffer): ``(C, K)``, columns L2-normalised
    """

    def __init__(
        self, in_channels: int, *, bases: int = 64, stages: int = 3, momentum: float = 0.1
    ) -> None:
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        bases = check_positive_int(bases, "bases")
        stages = check_positive_int(stages, "stages")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.in_channels, self.num_bases, self.stages = in_channels, bases, stages
        self.momentum = float(momentum)
        self.register_buffer("bases", torch.empty(in_channels, bases))
        self.mid_project = nn.Linear(in_channels, in_channels)  # frozen
        self.mid_project.requires_grad_(False)
        self.e_score = DotProduct(in_channels, in_channels, project=False)
        self.e_normalize = Softmax()
        self.m_step = NodeAttention(
            in_channels,
            in_channels,
            similarity="adjacency",
            normalize=SumNormalize(),
            value="identity",
            bias=False,
        )
        self.reconstruct = NodeAttention(
            in_channels,
            in_channels,
            similarity="adjacency",
            normalize="none",
            value="identity",
            bias=False,
        )
        self.out_project = nn.Linear(in_channels, in_channels, bias=False)
        self.out_norm = nn.BatchNorm1d(in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Bases from :math:`\mathcal N(0, 2/K)`, L2-normalised over channels; mmcv
        ``ConvModule`` init (Kaiming normal ``fan_out``, zero bias) for both 1x1 convs; BN at
        weight 1, bias 0."""
        with torch.no_grad():
            self.bases.normal_(0.0, math.sqrt(2.0 / self.num_bases))
            self.bases.copy_(F.normalize(self.bases, dim=0))
        for lin in (self.mid_project, self.out_project):
            nn.init.kaiming_normal_(lin.weight, mode="fan_out", nonlinearity="relu")
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.out_norm.reset_parameters()

    def forward(self, x: Tensor, *, batch: Tensor | None = None) -> Tensor:
        r"""Project, iterate, rebuild, fuse (and update the bases while training).

        Args:
            x: an image ``(B, C, H, W)`` or node features ``(N, C)``.
            batch: sample of each node ``(N,)``, sorted (node mode; default: one sample).
        """
        if is_image(x):
            nodes = self._image(x, batch)
            return to_image(self._nodes(nodes.x, nodes.batch), nodes)
        return self._nodes(x, self._check_nodes(x, batch))

    def attention_weights(self, x: Tensor, *, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""The responsibilities :math:`z` of the last E-step (no buffer update).

        Returns:
            ``(edge_index, weights (E, 1))``: edges basis ``b * K + k`` -> node ``i`` (for an
            image, pixel ``b * H * W + y * W + x``), weights summing to 1 over each node's
            bases.
        """
        if is_image(x):
            nodes = self._image(x, batch)
            x, batch = nodes.x, nodes.batch
        else:
            batch = self._check_nodes(x, batch)
        edge_index, z, _ = self._em(self.mid_project(x), batch)
        return edge_index, z

    @torch.no_grad()
    def _em(self, f: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""The EM loop on ``f (N, C)``: ``(edge_index basis -> node, z (E, 1), mu (B K, C))``."""
        f = f.detach()
        k = self.num_bases
        up = slot_graph(batch, k)  # basis -> node, sorted by node
        down = up.flip(0)  # node -> basis
        num_bases = _num_samples(batch) * k
        mu = self.bases.t().to(f.dtype).repeat(_num_samples(batch), 1)  # (B K, C)
        edges = Edges(up[0], up[1], num_bases, f.size(0))
        for _ in range(self.stages):
            z = self.e_normalize(self.e_score(f, mu, edges), edges)  # (E, 1) softmax over k
            mu = self.m_step((f, mu), down, edge_weight=z.view(-1))  # (B K, C)
            mu = F.normalize(mu, dim=1)
        return up, z, mu

    def _nodes(self, x: Tensor, batch: Tensor) -> Tensor:
        f = self.mid_project(x)  # (N, C)
        up, z, mu = self._em(f, batch)
        with torch.no_grad():
            recon = self.reconstruct((mu, f.detach()), up, edge_weight=z.view(-1))  # (N, C)
        if self.training:
            present = torch.bincount(batch) > 0  # samples with nodes
            self._update_bases(mu.view(-1, self.num_bases, self.in_channels)[present])
        y = self.out_norm(self.out_project(F.relu(recon)))  # (N, C)
        return F.relu(x + y)

    @torch.no_grad()
    def _update_bases(self, mu: Tensor) -> None:
        mean = mu.mean(0)  # (K, C) over the samples with nodes
        if dist.is_available() and dist.is_initialized():
            mean = mean.clone()
            dist.all_reduce(mean.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
        mean = F.normalize(mean, dim=1)  # L2 over channels
        self.bases.mul_(1.0 - self.momentum).add_(self.momentum * mean.t().to(self.bases.dtype))

    def _image(self, x: Tensor, batch: Tensor | None) -> ImageNodes:
        return check_image(x, self.in_channels, self, batch=batch)

    def _check_nodes(self, x: Tensor, batch: Tensor | None) -> Tensor:
        return node_batch(check_nodes(x, self.in_channels, self), batch)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, bases={self.num_bases}, stages={self.stages}, "
            f"momentum={self.momentum}"
        )

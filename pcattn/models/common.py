r"""Pieces every model shares: input features, MLPs on packed nodes, pooling, the category
one-hot of part segmentation, and the two resolution changes of a point hierarchy
(:class:`TransitionDown`, :class:`TransitionUp`).

Every model takes a PyG ``Batch`` (``pos (N, D)``, optional ``x (N, C_in)``, ``batch (N,)``,
and ``category (B,)`` for part segmentation) and returns one tensor of logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import shape_of
from ..graphs import fps, knn, knn_graph
from ..ops import scatter

__all__ = [
    "batch_of",
    "shape_category_onehot",
    "mlp",
    "grouped_max",
    "node_features",
    "global_pool",
    "category_onehot",
    "TransitionDown",
    "TransitionUp",
]


def mlp(channels: list[int], *, last_act: bool = True, norm: bool = True) -> nn.Sequential:
    r"""``Linear - BatchNorm1d - ReLU`` for each step of ``channels`` (``len - 1`` layers).

    Args:
        channels: widths ``[C_0, C_1, ..., C_L]``.
        last_act: end with norm and ReLU (default: ``True``); ``False`` leaves the last layer
            a plain ``Linear`` with bias (a head).
        norm: BatchNorm after each hidden Linear (default: ``True``).
    """
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        last = i == len(channels) - 2
        plain = last and not last_act
        layers.append(nn.Linear(c_in, c_out, bias=plain or not norm))
        if not plain:
            if norm:
                layers.append(nn.BatchNorm1d(c_out))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def grouped_max(
    mlp: nn.Sequential, x: Tensor, pos: Tensor, pos_centre: Tensor, src: Tensor, dst: Tensor
) -> Tensor:
    r"""PointNet's grouping: each centre max-pools a shared MLP of the relative position and
    the features of the points grouped with it,

    .. math::
        y_c = \max_{e = (j \to c)} h_\Theta([p_j - p_c;\, x_j]),

    computed without the ``(E, D + C)`` grouped input and without an activation per edge:

    * the first ``Linear`` is split as :math:`W [p_j - p_c; x_j] = W [p_j; x_j] - W_p p_c`, one
      product per point and one per centre, gathered to the edges (``k`` times fewer
      multiplications; the gathers keep nothing for backward);
    * the last activation, a ReLU, is increasing, so it commutes with the max and runs on the
      pooled ``(M, C)`` rows: the edges keep one ``(E, C)`` tensor less for backward, and the
      max keeps only the index of each maximum (:func:`pcattn.ops.scatter`).

    Args:
        mlp: ``Linear - BN - ReLU`` layers (:func:`mlp` with ``last_act=True``) whose first
            ``Linear`` takes ``[p_j - p_c; x_j]``, positions first.
        x: point features ``(N, C)``. pos: ``(N, D)``. pos_centre: ``(M, D)``.
        src, dst: the grouping, ``(E,)`` each: point ``src[e]`` belongs to centre ``dst[e]``.

    Returns:
        ``(M, C_out)``; a centre with no point gets 0.
    """
    lin, act = mlp[0], mlp[-1]
    d = pos.size(1)
    w_pos, w_x = lin.weight[:, :d], lin.weight[:, d:]  # (C_1, D), (C_1, C)
    per_point = torch.addmm(pos @ w_pos.t(), x, w_x.t())  # (N, C_1) = W [p_j; x_j]
    per_centre = pos_centre @ w_pos.t()  # (M, C_1) = W_p p_c
    h = per_point.index_select(0, src).sub_(per_centre.index_select(0, dst))  # (E, C_1)
    if lin.bias is not None:
        h = h + lin.bias
    h = mlp[1:-1](h)  # (E, C_out), before the last activation
    return act(scatter(h, dst, pos_centre.size(0), "max"))  # (M, C_out)


def node_features(data, in_channels: int) -> Tensor:
    r"""The per-point input of a model, ``cat([pos, x])`` ``(N, D + in_channels)``: positions
    always enter as features (as in PointNet++ and Point Transformer), ``x`` (normals,
    colours, ...) when the model was built with ``in_channels > 0``."""
    if in_channels == 0:
        return data.pos
    x = getattr(data, "x", None)
    if x is None or x.dim() != 2 or x.size(1) != in_channels:
        got = "none" if x is None else tuple(x.shape)
        raise ValueError(f"the model expects data.x of shape (N, {in_channels}), got {got}")
    return torch.cat([data.pos, x.to(data.pos.dtype)], dim=1)


def global_pool(x: Tensor, batch: Tensor, num_graphs: int, reduce: str = "mean") -> Tensor:
    r"""Pool the nodes of each sample: ``(N, C) -> (B, C)`` (``"mean"``, ``"max"`` or
    ``"sum"``)."""
    return scatter(x, batch, num_graphs, reduce)


def smallest_cloud(batch: Tensor) -> int:
    """Points in the smallest cloud of ``batch``: the cap on ``k`` of a stage's kNN queries."""
    return int(torch.bincount(batch).min())


def batch_of(data) -> tuple[Tensor, int]:
    """``batch (N,)`` and the number of clouds of a ``Batch`` (a lone ``Data`` is one cloud);
    every cloud must have a point (an empty one would be classified from nothing)."""
    pos = getattr(data, "pos", None)
    if not isinstance(pos, Tensor) or pos.dim() != 2:
        raise ValueError(f"the model needs data.pos of shape (N, D), got {shape_of(pos)}")
    batch = getattr(data, "batch", None)
    if batch is None:
        batch, num_graphs = torch.zeros(pos.size(0), dtype=torch.long, device=pos.device), 1
    else:
        num_graphs = int(data.num_graphs)
    empty = torch.nonzero(torch.bincount(batch, minlength=num_graphs) == 0)
    if empty.numel():
        raise ValueError(
            f"cloud {int(empty[0, 0])} of the batch has no points; drop empty clouds before "
            "batching"
        )
    return batch, num_graphs


def shape_category_onehot(data, batch: Tensor, num_graphs: int, num_categories: int) -> Tensor:
    r"""``data.category (B,)`` checked (one entry per cloud, each in range) and spread to the
    points as :func:`category_onehot` rows ``(N, num_categories)``."""
    category = getattr(data, "category", None)
    if category is None or category.numel() != num_graphs:
        got = "none" if category is None else tuple(category.shape)
        raise ValueError(
            f"part segmentation needs data.category with one entry per cloud "
            f"({num_graphs}), got {got}"
        )
    return category_onehot(category, batch, num_categories)


def category_onehot(category: Tensor, batch: Tensor, num_categories: int) -> Tensor:
    r"""The shape category of each point as a one-hot row, ``(N, num_categories)``, the extra
    input of part segmentation (PointNet++, DGCNN)."""
    if category.dim() != 1:
        category = category.view(-1)
    if category.numel() and (int(category.min()) < 0 or int(category.max()) >= num_categories):
        raise ValueError(
            f"category must be in [0, {num_categories}), got values in "
            f"[{int(category.min())}, {int(category.max())}]"
        )
    return nn.functional.one_hot(category[batch], num_categories).to(torch.get_default_dtype())


class TransitionDown(nn.Module):
    r"""Point Transformer's transition down: farthest point sampling keeps ``1 / stride`` of
    each cloud; every kept point max-pools ``mlp([p_j - p_i; x_j])`` over its ``k`` nearest
    points of the dense set (itself included).

    .. math::
        y_i = \max_{j \in \mathrm{kNN}(i)} \mathrm{ReLU}(\mathrm{BN}(W [p_j - p_i; x_j]))

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: keep ``ceil(n / stride)`` points of each cloud (default: ``4``).
        k: neighbours pooled per kept point (default: ``16``); clouds smaller than ``k``
            pool over all their points.
        pos_dim: dimension of the positions (default: ``3``).

    Shapes:
        ``x (N, C_in), pos (N, D), batch (N,)`` -> ``x (M, C_out), pos (M, D), batch (M,)``
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 4, k: int = 16, pos_dim: int = 3
    ) -> None:
        super().__init__()
        self.stride, self.k = stride, k
        self.mlp = mlp([in_channels + pos_dim, out_channels])

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        idx = fps(pos.detach(), ratio=1.0 / self.stride, batch=batch, random_start=False)  # (M,)
        pos_d, batch_d = pos[idx], batch[idx]  # (M, D), (M,)
        k = min(self.k, smallest_cloud(batch))
        src, dst = knn(pos.detach(), pos_d.detach(), k, batch, batch_d)  # (E,), E = M k
        y = grouped_max(self.mlp, x, pos, pos_d, src, dst)  # (M, C_out)
        return y, pos_d, batch_d

    def extra_repr(self) -> str:
        return f"stride={self.stride}, k={self.k}"


class TransitionUp(nn.Module):
    r"""Point Transformer's transition up: the coarse features, through ``Linear-BN-ReLU``,
    are interpolated onto the fine points (inverse squared distance over the ``k = 3``
    nearest coarse points) and added to the fine skip features through their own
    ``Linear-BN-ReLU``.

    .. math::
        y_i = \phi(x^{skip}_i) + \frac{\sum_{j \in \mathrm{kNN}_3(i)} w_{ij}\, \psi(x_j)}
        {\sum_j w_{ij}}, \qquad w_{ij} = \frac{1}{\|p_j - p_i\|^2 + 10^{-8}}

    Args:
        in_channels: width of the coarse features.
        skip_channels: width of the fine (skip) features.
        out_channels: output width.
        k: coarse neighbours per fine point (default: ``3``).

    Shapes:
        coarse ``x (M, C_in), pos (M, D), batch (M,)``, fine ``skip (N, C_skip), pos (N, D),
        batch (N,)`` -> ``(N, C_out)``
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, k: int = 3):
        super().__init__()
        self.k = k
        self.coarse = mlp([in_channels, out_channels])
        self.fine = mlp([skip_channels, out_channels])

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        batch: Tensor,
        skip: Tensor,
        pos_skip: Tensor,
        batch_skip: Tensor,
    ) -> Tensor:
        up = interpolate(self.coarse(x), pos, batch, pos_skip, batch_skip, self.k)  # (N, C_out)
        return self.fine(skip) + up

    def extra_repr(self) -> str:
        return f"k={self.k}"


def interpolate(
    x: Tensor, pos: Tensor, batch: Tensor, pos_to: Tensor, batch_to: Tensor, k: int = 3
) -> Tensor:
    r"""Inverse-squared-distance interpolation of ``x (M, C)`` at ``pos (M, D)`` onto the
    points ``pos_to (N, D)`` from their ``k`` nearest (PointNet++'s feature propagation);
    returns ``(N, C)``."""
    k = min(k, smallest_cloud(batch))
    src, dst = knn(pos.detach(), pos_to.detach(), k, batch, batch_to)  # (E,), E = N k
    d2 = (pos.index_select(0, src) - pos_to.index_select(0, dst)).pow(2).sum(1)  # (E,)
    w = (1.0 / (d2.detach() + 1e-8)).view(-1, k, 1)  # (N, k, 1): knn gives k edges per target
    x_j = x.index_select(0, src).view(-1, k, x.size(1))  # (N, k, C)
    return (x_j * w).sum(1) / w.sum(1)  # (N, C)


def knn_edges(pos: Tensor, k: int, batch: Tensor, *, loop: bool = True) -> Tensor:
    r"""The kNN graph of a stage, with ``k`` capped by the smallest cloud (so small clouds
    still work): ``edge_index (2, N k)`` sorted by target."""
    k = min(k, smallest_cloud(batch) - (0 if loop else 1))
    return knn_graph(pos.detach(), k, batch, loop=loop)

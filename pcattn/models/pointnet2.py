r"""PointNet++ with single-scale grouping (`Qi et al., 2017 <https://arxiv.org/abs/1706.02413>`_):
a hierarchy of :class:`SetAbstraction` levels (farthest point sampling, ball grouping, a shared
PointNet max-pooled per ball), a :class:`GlobalSetAbstraction` over the whole cloud, and for
segmentation :class:`FeaturePropagation` levels back up to every input point.

Models: :class:`PointNet2Cls`, :class:`PointNet2Seg`.

Differences from the reference implementation, all deliberate:

* sampling keeps a **ratio** of each level's points (defaults ``0.5`` then ``0.25``: 512 then
  128 centres for 1024 input points, the paper's numbers), so any cloud size works;
* a ball holding more than ``max_neighbors`` points keeps the **nearest** ones, where the
  reference keeps the first found in index order (and pads short balls with repeats, which a
  max ignores);
* per the package's model contract, positions always enter as input features
  (``node_features``), so they are not concatenated a second time in the last feature
  propagation of the part segmenter.

Farthest point sampling starts at each cloud's first point (deterministic, no random state),
so these models are invariant to permutations of the points that keep each cloud's first point
in place, not to every permutation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graphs import fps
from ..search import knn_search
from .common import (
    batch_of,
    global_pool,
    grouped_max,
    interpolate,
    mlp,
    node_features,
    shape_category_onehot,
)

__all__ = [
    "ball_query",
    "SetAbstraction",
    "GlobalSetAbstraction",
    "FeaturePropagation",
    "PointNet2Cls",
    "PointNet2Seg",
]

POS_DIM = 3  # positions (N, 3) enter every model as features (see node_features)


def ball_query(
    pos: Tensor,
    pos_centre: Tensor,
    radius: float,
    max_neighbors: int,
    batch: Tensor,
    batch_centre: Tensor,
) -> Tensor:
    r"""For every centre, the points of its own cloud within ``radius`` (inclusive, compared as
    squared distances in float64), at most ``max_neighbors`` of them, the nearest kept (ties by
    index).

    Returns:
        ``edge_index (2, E)``: row 0 indexes ``pos``, row 1 ``pos_centre``; sorted by centre,
        nearest first. A centre that is one of the points always finds at least itself.
    """
    idx, _ = knn_search(
        pos.detach(), pos_centre.detach(), max_neighbors, batch, batch_centre, r=float(radius)
    )  # (M, max_neighbors), -1 past the last neighbour in the ball
    dst = torch.arange(idx.size(0), device=idx.device).repeat_interleave(idx.size(1))  # (M k,)
    src = idx.reshape(-1)  # (M k,)
    keep = src >= 0
    return torch.stack([src[keep], dst[keep]])  # (2, E)


class SetAbstraction(nn.Module):
    r"""A PointNet++ set abstraction level (single-scale grouping): farthest point sampling
    keeps ``ratio`` of each cloud as centres, and each centre max-pools a shared MLP of the
    relative positions and features of the points in its ball.

    .. math::
        y_c = \max_{j :\, \|p_j - p_c\| \le r} h_\Theta([p_j - p_c;\, x_j]), \qquad
        h_\Theta = (\mathrm{ReLU} \circ \mathrm{BN} \circ \mathrm{Linear})^{L}

    In the unified form, N is the ball (at most ``max_neighbors`` nearest), the sum is a
    max, there is no normaliser and ``g`` is the MLP of :math:`[p_j - p_c; x_j]`, computed by
    :func:`~pcattn.models.common.grouped_max` (first layer per point, last ReLU after the max).

    Args:
        in_channels: width of ``x``.
        mlp_channels: output widths of the layers of :math:`h_\Theta`, e.g. ``(64, 64, 128)``.
        ratio: fraction of each cloud kept as centres, in ``(0, 1]`` (default: ``0.5``).
        radius: ball radius (default: ``0.2``).
        max_neighbors: most points pooled per centre (default: ``32``).
        pos_dim: dimension of the positions (default: ``3``).

    Shapes:
        ``x (N, C_in), pos (N, D), batch (N,)`` -> ``x (M, C_out), pos (M, D), batch (M,)``,
        ``M = sum over clouds of ceil(ratio * n)``
    """

    def __init__(
        self,
        in_channels: int,
        mlp_channels: tuple[int, ...],
        *,
        ratio: float = 0.5,
        radius: float = 0.2,
        max_neighbors: int = 32,
        pos_dim: int = 3,
    ) -> None:
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        if not radius > 0.0:
            raise ValueError(f"radius must be > 0, got {radius!r}")
        if isinstance(max_neighbors, bool) or not isinstance(max_neighbors, int):
            raise ValueError(f"max_neighbors must be an int >= 1, got {max_neighbors!r}")
        if max_neighbors < 1:
            raise ValueError(f"max_neighbors must be an int >= 1, got {max_neighbors!r}")
        if len(mlp_channels) == 0:
            raise ValueError("mlp_channels must name at least one width")
        self.in_channels, self.out_channels = in_channels, mlp_channels[-1]
        self.ratio, self.radius, self.max_neighbors = ratio, radius, max_neighbors
        self.mlp = mlp([in_channels + pos_dim, *mlp_channels])

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        idx = fps(pos.detach(), ratio=self.ratio, batch=batch, random_start=False)  # (M,)
        pos_c, batch_c = pos.index_select(0, idx), batch.index_select(0, idx)  # (M, D), (M,)
        src, dst = ball_query(pos, pos_c, self.radius, self.max_neighbors, batch, batch_c)
        return grouped_max(self.mlp, x, pos, pos_c, src, dst), pos_c, batch_c  # (M, C_out)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, radius={self.radius}, max_neighbors={self.max_neighbors}"


class GlobalSetAbstraction(nn.Module):
    r"""PointNet++'s last set abstraction ("group all"): a shared MLP of every point's
    position and features, max-pooled over its cloud.

    .. math::
        y_b = \max_{i \in \mathrm{cloud}(b)} h_\Theta([p_i;\, x_i])

    Args:
        in_channels: width of ``x``.
        mlp_channels: output widths of the MLP layers, e.g. ``(256, 512, 1024)``.
        pos_dim: dimension of the positions (default: ``3``).

    Shapes:
        ``x (N, C_in), pos (N, D), batch (N,)`` -> ``(B, C_out)``
    """

    def __init__(self, in_channels: int, mlp_channels: tuple[int, ...], *, pos_dim: int = 3):
        super().__init__()
        if len(mlp_channels) == 0:
            raise ValueError("mlp_channels must name at least one width")
        self.in_channels, self.out_channels = in_channels, mlp_channels[-1]
        self.mlp = mlp([in_channels + pos_dim, *mlp_channels])

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        h = self.mlp(torch.cat([pos, x], dim=1))  # (N, C_out)
        return global_pool(h, batch, num_graphs, "max")  # (B, C_out)


class FeaturePropagation(nn.Module):
    r"""PointNet++ feature propagation: coarse features interpolated onto the fine points
    (inverse squared distance over the 3 nearest coarse points, :func:`interpolate`),
    concatenated with the fine points' skip features, through a unit PointNet (a shared MLP).

    .. math::
        y_i = h_\Theta\Big(\Big[\frac{\sum_{j \in \mathrm{kNN}_3(i)} w_{ij} x_j}
        {\sum_j w_{ij}};\; x^{skip}_i\Big]\Big), \qquad w_{ij} = \|p_j - p_i\|^{-2}

    With ``pos=None`` the coarse level is one global feature per cloud, copied to its points.

    Args:
        in_channels: width of the coarse features.
        skip_channels: width of the fine skip features.
        mlp_channels: output widths of the MLP layers.
        k: coarse neighbours per fine point (default: ``3``).

    Shapes:
        coarse ``x (M, C_in)`` (or ``(B, C_in)`` with ``pos=None``), ``pos (M, D)``,
        ``batch (M,)``; fine ``skip (N, C_skip)``, ``pos_skip (N, D)``, ``batch_skip (N,)``
        -> ``(N, C_out)``
    """

    def __init__(
        self, in_channels: int, skip_channels: int, mlp_channels: tuple[int, ...], *, k: int = 3
    ) -> None:
        super().__init__()
        if len(mlp_channels) == 0:
            raise ValueError("mlp_channels must name at least one width")
        self.k, self.out_channels = k, mlp_channels[-1]
        self.mlp = mlp([in_channels + skip_channels, *mlp_channels])

    def forward(
        self,
        x: Tensor,
        pos: Tensor | None,
        batch: Tensor | None,
        skip: Tensor,
        pos_skip: Tensor,
        batch_skip: Tensor,
    ) -> Tensor:
        if pos is None:
            up = x.index_select(0, batch_skip)  # (N, C_in), one coarse point per cloud
        else:
            up = interpolate(x, pos, batch, pos_skip, batch_skip, self.k)  # (N, C_in)
        return self.mlp(torch.cat([up, skip], dim=1))  # (N, C_out)

    def extra_repr(self) -> str:
        return f"k={self.k}"


def _encoder(
    c_in: int,
    ratios: tuple[float, ...],
    radii: tuple[float, ...],
    max_neighbors: tuple[int, ...],
    sa_channels: tuple[tuple[int, ...], ...],
    global_channels: tuple[int, ...],
) -> tuple[nn.ModuleList, GlobalSetAbstraction]:
    """The set abstraction levels shared by both models, checked for consistent lengths."""
    n = len(sa_channels)
    if not (len(ratios) == len(radii) == len(max_neighbors) == n) or n == 0:
        raise ValueError(
            "ratios, radii, max_neighbors and sa_channels need one entry per set abstraction "
            f"level (at least one), got lengths {len(ratios)}, {len(radii)}, "
            f"{len(max_neighbors)} and {n}"
        )
    levels = nn.ModuleList()
    for ratio, radius, m, chans in zip(ratios, radii, max_neighbors, sa_channels, strict=True):
        levels.append(
            SetAbstraction(c_in, tuple(chans), ratio=ratio, radius=radius, max_neighbors=m)
        )
        c_in = chans[-1]
    return levels, GlobalSetAbstraction(c_in, tuple(global_channels))


def _check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")


class PointNet2Cls(nn.Module):
    r"""PointNet++ SSG classifier (`Qi et al., 2017 <https://arxiv.org/abs/1706.02413>`_):
    two :class:`SetAbstraction` levels (paper: 512 centres, radius 0.2, 32 neighbours, MLP
    ``64-64-128``; 128 centres, radius 0.4, 64 neighbours, MLP ``128-128-256``), a
    :class:`GlobalSetAbstraction` (MLP ``256-512-1024``) and fully connected layers
    ``512 - 256 - num_classes`` with BatchNorm, ReLU and dropout.

    .. math::
        \mathrm{logits} = \mathrm{FC}\big(\max_i h([p_i; \mathrm{SA}_2(\mathrm{SA}_1(x))_i])\big)

    Args:
        in_channels: width of ``data.x`` (``0``: positions only).
        num_classes: number of shape classes.
        ratios: fraction of the previous level kept at each level (default: ``(0.5, 0.25)``).
        radii: ball radius of each level (default: ``(0.2, 0.4)``).
        max_neighbors: most points per ball at each level (default: ``(32, 64)``).
        sa_channels: MLP widths of each level (default: ``((64, 64, 128), (128, 128, 256))``).
        global_channels: MLP widths of the global level (default: ``(256, 512, 1024)``).
        head_channels: hidden widths of the classifier (default: ``(512, 256)``).
        dropout: dropout after every hidden layer of the head (default: ``0.5``).

    Shapes:
        ``data.pos (N, 3)``, ``data.x (N, in_channels)``, ``data.batch (N,)``
        -> ``(B, num_classes)``
    """

    task = "classification"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        ratios: tuple[float, ...] = (0.5, 0.25),
        radii: tuple[float, ...] = (0.2, 0.4),
        max_neighbors: tuple[int, ...] = (32, 64),
        sa_channels: tuple[tuple[int, ...], ...] = ((64, 64, 128), (128, 128, 256)),
        global_channels: tuple[int, ...] = (256, 512, 1024),
        head_channels: tuple[int, ...] = (512, 256),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_dropout(dropout)
        self.in_channels = in_channels
        self.levels, self.global_level = _encoder(
            POS_DIM + in_channels, ratios, radii, max_neighbors, sa_channels, global_channels
        )
        head: list[nn.Module] = []
        c = global_channels[-1]
        for c_out in head_channels:
            head += [mlp([c, c_out]), nn.Dropout(dropout)]
            c = c_out
        head.append(nn.Linear(c, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, data) -> Tensor:
        x = node_features(data, self.in_channels)  # (N, 3 + C_in)
        pos = data.pos
        batch, num_graphs = batch_of(data)
        for level in self.levels:
            x, pos, batch = level(x, pos, batch)  # (M_l, C_l), (M_l, 3), (M_l,)
        g = self.global_level(x, pos, batch, num_graphs)  # (B, C_global)
        return self.head(g)  # (B, num_classes)


class PointNet2Seg(nn.Module):
    r"""PointNet++ SSG part segmenter (`Qi et al., 2017 <https://arxiv.org/abs/1706.02413>`_):
    the encoder of :class:`PointNet2Cls`, then :class:`FeaturePropagation` from the global
    feature back to every level (paper part-segmentation widths: ``256-256``, ``256-128``,
    ``128-128-128``), the category one-hot joining the input features as skip at the last
    (finest) level as in the reference part-segmentation network, and a head
    ``128 - num_classes`` with dropout.

    .. math::
        z_i = \mathrm{head}\big(\mathrm{FP}_1(\dots;\, [\mathrm{onehot}_i;\, p_i;\, x_i])\big)

    Args:
        in_channels: width of ``data.x`` (``0``: positions only).
        num_classes: number of part labels (over all categories).
        num_categories: number of shape categories (width of the one-hot).
        ratios: fraction of the previous level kept at each level (default: ``(0.5, 0.25)``).
        radii: ball radius of each level (default: ``(0.2, 0.4)``).
        max_neighbors: most points per ball at each level (default: ``(32, 64)``).
        sa_channels: MLP widths of each level (default: ``((64, 64, 128), (128, 128, 256))``).
        global_channels: MLP widths of the global level (default: ``(256, 512, 1024)``).
        fp_channels: MLP widths of each feature propagation, coarsest first, one more than
            there are set abstraction levels (default: ``((256, 256), (256, 128),
            (128, 128, 128))``).
        head_channels: hidden widths of the per-point head (default: ``(128,)``).
        dropout: dropout after every hidden layer of the head (default: ``0.5``).

    Shapes:
        ``data.pos (N, 3)``, ``data.x (N, in_channels)``, ``data.batch (N,)``,
        ``data.category (B,)`` -> ``(N, num_classes)``
    """

    task = "segmentation"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        num_categories: int,
        ratios: tuple[float, ...] = (0.5, 0.25),
        radii: tuple[float, ...] = (0.2, 0.4),
        max_neighbors: tuple[int, ...] = (32, 64),
        sa_channels: tuple[tuple[int, ...], ...] = ((64, 64, 128), (128, 128, 256)),
        global_channels: tuple[int, ...] = (256, 512, 1024),
        fp_channels: tuple[tuple[int, ...], ...] = ((256, 256), (256, 128), (128, 128, 128)),
        head_channels: tuple[int, ...] = (128,),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_dropout(dropout)
        if isinstance(num_categories, bool) or num_categories < 1:
            raise ValueError(f"num_categories must be an int >= 1, got {num_categories!r}")
        if len(fp_channels) != len(sa_channels) + 1:
            raise ValueError(
                f"fp_channels needs one entry per set abstraction level plus one for the "
                f"global level ({len(sa_channels) + 1}), got {len(fp_channels)}"
            )
        self.in_channels, self.num_categories = in_channels, num_categories
        c_in = POS_DIM + in_channels
        self.levels, self.global_level = _encoder(
            c_in, ratios, radii, max_neighbors, sa_channels, global_channels
        )
        # skip widths, coarsest first: the SA outputs from the last, then the input + one-hot
        skips = [chans[-1] for chans in reversed(sa_channels)] + [num_categories + c_in]
        self.fp_levels = nn.ModuleList()
        c = global_channels[-1]
        for skip, chans in zip(skips, fp_channels, strict=True):
            self.fp_levels.append(FeaturePropagation(c, skip, tuple(chans)))
            c = chans[-1]
        head: list[nn.Module] = []
        for c_out in head_channels:
            head += [mlp([c, c_out]), nn.Dropout(dropout)]
            c = c_out
        head.append(nn.Linear(c, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, data) -> Tensor:
        x = node_features(data, self.in_channels)  # (N, 3 + C_in)
        batch, num_graphs = batch_of(data)
        onehot = shape_category_onehot(data, batch, num_graphs, self.num_categories)  # (N, K)
        onehot = onehot.to(x.dtype)
        pos, batch_l = data.pos, batch
        skips = [(torch.cat([onehot, x], dim=1), pos, batch_l)]  # (N, K + 3 + C_in)
        for level in self.levels:
            x, pos, batch_l = level(x, pos, batch_l)  # (M_l, C_l), (M_l, 3), (M_l,)
            skips.append((x, pos, batch_l))
        x = self.global_level(x, pos, batch_l, num_graphs)  # (B, C_global)

        pos, batch_l = None, None  # the global level: one feature per cloud
        for fp, (skip, pos_skip, batch_skip) in zip(self.fp_levels, reversed(skips), strict=True):
            x = fp(x, pos, batch_l, skip, pos_skip, batch_skip)  # (M_l, C_fp), finest last
            pos, batch_l = pos_skip, batch_skip
        return self.head(x)  # (N, num_classes)

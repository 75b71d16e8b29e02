r"""DGCNN, the dynamic graph CNN of `Wang et al. (2019) <https://arxiv.org/abs/1801.07829>`_:
stacked :class:`EdgeConv` layers whose kNN graph is rebuilt in the feature space of each layer,
as a classifier (:class:`DGCNNCls`) and a part segmenter (:class:`DGCNNSeg`).

Differences from the reference implementation, all deliberate:

* no spatial transform network in front of the part segmenter (the paper's ablations show it
  adds little);
* the part segmenter defaults to ``k = 20`` neighbours (the paper uses 40 there) to keep it
  affordable; pass ``k=40`` for the paper's setting;
* the category one-hot is embedded per point rather than per cloud (the same values in eval
  mode; it keeps BatchNorm usable with one cloud per batch).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import scatter
from .common import batch_of, global_pool, knn_edges, node_features, shape_category_onehot

__all__ = ["EdgeConv", "DGCNNCls", "DGCNNSeg"]

POS_DIM = 3  # positions (N, 3) enter every model as features (see node_features)


def _lin_bn_act(c_in: int, c_out: int, slope: float) -> nn.Sequential:
    """``Linear - BatchNorm1d - LeakyReLU``, DGCNN's unit everywhere outside the last layer."""
    return nn.Sequential(
        nn.Linear(c_in, c_out, bias=False),
        nn.BatchNorm1d(c_out),
        nn.LeakyReLU(slope, inplace=True),
    )


def _flat(seq: nn.Sequential) -> list[nn.Module]:
    """The modules of nested ``Sequential`` containers, in the order they run."""
    out: list[nn.Module] = []
    for m in seq:
        out.extend(_flat(m) if isinstance(m, nn.Sequential) else [m])
    return out


def _check_positive(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")


class EdgeConv(nn.Module):
    r"""The edge convolution of DGCNN (`Wang et al., 2019 <https://arxiv.org/abs/1801.07829>`_):
    every point max-pools an MLP of its own features and the feature offset to each neighbour.

    .. math::
        y_i = \max_{j \in \mathrm{kNN}(i)} h_\Theta([x_i;\, x_j - x_i]), \qquad
        h_\Theta = \mathrm{LeakyReLU}_{0.2} \circ \mathrm{BN} \circ \mathrm{Linear}
        \ (\text{repeated } \texttt{num\_layers} \text{ times})

    In the unified form :math:`y_i = \frac{1}{C_i}\sum_j f\,g`, N is the kNN graph, the sum is
    replaced by a max, there is no normaliser and ``g`` is the edge MLP :math:`h_\Theta`.

    Without ``edge_index`` the graph is **dynamic**: the ``k`` nearest neighbours of each
    point in the space of the layer's input features ``x``, built from ``x.detach()`` (the
    neighbour choice is not differentiated). The point itself counts among its ``k``
    neighbours, as the paper states ("the graph includes self-loop") and the reference code
    does (its ``topk`` of negative distances returns the point itself first); its edge feature
    is :math:`[x_i; 0]`. Clouds smaller than ``k`` cap ``k`` at the smallest cloud of the
    batch.

    The first ``Linear`` is applied per point, not per edge:
    :math:`W [x_i; x_j - x_i] = (W_1 - W_2) x_i + W_2 x_j` with :math:`W = [W_1, W_2]`, which
    gives the same values at ``k`` times fewer multiplications. The last LeakyReLU runs after
    the max (it is increasing, so the two commute): the edges keep one ``(E, C_out)`` tensor
    less for backward, and the max keeps only the index of each maximum.

    Args:
        in_channels: width of ``x``.
        out_channels: output width (and width of every hidden layer of :math:`h_\Theta`).
        k: neighbours per point, itself included (default: ``20``).
        num_layers: ``Linear-BN-LeakyReLU`` layers in :math:`h_\Theta` (default: ``1``; the
            paper's part segmenter uses ``2`` in its first two blocks).
        negative_slope: LeakyReLU slope (default: ``0.2``).

    Shapes:
        ``x (N, C_in)``, ``batch (N,)`` sorted, optional ``edge_index (2, E)`` sorted by target
        (row 0 the neighbour j, row 1 the point i) -> ``(N, C_out)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        k: int = 20,
        num_layers: int = 1,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        _check_positive(k, "k")
        _check_positive(num_layers, "num_layers")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.k, self.num_layers = k, num_layers
        self.lin = nn.Linear(2 * in_channels, out_channels, bias=False)  # on [x_i; x_j - x_i]
        rest: list[nn.Module] = [nn.BatchNorm1d(out_channels), nn.LeakyReLU(negative_slope, True)]
        for _ in range(num_layers - 1):
            rest.append(_lin_bn_act(out_channels, out_channels, negative_slope))
        self.rest = nn.Sequential(*rest)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        for m in self.rest.modules():
            if isinstance(m, (nn.Linear, nn.BatchNorm1d)):
                m.reset_parameters()

    def forward(self, x: Tensor, batch: Tensor, edge_index: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(
                f"EdgeConv expects x of shape (N, {self.in_channels}), got {tuple(x.shape)}"
            )
        if edge_index is None:
            edge_index = knn_edges(x, self.k, batch, loop=True)  # (2, N k), in feature space
        src, dst = edge_index[0], edge_index[1]  # (E,), (E,)
        c = self.in_channels
        w = self.lin.weight  # (C_out, 2 C_in) = [W_1, W_2]
        x_self = x @ (w[:, :c] - w[:, c:]).t()  # (N, C_out), (W_1 - W_2) x_i
        x_nbr = x @ w[:, c:].t()  # (N, C_out), W_2 x_j
        h = x_self.index_select(0, dst).add_(x_nbr.index_select(0, src))  # (E, C_out)
        *edge_layers, last_act = _flat(self.rest)
        for layer in edge_layers:
            h = layer(h)  # (E, C_out), up to the last LeakyReLU
        # LeakyReLU is increasing, so it commutes with the max: one activation per point, not
        # per edge, and no (E, C_out) activation kept for backward
        return last_act(scatter(h, dst, x.size(0), "max"))  # (N, C_out)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, k={self.k}, num_layers={self.num_layers}"


class DGCNNCls(nn.Module):
    r"""DGCNN classifier (`Wang et al., 2019 <https://arxiv.org/abs/1801.07829>`_, Fig. 3 top).

    Four :class:`EdgeConv` layers (the first on the kNN graph of the positions, the others on
    dynamic graphs of their input features); their outputs are concatenated and lifted by a
    shared ``Linear-BN-LeakyReLU`` to ``emb_channels``; global max and mean pooling,
    concatenated, feed an MLP ``512 - 256 - num_classes`` with dropout.

    .. math::
        x^{(l)} = \mathrm{EdgeConv}_l(x^{(l-1)}), \quad
        e = \phi([x^{(1)}; \dots; x^{(4)}]), \quad
        \mathrm{logits} = \mathrm{MLP}([\max_i e_i; \mathrm{mean}_i e_i])

    Args:
        in_channels: width of ``data.x`` (``0``: positions only).
        num_classes: number of shape classes.
        k: neighbours per point in every EdgeConv, itself included (default: ``20``).
        channels: output widths of the EdgeConv layers (default: ``(64, 64, 128, 256)``).
        emb_channels: width of the point embedding before pooling (default: ``1024``).
        head_channels: hidden widths of the classifier MLP (default: ``(512, 256)``).
        dropout: dropout after every hidden layer of the head (default: ``0.5``).
        negative_slope: LeakyReLU slope (default: ``0.2``).

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
        k: int = 20,
        channels: tuple[int, ...] = (64, 64, 128, 256),
        emb_channels: int = 1024,
        head_channels: tuple[int, ...] = (512, 256),
        dropout: float = 0.5,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        _check_positive(k, "k")
        _check_dropout(dropout)
        if len(channels) == 0:
            raise ValueError("channels must name at least one EdgeConv width")
        self.in_channels, self.k = in_channels, k
        widths = [POS_DIM + in_channels, *channels]
        self.convs = nn.ModuleList(
            EdgeConv(c_in, c_out, k=k, negative_slope=negative_slope)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.emb = _lin_bn_act(sum(channels), emb_channels, negative_slope)
        head: list[nn.Module] = []
        c = 2 * emb_channels
        for c_out in head_channels:
            head += [_lin_bn_act(c, c_out, negative_slope), nn.Dropout(dropout)]
            c = c_out
        head.append(nn.Linear(c, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, data) -> Tensor:
        x = node_features(data, self.in_channels)  # (N, 3 + C_in)
        batch, num_graphs = batch_of(data)
        edge_index = knn_edges(data.pos, self.k, batch, loop=True)  # (2, N k), positions
        xs = []
        for i, conv in enumerate(self.convs):
            x = conv(x, batch, edge_index if i == 0 else None)  # (N, C_l)
            xs.append(x)
        e = self.emb(torch.cat(xs, dim=1))  # (N, emb)
        g = torch.cat(
            [
                global_pool(e, batch, num_graphs, "max"),
                global_pool(e, batch, num_graphs, "mean"),
            ],
            dim=1,
        )  # (B, 2 emb)
        return self.head(g)  # (B, num_classes)


class DGCNNSeg(nn.Module):
    r"""DGCNN part segmenter (`Wang et al., 2019 <https://arxiv.org/abs/1801.07829>`_, Fig. 3
    bottom).

    Three :class:`EdgeConv` blocks (the first on the kNN graph of the positions, the others
    dynamic; two-layer edge MLPs in the first two blocks as in the paper); their outputs,
    concatenated and lifted to ``emb_channels``, are max-pooled per cloud; the global feature
    and the embedded category one-hot are repeated on every point and concatenated with the
    three local features; a per-point MLP ``256 - 256 - 128 - num_classes`` (dropout after the
    first two) gives the part logits.

    .. math::
        z_i = \mathrm{MLP}\big([\max_{j \in \mathrm{cloud}(i)} e_j;\; \psi(\mathrm{onehot}_i);\;
        x^{(1)}_i; x^{(2)}_i; x^{(3)}_i]\big)

    Args:
        in_channels: width of ``data.x`` (``0``: positions only).
        num_classes: number of part labels (over all categories).
        num_categories: number of shape categories (width of the one-hot).
        k: neighbours per point in every EdgeConv, itself included (default: ``20``; the
            paper uses ``40`` for part segmentation).
        channels: output widths of the EdgeConv blocks (default: ``(64, 64, 64)``).
        edge_layers: layers of each block's edge MLP (default: ``(2, 2, 1)``).
        emb_channels: width of the point embedding before global pooling (default: ``1024``).
        category_channels: width of the embedded category (default: ``64``).
        head_channels: hidden widths of the per-point MLP (default: ``(256, 256, 128)``).
        dropout: dropout after every hidden layer of the head but the last (default: ``0.5``).
        negative_slope: LeakyReLU slope (default: ``0.2``).

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
        k: int = 20,
        channels: tuple[int, ...] = (64, 64, 64),
        edge_layers: tuple[int, ...] = (2, 2, 1),
        emb_channels: int = 1024,
        category_channels: int = 64,
        head_channels: tuple[int, ...] = (256, 256, 128),
        dropout: float = 0.5,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        _check_positive(k, "k")
        _check_positive(num_categories, "num_categories")
        _check_dropout(dropout)
        if len(channels) == 0 or len(channels) != len(edge_layers):
            raise ValueError(
                "channels and edge_layers must be non-empty and of the same length, got "
                f"{len(channels)} and {len(edge_layers)}"
            )
        self.in_channels, self.num_categories, self.k = in_channels, num_categories, k
        widths = [POS_DIM + in_channels, *channels]
        self.convs = nn.ModuleList(
            EdgeConv(c_in, c_out, k=k, num_layers=n, negative_slope=negative_slope)
            for c_in, c_out, n in zip(widths[:-1], widths[1:], edge_layers, strict=True)
        )
        self.emb = _lin_bn_act(sum(channels), emb_channels, negative_slope)
        self.category = _lin_bn_act(num_categories, category_channels, negative_slope)
        head: list[nn.Module] = []
        c = emb_channels + category_channels + sum(channels)
        for i, c_out in enumerate(head_channels):
            head.append(_lin_bn_act(c, c_out, negative_slope))
            if i < len(head_channels) - 1:
                head.append(nn.Dropout(dropout))
            c = c_out
        head.append(nn.Linear(c, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, data) -> Tensor:
        x = node_features(data, self.in_channels)  # (N, 3 + C_in)
        batch, num_graphs = batch_of(data)
        onehot = shape_category_onehot(data, batch, num_graphs, self.num_categories)  # (N, K)
        onehot = onehot.to(x.dtype)
        edge_index = knn_edges(data.pos, self.k, batch, loop=True)  # (2, N k), positions
        xs = []
        for i, conv in enumerate(self.convs):
            x = conv(x, batch, edge_index if i == 0 else None)  # (N, C_l)
            xs.append(x)
        e = self.emb(torch.cat(xs, dim=1))  # (N, emb)
        g = global_pool(e, batch, num_graphs, "max").index_select(0, batch)  # (N, emb)
        h = torch.cat([g, self.category(onehot), *xs], dim=1)  # (N, emb + cat + sum C_l)
        return self.head(h)  # (N, num_classes)

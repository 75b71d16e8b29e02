r"""A^2-Net's double attention: gather into a few feature-less virtual nodes, distribute back."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graphs import slot_graph
from .attention import NodeAttention
from .base import Edges, Similarity
from .image import ImageNodes, check_image, check_nodes, is_image, node_batch, to_image
from .value import LinearValue

__all__ = ["DoubleAttention", "SlotScore"]


def _num_samples(batch: Tensor) -> int:
    return int(batch.max()) + 1 if batch.numel() else 0


class SlotScore(Similarity):
    r"""A logit that one end of an edge gives to the *index* of the other, feature-less end:
    :math:`s_{ij} = (W x_i + b)_{k(j)}` (``scored="target"``) or
    :math:`s_{ij} = (W x_j + b)_{k(i)}` (``scored="source"``), where the feature-less end is
    virtual node :math:`b S + k` of sample ``b`` and :math:`k` its index among the ``S``.

    A^2-Net's gather step (virtual node ``k`` weighs pixel ``j`` by :math:`b_k(x_j)`) and its
    distribute step (pixel ``i`` weighs virtual node ``k`` by :math:`v_k(x_i)`).

    Args:
        in_channels: width of the scored features.
        slots: number of virtual nodes per sample ``S``.
        scored: which end carries the features, ``"source"`` or ``"target"``.
        bias: a bias per slot (default: ``True``).
    """

    def __init__(self, in_channels: int, slots: int, *, scored: str, bias: bool = True) -> None:
        super().__init__()
        if scored not in ("source", "target"):
            raise ValueError(f"scored must be 'source' or 'target', got {scored!r}")
        self.slots, self.scored = slots, scored
        self.lin = nn.Linear(in_channels, slots, bias=bias)

    def forward(self, x_dst: Tensor, x_src: Tensor | None, edges: Edges) -> Tensor:
        if self.scored == "source":
            s = self.lin(x_src)  # (N_src, S)
            return s[edges.src, edges.dst % self.slots].unsqueeze(-1)  # (E, 1)
        s = self.lin(x_dst)  # (N_dst, S)
        return s[edges.dst, edges.src % self.slots].unsqueeze(-1)  # (E, 1)

    def extra_repr(self) -> str:
        return f"slots={self.slots}, scored={self.scored!r}"


class DoubleAttention(nn.Module):
    r"""The double attention block from `"A^2-Nets: Double Attention Networks"
    <https://arxiv.org/abs/1810.11579>`_, as two passes through ``c_n`` feature-less virtual
    nodes per sample:

    .. math::
        G_k = \frac{1}{C_k} \sum_{j \in \mathcal N(k)} e^{b_k(x_j)}\, \phi(x_j), \qquad
        z_i = \frac{1}{C_i} \sum_{k \in \mathcal N(i)} e^{v_k(x_i)}\, G_k, \qquad
        y_i = x_i + W_z z_i

    Gather: :math:`\mathcal N(k)` = the nodes of virtual node ``k``'s sample, ``f`` depends on
    the key and the target's index (:math:`B = \theta(X)`, a 1x1 conv ``C -> c_n``), ``C_k``
    its softmax over the ``N`` nodes and ``g = \phi`` a 1x1 conv ``C -> c_m``; this is
    :math:`G = A\, \mathrm{softmax}_N(B)^\top`. Distribute: :math:`\mathcal N(i)` = the ``c_n``
    virtual nodes of ``i``'s sample, ``f`` depends on the query and the key's index
    (:math:`V = \rho(X)`, ``C -> c_n``), ``C_i`` its softmax over the ``c_n`` virtual nodes and
    ``g`` the identity on :math:`G_k`; this is :math:`z_i = G\, \mathrm{softmax}_{c_n}(v_i)`.
    :math:`W_z` (1x1 conv ``c_m -> C``) and the residual follow the paper.

    Reference code: the External-Attention-pytorch file (``A2Atttention.py``) calls
    ``F.softmax`` without ``dim`` on ``(b, c_n, hw)`` tensors, which PyTorch's legacy rule
    resolves to dim 0, *the batch axis* (later versions pass ``dim=1``, the ``c_n`` axis, for
    both maps); both are wrong for the gather map, which the paper normalises over the
    positions. We use the paper's axes. That file also has no residual; the paper adds the
    block's output to its input, and so do we. Init as in that file: Kaiming normal
    (``fan_out``) weights, zero biases.

    Args:
        in_channels: input and output width ``C``.
        c_m: width of the gathered descriptors (default: ``max(C // 4, 1)``, the demo's).
        c_n: number of virtual nodes per sample (default: ``max(C // 4, 1)``).

    Shapes:
        - **x:** image ``(B, C, H, W)``, or nodes ``(N, C)`` with an optional ``batch (N,)``
        - **output:** ``(B, C, H, W)`` or ``(N, C)``
    """

    def __init__(self, in_channels: int, *, c_m: int | None = None, c_n: int | None = None):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        c_m = max(in_channels // 4, 1) if c_m is None else c_m
        c_n = max(in_channels // 4, 1) if c_n is None else c_n
        for name, v in (("c_m", c_m), ("c_n", c_n)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_channels, self.c_m, self.c_n = in_channels, c_m, c_n
        # virtual node k <- nodes j: logit b_k(x_j), softmax over j, value phi(x_j)
        self.gather = NodeAttention(
            (in_channels, 0),
            c_m,
            similarity=SlotScore(in_channels, c_n, scored="source"),
            normalize="softmax",
            value=LinearValue(in_channels, c_m, bias=True),
            bias=False,
        )
        # node i <- virtual nodes k: logit v_k(x_i), softmax over k, value G_k
        self.distribute = NodeAttention(
            (c_m, in_channels),
            c_m,
            similarity=SlotScore(in_channels, c_n, scored="target"),
            normalize="softmax",
            value="identity",
            bias=False,
        )
        self.reconstruct = nn.Linear(c_m, in_channels)  # W_z
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Kaiming normal (``fan_out``) weights and zero biases, as the reference code."""
        for lin in (
            self.gather.similarity.lin,
            self.gather.value.lin,
            self.distribute.similarity.lin,
            self.reconstruct,
        ):
            nn.init.kaiming_normal_(lin.weight, mode="fan_out")
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, *, batch: Tensor | None = None) -> Tensor:
        r"""Gather, distribute, project, add.

        Args:
            x: an image ``(B, C, H, W)`` or node features ``(N, C)``.
            batch: sample of each node ``(N,)``, sorted (node mode; default: one sample).
        """
        if is_image(x):
            nodes = self._image(x, batch)
            return to_image(self._nodes(nodes.x, nodes.batch)[0], nodes)
        return self._nodes(x, self._check_nodes(x, batch))[0]

    def attention_weights(
        self, x: Tensor, *, batch: Tensor | None = None, stage: str = "distribute"
    ) -> tuple[Tensor, Tensor]:
        r"""The softmax weights of one stage.

        Args:
            x, batch: as in :meth:`forward`.
            stage: ``"gather"`` (edges node ``j`` -> virtual node ``b * c_n + k``, weights
                :math:`\mathrm{softmax}_j b_k(x_j)`) or ``"distribute"`` (edges virtual node ->
                node ``i``, weights :math:`\mathrm{softmax}_k v_k(x_i)`; default).

        Returns:
            ``(edge_index, weights (E, 1))``; nodes of an image are its ``B * H * W`` pixels in
            row-major order.
        """
        if stage not in ("gather", "distribute"):
            raise ValueError(f"stage must be 'gather' or 'distribute', got {stage!r}")
        if is_image(x):
            nodes = self._image(x, batch)
            x, batch = nodes.x, nodes.batch
        else:
            batch = self._check_nodes(x, batch)
        _, down, up, g, virt = self._nodes(x, batch)
        if stage == "gather":
            return self.gather.attention_weights((x, virt), down)
        return self.distribute.attention_weights((g, x), up)

    def _nodes(self, x: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        up = slot_graph(batch, self.c_n)  # virtual -> node, sorted by node
        down = up.flip(0)  # node -> virtual
        down = down[:, torch.argsort(down[1], stable=True)]  # sorted by virtual node
        virt = x.new_zeros(_num_samples(batch) * self.c_n, 0)  # feature-less virtual nodes
        g = self.gather((x, virt), down)  # (B * c_n, c_m)
        z = self.distribute((g, x), up)  # (N, c_m)
        return x + self.reconstruct(z), down, up, g, virt  # (N, C)

    def _image(self, x: Tensor, batch: Tensor | None) -> ImageNodes:
        return check_image(x, self.in_channels, self, batch=batch)

    def _check_nodes(self, x: Tensor, batch: Tensor | None) -> Tensor:
        return node_batch(check_nodes(x, self.in_channels, self), batch)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, c_m={self.c_m}, c_n={self.c_n}"

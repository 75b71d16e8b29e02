r"""External attention (Guo, Liu, Mu and Hu, "Beyond Self-attention: External Attention using
Two Linear Layers for Visual Tasks", 2021): attention over a small learned memory."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_batch, check_features, shape_of
from ..graphs import slot_graph
from ..ops import segment_softmax
from .attention import NodeAttention
from .image import check_image, is_image, to_image
from .normalize import DoubleNormalize
from .similarity import MemoryKeys
from .value import SlotValue

__all__ = ["ExternalAttention"]


class ExternalAttention(nn.Module):
    r"""External attention of `"Beyond Self-attention: External Attention using Two Linear
    Layers for Visual Tasks" <https://arxiv.org/abs/2105.02358>`_:

    .. math::
        y_i = \frac{1}{C_i} \sum_{k=1}^{S} \frac{e^{x_i^\top M_k[k]}}{Z_k}\, M_v[k], \quad
        Z_k = \sum_{i' \in \text{sample}(i)} e^{x_{i'}^\top M_k[k]}, \quad
        C_i = \epsilon + \sum_{k} \frac{e^{x_i^\top M_k[k]}}{Z_k}

    :math:`\mathcal N(i)` is the ``S`` memory slots of ``i``'s sample: every sample gets its own
    copy of the slot nodes (:func:`~pcattn.graphs.slot_graph`: source ``b * S + k`` sends to
    every node of sample ``b``), so the softmax over the queries never mixes samples; ``f`` is
    :math:`e^{x_i^\top M_k[k]} / Z_k` (softmax over the queries of each slot), ``C`` the L1 sum
    over the slots plus :math:`\epsilon = 10^{-9}` (``C = double``) and ``g`` the slot's row
    of :math:`M_v`.

    * ``heads=1`` (and no ``expansion``): the single-head operator of the paper /
      External-Attention-pytorch: :math:`M_k` = ``Linear(d, S, bias=False)``, :math:`M_v` =
      ``Linear(S, d, bias=False)``, both initialised with std 0.001 as that code, no other
      projection. (That code normalises without :math:`\epsilon`; the 1e-9 of EANet is kept.)
    * multi-head (``heads > 1`` or ``expansion`` given): EANet's
      ``multi_head_attention_torch.Attention``: ``Linear(d, e d)`` (``e = expansion``, default
      4), ``e H`` heads of ``d / H`` channels sharing :math:`M_k` = ``Linear(d / H, S)`` and
      :math:`M_v` = ``Linear(S, d / H)`` (both with bias; :math:`M_v`'s bias is added after the
      aggregation, as ``linear_1`` does), then ``Linear(e d, d)``. PyTorch's default
      initialisation (that file sets none). EANet's ``S = 256 / 4 = 64`` is the default.

    Args:
        in_channels: feature width ``d``.
        slots: memory size ``S`` (default: ``64``).
        heads: number of heads ``H`` (default: ``1``).
        expansion: width factor ``e`` of the multi-head form (default: ``None``: 4 when
            ``heads > 1``, the single-head form otherwise).

    Shapes:
        - **x:** ``(N, d)`` with ``batch (N,)`` sorted (optional: one sample), or an image
          ``(B, d, H, W)`` (each image is one sample)
        - **output:** ``(N, d)`` or ``(B, d, H, W)``
    """

    def __init__(
        self,
        in_channels: int,
        *,
        slots: int = 64,
        heads: int = 1,
        expansion: int | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("slots", slots), ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if expansion is not None and (
            isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1
        ):
            raise ValueError(f"expansion must be a positive int or None, got {expansion!r}")
        if in_channels % heads != 0:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by heads ({heads})")
        self.in_channels, self.slots, self.heads = in_channels, slots, heads
        self.multi_head = heads > 1 or expansion is not None
        self.expansion = (4 if expansion is None else expansion) if self.multi_head else 1
        width = in_channels * self.expansion  # e d
        total_heads = heads * self.expansion  # e H
        d = width // total_heads  # d / H
        if self.multi_head:
            self.expand = nn.Linear(in_channels, width)
            self.proj = nn.Linear(width, in_channels)
            self.value_bias = nn.Parameter(torch.empty(d))
        else:
            self.expand = self.proj = None
            self.register_parameter("value_bias", None)
        self.attn = NodeAttention(
            width,
            width,
            similarity=MemoryKeys(d, slots, heads=total_heads, bias=self.multi_head),
            normalize=DoubleNormalize(eps=1e-9),
            value=SlotValue(slots, d, heads=total_heads),
            heads=total_heads,
            bias=False,
        )
        #: run the node-slot matrix directly (``True``, default: ``N S`` logits, no edge list)
        #: or message passing on :func:`~pcattn.graphs.slot_graph` (the same numbers)
        self.dense = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Std 0.001 normal memories (single head); PyTorch defaults (multi-head)."""
        mk, mv = self.attn.similarity.memory, self.attn.value.memory
        if self.multi_head:
            for lin in (self.expand, self.proj, mk, mv):
                lin.reset_parameters()
            bound = 1.0 / self.slots**0.5  # nn.Linear(S, d)'s default bias init
            nn.init.uniform_(self.value_bias, -bound, bound)
        else:
            nn.init.normal_(mk.weight, std=0.001)
            nn.init.normal_(mv.weight, std=0.001)

    def _slots_dense(self, h: Tensor, batch: Tensor | None) -> Tensor:
        """The same operator on the ``(N, e H, S)`` node-slot matrix: every node meets every
        slot of its sample, so the edges of :meth:`_graph` are that matrix's entries and the
        softmax over the queries of a slot is a segment softmax over the nodes of a sample."""
        sim, val = self.attn.similarity, self.attn.value
        heads = sim.heads
        a = sim.memory(h.view(h.size(0), heads, -1))  # (N, e H, S)
        if batch is None:
            a = a.softmax(0)  # one sample: over all nodes
        else:
            a = segment_softmax(a, batch, int(batch.max()) + 1 if batch.numel() else 0)
        a = a / (self.attn.normalize.eps + a.sum(-1, keepdim=True))  # L1 over the slots
        y = a @ val.memory.weight.t()  # (N, e H, d / H)
        return y.reshape(h.size(0), -1)  # (N, e d)

    def _graph(self, n: int, batch: Tensor | None, device: torch.device) -> tuple[Tensor, int]:
        """Slot ``(b, k)`` -> every node of sample ``b``: ``(2, N S)`` target-sorted, and the
        number of slot nodes ``B S``."""
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=device)
        b = int(batch.max()) + 1 if n else 0
        return slot_graph(batch, self.slots), b * self.slots

    def _nodes(self, x: Tensor, batch: Tensor | None) -> tuple[Tensor, Tensor | None]:
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() != 2:
            got = shape_of(x)
            raise ValueError(f"{name}: x must be (N, C) or an image (B, C, H, W), got {got}")
        if x.size(1) != self.in_channels:
            raise ValueError(
                f"{name}: x has {x.size(1)} channels, in_channels is {self.in_channels}"
            )
        check_features(x, self, name)
        if batch is not None:
            batch = check_batch(batch, x.size(0), "batch", "x", x.device)
        return x, batch

    def _run(
        self, x: Tensor, batch: Tensor | None, weights: bool
    ) -> Tensor | tuple[Tensor, Tensor]:
        if is_image(x):
            nodes = check_image(x, self.in_channels, self, batch=batch)
            xn, batch = nodes.x, nodes.batch
        else:
            nodes = None
            xn, batch = self._nodes(x, batch)
        if xn.size(0) == 0 and not weights:  # the core cannot view (0, -1)
            return xn.new_zeros(0, self.in_channels)
        h = self.expand(xn) if self.expand is not None else xn  # (N, e d)
        if weights:
            ei, num_src = self._graph(xn.size(0), batch, xn.device)
            return self.attn.attention_weights((None, h), ei, num_src=num_src)
        if self.dense:
            y = self._slots_dense(h, batch)  # (N, e d)
        else:
            ei, num_src = self._graph(xn.size(0), batch, xn.device)
            y = self.attn((None, h), ei, num_src=num_src)  # (N, e d)
        if self.multi_head:
            y = y.view(y.size(0), -1, self.value_bias.numel()) + self.value_bias  # (N, e H, d/H)
            y = self.proj(y.reshape(y.size(0), -1))  # (N, d)
        return y if nodes is None else to_image(y, nodes)

    def forward(self, x: Tensor, *, batch: Tensor | None = None) -> Tensor:
        r"""Attend from every node (pixel) to its sample's memory slots.

        Args:
            x: node features ``(N, d)`` or an image ``(B, d, H, W)``.
            batch: sample of each node ``(N,)``, sorted (node path only).
        """
        return self._run(x, batch, weights=False)

    def attention_weights(self, x: Tensor, *, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""``(edge_index, weights (N S, e H))``: edge ``b * S + k -> i`` carries the weight of
        slot ``k`` for node ``i`` (one column per head)."""
        return self._run(x, batch, weights=True)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, slots={self.slots}, heads={self.heads}"
        return s + (f", expansion={self.expansion}" if self.multi_head else "")

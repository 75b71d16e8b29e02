r"""Dense or sparse: how :class:`~pcattn.nn.NodeAttention` runs an all-pairs neighbourhood.

When every node attends to every node of its sample (:func:`pcattn.graphs.full_graph`, or
``edge_index=None`` with a ``batch``), softmax dot-product attention can run as
:func:`torch.nn.functional.scaled_dot_product_attention` on the samples padded to a dense
batch ``(B, H, n_max, d)``: PyTorch's fused kernels (flash / memory-efficient on GPU, a tiled
flash kernel on CPU) never store the ``n x n`` scores, where message passing keeps a logit and a
weight per edge and head. Padding costs ``B * n_max^2`` against ``sum_b n_b^2`` pairs, so very
uneven samples go sparse. :func:`plan_attention` makes that choice from the sample sizes, the
edge count and a memory budget; ``backend="dense"`` / ``"sparse"`` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AttentionPlan", "all_pairs_sizes", "plan_attention", "DEFAULT_BUDGET_BYTES"]

BACKENDS = ("auto", "dense", "sparse")

#: memory the sparse path may use for its per-edge tensors before ``"auto"`` prefers dense
DEFAULT_BUDGET_BYTES = 2 << 30

_MAX_PADDING = 2.0  # "auto" goes sparse when padding more than doubles the pairs


@dataclass
class AttentionPlan:
    """What :func:`plan_attention` chose and why.

    Attributes:
        backend: ``"dense"`` or ``"sparse"``.
        reason: one line saying why.
        sparse_bytes: estimated per-edge memory of the sparse path.
        dense_bytes: estimated memory of the padded dense inputs and outputs.
        padding: ``B * n_max^2 / sum_b n_b^2`` (1 when every sample has the same size).
    """

    backend: str
    reason: str
    sparse_bytes: int
    dense_bytes: int
    padding: float


def all_pairs_sizes(edge_index: Tensor, num_nodes: int) -> Tensor | None:
    r"""The sample sizes ``(B,)`` if ``edge_index`` is exactly
    :func:`~pcattn.graphs.full_graph` of contiguous samples with self loops (target-sorted,
    sources ascending: what ``full_graph`` returns), else ``None``. ``O(E)`` integer work, no
    per-pair allocation beyond the comparison."""
    e = edge_index.size(1)
    if num_nodes == 0 or e < num_nodes or e > num_nodes * num_nodes:
        return None
    src, dst = edge_index[0], edge_index[1]
    if int(dst.min()) < 0:
        return None  # not a full graph; the layer's own checks name the bad ids
    counts = torch.bincount(dst, minlength=num_nodes)
    if counts.numel() != num_nodes or bool((counts == 0).any()):
        return None
    ptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=dst.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    if not bool((dst[1:] >= dst[:-1]).all()):
        return None
    first = src.index_select(0, ptr[:-1])  # (N,) first source of every target
    node = torch.arange(num_nodes, device=dst.device)
    # every target's sources are the contiguous range [first, first + deg) holding itself
    if bool((first > node).any()) or bool((first + counts <= node).any()):
        return None
    start = first == node  # (N,) a sample starts here
    prev_end = torch.cat([first.new_zeros(1), (first + counts)[:-1]])  # (N,)
    if bool((start & (prev_end != node) & (node > 0)).any()):
        return None  # a new range must begin where the previous one ended
    same = ~start
    if bool((same & ((first != torch.roll(first, 1)) | (counts != torch.roll(counts, 1)))).any()):
        return None  # targets of one sample share the range
    offset = torch.arange(e, device=dst.device) - ptr[:-1].repeat_interleave(
        counts, 0, output_size=e
    )
    if not torch.equal(src, first.repeat_interleave(counts, 0, output_size=e) + offset):
        return None
    sizes = counts[start]  # (B,)
    if int(sizes.sum()) != num_nodes:
        return None
    return sizes


def plan_attention(
    sizes: Tensor | None,
    num_edges: int,
    *,
    heads: int,
    channels: int,
    element_size: int = 4,
    backend: str = "auto",
    budget_bytes: int | None = None,
    supported: bool = True,
) -> AttentionPlan:
    r"""Choose the dense (SDPA) or the sparse (message passing) path.

    Args:
        sizes: nodes per sample when the neighbourhood is all-pairs, else ``None``.
        num_edges: ``E`` (``sum_b n_b^2`` for all-pairs).
        heads, channels: ``H`` and the total width ``H * d``.
        element_size: bytes per value (default: 4, float32).
        backend: ``"auto"`` (default), ``"dense"`` or ``"sparse"``.
        budget_bytes: memory the sparse path's per-edge tensors may take (default:
            :data:`DEFAULT_BUDGET_BYTES`).
        supported: whether the layer can run dense at all (softmax of a dot product with
            per-node values).

    ``"auto"`` runs dense when the graph is all-pairs, the layer supports it and padding at
    most doubles the pairs; with more padding it still runs dense if the sparse path would
    exceed the budget. ``"dense"`` on a graph that is not all-pairs raises.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    budget = DEFAULT_BUDGET_BYTES if budget_bytes is None else int(budget_bytes)
    # sparse: a logit, a weight and a gradient per edge and head (values go through sparse
    # products, no per-edge message); dense: padded q, k, v, out and their gradients
    sparse_bytes = 3 * num_edges * heads * element_size
    if not supported:
        if backend == "dense":
            raise ValueError(
                "backend='dense' needs a softmax of a dot product with per-node values and no "
                "edge weights or positions"
            )
        return AttentionPlan("sparse", "layer not SDPA-shaped", sparse_bytes, 0, 0.0)
    if sizes is None or sizes.numel() == 0:
        if backend == "dense":
            raise ValueError(
                "backend='dense' needs an all-pairs neighbourhood (pcattn.graphs.full_graph of "
                "contiguous samples with self loops, or edge_index=None with batch)"
            )
        return AttentionPlan("sparse", "not all-pairs", sparse_bytes, 0, 0.0)
    b, n_max = sizes.numel(), int(sizes.max())
    pairs = int((sizes.long() ** 2).sum())
    padding = b * n_max * n_max / max(pairs, 1)
    dense_bytes = 8 * b * n_max * channels * element_size
    if backend == "dense":
        return AttentionPlan("dense", "requested", sparse_bytes, dense_bytes, padding)
    if backend == "sparse":
        return AttentionPlan("sparse", "requested", sparse_bytes, dense_bytes, padding)
    if padding <= _MAX_PADDING:
        return AttentionPlan("dense", "all-pairs", sparse_bytes, dense_bytes, padding)
    if sparse_bytes > budget:
        return AttentionPlan(
            "dense", "all-pairs, sparse over budget", sparse_bytes, dense_bytes, padding
        )
    return AttentionPlan(
        "sparse", f"all-pairs but padding x{padding:.1f}", sparse_bytes, dense_bytes, padding
    )

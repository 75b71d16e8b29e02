r"""Dense reference path: the unified formula on full ``N_dst x N_src`` matrices.

Slow (quadratic) and meant for tests and for reading: given dense logits :math:`S` and the
edge multiplicities :math:`M` (:math:`M_{ij}` = number of edges ``j -> i``), a normaliser
``C`` gives dense weights :math:`A`, and :math:`Y = A V` per head. The sparse layers of
:mod:`pcattn.nn` must agree with these to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["multiplicity", "dense_normalize", "dense_aggregate"]


def multiplicity(edge_index: Tensor, num_dst: int, num_src: int, dtype=torch.float64) -> Tensor:
    r""":math:`M \in \mathbb N^{N_{dst} \times N_{src}}`, :math:`M_{ij}` = number of edges
    ``j -> i`` (``edge_index[0] = j``, ``edge_index[1] = i``)."""
    m = torch.zeros(num_dst, num_src, dtype=dtype)
    m.index_put_(
        (edge_index[1], edge_index[0]), torch.ones(edge_index.size(1), dtype=dtype), accumulate=True
    )
    return m


def dense_normalize(s: Tensor, m: Tensor, kind: str, eps: float = 1e-9) -> Tensor:
    r"""Weights :math:`A` from logits ``s (..., N_dst, N_src)`` and multiplicities ``m``.

    * ``softmax``: :math:`A_{ij} = M_{ij} e^{S_{ij}} / \sum_{j'} M_{ij'} e^{S_{ij'}}`
      (a row with no edge is 0);
    * ``mean``: :math:`M_{ij} S_{ij} / \sum_{j'} M_{ij'}`;
    * ``none``: :math:`M_{ij} S_{ij}`;
    * ``sym``: :math:`M_{ij} S_{ij} / \sqrt{d_i d_j}`, :math:`d_i = \sum_j M_{ij} S_{ij}`;
    * ``double``: :math:`\hat A = M e^{S} / \sum_{i'} M_{i'j} e^{S_{i'j}}` (over targets),
      then :math:`A_{ij} = \hat A_{ij} / (\epsilon + \sum_{j'} \hat A_{ij'})`.
    """
    has = m > 0
    tiny = torch.finfo(s.dtype).tiny
    if kind == "softmax":
        z = s.masked_fill(~has, float("-inf"))
        top = z.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
        e = torch.exp(z - top) * m
        den = e.sum(-1, keepdim=True)
        return torch.where(den > 0, e / den.clamp_min(tiny), torch.zeros_like(e))
    if kind == "mean":
        return s * m / m.sum(-1, keepdim=True).clamp_min(1.0)
    if kind == "none":
        return s * m
    if kind == "sym":
        a = s * m
        d = a.sum(-1)  # (..., N)
        inv = torch.where(d > 0, d.clamp_min(tiny).rsqrt(), torch.zeros_like(d))
        return inv.unsqueeze(-1) * a * inv.unsqueeze(-2)
    if kind == "double":
        z = s.masked_fill(~has, float("-inf"))
        top = z.amax(-2, keepdim=True).nan_to_num(neginf=0.0)
        e = torch.exp(z - top) * m
        den = e.sum(-2, keepdim=True)
        a = torch.where(den > 0, e / den.clamp_min(tiny), torch.zeros_like(e))
        return a / (eps + a.sum(-1, keepdim=True))
    raise ValueError(f"unknown normaliser {kind!r}")


def dense_aggregate(a: Tensor, v: Tensor, share: str = "contiguous") -> Tensor:
    r""":math:`Y = A V` per head.

    Args:
        a: weights ``(H, N_dst, N_src)`` (scalar score per head) or
            ``(H, C_f, N_dst, N_src)`` (vector score).
        v: values ``(N_src, H, D)``.
        share: how value channel ``c`` picks score channel ``c // (D / C_f)``
            (``"contiguous"``) or ``c mod C_f`` (``"interleaved"``).

    Returns:
        ``(N_dst, H, D)``.
    """
    if a.dim() == 3:
        return torch.einsum("hij,jhd->ihd", a, v)
    h, cf, nd, ns = a.shape
    d = v.size(-1)
    if share == "interleaved":
        idx = torch.arange(d) % cf
    else:
        idx = torch.arange(d) // (d // cf)
    a_c = a[:, idx]  # (H, D, N_dst, N_src): the score channel of every value channel
    return torch.einsum("hcij,jhc->ihc", a_c, v)

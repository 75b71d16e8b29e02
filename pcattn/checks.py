"""Argument validation shared by pcattn's public entry points.

Every function raises :class:`ValueError` naming the argument and what was wrong with it, so a
bad input fails at the boundary instead of becoming a silently wrong result further in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "shape_of",
    "check_positions",
    "check_batch",
    "check_positive_int",
    "positive_int_arg",
    "check_edge_index_shape",
    "check_features",
    "batch_sizes",
    "first_descent",
    "check_ascending",
    "check_has_coordinates",
    "DISTANCE_MARGIN",
    "distance_range_fault",
    "check_distance_range",
]


def shape_of(t: object) -> str:
    """The shape of a tensor as ``(N, C)``, or the type name of anything else (for errors)."""
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_positions(pos: object, name: str = "pos") -> Tensor:
    """``pos`` must be a finite floating-point tensor of shape ``(N, D)``."""
    if not isinstance(pos, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, D), got {shape_of(pos)}")
    if pos.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got {shape_of(pos)}")
    if not pos.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {pos.dtype}")
    finite = torch.isfinite(pos).all(dim=1)  # (N,)
    if not bool(finite.all()):
        row = int(torch.nonzero(~finite)[0, 0])
        raise ValueError(
            f"{name} contains NaN or inf (first at row {row}: {pos[row].tolist()}); "
            "remove or repair those points first"
        )
    return pos


def check_batch(
    batch: object,
    num_nodes: int,
    name: str = "batch",
    of: str = "pos",
    device: torch.device | None = None,
) -> Tensor:
    """``batch`` must be a sorted, non-negative integer tensor ``(N,)`` with one entry per node
    (on ``device`` when given: the device of ``of``)."""
    if not isinstance(batch, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N,), got {shape_of(batch)}")
    if device is not None and batch.device != device:
        raise ValueError(
            f"{name} is on {batch.device} but {of} is on {device}; they must be on one device"
        )
    if batch.dim() != 1:
        raise ValueError(f"{name} must be 1-D of shape (N,), got {shape_of(batch)}")
    if batch.dtype == torch.bool or batch.is_floating_point() or batch.is_complex():
        raise ValueError(f"{name} must be an integer tensor (int64), got {batch.dtype}")
    if batch.numel() != num_nodes:
        raise ValueError(
            f"{name} has {batch.numel()} entries but {of} has {num_nodes} rows; "
            "they must describe the same nodes"
        )
    if batch.numel() > 0:
        if int(batch.min()) < 0:
            raise ValueError(f"{name} must be non-negative, got min {int(batch.min())}")
        check_ascending(batch, name, "sorted ascending (nodes grouped by sample)")
    return batch.long()


def check_positive_int(value: object, name: str) -> int:
    """``value`` must be an ``int`` >= 1 (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def positive_int_arg(text: str) -> int:
    """An ``argparse`` type: an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def check_edge_index_shape(
    edge_index: object, owner: str, device: torch.device | None = None
) -> Tensor:
    """``edge_index`` must be an integer tensor ``(2, E)`` (on ``device`` when given); returns
    it as int64."""
    if (
        not isinstance(edge_index, Tensor)
        or edge_index.dim() != 2
        or edge_index.size(0) != 2
        or edge_index.dtype not in (torch.int64, torch.int32)
    ):
        raise ValueError(
            f"{owner}: edge_index must be an int64 tensor (2, E), got {shape_of(edge_index)}"
        )
    if device is not None and edge_index.device != device:
        raise ValueError(
            f"{owner}: edge_index is on {edge_index.device} but x is on {device}; "
            "they must be on one device"
        )
    return edge_index.long()


def check_features(x: Tensor, module: torch.nn.Module, owner: str, name: str = "x") -> Tensor:
    """``x`` must be floating point, on the device of ``module``'s parameters and of their
    dtype (any floating dtype under autocast, which casts for the layer itself)."""
    if not x.is_floating_point():
        raise ValueError(f"{owner}: {name} must be a floating-point tensor, got {x.dtype}")
    p = next(module.parameters(), None)
    if p is None:
        return x
    if x.device != p.device:
        raise ValueError(
            f"{owner}: {name} is on {x.device} but the layer's parameters are on {p.device}; "
            f"move one of them (layer.to({str(x.device)!r}) or {name}.to({str(p.device)!r}))"
        )
    if x.dtype != p.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(
            f"{owner}: {name} is {x.dtype} but the layer's parameters are {p.dtype}; convert "
            f"one of them (layer.to({x.dtype}) or {name}.to({p.dtype}))"
        )
    return x


def batch_sizes(batch: Tensor | None, num_nodes: int, num_graphs: int | None = None) -> Tensor:
    """Number of nodes of each sample, ``(B,)`` (a single sample when ``batch`` is None)."""
    if batch is None:
        return torch.tensor([num_nodes], dtype=torch.long)
    b = num_graphs if num_graphs is not None else (int(batch.max()) + 1 if batch.numel() else 0)
    return torch.bincount(batch, minlength=b).cpu()


def first_descent(values: Tensor) -> int | None:
    """The first ``i`` with ``values[i] > values[i + 1]`` (``None`` when sorted ascending)."""
    if values.numel() < 2:
        return None
    drops = torch.nonzero(values[1:] < values[:-1])
    return int(drops[0, 0]) if drops.numel() > 0 else None


def check_ascending(values: Tensor, name: str, rule: str = "sorted ascending") -> None:
    """``values`` never decrease; else a ValueError naming ``name``, ``rule`` and the first
    descent: ``"{name} must be {rule}, but {name}[i]=a > {name}[i + 1]=b"``."""
    i = first_descent(values)
    if i is not None:
        raise ValueError(
            f"{name} must be {rule}, but {name}[{i}]={int(values[i])} > "
            f"{name}[{i + 1}]={int(values[i + 1])}"
        )


def check_has_coordinates(pos: Tensor, name: str = "pos") -> None:
    """``pos (N, D)`` needs ``D >= 1`` for a distance to mean anything."""
    if pos.size(1) == 0:
        raise ValueError(
            f"{name} must have at least one coordinate per point, shape (N, D) with D >= 1, "
            f"got {shape_of(pos)}"
        )


DISTANCE_MARGIN = 4.0  # headroom below finfo.max for rounding in sums and kd-tree bounds


def distance_range_fault(lo: Tensor, hi: Tensor, dtype: torch.dtype) -> tuple[str, int] | None:
    r"""Whether squared distances of points inside the boxes ``[lo, hi]`` are safe in ``dtype``.

    ``lo`` and ``hi`` are float64 ``(B, D)``: the coordinate bounds of each cloud (``lo = hi``
    for a cloud with no distance to compute). A cloud is refused when

    * ``"overflow"``: its box diagonal squared, :math:`\sum_d (hi_d - lo_d)^2`, the largest
      squared distance it can hold, exceeds ``finfo(dtype).max / DISTANCE_MARGIN``;
    * ``"underflow"``: its widest extent :math:`s = \max_d (hi_d - lo_d) > 0` is so small that
      a difference at the resolution of its coordinates squares below the normal range,
      :math:`(s \cdot \mathrm{eps})^2 < \mathrm{finfo(dtype).tiny}`: distances then round to
      zero and tie (all points identical is fine: the distances are exactly 0).

    Returns:
        ``(reason, cloud)`` for the first cloud refused, ``None`` when all are safe.
    """
    fi = torch.finfo(dtype)
    extent = (hi - lo).clamp(min=0.0)  # (B, D), inf when hi - lo overflows
    diag2 = extent.square().sum(1)  # (B,)
    over = torch.nonzero(~(diag2 <= fi.max / DISTANCE_MARGIN)).flatten()
    if over.numel() > 0:
        return "overflow", int(over[0])
    widest = extent.amax(1) if extent.size(1) > 0 else extent.new_zeros(extent.size(0))  # (B,)
    under = torch.nonzero((widest > 0) & ((widest * fi.eps).square() < fi.tiny)).flatten()
    if under.numel() > 0:
        return "underflow", int(under[0])
    return None


def check_distance_range(
    lo: Tensor, hi: Tensor, dtype: torch.dtype, name: str = "pos", batched: bool = False
) -> None:
    """:func:`distance_range_fault`, raised as a ``ValueError`` naming ``name`` (and the sample
    when ``batched``) and the bound: the caller cannot compute the distances in ``dtype``."""
    fault = distance_range_fault(lo, hi, dtype)
    if fault is None:
        return
    reason, b = fault
    fi = torch.finfo(dtype)
    has = "have" if " and " in name else "has"
    where = f" (sample {b} of the batch)" if batched else ""
    extent = (hi[b] - lo[b]).clamp(min=0.0)  # (D,)
    kind = str(dtype).removeprefix("torch.")
    if reason == "overflow":
        largest = float(torch.maximum(lo[b].abs(), hi[b].abs()).max())
        diag = math.hypot(*extent.tolist())
        limit = math.sqrt(fi.max / DISTANCE_MARGIN)
        raise ValueError(
            f"{name} {has} coordinates up to {largest:.3g}{where} whose squared distances "
            f"overflow {kind}: the points span {diag:.3g}, at most {limit:.3g} fits; rescale the "
            "positions"
        )
    widest = float(extent.max())
    floor = math.sqrt(fi.tiny) / fi.eps
    raise ValueError(
        f"{name} {has} coordinates that differ by at most {widest:.3g}{where}, so close that "
        f"their squared distances underflow {kind} and tie at 0 (they must span at least "
        f"{floor:.3g}); rescale the positions"
    )

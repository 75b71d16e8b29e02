"""Argument validation shared by pcattn's public entry points.

Every function raises :class:`ValueError` naming the argument and what was wrong with it, so a
bad input fails at the boundary instead of becoming a silently wrong result further in.
"""

from __future__ import annotations

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

r"""Data-parallel training helpers: process-group set-up from ``torchrun``'s environment, and a
batch norm whose statistics span every process on any device.

``torch.nn.SyncBatchNorm`` refuses CPU tensors, so :class:`DistributedBatchNorm` all-reduces
the statistics itself (``gloo`` on CPU, ``nccl`` on GPU): in training, the mean and the biased
variance are taken over the samples of **all** processes (two differentiable all-reduces:
the sum, then the sum of squared deviations from the global mean), so a step of ``W``
processes on ``B / W`` samples each sees the same normalisation, and the same gradient, as one
process on all ``B``. Without an initialised process group it is a plain ``BatchNorm1d``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "Distributed",
    "DistributedBatchNorm",
    "all_reduce_sum",
    "convert_batchnorm",
    "setup",
    "teardown",
]


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its host."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> Distributed:
    r"""Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment):
    ``nccl`` for CUDA, ``gloo`` otherwise. A plain ``python`` run gets one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return Distributed(rank=rank, world=world, local_rank=local_rank)


def teardown() -> None:
    """Leave the process group (if any), once every process has got here."""
    if dist.is_initialized():
        dist.barrier()
        # gloo's worker thread frees the barrier's work (and the earlier works it holds) after
        # the barrier returns, and freeing their tensors takes the GIL. The group is destroyed
        # later while the GIL is held (when DDP's reducer is freed), waiting for that thread:
        # a deadlock (seen in a native stack dump of a hung test rank; a loop of 2-process
        # DDP runs hit it within 20 teardowns). A short sleep releases the GIL so the worker
        # finishes first (none in 500 teardowns with it).
        time.sleep(0.1)
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    r"""Differentiable sum over processes: the gradient of :math:`\sum_r t_r` with respect to
    each :math:`t_r` is the sum of the upstream gradients of every process."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _all_reduce(t: Tensor) -> Tensor:
    return _AllReduceSum.apply(t)


class DistributedBatchNorm(nn.BatchNorm1d):
    r"""``BatchNorm1d`` over ``(N, C)`` whose training statistics cover every process.

    .. math::
        \mu = \frac{1}{n} \sum_{r} \sum_{i \in r} x_i, \qquad
        \sigma^2 = \frac{1}{n} \sum_r \sum_{i \in r} (x_i - \mu)^2, \qquad
        y_i = \gamma \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    with :math:`n` the number of rows over all processes :math:`r`. The running statistics
    are updated as ``BatchNorm1d`` does (unbiased variance, ``momentum``). Evaluation, and
    training without a process group, is exactly ``BatchNorm1d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"DistributedBatchNorm expects (N, C) input, got {tuple(x.shape)}")
        c = x.size(1)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        head = torch.cat([xf.sum(0), xf.new_tensor([float(x.size(0))])])  # (C + 1,)
        head = _all_reduce(head)
        n = head[c]
        mean = head[:c] / n  # (C,)
        var = _all_reduce((xf - mean).pow(2).sum(0)) / n  # (C,) biased
        y = (xf - mean) * torch.rsqrt(var + self.eps)  # (N, C)
        if self.affine:
            y = y * self.weight + self.bias
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(unbiased.detach() * m)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    r"""Replace every ``BatchNorm1d`` of ``module`` by a :class:`DistributedBatchNorm` with
    the same parameters and buffers (in place; returns ``module``)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            ref = next(iter(child.parameters()), None)
            if ref is None:
                ref = child.running_mean if child.running_mean is not None else torch.empty(0)
            new = DistributedBatchNorm(
                child.num_features,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
                device=ref.device,
                dtype=ref.dtype,
            )
            new.load_state_dict(child.state_dict())
            for p_new, p_old in zip(new.parameters(), child.parameters(), strict=True):
                p_new.requires_grad_(p_old.requires_grad)
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over processes, in place, and return it (a no-op without a process group).
    Under NCCL, which reduces CUDA tensors only, a CPU tensor goes through a CUDA copy."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu)
        t.copy_(on_gpu)
    else:
        dist.all_reduce(t)
    return t

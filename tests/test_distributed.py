"""Tests of pcattn.distributed: DistributedBatchNorm against BatchNorm1d on one and on two
processes (gloo), convert_batchnorm, all_reduce_sum and setup without torchrun."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pcattn.distributed import (
    Distributed,
    DistributedBatchNorm,
    all_reduce_sum,
    convert_batchnorm,
    setup,
    teardown,
)

N, C = 12, 4


def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed float64 batch ``x (N, C)``, affine parameters and loss weights ``g (N, C)``."""
    gen = torch.Generator().manual_seed(7)
    scale = torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)
    shift = torch.tensor([0.0, -2.0, 5.0, 1.0], dtype=torch.float64)
    x = torch.randn(N, C, generator=gen, dtype=torch.float64) * scale + shift  # (N, C)
    weight = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5  # (C,)
    bias = torch.randn(C, generator=gen, dtype=torch.float64)  # (C,)
    g = torch.randn(N, C, generator=gen, dtype=torch.float64)  # (N, C)
    return x, weight, bias, g


def _loss(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A fixed loss, a sum over rows (so the loss of a batch is the sum of its parts')."""
    return (g * y).sum() + 0.1 * y.pow(3).sum()


def _norm(cls: type, weight: torch.Tensor, bias: torch.Tensor, momentum: float | None):
    bn = cls(C, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    return bn


def _reference(momentum: float | None) -> dict[str, torch.Tensor]:
    """``nn.BatchNorm1d`` on the full batch: outputs, gradients and running statistics."""
    x, weight, bias, g = _problem()
    bn = _norm(nn.BatchNorm1d, weight, bias, momentum)
    x = x.clone().requires_grad_()
    y = bn(x)
    _loss(y, g).backward()
    bn.eval()
    return {
        "y": y.detach(),
        "x_grad": x.grad,
        "weight_grad": bn.weight.grad,
        "bias_grad": bn.bias.grad,
        "running_mean": bn.running_mean,
        "running_var": bn.running_var,
        "num_batches_tracked": bn.num_batches_tracked,
        "eval": bn(_problem()[0]).detach(),
    }


# --------------------------------------------------------------------------------------------
# one process


@pytest.mark.parametrize("momentum", [0.1, None])
def test_equals_batchnorm_without_process_group(momentum):
    assert not dist.is_initialized()
    x, weight, bias, g = _problem()
    ours = _norm(DistributedBatchNorm, weight, bias, momentum)
    ref = _norm(nn.BatchNorm1d, weight, bias, momentum)
    for step in range(2):
        xs = (x + step).requires_grad_()
        xr = (x + step).requires_grad_()
        ys, yr = ours(xs), ref(xr)
        assert ys.dtype == torch.float64
        torch.testing.assert_close(ys, yr, rtol=0, atol=1e-10)
        _loss(ys, g).backward()
        _loss(yr, g).backward()
        torch.testing.assert_close(xs.grad, xr.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=1e-10)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    # the running statistics moved away from their initial values
    assert not torch.allclose(ours.running_mean, torch.zeros(C, dtype=torch.float64))
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-10)


def test_all_reduce_sum_is_a_no_op_without_group():
    assert not dist.is_initialized()
    t = torch.tensor([1.5, -2.0, 3.0])
    out = all_reduce_sum(t)
    assert out is t
    assert out.tolist() == [1.5, -2.0, 3.0]


def test_setup_without_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    d = setup("cpu")
    assert d == Distributed(rank=0, world=1, local_rank=0)
    assert d.enabled is False
    assert d.is_main is True
    assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert setup("cpu") == Distributed()
    assert not dist.is_initialized()
    teardown()  # nothing to leave
    assert not dist.is_initialized()


def test_distributed_flags():
    assert Distributed(rank=1, world=2, local_rank=1).enabled is True
    assert Distributed(rank=1, world=2, local_rank=1).is_main is False
    assert Distributed(rank=0, world=2).is_main is True


# --------------------------------------------------------------------------------------------
# convert_batchnorm


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.inner = nn.Sequential(
            nn.Linear(6, 4),
            nn.BatchNorm1d(4, eps=1e-3, momentum=0.3),
            nn.ModuleList([nn.BatchNorm1d(4, affine=False), nn.Linear(4, 4)]),
        )
        self.image = nn.BatchNorm2d(4)
        self.head = nn.BatchNorm1d(4, momentum=None)

    def forward(self, x):
        x = self.inner[1](self.inner[0](self.stem(x)))
        x = self.inner[2][0](x)
        return self.head(x)


def _net(dtype: torch.dtype) -> _Net:
    torch.manual_seed(0)
    net = _Net().to(dtype)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1.0, 1.0)
        for _ in range(3):  # non-trivial running statistics
            net(torch.randn(16, 3, dtype=dtype) * 2 + 1)
    return net


def test_convert_batchnorm_replaces_every_batchnorm1d():
    net = _net(torch.float32)
    assert sum(type(m) is nn.BatchNorm1d for m in net.modules()) == 4
    before = {k: v.clone() for k, v in net.state_dict().items()}
    others = {name: m for name, m in net.named_modules() if not isinstance(m, nn.BatchNorm1d)}
    old = dict(net.named_modules())

    out = convert_batchnorm(net)

    assert out is net
    assert sum(type(m) is DistributedBatchNorm for m in net.modules()) == 4
    assert sum(type(m) is nn.BatchNorm1d for m in net.modules()) == 0
    assert type(net.image) is nn.BatchNorm2d
    # every other module is the same object as before
    now = dict(net.named_modules())
    for name, m in others.items():
        assert now[name] is m, name
    # options carried over
    for name in ("stem.1", "inner.1", "inner.2.0", "head"):
        new, orig = now[name], old[name]
        assert new is not orig
        assert (new.num_features, new.eps, new.momentum, new.affine) == (
            orig.num_features,
            orig.eps,
            orig.momentum,
            orig.affine,
        ), name
    assert (now["inner.1"].eps, now["inner.1"].momentum) == (1e-3, 0.3)
    assert now["head"].momentum is None
    assert now["inner.2.0"].weight is None
    # parameters and buffers equal, in value and dtype
    after = net.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), key
    # the module still computes the same thing in evaluation
    net.eval()
    x = torch.randn(5, 3)
    ref = _net(torch.float32).eval()
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)


def test_convert_batchnorm_keeps_float64():
    net = _net(torch.float64)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    convert_batchnorm(net)
    for key, value in net.state_dict().items():
        assert value.dtype == before[key].dtype, key
        assert torch.equal(value, before[key]), key


# --------------------------------------------------------------------------------------------
# two processes


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    try:
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None


#: rows held by rank 0 / rank 1, for each case run by the workers
_SPLITS = {"halves": (slice(0, N // 2), slice(N // 2, N)), "uneven": (slice(0, 5), slice(5, N))}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    result: dict[str, object] = {"setup": setup("cpu")}
    result["reduced"] = all_reduce_sum(torch.tensor([rank + 1.0, 10.0 * rank]))
    x, weight, bias, g = _problem()
    for case, splits in _SPLITS.items():
        for momentum in (0.1, None):
            rows = splits[rank]
            bn = _norm(DistributedBatchNorm, weight, bias, momentum)
            xr = x[rows].clone().requires_grad_()
            y = bn(xr)  # (n_rank, C)
            _loss(y, g[rows]).backward()  # this rank's part of the total loss
            wg, bg = bn.weight.grad.clone(), bn.bias.grad.clone()
            dist.all_reduce(wg)
            dist.all_reduce(bg)
            bn.eval()
            result[case, momentum] = {
                "y": y.detach(),
                "x_grad": xr.grad,
                "weight_grad": wg,
                "bias_grad": bg,
                "running_mean": bn.running_mean,
                "running_var": bn.running_var,
                "num_batches_tracked": bn.num_batches_tracked,
                "eval": bn(x).detach(),
            }
    teardown()
    result["initialized_after_teardown"] = dist.is_initialized()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def test_two_processes_equal_full_batch(tmp_path, free_port):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    for rank, res in enumerate(results):
        assert res["setup"] == Distributed(rank=rank, world=2, local_rank=rank)
        assert res["setup"].enabled is True
        assert res["reduced"].tolist() == [3.0, 10.0]
        assert res["initialized_after_teardown"] is False

    for case, splits in _SPLITS.items():
        for momentum in (0.1, None):
            ref = _reference(momentum)
            parts = [res[case, momentum] for res in results]
            for rank, part in enumerate(parts):
                rows = splits[rank]
                what = f"rank {rank}, {case}, momentum={momentum}"
                assert part["y"].dtype == torch.float64
                _close(part["y"], ref["y"][rows], f"output, {what}")
                _close(part["x_grad"], ref["x_grad"][rows], f"input gradient, {what}")
                for key in ("weight_grad", "bias_grad", "running_mean", "running_var", "eval"):
                    _close(part[key], ref[key], f"{key}, {what}")
                assert int(part["num_batches_tracked"]) == 1


def _teardown_worker(rank: int, world: int, store_dir: str, cycles: int) -> None:
    torch.set_num_threads(1)
    for c in range(cycles):
        init = f"file://{store_dir}/store{c}"
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
        model = nn.parallel.DistributedDataParallel(nn.Linear(8, 8))
        model(torch.randn(4, 8)).sum().backward()
        all_reduce_sum(torch.tensor([1.0, 0.0]))
        teardown()
        del model  # frees DDP's reducer, and with it the process group
    Path(store_dir, f"done{rank}").touch()


def test_teardown_never_deadlocks_with_ddp(tmp_path):
    # freeing DDP after teardown once deadlocked against gloo's worker thread (which needs the
    # GIL to free the barrier's tensors): without the fix this loop hung within 20 cycles,
    # 3 times out of 3
    ctx = mp.start_processes(
        _teardown_worker, args=(2, str(tmp_path), 25), nprocs=2, join=False, start_method="spawn"
    )
    import time

    t0 = time.time()
    while not ctx.join(timeout=1):
        if time.time() - t0 > 120:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a teardown deadlocked (no progress for 120 s)")
    assert (tmp_path / "done0").exists() and (tmp_path / "done1").exists()

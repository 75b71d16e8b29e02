"""Whole models against the reference architectures: train step and inference, time and memory.

    python benchmarks/bench_models.py [--points 1024] [--clouds 16] [--repeats 5] [--models ...]

Each pcattn model is measured in the same process as a plain re-implementation of its reference
architecture, written in this file the way the reference code writes it (padded ``(B, C, N)``
tensors, 1x1 convolutions, ``BatchNorm2d`` over grouped ``(B, C, K, S)`` tensors, a max over the
neighbour axis):

* ``PointNet2Cls`` vs the popular pure-PyTorch PointNet++ SSG classifier (farthest point sampling
  as a loop over the centres, ball query by sorting masked indices and padding each ball with
  its first point, 1x1 ``Conv2d`` MLPs);
* ``DGCNNCls`` vs the authors' DGCNN classifier (``k = 20``, ``emb 1024``: kNN as a matmul and
  ``topk`` of negative squared distances, edge features ``[x_j - x_i; x_i]`` of shape
  ``(B, 2C, N, k)``, ``Conv2d`` + ``BatchNorm2d`` + LeakyReLU, max over ``k``);
* the feature-space kNN of DGCNN's dynamic graphs: ``knn_graph`` on 64- and 128-d features
  (exact, ties by index) against the reference's matmul + ``topk``;
* ``PointTransformerCls`` and ``AttentionNetCls`` alone (no reference architecture is written
  here yet), so their footprint is on record.

Input: real ModelNet40 shapes (the first ``--points`` points of each, centred and scaled into
the unit sphere) from ``PCATTN_DATA`` (default ``../shared/data`` beside the checkout), ``--clouds``
of them per batch, 40 classes. Both models get the same clouds.

* **train step** = forward, cross-entropy, backward, Adam step; **inference** = forward in eval
  mode under ``torch.no_grad()``. Times are medians of ``--repeats`` runs, ours and the reference
  timed alternately so both see the same machine load.
* **peak memory** = the most bytes of tensor storage alive at once during one step, above what
  was alive before it (activations kept for backward, gradients, temporaries of every aten op,
  optimiser updates), counted by a ``TorchDispatchMode`` that follows every storage an op
  returns until it is freed. It is deterministic (no allocator slack, no thread-count effect),
  so it compares the two implementations exactly; allocations inside a single fused kernel that
  never reach Python (none of the ops used here keep one) would not be seen.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import log, machine, median_ms, paired_ms
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch_geometric.data import Batch, Data

from pcattn.data import ModelNet
from pcattn.graphs import knn_graph
from pcattn.models import AttentionNetCls, DGCNNCls, PointNet2Cls, PointTransformerCls

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# peak tensor memory


class PeakTensorMemory(TorchDispatchMode):
    """Bytes of tensor storage alive at once, over every storage an aten op returns inside the
    block (views and in-place results share their storage and are counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self._live: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._live.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._live:
                continue
            self._live.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_mb(fn) -> float:
    """Peak MB of tensor storage ``fn()`` allocates above what was alive before it."""
    with PeakTensorMemory() as mem:
        fn()
    return mem.peak / 1e6


# --------------------------------------------------------------------------------------------
# the reference architectures, written the way the reference code writes them


def square_distance(a: Tensor, b: Tensor) -> Tensor:
    """``(B, N, 3), (B, M, 3) -> (B, N, M)`` squared distances by one matmul."""
    d = -2 * torch.matmul(a, b.transpose(1, 2))  # (B, N, M)
    return d + a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(1)


def gather_points(points: Tensor, idx: Tensor) -> Tensor:
    """``points (B, N, C)`` at ``idx (B, ...)`` -> ``(B, ..., C)``."""
    b = torch.arange(points.size(0), device=points.device).view(-1, *[1] * (idx.dim() - 1))
    return points[b.expand_as(idx), idx]


def farthest_point_sample(xyz: Tensor, npoint: int) -> Tensor:
    """The reference's FPS: one Python iteration per centre over the whole batch; starts at
    point 0 here (the reference draws a random start) so both implementations see the same."""
    B, N, _ = xyz.shape
    centroids = torch.zeros(B, npoint, dtype=torch.long)
    distance = torch.full((B, N), 1e10)
    farthest = torch.zeros(B, dtype=torch.long)
    rows = torch.arange(B)
    for i in range(npoint):
        centroids[:, i] = farthest
        centre = xyz[rows, farthest].view(B, 1, 3)  # (B, 1, 3)
        dist = (xyz - centre).pow(2).sum(-1)  # (B, N)
        distance = torch.minimum(distance, dist)
        farthest = distance.argmax(-1)
    return centroids


def query_ball_point(radius: float, nsample: int, xyz: Tensor, new_xyz: Tensor) -> Tensor:
    """The reference's ball query: indices of points within ``radius`` in index order, the
    first ``nsample`` kept, short balls padded with their first point; ``(B, S, nsample)``."""
    B, N, _ = xyz.shape
    S = new_xyz.size(1)
    idx = torch.arange(N).view(1, 1, N).repeat(B, S, 1)  # (B, S, N)
    idx[square_distance(new_xyz, xyz) > radius**2] = N
    idx = idx.sort(dim=-1)[0][:, :, :nsample]  # (B, S, K)
    first = idx[:, :, :1].expand(-1, -1, nsample)
    pad = idx == N
    idx[pad] = first[pad]
    return idx


class RefSetAbstraction(nn.Module):
    def __init__(self, npoint, radius, nsample, in_channel, mlp, group_all=False):
        super().__init__()
        self.npoint, self.radius, self.nsample, self.group_all = npoint, radius, nsample, group_all
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        last = in_channel
        for c in mlp:
            self.convs.append(nn.Conv2d(last, c, 1))
            self.bns.append(nn.BatchNorm2d(c))
            last = c

    def forward(self, xyz: Tensor, points: Tensor | None):  # (B, 3, N), (B, C, N) or None
        xyz = xyz.permute(0, 2, 1)  # (B, N, 3)
        if points is not None:
            points = points.permute(0, 2, 1)  # (B, N, C)
        if self.group_all:
            new_xyz = torch.zeros(xyz.size(0), 1, 3)
            grouped = xyz.unsqueeze(1)  # (B, 1, N, 3)
            if points is not None:
                grouped = torch.cat([grouped, points.unsqueeze(1)], dim=-1)  # (B, 1, N, 3 + C)
        else:
            new_xyz = gather_points(xyz, farthest_point_sample(xyz, self.npoint))  # (B, S, 3)
            idx = query_ball_point(self.radius, self.nsample, xyz, new_xyz)  # (B, S, K)
            grouped = gather_points(xyz, idx) - new_xyz.unsqueeze(2)  # (B, S, K, 3)
            if points is not None:
                grouped = torch.cat([grouped, gather_points(points, idx)], dim=-1)
        h = grouped.permute(0, 3, 2, 1)  # (B, C, K, S)
        for conv, bn in zip(self.convs, self.bns, strict=True):
            h = F.relu(bn(conv(h)))
        return new_xyz.permute(0, 2, 1), torch.max(h, 2)[0]  # (B, 3, S), (B, C', S)


class RefPointNet2SSG(nn.Module):
    """PointNet++ SSG classification, positions only (as the popular PyTorch port)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.sa1 = RefSetAbstraction(512, 0.2, 32, 3, [64, 64, 128])
        self.sa2 = RefSetAbstraction(128, 0.4, 64, 128 + 3, [128, 128, 256])
        self.sa3 = RefSetAbstraction(None, None, None, 256 + 3, [256, 512, 1024], group_all=True)
        self.fc1, self.bn1, self.drop1 = nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.Dropout(0.4)
        self.fc2, self.bn2, self.drop2 = nn.Linear(512, 256), nn.BatchNorm1d(256), nn.Dropout(0.5)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, xyz: Tensor) -> Tensor:  # (B, 3, N)
        l1_xyz, l1_points = self.sa1(xyz, None)
        l2_xyz, l2_points = self.sa2(l1_xyz, l1_points)
        _, l3_points = self.sa3(l2_xyz, l2_points)
        x = l3_points.view(xyz.size(0), 1024)
        x = self.drop1(F.relu(self.bn1(self.fc1(x))))
        x = self.drop2(F.relu(self.bn2(self.fc2(x))))
        return self.fc3(x)


def knn_idx(x: Tensor, k: int) -> Tensor:
    """The authors' kNN: ``topk`` of negative squared distances, ``(B, C, N) -> (B, N, k)``."""
    inner = -2 * torch.matmul(x.transpose(2, 1), x)  # (B, N, N)
    xx = torch.sum(x**2, dim=1, keepdim=True)  # (B, 1, N)
    return (-xx - inner - xx.transpose(2, 1)).topk(k=k, dim=-1)[1]


def graph_feature(x: Tensor, k: int) -> Tensor:
    """``[x_j - x_i; x_i]`` for the ``k`` neighbours: ``(B, C, N) -> (B, 2C, N, k)``."""
    B, C, N = x.shape
    idx = (knn_idx(x, k) + torch.arange(B).view(-1, 1, 1) * N).view(-1)  # (B N k,)
    x = x.transpose(2, 1).contiguous()  # (B, N, C)
    feature = x.view(B * N, -1)[idx].view(B, N, k, C)
    x = x.view(B, N, 1, C).repeat(1, 1, k, 1)
    return torch.cat((feature - x, x), dim=3).permute(0, 3, 1, 2).contiguous()


class RefDGCNN(nn.Module):
    """The authors' DGCNN classifier (k = 20, emb 1024, dropout 0.5)."""

    def __init__(self, num_classes: int, k: int = 20, emb: int = 1024) -> None:
        super().__init__()
        self.k = k

        def block(c_in, c_out, conv=nn.Conv2d, bn=nn.BatchNorm2d):
            return nn.Sequential(
                conv(c_in, c_out, 1, bias=False), bn(c_out), nn.LeakyReLU(negative_slope=0.2)
            )

        self.conv1, self.conv2 = block(6, 64), block(128, 64)
        self.conv3, self.conv4 = block(128, 128), block(256, 256)
        self.conv5 = block(512, emb, nn.Conv1d, nn.BatchNorm1d)
        self.linear1, self.bn6 = nn.Linear(emb * 2, 512, bias=False), nn.BatchNorm1d(512)
        self.linear2, self.bn7 = nn.Linear(512, 256), nn.BatchNorm1d(256)
        self.linear3 = nn.Linear(256, num_classes)
        self.dp1, self.dp2 = nn.Dropout(0.5), nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, N)
        B = x.size(0)
        x1 = self.conv1(graph_feature(x, self.k)).max(dim=-1)[0]  # (B, 64, N)
        x2 = self.conv2(graph_feature(x1, self.k)).max(dim=-1)[0]
        x3 = self.conv3(graph_feature(x2, self.k)).max(dim=-1)[0]
        x4 = self.conv4(graph_feature(x3, self.k)).max(dim=-1)[0]
        x = self.conv5(torch.cat((x1, x2, x3, x4), dim=1))  # (B, emb, N)
        x = torch.cat(
            (F.adaptive_max_pool1d(x, 1).view(B, -1), F.adaptive_avg_pool1d(x, 1).view(B, -1)), 1
        )
        x = self.dp1(F.leaky_relu(self.bn6(self.linear1(x)), negative_slope=0.2))
        x = self.dp2(F.leaky_relu(self.bn7(self.linear2(x)), negative_slope=0.2))
        return self.linear3(x)


# --------------------------------------------------------------------------------------------
# measurement


def load_clouds(clouds: int, points: int) -> tuple[Batch, Tensor, Tensor]:
    """``clouds`` ModelNet40 training shapes: a PyG batch for pcattn, ``(B, 3, N)`` for the
    references, and the labels."""
    data_root = Path(os.environ.get("PCATTN_DATA", ROOT.parent / "shared" / "data"))
    folder = data_root / "modelnet40_normal_resampled"
    if not folder.is_dir():
        sys.exit(f"bench_models: ModelNet40 samples not found at {folder} (set PCATTN_DATA)")
    with tempfile.TemporaryDirectory() as cache:
        ds = ModelNet(folder, num_points=points, use_normals=False, cache_dir=cache, progress=False)
        items = [ds[i % len(ds)] for i in range(clouds)]
    pos = torch.stack([d.pos for d in items])  # (B, N, 3)
    pos = pos - pos.mean(1, keepdim=True)
    pos = pos / pos.norm(dim=2).amax(1).view(-1, 1, 1)  # unit sphere
    y = torch.stack([d.y.view(()) for d in items])  # (B,)
    batch = Batch.from_data_list([Data(pos=p, y=t) for p, t in zip(pos, y, strict=True)])
    return batch, pos.transpose(1, 2).contiguous(), y


def steps(model: nn.Module, inputs, y: Tensor):
    """``(train_step, inference)`` closures for ``model`` on fixed inputs."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), y).backward()
        opt.step()

    def inference():
        model.eval()
        with torch.no_grad():
            model(inputs)

    return train_step, inference


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


PAIRS = {
    "pointnet2": (
        "PointNet2Cls",
        lambda: PointNet2Cls(0, 40),
        "PointNet++ SSG (ref)",
        lambda: RefPointNet2SSG(40),
    ),
    "dgcnn": ("DGCNNCls", lambda: DGCNNCls(0, 40), "DGCNN (ref)", lambda: RefDGCNN(40)),
    # no reference written here yet: their own footprint, for the record
    "point_transformer": ("PointTransformerCls", lambda: PointTransformerCls(0, 40), "-", None),
    "attention_net": ("AttentionNetCls", lambda: AttentionNetCls(0, 40), "-", None),
}


def feature_knn_rows(clouds: int, points: int, repeats: int, k: int = 20) -> None:
    """DGCNN's dynamic graph: ``knn_graph`` on features against matmul + ``topk``."""
    print("\n| feature-space kNN | ours (ms) | matmul + topk (ms) | ratio |")
    print("|---|---:|---:|---:|")
    batch = torch.arange(clouds).repeat_interleave(points)
    for dim in (64, 128):
        x = torch.randn(clouds * points, dim, generator=torch.Generator().manual_seed(dim))
        dense = x.view(clouds, points, dim).transpose(1, 2)  # (B, C, N)
        t = paired_ms(lambda x=x: knn_graph(x, k, batch, loop=True),
                      lambda d=dense: knn_idx(d, k), repeats)  # fmt: skip
        print(f"| {clouds} x {points:,}, {dim} dims, k = {k} | {t[0]:.0f} | {t[1]:.0f} "
              f"| {t[0] / t[1]:.2f} |", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--clouds", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    args = p.parse_args()
    torch.manual_seed(0)
    batch, dense, y = load_clouds(args.clouds, args.points)
    print(f"{machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"ModelNet40 samples, {args.clouds} clouds x {args.points:,} points, 40 classes\n")
    print(
        "| model | params | reference | params | pass | ours (ms) | ref (ms) | ratio "
        "| ours peak (MB) | ref peak (MB) | ratio |"
    )
    print("|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for key in args.models:
        name, make, ref_name, make_ref = PAIRS[key]
        torch.manual_seed(0)
        ours = make()
        ours_fns = steps(ours, batch, y)
        if make_ref is None:
            for i, mode in enumerate(("train step", "inference")):
                log(f"{name} {mode} ...")
                mem = peak_mb(ours_fns[i])  # (also the warm-up)
                t = median_ms(ours_fns[i], args.repeats)
                print(
                    f"| {name} | {params(ours):,} | - | - | {mode} | {t:.0f} | - | - "
                    f"| {mem:.0f} | - | - |",
                    flush=True,
                )
            continue
        ref = make_ref()
        ref_fns = steps(ref, dense, y)
        for i, mode in enumerate(("train step", "inference")):
            log(f"{name} {mode} ...")
            ours_fns[i]()  # warm-up: Adam state, caches
            ref_fns[i]()
            mem = peak_mb(ours_fns[i]), peak_mb(ref_fns[i])
            t = paired_ms(ours_fns[i], ref_fns[i], args.repeats)
            print(
                f"| {name} | {params(ours):,} | {ref_name} | {params(ref):,} | {mode} "
                f"| {t[0]:.0f} | {t[1]:.0f} | {t[0] / t[1]:.2f} | {mem[0]:.0f} | {mem[1]:.0f} "
                f"| {mem[0] / mem[1]:.2f} |",
                flush=True,
            )
    feature_knn_rows(args.clouds, args.points, args.repeats)


if __name__ == "__main__":
    main()

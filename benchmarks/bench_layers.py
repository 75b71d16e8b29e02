"""Attention layers of ``pcattn.nn`` against their references, on CPU, float32, in one run.

1. **Sparse layers vs PyTorch Geometric** (the same work on both sides, weights copied across,
   outputs compared first), kNN graphs with k = 16 at N = 16,384, 65,536 and 262,144, C = 64:

   * ``GCNLayer(64, 64)`` vs ``GCNConv(64, 64)``;
   * ``GATLayer(64, 64, heads=4)`` vs ``GATConv(64, 16, heads=4)`` (4 heads x 16 channels,
     concatenated), and the same with ``v2=True`` vs ``GATv2Conv``;
   * Transformer: ``NodeAttention`` with a scaled dot product and linear values (4 heads x 16,
     biases) vs ``TransformerConv(64, 16, heads=4, root_weight=False)``;
   * ``PointTransformerLayer`` in its PyG-compatible setting (``share_planes=1``,
     ``pos_nn=Linear(3, 64)``, ``attn_nn=Identity()``, query minus key, ``p_i - p_j``, no bias
     in the three linear maps, self loops replaced) vs ``PointTransformerConv(64, 64)``.

   GCN, GAT, GATv2 and Point Transformer add one self loop per node (E = 17 N), the
   Transformer does not (E = 16 N).

2. **All-pairs attention** of one sample of N = 1,024, 4,096 and 16,384 nodes, 4 heads x 16:
   ``MultiHeadSelfAttention(64, 64, heads=4)`` called with ``edge_index=None`` (the planner
   picks the dense path: ``scaled_dot_product_attention``), the same layer forced sparse on
   ``full_graph(N)`` (skipped where its per-edge tensors would pass 4 GB), and
   ``torch.nn.MultiheadAttention(64, 4)`` (dense SDPA) as the reference.

3. **External attention** (``ExternalAttention(64)``, 64 memory slots) at N = 16,384 ...
   1,048,576 against a dense two-matrix implementation (``softmax`` over the points of
   ``x M_k^T``, L1 over the slots, times ``M_v``): time per 1,000 points shows the linear cost.

Time: ``fwd`` is a forward pass under ``torch.no_grad()`` (inference); ``fwd+bwd`` a forward
pass with autograd on and the backward of ``(y * g).sum()`` into the parameters. Each is the
median of ``--repeats`` runs after one warm-up, ours and the reference timed alternately
(``bench_common.paired_ms``), torch limited to 2 threads.

Peak memory: every (case, N, pass, library) runs in a fresh child process. The child builds
its inputs and layer, runs the layer once on a small input (lazy initialisation), then resets
the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5), reads its resident set size,
runs the measured pass once and reports ``VmHWM - VmRSS_before``: the extra resident memory
the pass needed at its peak (outputs, autograd buffers, temporaries, allocator slack), in MB
(10^6 bytes). Where ``clear_refs`` cannot be written the child reports ``ru_maxrss`` minus
the RSS after building the inputs instead (an upper bound; marked ``*``).

From the repository root, with pcattn installed (``pip install -e .``)::

    python benchmarks/bench_layers.py            # full sizes (about an hour on 2 cores)
    python benchmarks/bench_layers.py --quick    # small sizes, smoke run
    python benchmarks/bench_layers.py --sections 2 3   # some sections only
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import re
import resource
import subprocess
import sys

import torch
import torch_geometric
from bench_common import cpu_name, fmt, log, machine, paired_ms
from torch import nn
from torch_geometric.nn import (
    GATConv,
    GATv2Conv,
    GCNConv,
    PointTransformerConv,
    TransformerConv,
)

from pcattn.graphs import full_graph, knn_graph
from pcattn.nn import ExternalAttention, MultiHeadSelfAttention, NodeAttention
from pcattn.nn.gnn import GATLayer, GCNLayer
from pcattn.nn.point_transformer import PointTransformerLayer
from pcattn.nn.similarity import DotProduct
from pcattn.nn.value import LinearValue

K = 16
C = 64
HEADS = 4
THREADS = 2
SPARSE_CASES = ["GCN", "GAT 4x16", "GATv2 4x16", "Transformer 4x16", "PointTransformer"]
FULL_CASE, EXTERNAL_CASE = "All-pairs 4x16", "External S=64"
PASSES = ["fwd", "fwd+bwd"]
SPARSE_BUDGET = 4e9  # bytes: above this the forced-sparse all-pairs run is skipped
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
BEGIN, END = "<!-- bench_layers: begin -->", "<!-- bench_layers: end -->"
_printed: list[str] = []


def print(*args) -> None:  # noqa: A001 - every table line is also kept for RESULTS.md
    line = " ".join(str(a) for a in args)
    _printed.append(line)
    builtins.print(line, flush=True)


def write_results(path: str = RESULTS) -> None:
    """Replace the text between the bench_layers markers of ``path`` by this run's output."""
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: markers {BEGIN} ... {END} not found; nothing written")
    body = "\n".join(_printed).strip("\n")
    new = re.sub(
        re.escape(BEGIN) + ".*?" + re.escape(END),
        lambda _: f"{BEGIN}\n{body}\n{END}",
        text,
        flags=re.S,
    )
    with open(path + ".tmp", "w") as f:
        f.write(new)
    os.replace(path + ".tmp", path)
    log(f"wrote {path}")


# --------------------------------------------------------------------------------------------
# inputs and layers: build(case, lib, n) -> (module, call) with call() -> output
# --------------------------------------------------------------------------------------------


def cloud(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pos (N, 3)``, ``x (N, C)`` and the kNN ``edge_index``."""
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(n, 3, generator=gen)
    x = torch.randn(n, C, generator=gen)
    return pos, x, knn_graph(pos, K)


def sparse_pair(case: str) -> tuple[nn.Module, nn.Module]:
    """Our layer and PyG's, with the same weights."""
    torch.manual_seed(0)
    if case == "GCN":
        ours, ref = GCNLayer(C, C), GCNConv(C, C)
        with torch.no_grad():
            ref.lin.weight.copy_(ours.lin.weight)
        return ours, ref
    if case.startswith("GAT"):
        v2 = case.startswith("GATv2")
        ours = GATLayer(C, C, heads=HEADS, v2=v2)
        sim = ours.attn.similarity
        with torch.no_grad():
            if v2:
                ref = GATv2Conv(C, C // HEADS, heads=HEADS)
                ref.lin_l.load_state_dict(ours.lin.state_dict())
                ref.lin_r.load_state_dict(sim.lin_r.state_dict())
                ref.att.copy_(sim.att)
            else:
                ref = GATConv(C, C // HEADS, heads=HEADS)
                ref.lin.weight.copy_(ours.lin.weight)
                ref.att_src.copy_(sim.att_src)
                ref.att_dst.copy_(sim.att_dst)
        return ours, ref
    if case.startswith("Transformer"):
        ours = NodeAttention(
            C,
            C,
            similarity=DotProduct(C, C, heads=HEADS, scale=True, bias=True),
            normalize="softmax",
            value=LinearValue(C, C, heads=HEADS, bias=True),
            heads=HEADS,
            bias=False,
        )
        ref = TransformerConv(C, C // HEADS, heads=HEADS, root_weight=False)
        with torch.no_grad():
            ref.lin_query.load_state_dict(ours.similarity.query.state_dict())
            ref.lin_key.load_state_dict(ours.similarity.key.state_dict())
            ref.lin_value.load_state_dict(ours.value.lin.state_dict())
        return ours, ref
    ours = PointTransformerLayer(
        C,
        C,
        share_planes=1,
        pos_nn=nn.Linear(3, C),
        attn_nn=nn.Identity(),
        order="query_minus_key",
        pos_order="query_minus_key",
        add_self_loops=True,
        bias=False,
    )
    ref = PointTransformerConv(C, C)
    with torch.no_grad():
        ref.lin_dst.weight.copy_(ours.phi.weight)
        ref.lin_src.weight.copy_(ours.psi.weight)
        ref.lin.weight.copy_(ours.alpha.weight)
        ref.pos_nn.load_state_dict(ours.theta.state_dict())
    return ours, ref


def full_layers() -> tuple[MultiHeadSelfAttention, nn.MultiheadAttention]:
    torch.manual_seed(0)
    ours = MultiHeadSelfAttention(C, C, heads=HEADS)
    ref = nn.MultiheadAttention(C, HEADS, batch_first=True)
    with torch.no_grad():
        sim, val = ours.attention.similarity, ours.attention.value
        ref.in_proj_weight.copy_(torch.cat([sim.query.weight, sim.key.weight, val.lin.weight]))
        ref.in_proj_bias.copy_(torch.cat([sim.query.bias, sim.key.bias, val.lin.bias]))
        ref.out_proj.load_state_dict(ours.out_proj.state_dict())
    return ours, ref


class DenseExternal(nn.Module):
    """External attention as two dense matrix products on one sample (the paper's code)."""

    def __init__(self, layer: ExternalAttention) -> None:
        super().__init__()
        self.mk = nn.Parameter(layer.attn.similarity.memory.weight.detach().clone())  # (S, d)
        self.mv = nn.Parameter(layer.attn.value.memory.weight.detach().clone())  # (d, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = (x @ self.mk.t()).softmax(0)  # (N, S): softmax over the points of each slot
        a = a / (1e-9 + a.sum(1, keepdim=True))  # L1 over the slots
        return a @ self.mv.t()  # (N, d)


def build(case: str, lib: str, n: int):
    """``(module, call)``: the layer of ``lib`` for ``case`` and a closure running it on N."""
    if case in SPARSE_CASES:
        pos, x, ei = cloud(n)
        ours, ref = sparse_pair(case)
        if lib == "ours":
            if case == "PointTransformer":
                return ours, lambda: ours(x, ei, pos)
            return ours, lambda: ours(x, ei)
        if case == "PointTransformer":
            return ref, lambda: ref(x, pos, ei)
        return ref, lambda: ref(x, ei)
    x = torch.randn(n, C, generator=torch.Generator().manual_seed(0))
    if case == FULL_CASE:
        ours, ref = full_layers()
        if lib == "ours":
            return ours, lambda: ours(x)  # edge_index=None: all pairs, the planner decides
        if lib == "ours-sparse":
            ours.backend = "sparse"
            ei = full_graph(n)
            return ours, lambda: ours(x, ei)
        xb = x.unsqueeze(0)  # (1, N, C)
        return ref, lambda: ref(xb, xb, xb, need_weights=False)[0][0]
    torch.manual_seed(0)
    ours = ExternalAttention(C)
    if lib == "ours":
        return ours, lambda: ours(x)
    ref = DenseExternal(ours)
    return ref, lambda: ref(x)


def runner(module: nn.Module, call, mode: str):
    """A callable doing one measured pass."""
    if mode == "fwd":

        def run():
            with torch.no_grad():
                return call()

        return run
    g = None

    def run():
        nonlocal g
        module.zero_grad(set_to_none=True)
        y = call()
        if g is None:
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        (y * g).sum().backward()

    return run


# --------------------------------------------------------------------------------------------
# peak memory, one child process per measurement
# --------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def child(case: str, n: int, lib: str, mode: str) -> None:
    """Measure one pass in this (fresh) process and print ``{"mb": ..., "exact": ...}``."""
    torch.set_num_threads(THREADS)
    small, small_call = build(case, lib, 512)
    runner(small, small_call, mode)()  # lazy initialisation on a small input
    del small, small_call
    module, call = build(case, lib, n)
    run = runner(module, call, mode)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        before, exact = _status_kb("VmRSS"), True
    except OSError:
        before, exact = _status_kb("VmRSS"), False
    run()
    if exact:
        peak = _status_kb("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    print(json.dumps({"mb": (peak - before) * 1024 / 1e6, "exact": exact}))


def peak_mb(case: str, n: int, lib: str, mode: str) -> float | str:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, str(n), lib, mode]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1][:40] if res.stderr else res.returncode
        return f"failed ({last})"
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out["mb"] if out["exact"] else f"{fmt(out['mb'])}*"


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def machine_line() -> str:
    return (
        f"{cpu_name()}, torch threads {torch.get_num_threads()}; torch {torch.__version__}, "
        f"PyG {torch_geometric.__version__}"
    )


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if not isinstance(a, str) and not isinstance(b, str) else "-"


def measure(case: str, n: int, libs: tuple[str, str], repeats: int, memory: bool = True):
    """One table row per pass: times (paired) and peak memory of ``libs = (ours, reference)``."""
    built = [build(case, lib, n) for lib in libs]
    rows = []
    for mode in PASSES:
        t = paired_ms(*(runner(m, call, mode) for m, call in built), repeats)
        mem = [peak_mb(case, n, lib, mode) if memory else "-" for lib in libs]
        rows.append((case, n, mode, *t, *mem))
    return rows, built


def max_diff(built) -> float:
    with torch.no_grad():
        a, b = (call() for _, call in built)
    return float((a - b).abs().max())


def print_rows(rows, names: tuple[str, str]) -> None:
    a, b = names
    print(
        f"| case | N | pass | {a} (ms) | {b} (ms) | ratio | {a} peak (MB) | {b} peak (MB) | ratio |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for case, n, mode, t_a, t_b, m_a, m_b in rows:
        print(
            f"| {case} | {n:,} | {mode} | {fmt(t_a)} | {fmt(t_b)} | {ratio(t_a, t_b)} "
            f"| {fmt(m_a)} | {fmt(m_b)} | {ratio(m_a, m_b)} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per case")
    ap.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    ap.add_argument(
        "--no-write",
        action="store_true",
        help="do not write the tables into benchmarks/RESULTS.md (a --quick run never does)",
    )
    ap.add_argument(
        "--child", nargs=4, metavar=("CASE", "N", "LIB", "PASS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child:
        case, n, lib, mode = args.child
        child(case, int(n), lib, mode)
        return
    torch.set_num_threads(THREADS)
    quick = args.quick

    def reps(n: int) -> int:
        return args.repeats or (2 if quick else 5 if n <= 65_536 else 3)

    print(f"Machine: {machine()}")
    print()
    print(machine_line())
    if 1 in args.sections:
        rows, diffs = [], {}
        for n in (2_048, 8_192) if quick else (16_384, 65_536, 262_144):
            for case in SPARSE_CASES:
                log(f"sparse N = {n:,}: {case}")
                r, built = measure(case, n, ("ours", "pyg"), reps(n))
                diffs[case, n] = max_diff(built)
                rows += r
                del built
        print("\n### 1. Sparse layers vs PyG (kNN k = 16, C = 64)\n")
        print_rows(rows, ("ours", "PyG"))
        print(f"\nLargest |ours - PyG| over all outputs (float32): {max(diffs.values()):.2e}")
    if 2 in args.sections:
        rows, sparse_rows, diffs = [], [], []
        for n in (256, 1_024) if quick else (1_024, 4_096, 16_384):
            log(f"all-pairs N = {n:,}")
            r, built = measure(FULL_CASE, n, ("ours", "torch"), reps(n))
            diffs.append(max_diff(built))
            rows += r
            ours = built[0][0].attention
            plan = ours.last_plan
            if plan.sparse_bytes > SPARSE_BUDGET:
                gb = plan.sparse_bytes / 1e9
                sparse_rows += [(FULL_CASE, n, m, f"skipped ({gb:.1f} GB)", "-", "-", "-")
                                for m in PASSES]  # fmt: skip
            else:
                r, built = measure(FULL_CASE, n, ("ours-sparse", "ours"), reps(n))
                sparse_rows += r
            del built
        print(f"\n### 2. All-pairs attention, one sample (planner: {plan.backend}, "
              f"{plan.reason})\n")  # fmt: skip
        print_rows(rows, ("ours", "torch MHA"))
        print(f"\nLargest |ours - torch| (float32): {max(diffs):.2e}\n")
        print("The same layer forced onto the sparse path (`full_graph(N)` edges):\n")
        print_rows(sparse_rows, ("ours sparse", "ours dense"))
    if 3 in args.sections:
        rows, diffs = [], []
        sizes = (4_096, 16_384) if quick else (16_384, 65_536, 262_144, 1_048_576)
        for n in sizes:
            log(f"external N = {n:,}")
            r, built = measure(EXTERNAL_CASE, n, ("ours", "dense"), reps(n))
            diffs.append(max_diff(built))
            rows += r
            del built
        print("\n### 3. External attention (64 slots), one sample\n")
        print_rows(rows, ("ours", "dense"))
        print("\n| N | pass | ours ms per 1,000 points |\n|---:|---|---:|")
        for _, n, mode, t, *_ in rows:
            print(f"| {n:,} | {mode} | {1000 * t / n:.3f} |")
        print(f"\nLargest |ours - dense| (float32): {max(diffs):.2e}")
    if not (quick or args.no_write or args.sections != [1, 2, 3]):
        write_results()


if __name__ == "__main__":
    main()

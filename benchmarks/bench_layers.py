"""Graph layers of ``pcattn.nn`` against their PyTorch Geometric counterparts, on CPU, float32.

Cases (the same work on both sides, weights copied across and outputs compared first):

* ``GCNLayer(64, 64)`` vs ``GCNConv(64, 64)``;
* ``GATLayer(64, 64, heads=4)`` vs ``GATConv(64, 16, heads=4)`` (4 heads x 16 channels,
  concatenated), and the same with ``v2=True`` vs ``GATv2Conv``;
* ``PointTransformerLayer`` in its PyG-compatible setting (``share_planes=1``,
  ``pos_nn=Linear(3, 64)``, ``attn_nn=Identity()``, query minus key, ``p_i - p_j``, no bias in
  the three linear maps, self loops replaced) vs ``PointTransformerConv(64, 64)``.

Inputs: random points in the unit cube (seed 0), N = 16,384 and 65,536, features
``randn(N, 64)``, kNN graph with k = 16 from ``pcattn.graphs.knn_graph`` (PyG's own ``knn_graph``
needs torch-cluster); every layer adds one self loop per node, so E = 17 N.

Time: ``fwd`` is a forward pass under ``torch.no_grad()`` (inference); ``fwd+bwd`` a forward
pass with autograd on and the backward of ``(y * g).sum()`` into the parameters. Each is the
median of ``--repeats`` runs after one warm-up, ours and PyG timed alternately
(``bench_common.paired_ms``), torch limited to 2 threads.

Peak memory: every (case, N, pass, library) runs in a fresh child process. The child builds
its inputs and layer, runs the layer once on a small graph (lazy initialisation), then resets
the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5), reads its resident set size,
runs the measured pass once and reports ``VmHWM - VmRSS_before``: the extra resident memory
the pass needed at its peak (outputs, autograd buffers, temporaries, allocator slack), in MB
(10^6 bytes). Where ``clear_refs`` cannot be written the child reports ``ru_maxrss`` minus
the RSS after building the inputs instead (an upper bound; marked ``*``).

From the repository root, with pcattn installed (``pip install -e .``)::

    python benchmarks/bench_layers.py            # full sizes (several minutes)
    python benchmarks/bench_layers.py --quick    # small sizes, smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch
import torch_geometric
from bench_common import cpu_name, fmt, log, paired_ms
from torch import nn
from torch_geometric.nn import GATConv, GATv2Conv, GCNConv, PointTransformerConv

from pcattn.graphs import knn_graph
from pcattn.nn.gnn import GATLayer, GCNLayer
from pcattn.nn.point_transformer import PointTransformerLayer

K = 16
C = 64
HEADS = 4
THREADS = 2
CASES = ["GCN", "GAT 4x16", "GATv2 4x16", "PointTransformer"]
PASSES = ["fwd", "fwd+bwd"]


# --------------------------------------------------------------------------------------------
# inputs and layers
# --------------------------------------------------------------------------------------------


def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pos (N, 3)``, ``x (N, C)``, the kNN ``edge_index`` and an output weight ``g (N, C)``."""
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(n, 3, generator=gen)
    x = torch.randn(n, C, generator=gen)
    g = torch.randn(n, C, generator=gen)
    return pos, x, knn_graph(pos, K), g


def layers(case: str) -> tuple[nn.Module, nn.Module]:
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


def call(case: str, layer: nn.Module, ours: bool, x, pos, ei) -> torch.Tensor:
    if case == "PointTransformer":
        return layer(x, ei, pos) if ours else layer(x, pos, ei)
    return layer(x, ei)


def runner(case: str, layer: nn.Module, ours: bool, mode: str, x, pos, ei, g):
    """A callable doing one measured pass."""
    if mode == "fwd":

        def run():
            with torch.no_grad():
                return call(case, layer, ours, x, pos, ei)

        return run

    def run():
        layer.zero_grad(set_to_none=True)
        (call(case, layer, ours, x, pos, ei) * g).sum().backward()

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
    ours_flag = lib == "ours"
    layer = layers(case)[0 if ours_flag else 1]
    pos_s, x_s, ei_s, g_s = inputs(512)  # lazy initialisation on a small graph
    runner(case, layer, ours_flag, mode, x_s, pos_s, ei_s, g_s)()
    pos, x, ei, g = inputs(n)
    run = runner(case, layer, ours_flag, mode, x, pos, ei, g)
    layer.zero_grad(set_to_none=True)
    del pos_s, x_s, ei_s, g_s
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


def peak_mb(case: str, n: int, lib: str, mode: str) -> tuple[float, bool] | str:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, str(n), lib, mode]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return (
            f"failed ({res.stderr.strip().splitlines()[-1][:40] if res.stderr else res.returncode})"
        )
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out["mb"], out["exact"]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per case")
    ap.add_argument(
        "--child", nargs=4, metavar=("CASE", "N", "LIB", "PASS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child:
        case, n, lib, mode = args.child
        child(case, int(n), lib, mode)
        return
    torch.set_num_threads(THREADS)
    sizes = (2_048, 8_192) if args.quick else (16_384, 65_536)
    repeats = args.repeats or (2 if args.quick else 5)

    rows, diffs, approx = [], {}, False
    for n in sizes:
        pos, x, ei, g = inputs(n)
        for case in CASES:
            log(f"N = {n:,}: {case}")
            ours, ref = layers(case)
            with torch.no_grad():
                y_ours = call(case, ours, True, x, pos, ei)
                y_ref = call(case, ref, False, x, pos, ei)
            diffs[case, n] = float((y_ours - y_ref).abs().max())
            for mode in PASSES:
                t_ours, t_ref = paired_ms(
                    runner(case, ours, True, mode, x, pos, ei, g),
                    runner(case, ref, False, mode, x, pos, ei, g),
                    repeats,
                )
                m_ours = peak_mb(case, n, "ours", mode)
                m_ref = peak_mb(case, n, "pyg", mode)
                mems = []
                for m in (m_ours, m_ref):
                    if isinstance(m, str):
                        mems.append(m)
                    else:
                        approx |= not m[1]
                        mems.append(m[0] if m[1] else f"{fmt(m[0])}*")
                rows.append((case, n, mode, t_ours, t_ref, *mems))

    print(machine_line())
    print()
    print(
        "| case | N | pass | ours (ms) | PyG (ms) | ratio ours/PyG | ours peak (MB) "
        "| PyG peak (MB) | ratio ours/PyG |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for case, n, mode, t_o, t_r, m_o, m_r in rows:
        print(
            f"| {case} | {n:,} | {mode} | {fmt(t_o)} | {fmt(t_r)} | {ratio(t_o, t_r)} "
            f"| {fmt(m_o)} | {fmt(m_r)} | {ratio(m_o, m_r)} |"
        )
    print()
    worst = max(diffs.values())
    print(f"Largest |ours - PyG| over all outputs (float32): {worst:.2e}")
    if approx:
        print(
            "* /proc/self/clear_refs not writable: ru_maxrss minus RSS after inputs (upper bound)"
        )


if __name__ == "__main__":
    main()

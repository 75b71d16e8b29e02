"""Segment kernels of ``pcattn.ops`` against PyTorch Geometric, on CPU, float32.

A kNN-like graph sorted by target: N = 16,384 and 100,000 nodes with 16 edges each
(``index = arange(N).repeat_interleave(16)``, ``ptr = arange(0, E + 1, 16)``, E = 16 N).

* ``segment_softmax(src, index, N)`` vs ``torch_geometric.utils.softmax(src, index)`` and
  ``segment_softmax_csr(src, ptr)`` vs ``softmax(src, ptr=ptr)``, src of shape (E,), (E, 4) and
  (E, 4, 16); forward alone, and forward + backward of ``(out * w).sum()``.
* ``scatter(src, index, N, reduce)`` and ``scatter_csr(src, ptr, reduce)`` for sum, mean and
  max, src (E, 64), vs ``torch_geometric.utils.scatter(src, index, 0, dim_size=N, reduce=...)``.
* the COO path: softmax (E, 4) and scatter sum with a randomly permuted (unsorted) index.
* when torch-scatter imports: ours with that backend forced on vs off (``use_torch_scatter``).

Otherwise ours runs with the backend pcattn picks (printed). Each time is the median of
``--repeats`` runs after one warm-up, with ``time.perf_counter``. At the end: the largest
absolute difference between ours and PyG over the softmax cases (outputs and gradients).

From the repository root, with pcattn installed (``pip install -e .``)::

    python benchmarks/bench_ops.py            # full sizes
    python benchmarks/bench_ops.py --quick    # small sizes, smoke run
"""

from __future__ import annotations

import argparse
import importlib.metadata

import scipy
import torch
import torch_geometric
import torch_geometric.typing
from bench_common import cpu_name, log, median_ms, print_table
from torch_geometric.utils import scatter as pyg_scatter
from torch_geometric.utils import softmax as pyg_softmax

from pcattn import ops

DEG = 16
SHAPES = [(), (4,), (4, 16)]
REDUCES = ["sum", "mean", "max"]


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_line() -> str:
    cpu = cpu_name()
    mode = ops.use_torch_scatter("auto")  # read the switch without changing it
    ops.use_torch_scatter(mode)
    ts = "not installed"
    if ops.torch_scatter_available():
        import torch_scatter

        ts = torch_scatter.__version__
    ours = "pure torch"
    if ops.torch_scatter_available() and mode is not False:
        ours = "torch-scatter" if mode is True else "torch-scatter where faster (CUDA CSR)"
    pyg = "torch-scatter" if torch_geometric.typing.WITH_TORCH_SCATTER else "pure torch"
    return (
        f"{cpu}, torch threads {torch.get_num_threads()}; torch {torch.__version__}, "
        f"scipy {scipy.__version__}, PyG {torch_geometric.__version__}, "
        f"open3d {version('open3d')}, torch-scatter {ts}; "
        f"backend: pcattn {ours}, PyG {pyg}"
    )


def fwd_bwd(fn, src: torch.Tensor, w: torch.Tensor):
    """A callable running ``fn`` forward and ``(fn(src) * w).sum()`` backward."""

    def run():
        s = src.detach().requires_grad_()
        (fn(s) * w).sum().backward()
        return s.grad

    return run


def shape_name(shape: tuple) -> str:
    return "(E" + "".join(f", {d}" for d in shape) + ")"


def bench_size(n: int, repeats: int, rows: list, diffs: dict) -> None:
    e = n * DEG
    log(f"N = {n:,}, E = {e:,}")
    size = f"N={n:,} E={e:,}"
    gen = torch.Generator().manual_seed(0)
    index = torch.arange(n).repeat_interleave(DEG)
    ptr = torch.arange(0, e + 1, DEG)
    perm = torch.randperm(e, generator=gen)
    unsorted = index[perm]

    def compare(op, ours_fn, ref_name, ref_fn):
        rows.append((op, size, median_ms(ours_fn, repeats), ref_name, median_ms(ref_fn, repeats)))

    def softmax_rows(label, shape, ours_fn, ref_name, ref_fn):
        src = torch.randn((e, *shape), generator=gen)
        w = torch.randn((e, *shape), generator=gen)
        op = f"{label} {shape_name(shape)}"
        compare(f"{op} fwd", lambda: ours_fn(src), ref_name, lambda: ref_fn(src))
        ours_g, ref_g = fwd_bwd(ours_fn, src, w), fwd_bwd(ref_fn, src, w)
        compare(f"{op} fwd+bwd", ours_g, ref_name, ref_g)
        fwd = (ours_fn(src) - ref_fn(src)).abs().max().item()
        grad = (ours_g() - ref_g()).abs().max().item()
        old_fwd, old_grad = diffs.get(op, (0.0, 0.0))
        diffs[op] = max(old_fwd, fwd), max(old_grad, grad)

    log("  softmax")
    for shape in SHAPES:
        softmax_rows(
            "segment_softmax",
            shape,
            lambda s: ops.segment_softmax(s, index, n),
            "PyG softmax(index)",
            lambda s: pyg_softmax(s, index, num_nodes=n),
        )
        softmax_rows(
            "segment_softmax_csr",
            shape,
            lambda s: ops.segment_softmax_csr(s, ptr),
            "PyG softmax(ptr)",
            lambda s: pyg_softmax(s, ptr=ptr, num_nodes=n),
        )
    softmax_rows(
        "segment_softmax unsorted",
        (4,),
        lambda s: ops.segment_softmax(s, unsorted, n),
        "PyG softmax(index)",
        lambda s: pyg_softmax(s, unsorted, num_nodes=n),
    )

    log("  scatter")
    x = torch.randn(e, 64, generator=gen)
    for red in REDUCES:
        ref = (
            f"PyG scatter {red}",
            lambda red=red: pyg_scatter(x, index, 0, dim_size=n, reduce=red),
        )
        compare(f"scatter {red} (E, 64)", lambda red=red: ops.scatter(x, index, n, red), *ref)
        compare(f"scatter_csr {red} (E, 64)", lambda red=red: ops.scatter_csr(x, ptr, red), *ref)
    compare(
        "scatter sum (E, 64) unsorted",
        lambda: ops.scatter(x, unsorted, n, "sum"),
        "PyG scatter sum",
        lambda: pyg_scatter(x, unsorted, 0, dim_size=n, reduce="sum"),
    )

    if not ops.torch_scatter_available():
        return
    log("  torch-scatter on / off")

    def on_off(op, fn):
        times = []
        for enabled in (True, False):
            previous = ops.use_torch_scatter(enabled)
            try:
                times.append(median_ms(fn, repeats))
            finally:
                ops.use_torch_scatter(previous)
        rows.append(
            (f"{op} [torch-scatter on]", size, times[0], "ours, torch-scatter off", times[1])
        )

    for red in REDUCES:
        on_off(f"scatter {red} (E, 64)", lambda red=red: ops.scatter(x, index, n, red))
        on_off(f"scatter_csr {red} (E, 64)", lambda red=red: ops.scatter_csr(x, ptr, red))
    s4 = torch.randn(e, 4, generator=gen)
    on_off("segment_softmax unsorted (E, 4) fwd", lambda: ops.segment_softmax(s4, unsorted, n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per case")
    args = ap.parse_args()
    sizes = (1_024, 4_096) if args.quick else (16_384, 100_000)
    repeats = args.repeats or (2 if args.quick else 7)
    rows, diffs = [], {}
    for n in sizes:
        bench_size(n, repeats, rows, diffs)

    print(machine_line())
    print()
    print_table(rows)
    print()
    print("Max |ours - PyG| (float32), forward / gradient:")
    for op, (fwd, grad) in diffs.items():
        print(f"  {op}: {fwd:.1e} / {grad:.1e}")


if __name__ == "__main__":
    main()

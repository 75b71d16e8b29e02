"""Timing and table helpers shared by the benchmark scripts (imported as a sibling module)."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time


def median_ms(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def paired_ms(ours, ref, repeats: int) -> tuple[float, float]:
    """Medians of ``ours`` and ``ref`` timed alternately, so both see the same machine load."""
    ours()
    ref()
    t_ours, t_ref = [], []
    for _ in range(repeats):
        for fn, acc in ((ours, t_ours), (ref, t_ref)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(t_ours), 1e3 * statistics.median(t_ref)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model, logical cores, memory and OS: the machine a table was measured on."""
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal"))
        mem = f"{kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        mem = "RAM unknown"
    return (
        f"{cpu_name()}, {os.cpu_count()} logical cores, {mem}, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )


def fmt(v) -> str:
    if isinstance(v, str):
        return v
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def print_table(rows) -> None:
    """Rows of (operation, size, ours ms, reference name, reference ms or a reason string)."""
    print("| operation | size | ours (ms) | reference name | reference (ms) | ratio ours/ref |")
    print("|---|---|---:|---|---:|---:|")
    for op, size, ours, ref_name, ref in rows:
        both = not isinstance(ours, str) and not isinstance(ref, str)
        ratio = f"{ours / ref:.2f}" if both else "-"
        print(f"| {op} | {size} | {fmt(ours)} | {ref_name} | {fmt(ref)} | {ratio} |")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

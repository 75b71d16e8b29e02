"""pcattn.graphs against brute-force references, conv2d, and exact error messages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcattn import graphs

METHODS = ["kdtree", "brute"]


# --------------------------------------------------------------------------------------------
# independent references (numpy, float64, full distance matrices)
# --------------------------------------------------------------------------------------------


def _sq_dists(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    d2 = np.zeros((y.shape[0], x.shape[0]))
    for dim in range(x.shape[1]):
        d2 += (y[:, None, dim] - x[None, :, dim]) ** 2
    return d2


def _ref_knn(x, y, k, bx=None, by=None, exclude_self=False, r=None):
    """Rows of (neighbour indices), nearest first, ties by index; -1 padding never returned."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d2 = _sq_dists(y, x)
    if bx is not None:
        d2[np.asarray(by)[:, None] != np.asarray(bx)[None, :]] = np.inf
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    if r is not None:
        d2[d2 > r * r] = np.inf
    rows = []
    cols = np.arange(x.shape[0])
    for i in range(y.shape[0]):
        order = np.lexsort((cols, d2[i]))[:k]
        rows.append([int(j) for j in order if np.isfinite(d2[i, j])])
    return rows


def _rows_to_edges(rows) -> torch.Tensor:
    src = [j for row in rows for j in row]
    dst = [i for i, row in enumerate(rows) for _ in row]
    return torch.tensor([src, dst], dtype=torch.long).view(2, -1)


def _ref_fps(pos, m: int, start: int) -> list[int]:
    """The textbook loop: one point at a time, argmax of the running min distance, in the
    precision of ``pos``, squares added coordinate by coordinate."""
    pos = np.asarray(pos)
    mind = np.full(pos.shape[0], np.inf, dtype=pos.dtype)
    out = [start]
    for _ in range(m - 1):
        diff = pos - pos[out[-1]]
        d = diff[:, 0] * diff[:, 0]
        for c in range(1, pos.shape[1]):
            d = d + diff[:, c] * diff[:, c]
        mind = np.minimum(mind, d)
        out.append(int(np.argmax(mind)))
    return out


def _cloud(seed: int, n: int = 300, d: int = 3, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _lattice(sizes, seed: int) -> torch.Tensor:
    """Integer grid points (float64) in a random order: ties everywhere."""
    axes = [torch.arange(n) for n in sizes]
    g = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).view(-1, len(sizes)).double()
    return g[torch.randperm(g.size(0), generator=torch.Generator().manual_seed(seed))]


def _batch(sizes) -> torch.Tensor:
    return torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))


# --------------------------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("loop", [False, True])
def test_knn_graph_equals_brute_force(method, seed, loop):
    pos = _cloud(seed)
    ei = graphs.knn_graph(pos, 16, loop=loop, method=method)
    assert torch.equal(ei, _rows_to_edges(_ref_knn(pos, pos, 16, exclude_self=not loop)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(5))
def test_knn_graph_batched_equals_brute_force_and_never_crosses_samples(method, seed):
    pos = _cloud(seed, 400) * 10  # clouds overlap in space: only `batch` keeps them apart
    batch = _batch([90, 17, 150, 143])
    ei = graphs.knn_graph(pos, 16, batch, method=method)
    ref = _ref_knn(pos, pos, 16, batch.numpy(), batch.numpy(), exclude_self=True)
    assert torch.equal(ei, _rows_to_edges(ref))
    assert torch.equal(batch[ei[0]], batch[ei[1]])


def test_knn_graph_brute_path_chunks_across_samples():
    """The GPU path run on CPU with tiny chunks: many chunks, each spanning clouds."""
    pos = _cloud(3, 500, dtype=torch.float32)
    batch = _batch([120, 33, 200, 147])
    expect = graphs.knn_graph(pos, 8, batch, method="kdtree")
    from pcattn.search import knn_search

    idx, d2 = knn_search(
        pos, pos, 8, batch, batch, self_index=True, method="brute", chunk_elements=1000
    )
    assert torch.equal(graphs._edges_from_rows(idx, dense=True), expect)
    assert (d2[:, 1:] >= d2[:, :-1]).all()


@pytest.mark.parametrize("method", METHODS)
def test_knn_graph_breaks_ties_by_index_on_a_grid(method):
    """On an integer lattice almost every row has ties at the boundary."""
    pos = _lattice((7, 6, 5), seed=0)
    for k in (4, 6, 7):
        ei = graphs.knn_graph(pos, k, method=method)
        assert torch.equal(ei, _rows_to_edges(_ref_knn(pos, pos, k, exclude_self=True)))


@pytest.mark.parametrize("method", METHODS)
def test_knn_graph_with_duplicate_points_excludes_only_the_point_itself(method):
    pos = torch.tensor([[0.0, 0, 0]] * 4 + [[1.0, 0, 0], [2.0, 0, 0]])
    ei = graphs.knn_graph(pos, 3, method=method)
    assert torch.equal(ei, _rows_to_edges(_ref_knn(pos, pos, 3, exclude_self=True)))
    assert (ei[0] != ei[1]).all()
    assert ei[0, :3].tolist() == [1, 2, 3]  # point 0: its three duplicates


def test_knn_graph_is_equivariant_to_node_permutation():
    pos = _cloud(8)
    perm = torch.randperm(pos.size(0), generator=torch.Generator().manual_seed(1))
    ei = graphs.knn_graph(pos, 10)
    ei_p = graphs.knn_graph(pos[perm], 10)
    # same neighbour sets once indices are mapped back (order may differ only on exact ties)
    back = perm[ei_p]
    a = {(int(s), int(t)) for s, t in ei.t()}
    b = {(int(s), int(t)) for s, t in back.t()}
    assert a == b


def test_knn_graph_float32_input_on_real_modelnet_sample(data_root):
    path = data_root / "modelnet40_normal_resampled" / "airplane" / "airplane_0126.txt"
    pts = torch.from_numpy(np.loadtxt(path, delimiter=",", dtype=np.float32)[:, :3])
    assert pts.shape == (10000, 3)
    sub = pts[:2500]
    ei = graphs.knn_graph(sub, 16)
    assert torch.equal(
        ei, _rows_to_edges(_ref_knn(sub.double(), sub.double(), 16, exclude_self=True))
    )
    # FPS on the real shape spreads points: every sample is farther than any unsampled one
    idx = graphs.fps(pts, num=256, random_start=False)
    assert idx.tolist() == _ref_fps(pts.numpy(), 256, 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(3))
def test_knn_bipartite_equals_brute_force(method, seed):
    x = _cloud(seed, 200)
    y = _cloud(seed + 100, 120)
    bx, by = _batch([50, 100, 50]), _batch([40, 0, 80])  # sample 1 has no queries
    ei = graphs.knn(x, y, 3, bx, by, method=method)
    assert torch.equal(ei, _rows_to_edges(_ref_knn(x, y, 3, bx.numpy(), by.numpy())))
    assert torch.equal(bx[ei[0]], by[ei[1]])
    ei1 = graphs.knn(x, y, 5, method=method)
    assert torch.equal(ei1, _rows_to_edges(_ref_knn(x, y, 5)))


# --------------------------------------------------------------------------------------------
# radius
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("loop", [False, True])
def test_radius_graph_equals_brute_force(method, seed, loop):
    pos = _cloud(seed, 400)
    batch = _batch([100, 1, 299])  # a lone point is isolated: no edges, no error
    for r, cap in ((0.15, 32), (0.3, 8)):  # (0.3, 8): the cap binds, the nearest are kept
        ei = graphs.radius_graph(pos, r, batch, max_num_neighbors=cap, loop=loop, method=method)
        ref = _ref_knn(pos, pos, cap, batch.numpy(), batch.numpy(), exclude_self=not loop, r=r)
        assert torch.equal(ei, _rows_to_edges(ref))
    assert not (ei[1] == 100).any() or loop


@pytest.mark.parametrize("method", METHODS)
def test_radius_graph_on_a_lattice_keeps_the_nearest_by_index(method):
    """Many points exactly at distance r and caps that cut through equal distances."""
    pos = _lattice((6, 5, 4), seed=2)
    batch = _batch([50, 70])
    for r, cap in ((1.0, 32), (1.5, 7), (2.0, 10)):
        ei = graphs.radius_graph(pos, r, batch, max_num_neighbors=cap, method=method)
        ref = _ref_knn(pos, pos, cap, batch.numpy(), batch.numpy(), exclude_self=True, r=r)
        assert torch.equal(ei, _rows_to_edges(ref))


@pytest.mark.parametrize("method", METHODS)
def test_radius_is_inclusive(method):
    pos = torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]], dtype=torch.float64)
    ei = graphs.radius_graph(pos, 0.5, method=method)
    assert ei.tolist() == [[1, 0, 2, 1], [0, 1, 1, 2]]


# --------------------------------------------------------------------------------------------
# FPS
# --------------------------------------------------------------------------------------------


FPS_METHODS = ["torch"] + (["compiled"] if graphs._fps_extension() is not None else [])


@pytest.mark.parametrize("method", FPS_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dims", [2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
def test_fps_equals_reference_loop(method, dtype, dims, seed):
    pos = _cloud(seed, 500, dims, dtype)
    idx = graphs.fps(pos, ratio=0.25, random_start=False, method=method)
    assert idx.tolist() == _ref_fps(pos.numpy(), 125, 0)


@pytest.mark.parametrize("method", FPS_METHODS)
def test_fps_on_a_lattice_breaks_ties_by_lowest_index(method):
    g = torch.stack(torch.meshgrid(torch.arange(9), torch.arange(8), indexing="ij"), -1)
    pos = g.view(-1, 2).float()
    idx = graphs.fps(pos, num=30, random_start=False, method=method)
    assert idx.tolist() == _ref_fps(pos.numpy(), 30, 0)


def test_fps_compiled_kernel_is_built():
    """The C kernel is built by any install with a C compiler; CI requires it."""
    if graphs._fps_extension() is None:
        if os.environ.get("PCATTN_REQUIRE_COMPILED") == "1":
            pytest.fail("pcattn._fps was not built (no C compiler at install time?)")
        pytest.skip("pcattn._fps not built; the torch path is used")
    pos = _cloud(1, 64)
    with pytest.raises(ValueError, match="method='compiled' needs a CPU tensor with D <= 8"):
        graphs.fps(torch.rand(20, 9), num=3, method="compiled")
    assert graphs.fps(pos, num=5, random_start=False).tolist() == _ref_fps(pos.numpy(), 5, 0)


@pytest.mark.parametrize("method", FPS_METHODS)
def test_fps_batched_equals_per_cloud_reference_with_ceil(method):
    pos = _cloud(4, 310)
    sizes = [100, 7, 203]
    batch = _batch(sizes)
    idx = graphs.fps(pos, ratio=0.3, batch=batch, random_start=False, method=method)
    expect, start = [], 0
    for n in sizes:
        m = int(np.ceil(0.3 * n))  # 30, 3, 61
        expect += [start + i for i in _ref_fps(pos[start : start + n].numpy(), m, 0)]
        start += n
    assert idx.tolist() == expect
    assert graphs.fps(pos, num=7, batch=batch, random_start=False, method=method).numel() == 21


def test_fps_random_start_follows_the_generator():
    pos = _cloud(5, 200)
    a = graphs.fps(pos, num=20, generator=torch.Generator().manual_seed(3))
    b = graphs.fps(pos, num=20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.tolist() == _ref_fps(pos.numpy(), 20, int(a[0]))
    assert len(set(a.tolist())) == 20


def test_fps_takes_every_point_when_ratio_is_one():
    pos = _cloud(6, 50)
    idx = graphs.fps(pos, ratio=1.0, random_start=False)
    assert sorted(idx.tolist()) == list(range(50))


# --------------------------------------------------------------------------------------------
# pixels
# --------------------------------------------------------------------------------------------


def _conv_via_graph(img, weight, dilation, padding):
    """sum_{j in N(i)} W_{slot(i, j)} x_j over grid_graph edges (the convolution as a graph)."""
    b, cin, h, w = img.shape
    cout, _, kh, kw = weight.shape
    ei, off = graphs.grid_graph(h, w, (kh, kw), dilation, padding, batch_size=b)
    x, _, _ = graphs.image_to_nodes(img)
    if padding == "zeros":
        x = torch.cat([x, x.new_zeros(1, cin)])  # the virtual zero node
    dil = torch.tensor(dilation if isinstance(dilation, tuple) else (dilation, dilation))
    slot = off // dil + torch.tensor([kh // 2, kw // 2])  # (E, 2)
    wk = weight.permute(2, 3, 1, 0)[slot[:, 0], slot[:, 1]]  # (E, cin, cout)
    msg = torch.einsum("ec,eco->eo", x[ei[0]], wk)  # (E, cout)
    y = torch.zeros(b * h * w, cout, dtype=img.dtype).index_add_(0, ei[1], msg)
    return graphs.nodes_to_image(y, b, h, w)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), ((3, 5), 1), (3, 2), ((5, 3), (2, 1))])
def test_grid_graph_with_offset_weights_is_zero_padded_conv2d(kernel, dilation):
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    weight = torch.randn(4, 3, kh, kw, generator=g, dtype=torch.float64)
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    ref = F.conv2d(img, weight, padding=(kh // 2 * dh, kw // 2 * dw), dilation=(dh, dw))
    for padding in ("mask", "zeros"):
        out = _conv_via_graph(img, weight, dilation, padding)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_grid_graph_reflect_is_reflection_padded_conv2d():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    ref = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="reflect"), weight)
    out = _conv_via_graph(img, weight, 1, "reflect")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_grid_graph_structure():
    ei, off = graphs.grid_graph(4, 5, 3)
    deg = torch.bincount(ei[1], minlength=20)
    assert deg.view(4, 5).tolist() == [
        [4, 6, 6, 6, 4],
        [6, 9, 9, 9, 6],
        [6, 9, 9, 9, 6],
        [4, 6, 6, 6, 4],
    ]
    assert (ei[1][1:] >= ei[1][:-1]).all()
    _, pos, _ = graphs.image_to_nodes(torch.zeros(1, 1, 4, 5))
    assert torch.equal(off, pos[ei[0]] - pos[ei[1]])  # offset = p_j - p_i
    ei_z, _ = graphs.grid_graph(4, 5, 3, padding="zeros", batch_size=2)
    assert ei_z.size(1) == 2 * 20 * 9 and int(ei_z.max()) == 40


@pytest.mark.parametrize("h,w", [(3, 4), (1, 4), (4, 1), (1, 1)])
def test_criss_cross_graph_is_row_and_column_with_centre_once(h, w):
    ei = graphs.criss_cross_graph(h, w, batch_size=2)
    assert ei.size(1) == 2 * h * w * (h + w - 1)
    for t in range(2 * h * w):
        b, r = divmod(t, h * w)
        ty, tx = divmod(r, w)
        expect = sorted(
            {b * h * w + y * w + x for y in range(h) for x in range(w) if y == ty or x == tx}
        )
        assert ei[0, ei[1] == t].tolist() == expect


def test_image_nodes_round_trip():
    img = torch.randn(2, 3, 4, 5)
    x, pos, batch = graphs.image_to_nodes(img)
    assert x.shape == (40, 3) and pos.dtype == torch.long
    assert torch.equal(x[7], img[0, :, 1, 2]) and pos[7].tolist() == [1, 2]
    assert batch.tolist() == [0] * 20 + [1] * 20
    assert torch.equal(graphs.nodes_to_image(x, 2, 4, 5), img)


# --------------------------------------------------------------------------------------------
# any node set
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", [True, False])
def test_full_graph_is_all_pairs_within_samples(loop):
    batch = _batch([3, 1, 2])
    ei = graphs.full_graph(batch, loop=loop)
    expect = [
        (s, t) for t in range(6) for s in range(6) if batch[s] == batch[t] and (loop or s != t)
    ]
    assert [tuple(e) for e in ei.t().tolist()] == expect
    assert graphs.full_graph(4).size(1) == 16


def test_full_graph_bipartite():
    src_batch, dst_batch = _batch([2, 3]), _batch([1, 2])
    ei = graphs.full_graph(src_batch, batch_dst=dst_batch)
    expect = [(s, t) for t in range(3) for s in range(5) if src_batch[s] == dst_batch[t]]
    assert [tuple(e) for e in ei.t().tolist()] == expect
    with pytest.raises(ValueError, match="loop=False needs one node set"):
        graphs.full_graph(src_batch, batch_dst=dst_batch, loop=False)


# full_graph's memory guard: free memory, process limits and cgroup limits, least wins


def test_full_graph_asks_for_memory_only_for_large_edge_lists(monkeypatch):
    calls = []

    def nothing_free(device):
        calls.append(device)
        return 0

    monkeypatch.setattr(graphs, "available_bytes", nothing_free)
    assert graphs.full_graph(700).shape == (2, 490_000)  # 15.7 MB <= 16 MiB: not asked
    assert calls == []
    with pytest.raises(MemoryError, match=r"full_graph: 640,000 pairs need about 0\.0 GB"):
        graphs.full_graph(800)  # 20.5 MB: asked, and nothing is free
    assert calls == [torch.device("cpu")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_full_graph_under_an_address_space_limit_raises_the_guards_error(tmp_path):
    """``ulimit -v``: MemAvailable says plenty, but the process may map only 512 MiB more.
    Before, full_graph passed its check and died in the allocator (RuntimeError)."""
    code = textwrap.dedent(
        """
        import resource
        from pcattn import graphs
        with open("/proc/self/status") as f:
            vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize"))
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        soft = vm + (512 << 20)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        print("small", tuple(graphs.full_graph(1000).shape))  # 32 MB: fits
        try:
            graphs.full_graph(8192)  # 67M pairs, about 2.1 GB
        except MemoryError as e:
            print("refused", e)
        """
    )
    src = os.path.dirname(os.path.dirname(os.path.abspath(graphs.__file__)))  # pcattn's parent
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0] == "small (2, 1000000)"
    assert lines[1].startswith("refused full_graph: 67,108,864 pairs need about 2.1 GB to build, ")
    have = float(lines[1].split("but ")[1].split(" GB")[0])
    assert 0.0 < have <= 0.6  # the headroom under the limit, not the machine's free memory
    assert "ulimit -v / -d and its cgroup memory limit" in lines[1]


def _write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limits_of_the_cgroup_and_its_ancestors(tmp_path):
    root, me = tmp_path / "cg", tmp_path / "self_cgroup"
    _write(me, "0::/a/b\n")
    _write(root / "a" / "b" / "memory.max", "max\n")  # no limit here
    _write(root / "a" / "b" / "memory.current", "100\n")
    _write(root / "a" / "memory.max", "1000000\n")
    _write(root / "a" / "memory.current", "600000\n")
    _write(root / "a" / "memory.stat", "anon 1\ninactive_file 100000\nactive_file 5\n")
    # 1,000,000 - (600,000 - 100,000 reclaimable page cache)
    assert graphs._cgroup_available(root, me) == 500_000
    _write(root / "a" / "b" / "memory.max", "450000\n")
    assert graphs._cgroup_available(root, me) == 449_900  # the tighter one, no memory.stat
    _write(root / "a" / "b" / "memory.max", "a lot\n")  # unreadable: no limit from it
    assert graphs._cgroup_available(root, me) == 500_000


def test_cgroup_v1_limit_of_a_container_without_a_cgroup_namespace(tmp_path):
    root, me = tmp_path / "cg", tmp_path / "self_cgroup"
    # the host's path of our cgroup is not visible: the mount root is the container's own
    _write(me, "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    _write(root / "memory" / "memory.limit_in_bytes", "2000000\n")
    _write(root / "memory" / "memory.usage_in_bytes", "1500000\n")
    _write(root / "memory" / "memory.stat", "inactive_file 7\ntotal_inactive_file 500000\n")
    assert graphs._cgroup_available(root, me) == 1_000_000
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # unlimited
    assert graphs._cgroup_available(root, me) is None
    assert graphs._cgroup_available(tmp_path / "missing", tmp_path / "missing_too") is None


def test_rlimit_headroom_and_the_least_of_all_sources(tmp_path):
    status, meminfo = tmp_path / "status", tmp_path / "meminfo"
    _write(status, "Name:\tpython\nVmSize:\t  204800 kB\nVmData:\t  102400 kB\n")
    mib = 1 << 20
    assert graphs._rlimit_available(status, {"VmSize": 300 * mib}) == 100 * mib
    assert graphs._rlimit_available(status, {"VmSize": 300 * mib, "VmData": 150 * mib}) == 50 * mib
    assert graphs._rlimit_available(status, {}) is None
    assert graphs._rlimit_available(tmp_path / "missing", {"VmSize": 300 * mib}) is None
    _write(meminfo, "MemTotal:  9999999 kB\nMemFree:  1 kB\nMemAvailable:  204800 kB\n")
    none = tmp_path / "none"
    host = graphs._host_available_bytes
    assert host(meminfo, status, none, none, {}) == 200 * mib  # MemAvailable alone
    assert host(meminfo, status, none, none, {"VmData": 150 * mib}) == 50 * mib
    _write(tmp_path / "cg" / "memory.max", str(30 * mib))
    _write(tmp_path / "cg" / "memory.current", "0")
    assert host(meminfo, status, tmp_path / "cg", none, {"VmData": 150 * mib}) == 30 * mib
    assert host(none, none, none, none, {}) is None  # nothing readable: no guard


def test_slot_graph_connects_each_node_to_its_samples_slots():
    batch = _batch([3, 1, 2])
    ei = graphs.slot_graph(batch, 2)
    expect = [(2 * int(batch[t]) + k, t) for t in range(6) for k in range(2)]
    assert [tuple(e) for e in ei.t().tolist()] == expect
    assert graphs.slot_graph(3, 4).tolist() == [[0, 1, 2, 3] * 3, [0] * 4 + [1] * 4 + [2] * 4]
    with pytest.raises(ValueError, match="num_slots must be >= 1, got 0"):
        graphs.slot_graph(batch, 0)
    with pytest.raises(ValueError, match=r"batch must be sorted ascending"):
        graphs.slot_graph(torch.tensor([1, 0]), 2)


def test_replace_self_loops_keeps_sorted_edges_sorted():
    ei = torch.tensor([[1, 2, 0, 2, 0], [0, 0, 1, 2, 3]])  # sorted by target; 2 -> 2 a loop
    w = torch.tensor([0.5, 0.25, 2.0, 7.0, 3.0], dtype=torch.float64)
    out, ow = graphs.replace_self_loops(ei, w, num_nodes=5, fill_value=9.0, keep_weights=True)
    want = torch.tensor([[1, 2, 0, 0, 1, 2, 0, 3, 4], [0, 0, 0, 1, 1, 2, 3, 3, 4]])
    assert torch.equal(out, want)
    assert torch.equal(
        ow, torch.tensor([0.5, 0.25, 9.0, 2.0, 9.0, 7.0, 3.0, 9.0, 9.0], dtype=torch.float64)
    )
    out, ow = graphs.replace_self_loops(ei, w, num_nodes=5, fill_value=9.0)  # GAT: loops all new
    assert torch.equal(out, want)
    assert float(ow[5]) == 9.0


def test_replace_self_loops_on_unsorted_edges_appends():
    ei = torch.tensor([[1, 0, 3], [2, 1, 0]])
    out, ow = graphs.replace_self_loops(ei, num_nodes=4)
    assert ow is None
    assert torch.equal(out, torch.tensor([[1, 0, 3, 0, 1, 2, 3], [2, 1, 0, 0, 1, 2, 3]]))


def test_replace_self_loops_equals_remove_then_add():
    gen = torch.Generator().manual_seed(0)
    ei = graphs.sort_by_target(torch.randint(0, 9, (2, 40), generator=gen))[0]
    w = torch.rand(40, generator=gen)
    ref_ei, ref_w = graphs.add_self_loops(*graphs.remove_self_loops(ei, w), num_nodes=11)
    out, ow = graphs.replace_self_loops(ei, w, num_nodes=11)
    assert torch.equal(out, ref_ei) and torch.equal(ow, ref_w)
    with pytest.raises(ValueError, match=r"edge_weight must have shape \(40,\), got \(3,\)"):
        graphs.replace_self_loops(ei, torch.ones(3))


def test_self_loops_csr_and_sorting():
    ei = torch.tensor([[1, 2, 0, 2], [0, 0, 2, 2]])
    w = torch.tensor([0.5, 0.25, 2.0, 3.0])
    no_loop, w1 = graphs.remove_self_loops(ei, w)
    assert no_loop.tolist() == [[1, 2, 0], [0, 0, 2]] and w1.tolist() == [0.5, 0.25, 2.0]
    looped, w2 = graphs.add_self_loops(no_loop, w1, fill_value=1.0, num_nodes=4)
    assert looped.tolist() == [[1, 2, 0, 1, 0, 2, 3], [0, 0, 0, 1, 2, 2, 3]]
    assert w2.tolist() == [0.5, 0.25, 1.0, 1.0, 2.0, 1.0, 1.0]
    assert graphs.to_csr(looped, 5).tolist() == [0, 3, 4, 6, 7, 7]
    shuffled = looped[:, [6, 2, 0, 5, 1, 4, 3]]
    srt, attr = graphs.sort_by_target(shuffled, torch.arange(7))
    assert srt[1].tolist() == looped[1].tolist() and attr.tolist() == [1, 2, 4, 6, 3, 5, 0]


def test_empty_inputs():
    empty = torch.zeros(0, 3)
    assert graphs.knn_graph(empty, 4).shape == (2, 0)
    assert graphs.radius_graph(empty, 0.1).shape == (2, 0)
    assert graphs.fps(empty, ratio=0.5).shape == (0,)
    assert graphs.full_graph(0).shape == (2, 0)
    assert graphs.to_csr(torch.zeros(2, 0, dtype=torch.long), 3).tolist() == [0, 0, 0, 0]


# --------------------------------------------------------------------------------------------
# bad input: one clear ValueError naming the argument
# --------------------------------------------------------------------------------------------


def test_bad_positions_are_refused():
    pos = _cloud(0, 50)
    bad = pos.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"pos contains NaN or inf \(first at row 7"):
        graphs.knn_graph(bad, 4)
    bad[7, 1] = float("inf")
    with pytest.raises(ValueError, match=r"pos contains NaN or inf \(first at row 7"):
        graphs.fps(bad, ratio=0.5)
    with pytest.raises(ValueError, match="pos must be a floating-point tensor, got torch.int64"):
        graphs.knn_graph(pos.long(), 4)
    with pytest.raises(ValueError, match=r"pos must have shape \(N, D\), got \(50,\)"):
        graphs.radius_graph(pos[:, 0], 0.1)
    with pytest.raises(ValueError, match=r"y contains NaN or inf \(first at row 0"):
        graphs.knn(pos, bad[7:], 2)


def test_k_larger_than_a_cloud_is_refused():
    pos = _cloud(0, 30)
    with pytest.raises(
        ValueError,
        match=r"knn_graph\(k=30, loop=False\): the cloud has 30 "
        r"points, need at least 31",
    ):
        graphs.knn_graph(pos, 30)
    batch = _batch([20, 6, 4])
    with pytest.raises(
        ValueError,
        match=r"knn_graph\(k=5, loop=False\): sample 2 of the batch "
        r"has 4 points, need at least 6",
    ):
        graphs.knn_graph(pos, 5, batch)
    with pytest.raises(ValueError, match=r"k must be >= 1, got 0"):
        graphs.knn_graph(pos, 0)
    with pytest.raises(ValueError, match=r"k must be a positive int, got True"):
        graphs.knn_graph(pos, True)
    with pytest.raises(ValueError, match=r"fps\(num=5\): sample 2 of the batch has 4 points"):
        graphs.fps(pos, num=5, batch=batch)
    with pytest.raises(ValueError, match=r"knn: y has points in sample 1 but x has none there"):
        graphs.knn(pos[:20], pos, 2, torch.zeros(20, dtype=torch.long), batch)


def test_bad_batch_is_refused():
    pos = _cloud(0, 10)
    with pytest.raises(ValueError, match="batch has 9 entries but pos has 10 rows"):
        graphs.knn_graph(pos, 2, torch.zeros(9, dtype=torch.long))
    unsorted = torch.tensor([0, 0, 0, 1, 1, 0, 1, 1, 1, 1])
    with pytest.raises(
        ValueError,
        match=r"batch must be sorted ascending .* batch\[4\]=1 > "
        r"batch\[5\]=0",
    ):
        graphs.knn_graph(pos, 2, unsorted)
    with pytest.raises(ValueError, match="batch must be an integer tensor"):
        graphs.radius_graph(pos, 0.5, torch.zeros(10))
    with pytest.raises(ValueError, match="batch_y has 3 entries but y has 10 rows"):
        graphs.knn(pos, pos, 2, torch.zeros(10, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="give both batch_x and batch_y, or neither"):
        graphs.knn(pos, pos, 2, torch.zeros(10, dtype=torch.long))


def test_bad_graph_arguments_are_refused():
    with pytest.raises(ValueError, match="r must be a finite number > 0, got -1"):
        graphs.radius_graph(_cloud(0, 5), -1)
    with pytest.raises(ValueError, match="give exactly one of ratio and num"):
        graphs.fps(_cloud(0, 5))
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got 1.5"):
        graphs.fps(_cloud(0, 5), ratio=1.5)
    with pytest.raises(ValueError, match="kernel_size must be odd and >= 1, got 4"):
        graphs.grid_graph(5, 5, 4)
    with pytest.raises(ValueError, match="padding must be 'mask', 'reflect' or 'zeros'"):
        graphs.grid_graph(5, 5, 3, padding="same")
    with pytest.raises(
        ValueError,
        match=r"edge_index must be sorted by target .* edge 0 has "
        r"target 2 and edge 1 has 0",
    ):
        graphs.to_csr(torch.tensor([[0, 1], [2, 0]]))
    with pytest.raises(ValueError, match=r"x must have shape \(batch_size \* height \* width, C\)"):
        graphs.nodes_to_image(torch.zeros(5, 2), 1, 2, 3)
    with pytest.raises(ValueError, match="method must be 'auto', 'kdtree', 'brute' or 'matmul'"):
        graphs.knn_graph(_cloud(0, 5), 2, method="faiss")

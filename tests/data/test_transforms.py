"""pcattn.data.transforms against independent numpy computations, seeding and exact errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from pcattn import graphs
from pcattn.data.transforms import (
    Compose,
    Jitter,
    NormalizeSphere,
    PointDropout,
    RandomRotate,
    RandomScale,
    Resample,
    Shuffle,
    point_keys,
)


def _cloud(n: int = 200, seed: int = 0, dtype=torch.float64, index_x: bool = False) -> Data:
    """A random cloud with unit normals in x (or the point index in x) and per-point y."""
    g = np.random.default_rng(seed)
    pos = g.normal(size=(n, 3)) * [2.0, 1.0, 0.5] + [1.0, -2.0, 3.0]
    if index_x:
        x = np.arange(n, dtype=np.float64)[:, None]
    else:
        x = g.normal(size=(n, 3))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return Data(
        pos=torch.tensor(pos, dtype=dtype),
        x=torch.tensor(x, dtype=dtype),
        y=torch.arange(n) * 10,
        category=torch.tensor([3]),
    )


def _plane(n: int = 100, seed: int = 1) -> tuple[Data, np.ndarray]:
    """Points on a tilted plane through the origin, every x the plane's unit normal."""
    g = np.random.default_rng(seed)
    normal = np.array([1.0, 2.0, -0.5])
    normal /= np.linalg.norm(normal)
    a = np.cross(normal, [0.0, 0.0, 1.0])
    a /= np.linalg.norm(a)
    b = np.cross(normal, a)
    uv = g.uniform(-1, 1, size=(n, 2))
    pos = uv[:, :1] * a + uv[:, 1:] * b
    return Data(pos=torch.tensor(pos), x=torch.tensor(np.tile(normal, (n, 1)))), normal


def _dists(p: np.ndarray) -> np.ndarray:
    return np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))


def _fit_linear(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The matrix M with b = a M^T (least squares); exact for a linear map of the rows."""
    m, *_ = np.linalg.lstsq(a, b, rcond=None)
    return m.T


# --------------------------------------------------------------------------------------------
# deterministic
# --------------------------------------------------------------------------------------------


def test_normalize_sphere_matches_numpy():
    d = _cloud()
    out = NormalizeSphere()(d)
    p = d.pos.numpy()
    ref = p - p.mean(0)
    ref /= np.linalg.norm(ref, axis=1).max()
    np.testing.assert_allclose(out.pos.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(out.pos.numpy().mean(0), 0.0, atol=1e-12)
    assert np.linalg.norm(out.pos.numpy(), axis=1).max() == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(out.x, d.x) and torch.equal(out.y, d.y)
    assert out.pos.dtype == torch.float64


def test_normalize_sphere_coincident_points_only_centred():
    d = Data(pos=torch.full((5, 3), 2.5))
    assert torch.equal(NormalizeSphere()(d).pos, torch.zeros(5, 3))


def test_transforms_do_not_touch_the_input():
    d = _cloud(50)
    before = {k: d[k].clone() for k in ("pos", "x", "y")}
    for t in (
        NormalizeSphere(),
        RandomScale(seed=0),
        Jitter(seed=0),
        RandomRotate("so3", seed=0),
        PointDropout(seed=0),
        Resample(80, seed=0),
        Shuffle(seed=0),
    ):
        out = t(d)
        assert out is not d
        for k, v in before.items():
            assert torch.equal(d[k], v), (t, k)


# --------------------------------------------------------------------------------------------
# scale, jitter, rotation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_random_scale_anisotropic_per_axis_within_bounds(seed):
    d = _cloud()
    out = RandomScale(0.5, 2.0, anisotropic=True, seed=seed)(d)
    s = _fit_linear(d.pos.numpy(), out.pos.numpy())
    np.testing.assert_allclose(s, np.diag(np.diag(s)), atol=1e-10)  # diagonal: per axis
    factors = np.diag(s)
    assert np.all((factors >= 0.5) & (factors <= 2.0))
    assert len(np.unique(factors.round(12))) == 3
    # normals: S^-1 n, renormalised
    ref = d.x.numpy() / factors
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(out.x.numpy(), ref, atol=1e-12)


def test_random_scale_isotropic_keeps_normals():
    d = _cloud()
    out = RandomScale(0.5, 2.0, anisotropic=False, seed=3)(d)
    ratio = out.pos.numpy() / d.pos.numpy()
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-12)
    assert 0.5 <= ratio[0, 0] <= 2.0
    assert torch.equal(out.x, d.x)


def test_scaled_normals_stay_perpendicular_to_the_surface():
    d, _ = _plane()
    out = RandomScale(0.3, 3.0, seed=5)(d)
    p, n = out.pos.numpy(), out.x.numpy()
    tangents = p[1:] - p[0]
    np.testing.assert_allclose(tangents @ n[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-12)
    assert not np.allclose(n, d.x.numpy(), atol=1e-3)  # the normal did change


def test_jitter_bounded_by_clip_and_sigma():
    d = _cloud(2000)
    out = Jitter(sigma=0.05, clip=0.08, seed=0)(d)
    delta = (out.pos - d.pos).numpy()
    assert np.abs(delta).max() <= 0.08 + 1e-15
    assert np.isclose(np.abs(delta), 0.08).mean() > 0.05  # the clip is reached (1.6 sigma)
    small = (Jitter(sigma=0.01, clip=1.0, seed=1)(d).pos - d.pos).numpy()
    assert small.std() == pytest.approx(0.01, rel=0.05)
    assert abs(small.mean()) < 0.001
    assert torch.equal(out.x, d.x)


@pytest.mark.parametrize("axis", ["x", "y", "z", "so3"])
def test_rotation_is_rigid_and_rotates_normals(axis):
    d = _cloud(60)
    out = RandomRotate(axis, seed=7)(d)
    p, q = d.pos.numpy(), out.pos.numpy()
    np.testing.assert_allclose(_dists(q), _dists(p), atol=1e-10)
    r = _fit_linear(p, q)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-10)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(out.x.numpy(), d.x.numpy() @ r.T, atol=1e-10)
    if axis != "so3":
        k = "xyz".index(axis)
        np.testing.assert_allclose(q[:, k], p[:, k], atol=1e-12)  # the axis coordinate stays
        assert not np.allclose(q, p, atol=1e-3)


def test_rotated_normals_stay_perpendicular_to_the_surface():
    d, _ = _plane()
    out = RandomRotate("so3", seed=2)(d)
    tangents = out.pos.numpy()[1:] - out.pos.numpy()[0]
    np.testing.assert_allclose(tangents @ out.x.numpy()[0], 0.0, atol=1e-12)


def test_so3_rotations_are_spread_uniformly():
    # for the uniform (Haar) distribution E[R] = 0 and E[trace R] = 0 (trace = 1 + 2 cos angle)
    t = RandomRotate("so3", seed=0)
    mats = np.stack([t.matrix().numpy() for _ in range(4000)])
    assert np.abs(mats.mean(0)).max() < 0.04
    # angle density of a Haar rotation is (1 - cos a) / pi on [0, pi]: P(a < pi/2) = 1/2 - 1/pi
    angles = np.arccos(np.clip((np.trace(mats, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert (angles < np.pi / 2).mean() == pytest.approx(0.5 - 1 / np.pi, abs=0.03)


def test_normals_flag_false_leaves_other_features():
    d = _cloud(30)
    d.x = torch.rand(30, 5, dtype=torch.float64)
    out = RandomRotate("z", normals=False, seed=0)(d)
    assert torch.equal(out.x, d.x)
    out = RandomScale(normals=False, seed=0)(d)
    assert torch.equal(out.x, d.x)


# --------------------------------------------------------------------------------------------
# dropping, resampling, shuffling: attributes stay aligned
# --------------------------------------------------------------------------------------------


def _check_aligned(orig: Data, out: Data) -> np.ndarray:
    """With x = point index: every output point is the original point x names."""
    idx = out.x.view(-1).long()
    assert torch.equal(out.pos, orig.pos[idx])
    assert torch.equal(out.y, orig.y[idx])
    return idx.numpy()


@pytest.mark.parametrize("n, m", [(200, 64), (200, 200), (50, 128)])
def test_resample_random_sizes_and_alignment(n, m):
    d = _cloud(n, index_x=True)
    out = Resample(m, seed=1)(d)
    assert out.pos.shape == (m, 3) and out.y.shape == (m,)
    idx = _check_aligned(d, out)
    if n >= m:
        assert len(np.unique(idx)) == m  # without replacement
    else:
        assert set(idx[:n]) == set(range(n))  # every point once, then extras
    assert torch.equal(out.category, d.category)


@pytest.mark.parametrize("n, m", [(300, 40), (30, 50)])
def test_resample_fps_equals_graphs_fps(n, m):
    d = _cloud(n, index_x=True, dtype=torch.float32)
    out = Resample(m, method="fps", seed=11)(d)
    idx = _check_aligned(d, out)
    ref = graphs.fps(d.pos, num=min(n, m), generator=torch.Generator().manual_seed(11))
    np.testing.assert_array_equal(idx[: min(n, m)], ref.numpy())
    assert len(idx) == m


def test_resample_keeps_per_shape_label():
    d = Data(pos=torch.randn(100, 3), y=torch.tensor([7]))
    out = Resample(10, seed=0)(d)
    assert torch.equal(out.y, torch.tensor([7])) and out.pos.shape == (10, 3)
    assert point_keys(d) == ["pos"]


def test_one_point_cloud_label_rule():
    seg = Data(pos=torch.zeros(1, 3), y=torch.tensor([4]), category=torch.tensor([1]))
    cls = Data(pos=torch.zeros(1, 3), y=torch.tensor([4]))
    assert Resample(3, seed=0)(seg).y.tolist() == [4, 4, 4]
    assert Resample(3, seed=0)(cls).y.tolist() == [4]


def test_shuffle_is_a_permutation():
    d = _cloud(100, index_x=True)
    out = Shuffle(seed=4)(d)
    idx = _check_aligned(d, out)
    assert sorted(idx.tolist()) == list(range(100))
    assert idx.tolist() != list(range(100))


def test_point_dropout_replace_copies_the_first_point():
    d = _cloud(500, index_x=True)
    fractions = []
    t = PointDropout(max_ratio=0.6, seed=0)
    for _ in range(200):
        out = t(d)
        idx = _check_aligned(d, out)
        assert len(idx) == 500
        kept = idx == np.arange(500)
        assert np.all(idx[~kept] == 0)  # dropped points become point 0
        fractions.append(1 - kept[1:].mean())
    fractions = np.array(fractions)
    assert fractions.max() <= 0.6 + 0.08  # ratio <= max_ratio (binomial spread on 499 points)
    assert fractions.mean() == pytest.approx(0.3, abs=0.04)  # ratio ~ U(0, max_ratio)


def test_point_dropout_remove_keeps_order_and_one_point():
    d = _cloud(300, index_x=True)
    out = PointDropout(max_ratio=0.8, mode="remove", seed=3)(d)
    idx = _check_aligned(d, out)
    assert np.all(np.diff(idx) > 0) and 0 < len(idx) < 300
    tiny = Data(pos=torch.zeros(1, 3))
    for s in range(20):
        assert PointDropout(0.99, mode="remove", seed=s)(tiny).pos.shape == (1, 3)


def test_num_nodes_follows_resampling():
    d = Data(pos=torch.randn(20, 3), num_nodes=20)
    assert Resample(7, seed=0)(d).num_nodes == 7


# --------------------------------------------------------------------------------------------
# seeding
# --------------------------------------------------------------------------------------------


def _pipeline(seed=None, member_seed=0):
    return Compose(
        [
            NormalizeSphere(),
            RandomScale(seed=member_seed),
            RandomRotate("so3", seed=member_seed + 1),
            Jitter(seed=member_seed + 2),
            PointDropout(seed=member_seed + 3),
            Resample(64, method="fps", seed=member_seed + 4),
            Shuffle(seed=member_seed + 5),
        ],
        seed=seed,
    )


def _run(t, d, k=3):
    return [t(d) for _ in range(k)]


def _same(a, b) -> bool:
    return all(
        torch.equal(u.pos, v.pos) and torch.equal(u.x, v.x) for u, v in zip(a, b, strict=True)
    )


def test_same_seed_same_sequence_different_seed_differs():
    d = _cloud(200)
    a, b, c = _run(_pipeline(seed=5), d), _run(_pipeline(seed=5), d), _run(_pipeline(seed=6), d)
    assert _same(a, b)
    assert not torch.equal(a[0].pos, c[0].pos)
    assert not torch.equal(a[0].pos, a[1].pos)  # a sequence, not one repeated draw


def test_compose_seed_overrides_member_seeds():
    d = _cloud(200)
    assert _same(_run(_pipeline(seed=9, member_seed=0), d), _run(_pipeline(9, 100), d))
    assert not _same(_run(_pipeline(None, 0), d), _run(_pipeline(None, 100), d))
    t = _pipeline(seed=9)
    seeds = [m.seed for m in t.transforms[1:]]
    assert len(set(seeds)) == len(seeds)  # one derived seed per position


@pytest.mark.parametrize(
    "make",
    [
        lambda s: RandomScale(seed=s),
        lambda s: Jitter(seed=s),
        lambda s: RandomRotate("z", seed=s),
        lambda s: PointDropout(seed=s),
        lambda s: Resample(50, seed=s),
        lambda s: Shuffle(seed=s),
    ],
)
def test_each_random_transform_is_seeded(make):
    d = _cloud(100)
    a, b, c = _run(make(1), d), _run(make(1), d), _run(make(2), d)
    assert _same(a, b)
    assert not _same(a, c)
    t = make(1)
    first = t(d)
    t.reseed(1)
    assert torch.equal(t(d).pos, first.pos)


def test_seed_none_follows_torch_global_seed():
    d = _cloud(100)
    torch.manual_seed(123)
    a = Jitter()(d)
    torch.manual_seed(123)
    b = Jitter()(d)
    assert torch.equal(a.pos, b.pos)


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, data: Data, n: int, transform):
        self.data, self.n, self.transform = data, n, transform

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.transform(self.data)


def test_dataloader_workers_and_epochs_get_their_own_streams():
    d = Data(pos=torch.zeros(16, 3))
    loader = DataLoader(_Repeat(d, 4, Jitter(sigma=1.0, clip=10.0, seed=0)), num_workers=2)

    def epoch():
        return [b.pos for b in loader]

    torch.manual_seed(0)
    e1, e2 = epoch(), epoch()
    # items 0, 2 come from worker 0 and 1, 3 from worker 1: all four differ
    assert len({tuple(p.flatten().tolist()) for p in e1}) == 4
    assert not any(torch.equal(a, b) for a, b in zip(e1, e2, strict=True))  # epochs differ
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(e1, epoch(), strict=True))  # reproducible


def test_pyg_loader_batches_transformed_items():
    t = Compose([NormalizeSphere(), Resample(32, seed=0)], seed=0)
    items = [t(_cloud(50 + 10 * i, seed=i, dtype=torch.float32)) for i in range(3)]
    batch = next(iter(DataLoader(items, batch_size=3)))
    assert batch.pos.shape == (96, 3) and batch.y.shape == (96,)
    assert batch.category.tolist() == [3, 3, 3]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RandomScale(0, 1), r"RandomScale: low must be > 0, got 0"),
        (lambda: RandomScale(2, 1), r"RandomScale: high must be >= low, got low=2, high=1"),
        (lambda: RandomScale(float("nan"), 1), r"RandomScale: low must be a finite number"),
        (lambda: RandomScale(anisotropic=1), r"RandomScale: anisotropic must be True or False"),
        (lambda: Jitter(sigma=-0.1), r"Jitter: sigma must be >= 0, got -0.1"),
        (lambda: Jitter(clip=0), r"Jitter: clip must be > 0, got 0"),
        (lambda: RandomRotate("w"), r"RandomRotate: axis must be 'x', 'y', 'z' or 'so3', got 'w'"),
        (lambda: PointDropout(1.0), r"PointDropout: max_ratio must be in \[0, 1\), got 1.0"),
        (lambda: PointDropout(mode="x"), r"PointDropout: mode must be 'replace' or 'remove'"),
        (lambda: Resample(0), r"Resample: num_points must be an int >= 1, got 0"),
        (lambda: Resample(10, "grid"), r"Resample: method must be 'random' or 'fps', got 'grid'"),
        (lambda: Shuffle(seed=-1), r"Shuffle: seed must be a non-negative int or None, got -1"),
        (lambda: Jitter(seed=1.5), r"Jitter: seed must be a non-negative int or None, got 1.5"),
        (lambda: Compose([NormalizeSphere(), 3]), r"Compose: transforms\[1\] is not callable"),
    ],
)
def test_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "t, name",
    [
        (NormalizeSphere(), "NormalizeSphere"),
        (RandomScale(seed=0), "RandomScale"),
        (Jitter(seed=0), "Jitter"),
        (RandomRotate(seed=0), "RandomRotate"),
        (PointDropout(seed=0), "PointDropout"),
        (Resample(8, seed=0), "Resample"),
        (Shuffle(seed=0), "Shuffle"),
    ],
)
def test_nan_positions_name_the_transform(t, name):
    d = _cloud(10)
    d.pos[4, 1] = float("nan")
    with pytest.raises(
        ValueError, match=rf"^{name}: data.pos contains NaN or inf \(first at row 4"
    ):
        t(d)
    with pytest.raises(ValueError, match=rf"^{name}: data has no pos"):
        t(Data(x=torch.zeros(3, 3)))
    bad = _cloud(10)
    bad.x = bad.x[:7]
    with pytest.raises(
        ValueError, match=rf"^{name}: data.x has shape \(7, 3\) but data.pos has 10"
    ):
        t(bad)


def test_data_errors():
    d = _cloud(10)
    d.x = torch.rand(10, 1, dtype=torch.float64)
    with pytest.raises(
        ValueError,
        match=r"RandomRotate: normals=True needs data.x to be unit "
        r"normals of shape \(P, 3\), got \(10, 1\).*pass normals=False",
    ):
        RandomRotate(seed=0)(d)
    with pytest.raises(ValueError, match=r"RandomScale: normals=True needs data.x"):
        RandomScale(seed=0)(d)
    with pytest.raises(
        ValueError, match=r"RandomRotate: data.pos must have 3 columns, got \(5, 2\)"
    ):
        RandomRotate(seed=0)(Data(pos=torch.zeros(5, 2)))
    for t, name in ((NormalizeSphere(), "NormalizeSphere"), (Resample(4, seed=0), "Resample")):
        with pytest.raises(ValueError, match=rf"{name}: the cloud has no points"):
            t(Data(pos=torch.zeros(0, 3)))
    g = Data(pos=torch.zeros(4, 3), edge_index=torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match=r"Shuffle: data has edge_index, which would no longer"):
        Shuffle(seed=0)(g)
    with pytest.raises(ValueError, match=r"Jitter: expected a torch_geometric Data, got Tensor"):
        Jitter(seed=0)(torch.zeros(3, 3))

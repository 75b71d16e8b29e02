"""SyntheticParts: determinism, labels against the part table, geometry of the primitives and
the parts, pose, and that bounding-box size alone does not separate the categories."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.spatial import cKDTree
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch_geometric.loader import DataLoader

from pcattn.data import _primitives as primitives
from pcattn.data.synthetic import (
    SYNTHETIC_PART_NAMES,
    SYNTHETIC_PARTS,
    SyntheticParts,
    generate_shape,
)
from pcattn.data.transforms import Resample

CATS = list(SYNTHETIC_PARTS)


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("pos", "x", "y"))


# --------------------------------------------------------------------------------------------
# table and items
# --------------------------------------------------------------------------------------------


def test_part_table_is_contiguous_and_matches_names():
    assert len(SYNTHETIC_PARTS) >= 5 and CATS == sorted(CATS)
    ids = [i for cat in CATS for i in SYNTHETIC_PARTS[cat]]
    assert ids == list(range(23))
    for cat in CATS:
        assert len(SYNTHETIC_PARTS[cat]) == len(SYNTHETIC_PART_NAMES[cat]) >= 2
    ds = SyntheticParts(8)
    assert (ds.num_parts, ds.num_categories, ds.num_classes) == (23, 8, 23)
    assert SyntheticParts(8, task="classification").num_classes == 8


def test_segmentation_item_layout_and_labels():
    ds = SyntheticParts(48, num_points=512, split="val")
    for i in range(len(ds)):
        d = ds[i]
        cat = CATS[i % 8]
        assert d.pos.shape == (512, 3) and d.pos.dtype == torch.float32
        assert d.x.shape == (512, 3) and d.x.dtype == torch.float32
        assert d.y.shape == (512,) and d.y.dtype == torch.int64
        assert d.category.tolist() == [CATS.index(cat)]
        np.testing.assert_allclose(d.x.norm(dim=1).numpy(), 1.0, atol=1e-5)
        # every part of the category is present, and nothing else
        assert sorted(set(d.y.tolist())) == SYNTHETIC_PARTS[cat]
        assert int(torch.bincount(d.y).max()) < 512
        assert np.linalg.norm(d.pos.numpy(), axis=1).max() <= 1.2 * 1.0 + 0.1  # scale, noise


def test_classification_item_has_class_label_only():
    seg = SyntheticParts(10)
    cls = SyntheticParts(10, task="classification")
    for i in (0, 3, 9):
        a, b = seg[i], cls[i]
        assert torch.equal(a.pos, b.pos) and torch.equal(a.x, b.x)
        assert torch.equal(b.y, a.category) and b.y.shape == (1,)
        assert "category" not in b


def test_class_balance_and_labels_method():
    ds = SyntheticParts(203)
    labels = ds.labels()
    counts = np.bincount(labels, minlength=8)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 203
    assert [int(ds[i].category) for i in range(0, 203, 17)] == labels[::17].tolist()


def test_category_filter_keeps_global_labels():
    ds = SyntheticParts(12, categories=["mug", "airplane"], num_points=128)
    assert ds.categories == ["mug", "airplane"]
    assert ds.labels().tolist() == [CATS.index("mug"), CATS.index("airplane")] * 6
    assert set(ds[0].y.tolist()) == set(SYNTHETIC_PARTS["mug"])
    assert set(ds[1].y.tolist()) == set(SYNTHETIC_PARTS["airplane"])


def test_pyg_loader_batches_items():
    batch = next(iter(DataLoader(SyntheticParts(6, num_points=100), batch_size=3)))
    assert batch.pos.shape == (300, 3) and batch.y.shape == (300,)
    assert batch.category.tolist() == [0, 1, 2]


def test_transform_is_applied_and_aligned():
    plain = SyntheticParts(4, num_points=300)
    ds = SyntheticParts(4, num_points=300, transform=Resample(64, seed=0))
    idx = Resample(64, seed=0).indices(plain[0].pos)
    d = ds[0]
    assert torch.equal(d.pos, plain[0].pos[idx]) and torch.equal(d.y, plain[0].y[idx])


# --------------------------------------------------------------------------------------------
# determinism and splits
# --------------------------------------------------------------------------------------------


def test_items_depend_only_on_seed_split_and_index():
    a = SyntheticParts(30, num_points=256)
    first = a[17]
    for i in (3, 29, 0):
        a[i]
    assert _same(a[17], first)  # same item twice, after other accesses
    b = SyntheticParts(100, num_points=256)  # another size, fresh object, other order
    assert _same(b[17], first) and _same(b[-83], first)
    c = SyntheticParts(30, num_points=256, seed=1)
    assert not torch.equal(c[17].pos, first.pos)
    assert not torch.equal(a[16].pos, first.pos)


def test_splits_are_disjoint_streams():
    n = 24
    splits = {s: SyntheticParts(n, num_points=128, split=s) for s in ("train", "val", "test")}
    fingerprints = {s: {tuple(ds[i].pos[0].tolist()) for i in range(n)} for s, ds in splits.items()}
    assert all(len(f) == n for f in fingerprints.values())
    assert not fingerprints["train"] & fingerprints["test"]
    assert not fingerprints["train"] & fingerprints["val"]
    assert not fingerprints["val"] & fingerprints["test"]


def _pose(ds: SyntheticParts, idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The linear map ``m`` with item = own-frame shape (centred, in the unit ball) @ ``m``,
    fitted by least squares on a noise-free item; also the two point sets."""
    own, _, _ = generate_shape(
        ds.categories[idx % len(ds.categories)], ds.rng(idx), ds.num_points, pose=False
    )
    own = own - (own.min(0) + own.max(0)) / 2
    own /= np.linalg.norm(own, axis=1).max()
    posed = ds[idx].pos.double().numpy()
    m, *_ = np.linalg.lstsq(own, posed, rcond=None)
    return m, own, posed


def test_noise_level_changes_only_the_noise():
    clean = SyntheticParts(8, num_points=2000, noise=0.0)
    noisy = SyntheticParts(8, num_points=2000, noise=0.05)
    for i in range(8):
        a, b = clean[i], noisy[i]
        assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
        s = np.cbrt(np.linalg.det(_pose(clean, i)[0]))  # the item's scale
        delta = (b.pos - a.pos).double().numpy() / s
        assert delta.std() == pytest.approx(0.05, rel=0.08)


# --------------------------------------------------------------------------------------------
# geometry: primitives (area-uniform sampling, outward unit normals)
# --------------------------------------------------------------------------------------------


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_box_faces_sampled_by_area_with_outward_normals():
    box = primitives.Box((2.0, 1.0, 0.5))
    p, n = box.sample(_rng(), 40000)
    np.testing.assert_allclose(np.abs(p).max(0), [1.0, 0.5, 0.25])
    axis = np.abs(n).argmax(1)
    on_face = np.isclose(np.abs(p[np.arange(len(p)), axis]), np.array([1.0, 0.5, 0.25])[axis])
    assert on_face.all()
    assert np.all((n * p).sum(1) > 0)  # outward
    share = np.bincount(axis, minlength=3) / len(p)
    areas = np.array([1.0 * 0.5, 2.0 * 0.5, 2.0 * 1.0])
    np.testing.assert_allclose(share, areas / areas.sum(), atol=0.01)
    assert box.area == pytest.approx(2 * areas.sum())


def test_cone_lateral_density_follows_radius():
    cone = primitives.Frustum(1.0, 0.0, 2.0, caps=(True, False))
    p, n = cone.sample(_rng(1), 60000)
    lateral = ~np.isclose(p[:, 1], -1.0)
    side_area, cap_area = math.pi * math.hypot(2.0, 1.0), math.pi
    assert lateral.mean() == pytest.approx(side_area / (side_area + cap_area), abs=0.01)
    # on a cone the area below half height is 3/4 of the lateral surface
    assert (p[lateral, 1] < 0).mean() == pytest.approx(0.75, abs=0.01)
    rad = np.hypot(p[:, 0], p[:, 2])
    np.testing.assert_allclose(rad[lateral], (1.0 - p[lateral, 1]) / 2, atol=1e-12)
    assert np.all((n * p).sum(1) > 0)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-12)
    # lateral normal is perpendicular to the generator line (apex - point)
    apex = np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(((apex - p[lateral]) * n[lateral]).sum(1), 0.0, atol=1e-12)


def test_spheroid_band_matches_numeric_area():
    a, b = 3.0, 1.0  # semi-axis a along x, b along y and z
    e = primitives.Ellipsoid((a, b, b))
    p, n = e.sample(_rng(2), 60000)
    np.testing.assert_allclose((p**2 / [a * a, b * b, b * b]).sum(1), 1.0, atol=1e-12)

    def ring(x):  # surface of revolution: 2 pi y sqrt(1 + y'^2)
        y = b * math.sqrt(1 - x * x / (a * a))
        dy = -b * x / (a * a * math.sqrt(1 - x * x / (a * a)))
        return 2 * math.pi * y * math.sqrt(1 + dy * dy)

    band = quad(ring, -1.5, 1.5)[0]
    total = quad(ring, -a, a, limit=200)[0]
    assert (np.abs(p[:, 0]) < 1.5).mean() == pytest.approx(band / total, abs=0.01)
    assert e.area == pytest.approx(total, rel=0.02)
    grad = p / [a * a, b * b, b * b]  # the gradient of the implicit equation
    grad /= np.linalg.norm(grad, axis=1, keepdims=True)
    np.testing.assert_allclose(n, grad, atol=1e-12)


def test_torus_outer_half_share_and_normals():
    big, small = 1.0, 0.4
    t = primitives.Torus(big, small, 0.0, 2 * math.pi)
    p, n = t.sample(_rng(3), 60000)
    ring = p[:, :2] / np.linalg.norm(p[:, :2], axis=1, keepdims=True) * big
    centre = np.c_[ring, np.zeros(len(p))]
    np.testing.assert_allclose(np.linalg.norm(p - centre, axis=1), small, atol=1e-12)
    np.testing.assert_allclose(n, (p - centre) / small, atol=1e-12)
    outer = np.linalg.norm(p[:, :2], axis=1) > big
    assert outer.mean() == pytest.approx((math.pi * big + 2 * small) / (2 * math.pi * big), 0.01)


@pytest.mark.parametrize("cat", CATS)
def test_normals_agree_with_local_surface(cat):
    """Independent estimate: the smallest principal axis of each point's neighbours on the
    same part and the same face (neighbours whose normal is within 18 degrees, so that both
    faces of a thin slab are not mixed); it must match the given normal on every part."""
    pos, nrm, lab = generate_shape(cat, _rng(4), 4096, noise=0.0)
    tested = 0
    for pid in SYNTHETIC_PARTS[cat]:
        m = np.flatnonzero(lab == pid)
        p, n = pos[m], nrm[m]
        _, nb = cKDTree(p).query(p, k=min(24, len(m)))  # (n, k)
        w = (np.einsum("nkd,nd->nk", n[nb], n) > 0.95).astype(float)  # same face
        cnt = w.sum(1)
        mean = np.einsum("nk,nkd->nd", w, p[nb]) / cnt[:, None]
        q = (p[nb] - mean[:, None]) * np.sqrt(w)[..., None]
        _, vec = np.linalg.eigh(np.einsum("nki,nkj->nij", q, q))
        use = cnt >= 6
        agree = np.abs(np.einsum("nd,nd->n", vec[:, :, 0], n)) > 0.9
        assert agree[use].mean() > 0.9, SYNTHETIC_PART_NAMES[cat][SYNTHETIC_PARTS[cat].index(pid)]
        tested += use.sum()
    assert tested > 0.8 * len(pos)


# --------------------------------------------------------------------------------------------
# geometry: parts sit where they should in the shape's own frame (y up)
# --------------------------------------------------------------------------------------------


def _parts(cat, seed):
    pos, _, lab = generate_shape(cat, _rng(seed), 2048, pose=False)
    return {
        name: pos[lab == pid]
        for name, pid in zip(SYNTHETIC_PART_NAMES[cat], SYNTHETIC_PARTS[cat], strict=True)
    }


@pytest.mark.parametrize("seed", range(12))
def test_parts_are_geometrically_consistent(seed):
    eps = 1e-9
    p = _parts("chair", seed)
    assert p["leg"][:, 1].max() <= p["seat"][:, 1].min() + eps  # legs below the seat
    assert p["leg"][:, 1].min() == pytest.approx(0.0, abs=eps)  # standing on the floor
    assert p["back"][:, 1].mean() > p["seat"][:, 1].max()
    assert p["back"][:, 0].mean() < p["seat"][:, 0].mean()  # at the rear
    p = _parts("table", seed)
    assert p["leg"][:, 1].max() <= p["top"][:, 1].min() + eps
    p = _parts("lamp", seed)
    assert p["base"][:, 1].mean() < p["pole"][:, 1].mean() < p["shade"][:, 1].mean()
    p = _parts("guitar", seed)
    assert p["body"][:, 1].mean() < p["neck"][:, 1].mean() < p["head"][:, 1].mean()
    p = _parts("rocket", seed)
    assert p["nose"][:, 1].min() >= p["body"][:, 1].max() - eps
    assert p["fin"][:, 1].mean() < p["body"][:, 1].mean()
    p = _parts("mug", seed)
    assert p["handle"][:, 0].mean() > p["body"][:, 0].max() * 0.9
    p = _parts("car", seed)
    assert p["cabin"][:, 1].mean() > p["body"][:, 1].mean()
    assert p["wheel"][:, 1].min() == pytest.approx(0.0, abs=0.01)
    assert p["wheel"][:, 1].min() < p["body"][:, 1].min()
    p = _parts("airplane", seed)
    fus = p["fuselage"]
    assert p["tail"][:, 0].mean() < fus[:, 0].min() + 0.3 * np.ptp(fus[:, 0])  # at the rear
    assert np.ptp(p["wing"][:, 2]) > 3 * np.ptp(fus[:, 2])  # wings span sideways
    assert p["engine"][:, 1].mean() < p["wing"][:, 1].mean()  # engines hang below
    assert np.abs(p["engine"][:, 2]).min() > np.ptp(fus[:, 2]) / 2  # beside the fuselage


@pytest.mark.parametrize("idx", range(8))
def test_pose_is_spin_small_tilt_and_scale(idx):
    ds = SyntheticParts(8, num_points=512, noise=0.0, max_tilt=10.0, scale=(0.8, 1.2))
    m, own, posed = _pose(ds, idx)
    np.testing.assert_allclose(own @ m, posed, atol=1e-5)
    s = np.cbrt(np.linalg.det(m))
    r = m.T / s
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-5)  # a rotation times a scale
    assert 0.8 - 1e-6 <= s <= 1.2 + 1e-6
    tilt = math.degrees(math.acos(min(1.0, r[1, 1])))  # angle between the up axes
    assert tilt <= 10.0 + 1e-4


# --------------------------------------------------------------------------------------------
# hardness: bounding-box size alone does not separate the categories, geometry does
# --------------------------------------------------------------------------------------------


def _features(ds: SyntheticParts) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, list] = {"aabb": [], "upright": [], "d2": []}
    for i in range(len(ds)):
        p = ds[i].pos.double().numpy()
        # axis-aligned box: sorted extents
        out["aabb"].append(np.log(np.sort(np.ptp(p, axis=0))))
        # the best box a size-only rule could use: height, then the principal extents of
        # the horizontal footprint (undoes the spin about the up axis)
        xz = p[:, [0, 2]] - p[:, [0, 2]].mean(0)
        _, _, vt = np.linalg.svd(xz, full_matrices=False)
        out["upright"].append(np.log([np.ptp(p[:, 1]), *np.sort(np.ptp(xz @ vt.T, axis=0))]))
        # geometry: D2 shape distribution (histogram of distances between random point pairs)
        k = rng.integers(len(p), size=(3000, 2))
        d = np.linalg.norm(p[k[:, 0]] - p[k[:, 1]], axis=1)
        out["d2"].append(np.histogram(d / d.max(), 16, (0, 1))[0] / len(d))
    return {name: np.array(v) for name, v in out.items()}


@pytest.fixture(scope="module")
def baseline_accuracy() -> dict[str, float]:
    train = SyntheticParts(640, split="train")
    test = SyntheticParts(320, split="test")
    ftr, fte = _features(train), _features(test)
    acc = {}
    for name in ftr:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        clf.fit(ftr[name], train.labels())
        acc[name] = float((clf.predict(fte[name]) == test.labels()).mean())
    return acc


def test_bounding_box_alone_is_far_from_enough(baseline_accuracy):
    # measured (8 balanced classes, chance 0.125): aabb 0.61, upright box 0.73, D2 0.89
    acc = baseline_accuracy
    assert 0.3 < acc["aabb"] < 0.75
    assert acc["upright"] < 0.85
    # ... while a crude geometric descriptor does clearly better: the task is learnable
    assert acc["d2"] > max(acc["aabb"], acc["upright"]) + 0.08


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_shapes": 0}, r"SyntheticParts: num_shapes must be an int >= 1, got 0"),
        ({"num_points": 8}, r"SyntheticParts: num_points must be an int >= 16, got 8"),
        ({"split": "dev"}, r"SyntheticParts: split must be one of \['test', 'train', 'val'\]"),
        ({"seed": -1}, r"SyntheticParts: seed must be a non-negative int, got -1"),
        ({"noise": -0.1}, r"SyntheticParts: noise must be a number >= 0, got -0.1"),
        ({"noise": float("nan")}, r"SyntheticParts: noise must be a number >= 0, got nan"),
        ({"task": "seg"}, r"SyntheticParts: task must be 'segmentation' or 'classification'"),
        ({"categories": ["sofa"]}, r"SyntheticParts: categories must be distinct names from"),
        ({"categories": ["mug", "mug"]}, r"SyntheticParts: categories must be distinct names"),
        ({"categories": "mug"}, r"SyntheticParts: categories must be a list of names, got 'mug'"),
        ({"max_tilt": 120}, r"SyntheticParts: max_tilt must be in \[0, 90\] degrees, got 120"),
        ({"scale": (1.2, 0.8)}, r"SyntheticParts: scale must be a pair \(low, high\)"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticParts(**({"num_shapes": 4} | kwargs))


def test_index_errors():
    ds = SyntheticParts(4)
    with pytest.raises(IndexError, match=r"SyntheticParts: index 4 out of range for 4 items"):
        ds[4]
    with pytest.raises(TypeError, match=r"SyntheticParts: index must be an int, got str"):
        ds["0"]

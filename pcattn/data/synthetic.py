r"""``SyntheticParts``: procedurally generated, part-labelled shapes that need no download.

Each shape is built from primitive surfaces (boxes, open or capped cylinders and cone
frusta, ellipsoids, partial tori) with random proportions, sampled area-uniformly as a surface
point cloud with exact normals, perturbed with Gaussian noise and put in a random pose. Every
point carries a global part id from :data:`SYNTHETIC_PARTS`, laid out like ShapeNetPart's
category -> part table (each category owns a contiguous range of ids).

The shape's own frame has **y up** (as ShapeNetPart and ModelNet40 ``normal_resampled``), x
forward and z to the side; there every category is built the same way up (chair legs below the
seat, lamp shade above the pole, ...). It is then centred on its bounding box and scaled into
the unit ball, and posed: a rotation about y by an angle uniform in :math:`[0, 2\pi)`, a tilt
about a random horizontal axis by up to ``max_tilt`` degrees, and an isotropic scale uniform in
``scale``.

Proportions vary enough that categories overlap in bounding-box size: a classifier on the
sorted bounding-box extents alone is far from perfect (the tests measure it), so a model has to
learn the shapes' geometry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch_geometric.data import Data

from ._primitives import Y_TO_X, Y_TO_Z, Box, Ellipsoid, Frustum, Surface, Torus, axis_rotation

__all__ = ["SYNTHETIC_PARTS", "SYNTHETIC_PART_NAMES", "SyntheticParts", "generate_shape"]

#: category -> part names, in part-id order (categories sorted by name)
SYNTHETIC_PART_NAMES: dict[str, list[str]] = {
    "airplane": ["fuselage", "wing", "tail", "engine"],
    "car": ["body", "cabin", "wheel"],
    "chair": ["seat", "back", "leg"],
    "guitar": ["body", "neck", "head"],
    "lamp": ["base", "pole", "shade"],
    "mug": ["body", "handle"],
    "rocket": ["body", "nose", "fin"],
    "table": ["top", "leg"],
}


def _part_table() -> dict[str, list[int]]:
    table, start = {}, 0
    for cat, names in SYNTHETIC_PART_NAMES.items():
        table[cat] = list(range(start, start + len(names)))
        start += len(names)
    return table


#: category -> global part ids (contiguous, 0..22), the ShapeNetPart-style table
SYNTHETIC_PARTS: dict[str, list[int]] = _part_table()

_SPLITS = {"train": 0, "val": 1, "test": 2}
_MIN_PART_FRACTION = 0.02  # every part gets at least this share of the points


# --------------------------------------------------------------------------------------------
# categories: each returns, per part (in part order), the list of surfaces that make it
# --------------------------------------------------------------------------------------------

_Parts = list[list[Surface]]


def _airplane(rng: np.random.Generator) -> _Parts:
    length = rng.uniform(1.4, 2.6)
    rf = rng.uniform(0.06, 0.16)  # fuselage radius
    span = rng.uniform(1.0, 2.8)
    chord = rng.uniform(0.15, 0.45)
    wing_x = rng.uniform(-0.15, 0.15) * length
    wing_y = rng.uniform(-0.6, 0.6) * rf
    sweep = math.radians(rng.uniform(0, 35))
    thick = rng.uniform(0.02, 0.05)
    fuselage = [Ellipsoid((length / 2, rf, rf))]
    wings = []
    for side in (-1, 1):
        # a half wing runs along z; sweep turns its tip backwards (-x)
        w = Box((chord, thick, span / 2), rot=axis_rotation(1, side * sweep))
        w.at = np.array([wing_x, wing_y, 0.0]) + w.rot @ np.array([0, 0, side * span / 4])
        wings.append(w)
    fin_h = rng.uniform(0.15, 0.45)
    fin_c = rng.uniform(0.12, 0.3)
    tail_x = -length / 2 + fin_c / 2 + 0.02
    stab_span = rng.uniform(0.3, 0.8)
    tail = [
        Box((fin_c, fin_h, thick * 0.6), at=(tail_x, rf * 0.5 + fin_h / 2, 0)),
        Box((fin_c * 0.8, thick * 0.6, stab_span), at=(tail_x, rf * 0.3, 0)),
    ]
    n_eng = 2 if rng.random() < 0.6 else 4
    re = rng.uniform(0.04, 0.09)
    le = rng.uniform(0.18, 0.4)
    spots = [0.3] if n_eng == 2 else [0.22, 0.42]
    engines = []
    for frac in spots:
        for side in (-1, 1):
            z = side * frac * span
            x = wing_x - abs(z) * math.tan(sweep) + 0.1 * le
            engines.append(Frustum(re, re, le, at=(x, wing_y - thick / 2 - re, z), rot=Y_TO_X))
    return [fuselage, wings, tail, engines]


def _car(rng: np.random.Generator) -> _Parts:
    length = rng.uniform(1.3, 2.3)
    width = rng.uniform(0.65, 1.05)
    body_h = rng.uniform(0.25, 0.5)
    rw = rng.uniform(0.14, 0.26)  # wheel radius
    ww = rng.uniform(0.08, 0.18)  # wheel width
    body_y = rw + body_h / 2 - rng.uniform(0.0, 0.5) * rw
    body = [Box((length, body_h, width), at=(0, body_y, 0))]
    cab_l = rng.uniform(0.35, 0.7) * length
    cab_h = rng.uniform(0.2, 0.45)
    cab_x = rng.uniform(-0.2, 0.1) * length
    cabin = [
        Box(
            (cab_l, cab_h, width * rng.uniform(0.75, 0.95)),
            at=(cab_x, body_y + body_h / 2 + cab_h / 2, 0),
        )
    ]
    wheel_x = rng.uniform(0.28, 0.4) * length
    wheels = [
        Frustum(rw, rw, ww, at=(sx * wheel_x, rw, sz * (width / 2 - ww / 3)), rot=Y_TO_Z)
        for sx in (-1, 1)
        for sz in (-1, 1)
    ]
    return [body, cabin, wheels]


def _chair(rng: np.random.Generator) -> _Parts:
    w = rng.uniform(0.4, 0.75)
    d = rng.uniform(0.4, 0.7)
    t = rng.uniform(0.03, 0.09)
    h = rng.uniform(0.35, 0.6)  # seat height
    back_h = rng.uniform(0.3, 0.8)
    lean = math.radians(rng.uniform(0, 18))
    seat = [Box((d, t, w), at=(0, h, 0))]
    back = Box((t, back_h, w), rot=axis_rotation(2, lean))
    back.at = np.array([-d / 2 + t / 2, h + t / 2, 0]) + back.rot @ np.array([0, back_h / 2, 0])
    lr = rng.uniform(0.015, 0.04)
    inset = rng.uniform(0.0, 0.08)
    legs = [
        Frustum(
            lr,
            lr,
            h - t / 2,
            caps=(True, False),
            at=(sx * (d / 2 - lr - inset * d), (h - t / 2) / 2, sz * (w / 2 - lr - inset * w)),
        )
        for sx in (-1, 1)
        for sz in (-1, 1)
    ]
    return [seat, [back], legs]


def _guitar(rng: np.random.Generator) -> _Parts:
    lower = rng.uniform(0.16, 0.26)  # half width of the lower bout
    upper = lower * rng.uniform(0.65, 0.9)
    depth = rng.uniform(0.04, 0.08)
    lower_len = rng.uniform(0.2, 0.32)
    upper_len = lower_len * rng.uniform(0.7, 0.9)
    body = [
        Ellipsoid((lower, lower_len, depth), at=(0, lower_len, 0)),
        Ellipsoid((upper, upper_len, depth), at=(0, 2 * lower_len + 0.6 * upper_len, 0)),
    ]
    top = 2 * lower_len + 1.4 * upper_len
    neck_l = rng.uniform(0.35, 0.65)
    neck_w = rng.uniform(0.04, 0.07)
    neck = [Box((neck_w, neck_l, depth * 0.8), at=(0, top + neck_l / 2 - 0.05, 0))]
    head_l = rng.uniform(0.1, 0.2)
    head = [
        Box(
            (neck_w * rng.uniform(1.3, 2.0), head_l, depth * 0.6),
            at=(0, top + neck_l - 0.05 + head_l / 2, 0),
        )
    ]
    return [body, neck, head]


def _lamp(rng: np.random.Generator) -> _Parts:
    base_r = rng.uniform(0.1, 0.28)
    base_h = rng.uniform(0.02, 0.08)
    pole_h = rng.uniform(0.4, 1.2)
    pole_r = rng.uniform(0.01, 0.03)
    shade_h = rng.uniform(0.12, 0.35)
    shade_bottom = rng.uniform(0.12, 0.35)
    shade_top = shade_bottom * rng.uniform(0.3, 0.8)
    base = [Frustum(base_r, base_r * rng.uniform(0.7, 1.0), base_h, at=(0, base_h / 2, 0))]
    pole = [Frustum(pole_r, pole_r, pole_h, caps=(False, False), at=(0, base_h + pole_h / 2, 0))]
    shade = [
        Frustum(
            shade_bottom,
            shade_top,
            shade_h,
            caps=(False, False),
            at=(0, base_h + pole_h - 0.3 * shade_h, 0),
        )
    ]
    return [base, pole, shade]


def _mug(rng: np.random.Generator) -> _Parts:
    r = rng.uniform(0.2, 0.4)
    h = rng.uniform(0.45, 1.0)
    taper = rng.uniform(0.8, 1.1)
    body = [Frustum(r * taper, r, h, caps=(True, False), at=(0, h / 2, 0))]
    big = rng.uniform(0.1, 0.22) * h / 0.7
    small = rng.uniform(0.02, 0.045)
    handle = [
        Torus(
            big,
            small,
            -math.pi / 2,
            math.pi / 2,
            at=(r * (1 + taper) / 2 - 0.3 * small, h * rng.uniform(0.4, 0.6), 0),
        )
    ]
    return [body, handle]


def _rocket(rng: np.random.Generator) -> _Parts:
    r = rng.uniform(0.07, 0.16)
    body_h = rng.uniform(0.7, 1.5)
    nose_h = rng.uniform(0.15, 0.45)
    body = [Frustum(r, r, body_h, caps=(True, False), at=(0, body_h / 2, 0))]
    nose = [Frustum(r, 0.01, nose_h, caps=(False, False), at=(0, body_h + nose_h / 2, 0))]
    n_fins = 3 if rng.random() < 0.5 else 4
    fin_span = rng.uniform(0.1, 0.3)
    fin_h = rng.uniform(0.15, 0.4)
    fins = []
    for k in range(n_fins):
        a = 2 * math.pi * k / n_fins
        rot = axis_rotation(1, a)
        at = rot @ np.array([r + fin_span / 2 - 0.01, fin_h / 2, 0])
        fins.append(Box((fin_span, fin_h, 0.02), at=at, rot=rot))
    return [body, nose, fins]


def _table(rng: np.random.Generator) -> _Parts:
    length = rng.uniform(0.7, 1.9)
    width = rng.uniform(0.5, 1.1)
    t = rng.uniform(0.03, 0.08)
    h = rng.uniform(0.45, 0.85)
    if rng.random() < 0.7:
        top = [Box((length, t, width), at=(0, h, 0))]
        lr = rng.uniform(0.02, 0.05)
        inset = rng.uniform(0.0, 0.1)
        legs = [
            Frustum(
                lr,
                lr,
                h - t / 2,
                caps=(True, False),
                at=(
                    sx * (length / 2 - lr - inset * length),
                    (h - t / 2) / 2,
                    sz * (width / 2 - lr - inset * width),
                ),
            )
            for sx in (-1, 1)
            for sz in (-1, 1)
        ]
    else:  # round top on a pedestal with a foot
        rt = (length + width) / 4
        top = [Frustum(rt, rt, t, at=(0, h, 0))]
        pr = rng.uniform(0.03, 0.08)
        foot_r = rng.uniform(0.3, 0.6) * rt
        legs = [
            Frustum(pr, pr, h - t / 2, caps=(False, False), at=(0, (h - t / 2) / 2, 0)),
            Frustum(foot_r, foot_r, 0.03, at=(0, 0.015, 0)),
        ]
    return [top, legs]


_BUILDERS: dict[str, Callable[[np.random.Generator], _Parts]] = {
    "airplane": _airplane,
    "car": _car,
    "chair": _chair,
    "guitar": _guitar,
    "lamp": _lamp,
    "mug": _mug,
    "rocket": _rocket,
    "table": _table,
}


def _allocate(areas: np.ndarray, total: int) -> np.ndarray:
    """Points per part: proportional to area, at least ``_MIN_PART_FRACTION`` of ``total``
    (and 1) each, summing to ``total`` (largest remainders get the leftover points)."""
    w = np.maximum(areas / areas.sum(), _MIN_PART_FRACTION)
    w = w / w.sum() * total
    counts = np.maximum(np.floor(w).astype(np.int64), 1)
    left = total - int(counts.sum())
    order = np.argsort(-(w - np.floor(w)), kind="stable")
    for i in range(abs(left)):
        j = order[i % len(order)]
        counts[j] += 1 if left > 0 else (-1 if counts[j] > 1 else 0)
    return counts


def _random_rotation(rng: np.random.Generator, max_tilt: float) -> np.ndarray:
    """Rotation about y by a uniform angle, then a tilt about a random horizontal axis."""
    spin = axis_rotation(1, rng.uniform(0, 2 * math.pi))
    tilt_axis_angle = rng.uniform(0, 2 * math.pi)
    axis = np.array([math.cos(tilt_axis_angle), 0.0, math.sin(tilt_axis_angle)])
    angle = math.radians(rng.uniform(0, max_tilt))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    tilt = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)  # Rodrigues
    return tilt @ spin


def generate_shape(
    category: str,
    rng: np.random.Generator,
    num_points: int,
    noise: float = 0.0,
    pose: bool = True,
    max_tilt: float = 10.0,
    scale: tuple[float, float] = (0.8, 1.2),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""One shape of ``category`` drawn with ``rng`` (what :class:`SyntheticParts` items are
    made of).

    Args:
        category: a name from :data:`SYNTHETIC_PARTS`.
        rng: the random stream; it fixes proportions, sampling, noise and pose.
        num_points: points to sample, ``P``; every part gets at least 2% of them.
        noise: standard deviation of the Gaussian noise per coordinate, in units of the unit
            ball (default: ``0.0``). The noise is drawn at any level, so the pose does not
            depend on it.
        pose: centre, scale into the unit ball, add noise and pose (default: ``True``);
            ``False`` returns the shape as built, in its own frame (y up), without noise.
        max_tilt: largest tilt of the up axis in degrees (default: ``10.0``).
        scale: range of the isotropic scale (default: ``(0.8, 1.2)``).

    Returns:
        ``pos (P, 3)``, unit outward normals ``(P, 3)`` and global part ids ``(P,)``, points
        in random order.
    """
    parts = _BUILDERS[category](rng)
    part_ids = SYNTHETIC_PARTS[category]
    areas = np.array([sum(s.area for s in part) for part in parts])
    counts = _allocate(areas, num_points)
    pos, nrm, lab = [], [], []
    for pid, part, n in zip(part_ids, parts, counts, strict=True):
        per = rng.multinomial(n, np.array([s.area for s in part]) / sum(s.area for s in part))
        for s, k in zip(part, per, strict=True):
            if k:
                p, q = s.sample(rng, int(k))
                pos.append(p)
                nrm.append(q)
        lab.append(np.full(n, pid, dtype=np.int64))
    pos_a, nrm_a, lab_a = np.concatenate(pos), np.concatenate(nrm), np.concatenate(lab)
    perm = rng.permutation(num_points)
    pos_a, nrm_a, lab_a = pos_a[perm], nrm_a[perm], lab_a[perm]
    if not pose:
        return pos_a, nrm_a, lab_a
    pos_a = pos_a - (pos_a.min(0) + pos_a.max(0)) / 2
    pos_a /= np.linalg.norm(pos_a, axis=1).max()
    pos_a = pos_a + noise * rng.normal(size=pos_a.shape)  # drawn at any noise: same pose
    rot = _random_rotation(rng, max_tilt)
    s = rng.uniform(*scale)
    return (pos_a @ rot.T) * s, nrm_a @ rot.T, lab_a


class SyntheticParts(torch.utils.data.Dataset):
    r"""Procedurally generated part-labelled shapes (see the module docstring).

    Item ``i`` is of category ``categories[i % len(categories)]`` (so the classes are
    balanced) and is generated from its own random stream, seeded by ``(seed, split, i)``: it is
    the same whatever the access order, the number of shapes or the process, and the
    ``"train"``, ``"val"`` and ``"test"`` streams are independent. Items are generated on
    access (a few milliseconds each); ``transform`` is applied after.

    Labels. Category indices and part ids are **global**: a category's index is its position
    in :data:`SYNTHETIC_PARTS` (sorted names) and its parts have the ids listed there, also when
    ``categories`` selects a subset. ``task`` decides what ``y`` is:

    * ``"segmentation"``: ``Data(pos (P, 3), x (P, 3) normals, y (P,) part ids,
      category (1,))``, the ShapeNetPart item form; a model predicts ``y`` with
      :attr:`num_classes` = 23 outputs;
    * ``"classification"``: ``Data(pos, x, y (1,) category)``, the ModelNet item form; a model
      predicts ``y`` with :attr:`num_classes` = 8 outputs.

    Args:
        num_shapes: number of shapes in the split (default: ``1024``).
        num_points: points per shape (default: ``1024``), at least 16.
        split: ``"train"`` (default), ``"val"`` or ``"test"``.
        seed: seed of the whole dataset (default: ``0``).
        noise: standard deviation of the Gaussian noise added to each coordinate, relative to
            the unit ball the shape is scaled into before posing (default: ``0.01``).
        categories: names of the categories to generate (default: ``None``, all of
            :data:`SYNTHETIC_PARTS`).
        task: ``"segmentation"`` (default) or ``"classification"``.
        max_tilt: largest tilt of the up axis, in degrees (default: ``10``).
        scale: range of the random isotropic scale (default: ``(0.8, 1.2)``).
        transform: a callable applied to each item on access (default: ``None``).
    """

    def __init__(
        self,
        num_shapes: int = 1024,
        *,
        num_points: int = 1024,
        split: str = "train",
        seed: int = 0,
        noise: float = 0.01,
        categories: Sequence[str] | None = None,
        task: str = "segmentation",
        max_tilt: float = 10.0,
        scale: tuple[float, float] = (0.8, 1.2),
        transform: Callable[[Data], Data] | None = None,
    ) -> None:
        super().__init__()
        who = "SyntheticParts"
        for name, value, low in (("num_shapes", num_shapes, 1), ("num_points", num_points, 16)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{who}: {name} must be an int >= {low}, got {value!r}")
        if split not in _SPLITS:
            raise ValueError(f"{who}: split must be one of {sorted(_SPLITS)}, got {split!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{who}: seed must be a non-negative int, got {seed!r}")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise ValueError(f"{who}: noise must be a number >= 0, got {noise!r}")
        if task not in ("segmentation", "classification"):
            raise ValueError(
                f"{who}: task must be 'segmentation' or 'classification', got {task!r}"
            )
        if (
            isinstance(max_tilt, bool)
            or not isinstance(max_tilt, (int, float))
            or not (0 <= max_tilt <= 90)
        ):
            raise ValueError(f"{who}: max_tilt must be in [0, 90] degrees, got {max_tilt!r}")
        lo_hi = tuple(scale) if isinstance(scale, (tuple, list)) else ()
        if (
            len(lo_hi) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lo_hi)
            or not 0 < lo_hi[0] <= lo_hi[1] < math.inf
        ):
            raise ValueError(
                f"{who}: scale must be a pair (low, high), 0 < low <= high, got {scale!r}"
            )
        if categories is None:
            cats = list(SYNTHETIC_PARTS)
        else:
            if isinstance(categories, str):
                raise ValueError(f"{who}: categories must be a list of names, got {categories!r}")
            cats = list(categories)
            unknown = [c for c in cats if c not in SYNTHETIC_PARTS]
            if unknown or not cats or len(set(cats)) != len(cats):
                raise ValueError(
                    f"{who}: categories must be distinct names from "
                    f"{list(SYNTHETIC_PARTS)}, got {categories!r}"
                )
        self.num_shapes = num_shapes
        self.num_points = num_points
        self.split = split
        self.seed = seed
        self.noise = float(noise)
        self.task = task
        self.max_tilt = float(max_tilt)
        self.scale = (float(lo_hi[0]), float(lo_hi[1]))
        self.transform = transform
        self._categories = cats
        self._global = [list(SYNTHETIC_PARTS).index(c) for c in cats]

    # ----------------------------------------------------------------------------------------

    @property
    def categories(self) -> list[str]:
        """The generated categories' names, in the order items cycle through them."""
        return list(self._categories)

    @property
    def num_categories(self) -> int:
        """Number of category labels (all of :data:`SYNTHETIC_PARTS`: labels are global)."""
        return len(SYNTHETIC_PARTS)

    @property
    def num_parts(self) -> int:
        """Number of part ids (all of :data:`SYNTHETIC_PARTS`: ids are global)."""
        return sum(len(v) for v in SYNTHETIC_PARTS.values())

    @property
    def num_classes(self) -> int:
        """Outputs a model needs for ``y``: :attr:`num_parts` or :attr:`num_categories`."""
        return self.num_parts if self.task == "segmentation" else self.num_categories

    def labels(self) -> np.ndarray:
        """The global category index of every item, ``(len(self),)`` (no shape generated)."""
        k = len(self._global)
        return np.array([self._global[i % k] for i in range(self.num_shapes)], dtype=np.int64)

    def __len__(self) -> int:
        return self.num_shapes

    def rng(self, idx: int) -> np.random.Generator:
        """The random stream item ``idx`` is generated from."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, _SPLITS[self.split], idx]))

    def __getitem__(self, idx: int) -> Data:
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise TypeError(f"SyntheticParts: index must be an int, got {type(idx).__name__}")
        if not -len(self) <= idx < len(self):
            raise IndexError(f"SyntheticParts: index {idx} out of range for {len(self)} items")
        idx = int(idx) % len(self)
        k = len(self._categories)
        name = self._categories[idx % k]
        pos, nrm, part = generate_shape(
            name,
            self.rng(idx),
            self.num_points,
            noise=self.noise,
            max_tilt=self.max_tilt,
            scale=self.scale,
        )
        cat = torch.tensor([self._global[idx % k]])
        data = Data(
            pos=torch.from_numpy(pos.astype(np.float32)),
            x=torch.from_numpy(nrm.astype(np.float32)),
        )
        if self.task == "segmentation":
            data.y = torch.from_numpy(part)
            data.category = cat
        else:
            data.y = cat
        return self.transform(data) if self.transform is not None else data

    def __repr__(self) -> str:
        return (
            f"SyntheticParts({self.num_shapes}, split={self.split!r}, task={self.task!r}, "
            f"num_points={self.num_points}, categories={len(self._categories)})"
        )

r"""Point-cloud transforms on PyG :class:`~torch_geometric.data.Data`: normalisation, the usual
training augmentations, fixed-size resampling, and :class:`Compose` to chain them.

**What a transform touches.** ``pos (P, D)`` always; ``x`` (per-point features, ``P`` rows) and
a per-point ``y`` wherever points are dropped, resampled or shuffled, so the three stay aligned.
``y`` is *per point* when it has one entry per point and ``P > 1``; for a one-point cloud, when
the ``Data`` also has ``category`` (the segmentation convention of :mod:`pcattn.data`:
per-point ``y`` plus a ``category (1,)``; classification items carry ``y (1,)`` only). A
per-shape ``y``, ``category`` and any other attribute are left alone.

**Normals.** :class:`RandomRotate` and anisotropic :class:`RandomScale` change directions. With
``normals=True`` (the default, matching every point-cloud reader of :mod:`pcattn.data`, whose
``x`` is unit normals) ``x`` must have ``D`` columns and is transformed as a normal: rotated with
``pos``, and under a scale :math:`S` mapped to :math:`S^{-1} n / \|S^{-1} n\|`. Pass
``normals=False`` when ``x`` holds other features; it is then left unchanged. Normalising,
isotropic scaling and jitter never change ``x``.

**Randomness.** Every random transform takes ``seed: int | None`` and owns a
:class:`torch.Generator`: the same seed gives the same sequence of outputs. ``seed=None`` draws
the seed from torch's global generator when the transform is built (so ``torch.manual_seed``
before building makes a run reproducible). :class:`Compose` with a seed reseeds its members
deterministically, one derived seed per position. Inside a
:class:`~torch.utils.data.DataLoader` worker each transform reseeds itself once from its own
seed and the worker's seed (which the loader draws afresh every epoch), so workers do not
repeat each other's augmentations and epochs do not repeat.

A transform returns a shallow copy of its input with new tensors; it never modifies the input's
tensors in place.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from .. import graphs
from ..checks import check_positions

__all__ = [
    "Transform",
    "RandomTransform",
    "NormalizeSphere",
    "RandomScale",
    "Jitter",
    "RandomRotate",
    "PointDropout",
    "Resample",
    "Shuffle",
    "Compose",
    "point_keys",
]

_MAX_SEED = 2**63 - 1


def _derive_seed(*values: int) -> int:
    """A well-mixed seed in ``[0, 2**63)`` from non-negative integers."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & _MAX_SEED


def _check_seed(seed: object, who: str) -> int:
    if seed is None:
        return int(torch.randint(0, _MAX_SEED, (1,)))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{who}: seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


def _check_number(value: object, name: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{who}: {name} must be a finite number, got {value!r}")
    return float(value)


def _check_flag(value: object, name: str, who: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{who}: {name} must be True or False, got {value!r}")
    return value


def _num_points(data: Data, who: str) -> int:
    """Validate ``data.pos`` (finite, ``(P, D)``) and ``data.x`` (``P`` rows); return ``P``."""
    if not isinstance(data, Data):
        raise ValueError(f"{who}: expected a torch_geometric Data, got {type(data).__name__}")
    pos = data.get("pos")
    if pos is None:
        raise ValueError(f"{who}: data has no pos")
    try:
        check_positions(pos, "data.pos")
    except ValueError as e:
        raise ValueError(f"{who}: {e}") from None
    n = pos.size(0)
    x = data.get("x")
    if isinstance(x, Tensor) and (x.dim() == 0 or x.size(0) != n):
        raise ValueError(
            f"{who}: data.x has shape {tuple(x.shape)} but data.pos has {n} rows; x must hold "
            "one row per point"
        )
    y = data.get("y")
    if "category" in data and isinstance(y, Tensor) and (y.dim() == 0 or y.size(0) != n):
        raise ValueError(
            f"{who}: data.y has shape {tuple(y.shape)} but data.pos has {n} rows; with a "
            "category, y holds one part label per point"
        )
    return n


def _need_points(n: int, who: str) -> None:
    if n == 0:
        raise ValueError(f"{who}: the cloud has no points")


def point_keys(data: Data) -> list[str]:
    """The attributes of ``data`` indexed together with ``pos`` (see the module docstring)."""
    n = data.pos.size(0)
    keys = ["pos"]
    if isinstance(data.get("x"), Tensor):
        keys.append("x")
    y = data.get("y")
    if isinstance(y, Tensor) and y.dim() > 0 and y.size(0) == n:
        if n > 1 or "category" in data:
            keys.append("y")
    return keys


def _index_points(data: Data, idx: Tensor, who: str) -> Data:
    """Take the points ``idx`` of every per-point attribute (``data`` is already a copy)."""
    if data.get("edge_index") is not None:
        raise ValueError(
            f"{who}: data has edge_index, which would no longer match the points; apply point "
            "transforms before building a graph"
        )
    for key in point_keys(data):
        data[key] = data[key][idx.to(data[key].device)]
    if "num_nodes" in data.keys():
        data.num_nodes = idx.numel()
    return data


def _normals(data: Data, normals: bool, who: str) -> Tensor | None:
    """``data.x`` when it is to be transformed as normals, else ``None``."""
    x = data.get("x")
    if not normals or not isinstance(x, Tensor):
        return None
    d = data.pos.size(1)
    if x.dim() != 2 or x.size(1) != d or not x.is_floating_point():
        raise ValueError(
            f"{who}: normals=True needs data.x to be unit normals of shape (P, {d}), got "
            f"{tuple(x.shape)} {x.dtype}; pass normals=False when x holds other features"
        )
    return x


class Transform:
    r"""Base class: ``transform(data)`` returns a transformed shallow copy of ``data``.

    Subclasses implement :meth:`forward` on the copy (replacing tensors, never writing into
    them).
    """

    def __call__(self, data: Data) -> Data:
        return self.forward(copy.copy(data))

    def forward(self, data: Data) -> Data:
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (a no-op for deterministic transforms)."""

    def _args(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._args()})"


class RandomTransform(Transform):
    r"""Base class of the random transforms: owns a seeded :class:`torch.Generator`.

    Args:
        seed: seed of the generator (default: ``None``, drawn from torch's global generator).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = _check_seed(seed, type(self).__name__)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._worker: tuple[int, int] | None = None

    def reseed(self, seed: int) -> None:
        self.seed = _check_seed(seed, type(self).__name__)
        self.generator.manual_seed(self.seed)
        self._worker = None

    def __call__(self, data: Data) -> Data:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != (info.id, info.seed):
            # a DataLoader worker holds a copy of this transform: give it its own stream
            self._worker = (info.id, info.seed)
            self.generator.manual_seed(_derive_seed(self.seed, info.seed))
        return super().__call__(data)

    def _rand(self, *size: int) -> Tensor:
        return torch.rand(*size, generator=self.generator, dtype=torch.float64)


class NormalizeSphere(Transform):
    r"""Centre the cloud at its centroid and scale it into the unit ball.

    .. math::
        p_i \leftarrow \frac{p_i - \bar p}{\max_k \|p_k - \bar p\|},
        \qquad \bar p = \frac{1}{P}\sum_k p_k

    A cloud whose points all coincide is only centred. Normals in ``x`` are unchanged.
    """

    def forward(self, data: Data) -> Data:
        _need_points(_num_points(data, "NormalizeSphere"), "NormalizeSphere")
        pos = data.pos - data.pos.mean(dim=0, keepdim=True)  # (P, D)
        radius = pos.norm(dim=1).max()
        data.pos = pos / radius if radius > 0 else pos
        return data


class RandomScale(RandomTransform):
    r"""Scale by a random factor :math:`s \sim U(\text{low}, \text{high})`, one per axis when
    ``anisotropic`` (:math:`p_{id} \leftarrow s_d\, p_{id}`).

    Args:
        low: smallest factor, ``> 0`` (default: ``0.8``, as in PointNet++).
        high: largest factor, ``>= low`` (default: ``1.25``).
        anisotropic: draw one factor per axis (default: ``True``).
        normals: ``x`` holds unit normals, mapped to :math:`S^{-1}n / \|S^{-1}n\|` under an
            anisotropic scale (default: ``True``; see the module docstring).
        seed: generator seed (default: ``None``).
    """

    def __init__(
        self,
        low: float = 0.8,
        high: float = 1.25,
        anisotropic: bool = True,
        *,
        normals: bool = True,
        seed: int | None = None,
    ) -> None:
        who = "RandomScale"
        self.low = _check_number(low, "low", who)
        self.high = _check_number(high, "high", who)
        if self.low <= 0:
            raise ValueError(f"{who}: low must be > 0, got {low!r}")
        if self.high < self.low:
            raise ValueError(f"{who}: high must be >= low, got low={low!r}, high={high!r}")
        self.anisotropic = _check_flag(anisotropic, "anisotropic", who)
        self.normals = _check_flag(normals, "normals", who)
        super().__init__(seed)

    def forward(self, data: Data) -> Data:
        _num_points(data, "RandomScale")
        d = data.pos.size(1)
        u = self._rand(d if self.anisotropic else 1)  # (D,) or (1,)
        s = (self.low + (self.high - self.low) * u).expand(d)  # (D,)
        data.pos = data.pos * s.to(data.pos)
        n = _normals(data, self.normals and self.anisotropic, "RandomScale")
        if n is not None:
            m = n / s.to(n)  # (P, D)
            data.x = m / m.norm(dim=1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
        return data

    def _args(self) -> str:
        return (
            f"low={self.low}, high={self.high}, anisotropic={self.anisotropic}, "
            f"normals={self.normals}, seed={self.seed}"
        )


class Jitter(RandomTransform):
    r"""Add clipped Gaussian noise to every coordinate:
    :math:`p_{id} \leftarrow p_{id} + \operatorname{clip}(\sigma\,\epsilon_{id}, -c, c)`,
    :math:`\epsilon \sim \mathcal N(0, 1)`. Normals are unchanged.

    Args:
        sigma: noise standard deviation, ``>= 0`` (default: ``0.01``).
        clip: bound ``c`` on each coordinate's displacement, ``> 0`` (default: ``0.05``).
        seed: generator seed (default: ``None``).
    """

    def __init__(self, sigma: float = 0.01, clip: float = 0.05, *, seed: int | None = None) -> None:
        who = "Jitter"
        self.sigma = _check_number(sigma, "sigma", who)
        self.clip = _check_number(clip, "clip", who)
        if self.sigma < 0:
            raise ValueError(f"{who}: sigma must be >= 0, got {sigma!r}")
        if self.clip <= 0:
            raise ValueError(f"{who}: clip must be > 0, got {clip!r}")
        super().__init__(seed)

    def forward(self, data: Data) -> Data:
        _num_points(data, "Jitter")
        eps = torch.randn(data.pos.shape, generator=self.generator, dtype=torch.float64)
        noise = (self.sigma * eps).clamp(-self.clip, self.clip)  # (P, D)
        data.pos = data.pos + noise.to(data.pos)
        return data

    def _args(self) -> str:
        return f"sigma={self.sigma}, clip={self.clip}, seed={self.seed}"


def _axis_rotation(axis: int, angle: float) -> Tensor:
    """Right-handed rotation by ``angle`` about coordinate axis ``axis``, ``(3, 3)`` float64."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]  # the plane rotated: y->z, z->x, x->y
    r = torch.eye(3, dtype=torch.float64)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _quaternion_rotation(q: Tensor) -> Tensor:
    """Rotation matrix ``(3, 3)`` of the unit quaternion ``q = (w, x, y, z)``."""
    w, x, y, z = (float(v) for v in q)
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )


class RandomRotate(RandomTransform):
    r"""Rotate by a random rotation :math:`R`: :math:`p_i \leftarrow R p_i` (and normals with it).

    ``axis="x" | "y" | "z"``: about that coordinate axis by an angle uniform in
    :math:`[0, 2\pi)`. ``"y"`` is the up axis of ShapeNetPart, ModelNet40
    ``normal_resampled`` and :class:`~pcattn.data.synthetic.SyntheticParts`; ``"z"`` that of
    the original ModelNet OFF meshes. ``axis="so3"``: a rotation uniform on SO(3) (from a
    normalised Gaussian quaternion).

    Args:
        axis: ``"x"``, ``"y"``, ``"z"`` or ``"so3"`` (default: ``"y"``).
        normals: ``x`` holds unit normals, rotated with ``pos`` (default: ``True``; see the
            module docstring).
        seed: generator seed (default: ``None``).
    """

    def __init__(self, axis: str = "y", *, normals: bool = True, seed: int | None = None) -> None:
        if axis not in ("x", "y", "z", "so3"):
            raise ValueError(f"RandomRotate: axis must be 'x', 'y', 'z' or 'so3', got {axis!r}")
        self.axis = axis
        self.normals = _check_flag(normals, "normals", "RandomRotate")
        super().__init__(seed)

    def matrix(self) -> Tensor:
        """Draw the next rotation matrix ``(3, 3)`` (float64) from the generator."""
        if self.axis == "so3":
            q = torch.randn(4, generator=self.generator, dtype=torch.float64)
            return _quaternion_rotation(q / q.norm())
        angle = 2 * math.pi * float(self._rand(1))
        return _axis_rotation("xyz".index(self.axis), angle)

    def forward(self, data: Data) -> Data:
        _num_points(data, "RandomRotate")
        if data.pos.size(1) != 3:
            raise ValueError(
                f"RandomRotate: data.pos must have 3 columns, got {tuple(data.pos.shape)}"
            )
        n = _normals(data, self.normals, "RandomRotate")
        r = self.matrix()
        data.pos = data.pos @ r.t().to(data.pos)  # rows: (R p)^T = p^T R^T
        if n is not None:
            data.x = n @ r.t().to(n)
        return data

    def _args(self) -> str:
        return f"axis={self.axis!r}, normals={self.normals}, seed={self.seed}"


class PointDropout(RandomTransform):
    r"""Random point dropout, as in PointNet++: draw a ratio :math:`r \sim U(0, \text{max})`,
    then drop each point with probability :math:`r`.

    ``mode="replace"`` (PointNet++, keeps ``P`` fixed so clouds still stack): a dropped point
    becomes a copy of the first point (its ``pos``, ``x`` and per-point ``y``).
    ``mode="remove"``: dropped points are deleted; at least one point is always kept.

    Args:
        max_ratio: largest dropout ratio, in ``[0, 1)`` (default: ``0.875``).
        mode: ``"replace"`` (default) or ``"remove"``.
        seed: generator seed (default: ``None``).
    """

    def __init__(
        self, max_ratio: float = 0.875, mode: str = "replace", *, seed: int | None = None
    ) -> None:
        self.max_ratio = _check_number(max_ratio, "max_ratio", "PointDropout")
        if not 0 <= self.max_ratio < 1:
            raise ValueError(f"PointDropout: max_ratio must be in [0, 1), got {max_ratio!r}")
        if mode not in ("replace", "remove"):
            raise ValueError(f"PointDropout: mode must be 'replace' or 'remove', got {mode!r}")
        self.mode = mode
        super().__init__(seed)

    def forward(self, data: Data) -> Data:
        n = _num_points(data, "PointDropout")
        _need_points(n, "PointDropout")
        ratio = self.max_ratio * float(self._rand(1))
        drop = self._rand(n) < ratio  # (P,)
        if self.mode == "replace":
            idx = torch.where(drop, 0, torch.arange(n))
        else:
            idx = torch.nonzero(~drop).view(-1)
            if idx.numel() == 0:
                idx = torch.zeros(1, dtype=torch.long)
        return _index_points(data, idx, "PointDropout")

    def _args(self) -> str:
        return f"max_ratio={self.max_ratio}, mode={self.mode!r}, seed={self.seed}"


class Resample(RandomTransform):
    r"""Resample the cloud to exactly ``num_points`` points.

    A cloud with at least ``num_points`` points gives a subset without repetition:
    ``method="random"`` a uniformly random one (in random order), ``method="fps"`` farthest
    point sampling (:func:`pcattn.graphs.fps` from a random start drawn from this transform's
    generator, in sampling order). A smaller cloud keeps every point once (``"random"``: in
    random order; ``"fps"``: in FPS order) followed by ``num_points - P`` points drawn
    uniformly with replacement.

    Args:
        num_points: output size, ``>= 1``.
        method: ``"random"`` (default) or ``"fps"``.
        seed: generator seed (default: ``None``).
    """

    def __init__(self, num_points: int, method: str = "random", *, seed: int | None = None) -> None:
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f"Resample: num_points must be an int >= 1, got {num_points!r}")
        if method not in ("random", "fps"):
            raise ValueError(f"Resample: method must be 'random' or 'fps', got {method!r}")
        self.num_points = num_points
        self.method = method
        super().__init__(seed)

    def indices(self, pos: Tensor) -> Tensor:
        """The indices into ``pos (P, D)`` this transform takes next, ``(num_points,)``."""
        n, m = pos.size(0), self.num_points
        if self.method == "fps":
            first = graphs.fps(pos, num=min(n, m), generator=self.generator)
        else:
            first = torch.randperm(n, generator=self.generator)[:m]
        if n >= m:
            return first
        extra = torch.randint(n, (m - n,), generator=self.generator)
        return torch.cat([first, extra])

    def forward(self, data: Data) -> Data:
        n = _num_points(data, "Resample")
        _need_points(n, "Resample")
        return _index_points(data, self.indices(data.pos), "Resample")

    def _args(self) -> str:
        return f"num_points={self.num_points}, method={self.method!r}, seed={self.seed}"


class Shuffle(RandomTransform):
    r"""Put the points in a random order (``pos``, ``x`` and per-point ``y`` together).

    Args:
        seed: generator seed (default: ``None``).
    """

    def forward(self, data: Data) -> Data:
        n = _num_points(data, "Shuffle")
        return _index_points(data, torch.randperm(n, generator=self.generator), "Shuffle")

    def _args(self) -> str:
        return f"seed={self.seed}"


class Compose(Transform):
    r"""Apply ``transforms`` in order.

    Args:
        transforms: callables ``Data -> Data`` (transforms of this module or any other).
        seed: when given, reseed each member that has ``reseed`` with a seed derived from
            ``(seed, position)``, so one seed fixes the whole pipeline (default: ``None``:
            members keep their own seeds).
    """

    def __init__(
        self, transforms: Sequence[Callable[[Data], Data]], *, seed: int | None = None
    ) -> None:
        transforms = list(transforms)
        for i, t in enumerate(transforms):
            if not callable(t):
                raise ValueError(f"Compose: transforms[{i}] is not callable: {type(t).__name__}")
        self.transforms = transforms
        self.seed = None
        if seed is not None:
            self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = _check_seed(seed, "Compose")
        for i, t in enumerate(self.transforms):
            if hasattr(t, "reseed"):
                t.reseed(_derive_seed(self.seed, i))

    def __call__(self, data: Data) -> Data:
        for t in self.transforms:
            data = t(data)
        return data

    def __repr__(self) -> str:
        inner = "".join(f"\n  {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n], seed={self.seed})"

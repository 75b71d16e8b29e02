r"""Primitive surfaces for :mod:`pcattn.data.synthetic`: boxes, open or capped cylinders and
cone frusta, ellipsoids and partial tori, each sampling ``(points (n, 3), unit normals (n, 3))``
area-uniformly in its own frame, then placed by a rotation and an offset."""

from __future__ import annotations

import math

import numpy as np


def axis_rotation(axis: int, angle: float) -> np.ndarray:
    """Right-handed rotation ``(3, 3)`` about coordinate axis ``axis``."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


Y_TO_X = axis_rotation(2, -math.pi / 2)  # maps the y axis onto x (for shapes built along y)
Y_TO_Z = axis_rotation(0, math.pi / 2)  # maps the y axis onto z


class Surface:
    """A primitive surface placed by a rotation ``rot`` then a translation ``at``."""

    area: float

    def __init__(self, at=(0.0, 0.0, 0.0), rot: np.ndarray | None = None) -> None:
        self.at = np.asarray(at, dtype=np.float64)
        self.rot = np.eye(3) if rot is None else rot

    def local(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        p, nrm = self.local(rng, n)
        return p @ self.rot.T + self.at, nrm @ self.rot.T


class Box(Surface):
    """The surface of an axis-aligned box of size ``(sx, sy, sz)`` centred at the origin."""

    def __init__(self, size, at=(0.0, 0.0, 0.0), rot=None) -> None:
        super().__init__(at, rot)
        self.size = np.asarray(size, dtype=np.float64)
        sx, sy, sz = self.size
        self.face_area = np.array([sy * sz, sx * sz, sx * sy])  # face normal to x, y, z
        self.area = 2 * float(self.face_area.sum())

    def local(self, rng, n):
        axis = rng.choice(3, size=n, p=self.face_area / self.face_area.sum())  # (n,)
        sign = rng.choice([-1.0, 1.0], size=n)
        p = (rng.random((n, 3)) - 0.5) * self.size  # (n, 3)
        rows = np.arange(n)
        p[rows, axis] = sign * self.size[axis] / 2
        nrm = np.zeros((n, 3))
        nrm[rows, axis] = sign
        return p, nrm


class Frustum(Surface):
    """A cone frustum along y from radius ``r0`` at ``y = -h/2`` to ``r1`` at ``y = h/2``
    (``r0 == r1``: a cylinder), with optional bottom / top caps."""

    def __init__(self, r0, r1, h, caps=(True, True), at=(0.0, 0.0, 0.0), rot=None) -> None:
        super().__init__(at, rot)
        self.r0, self.r1, self.h = float(r0), float(r1), float(h)
        self.parts = np.array(
            [
                math.pi * (r0 + r1) * math.hypot(h, r1 - r0),  # lateral surface
                math.pi * r0 * r0 if caps[0] else 0.0,
                math.pi * r1 * r1 if caps[1] else 0.0,
            ]
        )
        self.area = float(self.parts.sum())

    def local(self, rng, n):
        r0, r1, h = self.r0, self.r1, self.h
        which = rng.choice(3, size=n, p=self.parts / self.area)
        theta = rng.random(n) * 2 * math.pi
        u = rng.random(n)
        # lateral: height fraction t with density proportional to the radius r(t)
        if abs(r1 - r0) < 1e-12:
            t = u
        else:
            t = (np.sqrt(r0 * r0 + u * (r1 * r1 - r0 * r0)) - r0) / (r1 - r0)
        rad = r0 + (r1 - r0) * t
        y = -h / 2 + h * t
        nrm = np.stack([h * np.cos(theta), np.full(n, r0 - r1), h * np.sin(theta)], 1)
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        # caps: radius sqrt-distributed for uniform area
        cap = which > 0
        cap_r = np.where(which == 1, r0, r1) * np.sqrt(rng.random(n))
        rad = np.where(cap, cap_r, rad)
        y = np.where(which == 1, -h / 2, np.where(which == 2, h / 2, y))
        cap_n = np.zeros((n, 3))
        cap_n[:, 1] = np.where(which == 1, -1.0, 1.0)
        nrm = np.where(cap[:, None], cap_n, nrm)
        p = np.stack([rad * np.cos(theta), y, rad * np.sin(theta)], 1)
        return p, nrm


class Ellipsoid(Surface):
    """An ellipsoid with semi-axes ``(a, b, c)`` along x, y, z, centred at the origin."""

    def __init__(self, radii, at=(0.0, 0.0, 0.0), rot=None) -> None:
        super().__init__(at, rot)
        self.radii = np.asarray(radii, dtype=np.float64)
        a, b, c = self.radii
        p = 1.6075  # Knud Thomsen's approximation of the surface area
        self.area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)

    def local(self, rng, n):
        a, b, c = self.radii
        out = np.empty((0, 3))
        scale = np.array([b * c, a * c, a * b])
        while len(out) < n:  # rejection: the area element is |(bc u_x, ac u_y, ab u_z)|
            u = rng.normal(size=(2 * n + 8, 3))
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            w = np.linalg.norm(u * scale, axis=1) / scale.max()
            out = np.concatenate([out, u[rng.random(len(u)) < w]])
        u = out[:n]
        p = u * self.radii
        nrm = u / self.radii
        return p, nrm / np.linalg.norm(nrm, axis=1, keepdims=True)


class Torus(Surface):
    """Part of a torus around the z axis: ring radius ``big``, tube radius ``small``, ring
    angles ``[a0, a1]`` (radians, from +x towards +y)."""

    def __init__(self, big, small, a0, a1, at=(0.0, 0.0, 0.0), rot=None) -> None:
        super().__init__(at, rot)
        self.big, self.small, self.a0, self.a1 = float(big), float(small), float(a0), float(a1)
        self.area = (a1 - a0) * 2 * math.pi * big * small

    def local(self, rng, n):
        big, small = self.big, self.small
        phis = np.empty(0)
        while len(phis) < n:  # rejection: the area element is proportional to big + small cos
            phi = rng.random(2 * n + 8) * 2 * math.pi
            keep = rng.random(len(phi)) * (big + small) < big + small * np.cos(phi)
            phis = np.concatenate([phis, phi[keep]])
        phi = phis[:n]
        theta = self.a0 + (self.a1 - self.a0) * rng.random(n)
        nrm = np.stack([np.cos(phi) * np.cos(theta), np.cos(phi) * np.sin(theta), np.sin(phi)], 1)
        p = nrm * small + np.stack([big * np.cos(theta), big * np.sin(theta), np.zeros(n)], 1)
        return p, nrm

r"""Object File Format (OFF) meshes, and sampling points on a mesh surface.

OFF is the text mesh format of the Princeton Shape Benchmark, in which the original ModelNet
meshes are distributed (``ModelNet40/<class>/{train,test}/<class>_XXXX.off``). A file is

.. code-block:: text

    OFF
    <vertices> <faces> <edges>
    x y z                      # one line per vertex
    n i_1 ... i_n [r g b [a]]  # one line per face: n 0-based vertex indices, optional colour

:func:`parse_off` reads what real ModelNet files contain besides that: a header fused with the
counts (``OFF3514 3546 0``), CRLF line ends, ``#`` comments, blank lines, polygons with more
than three vertices (fan-triangulated) and colour values after a face's indices. Anything else
that is wrong (a truncated file, a count that does not match or that the file is too small
to hold, a non-numeric or non-finite value, a face index out of range) raises
:class:`~pcattn.data.base.DatasetError` naming the file and line.

:func:`sample_surface` draws points uniformly on the surface (faces chosen with probability
proportional to their area, then a uniform point inside the face), each with its face's unit
normal: the way point clouds are made from ModelNet meshes.
"""

from __future__ import annotations

import numpy as np

from .base import DatasetError

__all__ = ["parse_off", "sample_surface"]

_F32_MAX = float(np.finfo(np.float32).max)


def _show(tok: bytes) -> str:
    """A token as it appears in an error message, e.g. ``'1.2x'``."""
    text = tok.decode("latin-1")
    return repr(text if len(text) <= 30 else text[:30] + "...")


def _content_lines(lines: list[bytes]):
    """``(line number, tokens)`` of every line with something left after removing comments."""
    for lineno, raw in enumerate(lines, 1):
        if b"#" in raw:
            raw = raw[: raw.index(b"#")]
        toks = raw.split()
        if toks:
            yield lineno, toks


def _number(tok: bytes, conv, name: str, lineno: int, what: str):
    """``conv(tok)`` or the error naming file, line and what was expected."""
    try:
        if b"_" not in tok:  # Python accepts 1_000; no OFF writer does
            return conv(tok)
    except ValueError:
        pass
    kind = "an integer" if conv is int else "a number"
    raise DatasetError(f"{name}:{lineno}: {what}: expected {kind}, got {_show(tok)}")


def parse_off(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    r"""Parse an OFF mesh.

    Polygons with :math:`n > 3` vertices :math:`(v_0, \dots, v_{n-1})` are split into the fan
    :math:`(v_0, v_k, v_{k+1})`, :math:`k = 1, \dots, n-2`, in order, so a file of triangles
    gives its faces unchanged.

    Args:
        data: the file's bytes.
        name: the file's name for error messages (``"<name>:<line>: ..."``).

    Returns:
        ``(vertices, faces)``: ``(V, 3)`` float64 coordinates and ``(F, 3)`` int64 vertex
        indices of the triangles.

    Raises:
        DatasetError: for a malformed or truncated file, naming the file and line.
    """
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
        data = data[3:]
    fast = b"_" not in data  # else every number goes through _number, which rejects 1_000
    lines = data.split(b"\n")
    eof = len(lines)  # the line a truncated file ends on
    it = _content_lines(lines)

    # header: 'OFF', then the counts on the same line (fused or not) or on the next
    first = next(it, None)
    if first is None:
        raise DatasetError(f"{name}:{eof}: empty file, expected an 'OFF' header")
    lineno, toks = first
    if not toks[0].startswith(b"OFF"):
        raise DatasetError(f"{name}:{lineno}: expected an 'OFF' header, got {_show(toks[0])}")
    counts = ([toks[0][3:]] if len(toks[0]) > 3 else []) + toks[1:]
    if not counts:
        nxt = next(it, None)
        if nxt is None:
            raise DatasetError(f"{name}:{eof}: file ends before the counts line")
        lineno, counts = nxt
    if len(counts) not in (2, 3):
        raise DatasetError(
            f"{name}:{lineno}: expected counts 'vertices faces edges', got {len(counts)} values"
        )
    nv, nf, *_ = (_number(t, int, name, lineno, "counts") for t in counts)
    if nv < 0 or nf < 0:
        raise DatasetError(f"{name}:{lineno}: negative count in 'vertices faces edges'")
    # every vertex and face takes a line of at least two bytes (a value and a line break, which
    # the last line may omit): refuse counts the file cannot hold before looping over them
    rest = len(data) - sum(len(line) + 1 for line in lines[:lineno])
    if 2 * (nv + nf) - 1 > rest:
        raise DatasetError(
            f"{name}:{lineno}: counts claim {nv} vertices and {nf} faces, more than the file can "
            f"hold ({max(rest, 0)} bytes follow the counts line, room for at most "
            f"{(max(rest, 0) + 1) // 2} lines)"
        )

    # vertices: one 'x y z' line each
    coords: list[float] = []
    vert_lines: list[int] = []
    for k in range(nv):
        nxt = next(it, None)
        if nxt is None:
            raise DatasetError(f"{name}:{eof}: file ends after {k} of {nv} vertices")
        lineno, toks = nxt
        if len(toks) != 3:
            raise DatasetError(
                f"{name}:{lineno}: vertex {k} has {len(toks)} values, expected 3 (x y z)"
            )
        try:
            xyz = list(map(float, toks)) if fast else None
        except ValueError:
            xyz = None
        if xyz is None:  # find the bad value for the message
            xyz = [_number(t, float, name, lineno, f"vertex {k}") for t in toks]
        coords.extend(xyz)
        vert_lines.append(lineno)
    vertices = np.array(coords, dtype=np.float64).reshape(nv, 3)
    bad = np.flatnonzero(~(np.abs(vertices) <= _F32_MAX).all(axis=1))  # NaN fails too
    if bad.size:
        k = int(bad[0])
        raise DatasetError(
            f"{name}:{vert_lines[k]}: vertex {k} has a non-finite or out-of-range coordinate"
        )

    # faces: 'n i_1 ... i_n' and optional colour values, fan-triangulated
    tris: list[int] = []
    for k in range(nf):
        nxt = next(it, None)
        if nxt is None:
            raise DatasetError(f"{name}:{eof}: file ends after {k} of {nf} faces")
        lineno, toks = nxt
        try:
            n = int(toks[0]) if fast else _number(toks[0], int, name, lineno, f"face {k}")
        except ValueError:
            n = _number(toks[0], int, name, lineno, f"face {k}")
        if n < 3:
            raise DatasetError(f"{name}:{lineno}: face {k} has {n} vertices, need at least 3")
        if len(toks) < n + 1:
            raise DatasetError(
                f"{name}:{lineno}: face {k} declares {n} vertices but lists {len(toks) - 1}"
            )
        try:
            idx = list(map(int, toks[1 : n + 1])) if fast else None
        except ValueError:
            idx = None
        if idx is None:  # find the bad value for the message
            idx = [_number(t, int, name, lineno, f"face {k}") for t in toks[1 : n + 1]]
        for t in toks[n + 1 :]:  # colour
            _number(t, float, name, lineno, f"face {k} colour")
        lo, hi = min(idx), max(idx)
        if lo < 0 or hi >= nv:
            raise DatasetError(
                f"{name}:{lineno}: face {k} has vertex index {lo if lo < 0 else hi}, "
                f"out of range for {nv} vertices"
            )
        if n == 3:
            tris.extend(idx)
        else:
            for j in range(1, n - 1):
                tris.extend((idx[0], idx[j], idx[j + 1]))

    extra = next(it, None)
    if extra is not None:
        raise DatasetError(
            f"{name}:{extra[0]}: unexpected data after the {nv} vertices and {nf} faces "
            "of the header"
        )
    faces = np.array(tris, dtype=np.int64).reshape(-1, 3)
    return vertices, faces


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, num_points: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""Sample points uniformly on a triangle mesh's surface, with face normals.

    Face :math:`t` is drawn with probability :math:`A_t / \sum_s A_s` (area-weighted, so
    zero-area faces are never drawn), then a uniform point inside it:
    :math:`p = (1 - \sqrt{r_1})\, a + \sqrt{r_1}(1 - r_2)\, b + \sqrt{r_1} r_2\, c` with
    :math:`r_1, r_2 \sim U[0, 1)`. Its normal is the face's unit normal
    :math:`(b - a) \times (c - a) / \lVert (b - a) \times (c - a) \rVert`, oriented by the
    face's vertex order.

    Args:
        vertices: ``(V, 3)`` coordinates.
        faces: ``(F, 3)`` vertex indices of the triangles.
        num_points: how many points to draw.
        seed: seed of the :class:`numpy.random.Generator`; the same seed gives the same points.

    Returns:
        ``(points, normals)``, both ``(num_points, 3)`` float32.

    Raises:
        ValueError: for malformed arrays or a mesh with zero surface area.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"sample_surface: vertices must have shape (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(
            f"sample_surface: faces must be integers of shape (F, 3), got {f.dtype} {f.shape}"
        )
    if isinstance(num_points, bool) or not isinstance(num_points, int | np.integer):
        raise ValueError(f"sample_surface: num_points must be an integer, got {num_points!r}")
    if num_points < 1:
        raise ValueError(f"sample_surface: num_points must be >= 1, got {num_points}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"sample_surface: face indices must lie in [0, {len(v)})")
    if not (np.abs(v) <= _F32_MAX).all():
        raise ValueError("sample_surface: vertices must be finite and within float32 range")

    if len(f) == 0:
        raise ValueError("sample_surface: the mesh has no faces")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]  # (F, 3) each
    cross = np.cross(b - a, c - a)  # (F, 3), length = twice the area
    scale = np.abs(cross).max(axis=1, initial=0.0)  # (F,) scaled so tiny faces keep a normal
    good = np.flatnonzero(scale > 0)
    if good.size == 0:
        raise ValueError(
            f"sample_surface: the mesh has zero surface area (all {len(f)} faces are degenerate)"
        )
    unit = cross[good] / scale[good, None]  # (G, 3), largest component +-1
    length = np.linalg.norm(unit, axis=1)  # (G,) in [1, sqrt 3]
    unit /= length[:, None]
    cdf = np.cumsum(scale[good] * length)  # (G,) twice the cumulative area

    rng = np.random.default_rng(seed)
    u = rng.random(num_points) * cdf[-1]
    pick = np.minimum(np.searchsorted(cdf, u, side="right"), good.size - 1)  # (P,)
    r1, r2 = rng.random((2, num_points))
    s = np.sqrt(r1)
    face = good[pick]
    points = (
        (1.0 - s)[:, None] * a[face]
        + (s * (1.0 - r2))[:, None] * b[face]
        + (s * r2)[:, None] * c[face]
    )  # (P, 3)
    return points.astype(np.float32), unit[pick].astype(np.float32)

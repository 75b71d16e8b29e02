"""pcattn.data.off: OFF parsing on the real ModelNet meshes and on each quirk, exact error
messages, surface sampling against an independent point-to-triangle distance, and fuzzing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcattn.data.base import DatasetError
from pcattn.data.off import parse_off, sample_surface

# --------------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------------


def _read_plain_off(path):
    """A plain ModelNet file (``OFF`` line, counts line, one vertex / triangle a line) read
    with numpy: the reference for the real samples."""
    lines = path.read_text().split("\n")
    assert lines[0].strip() == "OFF"
    nv, nf, _ = (int(t) for t in lines[1].split())
    verts = np.loadtxt(lines[2 : 2 + nv], dtype=np.float64, ndmin=2)
    faces = np.loadtxt(lines[2 + nv : 2 + nv + nf], dtype=np.int64, ndmin=2)
    assert (faces[:, 0] == 3).all()
    return nv, nf, verts, faces[:, 1:]


def _segment_dist(p, a, b):
    ab = b - a
    denom = (ab * ab).sum(-1)
    t = np.where(denom > 0, ((p - a) * ab).sum(-1) / np.where(denom > 0, denom, 1.0), 0.0)
    t = np.clip(t, 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def _point_triangle_dist(points, tri):
    """Distance of every point ``(P, 3)`` to every triangle ``(F, 3, 3)``: ``(P, F)``.

    Inside the prism over the triangle it is the distance to the plane, otherwise the distance
    to the nearest edge."""
    p = points[:, None, :]  # (P, 1, 3)
    a, b, c = tri[None, :, 0], tri[None, :, 1], tri[None, :, 2]  # (1, F, 3)
    n = np.cross(b - a, c - a)
    nn = np.linalg.norm(n, axis=-1)
    unit = n / np.where(nn > 0, nn, 1.0)[..., None]
    h = ((p - a) * unit).sum(-1)  # (P, F) signed height over the plane
    q = p - h[..., None] * unit
    inside = (nn > 0) & np.all(
        [(np.cross(e1 - e0, q - e0) * n).sum(-1) >= 0 for e0, e1 in ((a, b), (b, c), (c, a))],
        axis=0,
    )
    edges = np.minimum(
        np.minimum(_segment_dist(p, a, b), _segment_dist(p, b, c)), _segment_dist(p, c, a)
    )
    return np.where(inside, np.abs(h), edges)


def _mesh_files(data_root):
    return sorted(data_root.glob("ModelNet10/*/*/*.off")) + sorted(
        data_root.glob("ModelNet40/*/*/*.off")
    )


# --------------------------------------------------------------------------------------------
# real ModelNet meshes
# --------------------------------------------------------------------------------------------


def test_real_meshes_parse_with_header_counts(data_root):
    files = _mesh_files(data_root)
    assert len(files) == 11
    for path in files:
        nv, nf, ref_v, ref_f = _read_plain_off(path)
        verts, faces = parse_off(path.read_bytes(), str(path))
        assert verts.dtype == np.float64 and faces.dtype == np.int64
        assert verts.shape == (nv, 3) and faces.shape == (nf, 3), path.name
        np.testing.assert_array_equal(verts, ref_v)
        np.testing.assert_array_equal(faces, ref_f)


@pytest.mark.parametrize(
    "rel",
    [
        "ModelNet10/bathtub/test/bathtub_0108.off",
        "ModelNet40/stool/train/stool_0002.off",
        "ModelNet40/bed/train/bed_0001.off",
    ],
)
def test_real_mesh_samples_lie_on_the_surface(data_root, rel):
    verts, faces = parse_off((data_root / rel).read_bytes(), rel)
    points, normals = sample_surface(verts, faces, 256, seed=3)
    assert points.shape == normals.shape == (256, 3)
    assert points.dtype == normals.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)

    tri = verts[faces]  # (F, 3, 3)
    dist = _point_triangle_dist(points.astype(np.float64), tri)  # (P, F)
    tol = 8 * np.finfo(np.float32).eps * np.abs(verts).max()
    assert dist.min(axis=1).max() < tol
    # the normal is the (oriented) unit normal of a non-degenerate triangle the point lies on
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    nn = np.linalg.norm(n, axis=1)
    unit = n / np.where(nn > 0, nn, 1.0)[:, None]
    match = (dist < tol) & (nn > 0)[None] & ((normals @ unit.T) > 1 - 1e-5)
    assert match.any(axis=1).all()


def test_real_mesh_sampling_is_seeded(data_root):
    path = data_root / "ModelNet40/stool/train/stool_0002.off"
    verts, faces = parse_off(path.read_bytes(), path.name)
    p0, n0 = sample_surface(verts, faces, 500, seed=7)
    p1, n1 = sample_surface(verts, faces, 500, seed=7)
    p2, _ = sample_surface(verts, faces, 500, seed=8)
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(n0, n1)
    assert np.abs(p0 - p2).max() > 1.0


# --------------------------------------------------------------------------------------------
# quirks: each variant parses to the same square (two triangles)
# --------------------------------------------------------------------------------------------

_SQUARE = "OFF\n4 2 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n3 0 1 2\n3 0 2 3\n"
_SQUARE_V = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float64)
_SQUARE_F = np.array([[0, 1, 2], [0, 2, 3]])


def _parse_file(tmp_path, text: str | bytes, name="mesh.off"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return parse_off(path.read_bytes(), str(path))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(_SQUARE, id="plain"),
        pytest.param(_SQUARE.replace("OFF\n4 2 0", "OFF4 2 0"), id="fused-header"),
        pytest.param(_SQUARE.replace("OFF\n4 2 0", "OFF 4 2 0"), id="counts-on-header-line"),
        pytest.param(_SQUARE.replace("4 2 0", "4 2"), id="no-edge-count"),
        pytest.param(_SQUARE.replace("\n", "\r\n"), id="crlf"),
        pytest.param(
            "# made by hand\nOFF # header\n4 2 0 # counts\n# vertices\n0 0 0 # origin\n"
            "1 0 0\n1 1 0\n0 1 0\n#faces\n3 0 1 2#tight\n3 0 2 3\n# end\n",
            id="comments",
        ),
        pytest.param(
            "\n\nOFF\n\n4 2 0\n \t\n0 0 0\n1 0 0\n\n1 1 0\n0 1 0\n\n3 0 1 2\n   \n3 0 2 3\n\n\n",
            id="blank-lines",
        ),
        pytest.param("OFF\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n", id="quad"),
        pytest.param(
            _SQUARE.replace("3 0 1 2\n3 0 2 3", "3 0 1 2 255 0 0\n3 0 2 3 0.5 0.5 0.5 1.0"),
            id="face-colours",
        ),
        pytest.param(b"\xef\xbb\xbf" + _SQUARE.encode(), id="byte-order-mark"),
        pytest.param(
            "OFF4 1 0\r\n# all at once\r\n\r\n0 0 0\r\n1 0 0 # x\r\n1 1 0\r\n0 1 0\r\n"
            "4 0 1 2 3 10 20 30\r\n",
            id="everything",
        ),
    ],
)
def test_quirks_parse_to_the_same_mesh(tmp_path, text):
    verts, faces = _parse_file(tmp_path, text)
    np.testing.assert_array_equal(verts, _SQUARE_V)
    np.testing.assert_array_equal(faces, _SQUARE_F)


def test_pentagon_and_hexagon_are_fan_triangulated(tmp_path):
    text = "OFF\n6 2 0\n" + "0 0 0\n" * 6 + "5 4 3 2 1 0\n6 0 5 1 4 2 3 9 9 9\n"
    _, faces = _parse_file(tmp_path, text)
    fan_5 = [[4, 3, 2], [4, 2, 1], [4, 1, 0]]
    fan_6 = [[0, 5, 1], [0, 1, 4], [0, 4, 2], [0, 2, 3]]
    np.testing.assert_array_equal(faces, fan_5 + fan_6)


def test_empty_mesh_and_numbers_in_every_notation(tmp_path):
    verts, faces = _parse_file(tmp_path, "OFF\n0 0 0\n")
    assert verts.shape == (0, 3) and faces.shape == (0, 3)
    verts, _ = _parse_file(tmp_path, "OFF\n1 0 0\n+1.5e2 -.25 7.\n")
    np.testing.assert_array_equal(verts, [[150.0, -0.25, 7.0]])


# --------------------------------------------------------------------------------------------
# malformed files: exact messages naming file and line
# --------------------------------------------------------------------------------------------

_CUT_VERTS = "OFF\n4 2 0\n0 0 0\n1 0 0\n"
_CUT_FACES = _SQUARE.rsplit("3 0 2 3", 1)[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "1: empty file, expected an 'OFF' header"),
        ("# only a comment\n\n", "3: empty file, expected an 'OFF' header"),
        ("PLY\n4 2 0\n", "1: expected an 'OFF' header, got 'PLY'"),
        ("OFF\n", "2: file ends before the counts line"),
        ("OFF\n4\n", "2: expected counts 'vertices faces edges', got 1 values"),
        ("OFF4 2 0 0\n", "1: expected counts 'vertices faces edges', got 4 values"),
        ("OFF\n4 x 0\n", "2: counts: expected an integer, got 'x'"),
        ("OFFx 2 0\n", "1: counts: expected an integer, got 'x'"),
        ("OFF\n-1 0 0\n", "2: negative count in 'vertices faces edges'"),
        (_CUT_VERTS, "5: file ends after 2 of 4 vertices"),
        (
            "OFF\n100000000000000 1 0\n0 0 0\n",
            "2: counts claim 100000000000000 vertices and 1 faces, more than the file can hold "
            "(6 bytes follow the counts line, room for at most 3 lines)",
        ),
        (
            "OFF 3 100000000000000 0",
            "1: counts claim 3 vertices and 100000000000000 faces, more than the file can hold "
            "(0 bytes follow the counts line, room for at most 0 lines)",
        ),
        (_CUT_VERTS + "1 1", "5: vertex 2 has 2 values, expected 3 (x y z)"),
        (_CUT_FACES, "8: file ends after 1 of 2 faces"),
        (_CUT_FACES + "3 0 2", "8: face 1 declares 3 vertices but lists 2"),
        (_SQUARE.replace("1 0 0", "1 0 abc"), "4: vertex 1: expected a number, got 'abc'"),
        (_SQUARE.replace("1 0 0", "1 0 1_0"), "4: vertex 1: expected a number, got '1_0'"),
        (_SQUARE.replace("1 1 0", "1 nan 0"), "5: vertex 2 has a non-finite or out-of-range"),
        (_SQUARE.replace("1 1 0", "1 -inf 0"), "5: vertex 2 has a non-finite or out-of-range"),
        (_SQUARE.replace("1 1 0", "1 1e39 0"), "5: vertex 2 has a non-finite or out-of-range"),
        (_SQUARE.replace("0 1 0\n", "0 1 0 1\n"), "6: vertex 3 has 4 values, expected 3"),
        (_SQUARE.replace("3 0 2 3", "3 0 2 4"), "8: face 1 has vertex index 4, out of range"),
        (_SQUARE.replace("3 0 2 3", "3 0 -1 3"), "8: face 1 has vertex index -1, out of range"),
        (_SQUARE.replace("3 0 1 2", "2 0 1"), "7: face 0 has 2 vertices, need at least 3"),
        (_SQUARE.replace("3 0 1 2", "x 0 1 2"), "7: face 0: expected an integer, got 'x'"),
        (_SQUARE.replace("3 0 1 2", "3 0 1 2.0"), "7: face 0: expected an integer, got '2.0'"),
        (_SQUARE.replace("3 0 1 2", "3 0 1 2 red"), "7: face 0 colour: expected a number"),
        (_SQUARE + "3 1 2 3\n", "9: unexpected data after the 4 vertices and 2 faces"),
        (_SQUARE.replace("4 2 0", "4 1 0"), "8: unexpected data after the 4 vertices and 1 faces"),
        (_SQUARE.replace("4 2 0", "5 2 0"), "7: vertex 4 has 4 values, expected 3"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.off"
    with pytest.raises(DatasetError, match="^" + re.escape(f"{path}:{message}")):
        _parse_file(tmp_path, text, name="bad.off")


# --------------------------------------------------------------------------------------------
# sample_surface on hand-made meshes
# --------------------------------------------------------------------------------------------


def test_faces_are_chosen_by_area():
    # a triangle of area 1/2 at z = 0 and one of area 3/2 at z = 5
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 1, 5]], float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    points, normals = sample_surface(verts, faces, 40_000, seed=0)
    upper = points[:, 2] == 5
    assert np.isin(points[:, 2], [0, 5]).all()
    assert abs(upper.mean() - 0.75) < 0.01  # binomial sd 0.002
    np.testing.assert_array_equal(normals, np.tile([0, 0, 1], (40_000, 1)))


def test_points_are_uniform_inside_a_triangle():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
    points, _ = sample_surface(verts, np.array([[0, 1, 2]]), 40_000, seed=1)
    x, y = points[:, 0].astype(float), points[:, 1].astype(float)
    assert (x >= 0).all() and (y >= 0).all() and (x + y <= 1 + 1e-6).all()
    np.testing.assert_allclose([x.mean(), y.mean()], [1 / 3, 1 / 3], atol=0.005)
    assert abs((x + y < 0.5).mean() - 0.25) < 0.01  # area of the corner triangle
    assert abs((x < 0.5).mean() - 0.75) < 0.01


def test_normals_follow_the_winding():
    verts = np.array([[0, 0, 0], [0, 2, 0], [0, 0, 2]], float)
    _, n_fwd = sample_surface(verts, np.array([[0, 1, 2]]), 10, seed=0)
    _, n_back = sample_surface(verts, np.array([[0, 2, 1]]), 10, seed=0)
    np.testing.assert_array_equal(n_fwd, np.tile([1, 0, 0], (10, 1)))
    np.testing.assert_array_equal(n_back, np.tile([-1, 0, 0], (10, 1)))


def test_degenerate_faces_are_never_chosen():
    verts = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 1]], float)
    # collinear, repeated index, then the only face with area (at z = 1)
    faces = np.array([[0, 1, 2], [3, 3, 4], [3, 5, 4], [1, 1, 1]])
    points, normals = sample_surface(verts, faces, 5000, seed=2)
    assert (points[:, 2] == 1).all()
    np.testing.assert_array_equal(normals, np.tile([0, 0, 1], (5000, 1)))


def test_tiny_faces_keep_unit_normals():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float) * 1e-160  # area underflows
    points, normals = sample_surface(verts, np.array([[0, 1, 2]]), 5, seed=0)
    np.testing.assert_array_equal(normals, np.tile([0, 0, 1], (5, 1)))
    np.testing.assert_array_equal(points, 0.0)  # 1e-160 is 0 in float32


@pytest.mark.parametrize(
    ("verts", "faces", "num_points", "message"),
    [
        (
            [[0, 0, 0], [1, 1, 1], [2, 2, 2]],
            [[0, 1, 2], [0, 0, 1]],
            5,
            "the mesh has zero surface area (all 2 faces are degenerate)",
        ),
        ([[0, 0, 0]], np.zeros((0, 3), int), 5, "the mesh has no faces"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 3]], 5, "face indices must lie in [0, 3)"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0.0, 1.0, 2.0]], 5, "faces must be integers"),
        ([[0, 0, 0], [1, 0, 0]], [[0, 1]], 5, "faces must be integers of shape (F, 3)"),
        ([[0, 0], [1, 0], [0, 1]], [[0, 1, 2]], 5, "vertices must have shape (V, 3)"),
        ([[0, 0, np.nan], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], 5, "vertices must be finite"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], 0, "num_points must be >= 1, got 0"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], 2.0, "num_points must be an integer"),
    ],
)
def test_sample_surface_errors(verts, faces, num_points, message):
    with pytest.raises(ValueError, match=re.escape("sample_surface: " + message)):
        sample_surface(np.asarray(verts, float), np.asarray(faces), num_points, seed=0)


# --------------------------------------------------------------------------------------------
# fuzzing: a parsed mesh or our error, never another exception or a hang
# --------------------------------------------------------------------------------------------


def _parse_or_our_error(data: bytes):
    try:
        verts, faces = parse_off(data, "fuzz.off")
    except DatasetError as err:
        assert re.match(r"fuzz\.off:\d+: \S", str(err)), str(err)
        return None
    assert verts.dtype == np.float64 and verts.ndim == 2 and verts.shape[1] == 3
    assert np.isfinite(verts).all()
    assert faces.dtype == np.int64 and faces.ndim == 2 and faces.shape[1] == 3
    assert faces.size == 0 or (faces.min() >= 0 and faces.max() < len(verts))
    return verts, faces


@settings(max_examples=300, deadline=2000)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _parse_or_our_error(data)


@settings(max_examples=300, deadline=2000)
@given(st.text(alphabet="OF0123456789 .-+e#\n\r\tn_a", max_size=200))
def test_fuzz_off_alphabet(text):
    _parse_or_our_error(b"OFF" + text.encode())


_VALID = (
    b"OFF\n# a small mesh\n5 3 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n0.5 0.5 1\n"
    b"4 0 1 2 3\n3 0 1 4 255 0 0\n3 1 2 4\n"
)


@settings(max_examples=300, deadline=2000)
@given(st.data())
def test_fuzz_mutations_of_a_valid_file(data):
    buf = bytearray(_VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["cut", "replace", "insert", "delete", "dup-line"]))
        i = data.draw(st.integers(0, len(buf)))
        if op == "cut":
            del buf[i:]
        elif op == "replace" and i < len(buf):
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[i:i] = data.draw(st.sampled_from([b" ", b"\n", b"-", b"9", b"#", b"\r", b"e"]))
        elif op == "delete":
            del buf[i : i + data.draw(st.integers(1, 4))]
        else:
            lines = bytes(buf).split(b"\n")
            k = min(i, len(lines) - 1)
            lines.insert(k, lines[k])
            buf = bytearray(b"\n".join(lines))
    _parse_or_our_error(bytes(buf))


@settings(max_examples=150, deadline=2000)
@given(st.data())
def test_fuzz_generated_meshes_round_trip(data):
    """Random meshes written with random quirks parse to exactly the arrays written."""
    nv = data.draw(st.integers(3, 12))
    finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
    verts = np.array(
        data.draw(st.lists(st.tuples(finite, finite, finite), min_size=nv, max_size=nv)),
        dtype=np.float64,
    )
    polys = data.draw(
        st.lists(st.lists(st.integers(0, nv - 1), min_size=3, max_size=6), max_size=8)
    )
    eol = data.draw(st.sampled_from(["\n", "\r\n"]))
    fused = data.draw(st.booleans())
    comment = data.draw(st.sampled_from(["", " # note", "#"]))
    colour = data.draw(st.sampled_from(["", " 1 2 3", " 0.1 0.2 0.3 1.0"]))
    head = f"OFF{nv} {len(polys)} 0" if fused else f"OFF{eol}{nv} {len(polys)} 0"
    body = [head + comment]
    body += [" ".join(repr(float(c)) for c in v) + comment for v in verts]
    body += [f"{len(p)} " + " ".join(map(str, p)) + colour + comment for p in polys]
    if data.draw(st.booleans()):
        body.insert(data.draw(st.integers(1, len(body))), "")
    parsed = _parse_or_our_error(eol.join(body).encode() + eol.encode())
    assert parsed is not None
    want = [[p[0], p[j], p[j + 1]] for p in polys for j in range(1, len(p) - 1)]
    np.testing.assert_array_equal(parsed[0], verts)
    np.testing.assert_array_equal(parsed[1], np.array(want, dtype=np.int64).reshape(-1, 3))

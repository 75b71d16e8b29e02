"""PLY export and import: round trips, hand-written and big-endian files, errors, atomicity,
and a cross-check against Open3D's own reader and writer when Open3D is available."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from pcattn.ply import read_ply, write_ply


def _cloud(n: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    points = rng.normal(scale=10.0, size=(n, 3))  # float64: stored as float32
    colors = rng.integers(0, 256, size=(n, 3)).astype(np.uint8)
    labels = rng.integers(-1000, 1000, size=n)
    labels[:2] = [np.iinfo(np.int32).min, np.iinfo(np.int32).max]
    return points, colors, labels


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("binary", [True, False])
def test_round_trip(tmp_path, binary):
    points, colors, labels = _cloud()
    path = write_ply(tmp_path / "cloud.ply", points, colors, labels, binary=binary)
    assert path == tmp_path / "cloud.ply"
    fmt = b"format binary_little_endian 1.0" if binary else b"format ascii 1.0"
    assert path.read_bytes().split(b"\n")[:2] == [b"ply", fmt]
    out = read_ply(path)
    assert out["points"].dtype == np.float32 and out["points"].shape == (50, 3)
    np.testing.assert_array_equal(out["points"], points.astype(np.float32))
    assert out["colors"].dtype == np.uint8
    np.testing.assert_array_equal(out["colors"], colors)
    assert out["labels"].dtype == np.int64
    np.testing.assert_array_equal(out["labels"], labels)


def test_binary_layout(tmp_path):
    # the exact bytes: header, then per vertex 3 x float32, 3 x uchar, int32, little-endian
    path = write_ply(tmp_path / "a.ply", [[1.0, 2.0, 3.0]], [[1, 2, 3]], [7])
    header = (
        b"ply\nformat binary_little_endian 1.0\ncomment written by pcattn\nelement vertex 1\n"
        b"property float x\nproperty float y\nproperty float z\nproperty uchar red\n"
        b"property uchar green\nproperty uchar blue\nproperty int label\nend_header\n"
    )
    body = b"\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x40\x40\x01\x02\x03"
    assert path.read_bytes() == header + body + b"\x07\x00\x00\x00"


@pytest.mark.parametrize("binary", [True, False])
def test_points_only_and_empty(tmp_path, binary):
    points = torch.tensor([[0.1, -2.5, 1e-30], [3e30, 0.0, -0.0]], dtype=torch.float64)
    out = read_ply(write_ply(tmp_path / "p.ply", points, binary=binary))
    np.testing.assert_array_equal(out["points"], points.numpy().astype(np.float32))
    assert out["colors"] is None and out["labels"] is None
    empty = read_ply(write_ply(tmp_path / "e.ply", np.zeros((0, 3)), binary=binary))
    assert empty["points"].shape == (0, 3) and empty["colors"] is None


def test_float_colours_and_tensors(tmp_path):
    colors = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.25, 0.004]])
    labels = torch.tensor([3, 4])
    out = read_ply(write_ply(tmp_path / "c.ply", torch.ones(2, 3), colors, labels))
    # round(c * 255): 127.5 -> 128, 51.0 -> 51, 63.75 -> 64, 1.02 -> 1
    np.testing.assert_array_equal(out["colors"], [[0, 128, 255], [51, 64, 1]])
    np.testing.assert_array_equal(out["labels"], [3, 4])


# ---------------------------------------------------------------------------------------------
# other writers' files


def test_ascii_with_extra_properties(tmp_path):
    text = (
        "ply\n"
        "format ascii 1.0\n"
        "comment properties in an unusual order, an element before the vertices\n"
        "element camera 2\n"
        "property float view_px\n"
        "element vertex 3\n"
        "property float nx\n"
        "property double z\n"
        "property uchar blue\n"
        "property float32 x\n"
        "property int label\n"
        "property uint8 green\n"
        "property short extra\n"
        "property float y\n"
        "property uchar red\n"
        "element face 1\n"
        "property list uchar int vertex_indices\n"
        "end_header\n"
        "9.5\n"
        "-1\n"
        "0.5 3.25 10 1.5 7 20 -3 2.5 30\n"
        "\n"
        "-1 -0.125 0 -4 0 255 12 1e3 255\n"
        "0 6 1 0 -2 2 0 -7.75 3\n"
        "3 0 1 2\n"
    )
    path = tmp_path / "hand.ply"
    path.write_text(text)
    out = read_ply(path)
    np.testing.assert_array_equal(
        out["points"], [[1.5, 2.5, 3.25], [-4.0, 1000.0, -0.125], [0.0, -7.75, 6.0]]
    )
    np.testing.assert_array_equal(out["colors"], [[30, 20, 10], [255, 255, 0], [3, 2, 1]])
    np.testing.assert_array_equal(out["labels"], [7, 0, -2])


def test_big_endian_binary(tmp_path):
    # an element before 'vertex', double coordinates, float r/g/b, a ushort label, a face list
    vertex = np.dtype(
        [("z", ">f8"), ("r", ">f4"), ("g", ">f4"), ("b", ">f4"), ("flag", "i1"),
         ("y", ">f8"), ("x", ">f8"), ("label", ">u2"), ("weight", ">u4")]
    )  # fmt: skip
    rows = np.array(
        [
            (3.0, 0.0, 0.5, 1.0, -1, 2.0, 1.0, 65535, 9),
            (-0.5, 0.2, 0.25, 0.004, 5, 1e-3, 7.0, 0, 1),
        ],
        dtype=vertex,
    )
    header = (
        "ply\nformat binary_big_endian 1.0\nelement camera 1\nproperty float view_px\n"
        "property double view_py\nelement vertex 2\nproperty double z\nproperty float r\n"
        "property float32 g\nproperty float b\nproperty char flag\nproperty float64 y\n"
        "property double x\nproperty ushort label\nproperty uint weight\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
    )
    camera = np.array([(1.0, 2.0)], dtype=[("view_px", ">f4"), ("view_py", ">f8")])
    face = b"\x03" + np.array([0, 1, 1], dtype=">i4").tobytes()
    path = tmp_path / "big.ply"
    path.write_bytes(header.encode() + camera.tobytes() + rows.tobytes() + face)
    out = read_ply(path)
    expected = np.array([[1.0, 2.0, 3.0], [7.0, 1e-3, -0.5]], dtype=np.float32)
    np.testing.assert_array_equal(out["points"], expected)
    np.testing.assert_array_equal(out["colors"], [[0, 128, 255], [51, 64, 1]])
    np.testing.assert_array_equal(out["labels"], [65535, 0])


# ---------------------------------------------------------------------------------------------
# errors


def test_not_a_ply(tmp_path):
    path = tmp_path / "x.ply"
    path.write_text("OFF\n3 1 0\n")
    with pytest.raises(ValueError, match=r"x\.ply: not a PLY file \(first line must be 'ply'\)"):
        read_ply(path)


def test_truncated_binary(tmp_path):
    path = write_ply(tmp_path / "t.ply", *_cloud(4))
    path.write_bytes(path.read_bytes()[:-5])
    # 4 vertices x (12 + 3 + 4) bytes = 76 bytes expected, 71 left
    with pytest.raises(ValueError, match=r"t\.ply: truncated: expected 4 vertices .*76 bytes.* 71"):
        read_ply(path)


def test_truncated_ascii(tmp_path):
    path = write_ply(tmp_path / "t.ply", *_cloud(4), binary=False)
    path.write_bytes(b"\n".join(path.read_bytes().split(b"\n")[:-2]) + b"\n")
    with pytest.raises(ValueError, match=r"truncated: expected 4 vertices, found 3 rows"):
        read_ply(path)


_XYZ = "property float x\nproperty float y\nproperty float z\n"


@pytest.mark.parametrize(
    ("head", "body", "match"),
    [
        # 1e14 vertices: before, a bare MemoryError (binary) or a scan of the whole file (ascii)
        ("ascii", b"1 2 3\n", "header line 3: 'element vertex 100000000000000' claims more "
         "rows than the file can hold: 6 bytes follow the header, room for at most 3 rows"),
        ("binary_little_endian", bytes(12), "truncated: expected 100000000000000 vertices of 12 "
         "bytes each (1200000000000000 bytes) after the header, found 12 bytes (header line 3: "
         "'element vertex 100000000000000')"),
        ("binary_big_endian", b"", "truncated: expected 100000000000000 vertices of 12 bytes "
         "each (1200000000000000 bytes) after the header, found 0 bytes (header line 3: "
         "'element vertex 100000000000000')"),
    ],
)  # fmt: skip
def test_a_vertex_count_the_file_cannot_hold_names_the_header_line(tmp_path, head, body, match):
    path = tmp_path / "lies.ply"
    header = f"ply\nformat {head} 1.0\nelement vertex 100000000000000\n{_XYZ}end_header\n"
    path.write_bytes(header.encode() + body)
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: {match}") + "$"):
        read_ply(path)


@pytest.mark.parametrize("binary", [True, False])
def test_an_element_before_vertex_with_an_impossible_count(tmp_path, binary):
    path = tmp_path / "lies.ply"
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        f"ply\nformat {fmt} 1.0\nelement camera 100000000000000\nproperty float f\n"
        f"element vertex 1\n{_XYZ}end_header\n"
    )
    body = np.zeros(4, "<f4").tobytes() if binary else b"0\n1 2 3\n"
    path.write_bytes(header.encode() + body)
    if binary:
        match = (
            "truncated: expected 100000000000000 'camera' elements of 4 bytes each "
            "(400000000000000 bytes) after the header, found 16 bytes (header line 3: "
            "'element camera 100000000000000')"
        )
    else:
        match = (
            "header line 3: 'element camera 100000000000000' claims more rows than the file "
            "can hold: 8 bytes follow the header, room for at most 4 rows"
        )
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: {match}") + "$"):
        read_ply(path)
    # the same file with honest counts reads: the check counts every element before vertex
    path.write_bytes(header.replace("camera 100000000000000", "camera 1").encode() + body)
    assert read_ply(path)["points"].tolist() == ([[0.0, 0.0, 0.0]] if binary else [[1, 2, 3]])


def test_write_errors(tmp_path):
    points = np.zeros((4, 3))
    points[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"points: row 2 is not finite"):
        write_ply(tmp_path / "a.ply", points)
    with pytest.raises(ValueError, match=r"points: row 1 is not finite in float32"):
        write_ply(tmp_path / "a.ply", [[0.0, 0.0, 0.0], [1e39, 0.0, 0.0]])  # overflows float32
    with pytest.raises(ValueError, match=r"points: expected shape \(N, 3\), got \(4, 2\)"):
        write_ply(tmp_path / "a.ply", np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"colors: expected shape \(4, 3\) .* got \(3, 3\)"):
        write_ply(tmp_path / "a.ply", np.zeros((4, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"colors: row 1 is outside \[0, 1\]"):
        write_ply(tmp_path / "a.ply", np.zeros((2, 3)), [[0.0, 0.0, 1.0], [0.0, 1.5, 0.0]])
    with pytest.raises(ValueError, match=r"colors: row 0 is outside \[0, 255\]"):
        write_ply(tmp_path / "a.ply", np.zeros((1, 3)), [[0, 256, 0]])
    with pytest.raises(ValueError, match=r"labels: expected shape \(4,\)"):
        write_ply(tmp_path / "a.ply", np.zeros((4, 3)), labels=np.zeros(5, dtype=int))
    with pytest.raises(TypeError, match=r"labels: expected integers"):
        write_ply(tmp_path / "a.ply", np.zeros((2, 3)), labels=np.zeros(2))
    assert list(tmp_path.iterdir()) == []  # nothing written by any of them


_HEAD = "ply\nformat ascii 1.0\nelement vertex 2\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        # line 8 is the first vertex row, line 10 the second (line 9 blank)
        (_HEAD + "property float x\nproperty float y\nproperty float z\nend_header\n"
         "1 2 3\n\n4 abc 6\n", r"line 10: 'abc' is not a number \(property 'y'\)"),
        (_HEAD + "property float x\nproperty float y\nproperty float z\nend_header\n"
         "1 2 3\n4 5\n", r"line 9: expected 3 values, found 2"),
        (_HEAD + "property float x\nproperty float y\nproperty uchar z\nend_header\n"
         "1 2 3\n4 5 256\n", r"line 9: 256 is not a valid uint8 \(property 'z'\)"),
        (_HEAD + "property float x\nproperty int64 y\n", r"header line 5: unsupported .*'int64'"),
        (_HEAD + "property float x\nproperty list uchar int y\nend_header\n",
         r"header line 5: list properties in the vertex element"),
        (_HEAD + "property float x\nproperty float y\nend_header\n1 2\n3 4\n",
         r"the vertex element has no z property"),
        ("ply\nformat binary_middle_endian 1.0\n", r"header line 2: unknown format"),
        (_HEAD + "property float x\n", r"the header has no 'end_header' line"),
        ("ply\nelement face 1\nproperty list uchar int i\nformat ascii 1.0\nend_header\n3 0 1 2\n",
         r"no 'element vertex'"),
    ],
)  # fmt: skip
def test_read_errors(tmp_path, text, match):
    path = tmp_path / "bad.ply"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.ply: " + match):
        read_ply(path)


# ---------------------------------------------------------------------------------------------
# atomic writes


@pytest.mark.parametrize("fail", ["fsync", "replace"])
def test_failed_write_keeps_previous_file(tmp_path, monkeypatch, fail):
    path = write_ply(tmp_path / "cloud.ply", *_cloud(10))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, fail, boom)
    with pytest.raises(OSError, match="disk full"):
        write_ply(path, *_cloud(20, seed=1), binary=False)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cloud.ply"]  # no temporary left behind


# ---------------------------------------------------------------------------------------------
# Open3D cross-check


def _open3d():
    try:
        import open3d
    except (ImportError, OSError) as exc:  # OSError: its system libraries are missing
        msg = f"open3d cannot be imported: {exc}"
        if os.environ.get("PCATTN_REQUIRE_VIZ") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return open3d


@pytest.mark.parametrize("binary", [True, False])
def test_open3d_reads_our_files(tmp_path, binary):
    o3d = _open3d()
    points, colors, labels = _cloud()
    path = write_ply(tmp_path / "cloud.ply", points, colors, labels, binary=binary)
    pcd = o3d.io.read_point_cloud(str(path))
    # Open3D parses ascii decimals as doubles: the 9 digits we print give back the float32
    np.testing.assert_array_equal(np.asarray(pcd.points, np.float32), points.astype(np.float32))
    np.testing.assert_allclose(np.asarray(pcd.colors), colors / 255.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("write_ascii", [False, True])
def test_we_read_open3d_files(tmp_path, write_ascii):
    o3d = _open3d()
    points, colors, _ = _cloud()
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(points)
    pcd.colors = o3d.utility.Vector3dVector(colors / 255.0)
    pcd.normals = o3d.utility.Vector3dVector(np.roll(points, 1, axis=0))  # extra nx, ny, nz
    path = tmp_path / "o3d.ply"
    assert o3d.io.write_point_cloud(str(path), pcd, write_ascii=write_ascii)
    out = read_ply(path)
    assert out["labels"] is None
    np.testing.assert_array_equal(out["colors"], colors)
    if write_ascii:  # Open3D prints 6 significant digits
        np.testing.assert_allclose(out["points"], points, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(out["points"], points.astype(np.float32))

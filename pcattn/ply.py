r"""PLY point-cloud files: write a cloud with colours and labels, read vertex data back.

Pure NumPy: nothing here imports Open3D, so exporting a cloud works on machines without its
system libraries; the files open in Open3D, MeshLab and CloudCompare.

:func:`write_ply` writes one ``vertex`` element with ``float x, y, z``, then ``uchar red,
green, blue`` when colours are given and ``int label`` when labels are given, as
``binary_little_endian`` (default) or ``ascii``. The file is written to a temporary file in the
same folder and renamed over ``path``, so a failed write leaves the previous file untouched.

:func:`read_ply` reads the ``vertex`` element of any PLY file (``ascii``,
``binary_little_endian`` or ``binary_big_endian``), whatever its other scalar properties, their
order and types; elements after ``vertex`` (such as ``face``) are not read. It returns
``points`` (float32), ``colors`` (uint8, from ``red/green/blue`` or ``r/g/b``; float colours in
``[0, 1]`` are scaled by 255) and ``labels`` (int64, from a ``label`` property).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .runlog import atomic_write_bytes

__all__ = ["write_ply", "read_ply"]

# PLY scalar type names (both the original and the sized spellings) -> NumPy type codes
_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}
_MAX_HEADER_LINE = 1 << 16  # longest header line read (guards against binary junk)


def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, on any device
        a = a.detach().cpu()
    return np.asarray(a)


def _first_bad_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])


def write_ply(
    path: str | os.PathLike,
    points: Any,
    colors: Any = None,
    labels: Any = None,
    *,
    binary: bool = True,
) -> Path:
    r"""Write a point cloud to a PLY file (atomically).

    Args:
        path (str or PathLike): The file to write; its folder must exist.
        points (array or Tensor): Coordinates, stored as ``float x, y, z``.
        colors (array or Tensor, optional): Per-point RGB, either floats in :math:`[0, 1]`
            (stored as ``round(255 c)``) or integers in :math:`[0, 255]` (stored as is), as
            ``uchar red, green, blue``. (default: :obj:`None`)
        labels (array or Tensor, optional): Per-point integer labels, stored as
            ``int label``. (default: :obj:`None`)
        binary (bool, optional): ``binary_little_endian`` if :obj:`True`, else ``ascii``.
            (default: :obj:`True`)

    Shapes:
        points: :math:`(N, 3)`; colors: :math:`(N, 3)`; labels: :math:`(N,)`.

    Returns:
        The :class:`~pathlib.Path` written.

    Raises:
        ValueError: A wrong shape, a non-finite point, a colour or label out of range.
        TypeError: Non-numeric points or colours, non-integer labels.
    """
    path = Path(path)
    pts = _to_numpy(points)
    if pts.dtype == bool or not np.issubdtype(pts.dtype, np.number) or pts.dtype.kind == "c":
        raise TypeError(f"points: expected real numbers, got dtype {pts.dtype}")
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points: expected shape (N, 3), got {tuple(pts.shape)}")
    n = len(pts)
    with np.errstate(over="ignore"):  # an overflow to inf is reported below
        pts32 = pts.astype(np.float32)
    if not np.isfinite(pts32).all():
        i = _first_bad_row(~np.isfinite(pts32))
        raise ValueError(f"points: row {i} is not finite in float32: {pts[i].tolist()}")
    fields = [("x", "<f4", pts32[:, 0]), ("y", "<f4", pts32[:, 1]), ("z", "<f4", pts32[:, 2])]

    if colors is not None:
        rgb = _to_numpy(colors)
        if rgb.shape != (n, 3):
            raise ValueError(f"colors: expected shape ({n}, 3) to match points, got {rgb.shape}")
        if rgb.dtype.kind == "f":
            bad = ~((rgb >= 0.0) & (rgb <= 1.0))  # also catches NaN
            scale = "[0, 1] (float colours)"
            rgb8 = np.rint(np.where(bad, 0.0, rgb) * 255.0)
        elif rgb.dtype.kind in "iu":
            bad = (rgb < 0) | (rgb > 255)
            scale = "[0, 255] (integer colours)"
            rgb8 = rgb
        else:
            raise TypeError(f"colors: expected float or integer values, got dtype {rgb.dtype}")
        if bad.any():
            i = _first_bad_row(bad)
            raise ValueError(f"colors: row {i} is outside {scale}: {rgb[i].tolist()}")
        rgb8 = rgb8.astype(np.uint8)
        fields += [("red", "u1", rgb8[:, 0]), ("green", "u1", rgb8[:, 1])]
        fields += [("blue", "u1", rgb8[:, 2])]

    if labels is not None:
        lab = _to_numpy(labels)
        if lab.dtype.kind not in "iu":
            raise TypeError(f"labels: expected integers, got dtype {lab.dtype}")
        if lab.shape != (n,):
            raise ValueError(f"labels: expected shape ({n},) to match points, got {lab.shape}")
        i32 = np.iinfo(np.int32)
        bad = (lab < i32.min) | (lab > i32.max)
        if bad.any():
            i = _first_bad_row(bad)
            raise ValueError(f"labels: row {i} ({lab[i]}) does not fit a PLY int (32 bits)")
        fields.append(("label", "<i4", lab.astype(np.int32)))

    ply_type = {"<f4": "float", "u1": "uchar", "<i4": "int"}
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0"]
    header += ["comment written by pcattn", f"element vertex {n}"]
    header += [f"property {ply_type[code]} {name}" for name, code, _ in fields]
    header.append("end_header\n")
    data = "\n".join(header).encode("ascii")
    if binary:
        table = np.empty(n, dtype=[(name, code) for name, code, _ in fields])
        for name, _, column in fields:
            table[name] = column
        data += table.tobytes()
    else:
        # %.9g keeps every float32 exact: 9 significant digits identify a float32 uniquely
        fmt = " ".join("%.9g" if code == "<f4" else "%d" for _, code, _ in fields) + "\n"
        rows = zip(*(column.tolist() for _, _, column in fields), strict=True)
        data += "".join(fmt % row for row in rows).encode("ascii")
    atomic_write_bytes(path, data)
    return path


class _Element(NamedTuple):
    name: str
    count: int
    props: list[tuple[str, str]]  # (name, NumPy type code) of the scalar properties
    list_line: int  # header line of the first list property, 0 if none
    line: int  # its 'element' header line


def _read_header(f: Any, where: str) -> tuple[str, list[_Element], int]:
    """Parse the header of the open binary file ``f``; returns (format, elements, lines)."""
    if f.readline(_MAX_HEADER_LINE).rstrip(b"\r\n") != b"ply":
        raise ValueError(f"{where}: not a PLY file (first line must be 'ply')")
    fmt, elements, lineno = None, [], 1
    while True:
        raw = f.readline(_MAX_HEADER_LINE)
        lineno += 1
        if not raw:
            raise ValueError(f"{where}: the header has no 'end_header' line")
        try:
            words = raw.decode("ascii").split()
        except UnicodeDecodeError:
            raise ValueError(f"{where}: header line {lineno} is not ASCII text") from None
        key = words[0] if words else ""
        if key == "end_header":
            break
        if key in ("comment", "obj_info", ""):
            continue
        if key == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise ValueError(f"{where}: header line {lineno}: unknown format {raw!r}")
            if words[2] not in ("1.0", "1"):
                raise ValueError(f"{where}: header line {lineno}: unsupported version {words[2]}")
            fmt = words[1]
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise ValueError(f"{where}: header line {lineno}: bad element line {raw!r}")
            elements.append(_Element(words[1], int(words[2]), [], 0, lineno))
        elif key == "property":
            if not elements:
                raise ValueError(f"{where}: header line {lineno}: property before any element")
            if len(words) >= 2 and words[1] == "list":
                if not elements[-1].list_line:
                    elements[-1] = elements[-1]._replace(list_line=lineno)
                continue
            if len(words) != 3:
                raise ValueError(f"{where}: header line {lineno}: bad property line {raw!r}")
            if words[1] not in _TYPES:
                raise ValueError(
                    f"{where}: header line {lineno}: unsupported property type {words[1]!r}"
                )
            if any(words[2] == name for name, _ in elements[-1].props):
                raise ValueError(f"{where}: header line {lineno}: duplicate property {words[2]!r}")
            elements[-1].props.append((words[2], _TYPES[words[1]]))
        else:
            raise ValueError(f"{where}: header line {lineno}: unknown keyword {key!r}")
    if fmt is None:
        raise ValueError(f"{where}: the header has no 'format' line")
    return fmt, elements, lineno


def _check_counts(where: str, fmt: str, elements: list[_Element], available: int) -> None:
    """Refuse counts the ``available`` bytes after the header cannot hold, before anything is
    allocated for them: a binary element takes its row size per row; an ascii row at least two
    bytes (a value and a line break, which the last row may omit)."""
    used = rows = 0
    for e in elements:
        if fmt == "ascii":
            rows += e.count
            if 2 * rows - 1 > available:
                earlier = (
                    f" ({rows - e.count} of them for earlier elements)" if rows > e.count else ""
                )
                raise ValueError(
                    f"{where}: header line {e.line}: 'element {e.name} {e.count}' claims more "
                    f"rows than the file can hold: {available} bytes follow the header, room for "
                    f"at most {(available + 1) // 2} rows{earlier}"
                )
            continue
        row = sum(np.dtype(code).itemsize for _, code in e.props)
        need = e.count * row
        if used + need > available:
            noun = "vertices" if e.name == "vertex" else f"{e.name!r} elements"
            raise ValueError(
                f"{where}: truncated: expected {e.count} {noun} of {row} bytes each ({need} "
                f"bytes) after the header, found {max(available - used, 0)} bytes (header line "
                f"{e.line}: 'element {e.name} {e.count}')"
            )
        used += need


def _read_ascii_rows(f: Any, where: str, skip: int, vertex: _Element, lineno: int) -> dict:
    """Read the vertex rows of an ascii body (after ``skip`` rows of earlier elements)."""
    tokens, line_of_row = [], []
    width = len(vertex.props)
    for raw in f:
        lineno += 1
        words = raw.split()
        if not words:
            continue
        if skip:
            skip -= 1
            continue
        if len(line_of_row) == vertex.count:
            break
        if len(words) != width:
            raise ValueError(f"{where}: line {lineno}: expected {width} values, found {len(words)}")
        tokens += words
        line_of_row.append(lineno)
    if len(line_of_row) < vertex.count:
        raise ValueError(
            f"{where}: truncated: expected {vertex.count} vertices, found {len(line_of_row)} rows"
        )
    try:
        table = np.array(tokens, dtype=np.float64).reshape(vertex.count, width)
    except ValueError:  # find the culprit for the message
        for k, tok in enumerate(tokens):
            try:
                float(tok)
            except ValueError:
                row, col = divmod(k, width)
                raise ValueError(
                    f"{where}: line {line_of_row[row]}: {tok.decode(errors='replace')!r} is not a "
                    f"number (property {vertex.props[col][0]!r})"
                ) from None
        raise
    columns = {}
    for col, (name, code) in enumerate(vertex.props):
        values = table[:, col]
        if code[0] in "iu":
            info = np.iinfo(code)
            bad = (values != np.rint(values)) | (values < info.min) | (values > info.max)
            if bad.any():
                row = _first_bad_row(bad)
                raise ValueError(
                    f"{where}: line {line_of_row[row]}: {float(values[row]):g} is not a valid "
                    f"{np.dtype(code).name} (property {name!r})"
                )
        columns[name] = values.astype(code)
    return columns


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray | None]:
    r"""Read the vertices of a PLY file: coordinates, colours and labels.

    Reads ``ascii``, ``binary_little_endian`` and ``binary_big_endian`` files with any scalar
    vertex properties in any order; other properties are skipped, elements after ``vertex``
    are not read.

    Args:
        path (str or PathLike): The PLY file.

    Returns:
        A dict with ``"points"`` (float32), ``"colors"`` (uint8, or :obj:`None` without
        ``red/green/blue`` or ``r/g/b`` properties; float colours in :math:`[0, 1]` are mapped
        to ``round(255 c)``) and ``"labels"`` (int64, or :obj:`None` without a ``label``
        property).

    Shapes:
        points: :math:`(N, 3)`; colors: :math:`(N, 3)`; labels: :math:`(N,)`.

    Raises:
        ValueError: Not a PLY file, a malformed or unsupported header (with its line number),
            no ``vertex`` element or no ``x, y, z``, a list property in ``vertex``, truncated
            data or an element count the file cannot hold (checked before anything is
            allocated, with the ``element`` line), a non-numeric ascii value (with its line
            number), colours out of range.
    """
    where = str(path)
    with open(path, "rb") as f:
        fmt, elements, lineno = _read_header(f, where)
        names = [e.name for e in elements]
        if "vertex" not in names:
            raise ValueError(f"{where}: no 'element vertex' in the header")
        k = names.index("vertex")
        vertex = elements[k]
        if vertex.list_line:
            raise ValueError(
                f"{where}: header line {vertex.list_line}: list properties in the vertex "
                "element are not supported"
            )
        if fmt != "ascii":
            for e in elements[:k]:
                if e.list_line:
                    raise ValueError(
                        f"{where}: header line {e.list_line}: element {e.name!r} with list "
                        "properties before 'vertex' is not supported in binary files"
                    )
        _check_counts(where, fmt, elements[: k + 1], os.fstat(f.fileno()).st_size - f.tell())
        if fmt == "ascii":
            skip = sum(e.count for e in elements[:k])
            columns = _read_ascii_rows(f, where, skip, vertex, lineno)
        else:
            endian = _FORMATS[fmt]
            dtype = np.dtype([(name, endian + code) for name, code in vertex.props])
            for e in elements[:k]:
                f.seek(e.count * sum(np.dtype(code).itemsize for _, code in e.props), 1)
            need = vertex.count * dtype.itemsize
            buf = f.read(need)
            if len(buf) < need:  # the file shrank since the check
                raise ValueError(
                    f"{where}: truncated: expected {vertex.count} vertices of {dtype.itemsize} "
                    f"bytes each ({need} bytes) after the header, found {len(buf)} bytes"
                )
            table = np.frombuffer(buf, dtype=dtype, count=vertex.count)
            columns = {name: table[name] for name, _ in vertex.props}

    missing = [a for a in "xyz" if a not in columns]
    if missing:
        raise ValueError(f"{where}: the vertex element has no {', '.join(missing)} property")
    points = np.stack([columns[a].astype(np.float32) for a in "xyz"], axis=1)  # (N, 3)
    colors = None
    for rgb in (("red", "green", "blue"), ("r", "g", "b")):
        if all(c in columns for c in rgb):
            colors = np.stack([columns[c] for c in rgb], axis=1)  # (N, 3)
            break
    if colors is not None:
        if colors.dtype.kind == "f":
            bad = ~((colors >= 0.0) & (colors <= 1.0))
            colors = np.rint(np.where(bad, 0.0, colors) * 255.0)
        else:
            bad = (colors < 0) | (colors > 255)
        if bad.any():
            raise ValueError(f"{where}: colour of vertex {_first_bad_row(bad)} is out of range")
        colors = colors.astype(np.uint8)
    labels = None
    if "label" in columns:
        labels = columns["label"]
        integral = np.isfinite(labels) & (labels == np.rint(labels))
        if labels.dtype.kind == "f" and not integral.all():
            raise ValueError(f"{where}: non-integer value in the float 'label' property")
        labels = labels.astype(np.int64)
    return {"points": points, "colors": colors, "labels": labels}

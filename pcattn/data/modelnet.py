r"""ModelNet40 and ModelNet10 shape classification, from each layout the dataset is published in.

`ModelNet <https://modelnet.cs.princeton.edu>`_ (Wu et al., "3D ShapeNets", CVPR 2015) holds
12,311 CAD meshes in 40 classes (9,843 train / 2,468 test); ModelNet10 is 10 of those classes
(3,991 / 908). Three layouts are in use, and :class:`ModelNet` reads each (``format``):

* ``"off"``: the original meshes, ``ModelNet40/<class>/{train,test}/<class>_XXXX.off``
  (:func:`~pcattn.data.off.parse_off`); points are drawn on each surface with
  :func:`~pcattn.data.off.sample_surface` (area-weighted, face normals), seeded per shape;
* ``"normal_resampled"``: PointNet++'s ``modelnet40_normal_resampled``, 10,000 points per shape
  with normals as lines ``x,y,z,nx,ny,nz`` in ``<class>/<class>_XXXX.txt``, with the official
  class and split lists ``modelnet{40,10}_shape_names.txt`` and ``modelnet{40,10}_{train,test}.txt``
  (:func:`parse_resampled_txt`);
* ``"hdf5"``: PointNet's ``modelnet40_ply_hdf5_2048``, ``ply_data_{train,test}<i>.h5`` with
  ``data (S, 2048, 3)`` float32, ``label (S, 1)`` uint8 and optionally ``normal (S, 2048, 3)``,
  and ``shape_names.txt``.

Each item is a PyG ``Data`` with ``pos (P, 3)``, ``x (P, 3)`` the unit normals (when
``use_normals`` and the layout has them), ``y (1,)`` the class index and ``key`` the shape id.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from torch_geometric.data import Data

from .base import CachedDataset, DatasetError, Entry, read_h5_dataset
from .off import parse_off, sample_surface

__all__ = [
    "ModelNet",
    "parse_resampled_txt",
    "MODELNET40_CLASSES",
    "MODELNET10_CLASSES",
    "FORMATS",
]

#: the 40 ModelNet40 classes in their official (alphabetical) order; label = index
MODELNET40_CLASSES = (
    "airplane bathtub bed bench bookshelf bottle bowl car chair cone cup curtain desk door "
    "dresser flower_pot glass_box guitar keyboard lamp laptop mantel monitor night_stand person "
    "piano plant radio range_hood sink sofa stairs stool table tent toilet tv_stand vase "
    "wardrobe xbox"
).split()
#: the 10 ModelNet10 classes in their official order; label = index
MODELNET10_CLASSES = "bathtub bed chair desk dresser monitor night_stand sofa table toilet".split()
#: the layouts :class:`ModelNet` reads
FORMATS = ("off", "normal_resampled", "hdf5")

_F32_MAX = float(np.finfo(np.float32).max)
_DEFAULT_OFF_POINTS = 2048
_SPLITS = ("train", "test")

_LAYOUT = """\
root = ModelNet40/ or ModelNet10/                 format="off" (original meshes)
    airplane/train/airplane_0001.off ...
    airplane/test/airplane_0627.off ...
root = modelnet40_normal_resampled/               format="normal_resampled" (PointNet++)
    modelnet40_shape_names.txt  modelnet40_train.txt  modelnet40_test.txt
    modelnet10_shape_names.txt  modelnet10_train.txt  modelnet10_test.txt
    airplane/airplane_0001.txt ...                (lines 'x,y,z,nx,ny,nz')
root = modelnet40_ply_hdf5_2048/                  format="hdf5" (PointNet)
    shape_names.txt  ply_data_train0.h5 ... ply_data_train4.h5  ply_data_test0.h5 ...
"""
_SOURCE = (
    "original meshes: https://modelnet.cs.princeton.edu (ModelNet40.zip, ModelNet10.zip); "
    "normal_resampled: the PointNet++ release (modelnet40_normal_resampled.zip); "
    "hdf5: the PointNet release (modelnet40_ply_hdf5_2048.zip)"
)
_KNOWN_FOLDERS = (
    "ModelNet40",
    "ModelNet10",
    "modelnet40_normal_resampled",
    "modelnet40_ply_hdf5_2048",
)


# ------------------------------------------------------------------------------------------
# modelnet40_normal_resampled text files
# ------------------------------------------------------------------------------------------

# files made only of these characters are read by numpy's C parser (same grammar as below)
_PLAIN = re.compile(rb"[0-9eE+\-.,\n \t]*")


def _show(tok: bytes) -> str:
    text = tok.decode("latin-1").strip()
    return repr(text if len(text) <= 30 else text[:30] + "...")


def _parse_resampled_fast(data: bytes) -> np.ndarray | None:
    """The array via ``np.loadtxt`` when the file is plain and well formed, else ``None``."""
    if not _PLAIN.fullmatch(data):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.loadtxt(io.BytesIO(data), delimiter=",", comments=None, ndmin=2)
    except ValueError:
        return None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != 6:
        return None
    if not (np.abs(arr) <= _F32_MAX).all():
        return None
    return arr.astype(np.float32)


def _parse_resampled_slow(data: bytes, name: str) -> np.ndarray:
    """Line by line; the reference grammar, and the source of every error message."""
    rows: list[list[float]] = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        fields = line.split(b",")
        if len(fields) != 6:
            raise DatasetError(
                f"{name}:{lineno}: expected 6 comma-separated values (x,y,z,nx,ny,nz), "
                f"got {len(fields)}"
            )
        row = []
        for tok in fields:
            try:
                value = float(tok) if b"_" not in tok else None
            except ValueError:
                value = None
            if value is None:
                raise DatasetError(f"{name}:{lineno}: expected a number, got {_show(tok)}")
            if not abs(value) <= _F32_MAX:
                raise DatasetError(
                    f"{name}:{lineno}: non-finite or out-of-range value {_show(tok)}"
                )
            row.append(value)
        rows.append(row)
    if not rows:
        raise DatasetError(f"{name}:1: no points in the file")
    return np.array(rows, dtype=np.float32)


def parse_resampled_txt(data: bytes, name: str) -> np.ndarray:
    r"""Parse a ``modelnet40_normal_resampled`` shape file.

    Each non-blank line is ``x,y,z,nx,ny,nz``: a point sampled on the mesh and its unit normal
    (PointNet++ release, 10,000 lines per shape). Values may be surrounded by spaces or tabs;
    lines may end in CRLF.

    Args:
        data: the file's bytes.
        name: the file's name for error messages (``"<name>:<line>: ..."``).

    Returns:
        ``(P, 6)`` float32 array, one row per line.

    Raises:
        DatasetError: for a line without exactly six numbers, a non-numeric, non-finite or
            out-of-float32-range value, or a file with no points, naming the file and line.
    """
    arr = _parse_resampled_fast(data.replace(b"\r\n", b"\n"))
    return arr if arr is not None else _parse_resampled_slow(data, name)


# ------------------------------------------------------------------------------------------
# small file helpers
# ------------------------------------------------------------------------------------------


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _read_names(path: Path, classes: int) -> list[str]:
    """The class names of a shape-names file, one a line, checked for count and duplicates."""
    names: list[str] = []
    for lineno, line in enumerate(_text_lines(path), 1):
        name = line.strip()
        if not name:
            continue
        if name in names:
            raise DatasetError(f"{path}:{lineno}: duplicate class name {name!r}")
        names.append(name)
    if len(names) != classes:
        raise DatasetError(f"{path}: has {len(names)} class names, ModelNet{classes} has {classes}")
    return names


def _natural(path: Path) -> list:
    """Sort key putting ``ply_data_train10.h5`` after ``ply_data_train9.h5``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _shape_seed(seed: int, key: str) -> int:
    """A shape's sampling seed: depends on the dataset seed and the shape id only."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------


class ModelNet(CachedDataset):
    r"""ModelNet40 / ModelNet10 classification from the original meshes, PointNet++'s
    ``modelnet40_normal_resampled`` or PointNet's ``modelnet40_ply_hdf5_2048`` (see the module
    docstring for the layouts and where each comes from).

    Labels are the index of the class in the official list: ``modelnet{40,10}_shape_names.txt``
    or ``shape_names.txt`` of the folder, and :data:`MODELNET40_CLASSES` /
    :data:`MODELNET10_CLASSES` for the meshes. Shape ids listed in a split file without a file on
    disk are skipped with one warning; a folder with none of the layouts raises
    :class:`FileNotFoundError` showing the expected layouts and the sources.

    Args:
        root: the dataset folder (``ModelNet40/``, ``ModelNet10/``,
            ``modelnet40_normal_resampled/`` or ``modelnet40_ply_hdf5_2048/``).
        classes: ``40`` or ``10`` (default: ``None``: 10 for a meshes folder named
            ``ModelNet10``, else 40). ModelNet10 from ``normal_resampled`` uses the
            ``modelnet10_*`` lists; a ModelNet40 meshes folder read with ``classes=10`` gives
            the shapes of those 10 classes.
        split: ``"train"`` or ``"test"`` (default: ``"train"``).
        format: ``"off"``, ``"normal_resampled"``, ``"hdf5"`` or ``"auto"`` to detect it from
            the folder's contents (default: ``"auto"``).
        num_points: points per shape (default: ``None``: 2048 drawn per mesh for ``"off"``,
            every point of the file otherwise, i.e. 10,000 and 2,048). For the point formats
            the first ``num_points`` points of each shape are kept, as PointNet and PointNet++
            do (PointNet++ uses 1024); a shape with fewer points is an error.
        use_normals: put the normals in ``x`` when the layout has them (default: ``True``).
        seed: seed of the surface sampling for ``"off"``; each shape's points depend only on
            this seed and the shape's id (default: ``0``).
        transform: applied to each item on access (default: ``None``).
        cache_dir: the folder the parsed cache is kept in (default: ``None``: the user cache,
            ``$PCATTN_CACHE`` or ``~/.cache/pcattn``; see :mod:`pcattn.data.base`).
        progress: show a progress bar while parsing (default: ``True``).
    """

    layout = _LAYOUT
    source = _SOURCE

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        classes: int | None = None,
        split: str = "train",
        format: str = "auto",
        num_points: int | None = None,
        use_normals: bool = True,
        seed: int = 0,
        transform: Callable[[Data], Data] | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        if classes not in (None, 10, 40):
            raise ValueError(f"ModelNet: classes must be 40 or 10, got {classes!r}")
        if split not in _SPLITS:
            raise ValueError(f"ModelNet: split must be 'train' or 'test', got {split!r}")
        if format not in ("auto", *FORMATS):
            raise ValueError(
                f"ModelNet: format must be 'auto', 'off', 'normal_resampled' or 'hdf5', "
                f"got {format!r}"
            )
        if num_points is not None and (
            isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1
        ):
            raise ValueError(f"ModelNet: num_points must be a positive int, got {num_points!r}")
        root = Path(root)
        self.name = f"ModelNet{classes or 40}"
        if format == "auto" and root.is_dir():
            format = self._detect(root)
        if classes is None:
            classes = 10 if format == "off" and root.name.lower() == "modelnet10" else 40
        self.num_classes = classes
        self.format = format
        self.name = f"ModelNet{classes} ({format})"
        if num_points is None and format == "off":
            num_points = _DEFAULT_OFF_POINTS
        self.num_points = num_points
        self.use_normals = use_normals
        self.seed = seed
        self.class_names: list[str] = []
        self._h5: tuple[Path, dict[str, np.ndarray]] | None = None  # the file being parsed
        super().__init__(
            root, split=split, transform=transform, cache_dir=cache_dir, progress=progress
        )
        self._h5 = None

    # --------------------------------------------------------------------------------------
    # layout

    def _detect(self, root: Path) -> str:
        found = []
        if any(root.glob("ply_data_*.h5")):
            found.append("hdf5")
        if any((root / f"modelnet{c}_shape_names.txt").is_file() for c in (40, 10)):
            found.append("normal_resampled")
        if any((root / c / s).is_dir() for c in MODELNET40_CLASSES for s in _SPLITS):
            found.append("off")
        if len(found) > 1:
            raise ValueError(
                f"{self.name}: {root} holds files of several layouts ({', '.join(found)}); "
                "pass format="
            )
        if not found:
            why = f"{root} holds none of the ModelNet layouts"
            inner = [n for n in _KNOWN_FOLDERS if (root / n).is_dir()]
            if inner:
                why += f" (it has the folder {inner[0]!r}: pass that as root)"
            raise self.missing_root(why)
        return found[0]

    def _entries(self) -> tuple[list[Entry], int]:
        if self.format == "off":
            return self._entries_off()
        if self.format == "normal_resampled":
            return self._entries_resampled()
        return self._entries_hdf5()

    def _entries_off(self) -> tuple[list[Entry], int]:
        official = MODELNET40_CLASSES if self.num_classes == 40 else MODELNET10_CLASSES
        self.class_names = list(official)
        folders = []
        for child in sorted(self.root.iterdir()):
            if not any((child / s).is_dir() for s in _SPLITS):
                continue  # not a class folder (e.g. the cache)
            if child.name not in MODELNET40_CLASSES:
                raise DatasetError(
                    f"{child}: unknown class folder {child.name!r} (not a ModelNet40 class)"
                )
            if child.name in official:
                folders.append(child)
        if not folders:
            raise self.missing_root(
                f"no class folders ({official[0]}/{self.split}/, {official[1]}/{self.split}/, "
                f"...) of ModelNet{self.num_classes} meshes under {self.root}"
            )
        entries = []
        for folder in sorted(folders, key=lambda f: official.index(f.name)):
            split_dir = folder / self.split
            if not split_dir.is_dir():
                continue
            for path in sorted(split_dir.iterdir()):
                if path.suffix.lower() == ".off" and path.is_file():
                    entries.append(Entry(path.stem, (path,), official.index(folder.name)))
        return entries, 0

    def _entries_resampled(self) -> tuple[list[Entry], int]:
        c = self.num_classes
        names_file = self.root / f"modelnet{c}_shape_names.txt"
        list_file = self.root / f"modelnet{c}_{self.split}.txt"
        for f in (names_file, list_file):
            if not f.is_file():
                raise self.missing_root(f"no {f.name} in {self.root}")
        self.class_names = _read_names(names_file, c)
        index = {n: i for i, n in enumerate(self.class_names)}
        entries, missing = [], 0
        for lineno, line in enumerate(_text_lines(list_file), 1):
            key = line.strip()
            if not key:
                continue
            if "/" in key or "\\" in key or key.startswith("."):
                raise DatasetError(
                    f"{list_file}:{lineno}: shape id {key!r} is not a plain file name (paths "
                    f"from a list stay inside {self.root})"
                )
            cls, sep, _ = key.rpartition("_")
            if not sep or not cls:
                raise DatasetError(
                    f"{list_file}:{lineno}: expected a shape id like 'airplane_0001', got {key!r}"
                )
            if cls not in index:
                raise DatasetError(
                    f"{list_file}:{lineno}: unknown class {cls!r} in {key!r} "
                    f"(not in {names_file.name})"
                )
            path = self.root / cls / f"{key}.txt"
            if path.is_file():
                entries.append(Entry(key, (path,), index[cls]))
            else:
                missing += 1
        return entries, missing

    def _entries_hdf5(self) -> tuple[list[Entry], int]:
        files = sorted(self.root.glob(f"ply_data_{self.split}*.h5"), key=_natural)
        if not files:
            raise self.missing_root(f"no ply_data_{self.split}*.h5 in {self.root}")
        names_file = self.root / "shape_names.txt"
        if not names_file.is_file():
            raise self.missing_root(f"no shape_names.txt in {self.root}")
        self.class_names = _read_names(names_file, self.num_classes)
        entries = []
        for path in files:
            labels = self._check_hdf5(path)
            keys = self._hdf5_keys(path, len(labels))
            entries += [
                Entry(k, (path,), int(lab), {"row": i})
                for i, (k, lab) in enumerate(zip(keys, labels, strict=True))
            ]
        return entries, 0

    def _check_hdf5(self, path: Path) -> np.ndarray:
        """Validate one PointNet HDF5 file's datasets; return its labels ``(S,)``."""
        try:
            with h5py.File(path, "r") as h5:
                for key in ("data", "label"):
                    if not isinstance(h5.get(key), h5py.Dataset):
                        found = ", ".join(sorted(map(str, h5))) or "-"
                        raise DatasetError(f"{path}: no {key!r} dataset (found: {found})")
                shape = h5["data"].shape
                label = read_h5_dataset(h5["label"], path, "label")
                normal = h5.get("normal")
                normal_shape = normal.shape if isinstance(normal, h5py.Dataset) else None
        except DatasetError:
            raise
        except Exception as err:  # HDF5 raises OSError, RuntimeError, KeyError, ... on damage
            raise DatasetError(f"{path}: not a readable HDF5 file ({err})") from None
        if len(shape) != 3 or shape[2] != 3 or shape[1] < 1:
            raise DatasetError(f"{path}: 'data' has shape {shape}, expected (shapes, points, 3)")
        s, p = shape[0], shape[1]
        if label.shape not in ((s,), (s, 1)):
            raise DatasetError(f"{path}: 'label' has shape {label.shape}, expected ({s}, 1)")
        label = label.reshape(-1)
        if not np.issubdtype(label.dtype, np.integer):
            if not (
                np.issubdtype(label.dtype, np.floating)
                and np.isfinite(label).all()
                and (label == np.round(label)).all()
            ):
                raise DatasetError(f"{path}: 'label' holds {label.dtype}, expected integers")
        bad = np.flatnonzero((label < 0) | (label >= self.num_classes))
        if bad.size:
            i = int(bad[0])
            raise DatasetError(
                f"{path}: label {label[i]} of shape {i} is out of range for the "
                f"{self.num_classes} classes of shape_names.txt"
            )
        if normal_shape is not None and normal_shape != shape:
            raise DatasetError(
                f"{path}: 'normal' has shape {normal_shape}, expected {shape} like 'data'"
            )
        if self.num_points is not None and self.num_points > p:
            raise DatasetError(
                f"{path}: has {p} points per shape, fewer than num_points={self.num_points}"
            )
        return label.astype(np.int64)

    @staticmethod
    def _hdf5_keys(path: Path, count: int) -> list[str]:
        """Shape ids from PointNet's ``ply_data_train_0_id2file.json`` beside
        ``ply_data_train0.h5`` when present, else ``<file stem>_<row>``."""
        m = re.fullmatch(r"(ply_data_\w+?)(\d+)", path.stem)
        ids = path.with_name(f"{m[1]}_{m[2]}_id2file.json") if m else None
        if ids is None or not ids.is_file():
            return [f"{path.stem}_{i}" for i in range(count)]
        try:
            names = json.loads(ids.read_bytes())
        except ValueError as err:
            raise DatasetError(f"{ids}: not valid JSON ({err})") from None
        if not (
            isinstance(names, list)
            and len(names) == count
            and all(isinstance(n, str) for n in names)
        ):
            raise DatasetError(f"{ids}: expected a list of {count} file names")
        return [Path(n).stem for n in names]

    # --------------------------------------------------------------------------------------
    # parsing

    def _params(self) -> dict:
        params = {
            "format": self.format,
            "classes": self.num_classes,
            "num_points": self.num_points,
            "use_normals": self.use_normals,
        }
        if self.format == "off":
            params["seed"] = self.seed
        return params

    def _read(self, entry: Entry) -> dict[str, np.ndarray]:
        path = entry.files[0]
        if self.format == "off":
            vertices, faces = parse_off(path.read_bytes(), str(path))
            try:
                pos, normal = sample_surface(
                    vertices, faces, self.num_points, seed=_shape_seed(self.seed, entry.key)
                )
            except ValueError as err:
                raise DatasetError(f"{path}: {err}") from None
        elif self.format == "normal_resampled":
            arr = parse_resampled_txt(path.read_bytes(), str(path))
            n = len(arr) if self.num_points is None else self.num_points
            if len(arr) < n:
                raise DatasetError(f"{path}: has {len(arr)} points, fewer than num_points={n}")
            pos, normal = arr[:n, :3], arr[:n, 3:]
        else:
            arrays = self._hdf5_arrays(path)
            row = entry.extra["row"]
            pos = arrays["data"][row, : self.num_points]
            if not np.isfinite(pos).all():
                raise DatasetError(f"{path}: shape {row} of 'data' has non-finite coordinates")
            normal = arrays["normal"][row, : self.num_points] if "normal" in arrays else None
            if normal is not None and not np.isfinite(normal).all():
                raise DatasetError(f"{path}: shape {row} of 'normal' has non-finite values")
        item = {"pos": np.asarray(pos, dtype=np.float32)}
        if self.use_normals and normal is not None:
            item["x"] = np.asarray(normal, dtype=np.float32)
        return item

    def _hdf5_arrays(self, path: Path) -> dict[str, np.ndarray]:
        """The arrays of the HDF5 file being parsed (read once per file)."""
        if self._h5 is None or self._h5[0] != path:
            try:
                with h5py.File(path, "r") as h5:
                    data = read_h5_dataset(h5["data"], path, "data")
                    arrays = {"data": np.asarray(data, dtype=np.float32)}
                    if self.use_normals and isinstance(h5.get("normal"), h5py.Dataset):
                        normal = read_h5_dataset(h5["normal"], path, "normal")
                        arrays["normal"] = np.asarray(normal, dtype=np.float32)
            except DatasetError:
                raise
            except Exception as err:  # damaged after the check, or the data block itself
                raise DatasetError(f"{path}: not a readable HDF5 file ({err})") from None
            self._h5 = (path, arrays)
        return self._h5[1]

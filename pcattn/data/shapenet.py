r"""ShapeNetPart: part segmentation of 16,881 ShapeNet shapes in 16 categories with 50 parts.

The part annotations are from Yi et al., *A Scalable Active Framework for Region Annotation in
3D Shape Collections* (SIGGRAPH Asia 2016, https://cs.stanford.edu/~ericyi/project_page/
part_annotation/); PointNet and PointNet++ made them the standard benchmark. Each shape is a
point cloud with one part label per point; a category owns a fixed, contiguous range of the 50
*global* part ids (:data:`CATEGORY_PARTS`), so a model can restrict its prediction to the parts
of the shape's category.

Three published layouts are read, each into the same items:

* ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` (PointNet++): ``<synset>/<id>.txt``
  with lines ``x y z nx ny nz part`` (the global part id written as a float), the official split
  lists ``train_test_split/shuffled_{train,val,test}_file_list.json`` (entries
  ``"shape_data/<synset>/<id>"``) and ``synsetoffset2category.txt`` (``Name<TAB>synset``);
* the original ``shapenetcore_partanno_segmentation_benchmark_v0``: ``<synset>/points/<id>.pts``
  (``x y z``) and ``<synset>/points_label/<id>.seg`` (one **1-based, per-category** part id a
  line, mapped here to the global id ``CATEGORY_PARTS[category][seg - 1]``), with the same split
  lists and ``synsetoffset2category.txt``; no normals;
* PointNet's ``hdf5_data`` (``shapenet_part_seg_hdf5_data``): ``ply_data_{train,val,test}<k>.h5``
  holding ``data`` ``(S, 2048, 3)``, ``label`` ``(S, 1)`` (category index) and ``pid``
  ``(S, 2048)`` (global part ids), with ``all_object_categories.txt`` naming the categories in
  label order when present (else the official alphabetical order, :data:`CATEGORIES`).

Category indices are always the positions in :data:`CATEGORIES` (alphabetical, as every
published table orders them), whatever the files call them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from .base import CachedDataset, DatasetError, Entry, read_h5_dataset

__all__ = [
    "CATEGORY_PARTS",
    "CATEGORIES",
    "NUM_CATEGORIES",
    "NUM_PARTS",
    "SYNSETS",
    "PART_TO_CATEGORY",
    "ShapeNetPart",
    "category_index",
    "category_part_mask",
    "parse_category_file",
    "parse_normal_txt",
    "parse_pts",
    "parse_seg",
    "parse_split_json",
    "part_to_category",
]

#: category name -> its global part ids (contiguous; 50 parts in all)
CATEGORY_PARTS: dict[str, list[int]] = {
    "Airplane": [0, 1, 2, 3],
    "Bag": [4, 5],
    "Cap": [6, 7],
    "Car": [8, 9, 10, 11],
    "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18],
    "Guitar": [19, 20, 21],
    "Knife": [22, 23],
    "Lamp": [24, 25, 26, 27],
    "Laptop": [28, 29],
    "Motorbike": [30, 31, 32, 33, 34, 35],
    "Mug": [36, 37],
    "Pistol": [38, 39, 40],
    "Rocket": [41, 42, 43],
    "Skateboard": [44, 45, 46],
    "Table": [47, 48, 49],
}
#: category names in index order (alphabetical): ``CATEGORIES[category_id]``
CATEGORIES: list[str] = sorted(CATEGORY_PARTS)
NUM_CATEGORIES: int = len(CATEGORIES)
NUM_PARTS: int = sum(len(p) for p in CATEGORY_PARTS.values())
#: category name -> ShapeNetCore synset id (the official 16, as in ``synsetoffset2category.txt``)
SYNSETS: dict[str, str] = {
    "Airplane": "02691156",
    "Bag": "02773838",
    "Cap": "02954340",
    "Car": "02958343",
    "Chair": "03001627",
    "Earphone": "03261776",
    "Guitar": "03467517",
    "Knife": "03624134",
    "Lamp": "03636649",
    "Laptop": "03642806",
    "Motorbike": "03790512",
    "Mug": "03797390",
    "Pistol": "03948459",
    "Rocket": "04099429",
    "Skateboard": "04225987",
    "Table": "04379243",
}
#: global part id -> category index, ``(NUM_PARTS,)``
PART_TO_CATEGORY: tuple[int, ...] = tuple(
    CATEGORIES.index(c) for c in CATEGORIES for _ in CATEGORY_PARTS[c]
)


def part_to_category(parts: np.ndarray | Sequence[int]) -> np.ndarray:
    """The category index of each global part id (any shape in, same shape out)."""
    return np.asarray(PART_TO_CATEGORY, dtype=np.int64)[np.asarray(parts, dtype=np.int64)]


def category_part_mask() -> np.ndarray:
    """``(NUM_CATEGORIES, NUM_PARTS)`` bool: ``mask[c, p]`` is whether part ``p`` belongs to
    category ``c`` (to restrict predictions to the shape's category, as the benchmark does)."""
    mask = np.zeros((NUM_CATEGORIES, NUM_PARTS), dtype=bool)
    for c, name in enumerate(CATEGORIES):
        mask[c, CATEGORY_PARTS[name]] = True
    return mask


def category_index(category: str) -> int:
    """The index of a category given by name (any case) or synset id; ``ValueError`` else."""
    for i, name in enumerate(CATEGORIES):
        if category.lower() == name.lower() or category == SYNSETS[name]:
            return i
    raise ValueError(
        f"unknown ShapeNetPart category {category!r}; expected one of {CATEGORIES} "
        "or their synset ids"
    )


# ------------------------------------------------------------------------------------------
# parsers: pure functions of the file's bytes and a name for messages

_FLOAT = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT = re.compile(rb"\d+")
_FLOAT_CHARS = re.compile(rb"[^0-9eE+\-. \t\r\n]")
_INT_CHARS = re.compile(rb"[^0-9 \t\r\n]")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_BY_LOWER_NAME = {c.lower(): c for c in CATEGORIES}


def _bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _show(token: bytes) -> str:
    text = token.decode("ascii", "replace")
    return repr(text if len(text) <= 24 else text[:21] + "...")


def _table(data: bytes, name: str, ncols: int, what: str, integer: bool) -> tuple:
    """Whitespace-separated numbers, ``ncols`` a line (blank lines skipped): the array and the
    1-based line number of each row. Errors name the file and line."""
    counts = np.array([len(line.split()) for line in data.split(b"\n")])
    wrong = np.flatnonzero((counts != 0) & (counts != ncols))
    if len(wrong):
        raise DatasetError(f"{name}:{wrong[0] + 1}: expected {what}, got {counts[wrong[0]]} values")
    lines = np.flatnonzero(counts) + 1
    if not len(lines):
        raise DatasetError(f"{name}: no points (the file has no data lines)")
    allowed = b"0123456789 \t\r\n" if integer else b"0123456789eE+-. \t\r\n"
    bad_char = None
    if data.translate(None, allowed):  # something else is in there: find where
        bad_char = (_INT_CHARS if integer else _FLOAT_CHARS).search(data)
    if bad_char is None:  # only digits, signs, points, exponents and blanks: Python's grammar
        try:
            values = list(map(int if integer else float, data.split()))
            arr = np.array(values, dtype=np.int64 if integer else np.float64)
            return arr.reshape(-1, ncols), lines
        except (ValueError, OverflowError):
            pass
    # slow path: find the first offending line
    pattern = _INT if integer else _FLOAT
    kind = "an integer" if integer else "a number"
    for no, line in enumerate(data.split(b"\n"), 1):
        for t in line.split():
            if not pattern.fullmatch(t):
                raise DatasetError(f"{name}:{no}: {_show(t)} is not {kind}")
            if integer and len(t.lstrip(b"0")) > 18:
                raise DatasetError(f"{name}:{no}: {_show(t)} is too large")
    if bad_char is not None:
        no = data.count(b"\n", 0, bad_char.start()) + 1
        raise DatasetError(f"{name}:{no}: unexpected byte 0x{data[bad_char.start()]:02x}")
    raise DatasetError(f"{name}: could not read the numbers")  # pragma: no cover


def _check_finite(arr: np.ndarray, lines: np.ndarray, name: str, what: str) -> None:
    ok = np.isfinite(arr).all(axis=1)
    if not ok.all():
        raise DatasetError(f"{name}:{lines[np.argmin(ok)]}: non-finite {what}")


def _part_range(category: str | None) -> tuple[int, int, str]:
    if category is None:
        return 0, NUM_PARTS - 1, "the global parts"
    parts = CATEGORY_PARTS[CATEGORIES[category_index(category)]]
    return parts[0], parts[-1], f"{CATEGORIES[category_index(category)]}'s parts"


def parse_normal_txt(data: bytes | str, name: str, category: str | None = None) -> np.ndarray:
    r"""Parse one ``_v0_normal`` shape: lines ``x y z nx ny nz part``.

    Args:
        data: the file's contents.
        name: the file's name, for messages.
        category: when given, every part must be one of this category's global ids
            (default: ``None``, any of the 50).

    Returns:
        ``(P, 7)`` float64 array, columns as in the file; the part column is integral.

    Raises:
        DatasetError: naming the file and line: wrong number of values, a non-number, a
            non-finite value, a part that is not an integer or not in the category's range.
    """
    arr, lines = _table(_bytes(data), name, 7, "7 values (x y z nx ny nz part)", integer=False)
    _check_finite(arr, lines, name, "value")
    part = arr[:, 6]
    lo, hi, what = _part_range(category)
    bad = (part != np.round(part)) | (part < lo) | (part > hi)
    if bad.any():
        i = int(np.argmax(bad))
        raise DatasetError(
            f"{name}:{lines[i]}: part label {part[i]:g} is not one of {what} {lo}-{hi}"
        )
    return arr


def parse_pts(data: bytes | str, name: str) -> np.ndarray:
    r"""Parse one ``_v0`` points file: lines ``x y z``.

    Returns:
        ``(P, 3)`` float64 array.

    Raises:
        DatasetError: naming the file and line (wrong count, non-number, non-finite).
    """
    arr, lines = _table(_bytes(data), name, 3, "3 coordinates (x y z)", integer=False)
    _check_finite(arr, lines, name, "coordinate")
    return arr


def parse_seg(data: bytes | str, name: str, category: str | None = None) -> np.ndarray:
    r"""Parse one ``_v0`` label file: one **1-based, per-category** part id a line.

    Args:
        data: the file's contents.
        name: the file's name, for messages.
        category: when given, every label must be in ``1 .. len(CATEGORY_PARTS[category])``
            (default: ``None``: in ``1 .. 6``, the most parts a category has).

    Returns:
        ``(P,)`` int64, the labels as written (1-based, per category). The global id is
        ``CATEGORY_PARTS[category][label - 1]``.

    Raises:
        DatasetError: naming the file and line (not an integer, out of range).
    """
    arr, lines = _table(_bytes(data), name, 1, "1 part label", integer=True)
    arr = arr[:, 0]
    if category is None:
        hi, what = max(len(p) for p in CATEGORY_PARTS.values()), "any category's parts"
    else:
        cat = CATEGORIES[category_index(category)]
        hi, what = len(CATEGORY_PARTS[cat]), f"{cat}'s parts"
    bad = (arr < 1) | (arr > hi)
    if bad.any():
        i = int(np.argmax(bad))
        raise DatasetError(f"{name}:{lines[i]}: part label {arr[i]} is not one of {what} 1-{hi}")
    return arr


def parse_split_json(data: bytes | str, name: str) -> list[tuple[str, str]]:
    r"""Parse an official split list: a JSON array of ``"shape_data/<synset>/<id>"``.

    Returns:
        ``[(synset, id), ...]`` in file order (the leading folder is ignored).

    Raises:
        DatasetError: naming the file (and line for invalid JSON, the entry otherwise).
    """
    try:
        obj = json.loads(_bytes(data))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{name}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:  # bad encoding, huge integers, deep nesting
        raise DatasetError(f"{name}: not valid JSON ({type(err).__name__})") from None
    if not isinstance(obj, list):
        raise DatasetError(f"{name}: expected a JSON list of 'shape_data/<synset>/<id>'")
    out = []
    for i, item in enumerate(obj):
        parts = item.split("/") if isinstance(item, str) else []
        if len(parts) < 2 or not all(_NAME.fullmatch(p) for p in parts[-2:]):
            shown = repr(item) if len(repr(item)) <= 80 else repr(item)[:77] + "..."
            raise DatasetError(f"{name}: entry {i} is {shown}, not 'shape_data/<synset>/<id>'")
        out.append((parts[-2], parts[-1]))
    return out


def parse_category_file(data: bytes | str, name: str) -> list[tuple[str, str]]:
    r"""Parse ``synsetoffset2category.txt`` or ``all_object_categories.txt``: lines
    ``Name synset`` (tab or space separated).

    Returns:
        ``[(category name as in CATEGORIES, synset), ...]`` in file order.

    Raises:
        DatasetError: naming the file and line (wrong count, unknown or repeated category).
    """
    raw = _bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        no = raw.count(b"\n", 0, err.start) + 1
        raise DatasetError(f"{name}:{no}: not UTF-8 text") from None
    out: list[tuple[str, str]] = []
    for no, line in enumerate(text.split("\n"), 1):
        toks = line.split()
        if not toks:
            continue
        if len(toks) != 2 or not _NAME.fullmatch(toks[1]):
            raise DatasetError(f"{name}:{no}: expected 'Name synset', got {line.strip()[:60]!r}")
        cat = _BY_LOWER_NAME.get(toks[0].lower())
        if cat is None:
            raise DatasetError(f"{name}:{no}: {toks[0][:40]!r} is not a ShapeNetPart category")
        if any(cat == c for c, _ in out):
            raise DatasetError(f"{name}:{no}: category {cat} is listed twice")
        out.append((cat, toks[1]))
    if not out:
        raise DatasetError(f"{name}: no categories listed")
    return out


# ------------------------------------------------------------------------------------------
# the reader

FOLDERS = {
    "normal": ("shapenetcore_partanno_segmentation_benchmark_v0_normal",),
    "v0": ("shapenetcore_partanno_segmentation_benchmark_v0",),
    "hdf5": ("hdf5_data", "shapenet_part_seg_hdf5_data"),
}
SPLITS = ("train", "val", "test", "trainval", "all")
_H5_NUMBER = re.compile(r"(\d+)\.h5$")


def _h5_files(folder: Path, split: str) -> list[Path]:
    def order(p: Path) -> tuple:
        m = _H5_NUMBER.search(p.name)
        return (p.name[: m.start()] if m else p.name, int(m.group(1)) if m else -1)

    names = ["train", "val", "test"] if split == "all" else [split]
    return [f for s in names for f in sorted(folder.glob(f"ply_data_{s}*.h5"), key=order)]


def _detect(folder: Path) -> str | None:
    """Which layout ``folder`` holds, if any."""
    if _h5_files(folder, "all"):
        return "hdf5"
    subs = [folder / s for s in SYNSETS.values() if (folder / s).is_dir()]
    if any((s / "points").is_dir() for s in subs):
        return "v0"
    if any(next(s.glob("*.txt"), None) is not None for s in subs):
        return "normal"
    return None


class ShapeNetPart(CachedDataset):
    r"""ShapeNetPart part segmentation from any of its three published layouts (module
    docstring).

    Items are :class:`~torch_geometric.data.Data` with ``pos (P, 3)``, ``x (P, 3)`` normals
    (``_v0_normal`` with ``use_normals``, or an HDF5 file with a ``normal`` dataset), ``y (P,)``
    the global part id of each point, ``category (1,)`` the category index into
    :data:`CATEGORIES`, and ``key`` (``"<synset>/<id>"``, or ``"<file>/<row>"`` for HDF5).

    Splits: ``"train"``, ``"val"``, ``"test"``, ``"trainval"`` (train then val) and ``"all"``
    (every shape on disk in synset-then-id order, or every HDF5 file; no split list needed).
    The text layouts take their split lists from ``split_dir`` when given, else from
    ``<root>/train_test_split``, else (the original ``_v0`` folder is sometimes kept without
    them) from a sibling ``shapenetcore_partanno_segmentation_benchmark_v0_normal/
    train_test_split``, which holds the same official lists. Listed shapes without files are
    skipped with one warning giving the count; a ``_v0`` shape with points but no labels counts
    as missing and gets its own warning. Every part label is checked against its category's
    range, and the error names the file and line (HDF5: file, row and point).

    Args:
        root: the layout's folder, or a folder holding it under its official name
            (:data:`FOLDERS`).
        split: one of ``"train"``, ``"val"``, ``"test"``, ``"trainval"``, ``"all"``
            (default: ``"trainval"``).
        categories: category names (any case) or synset ids to keep (default: ``None``, all).
            Category indices stay the global ones.
        format: ``"auto"``, ``"normal"``, ``"v0"`` or ``"hdf5"`` (default: ``"auto"``).
        use_normals: put the normals in ``x`` where the layout has them (default: ``True``).
        split_dir: a folder with ``shuffled_{train,val,test}_file_list.json`` (default:
            ``None``, see above).
        transform: applied to each item on access (default: ``None``).
        cache_dir: where the parsed arrays are kept (default: ``None``, see
            :class:`~pcattn.data.base.CachedDataset`).
        progress: show a progress bar while parsing (default: ``True``).
    """

    name = "ShapeNetPart"
    layout = """\
<root>/ is one of these (or a folder holding one of them under this name):
  shapenetcore_partanno_segmentation_benchmark_v0_normal/
    synsetoffset2category.txt                   Name<TAB>synset, one category a line
    train_test_split/shuffled_{train,val,test}_file_list.json
    <synset>/<id>.txt                           x y z nx ny nz part (global part id 0-49)
  shapenetcore_partanno_segmentation_benchmark_v0/
    synsetoffset2category.txt, train_test_split/ (as above)
    <synset>/points/<id>.pts                    x y z
    <synset>/points_label/<id>.seg              part id 1..n within the category
  hdf5_data/  (or shapenet_part_seg_hdf5_data/)
    ply_data_{train,val,test}<k>.h5             data (S,2048,3), label (S,1), pid (S,2048)
    all_object_categories.txt                   (optional) category names in label order"""
    source = (
        "ShapeNet part annotations (Yi et al., SIGGRAPH Asia 2016), "
        "https://cs.stanford.edu/~ericyi/project_page/part_annotation/ : the archives "
        "shapenetcore_partanno_segmentation_benchmark_v0_normal.zip (PointNet++), "
        "shapenetcore_partanno_segmentation_benchmark_v0.zip and "
        "shapenet_part_seg_hdf5_data.zip (PointNet) from https://shapenet.cs.stanford.edu/ "
        "(ShapeNet terms: non-commercial research use)"
    )

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str = "trainval",
        categories: Iterable[str] | None = None,
        format: str = "auto",
        use_normals: bool = True,
        split_dir: str | os.PathLike | None = None,
        transform: Callable[[Data], Data] | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"ShapeNetPart: split must be one of {SPLITS}, got {split!r}")
        if format not in ("auto", *FOLDERS):
            raise ValueError(
                f"ShapeNetPart: format must be 'auto', 'normal', 'v0' or 'hdf5', got {format!r}"
            )
        if isinstance(categories, str):
            categories = [categories]
        self.keep = None if categories is None else sorted({category_index(c) for c in categories})
        self.use_normals = use_normals
        self.split_dir = None if split_dir is None else Path(split_dir)
        self.format = format
        self._h5: tuple[Path, dict[str, np.ndarray]] | None = None
        root = Path(root)
        if root.is_dir():
            root, self.format = self._locate(root, format)
        super().__init__(
            root, split=split, transform=transform, cache_dir=cache_dir, progress=progress
        )

    def _locate(self, root: Path, format: str) -> tuple[Path, str]:
        wanted = list(FOLDERS) if format == "auto" else [format]
        found = _detect(root)
        if found in wanted:
            return root, found
        for fmt in wanted:
            for sub in FOLDERS[fmt]:
                if (root / sub).is_dir() and _detect(root / sub) == fmt:
                    return root / sub, fmt
        what = "any ShapeNetPart layout" if format == "auto" else f"the {format!r} layout"
        raise self.missing_root(f"{root} does not hold {what}")

    def _params(self) -> dict:
        return {"format": self.format, "use_normals": self.use_normals}

    # -- index ---------------------------------------------------------------------------------

    def _entries(self) -> tuple[list[Entry], int]:
        self.name = f"ShapeNetPart ({self.format})"
        if self.format == "hdf5":
            return self._h5_entries()
        synset_to_cat = self._synsets()
        if self.split == "all":
            listed = [
                (syn, p.name[: -len(self._suffix)])
                for syn in sorted(synset_to_cat)
                for p in sorted(self._shape_folder(syn).glob("*" + self._suffix))
            ]
        else:
            listed = []
            for s in ("train", "val") if self.split == "trainval" else (self.split,):
                path = self._split_folder() / f"shuffled_{s}_file_list.json"
                if not path.is_file():
                    raise self.missing_root(f"the split list {path} is missing")
                for syn, sid in parse_split_json(path.read_bytes(), str(path)):
                    if syn not in synset_to_cat:
                        raise DatasetError(f"{path}: synset {syn!r} is not a ShapeNetPart category")
                    listed.append((syn, sid))
        entries, missing, unlabelled = [], 0, 0
        present: dict[str, set[str]] = {}
        for syn, sid in listed:
            cat = synset_to_cat[syn]
            if self.keep is not None and cat not in self.keep:
                continue
            if syn not in present:
                present[syn] = self._files_in(syn)
            files = self._files(syn, sid)
            if not all(f.name in present[syn] for f in files):
                missing += 1
                unlabelled += files[0].name in present[syn]
                continue
            entries.append(Entry(f"{syn}/{sid}", files, cat))
        if unlabelled:
            warnings.warn(
                f"{self.name}: {unlabelled} shapes of the {self.split!r} split have points but "
                f"no points_label/*.seg file under {self.root}; skipped",
                stacklevel=4,
            )
        return entries, missing

    @property
    def _suffix(self) -> str:
        return ".txt" if self.format == "normal" else ".pts"

    def _shape_folder(self, synset: str) -> Path:
        return self.root / synset / ("points" if self.format == "v0" else "")

    def _files(self, synset: str, sid: str) -> tuple[Path, ...]:
        if self.format == "normal":
            return (self.root / synset / f"{sid}.txt",)
        return (
            self.root / synset / "points" / f"{sid}.pts",
            self.root / synset / "points_label" / f"{sid}.seg",
        )

    def _files_in(self, synset: str) -> set[str]:
        """The file names present for one synset (one listing per folder, not a stat a shape)."""
        folders = [self.root / synset]
        if self.format == "v0":
            folders = [self.root / synset / "points", self.root / synset / "points_label"]
        return {n for f in folders if f.is_dir() for n in os.listdir(f)}

    def _synsets(self) -> dict[str, int]:
        """synset -> category index, from ``synsetoffset2category.txt`` when present."""
        path = self.root / "synsetoffset2category.txt"
        pairs = (
            parse_category_file(path.read_bytes(), str(path))
            if path.is_file()
            else list(SYNSETS.items())
        )
        return {syn: CATEGORIES.index(cat) for cat, syn in pairs}

    def _split_folder(self) -> Path:
        if self.split_dir is not None:
            return self.split_dir
        own = self.root / "train_test_split"
        sibling = self.root.parent / FOLDERS["normal"][0] / "train_test_split"
        if own.is_dir() or self.format != "v0" or not sibling.is_dir():
            return own
        return sibling

    def _h5_entries(self) -> tuple[list[Entry], int]:
        names = CATEGORIES
        path = self.root / "all_object_categories.txt"
        if path.is_file():
            names = [c for c, _ in parse_category_file(path.read_bytes(), str(path))]
        parts = ("train", "val") if self.split == "trainval" else (self.split,)
        entries = []
        for f in [f for s in parts for f in _h5_files(self.root, s)]:
            labels = _h5_arrays(f, ("label",))["label"]
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.ndim != 1:
                raise DatasetError(f"{f}: label has shape {labels.shape}, expected (S, 1)")
            bad = ~np.isin(labels, np.arange(len(names)))
            if bad.any():
                row = int(np.argmax(bad))
                raise DatasetError(
                    f"{f}: row {row}: category label {labels[row]} is not in 0-{len(names) - 1}"
                )
            for row, v in enumerate(labels.astype(np.int64).tolist()):
                cat = CATEGORIES.index(names[v])
                if self.keep is None or cat in self.keep:
                    entries.append(Entry(f"{f.name}/{row}", (f,), cat, {"row": row}))
        return entries, 0

    # -- parse ---------------------------------------------------------------------------------

    def _read(self, entry: Entry) -> dict[str, np.ndarray]:
        cat = CATEGORIES[entry.label]
        if self.format == "hdf5":
            return self._h5_read(entry, cat)
        if self.format == "normal":
            (path,) = entry.files
            arr = parse_normal_txt(path.read_bytes(), str(path), category=cat)
            out = {"pos": arr[:, :3].astype(np.float32), "point_y": arr[:, 6].astype(np.int64)}
            if self.use_normals:
                out["x"] = arr[:, 3:6].astype(np.float32)
            return out
        pts_path, seg_path = entry.files
        pts = parse_pts(pts_path.read_bytes(), str(pts_path))
        seg = parse_seg(seg_path.read_bytes(), str(seg_path), category=cat)
        if len(pts) != len(seg):
            raise DatasetError(
                f"{pts_path} has {len(pts)} points but {seg_path} has {len(seg)} labels"
            )
        parts = np.asarray(CATEGORY_PARTS[cat], dtype=np.int64)
        return {"pos": pts.astype(np.float32), "point_y": parts[seg - 1]}

    def _h5_read(self, entry: Entry, cat: str) -> dict[str, np.ndarray]:
        (path,) = entry.files
        if self._h5 is None or self._h5[0] != path:  # shapes come file by file: load each once
            self._h5 = (path, _h5_arrays(path, ("data", "pid"), optional=("normal",)))
        arrays = self._h5[1]
        row = entry.extra["row"]
        pos, pid = arrays["data"][row], arrays["pid"][row]
        bad = ~np.isfinite(pos).all(axis=1)
        if bad.any():
            raise DatasetError(f"{path}: row {row}, point {int(np.argmax(bad))}: non-finite data")
        lo, hi = CATEGORY_PARTS[cat][0], CATEGORY_PARTS[cat][-1]
        bad = (pid < lo) | (pid > hi) | (pid != np.round(pid))
        if bad.any():
            k = int(np.argmax(bad))
            raise DatasetError(
                f"{path}: row {row}, point {k}: part {pid[k]} is not one of {cat}'s parts {lo}-{hi}"
            )
        out = {"pos": pos.astype(np.float32), "point_y": pid.astype(np.int64)}
        if self.use_normals and "normal" in arrays:
            out["x"] = arrays["normal"][row].astype(np.float32)
        return out


def _h5_arrays(path: Path, names: Sequence[str], optional: Sequence[str] = ()) -> dict:
    """Datasets of one PointNet HDF5 file, with their shapes checked; errors name the file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            absent = [n for n in names if n not in f]
            if absent:
                raise DatasetError(
                    f"{path}: no {absent[0]!r} dataset (has {sorted(f.keys())}; expected "
                    "data, label, pid)"
                )
            out = {
                n: read_h5_dataset(f[n], path, n)
                for n in [*names, *(o for o in optional if o in f)]
            }
    except OSError as err:
        raise DatasetError(f"{path}: not a readable HDF5 file ({err})") from None
    for n, a in out.items():
        if a.dtype.kind not in "biuf" or a.ndim == 0:
            raise DatasetError(f"{path}: {n} is not a numeric array ({a.dtype}, {a.shape})")
    rows = {len(a) for a in out.values()}
    if "data" in out and (out["data"].ndim != 3 or out["data"].shape[2] != 3):
        raise DatasetError(f"{path}: data has shape {out['data'].shape}, expected (S, P, 3)")
    for n in ("pid", "normal"):
        if n in out and "data" in out and out[n].shape[:2] != out["data"].shape[:2]:
            raise DatasetError(
                f"{path}: {n} has shape {out[n].shape}, data has {out['data'].shape}"
            )
    if len(rows) > 1:
        raise DatasetError(f"{path}: datasets have different numbers of rows")
    return out

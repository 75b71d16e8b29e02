"""ShapeNetPart: the category/part tables, the three layouts on the real samples and on files
written here in the official layout, every error, parser fuzzing and the cache."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.loader import DataLoader

from pcattn.data.base import DatasetError
from pcattn.data.shapenet import (
    CATEGORIES,
    CATEGORY_PARTS,
    NUM_PARTS,
    PART_TO_CATEGORY,
    SYNSETS,
    ShapeNetPart,
    category_index,
    category_part_mask,
    parse_category_file,
    parse_normal_txt,
    parse_pts,
    parse_seg,
    parse_split_json,
    part_to_category,
)

pytestmark = pytest.mark.filterwarnings("ignore:ShapeNetPart")

NORMAL = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
V0 = "shapenetcore_partanno_segmentation_benchmark_v0"
TABLE, SKATEBOARD = "04379243", "04225987"
TABLE_TRAIN, TABLE_TEST = "1a2abbc9712e2fffc3bd24f986301745", "1a00aa6b75362cc5b324368d54a7416f"
V0_TABLE = "1011e1c9812b84d2a9ed7bb5b55809f8"
# the published table (as the dataset's documentation lists it), written out independently
RANGES = {
    "Airplane": (0, 3), "Bag": (4, 5), "Cap": (6, 7), "Car": (8, 11), "Chair": (12, 15),
    "Earphone": (16, 18), "Guitar": (19, 21), "Knife": (22, 23), "Lamp": (24, 27),
    "Laptop": (28, 29), "Motorbike": (30, 35), "Mug": (36, 37), "Pistol": (38, 40),
    "Rocket": (41, 43), "Skateboard": (44, 46), "Table": (47, 49),
}  # fmt: skip


def _synset_names(folder: Path) -> dict[str, str]:
    """synset -> name, read with plain string handling."""
    lines = (folder / "synsetoffset2category.txt").read_text().splitlines()
    return {ln.split()[1]: ln.split()[0] for ln in lines if ln.strip()}


def _expected(folder: Path, splits, exists) -> tuple[list[str], int]:
    """Keys of the listed shapes that ``exists`` says are on disk (split order) and the
    number listed without, computed from the JSON lists directly."""
    keys, missing = [], 0
    for s in splits:
        listed = json.loads(
            (folder / "train_test_split" / f"shuffled_{s}_file_list.json").read_text()
        )
        for item in listed:
            _, syn, sid = item.split("/")
            if exists(folder, syn, sid):
                keys.append(f"{syn}/{sid}")
            else:
                missing += 1
    return keys, missing


def _normal_exists(folder, syn, sid):
    return (folder / syn / f"{sid}.txt").is_file()


def _v0_exists(folder, syn, sid):
    return (folder / syn / "points" / f"{sid}.pts").is_file()


def _load(folder, split, cache, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ShapeNetPart(folder, split=split, cache_dir=cache, progress=False, **kw)


# ------------------------------------------------------------------------------------------
# tables


def test_category_part_tables(data_root):
    assert CATEGORIES == sorted(RANGES) and len(CATEGORIES) == 16 and NUM_PARTS == 50
    assert {c: (p[0], p[-1]) for c, p in CATEGORY_PARTS.items()} == RANGES
    assert all(p == list(range(p[0], p[-1] + 1)) for p in CATEGORY_PARTS.values())
    assert sorted(q for p in CATEGORY_PARTS.values() for q in p) == list(range(50))
    assert PART_TO_CATEGORY[30:36] == (10,) * 6 and CATEGORIES[10] == "Motorbike"
    assert part_to_category([[0, 49], [45, 19]]).tolist() == [[0, 15], [14, 6]]
    mask = category_part_mask()
    assert mask.shape == (16, 50) and mask.sum(1).tolist() == [
        RANGES[c][1] - RANGES[c][0] + 1 for c in CATEGORIES
    ]
    assert mask[4, 12:16].all() and not mask[4, 16]
    # the built-in synsets are those of the official file
    names = _synset_names(data_root / NORMAL)
    assert {v: k for k, v in names.items()} == SYNSETS
    assert category_index("chair") == 4 and category_index("04379243") == 15
    with pytest.raises(ValueError, match=r"unknown ShapeNetPart category 'Sofa'"):
        category_index("Sofa")


# ------------------------------------------------------------------------------------------
# the real samples


@pytest.mark.parametrize(
    "split, lists, n",
    [("train", ["train"], 3), ("test", ["test"], 1), ("trainval", ["train", "val"], 3)],
)
def test_normal_real_splits(data_root, tmp_path, split, lists, n):
    folder = data_root / NORMAL
    keys, missing = _expected(folder, lists, _normal_exists)
    assert len(keys) == n
    with pytest.warns(UserWarning, match=rf"{missing} of {missing + n} items of the '{split}'"):
        ds = ShapeNetPart(folder, split=split, cache_dir=tmp_path, progress=False)
    assert [e.key for e in ds.entries] == keys and ds.num_missing == missing
    assert ds.format == "normal"
    names = _synset_names(folder)
    for item in ds:
        syn, sid = item.key.split("/")
        raw = np.loadtxt(folder / syn / f"{sid}.txt")
        assert torch.equal(item.pos, torch.from_numpy(raw[:, :3].astype(np.float32)))
        assert torch.equal(item.x, torch.from_numpy(raw[:, 3:6].astype(np.float32)))
        assert item.y.dtype == torch.int64 and item.y.tolist() == raw[:, 6].astype(int).tolist()
        lo, hi = RANGES[names[syn]]
        assert lo <= item.y.min() and item.y.max() <= hi
        assert item.category.tolist() == [sorted(RANGES).index(names[syn])]


def test_normal_real_counts_by_category(data_root, tmp_path):
    folder = data_root / NORMAL
    ds = _load(folder, "all", tmp_path)
    cats = [CATEGORIES[int(c)] for c in ds.labels()]
    assert len(ds) == 4 and sorted(cats) == ["Skateboard", "Skateboard", "Table", "Table"]
    train = _load(folder, "train", tmp_path)
    assert sorted(CATEGORIES[int(c)] for c in train.labels()) == ["Skateboard"] * 2 + ["Table"]
    assert [e.key for e in _load(folder, "test", tmp_path).entries] == [f"{TABLE}/{TABLE_TEST}"]
    with pytest.raises(FileNotFoundError, match=r"none of the 1870 items of the 'val' split"):
        _load(folder, "val", tmp_path)
    no_normals = _load(folder, "all", tmp_path, use_normals=False)
    assert no_normals[0].x is None and torch.equal(no_normals[0].pos, ds[0].pos)
    # the category filter keeps global category indices
    tables = _load(folder, "all", tmp_path, categories=["table"])
    assert [e.key.split("/")[0] for e in tables.entries] == [TABLE, TABLE]
    assert tables.labels().tolist() == [15, 15]
    # a parent folder holding the layout under its official name
    assert [e.key for e in _load(data_root, "all", tmp_path / "p", format="normal").entries] == [
        e.key for e in ds.entries
    ]


def test_v0_real_samples(data_root, tmp_path):
    folder = data_root / V0
    ds = _load(folder, "all", tmp_path)
    names = _synset_names(folder)
    cats = sorted(names[e.key.split("/")[0]] for e in ds.entries)
    assert ds.format == "v0" and len(ds) == 10
    assert cats == sorted(
        [
            "Airplane",
            "Bag",
            "Car",
            "Chair",
            "Guitar",
            "Lamp",
            "Laptop",
            "Mug",
            "Skateboard",
            "Table",
        ]
    )
    for item in ds:
        syn, sid = item.key.split("/")
        pts = np.loadtxt(folder / syn / "points" / f"{sid}.pts")
        seg = np.loadtxt(folder / syn / "points_label" / f"{sid}.seg").astype(int)
        lo, hi = RANGES[names[syn]]
        assert item.x is None and torch.equal(item.pos, torch.from_numpy(pts.astype(np.float32)))
        assert item.y.tolist() == (lo + seg - 1).tolist()
        assert lo <= item.y.min() and item.y.max() <= hi
        assert CATEGORIES[int(item.category)] == names[syn]
    for split, lists in [("train", ["train"]), ("test", ["test"]), ("trainval", ["train", "val"])]:
        keys, missing = _expected(folder, lists, _v0_exists)
        got = _load(folder, split, tmp_path)
        assert [e.key for e in got.entries] == keys and got.num_missing == missing
    assert len(_load(folder, "train", tmp_path)) == 9
    assert [e.key for e in _load(folder, "test", tmp_path).entries] == [f"{TABLE}/{V0_TABLE}"]
    some = _load(folder, "all", tmp_path, categories=["Chair", "03636649"])
    assert sorted(some.labels().tolist()) == [4, 8]
    # PyG's loader batches the items
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch.num_graphs == 3 and batch.category.tolist() == ds.labels()[:3].tolist()
    assert batch.y.shape == batch.batch.shape == (sum(len(ds[i].pos) for i in range(3)),)


# ------------------------------------------------------------------------------------------
# layouts made here from real files


def _make_normal(data_root, root, ids, lists):
    """A ``_v0_normal`` folder with the given real Table shapes and split lists."""
    src = data_root / NORMAL
    (root / TABLE).mkdir(parents=True)
    (root / "train_test_split").mkdir()
    shutil.copy(src / "synsetoffset2category.txt", root)
    for sid in ids:
        shutil.copy(src / TABLE / f"{sid}.txt", root / TABLE)
    for s, listed in lists.items():
        items = [f"shape_data/{TABLE}/{sid}" for sid in listed]
        (root / "train_test_split" / f"shuffled_{s}_file_list.json").write_text(json.dumps(items))
    return root


def _make_v0(data_root, root, splits=True):
    """A ``_v0`` folder with the real Table shape (in the test split when ``splits``)."""
    src = data_root / V0 / TABLE
    for sub, ext in [("points", "pts"), ("points_label", "seg")]:
        (root / TABLE / sub).mkdir(parents=True)
        shutil.copy(src / sub / f"{V0_TABLE}.{ext}", root / TABLE / sub)
    if splits:
        _write_lists(root / "train_test_split", {"train": [], "val": [], "test": [V0_TABLE]})
    return root


def _write_lists(folder, lists):
    folder.mkdir(parents=True)
    for s, listed in lists.items():
        items = [f"shape_data/{TABLE}/{sid}" for sid in listed]
        (folder / f"shuffled_{s}_file_list.json").write_text(json.dumps(items))


def test_out_of_range_label_names_file_and_line(data_root, tmp_path):
    root = _make_normal(data_root, tmp_path / NORMAL, [TABLE_TRAIN], {"train": [TABLE_TRAIN]})
    path = root / TABLE / f"{TABLE_TRAIN}.txt"
    lines = path.read_text().splitlines()
    lines[4] = " ".join(lines[4].split()[:6] + ["45.000000"])  # a Skateboard part, line 5
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetError,
        match=rf"{TABLE_TRAIN}\.txt:5: part label 45 is not one of Table's parts 47-49",
    ):
        _load(root, "train", tmp_path / "c")


def test_v0_errors(data_root, tmp_path):
    root = _make_v0(data_root, tmp_path / V0)
    seg = root / TABLE / "points_label" / f"{V0_TABLE}.seg"
    good = seg.read_text().splitlines()
    seg.write_text("\n".join(good[:6] + ["4"] + good[7:]) + "\n")  # Table has 3 parts
    with pytest.raises(
        DatasetError, match=rf"{V0_TABLE}\.seg:7: part label 4 is not one of Table's parts 1-3"
    ):
        _load(root, "test", tmp_path / "c")
    seg.write_text("\n".join(good[:-1]) + "\n")
    with pytest.raises(
        DatasetError,
        match=rf"points/{V0_TABLE}\.pts has 2786 points but .*points_label/{V0_TABLE}\.seg has "
        "2785 labels",
    ):
        _load(root, "test", tmp_path / "c")
    seg.write_text("\n".join(good) + "\n")
    pts = root / TABLE / "points" / f"{V0_TABLE}.pts"
    rows = pts.read_text().splitlines()
    pts.write_text("\n".join(rows[:2] + ["nan 0 0"] + rows[3:]))
    with pytest.raises(DatasetError, match=rf"{V0_TABLE}\.pts:3: 'nan' is not a number"):
        _load(root, "test", tmp_path / "c")
    pts.write_text("\n".join(rows[:2] + ["1e999 0 0"] + rows[3:]))
    with pytest.raises(DatasetError, match=rf"{V0_TABLE}\.pts:3: non-finite coordinate"):
        _load(root, "test", tmp_path / "c")
    pts.write_text("\n".join(rows[:2] + ["1 0"] + rows[3:]))
    with pytest.raises(DatasetError, match=rf"{V0_TABLE}\.pts:3: expected 3 coordinates .*got 2"):
        _load(root, "test", tmp_path / "c")
    # points without labels: skipped, counted, and said
    seg.unlink()
    with pytest.warns(UserWarning, match=r"1 shapes of the 'all' split have points but no"):
        with pytest.raises(FileNotFoundError, match=r"none of the 1 items of the 'all' split"):
            ShapeNetPart(root, split="all", cache_dir=tmp_path / "c", progress=False)


def test_v0_split_lists_from_elsewhere(data_root, tmp_path):
    # no train_test_split of its own: the sibling _v0_normal's lists are used
    root = _make_v0(data_root, tmp_path / "a" / V0, splits=False)
    _write_lists(tmp_path / "a" / NORMAL / "train_test_split", {"train": [V0_TABLE]})
    assert [e.key for e in _load(root, "train", tmp_path / "c").entries] == [f"{TABLE}/{V0_TABLE}"]
    # split_dir wins over everything
    _write_lists(tmp_path / "mine", {"test": [V0_TABLE, "0" * 32]})
    ds = _load(root, "test", tmp_path / "c", split_dir=tmp_path / "mine")
    assert len(ds) == 1 and ds.num_missing == 1
    # nothing to be found: the error says which list is missing
    lone = _make_v0(data_root, tmp_path / "b" / V0, splits=False)
    with pytest.raises(FileNotFoundError, match=r"the split list .*shuffled_train_file_list\.json"):
        _load(lone, "train", tmp_path / "c")
    assert len(_load(lone, "all", tmp_path / "c")) == 1  # "all" needs no list


def test_split_list_errors(data_root, tmp_path):
    root = _make_normal(data_root, tmp_path / NORMAL, [TABLE_TRAIN], {"train": [TABLE_TRAIN]})
    bad = root / "train_test_split" / "shuffled_train_file_list.json"
    bad.write_text(f'[\n"shape_data/{TABLE}/{TABLE_TRAIN}",\n')
    with pytest.raises(DatasetError, match=r"shuffled_train_file_list\.json:3: not valid JSON"):
        _load(root, "train", tmp_path / "c")
    bad.write_text('["shape_data/99999999/abc"]')
    with pytest.raises(DatasetError, match=r"synset '99999999' is not a ShapeNetPart category"):
        _load(root, "train", tmp_path / "c")
    bad.write_text('["shape_data/../../etc"]')
    with pytest.raises(DatasetError, match=r"entry 0 is 'shape_data/\.\./\.\./etc', not"):
        _load(root, "train", tmp_path / "c")


def test_wrong_root_and_arguments(data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ShapeNetPart: .*nope is not a folder") as err:
        ShapeNetPart(tmp_path / "nope", cache_dir=tmp_path)
    msg = str(err.value)
    assert "Expected layout:" in msg and "<synset>/points_label/<id>.seg" in msg
    assert "shuffled_{train,val,test}_file_list.json" in msg and "ply_data_{train,val,test}" in msg
    assert "Get it from:" in msg and "Yi et al." in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty does not hold any ShapeNetPart layout"):
        ShapeNetPart(tmp_path / "empty", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"does not hold the 'hdf5' layout"):
        ShapeNetPart(data_root / NORMAL, format="hdf5", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"split must be one of .* got 'training'"):
        ShapeNetPart(data_root / NORMAL, split="training", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"format must be .* got 'ply'"):
        ShapeNetPart(data_root / NORMAL, format="ply", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown ShapeNetPart category 'sofa'"):
        ShapeNetPart(data_root / NORMAL, categories=["sofa"], cache_dir=tmp_path)


def test_cache_is_reused_and_rebuilt(data_root, tmp_path, monkeypatch):
    root = _make_normal(data_root, tmp_path / NORMAL, [TABLE_TRAIN, TABLE_TEST], {})
    reads = []
    real_read = ShapeNetPart._read
    monkeypatch.setattr(
        ShapeNetPart, "_read", lambda self, e: reads.append(e.key) or real_read(self, e)
    )
    first = _load(root, "all", tmp_path / "c")
    assert len(reads) == 2
    second = _load(root, "all", tmp_path / "c")
    assert len(reads) == 2  # nothing parsed again
    assert all(torch.equal(first[i].pos, second[i].pos) for i in range(2))
    assert torch.equal(first[1].y, second[1].y)
    # options that change the arrays, or a changed file, parse again
    _load(root, "all", tmp_path / "c", use_normals=False)
    assert len(reads) == 4
    path = root / TABLE / f"{TABLE_TEST}.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:100]) + "\n")
    third = _load(root, "all", tmp_path / "c")
    assert len(reads) == 6 and len(third[0].pos) == 100


# ------------------------------------------------------------------------------------------
# PointNet's HDF5 files, written here in the official layout


def _write_h5(path, labels, rng, points=2048, normals=False):
    labels = np.asarray(labels, dtype=np.uint8)
    lo = np.array([RANGES[CATEGORIES[c]][0] for c in labels])
    hi = np.array([RANGES[CATEGORIES[c]][1] for c in labels])
    pid = rng.integers(lo[:, None], hi[:, None] + 1, size=(len(labels), points)).astype(np.uint8)
    data = rng.standard_normal((len(labels), points, 3)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=labels[:, None])
        f.create_dataset("pid", data=pid)
        if normals:
            f.create_dataset("normal", data=data[..., ::-1] * 2)
    return data, labels, pid


@pytest.fixture
def h5_root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "hdf5_data"
    root.mkdir()
    files = {
        "ply_data_train0.h5": [4, 15, 0],
        "ply_data_train2.h5": [10],
        "ply_data_train10.h5": [14, 4],
        "ply_data_val0.h5": [8, 15],
        "ply_data_test0.h5": [0],
    }
    written = {name: _write_h5(root / name, labels, rng) for name, labels in files.items()}
    return root, written


def _h5_expected(written, names):
    return [(f"{n}/{r}", written[n]) for n in names for r in range(len(written[n][1]))]


def test_hdf5_splits(h5_root, tmp_path):
    root, written = h5_root
    trains = ["ply_data_train0.h5", "ply_data_train2.h5", "ply_data_train10.h5"]  # numeric order
    for split, names in [
        ("train", trains),
        ("val", ["ply_data_val0.h5"]),
        ("test", ["ply_data_test0.h5"]),
        ("trainval", [*trains, "ply_data_val0.h5"]),
    ]:
        ds = ShapeNetPart(tmp_path, split=split, cache_dir=tmp_path / "c", progress=False)
        expected = _h5_expected(written, names)
        assert ds.format == "hdf5" and ds.num_missing == 0
        assert [e.key for e in ds.entries] == [k for k, _ in expected]
        for item, (key, (data, labels, pid)) in zip(ds, expected, strict=True):
            row = int(key.split("/")[1])
            assert torch.equal(item.pos, torch.from_numpy(data[row]))
            assert item.y.tolist() == pid[row].tolist() and item.x is None
            assert item.category.tolist() == [int(labels[row])]
    assert len(ShapeNetPart(root, split="train", cache_dir=tmp_path / "c", progress=False)) == 6
    every = ShapeNetPart(root, split="all", cache_dir=tmp_path / "c", progress=False)
    assert every.labels().tolist() == [4, 15, 0, 10, 14, 4, 8, 15, 0]
    chairs = ShapeNetPart(root, split="trainval", categories=["Chair"], cache_dir=tmp_path / "c")
    assert [e.key for e in chairs.entries] == ["ply_data_train0.h5/0", "ply_data_train10.h5/1"]


def test_hdf5_category_file_and_normals(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "shapenet_part_seg_hdf5_data"
    root.mkdir()
    _, _, _ = _write_h5(root / "ply_data_test0.h5", [0, 1], rng, points=16)
    # a file listing the categories in reverse: label 0 is Table, label 1 is Skateboard
    order = CATEGORIES[::-1]
    (root / "all_object_categories.txt").write_text("".join(f"{c}\t{SYNSETS[c]}\n" for c in order))
    with h5py.File(root / "ply_data_test0.h5", "a") as f:
        del f["pid"]
        f["pid"] = np.array([[47] * 16, [44, 45, 46, 45] * 4], dtype=np.uint8)
    ds = ShapeNetPart(root, split="test", cache_dir=tmp_path / "c", progress=False)
    assert ds.labels().tolist() == [15, 14] and ds[1].y.tolist() == [44, 45, 46, 45] * 4
    data, _, _ = _write_h5(root / "ply_data_val0.h5", [15], rng, points=8, normals=True)
    (root / "all_object_categories.txt").unlink()
    val = ShapeNetPart(root, split="val", cache_dir=tmp_path / "c", progress=False)
    assert torch.equal(val[0].x, torch.from_numpy(data[0, :, ::-1] * 2))
    assert ShapeNetPart(root, split="val", use_normals=False, cache_dir=tmp_path / "c")[0].x is None


def test_hdf5_errors(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "hdf5_data"
    root.mkdir()
    path = root / "ply_data_train0.h5"
    _write_h5(path, [4, 4, 4], rng, points=8)
    with h5py.File(path, "a") as f:
        f["label"][2, 0] = 16  # no category
    with pytest.raises(
        DatasetError, match=r"ply_data_train0\.h5: row 2: category label 16 is not in 0-15"
    ):
        ShapeNetPart(root, split="train", cache_dir=tmp_path / "c")
    _write_h5(path, [4, 4], rng, points=8)
    with h5py.File(path, "a") as f:
        f["pid"][1, 5] = 3  # an Airplane part on a chair
    with pytest.raises(
        DatasetError,
        match=r"ply_data_train0\.h5: row 1, point 5: part 3 is not one of Chair's parts 12-15",
    ):
        ShapeNetPart(root, split="train", cache_dir=tmp_path / "c", progress=False)
    with h5py.File(path, "a") as f:
        del f["pid"]
    with pytest.raises(DatasetError, match=r"ply_data_train0\.h5: no 'pid' dataset"):
        ShapeNetPart(root, split="train", cache_dir=tmp_path / "c", progress=False)
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match=r"ply_data_train0\.h5: not a readable HDF5 file"):
        ShapeNetPart(root, split="train", cache_dir=tmp_path / "c", progress=False)


def test_hdf5_shape_claiming_more_than_the_file_stores(tmp_path):
    # a chunked dataset never written claims any shape in a few KB: reading it would allocate
    # and fill the whole claim (here 100 MB of the fill value 255) before any check
    root = tmp_path / "hdf5_data"
    root.mkdir()
    path = root / "ply_data_train0.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((1, 8, 3), np.float32))
        f.create_dataset("label", shape=(10**8, 1), dtype="u1", chunks=(1024, 1), fillvalue=255)
        f.create_dataset("pid", data=np.zeros((1, 8), np.uint8))
    assert path.stat().st_size < 1 << 16
    message = f"{path}: 'label' claims shape (100000000, 1) (100000000 bytes) but the file "
    with pytest.raises(DatasetError, match="^" + re.escape(message + "stores only 0 bytes of it")):
        ShapeNetPart(root, split="train", cache_dir=tmp_path / "c", progress=False)


# ------------------------------------------------------------------------------------------
# parsers


def test_parsers_on_real_files(data_root):
    txt = data_root / NORMAL / TABLE / f"{TABLE_TRAIN}.txt"
    arr = parse_normal_txt(txt.read_bytes(), str(txt), category="Table")
    assert np.array_equal(arr, np.loadtxt(txt)) and arr.shape == (2794, 7)
    pts = data_root / V0 / TABLE / "points" / f"{V0_TABLE}.pts"
    seg = data_root / V0 / TABLE / "points_label" / f"{V0_TABLE}.seg"
    assert np.array_equal(parse_pts(pts.read_bytes(), "p"), np.loadtxt(pts))
    assert np.array_equal(parse_seg(seg.read_bytes(), "s", "Table"), np.loadtxt(seg).astype(int))
    split = data_root / NORMAL / "train_test_split" / "shuffled_val_file_list.json"
    listed = json.loads(split.read_text())
    assert parse_split_json(split.read_bytes(), "j") == [tuple(s.split("/")[1:]) for s in listed]
    cats = data_root / NORMAL / "synsetoffset2category.txt"
    assert parse_category_file(cats.read_bytes(), "c") == list(SYNSETS.items())


def test_parser_details():
    # CRLF, blank lines, tabs and str input are fine
    arr = parse_normal_txt("1 2 3 0 0 1 47\r\n\n\t-1.5e-1 .5 +2. 1 0 0 49\r\n", "t")
    assert arr.tolist() == [[1, 2, 3, 0, 0, 1, 47], [-0.15, 0.5, 2, 1, 0, 0, 49]]
    with pytest.raises(DatasetError, match=r"^t:2: part label 47.5 is not one of the global"):
        parse_normal_txt("0 0 0 0 0 1 1\n0 0 0 0 0 1 47.5\n", "t")
    with pytest.raises(DatasetError, match=r"^t:1: part label 12 is not one of Airplane's parts"):
        parse_normal_txt("0 0 0 0 0 1 12\n", "t", category="Airplane")
    with pytest.raises(DatasetError, match=r"^t: no points"):
        parse_pts(b"\n \n", "t")
    with pytest.raises(DatasetError, match=r"^t:2: '1\.0' is not an integer"):
        parse_seg(b"1\n1.0\n", "t")
    with pytest.raises(DatasetError, match=r"^t:1: part label 0 is not one of any category's"):
        parse_seg(b"0\n", "t")
    with pytest.raises(DatasetError, match=r"^t:2: unexpected byte 0x0c"):
        parse_pts(b"1 2 3\n\x0c\n", "t")
    with pytest.raises(DatasetError, match=r"^t:1: '1_0' is not a number"):
        parse_pts(b"1_0 2 3\n", "t")
    with pytest.raises(DatasetError, match=r"^t: expected a JSON list"):
        parse_split_json(b'{"a": 1}', "t")
    with pytest.raises(DatasetError, match=r"^t:2: category Table is listed twice"):
        parse_category_file("Table 04379243\ntable 04379243\n", "t")


def _mutate(valid: bytes, data) -> bytes:
    """A valid file cut, overwritten, spliced or extended at a random place."""
    b = bytearray(valid)
    pos = data.draw(st.integers(0, len(b)))
    kind = data.draw(st.sampled_from(["cut", "set", "insert", "delete"]))
    junk = data.draw(
        st.one_of(
            st.binary(max_size=6),
            st.sampled_from([b"nan", b"inf", b"-", b".", b"e", b"1e999", b"\r", b"\n", b"/", b'"']),
        )
    )
    if kind == "cut":
        return bytes(b[:pos])
    if kind == "set":
        return bytes(b[:pos] + junk + b[pos + len(junk) :])
    if kind == "insert":
        return bytes(b[:pos] + junk + b[pos:])
    return bytes(b[:pos] + b[pos + data.draw(st.integers(0, 20)) :])


def _rows(n_cols, last=None):
    finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    row = st.tuples(*[finite] * n_cols)
    if last is not None:
        row = st.tuples(*[finite] * n_cols, last)
    return st.lists(row, min_size=1, max_size=8)


def _valid_normal(rows):
    return "".join(" ".join(f"{v:.6f}" for v in r) + "\n" for r in rows).encode()


def _check_normal(out, category=None):
    lo, hi = RANGES[category] if category else (0, 49)
    assert out.ndim == 2 and out.shape[1] == 7 and np.isfinite(out).all()
    assert ((out[:, 6] >= lo) & (out[:, 6] <= hi) & (out[:, 6] == np.round(out[:, 6]))).all()


def _check_seg(out, category=None):
    assert out.ndim == 1 and out.dtype == np.int64 and len(out) > 0
    assert out.min() >= 1 and out.max() <= (len(CATEGORY_PARTS[category]) if category else 6)


def _check_pts(out, category=None):
    assert out.ndim == 2 and out.shape[1] == 3 and np.isfinite(out).all()


def _check_split(out, category=None):
    assert all(isinstance(s, str) and isinstance(i, str) and s and i for s, i in out)


def _check_cats(out, category=None):
    assert out and all(c in CATEGORY_PARTS for c, _ in out)


def _call(parser, check, blob, category=None):
    name = "fuzz/file.x"
    try:
        out = parser(blob, name, category) if category else parser(blob, name)
    except DatasetError as err:
        assert str(err).startswith(name)
        return None
    check(out, category)
    return out


PARSERS = [
    (parse_normal_txt, _check_normal),
    (parse_pts, _check_pts),
    (parse_seg, _check_seg),
    (parse_split_json, _check_split),
    (parse_category_file, _check_cats),
]


@pytest.mark.parametrize("parser, check", PARSERS, ids=lambda p: getattr(p, "__name__", ""))
@settings(max_examples=300, deadline=2000)
@given(blob=st.binary(max_size=300))
def test_fuzz_random_bytes(parser, check, blob):
    _call(parser, check, blob)


@settings(max_examples=300, deadline=2000)
@given(rows=_rows(6, st.integers(47, 49)), data=st.data())
def test_fuzz_normal_txt_near_valid(rows, data):
    valid = _valid_normal(rows)
    out = _call(parse_normal_txt, _check_normal, valid, "Table")
    assert np.allclose(out, np.array(rows, dtype=np.float64), atol=1e-6)  # round trip
    _call(parse_normal_txt, _check_normal, _mutate(valid, data), "Table")


@settings(max_examples=300, deadline=2000)
@given(rows=_rows(3), labels=st.lists(st.integers(1, 4), min_size=1, max_size=8), data=st.data())
def test_fuzz_pts_seg_near_valid(rows, labels, data):
    pts = _valid_normal(rows)
    assert np.allclose(_call(parse_pts, _check_pts, pts), np.array(rows), atol=1e-6)
    _call(parse_pts, _check_pts, _mutate(pts, data))
    seg = "".join(f"{v}\n" for v in labels).encode()
    assert _call(parse_seg, _check_seg, seg, "Lamp").tolist() == labels
    _call(parse_seg, _check_seg, _mutate(seg, data), "Lamp")


@settings(max_examples=300, deadline=2000)
@given(
    ids=st.lists(
        st.tuples(
            st.sampled_from(list(SYNSETS.values())),
            st.text("0123456789abcdef", min_size=1, max_size=12),
        ),
        max_size=5,
    ),
    data=st.data(),
)
def test_fuzz_split_json_near_valid(ids, data):
    valid = json.dumps(
        [f"shape_data/{s}/{i}" for s, i in ids], indent=data.draw(st.sampled_from([None, 2]))
    ).encode()
    assert _call(parse_split_json, _check_split, valid) == ids
    _call(parse_split_json, _check_split, _mutate(valid, data))
    cats = "".join(f"{c}\t{SYNSETS[c]}\n" for c in CATEGORIES).encode()
    _call(parse_category_file, _check_cats, _mutate(cats, data))

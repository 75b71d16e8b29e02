"""pcattn.data.modelnet: every layout on the real samples (counts and labels recomputed from the
official lists, values from np.loadtxt), HDF5 files written here in PointNet's layout, errors,
the cache, and fuzzing of the text parser."""

from __future__ import annotations

import re
import warnings

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcattn.data import modelnet as mn
from pcattn.data.base import DatasetError
from pcattn.data.modelnet import (
    MODELNET10_CLASSES,
    MODELNET40_CLASSES,
    ModelNet,
    parse_resampled_txt,
)
from pcattn.data.off import parse_off

RESAMPLED = "modelnet40_normal_resampled"


def _build(root, **kw) -> tuple[ModelNet, list[str]]:
    """The dataset and the messages of the warnings its construction gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ModelNet(root, progress=False, **kw)
    return ds, [str(w.message) for w in caught]


def _official(root, classes, split):
    """Names, listed ids and the ids with a file, straight from the official text files."""
    names = (root / f"modelnet{classes}_shape_names.txt").read_text().split()
    listed = (root / f"modelnet{classes}_{split}.txt").read_text().split()
    present = [k for k in listed if (root / k.rsplit("_", 1)[0] / f"{k}.txt").exists()]
    return names, listed, present


# --------------------------------------------------------------------------------------------
# modelnet40_normal_resampled, real samples
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resampled(data_root, tmp_path_factory):
    """ModelNet40 and ModelNet10 train / test from the real samples, parsed once."""
    cache = tmp_path_factory.mktemp("cache")
    return {
        (c, s): _build(data_root / RESAMPLED, classes=c, split=s, cache_dir=cache)
        for c in (40, 10)
        for s in ("train", "test")
    }


def test_resampled_modelnet40_counts(data_root, resampled):
    root = data_root / RESAMPLED
    seen = set()
    for split, count in (("train", 127), ("test", 29)):
        ds, messages = resampled[(40, split)]
        names, listed, present = _official(root, 40, split)
        assert len(ds) == len(present) == count
        assert ds.num_missing == len(listed) - count
        assert [m for m in messages if "items of the" in m] == [
            f"ModelNet40 (normal_resampled): {len(listed) - count} of {len(listed)} items of "
            f"the {split!r} split have no file under {root}; using the {count} found"
        ]
        assert [e.key for e in ds.entries] == present
        seen |= {names[int(y)] for y in ds.labels()}
    assert len(seen) == 39 and set(MODELNET40_CLASSES) - seen == {"door"}


def test_resampled_modelnet10_counts(data_root, resampled):
    root = data_root / RESAMPLED
    seen = set()
    for split in ("train", "test"):
        ds, _ = resampled[(10, split)]
        names, listed, present = _official(root, 10, split)
        assert ds.name == "ModelNet10 (normal_resampled)"
        assert len(ds) == len(present) and ds.num_missing == len(listed) - len(present)
        assert [e.key for e in ds.entries] == present
        seen |= {names[int(y)] for y in ds.labels()}
    assert (len(resampled[(10, "train")][0]), len(resampled[(10, "test")][0])) == (50, 11)
    assert seen == set(MODELNET10_CLASSES)


@pytest.mark.parametrize("classes", [40, 10])
def test_resampled_labels_index_the_shape_names_file(data_root, resampled, classes):
    names = (data_root / RESAMPLED / f"modelnet{classes}_shape_names.txt").read_text().split()
    for split in ("train", "test"):
        ds, _ = resampled[(classes, split)]
        assert ds.class_names == names
        want = [names.index(e.key.rsplit("_", 1)[0]) for e in ds.entries]
        np.testing.assert_array_equal(ds.labels(), want)
        for i in (0, len(ds) - 1):
            assert ds[i].y.tolist() == [want[i]]


def test_resampled_values_equal_loadtxt(data_root, resampled):
    for split in ("train", "test"):
        ds, _ = resampled[(40, split)]
        for i in (0, len(ds) // 2, len(ds) - 1):
            item = ds[i]
            cls = item.key.rsplit("_", 1)[0]
            ref = np.loadtxt(data_root / RESAMPLED / cls / f"{item.key}.txt", delimiter=",")
            ref = torch.from_numpy(ref.astype(np.float32))
            assert item.pos.dtype == item.x.dtype == torch.float32
            assert torch.equal(item.pos, ref[:, :3]) and torch.equal(item.x, ref[:, 3:])


def test_resampled_first_points_and_no_normals(data_root, tmp_path):
    ds, _ = _build(
        data_root / RESAMPLED, split="test", num_points=1024, use_normals=False, cache_dir=tmp_path
    )
    assert ds.format == "normal_resampled"
    item = ds[3]
    ref = np.loadtxt(
        data_root / RESAMPLED / item.key.rsplit("_", 1)[0] / f"{item.key}.txt", delimiter=","
    )
    assert "x" not in item and item.pos.shape == (1024, 3)
    assert torch.equal(item.pos, torch.from_numpy(ref[:1024, :3].astype(np.float32)))


# --------------------------------------------------------------------------------------------
# original OFF meshes, real samples
# --------------------------------------------------------------------------------------------


def test_off_modelnet10_and_modelnet40(data_root, tmp_path):
    names40 = (data_root / RESAMPLED / "modelnet40_shape_names.txt").read_text().split()
    names10 = (data_root / RESAMPLED / "modelnet10_shape_names.txt").read_text().split()
    for folder, names in (("ModelNet10", names10), ("ModelNet40", names40)):
        for split in ("train", "test"):
            files = sorted((data_root / folder).glob(f"*/{split}/*.off"))
            if not files:
                with pytest.raises(FileNotFoundError, match=f"no items for the '{split}' split"):
                    _build(data_root / folder, split=split, cache_dir=tmp_path)
                continue
            ds, _ = _build(data_root / folder, split=split, cache_dir=tmp_path)
            assert ds.name == f"{folder} (off)" and ds.num_classes == len(names)
            assert sorted(e.key for e in ds.entries) == [f.stem for f in files]
            want = [names.index(e.key.rsplit("_", 1)[0]) for e in ds.entries]
            np.testing.assert_array_equal(ds.labels(), want)
    assert len(ModelNet(data_root / "ModelNet40", cache_dir=tmp_path, progress=False)) == 6


def test_off_items_are_seeded_per_shape(data_root, tmp_path):
    root = data_root / "ModelNet10"
    a, _ = _build(root, split="test", num_points=300, cache_dir=tmp_path / "a")
    b, _ = _build(root, split="test", num_points=300, cache_dir=tmp_path / "b")
    c, _ = _build(root, split="test", num_points=300, seed=1, cache_dir=tmp_path / "c")
    # a root holding one of the shapes gives that shape the same points
    sub = tmp_path / "ModelNet10" / "bathtub" / "test"
    sub.mkdir(parents=True)
    (sub / "bathtub_0109.off").symlink_to(root / "bathtub/test/bathtub_0109.off")
    d, _ = _build(tmp_path / "ModelNet10", split="test", num_points=300, cache_dir=tmp_path / "d")
    assert len(a) == 3 and len(d) == 1
    for i in range(3):
        assert torch.equal(a[i].pos, b[i].pos) and torch.equal(a[i].x, b[i].x)
        assert not torch.equal(a[i].pos, c[i].pos)
        assert a[i].pos.shape == (300, 3)
        np.testing.assert_allclose(torch.linalg.norm(a[i].x, dim=1), 1.0, atol=1e-6)
        verts, _ = parse_off((root / "bathtub/test" / f"{a[i].key}.off").read_bytes(), "m")
        lo, hi = verts.min(0) - 1e-4, verts.max(0) + 1e-4
        assert ((a[i].pos.numpy() >= lo) & (a[i].pos.numpy() <= hi)).all()
    assert d[0].key == "bathtub_0109" and torch.equal(d[0].pos, a[2].pos)


def test_off_errors(tmp_path):
    good = "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"
    root = tmp_path / "ModelNet40"
    for rel, text in (("airplane/train/airplane_0001.off", good), ("foo/train/foo_0001.off", good)):
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_text(text)
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'foo'}: unknown class folder")):
        _build(root, cache_dir=tmp_path / "c")
    (root / "foo/train/foo_0001.off").unlink()
    (root / "foo/train").rmdir()
    flat = root / "bed/train/bed_0001.off"
    flat.parent.mkdir(parents=True)
    flat.write_text(good.replace("0 1 0\n3", "2 0 0\n3"))
    with pytest.raises(DatasetError, match=re.escape(f"{flat}: sample_surface: the mesh has zero")):
        _build(root, cache_dir=tmp_path / "c")
    flat.write_text(good + "3 0 1 2\n")
    with pytest.raises(DatasetError, match=re.escape(f"{flat}:7: unexpected data after")):
        _build(root, cache_dir=tmp_path / "c")
    flat.write_text(good)
    ds40, _ = _build(root, cache_dir=tmp_path / "c")
    assert [(e.key, e.label) for e in ds40.entries] == [("airplane_0001", 0), ("bed_0001", 2)]
    ds10, _ = _build(root, classes=10, cache_dir=tmp_path / "c")  # airplane is not in ModelNet10
    assert ds10.class_names == MODELNET10_CLASSES
    assert [(e.key, e.label) for e in ds10.entries] == [("bed_0001", 1)]


# --------------------------------------------------------------------------------------------
# small normal_resampled folders written here
# --------------------------------------------------------------------------------------------


def _write_resampled(root, shapes, *, train, test=(), names=MODELNET40_CLASSES):
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(names) + "\n")
    (root / "modelnet40_train.txt").write_text("".join(f"{k}\n" for k in train))
    (root / "modelnet40_test.txt").write_text("".join(f"{k}\n" for k in test))
    for key, arr in shapes.items():
        path = root / key.rsplit("_", 1)[0] / f"{key}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in arr) + "\n")


def test_resampled_errors(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "mn"
    shapes = {"chair_0001": rng.normal(size=(20, 6)), "desk_0007": rng.normal(size=(8, 6))}
    _write_resampled(root, shapes, train=["chair_0001", "foo_0001"])
    with pytest.raises(
        DatasetError,
        match=re.escape(
            f"{root / 'modelnet40_train.txt'}:2: unknown class 'foo' in 'foo_0001' "
            "(not in modelnet40_shape_names.txt)"
        ),
    ):
        _build(root, cache_dir=tmp_path / "c")
    _write_resampled(root, shapes, train=["chair_0001", "chair"])
    with pytest.raises(DatasetError, match=":2: expected a shape id like 'airplane_0001'"):
        _build(root, cache_dir=tmp_path / "c")
    for bad in ("chair/../../secret_0001", "../chair_0001", "..\\chair_0001"):
        _write_resampled(root, shapes, train=["chair_0001", bad])
        with pytest.raises(DatasetError, match=r":2: shape id .* is not a plain file name"):
            _build(root, cache_dir=tmp_path / "c")
    _write_resampled(root, shapes, train=["chair_0001"], names=MODELNET40_CLASSES[:39])
    with pytest.raises(DatasetError, match="has 39 class names, ModelNet40 has 40"):
        _build(root, cache_dir=tmp_path / "c")
    _write_resampled(root, shapes, train=["chair_0001"], names=["chair", *MODELNET40_CLASSES[1:]])
    with pytest.raises(DatasetError, match=r"shape_names.txt:9: duplicate class name 'chair'"):
        _build(root, cache_dir=tmp_path / "c")
    _write_resampled(root, shapes, train=["chair_0001", "desk_0007"])
    with pytest.raises(
        DatasetError,
        match=re.escape(f"{root / 'desk/desk_0007.txt'}: has 8 points, fewer than num_points=10"),
    ):
        _build(root, num_points=10, cache_dir=tmp_path / "c")
    (root / "desk/desk_0007.txt").write_text("1,2,3,4,5,6\n1,2,3,4,5\n")
    with pytest.raises(
        DatasetError,
        match=re.escape(f"{root / 'desk/desk_0007.txt'}:2: expected 6 comma-separated values"),
    ):
        _build(root, cache_dir=tmp_path / "c")
    (root / "modelnet40_train.txt").write_text("airplane_0001\n")
    with pytest.raises(FileNotFoundError, match="none of the 1 items of the 'train' split"):
        _build(root, cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no modelnet10_shape_names.txt in"):
        _build(root, classes=10, cache_dir=tmp_path / "c")


def test_cache_is_read_back_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    root = tmp_path / "mn"
    shapes = {"cup_0001": rng.normal(size=(30, 6)), "vase_0002": rng.normal(size=(12, 6))}
    _write_resampled(root, shapes, train=list(shapes))
    first, _ = _build(root, cache_dir=tmp_path / "cache")

    def no_parsing(self, entry):
        raise AssertionError(f"parsed {entry.key} again")

    monkeypatch.setattr(ModelNet, "_read", no_parsing)
    again, _ = _build(root, cache_dir=tmp_path / "cache")
    for i, key in enumerate(shapes):
        ref = torch.from_numpy(np.round(shapes[key], 6).astype(np.float32))
        assert torch.equal(again[i].pos, first[i].pos)
        torch.testing.assert_close(again[i].pos, ref[:, :3], rtol=0, atol=1e-6)
    assert len(list((tmp_path / "cache").iterdir())) == 1

    shapes["vase_0002"] = rng.normal(size=(13, 6))  # one more line: a different size
    _write_resampled(root, shapes, train=list(shapes))
    with pytest.raises(AssertionError, match="parsed cup_0001 again"):
        _build(root, cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    rebuilt, _ = _build(root, cache_dir=tmp_path / "cache")
    assert rebuilt[1].pos.shape == (13, 3)
    torch.testing.assert_close(
        rebuilt[1].x,
        torch.from_numpy(shapes["vase_0002"][:, 3:].astype(np.float32)),
        rtol=0,
        atol=1e-6,
    )
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the stale cache is gone


# --------------------------------------------------------------------------------------------
# PointNet's HDF5 files, written here in the official layout
# --------------------------------------------------------------------------------------------


def _write_h5(path, **arrays):
    with h5py.File(path, "w") as h5:
        for k, v in arrays.items():
            h5.create_dataset(k, data=v)


@pytest.fixture
def hdf5_root(tmp_path):
    """``modelnet40_ply_hdf5_2048`` with two train files (3 + 2 shapes) and one test file."""
    rng = np.random.default_rng(2)
    root = tmp_path / "modelnet40_ply_hdf5_2048"
    root.mkdir()
    (root / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    content = {}
    for name, labels in (("train0", [0, 39, 7]), ("train1", [2, 2]), ("test0", [5, 1])):
        data = rng.normal(size=(len(labels), 2048, 3)).astype(np.float32)
        normal = rng.normal(size=data.shape).astype(np.float32)
        label = np.array(labels, dtype=np.uint8)[:, None]
        _write_h5(root / f"ply_data_{name}.h5", data=data, label=label, normal=normal)
        content[name] = (data, label[:, 0], normal)
    (root / "train_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n")
    return root, content


def test_hdf5_official_layout(hdf5_root, tmp_path):
    root, content = hdf5_root
    for split, files in (("train", ["train0", "train1"]), ("test", ["test0"])):
        ds, messages = _build(root, split=split, cache_dir=tmp_path / "c")
        assert ds.format == "hdf5" and ds.name == "ModelNet40 (hdf5)" and not messages
        data = np.concatenate([content[f][0] for f in files])
        labels = np.concatenate([content[f][1] for f in files])
        normal = np.concatenate([content[f][2] for f in files])
        assert len(ds) == len(data)
        np.testing.assert_array_equal(ds.labels(), labels)
        assert [e.key for e in ds.entries] == [
            f"ply_data_{f}_{i}" for f in files for i in range(len(content[f][0]))
        ]
        for i in range(len(ds)):
            assert ds[i].y.tolist() == [labels[i]]
            np.testing.assert_array_equal(ds[i].pos.numpy(), data[i])
            np.testing.assert_array_equal(ds[i].x.numpy(), normal[i])
    short, _ = _build(root, num_points=1024, use_normals=False, cache_dir=tmp_path / "c")
    assert "x" not in short[4]
    np.testing.assert_array_equal(short[4].pos.numpy(), content["train1"][0][1, :1024])


def test_hdf5_file_order_keys_and_optional_normals(tmp_path):
    root = tmp_path / "h5"
    root.mkdir()
    (root / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES))
    for i in (10, 2):  # numeric order: train2 before train10
        data = np.full((1, 4, 3), i, dtype=np.float32)
        _write_h5(root / f"ply_data_train{i}.h5", data=data, label=np.array([[i]], np.int64))
    (root / "ply_data_train_2_id2file.json").write_text('["bed/bed_0042.ply"]')
    ds, _ = _build(root, cache_dir=tmp_path / "c")
    assert [e.key for e in ds.entries] == ["bed_0042", "ply_data_train10_0"]
    assert ds.labels().tolist() == [2, 10] and "x" not in ds[0]
    assert ds[0].pos.tolist() == [[2.0] * 3] * 4 and ds[1].pos.tolist() == [[10.0] * 3] * 4


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"label": np.zeros((2, 1), np.uint8)}, "no 'data' dataset (found: label)"),
        ({"data": np.zeros((2, 16, 3), np.float32)}, "no 'label' dataset (found: data)"),
        (
            {"data": np.zeros((2, 16, 2), np.float32), "label": np.zeros((2, 1), np.uint8)},
            "'data' has shape (2, 16, 2), expected (shapes, points, 3)",
        ),
        (
            {"data": np.zeros((2, 16, 3), np.float32), "label": np.zeros((3, 1), np.uint8)},
            "'label' has shape (3, 1), expected (2, 1)",
        ),
        (
            {"data": np.zeros((2, 16, 3), np.float32), "label": np.array([[3], [40]], np.uint8)},
            "label 40 of shape 1 is out of range for the 40 classes of shape_names.txt",
        ),
        (
            {"data": np.zeros((2, 16, 3), np.float32), "label": np.array([[-1], [0]], np.int64)},
            "label -1 of shape 0 is out of range",
        ),
        (
            {"data": np.zeros((2, 16, 3), np.float32), "label": np.array([[0.5], [0]])},
            "'label' holds float64, expected integers",
        ),
        (
            {
                "data": np.zeros((2, 16, 3), np.float32),
                "label": np.zeros((2, 1), np.uint8),
                "normal": np.zeros((2, 16, 2), np.float32),
            },
            "'normal' has shape (2, 16, 2), expected (2, 16, 3) like 'data'",
        ),
        (
            {"data": np.zeros((2, 8, 3), np.float32), "label": np.zeros((2, 1), np.uint8)},
            "has 8 points per shape, fewer than num_points=16",
        ),
        (
            {"data": np.full((2, 16, 3), np.nan, np.float32), "label": np.zeros((2, 1), np.uint8)},
            "shape 0 of 'data' has non-finite coordinates",
        ),
    ],
)
def test_hdf5_errors(tmp_path, arrays, message):
    root = tmp_path / "h5"
    root.mkdir()
    (root / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES))
    path = root / "ply_data_train0.h5"
    _write_h5(path, **arrays)
    num_points = 16 if "fewer" in message else None
    with pytest.raises(DatasetError, match="^" + re.escape(f"{path}: {message}")):
        _build(root, num_points=num_points, cache_dir=tmp_path / "c")


def test_hdf5_unreadable_and_missing_files(tmp_path):
    root = tmp_path / "h5"
    root.mkdir()
    (root / "ply_data_train0.h5").write_bytes(b"not hdf5")
    with pytest.raises(FileNotFoundError, match="no shape_names.txt in"):
        _build(root, cache_dir=tmp_path / "c")
    (root / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES))
    with pytest.raises(DatasetError, match="ply_data_train0.h5: not a readable HDF5 file"):
        _build(root, cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match=r"no ply_data_test\*.h5 in"):
        _build(root, split="test", cache_dir=tmp_path / "c")


@pytest.mark.parametrize("claim", ["label", "data"])
def test_hdf5_shape_claiming_more_than_the_file_stores(tmp_path, claim):
    # a chunked dataset never written claims any shape in a few KB: reading it would allocate
    # and fill the whole claim before any check
    root = tmp_path / "h5"
    root.mkdir()
    (root / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES))
    path = root / "ply_data_train0.h5"
    with h5py.File(path, "w") as h5:
        if claim == "label":
            h5.create_dataset("data", data=np.zeros((2, 8, 3), np.float32))
            h5.create_dataset("label", shape=(10**8, 1), dtype="u1", chunks=(1024, 1))
            shape, size = (10**8, 1), 10**8
        else:
            h5.create_dataset("data", shape=(2, 10**7, 3), dtype="f4", chunks=(1, 1024, 3))
            h5.create_dataset("label", data=np.zeros((2, 1), np.uint8))
            shape, size = (2, 10**7, 3), 2 * 10**7 * 3 * 4
    assert path.stat().st_size < 1 << 16
    message = f"{path}: '{claim}' claims shape {shape} ({size} bytes) but the file stores only 0"
    with pytest.raises(DatasetError, match="^" + re.escape(message) + " bytes of it$"):
        _build(root, cache_dir=tmp_path / "c")


def test_a_mesh_whose_counts_the_file_cannot_hold_is_named(tmp_path):
    path = tmp_path / "ModelNet40/chair/train/chair_0001.off"
    path.parent.mkdir(parents=True)
    path.write_text("OFF\n100000000000000 1 0\n0 0 0\n")
    with pytest.raises(
        DatasetError,
        match="^" + re.escape(f"{path}:2: counts claim 100000000000000 vertices and 1 faces"),
    ):
        _build(tmp_path / "ModelNet40", cache_dir=tmp_path / "c")


# --------------------------------------------------------------------------------------------
# roots and arguments
# --------------------------------------------------------------------------------------------


def test_wrong_roots_show_layout_and_source(data_root, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        _build(tmp_path, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert msg.startswith(f"ModelNet40: {tmp_path} holds none of the ModelNet layouts.\n")
    assert "Expected layout:\nroot = ModelNet40/ or ModelNet10/" in msg
    assert "modelnet40_ply_hdf5_2048.zip" in msg and "https://modelnet.cs.princeton.edu" in msg
    with pytest.raises(FileNotFoundError, match="it has the folder 'ModelNet40': pass that as"):
        _build(data_root, cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="nowhere is not a folder"):
        _build(tmp_path / "nowhere", cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match=r"no ply_data_train\*.h5 in"):
        _build(data_root / RESAMPLED, format="hdf5", cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no class folders .* of ModelNet40 meshes"):
        _build(data_root / RESAMPLED / "airplane", format="off", cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"classes": 20}, "classes must be 40 or 10, got 20"),
        ({"split": "val"}, "split must be 'train' or 'test', got 'val'"),
        ({"format": "ply"}, "format must be 'auto', 'off', 'normal_resampled' or 'hdf5'"),
        ({"num_points": 0}, "num_points must be a positive int, got 0"),
    ],
)
def test_argument_errors(tmp_path, kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelNet(tmp_path, **kw)


# --------------------------------------------------------------------------------------------
# parse_resampled_txt
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "1: no points in the file"),
        (b"\n \n", "1: no points in the file"),
        (
            b"1,2,3,4,5,6\n1,2,3,4,5\n",
            "2: expected 6 comma-separated values (x,y,z,nx,ny,nz), got 5",
        ),
        (b"1,2,3,4,5,6,7\n", "1: expected 6 comma-separated values (x,y,z,nx,ny,nz), got 7"),
        (b"1 2 3 4 5 6\n", "1: expected 6 comma-separated values (x,y,z,nx,ny,nz), got 1"),
        (b"\n1,2,3,4,5,x\n", "2: expected a number, got 'x'"),
        (b"1,2,3,4,5,\n", "1: expected a number, got ''"),
        (b"1,2,3,4,5,1_0\n", "1: expected a number, got '1_0'"),
        (b"1,2,nan,4,5,6\n", "1: non-finite or out-of-range value 'nan'"),
        (b"1,2,3,4,5,6\r\n1,2,3,4,5,-inf\r\n", "2: non-finite or out-of-range value '-inf'"),
        (b"1,2,3,4,5,6\n1,2,3e38,4e38,5,6\n", "2: non-finite or out-of-range value '4e38'"),
    ],
)
def test_resampled_parse_errors(text, message):
    with pytest.raises(DatasetError, match="^" + re.escape(f"a.txt:{message}") + "$"):
        parse_resampled_txt(text, "a.txt")


def test_resampled_parse_quirks():
    want = np.array([[1, 2, 3, 0, 0, 1], [-0.5, 0.25, 1e-3, 1, 0, 0]], np.float32)
    for text in (
        b"1,2,3,0,0,1\n-0.5,0.25,1e-3,1,0,0\n",
        b"1,2,3,0,0,1\r\n-0.5,0.25,1e-3,1,0,0",
        b"\n1, 2 ,3,0,0,1\n \t\n-.5,+0.25,0.001,1.,0,0\n\n",
        b" 1.0 ,\t2,3,0,0,1\n-5e-1,0.25,1E-3,1,0,0\x0c\n",
    ):
        out = parse_resampled_txt(text, "q.txt")
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, want)


def _resampled_or_our_error(data: bytes):
    try:
        out = parse_resampled_txt(data, "fuzz.txt")
    except DatasetError as err:
        assert re.match(r"fuzz\.txt:\d+: \S", str(err)), str(err)
        return None
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == 6 and len(out) >= 1
    assert np.isfinite(out).all()
    return out


@settings(max_examples=300, deadline=2000)
@given(st.binary(max_size=300))
def test_fuzz_resampled_random_bytes(data):
    _resampled_or_our_error(data)


@settings(max_examples=300, deadline=2000)
@given(st.data())
def test_fuzz_resampled_mutations_agree_with_the_reference_parser(data):
    rows = data.draw(st.integers(1, 4))
    buf = bytearray(b"0.1,-2.5,3e2,0,0.6,-0.8\n" * rows)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf)))
        op = data.draw(st.sampled_from(["cut", "replace", "insert", "delete"]))
        if op == "cut":
            del buf[i:]
        elif op == "replace" and i < len(buf):
            buf[i] = data.draw(st.sampled_from(list(b",.-+eE0123456789 \t\r\nxn_")))
        elif op == "insert":
            buf[i:i] = data.draw(st.sampled_from([b",", b"\n", b"\r\n", b" ", b"e", b"9", b"."]))
        else:
            del buf[i : i + data.draw(st.integers(1, 3))]
    text = bytes(buf)
    out = _resampled_or_our_error(text)
    # numpy's fast path and the line-by-line reference agree on whatever the fast path accepts
    fast = mn._parse_resampled_fast(text.replace(b"\r\n", b"\n"))
    if fast is not None:
        np.testing.assert_array_equal(fast, mn._parse_resampled_slow(text, "fuzz.txt"))
        np.testing.assert_array_equal(out, fast)


@settings(max_examples=100, deadline=2000)
@given(
    st.lists(
        st.lists(st.floats(-1e30, 1e30, allow_nan=False), min_size=6, max_size=6),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from(["{!r}", "{:.9g}", "{:e}"]),
    st.sampled_from(["\n", "\r\n"]),
)
def test_fuzz_resampled_round_trip(rows, fmt, eol):
    text = eol.join(",".join(fmt.format(v) for v in row) for row in rows) + eol
    out = parse_resampled_txt(text.encode(), "rt.txt")
    want = np.array([[float(fmt.format(v)) for v in row] for row in rows]).astype(np.float32)
    np.testing.assert_array_equal(out, want)

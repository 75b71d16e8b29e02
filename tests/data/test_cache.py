"""The dataset cache (pcattn.data.base): valid by content, rebuilt with one warning when a file
changes or the cache is damaged, kept in the user cache folder and written atomically. Every
dataset here is a tiny ModelNet ``normal_resampled`` folder in the real layout, written in
``tmp_path``; expected values come from the text written, not from the reader."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings

import numpy as np
import pytest
import torch

from pcattn.data import base
from pcattn.data.base import DatasetError, file_fingerprint
from pcattn.data.modelnet import MODELNET40_CLASSES, ModelNet

NAME = "ModelNet40 (normal_resampled)"


def _text(arr: np.ndarray) -> str:
    """Rows ``x,y,z,nx,ny,nz`` of values in [0, 1) as ``0.dddddd``: every value 8 bytes, so
    files of equal row counts have equal sizes."""
    return "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in arr)


def _write(root, shapes: dict[str, np.ndarray]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    (root / "modelnet40_train.txt").write_text("".join(f"{k}\n" for k in shapes))
    (root / "modelnet40_test.txt").write_text("")
    for key, arr in shapes.items():
        path = root / key.rsplit("_", 1)[0] / f"{key}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(_text(arr))


def _shapes(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"cup_0001": rng.random((5, 6)), "vase_0002": rng.random((3, 6))}


def _open(root, **kw) -> tuple[ModelNet, list[str]]:
    """The dataset and the messages of the warnings its construction gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ModelNet(root, progress=False, **kw)
    return ds, [str(w.message) for w in caught]


def _expected(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.round(arr, 6).astype(np.float32))


def _assert_items(ds, shapes) -> None:
    assert [e.key for e in ds.entries] == list(shapes)
    for item, arr in zip(ds, shapes.values(), strict=True):
        torch.testing.assert_close(item.pos, _expected(arr)[:, :3], rtol=0, atol=1e-6)
        torch.testing.assert_close(item.x, _expected(arr)[:, 3:], rtol=0, atol=1e-6)


@pytest.fixture
def no_parsing(monkeypatch):
    """Call it to make any parse fail: what a cache hit must not do."""

    def refuse(self, entry):
        raise AssertionError(f"parsed {entry.key} again")

    return lambda: monkeypatch.setattr(ModelNet, "_read", refuse)


@pytest.fixture
def dataset(tmp_path):
    """A written folder, its shapes, its cache folder, and the dataset read once."""
    root, cache = tmp_path / "mn", tmp_path / "cache"
    shapes = _shapes()
    _write(root, shapes)
    ds, messages = _open(root, cache_dir=cache)
    assert messages == []  # a first build says nothing
    _assert_items(ds, shapes)
    return root, shapes, cache, ds


# --------------------------------------------------------------------------------------------
# valid by content


def test_fingerprint_hashes_the_ends_of_large_files(tmp_path):
    block = base.FINGERPRINT_BLOCK
    path = tmp_path / "f.bin"
    data = bytearray(os.urandom(4 * block))
    path.write_bytes(data)
    size, mtime, digest = file_fingerprint(path)
    assert (size, mtime) == (len(data), os.stat(path).st_mtime_ns)
    for where, changes in ((0, True), (block - 1, True), (2 * block, False), (-1, True)):
        edited = bytearray(data)
        edited[where] ^= 0xFF
        path.write_bytes(edited)
        assert (file_fingerprint(path)[2] != digest) is changes, where
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'gone'}: cannot read the file")):
        file_fingerprint(tmp_path / "gone")


def test_a_same_size_edit_in_place_is_read_back(dataset, no_parsing):
    root, shapes, cache, first = dataset
    path = root / "cup/cup_0001.txt"
    size = path.stat().st_size
    shapes["cup_0001"] = _shapes(seed=7)["cup_0001"]  # other values, the same byte count
    with open(path, "r+b") as f:  # in place, as an editor saving over the file
        f.write(_text(shapes["cup_0001"]).encode())
    assert path.stat().st_size == size
    ds, messages = _open(root, cache_dir=cache)
    assert messages == [
        f"{NAME}: the 'train' cache is out of date ({path} changed (content changed)); "
        f"rebuilding it in {ds.cache_folder}"
    ]
    _assert_items(ds, shapes)
    assert ds.cache_folder != first.cache_folder
    assert [p.name for p in cache.iterdir()] == [ds.cache_folder.name]  # the old one is gone
    no_parsing()
    again, messages = _open(root, cache_dir=cache)  # the new cache is used as is
    assert messages == [] and again.cache_folder == ds.cache_folder
    _assert_items(again, shapes)


def test_an_edit_with_its_old_modification_time_restored_is_read_back(dataset):
    root, shapes, cache, _ = dataset
    path = root / "vase/vase_0002.txt"
    before = path.stat()
    shapes["vase_0002"] = 0.5 * shapes["vase_0002"]  # other values, the same byte count
    path.write_text(_text(shapes["vase_0002"]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # cp -p, rsync -t, tar
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    ds, messages = _open(root, cache_dir=cache)
    assert messages == [
        f"{NAME}: the 'train' cache is out of date ({path} changed (content changed)); "
        f"rebuilding it in {ds.cache_folder}"
    ]
    _assert_items(ds, shapes)


@pytest.mark.parametrize("change", ["size", "touch", "removed", "added"])
def test_the_warning_says_what_changed(dataset, change):
    root, shapes, cache, _ = dataset
    path = root / "cup/cup_0001.txt"
    if change == "size":
        old = path.stat().st_size
        shapes["cup_0001"] = shapes["cup_0001"][:4]
        path.write_text(_text(shapes["cup_0001"]))
        why = f"{path} changed (size {old} -> {path.stat().st_size} bytes)"
    elif change == "touch":  # the same bytes, a later modification time
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        why = f"{path} changed (modification time changed)"
    elif change == "removed":  # the split list drops a shape; no data file changes
        del shapes["vase_0002"]
        (root / "modelnet40_train.txt").write_text("cup_0001\n")
        why = "the file list changed (0 added, 1 removed)"
    else:
        shapes["bowl_0003"] = np.full((2, 6), 0.5)
        (root / "bowl").mkdir()
        (root / "bowl/bowl_0003.txt").write_text(_text(shapes["bowl_0003"]))
        (root / "modelnet40_train.txt").write_text("".join(f"{k}\n" for k in shapes))
        why = "the file list changed (1 added, 0 removed)"
    ds, messages = _open(root, cache_dir=cache)
    assert messages == [
        f"{NAME}: the 'train' cache is out of date ({why}); rebuilding it in {ds.cache_folder}"
    ]
    _assert_items(ds, shapes)


def test_a_file_overwritten_with_x_gives_the_readers_error(dataset):
    root, _, cache, _ = dataset
    path = root / "cup/cup_0001.txt"
    size = path.stat().st_size
    path.write_bytes(b"x" * size)
    with pytest.warns(UserWarning, match=re.escape(f"({path} changed (content changed))")):
        with pytest.raises(
            DatasetError,
            match="^"
            + re.escape(f"{path}:1: expected 6 comma-separated values (x,y,z,nx,ny,nz), got 1")
            + "$",
        ):
            ModelNet(root, cache_dir=cache, progress=False)


# --------------------------------------------------------------------------------------------
# damaged caches are rebuilt, never fatal


def _truncate(path):  # the header stays whole: numpy's "mmap length is greater than file size"
    path.write_bytes(path.read_bytes()[:-4])


def _halve(path):  # into the header
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _meta_without_pos(path):
    meta = json.loads(path.read_text())
    del meta["arrays"]["pos"]
    path.write_text(json.dumps(meta))


def _garbage(path):
    path.write_bytes(b"garbage" * 40)


def _empty(path):
    path.write_bytes(b"")


def _bad_json(path):
    path.write_text("{not json")


def _shorter_label(path):
    np.save(path, np.zeros(1, dtype=np.int64))


@pytest.mark.parametrize(
    ("name", "damage", "why"),
    [
        ("pos.npy", _truncate, r"pos\.npy is unreadable \(ValueError: mmap length .+\)"),
        ("pos.npy", _halve, r"pos\.npy is unreadable \(ValueError: .+\)"),
        ("pos.npy", os.remove, r"pos\.npy is missing"),
        ("pos.npy", _garbage, r"pos\.npy is unreadable \(\w+: .+\)"),
        ("pos.npy", _empty, r"pos\.npy is unreadable \(\w+: .+\)"),
        ("x.npy", _truncate, r"x\.npy is unreadable \(ValueError: .+\)"),
        ("ptr.npy", os.remove, r"ptr\.npy is missing"),
        ("label.npy", _shorter_label, r"label\.npy holds <i8 \(1,\), expected <i8 \(2,\)"),
        ("meta.json", os.remove, r"meta\.json is missing"),
        ("meta.json", _bad_json, r"meta\.json is unreadable \(JSONDecodeError: .+\)"),
        ("meta.json", _meta_without_pos, r"meta\.json lists no 'pos' array"),
    ],
    ids=["pos-truncated", "pos-halved", "pos-deleted", "pos-garbage", "pos-empty", "x-truncated",
         "ptr-deleted", "label-wrong-shape", "meta-deleted", "meta-garbage", "meta-no-pos"],
)  # fmt: skip
def test_a_damaged_cache_is_rebuilt_with_one_warning(dataset, name, damage, why, no_parsing):
    root, shapes, cache, _ = dataset
    folder = next(cache.iterdir())
    damage(folder / name)
    ds, messages = _open(root, cache_dir=cache)
    assert len(messages) == 1, messages
    assert re.fullmatch(
        re.escape(f"{NAME}: the 'train' cache {folder} is damaged (") + why + r"\); rebuilding it",
        messages[0],
    ), messages[0]
    assert ds.cache_folder == folder
    _assert_items(ds, shapes)
    no_parsing()
    again, messages = _open(root, cache_dir=cache)  # repaired: read back, no warning
    assert messages == []
    _assert_items(again, shapes)


def test_an_inconsistent_cache_is_rebuilt(dataset):
    root, shapes, cache, _ = dataset
    folder = next(cache.iterdir())
    np.save(folder / "ptr.npy", np.array([0, 6, 9], dtype=np.int64))  # the right shape
    ds, messages = _open(root, cache_dir=cache)
    assert messages == [
        f"{NAME}: the 'train' cache {folder} is damaged (ptr.npy does not partition the 8 "
        "points of pos.npy); rebuilding it"
    ]
    _assert_items(ds, shapes)


# --------------------------------------------------------------------------------------------
# where, and atomic writes


def _snapshot(root):
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    )


def test_the_default_is_the_user_cache_and_nothing_is_written_in_the_data_folder(
    tmp_path, monkeypatch
):
    root = tmp_path / "modelnet40_normal_resampled"
    shapes = _shapes()
    _write(root, shapes)
    before = _snapshot(root)
    monkeypatch.setenv("PCATTN_CACHE", str(tmp_path / "user-cache"))
    ds, messages = _open(root)
    assert messages == []
    assert ds.cache_folder.parent == tmp_path / "user-cache"
    assert ds.cache_path() == ds.cache_folder
    assert ds.cache_folder.name.startswith("modelnet_modelnet40-normal-resampled_train_")
    assert sorted(p.name for p in ds.cache_folder.iterdir()) == [
        "label.npy", "meta.json", "pos.npy", "ptr.npy", "x.npy"
    ]  # fmt: skip
    assert _snapshot(root) == before  # not a byte, not a folder in the data folder
    _assert_items(ds, shapes)
    monkeypatch.delenv("PCATTN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert base.default_cache_root() == tmp_path / "home" / ".cache" / "pcattn"


def test_datasets_and_options_sharing_a_cache_folder_never_collide(tmp_path):
    cache = tmp_path / "cache"
    a, b = tmp_path / "a" / "mn", tmp_path / "b" / "mn"  # same folder name, other data
    _write(a, _shapes(seed=1))
    _write(b, _shapes(seed=2))
    ds_a, _ = _open(a, cache_dir=cache)
    ds_b, _ = _open(b, cache_dir=cache)
    ds_short, _ = _open(a, cache_dir=cache, num_points=2, use_normals=False)
    folders = {ds.cache_folder for ds in (ds_a, ds_b, ds_short)}
    assert len(folders) == 3 and set(cache.iterdir()) == folders
    _assert_items(ds_a, _shapes(seed=1))
    _assert_items(ds_b, _shapes(seed=2))
    assert ds_short[0].pos.shape == (2, 3) and "x" not in ds_short[0]
    # a new version of a's cache replaces a's old one only
    shapes = _shapes(seed=3)
    _write(a, shapes)
    ds_a2, _ = _open(a, cache_dir=cache)
    assert set(cache.iterdir()) == {ds_a2.cache_folder, ds_b.cache_folder, ds_short.cache_folder}
    _assert_items(ds_a2, shapes)
    _assert_items(_open(b, cache_dir=cache)[0], _shapes(seed=2))


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no cleanup either."""


def test_a_killed_build_leaves_nothing_that_is_trusted(tmp_path, monkeypatch):
    root, cache = tmp_path / "mn", tmp_path / "cache"
    shapes = _shapes()
    _write(root, shapes)
    real_save = base._save

    def save_then_die(folder, name, write):
        real_save(folder, name, write)
        if name == "pos.npy":
            raise _Killed

    with monkeypatch.context() as m:
        m.setattr(base, "_save", save_then_die)
        m.setattr(base.shutil, "rmtree", lambda *a, **k: None)  # a killed process cleans nothing
        with pytest.raises(_Killed):
            _open(root, cache_dir=cache)
    (orphan,) = cache.iterdir()  # only the hidden temporary folder, half written
    assert orphan.name.startswith(".") and orphan.name.endswith(".tmp")
    assert (orphan / "pos.npy").is_file() and not (orphan / "meta.json").exists()
    ds, messages = _open(root, cache_dir=cache)  # parses again: nothing was trusted
    assert messages == []
    _assert_items(ds, shapes)
    assert set(cache.iterdir()) == {orphan, ds.cache_folder}  # a recent orphan may be a live build
    old = time.time() - 2 * 3600
    os.utime(orphan, (old, old))
    shutil.rmtree(ds.cache_folder)
    ds, _ = _open(root, cache_dir=cache)
    assert set(cache.iterdir()) == {ds.cache_folder}  # an hour-old orphan is removed


def test_an_unwritable_cache_folder_keeps_the_arrays_in_memory(tmp_path):
    root = tmp_path / "mn"
    shapes = _shapes()
    _write(root, shapes)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    ds, messages = _open(root, cache_dir=blocker)
    assert len(messages) == 1 and messages[0].startswith(
        f"{NAME}: cannot write the cache {blocker}/"
    )
    assert messages[0].endswith(
        "; keeping the parsed arrays in memory (pass cache_dir= or set PCATTN_CACHE to a "
        "writable folder)"
    )
    assert ds.cache_folder is None
    _assert_items(ds, shapes)

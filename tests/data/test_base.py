"""The reader base class: indexing, skipping missing items, the cache and its key."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pcattn.data.base import CachedDataset, DatasetError, Entry, index_only


class Toy(CachedDataset):
    """Items listed in ``list.txt``; item ``k`` is ``k.txt`` with rows ``x y z label``."""

    name = "Toy"
    layout = "root/\n  list.txt\n  <id>.txt"
    source = "made by the test"
    reads = 0

    def _entries(self):
        listed = (self.root / "list.txt").read_text().split()
        present = [k for k in listed if (self.root / f"{k}.txt").exists()]
        entries = [Entry(k, (self.root / f"{k}.txt",), listed.index(k)) for k in present]
        return entries, len(listed) - len(present)

    def _read(self, entry):
        type(self).reads += 1
        a = np.loadtxt(entry.files[0], dtype=np.float64, ndmin=2)
        if a.shape[1] != 4:
            raise DatasetError(f"{entry.files[0]}: expected 4 columns")
        return {"pos": a[:, :3].astype(np.float32), "point_y": a[:, 3].astype(np.int64)}


def _write(root, items, listed=None):
    root.mkdir(exist_ok=True)
    (root / "list.txt").write_text("\n".join(listed or list(items)))
    for k, rows in items.items():
        np.savetxt(root / f"{k}.txt", np.asarray(rows, dtype=np.float64))


@pytest.fixture
def toy_root(tmp_path):
    root = tmp_path / "toy"
    _write(
        root,
        {"a": [[0, 0, 0, 1], [1, 0, 0, 2]], "b": [[0, 1, 0, 0], [0, 2, 0, 1], [3, 3, 3, 1]]},
        listed=["a", "gone", "b"],
    )
    return root


def test_items_skip_missing_and_warn_once(toy_root, tmp_path):
    with pytest.warns(
        UserWarning, match=r"Toy: 1 of 3 items of the 'train' split have no file"
    ) as rec:
        ds = Toy(toy_root, split="train", cache_dir=tmp_path / "c", progress=False)
    assert rec[0].filename == __file__  # the warning points at the user's line
    assert len(ds) == 2 and ds.num_missing == 1
    b = ds[1]
    assert torch.equal(b.pos, torch.tensor([[0, 1, 0], [0, 2, 0], [3, 3, 3]], dtype=torch.float32))
    assert b.y.tolist() == [0, 1, 1] and b.category.tolist() == [2] and b.key == "b"
    assert ds[-1].key == "b" and ds.labels().tolist() == [0, 2]
    with pytest.raises(IndexError, match="index 2 out of range for 2 items"):
        ds[2]


def test_cache_is_reused_and_rebuilt_when_a_file_changes(toy_root, tmp_path):
    cache = tmp_path / "c"
    Toy.reads = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Toy(toy_root, split="train", cache_dir=cache, progress=False)
        assert Toy.reads == 2
        again = Toy(toy_root, split="train", cache_dir=cache, progress=False)
        assert Toy.reads == 2  # served from the cache
        assert again[0].pos.shape == (2, 3)
        np.savetxt(toy_root / "a.txt", np.array([[5, 5, 5, 1]] * 4, dtype=np.float64))
        changed = Toy(toy_root, split="train", cache_dir=cache, progress=False)
    assert Toy.reads == 4 and changed[0].pos.shape == (4, 3)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # the stale cache is gone


def test_wrong_root_and_empty_split_say_what_is_expected(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"(?s)Toy: .*nope is not a folder.*list\.txt.*test"
    ):
        Toy(tmp_path / "nope", split="train")
    root = tmp_path / "empty"
    _write(root, {}, listed=["x", "y"])
    with pytest.raises(
        FileNotFoundError, match=r"none of the 2 items of the 'train' split has a file"
    ):
        Toy(root, split="train")


def test_a_malformed_file_names_itself(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "list.txt").write_text("a")
    (root / "a.txt").write_text("1 2 3\n")
    with pytest.raises(DatasetError, match=r"a\.txt: expected 4 columns"):
        Toy(root, split="train", cache_dir=tmp_path / "c", progress=False)


def test_index_only_parses_nothing(toy_root, tmp_path):
    Toy.reads = 0
    with index_only(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = Toy(toy_root, split="train", cache_dir=tmp_path / "c", progress=False)
    assert Toy.reads == 0 and [e.key for e in ds.entries] == ["a", "b"]
    assert not (tmp_path / "c").exists()

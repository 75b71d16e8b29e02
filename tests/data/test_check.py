"""``python -m pcattn.data.check``: finds every layout, counts, and reports every problem."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np

from pcattn.data.check import check, find_datasets
from pcattn.data.modelnet import MODELNET40_CLASSES


def _resampled(root: Path, shapes: dict[str, list[str]], bad: set[str] = frozenset()) -> Path:
    """A small folder in the ``modelnet40_normal_resampled`` layout."""
    folder = root / "modelnet40_normal_resampled"
    folder.mkdir(parents=True)
    names = sorted(shapes)
    (folder / "modelnet40_shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    train = [k for c in names for k in shapes[c]]
    (folder / "modelnet40_train.txt").write_text("\n".join(train + ["chair_0999"]) + "\n")
    (folder / "modelnet40_test.txt").write_text("")
    rng = np.random.default_rng(0)
    for c in names:
        (folder / c).mkdir()
        for k in shapes[c]:
            rows = rng.normal(size=(20, 6))
            text = "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows) + "\n"
            if k in bad:
                text = text.replace("\n", "\nnot,a,number,1,2,3\n", 1)
            (folder / c / f"{k}.txt").write_text(text)
    return folder


def test_real_samples_report(data_root):
    out = io.StringIO()
    problems = check(data_root, out=out, progress=False)
    text = out.getvalue()
    assert problems == 0, text
    titles = [t for t, *_ in find_datasets(data_root)]
    assert {
        "ModelNet10 (off)",
        "ModelNet40 (off)",
        "ModelNet40 (normal_resampled)",
        "ModelNet10 (normal_resampled)",
        "ShapeNetPart (normal)",
        "ShapeNetPart (v0)",
    } <= set(titles)
    # counts computed independently from the split lists and the files on disk
    mn = data_root / "modelnet40_normal_resampled"
    for split in ("train", "test"):
        listed = (mn / f"modelnet40_{split}.txt").read_text().split()
        have = [k for k in listed if (mn / k.rsplit("_", 1)[0] / f"{k}.txt").is_file()]
        assert f"  {split}: {len(have)} shapes found, {len(listed) - len(have)} listed" in text
    meshes = sorted((data_root / "ModelNet10").glob("*/*/*.off")) + sorted(
        (data_root / "ModelNet40").glob("*/*/*.off")
    )
    assert len(meshes) == 11
    assert text.count("points per shape: min 10000, median 10000, max 10000") == 4


def test_problems_are_reported_not_raised(tmp_path):
    _resampled(
        tmp_path, {"chair": ["chair_0001", "chair_0002"], "desk": ["desk_0001"]}, {"chair_0002"}
    )
    out = io.StringIO()
    problems = check(tmp_path, out=out, progress=False)
    text = out.getvalue()
    assert problems == 1
    assert "train: 3 shapes found, 1 listed without a file" in text
    assert "per class (2): chair 1, desk 1" in text  # the bad shape is not counted
    assert "problem: " in text and "chair_0002.txt:2" in text


def test_cli_exit_status(tmp_path):
    good = tmp_path / "good"
    _resampled(good, {"chair": ["chair_0001"]})
    cmd = [sys.executable, "-m", "pcattn.data.check", "--no-progress"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "problems: none" in ok.stdout
    empty = subprocess.run([*cmd, str(tmp_path / "nothing")], capture_output=True, text=True)
    assert empty.returncode == 1 and "not a folder" in empty.stdout

r"""``python -m pcattn.data.check ROOT``: what datasets a folder holds, and every problem.

For ``ROOT`` itself and each folder below it (two levels), every ModelNet and ShapeNetPart
layout found is indexed split by split and every listed file present is parsed (nothing is
written, no cache is built). The report gives, per dataset and split, the shapes found and the
ones the official lists name but are missing, the count per class or category, the points per
shape, and every problem: malformed files (with their line), labels out of range, split files
naming unknown classes. The exit status is 1 when there is a problem, else 0.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .base import CachedDataset, DatasetError, index_only
from .modelnet import ModelNet
from .shapenet import CATEGORIES, ShapeNetPart
from .shapenet import _detect as _shapenet_layout

__all__ = ["find_datasets", "check", "main"]


def _folders(root: Path, depth: int = 2) -> Iterator[Path]:
    yield root
    if depth == 0:
        return
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "processed"):
        yield from _folders(sub, depth - 1)


def _modelnet_layout(folder: Path) -> str | None:
    if any(folder.glob("ply_data_*.h5")) and not _shapenet_layout(folder):
        return "hdf5"
    if any((folder / f"modelnet{c}_shape_names.txt").is_file() for c in (40, 10)):
        return "normal_resampled"
    subs = [p for p in folder.iterdir() if p.is_dir()]
    if any(
        (p / s).is_dir() and any((p / s).glob("*.off")) for p in subs for s in ("train", "test")
    ):
        return "off"
    return None


def find_datasets(root: Path) -> list[tuple[str, type[CachedDataset], dict, tuple[str, ...]]]:
    """``(title, reader, kwargs, splits)`` for every dataset layout under ``root``."""
    found = []
    for folder in _folders(root):
        fmt = _modelnet_layout(folder)
        if fmt == "normal_resampled":
            for c in (40, 10):
                if (folder / f"modelnet{c}_shape_names.txt").is_file():
                    kw = {"classes": c, "format": fmt}
                    found.append(
                        (
                            f"ModelNet{c} ({fmt})",
                            ModelNet,
                            {"root": folder, **kw},
                            ("train", "test"),
                        )
                    )
        elif fmt is not None:
            c = 10 if folder.name.lower() == "modelnet10" else 40
            found.append(
                (
                    f"ModelNet{c} ({fmt})",
                    ModelNet,
                    {"root": folder, "format": fmt},
                    ("train", "test"),
                )
            )
        sfmt = _shapenet_layout(folder)
        if sfmt is not None:
            found.append(
                (
                    f"ShapeNetPart ({sfmt})",
                    ShapeNetPart,
                    {"root": folder, "format": sfmt},
                    ("train", "val", "test"),
                )
            )
    return found


def _class_name(ds: CachedDataset, label: int) -> str:
    names = getattr(ds, "class_names", None) or CATEGORIES
    return names[label] if 0 <= label < len(names) else str(label)


def check(root: Path, out=sys.stdout, progress: bool = True) -> int:
    """Print the report for ``root``; return the number of problems."""
    root = Path(root)
    if not root.is_dir():
        print(f"{root}: not a folder", file=out)
        return 1
    datasets = find_datasets(root)
    if not datasets:
        print(
            f"{root}: no ModelNet or ShapeNetPart layout found (see datasets/README.md)", file=out
        )
        return 1
    problems = 0
    for title, reader, kwargs, splits in datasets:
        print(f"{title} at {kwargs['root']}", file=out)
        own: list[str] = []
        for split in splits:
            with warnings.catch_warnings(record=True) as caught, index_only():
                warnings.simplefilter("always")
                try:
                    ds = reader(**kwargs, split=split, progress=False)
                except (FileNotFoundError, ValueError) as err:
                    first = str(err).splitlines()[0]
                    print(f"  {split}: nothing read: {first}", file=out)
                    if isinstance(err, DatasetError):
                        own.append(first)
                    continue
            for w in caught:
                if "have no file" not in str(w.message):
                    own.append(str(w.message))
            sizes, per_class = [], Counter()
            entries = ds.entries
            if progress:
                entries = tqdm(entries, desc=f"{title} {split}", unit="shape", leave=False)
            for e in entries:
                try:
                    item = ds._read(e)
                except (DatasetError, OSError) as err:
                    own.append(str(err))
                    continue
                sizes.append(len(item["pos"]))
                per_class[_class_name(ds, e.label)] += 1
            line = f"  {split}: {len(ds.entries)} shapes found"
            if ds.num_missing:
                line += f", {ds.num_missing} listed without a file"
            print(line, file=out)
            if sizes:
                s = np.asarray(sizes)
                print(
                    f"    points per shape: min {s.min()}, median {int(np.median(s))}, "
                    f"max {s.max()}",
                    file=out,
                )
                classes = ", ".join(f"{k} {v}" for k, v in sorted(per_class.items()))
                print(f"    per class ({len(per_class)}): {classes}", file=out)
        for p in own:
            print(f"  problem: {p}", file=out)
        if not own:
            print("  problems: none", file=out)
        problems += len(own)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pcattn.data.check",
        description="Report the ModelNet / ShapeNetPart data found under a folder.",
    )
    ap.add_argument("root", type=Path, help="a dataset folder, or a folder holding several")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    return 1 if check(args.root, progress=not args.no_progress) else 0


if __name__ == "__main__":
    raise SystemExit(main())

r"""What every dataset reader shares: an index of the files on disk, one parse into a cache,
and PyG ``Data`` items.

A reader subclasses :class:`CachedDataset` and implements

* :meth:`CachedDataset._entries`: the items of the requested split that have files, in split
  order, and how many listed items have none;
* :meth:`CachedDataset._read`: the arrays of one item (``pos`` and whatever else it has).

The base class parses every item once (with a progress bar), stores the arrays as plain
``.npy`` files (memory-mapped on later runs, so a large dataset is not held in RAM), and
rebuilds the cache when the list of files or their sizes change. The cache lives in
``<root>/processed/``; when the data folder is read-only it goes to ``$PCATTN_CACHE`` or
``~/.cache/pcattn`` instead.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data
from tqdm import tqdm

__all__ = [
    "Entry",
    "CachedDataset",
    "DatasetError",
    "default_cache_root",
    "index_only",
    "user_stacklevel",
]

CACHE_VERSION = 1

_INDEX_ONLY = contextvars.ContextVar("pcattn_index_only", default=False)


@contextmanager
def index_only() -> Iterator[None]:
    """Readers constructed inside this block only index their files (no parse, no cache):
    what ``python -m pcattn.data.check`` uses to examine every file and report every problem
    instead of stopping at the first."""
    token = _INDEX_ONLY.set(True)
    try:
        yield
    finally:
        _INDEX_ONLY.reset(token)


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file (and line, where there is one)."""


@dataclass(frozen=True)
class Entry:
    """One item of a split: its id, the files it is read from, and its labels.

    Attributes:
        key: the item's id as the split lists it (e.g. ``airplane_0001``).
        files: the files it is parsed from (their sizes key the cache).
        label: class index (classification) or category index (segmentation).
        extra: reader-specific fields (e.g. the row of an HDF5 file), JSON-serialisable.
    """

    key: str
    files: tuple[Path, ...]
    label: int
    extra: dict = field(default_factory=dict)


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside pcattn."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("pcattn."):
        frame, level = frame.f_back, level + 1
    return level


def default_cache_root() -> Path:
    """``$PCATTN_CACHE`` or ``~/.cache/pcattn``."""
    env = os.environ.get("PCATTN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pcattn"


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


class CachedDataset(torch.utils.data.Dataset):
    r"""Base class of the file readers (see the module docstring).

    Args:
        root: the dataset folder.
        split: which split to read (reader-specific names).
        transform: a callable applied to each :class:`~torch_geometric.data.Data` on access
            (e.g. :class:`pcattn.data.transforms.Compose`).
        cache_dir: where to keep the parsed cache (default: ``<root>/processed`` when
            writable, else :func:`default_cache_root`).
        progress: show a progress bar while parsing (default: ``True``).
    """

    #: a human name for messages, e.g. ``"ModelNet40 (modelnet40_normal_resampled)"``
    name: str = "dataset"
    #: the expected folder layout, shown when the root is wrong
    layout: str = ""
    #: where the dataset comes from, shown when the root is wrong
    source: str = ""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str,
        transform: Callable[[Data], Data] | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.progress = progress
        if not self.root.is_dir():
            raise self.missing_root(f"{self.root} is not a folder")
        entries, missing = self._entries()
        listed = len(entries) + missing
        if not entries:
            raise self.missing_root(
                f"none of the {listed} items of the {split!r} split has a file under {self.root}"
                if listed
                else f"no items for the {split!r} split under {self.root}"
            )
        if missing:
            warnings.warn(
                f"{self.name}: {missing} of {listed} items of the {split!r} split have no file "
                f"under {self.root}; using the {len(entries)} found",
                stacklevel=user_stacklevel(),
            )
        self.entries = entries
        self.num_missing = missing
        self._arrays = {} if _INDEX_ONLY.get() else self._load_or_build(cache_dir)

    # --------------------------------------------------------------------------------------
    # for subclasses

    def _entries(self) -> tuple[list[Entry], int]:
        """The split's items that have files (in split order) and the number without."""
        raise NotImplementedError

    def _read(self, entry: Entry) -> dict[str, np.ndarray]:
        """The arrays of one item: ``pos (P, 3)`` and optional per-point ``x (P, C)`` and
        ``point_y (P,)``; raise :class:`DatasetError` naming the file on malformed input."""
        raise NotImplementedError

    def _params(self) -> dict:
        """Reader options that change the parsed arrays (part of the cache key)."""
        return {}

    def missing_root(self, why: str) -> FileNotFoundError:
        """The error for a missing or wrong root: why, the expected layout and the source."""
        msg = f"{self.name}: {why}."
        if self.layout:
            msg += f"\nExpected layout:\n{self.layout.rstrip()}"
        if self.source:
            msg += f"\nGet it from: {self.source}"
        return FileNotFoundError(msg)

    # --------------------------------------------------------------------------------------
    # items

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, idx: int) -> Data:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"{self.name}: index {idx} out of range for {len(self)} items")
        idx = idx % len(self)
        a = self._arrays
        lo, hi = int(a["ptr"][idx]), int(a["ptr"][idx + 1])
        data = Data(pos=torch.from_numpy(np.array(a["pos"][lo:hi], dtype=np.float32)))
        if "x" in a:
            data.x = torch.from_numpy(np.array(a["x"][lo:hi], dtype=np.float32))
        if "point_y" in a:
            data.y = torch.from_numpy(np.array(a["point_y"][lo:hi], dtype=np.int64))
            data.category = torch.tensor([int(a["label"][idx])])
        else:
            data.y = torch.tensor([int(a["label"][idx])])
        data.key = self.entries[idx].key
        return self.transform(data) if self.transform is not None else data

    def labels(self) -> np.ndarray:
        """The class (or category) index of every item, ``(len(self),)``."""
        return np.asarray(self._arrays["label"])

    # --------------------------------------------------------------------------------------
    # cache

    def cache_key(self) -> str:
        """Hash of the reader, split, options and the (path, size) of every file."""
        h = hashlib.sha256()
        head = {
            "v": CACHE_VERSION,
            "reader": type(self).__name__,
            "split": self.split,
            "params": self._params(),
        }
        h.update(json.dumps(head, sort_keys=True).encode())
        for e in self.entries:
            h.update(f"{e.key}\t{e.label}\t{json.dumps(e.extra, sort_keys=True)}\n".encode())
            for f in e.files:
                h.update(f"{f.relative_to(self.root)}\t{f.stat().st_size}\n".encode())
        return h.hexdigest()[:16]

    def cache_path(self, cache_dir: str | os.PathLike | None = None) -> Path:
        """The folder this dataset's parsed arrays live in."""
        if cache_dir is not None:
            base = Path(cache_dir)
        elif _writable(self.root / "processed"):
            base = self.root / "processed"
        else:
            base = default_cache_root()
        return base / f"{self._cache_tag()}_{self.cache_key()}"

    def _cache_tag(self) -> str:
        """Reader, split and a hash of the options: caches with the same tag are versions of
        one another (the older ones are removed), caches with other options stay."""
        params = json.dumps(self._params(), sort_keys=True).encode()
        return (
            f"{type(self).__name__}_{self.split}_{hashlib.sha256(params).hexdigest()[:8]}".lower()
        )

    def _load_or_build(self, cache_dir) -> dict[str, np.ndarray]:
        path = self.cache_path(cache_dir)
        if (path / "done").exists():
            return {p.stem: np.load(p, mmap_mode="r") for p in path.glob("*.npy")}
        arrays = self._parse_all()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v)
        (tmp / "done").write_text("ok\n")
        for old in path.parent.glob(self._cache_tag() + "_*"):
            if old.is_dir() and old != tmp and old.name.count(".") == 0:
                shutil.rmtree(old, ignore_errors=True)  # stale caches of this split
        try:
            tmp.rename(path)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        return {p.stem: np.load(p, mmap_mode="r") for p in path.glob("*.npy")}

    def _parse_all(self) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        counts = []
        it: Sequence[Entry] = self.entries
        if self.progress:
            it = tqdm(self.entries, desc=f"parsing {self.name} {self.split}", unit="shape")
        for e in it:
            item = self._read(e)
            n = len(item["pos"])
            for k, v in item.items():
                if len(v) != n:
                    raise DatasetError(f"{e.files[0]}: {k} has {len(v)} rows, pos has {n}")
                parts.setdefault(k, []).append(v)
            counts.append(n)
        out = {k: np.concatenate(v) for k, v in parts.items()}
        out["ptr"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out["label"] = np.array([e.label for e in self.entries], dtype=np.int64)
        return out

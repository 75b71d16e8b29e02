r"""What every dataset reader shares: an index of the files on disk, one parse into a cache,
and PyG ``Data`` items.

A reader subclasses :class:`CachedDataset` and implements

* :meth:`CachedDataset._entries`: the items of the requested split that have files, in split
  order, and how many listed items have none;
* :meth:`CachedDataset._read`: the arrays of one item (``pos`` and whatever else it has).

The base class parses every item once (with a progress bar) and stores the arrays as plain
``.npy`` files, memory-mapped on later runs so a large dataset is not held in RAM.

**Where.** In ``cache_dir`` when given, else in the user cache folder
(:func:`default_cache_root`: ``$PCATTN_CACHE`` or ``~/.cache/pcattn``), never inside the data
folder. Each cache is a folder ``<reader>_<root name>_<split>_<h>_<key>``: ``h`` hashes the
resolved data folder and the reader's options, so datasets and options sharing one cache folder
never collide; ``key`` hashes everything the arrays depend on (below). Older versions with the
same ``<reader>_<root name>_<split>_<h>`` are removed when a new one is written.

**When it is valid.** ``key`` covers the cache format version, the reader, split and options,
the resolved root, every item's id, label and files, and a fingerprint of each file: its size,
its ``st_mtime_ns`` and a BLAKE2b hash of its first and last 16 KiB (the whole file when it is
smaller than 32 KiB). Any edit changes the modification time, so an edit in place at the same
size (even a file overwritten with ``x``) is picked up on the next open (a ``touch`` alone
rebuilds too: safe, only slower), and the hash catches a different file copied in with its old
time kept (``cp -p``, ``rsync -t``, an archive), which differs in its first lines. The limit: a
change only in the middle of a file larger than 32 KiB whose size and ``st_mtime_ns`` were both
restored afterwards goes unnoticed; delete the cache folder (or pass another ``cache_dir``)
after such surgery. A full hash would close that gap but read every byte on every open
(ModelNet40's 12,311 ``.txt`` files, about 7 GB: about 13 s on a warm page cache here, against
about 1.4 s for the 16 KiB ends).

**When it is rebuilt.** A cache whose key does not match is rebuilt with one warning saying
why (which file changed and how, or that the file list changed). A damaged cache (a missing,
truncated or garbage ``.npy``, a missing array, unreadable or inconsistent ``meta.json``) is
rebuilt with one warning naming the damage, never an error. Writes are atomic: the arrays go
to a temporary folder beside the cache, are flushed to disk, and the folder is renamed into
place, so a build killed at any point leaves no cache that is later trusted (only a hidden
temporary folder, removed by a later build after an hour). When the cache folder cannot be
written, the parsed arrays are kept in memory with a warning.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
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
    "file_fingerprint",
    "index_only",
    "read_h5_dataset",
    "user_stacklevel",
]

CACHE_VERSION = 2
#: bytes hashed at each end of a data file for its fingerprint
FINGERPRINT_BLOCK = 1 << 14
_ORPHAN_AGE_S = 3600.0  # a temporary build folder older than this belongs to a killed build
_ARRAY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

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
        files: the files it is parsed from (their fingerprints key the cache).
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


def file_fingerprint(path: str | os.PathLike) -> tuple[int, int, str]:
    """``(size, st_mtime_ns, hash)`` of a file, what the cache key holds for it: ``hash`` is
    BLAKE2b (128 bits) of the first and last :data:`FINGERPRINT_BLOCK` bytes, or of the whole
    file when it is at most twice that long.

    Raises:
        DatasetError: the file cannot be read (named, with the reason).
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            h = hashlib.blake2b(digest_size=16)
            if st.st_size <= 2 * FINGERPRINT_BLOCK:
                h.update(f.read())
            else:
                h.update(f.read(FINGERPRINT_BLOCK))
                f.seek(-FINGERPRINT_BLOCK, os.SEEK_END)
                h.update(f.read(FINGERPRINT_BLOCK))
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the file ({err.strerror or err})") from None
    return st.st_size, st.st_mtime_ns, h.hexdigest()


#: an HDF5 dataset may claim at most this many times the bytes the file stores for it (gzip
#: compresses point coordinates about 1.1-3 times, labels more) once it claims over 64 MiB
_H5_MAX_RATIO = 1000
_H5_CHECK_ABOVE = 1 << 26


def read_h5_dataset(ds, path: str | os.PathLike, name: str) -> np.ndarray:
    """The whole of an ``h5py.Dataset`` as an array, refusing one whose shape claims far more
    data than the file stores (an HDF5 header can claim terabytes of fill values in a 2 KB
    file, which would be allocated and filled before any check could run).

    Raises:
        DatasetError: naming the file, the dataset, its shape and the bytes stored.
    """
    if not (hasattr(ds, "dtype") and hasattr(ds, "id")):  # a group, a link, ...
        raise DatasetError(f"{path}: {name!r} is not a dataset ({type(ds).__name__})")
    claimed = int(ds.size or 0) * ds.dtype.itemsize
    if claimed > _H5_CHECK_ABOVE:
        try:
            stored = int(ds.id.get_storage_size())
        except Exception:  # storage HDF5 cannot size (external, virtual): read as before
            stored = claimed
        if claimed > _H5_MAX_RATIO * stored:
            raise DatasetError(
                f"{path}: {name!r} claims shape {tuple(ds.shape)} ({claimed} bytes) but the "
                f"file stores only {stored} bytes of it"
            )
    return np.asarray(ds[()])


class CachedDataset(torch.utils.data.Dataset):
    r"""Base class of the file readers (see the module docstring).

    Args:
        root: the dataset folder.
        split: which split to read (reader-specific names).
        transform: a callable applied to each :class:`~torch_geometric.data.Data` on access
            (e.g. :class:`pcattn.data.transforms.Compose`).
        cache_dir: the folder the parsed cache is kept in (default: :func:`default_cache_root`,
            ``$PCATTN_CACHE`` or ``~/.cache/pcattn``; never inside ``root``).
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
        self._cache_dir = None if cache_dir is None else Path(cache_dir)
        #: the cache folder in use (``None`` under :func:`index_only`)
        self.cache_folder: Path | None = None
        self._arrays = {} if _INDEX_ONLY.get() else self._load_or_build()

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

    def _manifest(self) -> dict:
        """Everything the parsed arrays depend on (see the module docstring)."""
        root = self.root.resolve()
        fingerprints: dict[Path, list] = {}
        items = hashlib.sha256()
        for e in self.entries:
            names = []
            for f in e.files:
                if f not in fingerprints:
                    fingerprints[f] = [self._relative(f), *file_fingerprint(f)]
                names.append(fingerprints[f][0])
            extra = json.dumps(e.extra, sort_keys=True)
            items.update(f"{e.key}\t{e.label}\t{extra}\t{names}\n".encode())
        return {
            "version": CACHE_VERSION,
            "reader": type(self).__name__,
            "split": self.split,
            "params": self._params(),
            "root": str(root),
            "items": items.hexdigest(),
            "files": list(fingerprints.values()),
        }

    def _relative(self, f: Path) -> str:
        try:
            return f.relative_to(self.root).as_posix()
        except ValueError:  # a file outside the root: its absolute path
            return str(f.resolve())

    def cache_key(self) -> str:
        """Hash of the cache format, reader, split, options, resolved root, items and the
        fingerprint (:func:`file_fingerprint`) of every file."""
        return _digest(self._manifest())

    def cache_path(self, cache_dir: str | os.PathLike | None = None) -> Path:
        """The folder the parsed arrays of the files as they are now belong in (under
        ``cache_dir``, else the one given to the constructor, else :func:`default_cache_root`).
        """
        base = Path(cache_dir) if cache_dir is not None else self._cache_base()
        return base / f"{self._cache_tag()}_{self.cache_key()}"

    def _cache_base(self) -> Path:
        return self._cache_dir if self._cache_dir is not None else default_cache_root()

    def _cache_tag(self) -> str:
        """Reader, root name, split and a hash of the resolved root and the options: caches with
        the same tag are versions of one another (older ones are removed), others stay."""
        ident = json.dumps(
            {"root": str(self.root.resolve()), "params": self._params()}, sort_keys=True
        )
        h = hashlib.sha256(ident.encode()).hexdigest()[:8]
        words = (type(self).__name__, self.root.resolve().name or "root", self.split)
        return (
            "_".join(re.sub(r"[^a-z0-9]+", "-", w.lower()).strip("-")[:40] for w in words) + f"_{h}"
        )

    def _load_or_build(self) -> dict[str, np.ndarray]:
        manifest = self._manifest()
        key = _digest(manifest)
        base, tag = self._cache_base(), self._cache_tag()
        path = self.cache_folder = base / f"{tag}_{key}"
        arrays, damage = self._open_cache(path, key)
        if arrays is not None:
            return arrays
        stale = "" if damage else _why_stale(base, tag, path, manifest, self.root)
        if damage or stale:
            warnings.warn(
                f"{self.name}: the {self.split!r} cache {path} is damaged ({damage}); rebuilding it"
                if damage
                else f"{self.name}: the {self.split!r} cache is out of date ({stale}); "
                f"rebuilding it in {path}",
                stacklevel=user_stacklevel(),
            )
        arrays = self._parse_all()
        try:
            _write_cache(path, arrays, {**manifest, "key": key})
        except OSError as err:
            warnings.warn(
                f"{self.name}: cannot write the cache {path} ({err}); keeping the parsed arrays "
                "in memory (pass cache_dir= or set PCATTN_CACHE to a writable folder)",
                stacklevel=user_stacklevel(),
            )
            self.cache_folder = None
            return arrays
        _remove_stale(base, tag, path)
        loaded, _ = self._open_cache(path, key)
        return loaded if loaded is not None else arrays

    def _open_cache(self, path: Path, key: str) -> tuple[dict[str, np.ndarray] | None, str]:
        """The memory-mapped arrays of the cache at ``path``, or ``None`` and what is wrong
        with it (``""`` when there is none)."""
        if not path.is_dir():
            return None, ""
        meta_file = path / "meta.json"
        try:
            meta = json.loads(meta_file.read_bytes())
            if meta["key"] != key:
                return None, f"{meta_file.name} belongs to another cache (key {meta['key']!r})"
            specs = {
                str(n): (str(d), tuple(int(k) for k in shape))
                for n, (d, shape) in meta["arrays"].items()
            }
        except FileNotFoundError:
            return None, f"{meta_file.name} is missing"
        except Exception as err:  # any damage to the metadata: invalid JSON, wrong types, ...
            return None, f"{meta_file.name} is unreadable ({type(err).__name__}: {err})"
        for name in ("pos", "ptr", "label"):
            if name not in specs:
                return None, f"{meta_file.name} lists no {name!r} array"
        arrays = {}
        for name, (dtype, shape) in specs.items():
            if not _ARRAY_NAME.fullmatch(name):
                return None, f"{meta_file.name} lists an array named {name!r}"
            file = path / f"{name}.npy"
            try:
                a = np.load(file, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                return None, f"{file.name} is missing"
            except Exception as err:  # truncated, garbage, pickled: numpy raises several kinds
                return None, f"{file.name} is unreadable ({type(err).__name__}: {err})"
            if not isinstance(a, np.ndarray) or (a.dtype.str, a.shape) != (dtype, shape):
                got = f"{a.dtype.str} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                return None, f"{file.name} holds {got}, expected {dtype} {shape}"
            arrays[name] = a
        problem = _inconsistent(arrays, len(self.entries))
        return (None, problem) if problem else (arrays, "")

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


# ------------------------------------------------------------------------------------------
# cache helpers


def _digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def _versions(base: Path, tag: str) -> list[Path]:
    """The cache folders of ``tag`` under ``base``, newest first."""
    pattern = re.compile(re.escape(tag) + r"_[0-9a-f]{16}")
    try:
        found = [p for p in base.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]
    except OSError:
        return []

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(found, key=mtime, reverse=True)


def _inconsistent(arrays: dict[str, np.ndarray], num_items: int) -> str:
    """What is wrong with a cache's arrays for ``num_items`` items, or ``""``."""
    pos, ptr, label = arrays["pos"], arrays["ptr"], arrays["label"]
    if ptr.shape != (num_items + 1,) or ptr.dtype.kind not in "iu":
        return f"ptr.npy holds {ptr.dtype.str} {ptr.shape}, expected ({num_items + 1},) integers"
    if label.shape != (num_items,):
        return f"label.npy has shape {label.shape}, expected ({num_items},)"
    ptr = np.asarray(ptr)
    if ptr[0] != 0 or ptr[-1] != len(pos) or (np.diff(ptr) < 0).any():
        return f"ptr.npy does not partition the {len(pos)} points of pos.npy"
    for name, a in arrays.items():
        if name not in ("ptr", "label") and (a.ndim == 0 or len(a) != len(pos)):
            return f"{name}.npy has {len(a) if a.ndim else 0} rows, pos.npy has {len(pos)}"
    return ""


def _why_stale(base: Path, tag: str, path: Path, manifest: dict, root: Path) -> str:
    """Why the newest older cache of ``tag`` does not fit ``manifest`` (``""``: there is none,
    a first build)."""
    for old in _versions(base, tag):
        if old == path:
            continue
        try:
            meta = json.loads((old / "meta.json").read_bytes())
            before = {str(r): tuple(rest) for r, *rest in meta["files"]}
        except Exception:  # an unreadable older cache: try the next, then say nothing
            continue
        if meta.get("version") != manifest["version"]:
            return f"the cache format changed (version {meta.get('version')} -> {CACHE_VERSION})"
        now = {r: tuple(rest) for r, *rest in manifest["files"]}
        changed = [r for r in now if r in before and before[r] != now[r]]
        added, removed = len(now.keys() - before.keys()), len(before.keys() - now.keys())
        why = []
        if changed:
            (s0, _, d0), (s1, _, d1) = before[changed[0]], now[changed[0]]
            how = (
                f"size {s0} -> {s1} bytes"
                if s0 != s1
                else "content changed"
                if d0 != d1
                else "modification time changed"
            )
            more = f", and {len(changed) - 1} more files changed" if len(changed) > 1 else ""
            why.append(f"{root / changed[0]} changed ({how}){more}")
        if added or removed:
            why.append(f"the file list changed ({added} added, {removed} removed)")
        if not why and meta.get("items") != manifest["items"]:
            why.append("the split's list of items changed")
        return "; ".join(why) or "the cache key changed"
    return ""


def _save(folder: Path, name: str, write: Callable) -> None:
    """Write ``folder/name`` with ``write(file)``, flushed to disk."""
    with open(folder / name, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _write_cache(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write the cache folder ``path`` atomically: into a temporary folder beside it, flushed,
    then renamed into place (a damaged folder already there is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        for name, a in arrays.items():
            _save(tmp, f"{name}.npy", lambda f, a=a: np.save(f, a, allow_pickle=False))
        meta = {**meta, "arrays": {n: [a.dtype.str, list(a.shape)] for n, a in arrays.items()}}
        _save(tmp, "meta.json", lambda f: f.write(json.dumps(meta, sort_keys=True).encode()))
        if path.exists():  # damaged (a sound one would have been used)
            shutil.rmtree(path)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            # another process finished the same cache first: use theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(base: Path, tag: str, keep: Path) -> None:
    """Remove the other versions of ``tag`` and temporary folders of killed builds."""
    for old in _versions(base, tag):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
    now = time.time()
    for tmp in base.glob(f".{tag}_*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _ORPHAN_AGE_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass

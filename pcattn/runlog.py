r"""The run folder's I/O: a per-epoch metrics log (CSV, optional TensorBoard, a PNG of the
curves) and crash-safe file writes for checkpoints.

A run folder written by ``train.py`` holds ``log.csv`` (one row per epoch: ``epoch`` then one
column per metric), ``curves.png`` (drawn from the CSV by :meth:`RunLog.plot`), optionally a
``tensorboard/`` folder of event files, and checkpoints written with :func:`atomic_torch_save`,
so a run killed at any moment leaves either the old checkpoint or the new one, never half of one.
A write that fails (disk full) removes its temporary file and raises an :class:`OSError` that
names the file; :func:`remove_stale_temp_files` sweeps the temporary files a killed run left.

Nothing here knows about models, datasets or distributed training: in a distributed run only
rank 0 should create a :class:`RunLog` (every rank logging would write the same file at once).

Optional dependencies, imported lazily: ``tensorboard`` (event files) and ``matplotlib`` (plot).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import operator
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "RunLog",
    "read_log",
    "plot_curves",
    "atomic_copy",
    "atomic_write_bytes",
    "atomic_torch_save",
    "remove_stale_temp_files",
]

# figure geometry of plot_curves (inches at _DPI): every panel is _PANEL_HEIGHT tall, the
# learning-rate panel _LR_PANEL_HEIGHT; the figure is _FIG_WIDTH wide
_FIG_WIDTH = 8.0
_PANEL_HEIGHT = 3.0
_LR_PANEL_HEIGHT = 1.5
_DPI = 100
_SPLIT_PREFIXES = ("train_", "val_", "test_")


# ---------------------------------------------------------------------------------------------
# atomic writes


# the temporary files of this module (``.last.pt.0123456789ab.tmp``), and those of earlier
# versions of train.py (``checkpoints/epoch_0001.pt.tmp``): all a sweep may remove
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")
_OLD_TEMP_NAME = re.compile(r"epoch_\d+\.pt\.tmp")


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _naming(e: OSError, path: Path, verb: str = "write") -> OSError:
    """``e`` as the same kind of :class:`OSError` with a message that names ``path`` (a failed
    ``write()`` says only ``No space left on device``)."""
    message = f"cannot {verb} {path}: {e.strerror or e or type(e).__name__}"
    try:
        return type(e)(e.errno, message) if e.errno is not None else type(e)(message)
    except TypeError:  # an OSError subclass with another constructor
        return OSError(e.errno, message)


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` only once the ``with`` block has succeeded.

    The data goes to a hidden temporary file in the same folder (so the final rename stays on
    one file system), is flushed and fsync-ed, then ``os.replace``-d over ``path``; the folder
    is fsync-ed too where the platform allows it, so the rename itself survives a power cut.
    On any error the temporary file is removed and ``path`` is left as it was; an
    :class:`OSError` (disk full) is raised again naming ``path``.
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        # O_EXCL: never clobber anything; mode 0o666 lets the umask decide, as for open()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o666)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entry table to disk (POSIX); a no-op where folders cannot be opened."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:  # Windows: folders cannot be opened this way
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    r"""Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same folder, which is flushed, fsync-ed and then
    renamed over ``path`` with :func:`os.replace`. If anything fails, ``path`` is untouched and
    the temporary file is removed.

    Args:
        path (str or PathLike): The file to (re)place. Its folder must exist.
        data (bytes): The complete new contents.
    """
    with _atomic_file(path) as f:
        f.write(data)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    r""":func:`torch.save` ``obj`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    The checkpoint is streamed straight into the temporary file, so it is never held twice in
    memory; a run killed mid-save leaves the previous checkpoint at ``path`` intact.

    Args:
        obj: Anything :func:`torch.save` accepts (a checkpoint dict).
        path (str or PathLike): The checkpoint file. Its folder must exist.
    """
    import torch

    with _atomic_file(path) as f:
        torch.save(obj, f)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    r"""Copy the file ``src`` to ``dst`` atomically (see :func:`atomic_write_bytes`): a copy
    that fails halfway (disk full) leaves ``dst`` as it was and no temporary file.

    Args:
        src (str or PathLike): The file to copy.
        dst (str or PathLike): The copy. Its folder must exist.
    """
    try:
        source = open(src, "rb")
    except OSError as e:
        raise _naming(e, Path(src), "read") from e
    with source, _atomic_file(dst) as f:
        shutil.copyfileobj(source, f, 1 << 20)


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    r"""Remove the temporary files a killed writer left in ``folder`` (not in sub-folders),
    and return them.

    Only names this module's writes use (``.NAME.<12 hex digits>.tmp``) and the
    ``epoch_N.pt.tmp`` of the epoch checkpoint copies of earlier versions of ``train.py``
    match; nothing else is touched. Call it
    before a run starts writing to ``folder``, never while another process writes there.

    Args:
        folder (str or PathLike): A run folder or its ``checkpoints/``; missing is fine.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if (_TEMP_NAME.fullmatch(name) or _OLD_TEMP_NAME.fullmatch(name)) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# the CSV log


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    r"""Read a ``log.csv`` written by :class:`RunLog`.

    Each row becomes a dict with ``"epoch"`` (an ``int``) and one ``float`` per non-empty cell;
    an empty cell (a metric not logged that epoch) is left out of the dict. A last line without
    its newline (the run was killed while writing it) is ignored.

    Args:
        path (str or PathLike): The CSV file.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file has no ``epoch`` column or a cell is not a number.
    """
    return _read_csv(Path(path))[1]


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, float]]]:
    """The header (``["epoch"]`` for an empty file) and the rows of a log, see :func:`read_log`."""
    if not path.is_file():
        raise FileNotFoundError(f"log file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # drop the cut-off last line
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return ["epoch"], []
    if not header or header[0] != "epoch":
        raise ValueError(f"{path}: the first column must be 'epoch', got header {header}")
    rows: list[dict[str, float]] = []
    for cells in reader:
        line = reader.line_num
        if not cells:
            continue
        if len(cells) > len(header):
            raise ValueError(
                f"{path}, line {line}: {len(cells)} cells but the header has {len(header)}"
            )
        try:
            row: dict[str, float] = {"epoch": int(cells[0])}
        except ValueError:
            raise ValueError(f"{path}, line {line}: epoch {cells[0]!r} is not an integer") from None
        for name, cell in zip(header[1:], cells[1:], strict=False):
            if cell == "":
                continue
            try:
                row[name] = float(cell)
            except ValueError:
                raise ValueError(
                    f"{path}, line {line}: column {name!r} holds {cell!r}, not a number"
                ) from None
        rows.append(row)
    return header, rows


class RunLog:
    r"""Per-epoch metrics of one training run: ``log.csv``, optional TensorBoard, a PNG plot.

    :meth:`log` adds the metrics of one epoch as a row of ``folder/log.csv`` (columns ``epoch``
    then the metric names in the order they first appeared; floats written with full ``repr``
    precision so they read back exactly). The file is flushed after every row, so a killed run
    keeps its log. A metric that first appears later (say validation every 5 epochs) adds a
    column: the file is rewritten, atomically, with the union of columns and empty cells in the
    older rows. Two calls for the same epoch fill one row.

    Resuming: with ``resume=True`` the rows already in ``log.csv`` are kept, and the first
    :meth:`log` call drops the kept rows whose epoch is ``>=`` its own, so epochs that the
    killed run logged after its last checkpoint are replaced rather than duplicated. With
    ``resume=False`` an existing ``log.csv`` is removed and the log starts empty.

    Only one process may log to a folder: in a distributed run, create the ``RunLog`` on
    rank 0 only.

    Args:
        folder (str or PathLike): The run folder (created if missing).
        tensorboard (bool or str, optional): ``"auto"`` also writes TensorBoard scalars to
            ``folder/tensorboard`` when the ``tensorboard`` package is installed; ``True``
            requires it (:class:`ImportError` otherwise); ``False`` never uses it.
            (default: ``"auto"``)
        resume (bool, optional): Keep the rows of an existing ``log.csv`` (see above).
            (default: :obj:`False`)

    Example::

        with RunLog("runs/modelnet40-pt") as log:
            for epoch in range(epochs):
                log.log(epoch, {"train_loss": loss, "lr": lr, "val_oa": oa})
            log.plot()
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        tensorboard: bool | str = "auto",
        resume: bool = False,
    ) -> None:
        if tensorboard not in (True, False, "auto") or not isinstance(tensorboard, (bool, str)):
            raise ValueError(f"tensorboard must be True, False or 'auto', got {tensorboard!r}")
        # fail on a missing package before touching the folder
        self._writer_cls = _summary_writer_class(tensorboard)
        self._writer: Any = None  # created at the first log(), when the purge step is known
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / "log.csv"
        self._resume = bool(resume)
        self._columns: list[str] = ["epoch"]
        self._rows: list[dict[str, float]] = []
        self._last_epoch: int | None = None  # last epoch logged by this object
        self._needs_rewrite = False  # the file may not match _rows (an append failed)
        self._closed = False
        if resume and self.csv_path.is_file():
            self._columns, self._rows = _read_csv(self.csv_path)
        elif not resume:
            with contextlib.suppress(FileNotFoundError):
                self.csv_path.unlink()

    @property
    def uses_tensorboard(self) -> bool:
        """Whether scalars also go to TensorBoard event files in ``folder/tensorboard``."""
        return self._writer_cls is not None

    def log(self, epoch: int, metrics: Mapping[str, float]) -> None:
        r"""Record ``metrics`` for ``epoch`` (a row of ``log.csv`` and TensorBoard scalars).

        Args:
            epoch (int): The epoch; not smaller than the last one this object logged. Logging
                the same epoch again adds its metrics to that row (new values win).
            metrics (Mapping[str, float]): Metric name -> value (a Python or NumPy number or a
                one-element tensor). Names must be non-empty and not ``"epoch"``.
        """
        if self._closed:
            raise RuntimeError(f"RunLog for {self.folder} is closed")
        epoch = _check_epoch(epoch)
        values = _check_metrics(metrics)
        if self._last_epoch is not None and epoch < self._last_epoch:
            raise ValueError(
                f"epoch {epoch} comes before the last logged epoch {self._last_epoch}; "
                "epochs must not go backwards within a run"
            )

        # build the new state aside and commit it only once the file is written, so a failed
        # write (disk full) leaves this object matching the file on disk
        rows, columns = list(self._rows), list(self._columns)
        rewrite = self._needs_rewrite or not self.csv_path.is_file()
        if self._last_epoch is None and self._resume:
            # first call after resuming: forget what the killed run logged from here on, and
            # rewrite the file once (which also drops a line cut off by the kill)
            rows = [row for row in rows if row["epoch"] < epoch]
            rewrite = True
        new_columns = [name for name in values if name not in columns]
        if new_columns:
            columns += new_columns
            rewrite = True
        if self._last_epoch == epoch:
            rows[-1] = {**rows[-1], **values}
            rewrite = True
        else:
            rows.append({"epoch": epoch, **values})

        if rewrite:
            atomic_write_bytes(self.csv_path, _csv_text(columns, rows, header=True))
        else:
            self._needs_rewrite = True  # until the append below is known to be complete
            try:
                with open(self.csv_path, "ab") as f:
                    f.write(_csv_text(columns, rows[-1:], header=False))
                    f.flush()
            except OSError as e:  # disk full: the next call rewrites the file whole
                raise _naming(e, self.csv_path) from e
        self._rows, self._columns, self._last_epoch = rows, columns, epoch
        self._needs_rewrite = False

        if self._writer_cls is not None:
            if self._writer is None:
                log_dir = str(self.folder / "tensorboard")
                # purge_step hides events a killed run wrote for epochs now being redone
                purge = epoch if self._resume else None
                self._writer = self._writer_cls(log_dir=log_dir, purge_step=purge)
            for name, value in values.items():
                self._writer.add_scalar(name, value, epoch)
            self._writer.flush()

    def rows(self) -> list[dict[str, float]]:
        """The rows of ``log.csv`` read back from disk (see :func:`read_log`); ``[]`` if none."""
        if not self.csv_path.is_file():
            return []
        return read_log(self.csv_path)

    def plot(self, path: str | os.PathLike | None = None) -> Path:
        """Draw the logged curves with :func:`plot_curves` to ``path`` (default
        ``folder/curves.png``) and return the path."""
        path = self.folder / "curves.png" if path is None else Path(path)
        return plot_curves(self.rows(), path)

    def close(self) -> None:
        """Close the TensorBoard writer (the CSV is already complete on disk). Idempotent."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._closed = True

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.folder)!r}, rows={len(self._rows)}, "
            f"tensorboard={self.uses_tensorboard})"
        )


def _csv_text(
    columns: Sequence[str], rows: Sequence[Mapping[str, float]], *, header: bool
) -> bytes:
    """CSV lines for ``rows`` (``epoch`` as an integer, floats at full ``repr`` precision)."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        cells = [str(int(row["epoch"]))]
        cells += [repr(float(row[c])) if c in row else "" for c in columns[1:]]
        writer.writerow(cells)
    return buf.getvalue().encode("utf-8")


def _check_epoch(epoch: object) -> int:
    if isinstance(epoch, bool):
        raise ValueError(f"epoch must be an integer, got {epoch!r}")
    try:
        return operator.index(epoch)
    except TypeError:
        raise ValueError(f"epoch must be an integer, got {epoch!r}") from None


def _check_metrics(metrics: object) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
    if not metrics:
        raise ValueError("metrics is empty; log at least one value")
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name or name == "epoch":
            raise ValueError(
                f"metric names must be non-empty strings other than 'epoch', got {name!r}"
            )
        if isinstance(value, (str, bytes)):
            raise ValueError(f"metric {name!r} must be a number, got {value!r}")
        try:
            values[name] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"metric {name!r} must be a number, got {value!r}") from None
    return values


def _summary_writer_class(tensorboard: bool | str) -> Any:
    """``SummaryWriter`` if TensorBoard is wanted and importable, else ``None``."""
    if tensorboard is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if tensorboard == "auto":
            return None
        raise ImportError(
            "RunLog(tensorboard=True) needs the tensorboard package: pip install tensorboard "
            "(or pass tensorboard='auto' or False)"
        ) from e
    return SummaryWriter


# ---------------------------------------------------------------------------------------------
# the plot


def _panels(rows: Sequence[Mapping[str, float]]) -> list[tuple[str, list[str]]]:
    """Group the metric columns into panels: losses, scores in [0, 1], one panel per other
    metric (``train_x`` / ``val_x`` / ``test_x`` share one), and the learning rate last."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c != "epoch" and c not in columns]

    def in_unit_interval(c: str) -> bool:
        vals = [row[c] for row in rows if c in row and math.isfinite(row[c])]
        return all(0.0 <= v <= 1.0 for v in vals)

    lr = [c for c in columns if c == "lr" or c.startswith("lr_")]
    loss = [c for c in columns if "loss" in c.lower() and c not in lr]
    rest = [c for c in columns if c not in lr and c not in loss]
    scores = [c for c in rest if in_unit_interval(c)]
    other: dict[str, list[str]] = {}
    for c in rest:
        if c in scores:
            continue
        key = next((c[len(p) :] for p in _SPLIT_PREFIXES if c.startswith(p) and c != p), c)
        other.setdefault(key, []).append(c)

    panels = [("loss", loss)] if loss else []
    panels += [("scores", scores)] if scores else []
    panels += list(other.items())
    panels += [("learning rate", lr)] if lr else []
    return panels


def plot_curves(rows: Sequence[Mapping[str, float]], path: str | os.PathLike) -> Path:
    r"""Plot per-epoch metrics (rows as returned by :func:`read_log`) to a PNG file.

    Panels, top to bottom, sharing the epoch axis: every column whose name contains ``loss``;
    every other metric whose values all lie in ``[0, 1]`` (accuracies, mIoU); one panel per
    remaining metric, where ``train_x``, ``val_x`` and ``test_x`` share the panel ``x``; and
    ``lr`` (or ``lr_*``) on a log scale. A metric missing in some rows is drawn at the epochs
    where it exists. The figure is 8 inches wide, 3 inches tall per panel (1.5 for the
    learning rate), at 100 dpi. The file is written atomically. Uses matplotlib's object API
    (``Figure`` + Agg canvas), so the global pyplot backend is left alone.

    Args:
        rows (Sequence[Mapping[str, float]]): One mapping per epoch with an ``"epoch"`` key.
        path (str or PathLike): The PNG file to write.

    Returns:
        The path written, as a :class:`~pathlib.Path`.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise ImportError("plotting the curves needs matplotlib: pip install matplotlib") from e

    panels = _panels(rows)
    if not panels:
        raise ValueError("nothing to plot: the log has no metric values yet")
    path = Path(path)
    heights = [
        _LR_PANEL_HEIGHT if title == "learning rate" else _PANEL_HEIGHT for title, _ in panels
    ]
    fig = Figure(figsize=(_FIG_WIDTH, sum(heights)), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = {"height_ratios": heights}
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, gridspec_kw=grid)[:, 0]
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            pts = [(row["epoch"], row[name]) for row in rows if name in row]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name)
        if title == "learning rate":
            positive = any(row[n] > 0 for row in rows for n in names if n in row)
            if positive:
                ax.set_yscale("log", nonpositive="mask")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    atomic_write_bytes(path, buf.getvalue())
    return path

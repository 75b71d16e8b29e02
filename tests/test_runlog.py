"""Tests for pcattn.runlog: the CSV metrics log, TensorBoard switch, curves plot, atomic saves."""

from __future__ import annotations

import csv
import errno
import os
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from pcattn.runlog import (
    RunLog,
    atomic_copy,
    atomic_torch_save,
    atomic_write_bytes,
    plot_curves,
    read_log,
    remove_stale_temp_files,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def csv_cells(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------------------------------------
# CSV


def test_rows_and_header_exact_and_flushed_before_close(tmp_path):
    log = RunLog(tmp_path / "run", tensorboard=False)
    log.log(0, {"train_loss": 1 / 3, "lr": 0.1})
    # readable while the log is still open: every row is flushed
    assert csv_cells(tmp_path / "run" / "log.csv") == [
        ["epoch", "train_loss", "lr"],
        ["0", "0.3333333333333333", "0.1"],
    ]
    log.log(1, {"train_loss": np.float32(0.5), "lr": torch.tensor(0.025, dtype=torch.float64)})
    cells = csv_cells(tmp_path / "run" / "log.csv")
    assert cells == [
        ["epoch", "train_loss", "lr"],
        ["0", "0.3333333333333333", "0.1"],
        ["1", "0.5", "0.025"],
    ]
    # full precision: the text reads back to the identical double
    assert float(cells[1][1]) == 1 / 3
    log.close()


def test_metric_order_follows_first_appearance_not_dict_order_later(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log(0, {"b": 1.0, "a": 2.0})
        log.log(1, {"a": 3.0, "b": 4.0})
    assert csv_cells(tmp_path / "log.csv") == [
        ["epoch", "b", "a"],
        ["0", "1.0", "2.0"],
        ["1", "4.0", "3.0"],
    ]


def test_new_column_later_rewrites_with_union_and_empty_cells(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log(0, {"train_loss": 1.0})
        log.log(1, {"train_loss": 0.5})
        log.log(2, {"train_loss": 0.25, "val_oa": 0.75})
        log.log(3, {"train_loss": 0.125})
        assert log.rows() == [
            {"epoch": 0, "train_loss": 1.0},
            {"epoch": 1, "train_loss": 0.5},
            {"epoch": 2, "train_loss": 0.25, "val_oa": 0.75},
            {"epoch": 3, "train_loss": 0.125},
        ]
    assert csv_cells(tmp_path / "log.csv") == [
        ["epoch", "train_loss", "val_oa"],
        ["0", "1.0", ""],
        ["1", "0.5", ""],
        ["2", "0.25", "0.75"],
        ["3", "0.125", ""],
    ]
    assert sorted(os.listdir(tmp_path)) == ["log.csv"]  # no temporary file left behind
    assert isinstance(read_log(tmp_path / "log.csv")[0]["epoch"], int)


def test_same_epoch_twice_fills_one_row(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log(0, {"train_loss": 1.0})
        log.log(0, {"val_oa": 0.5})
        log.log(1, {"train_loss": 0.5})
    assert csv_cells(tmp_path / "log.csv") == [
        ["epoch", "train_loss", "val_oa"],
        ["0", "1.0", "0.5"],
        ["1", "0.5", ""],
    ]


def test_special_values_round_trip(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log(0, {"train_loss": float("nan"), "grad_norm": float("inf"), "x": -0.0})
    assert csv_cells(tmp_path / "log.csv")[1] == ["0", "nan", "inf", "-0.0"]
    (row,) = read_log(tmp_path / "log.csv")
    assert np.isnan(row["train_loss"]) and row["grad_norm"] == float("inf")


def test_epoch_going_backwards_is_an_error(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log(5, {"loss": 1.0})
        with pytest.raises(ValueError, match="epoch 4 comes before the last logged epoch 5"):
            log.log(4, {"loss": 1.0})


@pytest.mark.parametrize(
    ("epoch", "metrics", "message"),
    [
        (True, {"loss": 1.0}, "epoch must be an integer, got True"),
        (1.0, {"loss": 1.0}, "epoch must be an integer, got 1.0"),
        (0, {}, "metrics is empty"),
        (0, [("loss", 1.0)], "metrics must be a dict"),
        (0, {"epoch": 1.0}, "other than 'epoch', got 'epoch'"),
        (0, {"": 1.0}, "other than 'epoch', got ''"),
        (0, {"loss": "0.5"}, "metric 'loss' must be a number, got '0.5'"),
        (0, {"loss": torch.ones(2)}, "metric 'loss' must be a number"),
        (0, {"loss": None}, "metric 'loss' must be a number, got None"),
    ],
)
def test_log_validates_arguments(tmp_path, epoch, metrics, message):
    log = RunLog(tmp_path, tensorboard=False)
    with pytest.raises(ValueError, match=message):
        log.log(epoch, metrics)
    assert not (tmp_path / "log.csv").exists()  # nothing written by the failed call


def test_numpy_integer_epoch_accepted(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log(np.int64(7), {"loss": 2.0})
    assert csv_cells(tmp_path / "log.csv")[1] == ["7", "2.0"]


def test_closed_log_refuses_rows(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log(0, {"loss": 1.0})
    with pytest.raises(RuntimeError, match="is closed"):
        log.log(1, {"loss": 1.0})


# ---------------------------------------------------------------------------------------------
# resume


def test_resume_drops_epochs_from_the_first_new_one(tmp_path):
    killed = RunLog(tmp_path, tensorboard=False)
    for e in range(5):
        killed.log(e, {"train_loss": 10.0 - e})
    killed.log(4, {"val_oa": 0.5})
    # the run dies without close(); the checkpoint was from epoch 2, so epoch 3 is redone
    with RunLog(tmp_path, tensorboard=False, resume=True) as log:
        assert [r["epoch"] for r in log.rows()] == [0, 1, 2, 3, 4]  # nothing dropped yet
        log.log(3, {"train_loss": 0.5})
        log.log(4, {"train_loss": 0.25})
    assert csv_cells(tmp_path / "log.csv") == [
        ["epoch", "train_loss", "val_oa"],
        ["0", "10.0", ""],
        ["1", "9.0", ""],
        ["2", "8.0", ""],
        ["3", "0.5", ""],
        ["4", "0.25", ""],
    ]


def test_resume_past_the_end_keeps_every_row(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log(0, {"loss": 1.0})
        log.log(1, {"loss": 0.5})
    with RunLog(tmp_path, tensorboard=False, resume=True) as log:
        log.log(2, {"loss": 0.25, "val_oa": 1.0})
    assert csv_cells(tmp_path / "log.csv") == [
        ["epoch", "loss", "val_oa"],
        ["0", "1.0", ""],
        ["1", "0.5", ""],
        ["2", "0.25", "1.0"],
    ]


def test_resume_without_a_log_starts_one(tmp_path):
    with RunLog(tmp_path / "new", tensorboard=False, resume=True) as log:
        assert log.rows() == []
        log.log(3, {"loss": 1.0})
    assert csv_cells(tmp_path / "new" / "log.csv") == [["epoch", "loss"], ["3", "1.0"]]


def test_fresh_run_replaces_an_old_log(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log(0, {"old": 1.0})
    with RunLog(tmp_path, tensorboard=False) as log:
        assert log.rows() == []
        log.log(0, {"new": 2.0})
    assert csv_cells(tmp_path / "log.csv") == [["epoch", "new"], ["0", "2.0"]]


def test_line_cut_off_by_a_kill_is_ignored_and_repaired(tmp_path):
    (tmp_path / "log.csv").write_text("epoch,loss\n0,1.0\n1,0.5\n2,0.2", encoding="utf-8")
    assert read_log(tmp_path / "log.csv") == [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}]
    with RunLog(tmp_path, tensorboard=False, resume=True) as log:
        log.log(2, {"loss": 0.25})
    assert (tmp_path / "log.csv").read_text(
        encoding="utf-8"
    ) == "epoch,loss\n0,1.0\n1,0.5\n2,0.25\n"


def test_read_log_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "log.csv"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_log(path)
    path.write_text("step,loss\n0,1.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match="first column must be 'epoch'"):
        read_log(path)
    path.write_text("epoch,loss\n0,1.0\n1,oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3: column 'loss' holds 'oops', not a number"):
        read_log(path)
    path.write_text("epoch,loss\n0,1.0,7\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: 3 cells but the header has 2"):
        read_log(path)


# ---------------------------------------------------------------------------------------------
# TensorBoard


def test_tensorboard_required_but_missing_raises_with_pip_hint(tmp_path, monkeypatch):
    (tmp_path / "log.csv").write_text("epoch,loss\n0,1.0\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        RunLog(tmp_path, tensorboard=True)
    assert read_log(tmp_path / "log.csv") == [{"epoch": 0, "loss": 1.0}]  # left untouched
    log = RunLog(tmp_path, tensorboard="auto")
    assert not log.uses_tensorboard
    log.log(0, {"loss": 1.0})
    log.close()
    assert sorted(os.listdir(tmp_path)) == ["log.csv"]


def test_tensorboard_argument_validated(tmp_path):
    with pytest.raises(ValueError, match="tensorboard must be True, False or 'auto', got 'yes'"):
        RunLog(tmp_path, tensorboard="yes")
    with pytest.raises(ValueError, match="got 1"):
        RunLog(tmp_path, tensorboard=1)


class FakeWriter:
    instances: list[FakeWriter] = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.flushes = 0
        self.closed = False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
    FakeWriter.instances = []
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    return FakeWriter.instances


def test_tensorboard_scalars_per_epoch(tmp_path, fake_tensorboard):
    with RunLog(tmp_path, tensorboard=True) as log:
        assert log.uses_tensorboard
        assert fake_tensorboard == []  # the writer is made at the first row
        log.log(0, {"train_loss": 2.0, "lr": 0.5})
        log.log(1, {"train_loss": 1.0})
        (writer,) = fake_tensorboard
        assert writer.log_dir == str(tmp_path / "tensorboard")
        assert writer.purge_step is None
        assert writer.scalars == [("train_loss", 2.0, 0), ("lr", 0.5, 0), ("train_loss", 1.0, 1)]
        assert writer.flushes == 2 and not writer.closed
    assert writer.closed


def test_tensorboard_auto_uses_it_and_resume_purges_redone_epochs(tmp_path, fake_tensorboard):
    with RunLog(tmp_path, tensorboard="auto", resume=True) as log:
        assert log.uses_tensorboard
        log.log(3, {"loss": 1.0})
    assert fake_tensorboard[0].purge_step == 3
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log(0, {"loss": 1.0})
    assert len(fake_tensorboard) == 1  # False never makes a writer


# ---------------------------------------------------------------------------------------------
# plot


def check_png(path, width_in: float, height_in: float) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (round(height_in * 100), round(width_in * 100))
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) > 1


def test_plot_writes_png_with_one_panel_per_group(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        for e in range(6):
            metrics = {"train_loss": 1.0 / (e + 1), "train_acc": e / 10, "lr": 0.1 * 0.5**e}
            if e % 2 == 1:
                metrics.update(val_loss=1.5 / (e + 1), val_oa=e / 8, val_macc=e / 9)
            log.log(e, metrics)
        path = log.plot()
    assert path == tmp_path / "curves.png"
    # loss, scores in [0, 1], learning rate: 3 + 3 + 1.5 inches tall, 8 wide, 100 dpi
    check_png(path, 8, 7.5)
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "log.csv"]


def test_plot_other_metrics_get_a_panel_per_name_shared_across_splits(tmp_path):
    rows = [
        {"epoch": e, "train_loss": 1.0, "train_time": 30.0 + e, "val_time": 5.0, "grad_norm": 2.0}
        for e in range(3)
    ]
    out = plot_curves(rows, tmp_path / "sub.png")
    assert out == tmp_path / "sub.png"
    # loss, time (train_time + val_time), grad_norm; no lr panel: 3 * 3 inches
    check_png(out, 8, 9)


def test_plot_lr_reaching_zero_and_single_epoch(tmp_path):
    rows = [{"epoch": 0, "lr": 0.1}, {"epoch": 1, "lr": 0.0}]
    check_png(plot_curves(rows, tmp_path / "a.png"), 8, 1.5)
    check_png(plot_curves([{"epoch": 0, "val_oa": 0.5}], tmp_path / "b.png"), 8, 3)


def test_plot_custom_path_and_empty_log(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    with pytest.raises(ValueError, match="nothing to plot"):
        log.plot()
    log.log(0, {"loss": 1.0})
    assert log.plot(tmp_path / "other.png") == tmp_path / "other.png"
    assert (tmp_path / "other.png").read_bytes()[:8] == PNG_SIGNATURE
    log.close()


def test_plot_without_matplotlib_raises_with_pip_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_curves([{"epoch": 0, "loss": 1.0}], tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_torch_save_round_trip(tmp_path):
    path = tmp_path / "ckpt.pt"
    obj = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 4, "config": {"lr": 0.1}}
    atomic_torch_save(obj, path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["model"]["w"], obj["model"]["w"])
    assert loaded["epoch"] == 4 and loaded["config"] == {"lr": 0.1}
    atomic_torch_save({"epoch": 5}, path)  # replaces an existing file
    assert torch.load(path, weights_only=True) == {"epoch": 5}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_atomic_write_bytes_replaces_content(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"first, longer content")
    atomic_write_bytes(path, b"2nd")
    assert path.read_bytes() == b"2nd"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_atomic_write_gets_the_same_mode_as_a_plain_open(tmp_path):
    atomic_write_bytes(tmp_path / "a", b"x")
    (tmp_path / "b").write_bytes(b"x")
    assert (tmp_path / "a").stat().st_mode & 0o777 == (tmp_path / "b").stat().st_mode & 0o777


def test_failed_replace_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_torch_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_save_interrupted_halfway_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"epoch": 1}, path)
    before = path.read_bytes()

    def half_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # a kill between two writes

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_failed_csv_rewrite_keeps_the_old_log(tmp_path, monkeypatch):
    log = RunLog(tmp_path, tensorboard=False)
    log.log(0, {"loss": 1.0})

    def broken_replace(src, dst):
        raise OSError("no space left")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="no space left"):
        log.log(1, {"loss": 0.5, "val_oa": 0.25})  # a new column forces a rewrite
    monkeypatch.undo()
    assert csv_cells(tmp_path / "log.csv") == [["epoch", "loss"], ["0", "1.0"]]
    assert sorted(os.listdir(tmp_path)) == ["log.csv"]
    log.log(1, {"loss": 0.5, "val_oa": 0.25})  # the object still matches the file: retry works
    log.close()
    assert csv_cells(tmp_path / "log.csv") == [
        ["epoch", "loss", "val_oa"],
        ["0", "1.0", ""],
        ["1", "0.5", "0.25"],
    ]


def test_log_retried_after_a_failed_write_gives_the_right_file(tmp_path, monkeypatch):
    log = RunLog(tmp_path, tensorboard=False)
    log.log(0, {"loss": 1.0})
    real_open = open

    def open_then_fail(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "a" in mode:  # the append of a row: half of it reaches the file
            f.write(b"1,0.")
            f.close()
            raise OSError("no space left")
        return f

    monkeypatch.setattr("builtins.open", open_then_fail)
    with pytest.raises(OSError, match="no space left"):
        log.log(1, {"loss": 0.5})
    monkeypatch.undo()
    log.log(1, {"loss": 0.5})  # the retry rewrites the file whole
    log.log(2, {"loss": 0.25})
    log.close()
    assert (tmp_path / "log.csv").read_text(encoding="utf-8") == (
        "epoch,loss\n0,1.0\n1,0.5\n2,0.25\n"
    )


# ---------------------------------------------------------------------------------------------
# a full disk, and what killed writers leave


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _half_then_no_space(source, f, *rest):  # torch.save(obj, f) / copyfileobj(src, f, size)
    f.write(b"PK\x03\x04 the first half")
    _no_space()


@pytest.mark.parametrize("writer", ["atomic_torch_save", "atomic_write_bytes", "atomic_copy"])
def test_a_full_disk_removes_the_temporary_file_and_names_the_file(tmp_path, monkeypatch, writer):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"the previous checkpoint")
    source = tmp_path / "new.pt"
    source.write_bytes(b"the new checkpoint")
    if writer == "atomic_torch_save":
        monkeypatch.setattr(torch, "save", _half_then_no_space)
        write = lambda: atomic_torch_save({"epoch": 2}, path)  # noqa: E731
    elif writer == "atomic_write_bytes":
        monkeypatch.setattr(os, "fsync", _no_space)  # the data reached the disk cache only
        write = lambda: atomic_write_bytes(path, b"new bytes")  # noqa: E731
    else:
        monkeypatch.setattr(shutil, "copyfileobj", _half_then_no_space)
        write = lambda: atomic_copy(source, path)  # noqa: E731
    with pytest.raises(OSError) as e:
        write()
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    assert str(e.value) == f"[Errno 28] cannot write {path}: {os.strerror(errno.ENOSPC)}"
    assert path.read_bytes() == b"the previous checkpoint"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "new.pt"]


def test_atomic_copy_copies_and_names_a_missing_source(tmp_path):
    data = bytes(range(256)) * 5000  # more than one chunk of the copy
    (tmp_path / "a").write_bytes(data)
    atomic_copy(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match=f"cannot read {missing}: "):
        atomic_copy(missing, tmp_path / "c")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_a_full_disk_during_a_log_append_names_the_log(tmp_path, monkeypatch):
    log = RunLog(tmp_path, tensorboard=False)
    log.log(0, {"loss": 1.0})
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "a" in mode:
            f.write = _no_space
        return f

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(OSError) as e:
        log.log(1, {"loss": 0.5})
    monkeypatch.undo()
    assert str(e.value) == (
        f"[Errno 28] cannot write {tmp_path / 'log.csv'}: {os.strerror(errno.ENOSPC)}"
    )
    log.log(1, {"loss": 0.5})
    assert csv_cells(tmp_path / "log.csv") == [["epoch", "loss"], ["0", "1.0"], ["1", "0.5"]]


def test_stale_temp_files_are_swept_and_nothing_else(tmp_path):
    stale = [".last.pt.0123456789ab.tmp", ".log.csv.a1b2c3d4e5f6.tmp", "epoch_0001.pt.tmp"]
    kept = [
        "last.pt",
        "notes.tmp",  # not a name of ours
        ".last.pt.tmp",  # no random part
        ".last.pt.0123456789AB.tmp",  # upper-case hex: not written by us
        ".last.pt.0123456789ab.tmp.bak",
        "epoch_0001.pt",
        "data.tmp",
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".dir.0123456789ab.tmp").mkdir()  # a folder is never removed
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, ".dir.0123456789ab.tmp"])
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_the_temporary_file_of_a_killed_write_is_one_the_sweep_removes(tmp_path, monkeypatch):
    seen = []

    def killed_save(obj, f):
        seen.extend(os.listdir(tmp_path))  # the write in flight
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 1}, tmp_path / "last.pt")
    monkeypatch.undo()
    assert len(seen) == 1 and os.listdir(tmp_path) == []  # removed at once here; a kill -9
    (tmp_path / seen[0]).write_bytes(b"half")  # would have left it: the sweep finds it
    assert remove_stale_temp_files(tmp_path) == [tmp_path / seen[0]]

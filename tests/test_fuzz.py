"""Fuzzing the readers of untrusted input (PLY, PointNet HDF5, config YAML and overrides) with
hypothesis: any bytes or text give a result or one of the documented errors (``ValueError``
with the file named, ``DatasetError``, ``ConfigError``), never another exception. OFF, txt and
ShapeNetPart files are fuzzed in ``tests/data/``."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcattn.config import Config, ConfigError, apply_overrides, load_config
from pcattn.data.modelnet import DatasetError, ModelNet
from pcattn.ply import read_ply, write_ply

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DIR = Path(tempfile.mkdtemp(prefix="pcattn-fuzz-"))


def _valid_ply(binary: bool) -> bytes:
    path = _DIR / ("valid_bin.ply" if binary else "valid_ascii.ply")
    pts = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    write_ply(path, pts, colors=np.full((4, 3), 200, np.uint8), labels=np.arange(4),
              binary=binary)  # fmt: skip
    return path.read_bytes()


def _read_ply_bytes(data: bytes) -> None:
    path = _DIR / "fuzz.ply"
    path.write_bytes(data)
    try:
        out = read_ply(path)
    except ValueError as e:
        assert str(path) in str(e)  # the error names the file
        return
    n = out["points"].shape[0]
    assert out["points"].shape == (n, 3) and out["points"].dtype == np.float32


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([b"", b"ply\n", b"ply\nformat ascii 1.0\n"]))
def test_fuzz_ply_random_bytes(data, head):
    _read_ply_bytes(head + data)


@FUZZ
@given(st.data())
def test_fuzz_ply_mutations_of_valid_files(data):
    buf = bytearray(_valid_ply(data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[i] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del buf[i:]
            if not buf:
                break
        else:
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    _read_ply_bytes(bytes(buf))


def _valid_h5() -> bytes:
    bio = io.BytesIO()
    with h5py.File(bio, "w") as h5:
        h5["data"] = np.zeros((2, 5, 3), np.float32)
        h5["label"] = np.array([[1], [3]], np.uint8)
    return bio.getvalue()


_H5 = _valid_h5()


@FUZZ
@given(st.data())
def test_fuzz_hdf5_mutations(data):
    buf = bytearray(_H5)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(buf) - 1))
        if data.draw(st.booleans()):
            buf[i] = data.draw(st.integers(0, 255))
        else:
            del buf[i:]
            break
    path = _DIR / "ply_data_train0.h5"
    path.write_bytes(bytes(buf))
    try:
        reader = object.__new__(ModelNet)  # only the checker, no dataset folder
        reader.num_classes, reader.num_points = 40, None
        labels = reader._check_hdf5(path)
    except DatasetError as e:
        assert str(path) in str(e)
        return
    assert labels.ndim == 1


_YAML_ALPHABET = "abcdefghijklmnopqrstuvwxyz_.:-[]{}0123456789 \n\t'\"#!&*|>%@,?"


@FUZZ
@given(st.text(alphabet=_YAML_ALPHABET, max_size=200))
def test_fuzz_config_files(text):
    path = _DIR / "fuzz.yaml"
    path.write_text(text)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(path) in str(e)
        return
    assert isinstance(cfg, Config)


_KEYS = ["data.name", "train.epochs", "optim.lr", "model.k", "run.out", "train.batch_size",
         "model.channels", "schedule.warmup_epochs", "nope", "train", ""]  # fmt: skip


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(_KEYS), st.text(alphabet=_YAML_ALPHABET, max_size=20)),
        max_size=3,
    ),
    st.booleans(),
)
def test_fuzz_config_overrides(pairs, dashes):
    overrides = [("--" if dashes else "") + f"{k}={v}" for k, v in pairs]
    try:
        cfg = apply_overrides(Config(), overrides)
    except ConfigError:
        return
    assert isinstance(cfg, Config)


def teardown_module(module):
    for p in _DIR.iterdir():
        os.unlink(p)
    _DIR.rmdir()

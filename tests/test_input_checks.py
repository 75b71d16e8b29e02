"""Bad input at the public boundaries outside the layers (kernels, graph builders, transforms,
``train.py`` options, the viewer) gets one error naming the argument, file or option.

The layers have their own table in ``tests/nn/test_input_checks.py``; readers and the config
parser are fuzzed in ``tests/test_fuzz.py`` and the reader tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from pcattn import graphs, ops
from pcattn.config import ConfigError, load_config
from pcattn.data import transforms as T
from pcattn.experiment import build_data, build_model
from pcattn.viz import load_predictions
from pcattn.viz import main as viz_main

ROOT = Path(__file__).resolve().parents[1]


def _raises(message: str):
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


# --------------------------------------------------------------------------------------------
# kernels: every index is range-checked (an id out of range would read another node's row, or
# memory no tensor owns, inside a sparse kernel)
# --------------------------------------------------------------------------------------------

SRC = torch.tensor([0, 1, 2, 3])
BAD = torch.tensor([0, 1, 2, 9])
NEG = torch.tensor([0, -1, 2, 3])


def test_scatter_and_softmax_check_their_index():
    src = torch.randn(4, 2)
    with _raises("index holds ids in [0, 9] but there are 4 nodes"):
        ops.scatter(src, BAD, 4)
    with _raises("index holds ids in [-1, 3] but there are 4 nodes"):
        ops.scatter(src, NEG, 4)
    with _raises("index holds negative ids (min -1)"):
        ops.scatter(src, NEG)
    with _raises("index holds ids in [0, 9] but there are 4 nodes"):
        ops.segment_softmax(src, BAD, 4)
    with _raises("src must hold floating-point scores, got torch.int64"):
        ops.segment_softmax(torch.arange(4), SRC, 4)
    with _raises("num_nodes must be >= 0, got -1"):
        ops.segment_softmax(src, SRC, -1)


def test_csr_kernels_check_their_row_pointers():
    src = torch.randn(4, 2)
    with _raises("ptr must run from 0 to E=4, got ptr[0]=0, ptr[-1]=5"):
        ops.scatter_csr(src, torch.tensor([0, 2, 5]))
    with _raises("ptr must run from 0 to E=4, got ptr[0]=1, ptr[-1]=4"):
        ops.segment_softmax_csr(src, torch.tensor([1, 2, 4]))
    with _raises("ptr must be non-decreasing, but ptr[1]=3 > ptr[2]=2"):
        ops.scatter_csr(src, torch.tensor([0, 3, 2, 4]))
    with _raises("index must be sorted ascending, but index[1]=2 > index[2]=1"):
        ops.index_to_ptr(torch.tensor([0, 2, 1]), 3)
    with _raises("index holds ids in [0, 3] but there are 3 nodes"):
        ops.index_to_ptr(torch.tensor([0, 1, 3]), 3)


def test_weighted_aggregate_edge_dot_and_vector_attention_check_their_edges():
    w, v = torch.rand(4, 1), torch.randn(4, 1, 2)
    with _raises("src holds ids in [0, 9] but there are 4 nodes"):
        ops.weighted_aggregate(w, v, BAD, SRC, 4)
    with _raises("dst holds ids in [0, 9] but there are 4 nodes"):
        ops.weighted_aggregate(w, v, SRC, BAD, 4)
    with _raises("weights has 4 edges but src has 3, dst 4"):
        ops.weighted_aggregate(w, v, SRC[:3], SRC, 4)
    with _raises("weights must be (E, H), got (4,)"):
        ops.weighted_aggregate(w[:, 0], v, SRC, SRC, 4)
    q = torch.randn(4, 1, 2)
    with _raises("src holds ids in [-1, 3] but there are 4 nodes"):
        ops.edge_dot(q, q, NEG, SRC)
    with _raises("dst holds ids in [0, 9] but there are 4 nodes"):
        ops.edge_dot(q, q, SRC, BAD)
    with _raises("src must be int64 (or int32), got torch.float32"):
        ops.edge_dot(q, q, SRC.float(), SRC)
    vals = torch.randn(4, 4)
    with _raises("src holds ids in [0, 9] but there are 4 nodes"):
        ops.vector_attention(vals, BAD, SRC, 4, logits=torch.randn(4, 4))
    with _raises("dst holds ids in [0, 3] but there are 3 nodes"):
        ops.vector_attention(vals, SRC, SRC, 3, logits=torch.randn(4, 4))


def test_sparse_kernels_fall_back_for_half_precision():
    # the CPU sparse kernels have no bfloat16 version; the gather path must take over and
    # agree with float32 to bfloat16 precision
    g = torch.Generator().manual_seed(0)
    w, v = torch.rand(40, 2, generator=g), torch.randn(10, 2, 3, generator=g)
    src, dst = torch.randint(0, 10, (40,), generator=g), torch.randint(0, 10, (40,), generator=g)
    ref = ops.weighted_aggregate(w, v, src, dst, 10)
    half = ops.weighted_aggregate(w.bfloat16(), v.bfloat16(), src, dst, 10)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref, atol=0.08, rtol=0.02)
    q = torch.randn(10, 2, 3, generator=g)
    ref = ops.edge_dot(q, v, src, dst)
    torch.testing.assert_close(
        ops.edge_dot(q.bfloat16(), v.bfloat16(), src, dst).float(), ref, atol=0.08, rtol=0.02
    )


def test_vector_attention_keeps_a_nan_input_nan():
    # the online softmax once tested `sum > 0`, which is False for NaN: the target silently got 0
    vals = torch.randn(4, 4)
    logits = torch.randn(4, 4)
    logits[1, 2] = float("nan")  # edge 1 -> target 1
    out = ops.vector_attention(vals, SRC, SRC, 4, logits=logits)
    bad = (~torch.isfinite(out)).any(1)
    assert bad.tolist() == [False, True, False, False]


# --------------------------------------------------------------------------------------------
# graph builders
# --------------------------------------------------------------------------------------------


def test_graph_builders_check_devices_and_attributes():
    pos = torch.randn(10, 3)
    batch = torch.zeros(10, dtype=torch.long)
    with _raises("batch is on meta but pos is on cpu; they must be on one device"):
        graphs.knn_graph(pos, 3, batch.to("meta"))
    with _raises("batch is on meta but pos is on cpu; they must be on one device"):
        graphs.fps(pos, batch=batch.to("meta"), ratio=0.5)
    with _raises("batch_y is on meta but y is on cpu; they must be on one device"):
        graphs.knn(pos, pos, 3, batch_x=batch, batch_y=batch.to("meta"))
    ei = torch.tensor([[0, 1], [1, 2]])
    with _raises("edge_attr must be a tensor (2, ...) or None, got int"):
        graphs.add_self_loops(ei, 3)
    with _raises("edge_attr must be a tensor (2, ...) or None, got (3,)"):
        graphs.remove_self_loops(ei, torch.ones(3))
    with _raises("edge_index holds negative node ids (min -1)"):
        graphs.add_self_loops(torch.tensor([[0, -1], [1, 2]]))
    with _raises("edge_weight must have shape (2,), got list"):
        graphs.replace_self_loops(ei, [1.0, 2.0])


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------


def test_transforms_refuse_part_labels_that_do_not_match_the_points():
    data = Data(pos=torch.randn(20, 3), y=torch.zeros(7, dtype=torch.long), category=torch.zeros(1))
    for t in (T.NormalizeSphere(), T.Resample(16, seed=0), T.Shuffle(seed=0)):
        name = type(t).__name__
        with _raises(
            f"{name}: data.y has shape (7,) but data.pos has 20 rows; with a category, y holds "
            "one part label per point"
        ):
            t(data)
    # without a category, a y of another length is a per-shape label and is left alone
    out = T.Resample(16, seed=0)(Data(pos=torch.randn(20, 3), y=torch.tensor([4])))
    assert out.pos.shape == (16, 3) and out.y.tolist() == [4]


# --------------------------------------------------------------------------------------------
# train.py: options the dataset or model refuse become ConfigErrors; a clean exit, no traceback
# --------------------------------------------------------------------------------------------


def test_data_and_model_options_refused_by_their_classes_are_config_errors():
    cfg = load_config(ROOT / "configs" / "default.yaml", ["data.num_points=8"])
    with pytest.raises(
        ConfigError,
        match=r"^data \(synthetic\): SyntheticParts: num_points must be an int >= 16, got 8$",
    ):
        build_data(cfg)
    cfg = load_config(ROOT / "configs" / "default.yaml", ["model.channels=[0, 4, 4]"])
    _, _, info = build_data(load_config(ROOT / "configs" / "default.yaml", ["data.train_shapes=8"]))
    with pytest.raises(
        ConfigError,
        match=r"^model 'attention_net_cls': channels must be ints >= 1, got \[0, 4, 4\]$",
    ):
        build_model(cfg, info)


def _train(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"--run.out={tmp_path / 'run'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--train.batch_size=1"],
            "error: train.batch_size (1) must give every process at least 2 shapes: the "
            "classification head's BatchNorm needs 2 per batch",
        ),
        (
            ["--data.num_points=8"],
            "error: data (synthetic): SyntheticParts: num_points must be an int >= 16, got 8",
        ),
        (
            ["--model.chanels=[8]"],
            "error: override 'model.chanels=[8]': unknown key 'model.chanels' for model "
            "'attention_net_cls'; did you mean 'channels'?",
        ),
        (["--votes=0"], "train.py: error: argument --votes: must be an integer >= 1, got 0"),
    ],
)
def test_train_py_refuses_bad_options_with_one_line(args, message, tmp_path):
    r = _train(*args, tmp_path=tmp_path)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


# --------------------------------------------------------------------------------------------
# the viewer's predictions file
# --------------------------------------------------------------------------------------------


def _predictions(path: Path, **change) -> Path:
    arrays = {
        "pos": np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32),
        "ptr": np.array([0, 4, 10]),
        "pred": np.array([0, 1, 1, 2, 0, 0, 1, 2, 2, 1]),
        "target": np.array([0, 1, 1, 2, 0, 1, 1, 2, 2, 1]),
        "category": np.array([0, 1]),
        "category_names": np.array(["a", "b"]),
        "class_names": np.array(["p", "q", "r"]),
        "task": np.array("segmentation"),
    }
    arrays.update(change)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_load_predictions_reads_a_valid_file(tmp_path):
    z = load_predictions(_predictions(tmp_path / "p.npz"))
    assert z["ptr"].tolist() == [0, 4, 10] and str(z["task"]) == "segmentation"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pred": None}, "missing arrays ['pred']; write it with train.py --save-predictions"),
        ({"ptr": np.array([0, 4, 9])}, "ptr must rise from 0 to the 10 points"),
        ({"ptr": np.array([0, 6, 4, 10])}, "ptr must rise from 0 to the 10 points"),
        ({"pred": np.arange(10)}, "pred holds labels in [0, 9] but there are 3 class names"),
        ({"target": np.zeros(9, dtype=np.int64)}, "target must be 10 integer labels, got (9,)"),
        ({"category": np.array([0, 2])}, "category must be one index < 2 per shape"),
        (
            {"pos": np.full((10, 3), np.nan)},
            "pos must be finite floats (P, D), got (10, 3) float64",
        ),
    ],
)
def test_load_predictions_refuses_inconsistent_files(change, message, tmp_path):
    path = _predictions(tmp_path / "p.npz", **change)
    with _raises(f"{path}: {message}"):
        load_predictions(path)


def test_load_predictions_refuses_missing_damaged_and_pickled_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="predictions file not found"):
        load_predictions(tmp_path / "none.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"junk.npz: not a readable predictions \.npz \("):
        load_predictions(junk)
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, pos=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match=r"obj.npz: not a readable predictions \.npz \(ValueError"):
        load_predictions(pickled)


def test_viewer_command_line_reports_errors_in_one_line(tmp_path):
    path = _predictions(tmp_path / "p.npz", pred=np.arange(10))
    with pytest.raises(SystemExit, match=r"^error: .*pred holds labels in \[0, 9\]"):
        viz_main(["predictions", str(path), "--out", str(tmp_path / "png")])
    assert not (tmp_path / "png").exists()
    with pytest.raises(SystemExit, match=r"^error: cannot read checkpoint"):
        viz_main(["attention", "--checkpoint", str(path)])
    with pytest.raises(SystemExit):  # argparse: --max must be >= 1
        viz_main(["predictions", str(path), "--out", str(tmp_path), "--max", "0"])

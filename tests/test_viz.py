"""The viewer: headless renders of a real ShapeNetPart sample, comparisons, grids, attention
maps (weights checked against the layer), the command line and the missing-driver error."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from pcattn import viz
from pcattn.graphs import full_graph, knn_graph
from pcattn.nn import ExternalAttention, MultiHeadSelfAttention, PointTransformerLayer

WHITE = np.array([255, 255, 255])


@pytest.fixture(scope="module")
def renderer():
    """Skip when this machine cannot render headless, unless ``PCATTN_REQUIRE_VIZ=1`` (CI)."""
    try:
        viz.check_renderer()
    except RuntimeError as e:
        if os.environ.get("PCATTN_REQUIRE_VIZ") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def sample(data_root, tmp_path_factory):
    from pcattn.data import ShapeNetPart

    root = data_root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    cache = tmp_path_factory.mktemp("cache")
    ds = ShapeNetPart(root, split="all", progress=False, cache_dir=cache)
    return ds


def _has_colour(img: np.ndarray, rgb01: np.ndarray, tol: int = 2) -> int:
    """Pixels within ``tol`` of the colour (an unlit render keeps colours exact)."""
    target = np.round(np.asarray(rgb01) * 255)
    return int((np.abs(img.astype(int) - target).max(-1) <= tol).sum())


def test_real_sample_renders_with_its_label_colours(renderer, sample):
    d = sample[0]
    labels = d.y.numpy()
    img = viz.render_points(d.pos, viz.label_colors(labels), view="iso", width=400, height=300)
    assert img.shape == (300, 400, 3) and img.dtype == np.uint8
    drawn = (img != WHITE).any(-1).mean()
    assert 0.01 < drawn < 0.9  # neither blank nor all cloud
    for lab in np.unique(labels):  # every part's colour is in the image
        assert _has_colour(img, viz.PALETTE[lab % 20]) > 20, lab
    other = viz.render_points(d.pos, viz.label_colors(labels), view="top", width=400, height=300)
    assert np.abs(other.astype(int) - img.astype(int)).mean() > 1.0  # two views differ


def test_render_segmentation_writes_a_png(renderer, sample, tmp_path):
    import matplotlib.image as mpimg

    d = sample[2]
    path = viz.render_segmentation(d.pos, d.y, tmp_path / "a" / "seg.png", title=d.key)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = (mpimg.imread(path)[..., :3] * 255).round()
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10
    for lab in np.unique(d.y.numpy()):
        assert _has_colour(img, viz.PALETTE[lab % 20], tol=3) > 20


def test_comparison_marks_exactly_the_wrong_points(renderer, sample, tmp_path):
    d = sample[0]
    img_ok = viz.render_points(d.pos, viz.label_colors(d.y), width=320, height=240)
    assert _has_colour(img_ok, viz.WRONG_COLOR) == 0
    pred = d.y.clone()
    pred[:200] = (pred[:200] + 1) % 50
    path = viz.render_comparison(d.pos, d.y, pred, tmp_path / "cmp.png", width=320, height=240)
    import matplotlib.image as mpimg

    img = (mpimg.imread(path)[..., :3] * 255).round()
    assert _has_colour(img, viz.WRONG_COLOR, tol=3) > 20


def test_grid_of_shapes(renderer, sample, tmp_path):
    clouds = [(d.pos, d.y, d.key) for d in (sample[i] for i in range(len(sample)))]
    path = viz.render_grid(clouds, tmp_path / "grid.png", cols=2, width=200, height=160)
    import matplotlib.image as mpimg

    h, w = mpimg.imread(path).shape[:2]
    assert w > 2 * 200 and h > 2 * 160  # a 2 x 2 grid


def test_labels_and_points_are_checked():
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\) like the points"):
        viz.render_segmentation(np.zeros((3, 3)), np.zeros(2, dtype=int), "x.png")
    with pytest.raises(ValueError, match="points has a non-finite coordinate at row 1"):
        viz.render_segmentation(
            np.array([[0, 0, 0], [np.nan, 0, 0]]), np.zeros(2, dtype=int), "x.png"
        )
    with pytest.raises(ValueError, match="labels must be integers"):
        viz.label_colors(np.zeros(3))


def test_palette_is_fixed_and_distinct():
    colors = viz.label_colors(np.arange(20))
    assert np.array_equal(colors, viz.PALETTE)
    assert np.array_equal(viz.label_colors(np.array([21])), viz.PALETTE[[1]])
    gaps = np.linalg.norm(colors[:, None] - colors[None], axis=-1) + np.eye(20)
    assert gaps.min() > 0.09  # the closest pair (tab20 neighbours) is 0.098 apart in RGB


class _OneLayer(nn.Module):
    """A model with one attention layer over its own kNN (or full) graph."""

    def __init__(self, layer, graph: str):
        super().__init__()
        self.layer, self.graph = layer, graph

    def forward(self, data):
        if self.graph == "knn":
            ei = knn_graph(data.pos, 8, data.batch, loop=True)
            return self.layer(data.x, ei, data.pos)
        return self.layer(data.x, full_graph(data.batch))


def _cloud(n=60, c=16):
    torch.manual_seed(0)
    return Batch.from_data_list([Data(pos=torch.randn(n, 3), x=torch.randn(n, c))])


def test_attention_map_of_a_local_layer_follows_its_weights():
    data = _cloud()
    model = _OneLayer(PointTransformerLayer(16, 16, share_planes=4), "knn")
    assert viz.attention_layers(model) == ["layer"]
    cap = viz.capture_attention(model, data, "layer")
    ei = knn_graph(data.pos, 8, data.batch, loop=True)
    ref_ei, ref_w = model.layer.eval().attention_weights(data.x, ei, data.pos)
    assert torch.equal(cap.edge_index, ref_ei) and torch.equal(cap.weights, ref_w)
    assert torch.equal(cap.pos, data.pos)
    q = 7
    values = viz.query_weights(cap.edge_index, cap.weights, q, 60)
    expected = torch.zeros(60, dtype=torch.float64)
    for e in range(ref_ei.size(1)):  # independent loop: mean over channel groups, per edge
        if int(ref_ei[1, e]) == q:
            expected[int(ref_ei[0, e])] += ref_w[e].double().mean()
    torch.testing.assert_close(values, expected)
    assert int((values > 0).sum()) == 8 and values.sum().item() == pytest.approx(1.0)
    colors = viz.weight_colors(values)
    from matplotlib import colormaps

    top = int(values.argmax())
    assert np.allclose(colors[top], colormaps["viridis"](1.0)[:3])
    off = int(torch.nonzero(values == 0)[0])
    assert np.allclose(colors[off], colormaps["viridis"](0.0)[:3])


def test_attention_map_of_a_global_layer_and_heads():
    data = _cloud(40, 8)
    model = _OneLayer(MultiHeadSelfAttention(8, 8, heads=2), "full")
    cap = viz.capture_attention(model, data, "layer")
    values = viz.query_weights(cap.edge_index, cap.weights, 3, 40, head=1)
    assert int((values > 0).sum()) == 40 and values.sum().item() == pytest.approx(1.0)
    mine = cap.edge_index[1] == 3
    expected = torch.zeros(40, dtype=torch.float64).index_add_(
        0, cap.edge_index[0, mine], cap.weights[mine, 1].double()
    )
    torch.testing.assert_close(values, expected)
    with pytest.raises(ValueError, match=r"head must be in \[0, 2\), got 2"):
        viz.query_weights(cap.edge_index, cap.weights, 3, 40, head=2)


def test_memory_slots_cannot_be_drawn_on_the_cloud():
    data = _cloud(30, 8)

    class Ext(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = ExternalAttention(8, slots=40)

        def forward(self, d):
            return self.layer(d.x, batch=d.batch)

    cap = viz.capture_attention(Ext(), data, "layer")
    with pytest.raises(ValueError, match="memory slots or pooled keys"):
        viz.query_weights(cap.edge_index, cap.weights, 0, 30)


def test_capture_names_the_valid_layers():
    model = _OneLayer(PointTransformerLayer(16, 16, share_planes=4), "knn")
    with pytest.raises(
        ValueError, match=r"layer 'nope' has no attention weights; choose one of \['layer'\]"
    ):
        viz.capture_attention(model, _cloud(), "nope")


def test_attention_render_shows_the_weight_colours(renderer, tmp_path):
    data = _cloud()
    model = _OneLayer(PointTransformerLayer(16, 16, share_planes=4), "knn")
    cap = viz.capture_attention(model, data, "layer")
    values = viz.query_weights(cap.edge_index, cap.weights, 5, 60)
    path = viz.render_attention(cap.pos, values, 5, tmp_path / "att.png", point_size=10)
    import matplotlib.image as mpimg

    img = (mpimg.imread(path)[..., :3] * 255).round()
    assert _has_colour(img, viz.QUERY_COLOR, tol=3) > 10


def test_show_without_a_display_renders_and_says_so(renderer, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = viz.show_segmentation(
        np.random.default_rng(0).random((50, 3)), np.arange(50) % 3, fallback=tmp_path / "s.png"
    )
    assert out == tmp_path / "s.png" and out.is_file()
    assert f"no display: rendered to {out}" in capsys.readouterr().err


def test_predictions_command(renderer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray relative write would land here
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(150, 3)).astype(np.float32)
    target = rng.integers(0, 4, 150)
    pred = target.copy()
    pred[:10] = (pred[:10] + 1) % 4
    np.savez(
        tmp_path / "predictions.npz",
        pos=pos,
        ptr=np.array([0, 70, 150]),
        pred=pred,
        target=target,
        class_names=np.array(["a/0", "a/1", "b/0", "b/1"]),
        task=np.array("segmentation"),
        category=np.array([0, 1]),
        category_names=np.array(["a", "b"]),
    )
    viz.main(["predictions", str(tmp_path / "predictions.npz"), "--out", str(tmp_path / "png")])
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "shape_0000.png",
        "shape_0001.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["png", "predictions.npz"]  # only --out


def test_shape_command_renders_a_real_sample(renderer, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PCATTN_CACHE", str(tmp_path / "cache"))
    root = data_root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    out = tmp_path / "shape.png"
    viz.main(["shape", str(root), "--index", "0", "--out", str(out)])
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_missing_vulkan_is_a_clear_error(monkeypatch):
    import ctypes

    def refuse(name, *a, **k):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    with pytest.raises(RuntimeError, match="apt-get install libusb-1.0-0 libvulkan1 mesa-vulkan"):
        viz.check_renderer()


def test_nearest_point_picks_the_closest():
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert viz.nearest_point(pts, (0.9, 0.2, 0.0)) == 1
    assert viz.nearest_point(torch.tensor(pts), (0.0, 1.2, 0.1)) == 2


def test_attention_command_from_a_train_checkpoint(renderer, tmp_path, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("pcattn_train_for_viz", root / "train.py")
    train = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train
    spec.loader.exec_module(train)
    out = tmp_path / "run"
    train.main(
        [
            "--config", str(root / "configs" / "synthetic_seg.yaml"),
            "--data.train_shapes=4", "--data.val_shapes=2", "--data.num_points=64",
            "--train.batch_size=2", "--train.max_steps=1", "--model.channels=[8,16]",
            "--model.blocks=[1,1]", "--model.k=4", f"--run.out={out}", "--run.progress=false",
        ]
    )  # fmt: skip
    viz.main(["attention", "--checkpoint", str(out / "last.pt")])
    listed = capsys.readouterr().out
    assert "encoder.stages.0.0.op.layer" in listed and "encoder.stages.1.0.op.layer" in listed
    png = tmp_path / "att.png"
    viz.main(
        ["attention", "--checkpoint", str(out / "last.pt"), "--layer",
         "encoder.stages.1.0.op.layer", "--near", "0", "0", "0", "--out", str(png)]
    )  # fmt: skip
    assert png.read_bytes()[:4] == b"\x89PNG"

r"""Look at point clouds: part segmentations, predictions against ground truth, and what a
point attends to, rendered headless to PNG with Open3D or shown in a window.

* :func:`label_colors` maps integer labels to a fixed palette; :func:`render_points` renders
  coloured points to an image (camera fitted to the cloud's bounding sphere, a named or
  ``(azimuth, elevation)`` view); :func:`render_segmentation`, :func:`render_comparison` and
  :func:`render_grid` write PNGs with titles and a legend of part names.
* :func:`capture_attention` runs a model once and returns the per-edge weights of one of its
  attention layers (its ``attention_weights``, the same call as its ``forward``);
  :func:`query_weights` turns them into the weight each point receives from one query point;
  :func:`render_attention` colours the cloud by it.
* :func:`show_segmentation` opens a window when a display exists and otherwise renders to a
  PNG and says where.
* PLY export and import are :func:`pcattn.ply.write_ply` / :func:`pcattn.ply.read_ply`
  (plain numpy, no Open3D needed).

Open3D is imported only here, and only when something is drawn. Headless Linux needs
``libusb-1.0-0`` (to import it) and a Vulkan driver, ``libvulkan1`` and
``mesa-vulkan-drivers`` (to render); :func:`check_renderer` looks for them first, because
Open3D aborts the process rather than raising when the driver is missing.

Command line: ``python -m pcattn.viz {predictions,shape,attention} ...`` (``--help``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import glob
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .checks import positive_int_arg
from .ply import read_ply, write_ply

__all__ = [
    "PALETTE",
    "WRONG_COLOR",
    "AttentionCapture",
    "attention_layers",
    "capture_attention",
    "check_renderer",
    "label_colors",
    "load_predictions",
    "nearest_point",
    "query_weights",
    "read_ply",
    "render_attention",
    "render_comparison",
    "render_grid",
    "render_points",
    "render_segmentation",
    "show_segmentation",
    "weight_colors",
    "write_ply",
]

#: 20 well-separated colours (RGB in [0, 1]); label ``l`` takes ``PALETTE[l % 20]``
PALETTE = np.array(
    [
        [0.122, 0.467, 0.706],
        [1.000, 0.498, 0.055],
        [0.173, 0.627, 0.173],
        [0.839, 0.153, 0.157],
        [0.580, 0.404, 0.741],
        [0.549, 0.337, 0.294],
        [0.890, 0.467, 0.761],
        [0.498, 0.498, 0.498],
        [0.737, 0.741, 0.133],
        [0.090, 0.745, 0.812],
        [0.682, 0.780, 0.910],
        [1.000, 0.733, 0.471],
        [0.596, 0.875, 0.541],
        [1.000, 0.596, 0.588],
        [0.773, 0.690, 0.835],
        [0.769, 0.612, 0.580],
        [0.969, 0.714, 0.824],
        [0.780, 0.780, 0.780],
        [0.859, 0.859, 0.553],
        [0.620, 0.855, 0.898],
    ]
)
#: colour of wrongly predicted points in :func:`render_comparison`
WRONG_COLOR = np.array([0.85, 0.0, 0.0])
#: colour of the query point in :func:`render_attention`
QUERY_COLOR = np.array([1.0, 0.0, 1.0])

_VIEWS = {  # name -> (azimuth, elevation) in degrees; y is up, the camera looks at the centre
    "front": (0.0, 0.0),
    "back": (180.0, 0.0),
    "left": (-90.0, 0.0),
    "right": (90.0, 0.0),
    "top": (0.0, 89.0),
    "iso": (35.0, 25.0),
}


# --------------------------------------------------------------------------------------------
# inputs and colours


def _points(points, name: str = "points") -> np.ndarray:
    p = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] == 0:
        raise ValueError(f"{name} must be an array of shape (N, 3) with N >= 1, got {p.shape}")
    if not np.issubdtype(p.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {p.dtype}")
    p = p.astype(np.float64)
    bad = ~np.isfinite(p).all(1)
    if bad.any():
        raise ValueError(f"{name} has a non-finite coordinate at row {int(np.argmax(bad))}")
    return p


def _labels(labels, n: int, name: str = "labels") -> np.ndarray:
    y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like the points, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    if n and y.min() < 0:
        raise ValueError(f"{name} must be >= 0, got {int(y.min())}")
    return y.astype(np.int64)


def label_colors(labels) -> np.ndarray:
    r"""RGB in ``[0, 1]`` for integer labels ``(N,)`` -> ``(N, 3)``: ``PALETTE[label % 20]``."""
    y = _labels(labels, len(labels))
    return PALETTE[y % len(PALETTE)]


def weight_colors(values, *, cmap: str = "viridis") -> np.ndarray:
    r"""Colours ``(N, 3)`` of non-negative ``values (N,)`` scaled by their maximum (a zero
    vector is all the colour of 0), through a matplotlib colormap."""
    from matplotlib import colormaps

    v = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, np.float64)
    if v.ndim != 1 or not np.isfinite(v).all() or (v < 0).any():
        raise ValueError("values must be a finite, non-negative vector (N,)")
    top = v.max() if v.size else 0.0
    scaled = v / top if top > 0 else v
    return colormaps[cmap](scaled)[:, :3]


# --------------------------------------------------------------------------------------------
# rendering


def check_renderer() -> None:
    r"""Raise ``RuntimeError`` saying what to install when Open3D cannot render headless here:
    Open3D itself (``libusb-1.0-0``) and a Vulkan loader with a driver (``libvulkan1``,
    ``mesa-vulkan-drivers``). Checked before any renderer is made, since Open3D aborts the
    process instead of raising when the driver is missing."""
    hint = (
        "headless rendering needs Open3D and a Vulkan driver; on Debian / Ubuntu: "
        "apt-get install libusb-1.0-0 libvulkan1 mesa-vulkan-drivers"
    )
    try:
        import open3d  # noqa: F401
    except (ImportError, OSError) as e:
        raise RuntimeError(f"cannot import open3d ({e}); {hint}") from None
    try:
        ctypes.CDLL("libvulkan.so.1")
    except OSError:
        raise RuntimeError(f"no Vulkan loader (libvulkan.so.1); {hint}") from None
    icds = os.environ.get("VK_ICD_FILENAMES") or os.environ.get("VK_DRIVER_FILES")
    dirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"]
    if not icds and not any(glob.glob(os.path.join(d, "*.json")) for d in dirs):
        raise RuntimeError(f"no Vulkan driver (no ICD file in {', '.join(dirs)}); {hint}")


_RENDERER: dict[str, object] = {}  # "size" -> (width, height), "renderer" -> the renderer


def _renderer(width: int, height: int):
    """The Open3D offscreen renderer for this image size. One lives at a time: making one
    costs about a second, and with two alive Open3D aborts the process at exit, so a new size
    releases the old renderer first."""
    if _RENDERER.get("size") != (width, height):
        check_renderer()
        import open3d as o3d

        old = _RENDERER.pop("renderer", None)
        if old is not None:
            old.scene.clear_geometry()
            del old
            gc.collect()
        r = o3d.visualization.rendering.OffscreenRenderer(width, height)
        r.scene.view.set_post_processing(False)  # else label colours come out washed out
        _RENDERER.update(size=(width, height), renderer=r)
    return _RENDERER["renderer"]


def _camera(
    points: np.ndarray, view, fov: float, aspect: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eye, centre and up vector looking at ``points`` from ``view``, as close as keeps every
    point inside the frame (with a 5 % margin)."""
    if isinstance(view, str):
        if view not in _VIEWS:
            raise ValueError(f"view must be one of {sorted(_VIEWS)} or (azimuth, elevation)")
        azim, elev = _VIEWS[view]
    else:
        azim, elev = (float(v) for v in view)
    centre = (points.min(0) + points.max(0)) / 2
    a, e = np.radians(azim), np.radians(elev)
    back = np.array([np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)])  # to the eye
    up = np.array([0.0, 1.0, 0.0])
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    rel = points - centre
    x, y, z = rel @ right, rel @ true_up, rel @ back  # camera-frame coordinates
    tan_y = np.tan(np.radians(fov) / 2)
    tan_x = tan_y * aspect
    # the eye at distance d sees point (x, y, z) at depth d - z: keep |x| <= (d - z) tan_x
    need = np.maximum(np.abs(x) / tan_x + z, np.abs(y) / tan_y + z).max()
    distance = max(float(need) * 1.05, float(np.abs(rel).max()) * 1e-3 + 1e-6)
    return centre + back * distance, centre, true_up


def render_points(
    points,
    colors,
    *,
    view: str | Sequence[float] = "iso",
    width: int = 640,
    height: int = 480,
    point_size: float = 5.0,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    fov: float = 40.0,
    big: Sequence[int] = (),
) -> np.ndarray:
    r"""Render coloured points headless; returns the image ``(height, width, 3)`` uint8.

    Args:
        points: ``(N, 3)`` array or tensor.
        colors: ``(N, 3)`` RGB in ``[0, 1]``.
        view: ``"front"``, ``"back"``, ``"left"``, ``"right"``, ``"top"``, ``"iso"``
            (default) or ``(azimuth, elevation)`` in degrees, y up.
        width, height: image size in pixels (default: ``640 x 480``).
        point_size: point size in pixels (default: ``5``).
        background: RGB in ``[0, 1]`` (default: white).
        fov: vertical field of view in degrees (default: ``40``); the camera stands as close
            as keeps every point in the frame.
        big: indices of points drawn three times larger (e.g. a query point).
    """
    import open3d as o3d

    p = _points(points)
    c = np.asarray(colors, dtype=np.float64)
    if c.shape != p.shape or not np.isfinite(c).all() or c.min() < 0 or c.max() > 1:
        raise ValueError(f"colors must be RGB in [0, 1] of shape {p.shape}, got {c.shape}")
    r = _renderer(int(width), int(height))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
    cloud.colors = o3d.utility.Vector3dVector(c)
    material = o3d.visualization.rendering.MaterialRecord()
    material.shader = "defaultUnlit"
    material.point_size = float(point_size)
    r.scene.clear_geometry()
    r.scene.set_background([*map(float, background), 1.0])
    r.scene.add_geometry("points", cloud, material)
    big = np.asarray(big, dtype=np.int64)
    if big.size:
        marks = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p[big]))
        marks.colors = o3d.utility.Vector3dVector(c[big])
        large = o3d.visualization.rendering.MaterialRecord()
        large.shader = "defaultUnlit"
        large.point_size = 3.0 * float(point_size)
        r.scene.add_geometry("marks", marks, large)
    eye, centre, up = _camera(p, view, fov, width / height)
    r.setup_camera(fov, centre, eye, up)
    return np.asarray(r.render_to_image()).copy()


def _figure(panels: list[tuple[np.ndarray, str]], legend, path, cols: int | None = None) -> Path:
    """Images side by side (or in a grid of ``cols``) with titles and an optional legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    cols = cols or len(panels)
    rows = -(-len(panels) // cols)
    h, w = panels[0][0].shape[:2]
    scale = 1 / 100
    extra = 1.6 if legend else 0.0
    fig = Figure(figsize=(cols * w * scale + extra, rows * (h * scale + 0.35)), dpi=100)
    FigureCanvasAgg(fig)
    for k, (img, title) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(img)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    if legend:
        handles = [Patch(color=color, label=name) for name, color in legend]
        fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
        fig.subplots_adjust(right=1 - extra / fig.get_size_inches()[0], wspace=0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _legend(labels: np.ndarray, names: Sequence[str] | None) -> list[tuple[str, np.ndarray]]:
    return [
        (names[lab] if names is not None and lab < len(names) else str(lab), PALETTE[lab % 20])
        for lab in np.unique(labels)
    ]


def render_segmentation(
    points,
    labels,
    path,
    *,
    names: Sequence[str] | None = None,
    title: str = "",
    view: str | Sequence[float] = "iso",
    width: int = 640,
    height: int = 480,
    point_size: float = 5.0,
) -> Path:
    r"""Render a cloud coloured by part label to the PNG ``path``, with a legend of the labels
    present (``names[label]`` when given). Returns the path.

    Args:
        points: ``(N, 3)`` array or tensor.
        labels: integer labels ``(N,)``.
        path: the PNG to write (folders are created).
        names: label -> name, for the legend (default: the numbers).
        title: title above the image.
        view, width, height, point_size: as :func:`render_points`.
    """
    p = _points(points)
    y = _labels(labels, len(p))
    img = render_points(
        p, label_colors(y), view=view, width=width, height=height, point_size=point_size
    )
    return _figure([(img, title)], _legend(y, names), path)


def render_comparison(
    points,
    truth,
    pred,
    path,
    *,
    names: Sequence[str] | None = None,
    title: str = "",
    view: str | Sequence[float] = "iso",
    width: int = 480,
    height: int = 400,
    point_size: float = 5.0,
) -> Path:
    r"""Ground truth, prediction, and the prediction with wrong points in red, side by side,
    to the PNG ``path``; the titles give the point accuracy."""
    p = _points(points)
    t, q = _labels(truth, len(p), "truth"), _labels(pred, len(p), "pred")
    wrong = t != q
    errors = label_colors(q)
    errors[wrong] = WRONG_COLOR
    kw = dict(view=view, width=width, height=height, point_size=point_size)
    panels = [
        (render_points(p, label_colors(t), **kw), f"{title} ground truth".strip()),
        (render_points(p, label_colors(q), **kw), f"prediction ({100 * (1 - wrong.mean()):.1f} %)"),
        (render_points(p, errors, **kw), f"wrong points: {int(wrong.sum())} of {len(p)}"),
    ]
    legend = _legend(np.concatenate([t, q]), names) + [("wrong", WRONG_COLOR)]
    return _figure(panels, legend, path)


def render_grid(
    clouds: Sequence[tuple[object, object, str]],
    path,
    *,
    cols: int = 4,
    names: Sequence[str] | None = None,
    view: str | Sequence[float] = "iso",
    width: int = 320,
    height: int = 280,
    point_size: float = 4.0,
) -> Path:
    r"""Many labelled clouds ``[(points, labels, title), ...]`` in a grid of ``cols`` columns,
    one legend for all, to the PNG ``path`` (e.g. one shape per ShapeNetPart category)."""
    if not clouds:
        raise ValueError("clouds is empty: nothing to render")
    panels, seen = [], []
    for points, labels, title in clouds:
        p = _points(points)
        y = _labels(labels, len(p))
        seen.append(y)
        colors = label_colors(y)
        img = render_points(p, colors, view=view, width=width, height=height, point_size=point_size)
        panels.append((img, title))
    return _figure(panels, _legend(np.concatenate(seen), names), path, cols=min(cols, len(panels)))


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def show_segmentation(points, labels, *, names=None, fallback="segmentation.png") -> Path | None:
    r"""Open an interactive Open3D window on the labelled cloud when a display exists;
    otherwise render it to the PNG ``fallback`` and say so (returns that path)."""
    p = _points(points)
    y = _labels(labels, len(p))
    if not _has_display():
        path = render_segmentation(p, y, fallback, names=names)
        print(f"no display: rendered to {path}", file=sys.stderr)
        return path
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
    cloud.colors = o3d.utility.Vector3dVector(label_colors(y))
    o3d.visualization.draw_geometries([cloud], window_name="pcattn")
    return None


# --------------------------------------------------------------------------------------------
# attention maps


class AttentionCapture:
    r"""What :func:`capture_attention` returns: the layer's nodes ``pos (M, 3)``, its edges
    ``edge_index (2, E)`` (row 0 source ``j``, row 1 target ``i``) and per-edge weights
    ``weights (E, ...)`` (heads, then channel groups for vector attention)."""

    def __init__(self, pos: Tensor, edge_index: Tensor, weights: Tensor) -> None:
        self.pos, self.edge_index, self.weights = pos, edge_index, weights


def attention_layers(model: nn.Module) -> list[str]:
    r"""Names of the outermost submodules of ``model`` that have ``attention_weights`` (the
    ones :func:`capture_attention` takes)."""
    names = []
    for name, module in model.named_modules():
        if name and callable(getattr(module, "attention_weights", None)):
            if not any(name.startswith(n + ".") for n in names):
                names.append(name)
    return names


def capture_attention(model: nn.Module, data, layer: str) -> AttentionCapture:
    r"""Run ``model(data)`` once (eval mode, no gradient) and return the attention of its
    submodule ``layer`` (a name from :func:`attention_layers`): the layer's inputs are
    recorded and passed to its ``attention_weights``. The node positions are the layer's own
    ``pos`` argument, or those of the enclosing stage block, or ``data.pos``."""
    names = attention_layers(model)
    if layer not in names:
        raise ValueError(f"layer {layer!r} has no attention weights; choose one of {names}")
    target = model.get_submodule(layer)
    calls: dict[str, tuple] = {}

    def record(key):
        def hook(module, args, kwargs):
            calls.setdefault(key, (args, kwargs))

        return hook

    handles = [target.register_forward_pre_hook(record("layer"), with_kwargs=True)]
    parts = layer.split(".")
    for k in range(len(parts) - 1, 0, -1):  # the nearest enclosing block called with pos
        parent = model.get_submodule(".".join(parts[:k]))
        if type(parent).__name__ == "AttentionBlock":
            handles.append(parent.register_forward_pre_hook(record("block"), with_kwargs=True))
            break
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(data)
            if "layer" not in calls:
                raise ValueError(f"layer {layer!r} was not called in the forward pass")
            args, kwargs = calls["layer"]
            edge_index, weights = target.attention_weights(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if "block" in calls:
        pos = calls["block"][0][2]
    elif len(args) > 2 and isinstance(args[2], Tensor):
        pos = args[2]
    else:
        pos = data.pos
    return AttentionCapture(pos, edge_index, weights)


def query_weights(
    edge_index: Tensor, weights: Tensor, query: int, num_nodes: int, *, head: int | None = None
) -> Tensor:
    r"""The weight every node receives from target ``query``: ``(num_nodes,)``, zero off its
    neighbourhood, summed over duplicate edges. ``weights (E, H, ...)`` is reduced to one
    value per edge by taking head ``head`` (default: the mean over heads) and the mean over
    the remaining axes (the channel groups of vector attention)."""
    if not 0 <= query < num_nodes:
        raise ValueError(f"query must be a node index in [0, {num_nodes}), got {query}")
    w = weights if weights.dim() > 1 else weights[:, None]  # (E, H, ...)
    if head is not None:
        if not 0 <= head < w.size(1):
            raise ValueError(f"head must be in [0, {w.size(1)}), got {head}")
        w = w[:, head]
    w = w.reshape(w.size(0), -1).mean(1).double()  # (E,)
    src, dst = edge_index
    if src.numel() and int(src.max()) >= num_nodes:
        raise ValueError(
            "the layer's sources are not the points (memory slots or pooled keys): "
            "its weights cannot be drawn on the cloud"
        )
    mine = dst == query
    out = torch.zeros(num_nodes, dtype=torch.float64)
    return out.index_add_(0, src[mine].cpu(), w[mine].cpu())


def nearest_point(points, coordinate: Sequence[float]) -> int:
    """Index of the point of ``points (N, 3)`` nearest to ``coordinate``."""
    p = _points(points)
    return int(np.argmin(((p - np.asarray(coordinate, dtype=np.float64)) ** 2).sum(1)))


def render_attention(
    points,
    values,
    query: int,
    path,
    *,
    title: str = "",
    view: str | Sequence[float] = "iso",
    width: int = 640,
    height: int = 480,
    point_size: float = 6.0,
) -> Path:
    r"""The cloud coloured by ``values (N,)`` (:func:`query_weights`; viridis, scaled by the
    maximum), the query point in magenta, to the PNG ``path``."""
    p = _points(points)
    v = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, np.float64)
    if v.shape != (len(p),):
        raise ValueError(f"values must have shape ({len(p)},), got {v.shape}")
    colors = weight_colors(v)
    colors[query] = QUERY_COLOR
    img = render_points(
        p, colors, view=view, width=width, height=height, point_size=point_size, big=[query]
    )
    n_nb = int((v > 0).sum())
    caption = f"{title} query {query}: {n_nb} points attended, max weight {v.max():.3f}"
    legend = [
        ("query", QUERY_COLOR),
        ("weight 0", weight_colors(np.array([0.0, 1.0]))[0]),
        ("max weight", weight_colors(np.array([1.0]))[0]),
    ]
    return _figure([(img, caption.strip())], legend, path)


# --------------------------------------------------------------------------------------------
# command line


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    r"""Read and check a ``predictions.npz`` written by ``train.py --save-predictions`` (data
    only: no pickled objects).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file: not an ``.npz``, a missing array, offsets that do not
            cover the points, or a label or category outside its names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zip, header and pickle refusals all mean: not our file
        raise ValueError(
            f"{path}: not a readable predictions .npz ({type(e).__name__}: {e})"
        ) from None
    missing = [
        k for k in ("pos", "ptr", "pred", "target", "class_names", "task") if k not in arrays
    ]
    if missing:
        raise ValueError(
            f"{path}: missing arrays {missing}; write it with train.py --save-predictions"
        )
    task = str(arrays["task"])
    pos, ptr, pred, target = (arrays[k] for k in ("pos", "ptr", "pred", "target"))
    if pos.ndim != 2 or not np.issubdtype(pos.dtype, np.floating) or not np.isfinite(pos).all():
        raise ValueError(f"{path}: pos must be finite floats (P, D), got {pos.shape} {pos.dtype}")
    if (
        ptr.ndim != 1
        or ptr.size < 1
        or ptr[0] != 0
        or ptr[-1] != len(pos)
        or (np.diff(ptr) < 0).any()
    ):
        raise ValueError(f"{path}: ptr must rise from 0 to the {len(pos)} points")
    rows = len(ptr) - 1 if task == "classification" else len(pos)
    for name, labels in (("pred", pred), ("target", target)):
        if labels.shape != (rows,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: {name} must be {rows} integer labels, got {labels.shape}")
        if rows and not (0 <= labels.min() and labels.max() < len(arrays["class_names"])):
            raise ValueError(
                f"{path}: {name} holds labels in [{labels.min()}, {labels.max()}] but there are "
                f"{len(arrays['class_names'])} class names"
            )
    if "category" in arrays:
        cat = arrays["category"]
        n_cat = len(arrays.get("category_names", ()))
        if cat.shape != (len(ptr) - 1,) or (cat.size and not 0 <= cat.min() <= cat.max() < n_cat):
            raise ValueError(f"{path}: category must be one index < {n_cat} per shape")
    return arrays


def _predictions(args) -> None:
    z = load_predictions(args.file)
    task = str(z["task"])
    if task == "classification":
        raise ValueError(f"{args.file} holds per-shape predictions; nothing to colour per point")
    names = [str(n) for n in z["class_names"]]
    ptr, out = z["ptr"], Path(args.out)
    shown = min(len(ptr) - 1, args.max)
    for b in range(shown):
        lo, hi = int(ptr[b]), int(ptr[b + 1])
        title = f"#{b}"
        if "category" in z:
            title = f"#{b} {z['category_names'][z['category'][b]]}"
        render_comparison(
            z["pos"][lo:hi],
            z["target"][lo:hi],
            z["pred"][lo:hi],
            out / f"shape_{b:04d}.png",
            names=names,
            title=title,
            view=args.view,
        )
    print(f"{shown} of {len(ptr) - 1} shapes rendered to {out}/shape_*.png")


def _shape(args) -> None:
    from .data import CATEGORIES, CATEGORY_PARTS, ShapeNetPart

    ds = ShapeNetPart(args.root, split=args.split, progress=False)
    names = [f"{c}/{k}" for c in CATEGORIES for k in range(len(CATEGORY_PARTS[c]))]
    items = [ds[i] for i in (args.index or range(min(len(ds), 8)))]
    clouds = [(d.pos, d.y, f"{CATEGORIES[int(d.category)]} {d.key[-6:]}") for d in items]
    if len(clouds) == 1:
        path = render_segmentation(
            *clouds[0][:2], args.out, names=names, title=clouds[0][2], view=args.view
        )
    else:
        path = render_grid(clouds, args.out, names=names, view=args.view)
    print(f"rendered to {path}")


def _attention(args) -> None:
    from torch_geometric.data import Batch

    from .config import apply_overrides, config_from_dict
    from .experiment import build_data, build_model, load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    cfg = apply_overrides(config_from_dict(ckpt["config"]), args.override)
    _, val, info = build_data(cfg)
    model = build_model(cfg, info)
    model.load_state_dict(ckpt["model"])
    layers = attention_layers(model)
    if args.layer is None:
        print("attention layers:\n  " + "\n  ".join(layers))
        return
    data = Batch.from_data_list([val[args.index]])
    cap = capture_attention(model, data, args.layer)
    n = cap.pos.size(0)
    query = args.query if args.near is None else nearest_point(cap.pos, args.near)
    values = query_weights(cap.edge_index, cap.weights, query, n, head=args.head)
    path = render_attention(cap.pos, values, query, args.out, title=args.layer, view=args.view)
    print(f"rendered to {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pcattn.viz", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("predictions", help="render train.py --save-predictions output")
    a.add_argument("file", type=Path, help="predictions.npz")
    a.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    a.add_argument("--max", type=positive_int_arg, default=16, help="render at most this many")
    a.add_argument("--view", default="iso")
    b = sub.add_parser("shape", help="render ShapeNetPart shapes coloured by part")
    b.add_argument("root", type=Path, help="a ShapeNetPart folder")
    b.add_argument("--split", default="all")
    b.add_argument("--index", type=int, nargs="*", help="items to render (default: first 8)")
    b.add_argument("--out", type=Path, required=True, help="the PNG to write")
    b.add_argument("--view", default="iso")
    c = sub.add_parser("attention", help="what one point attends to, from a train.py checkpoint")
    c.add_argument("--checkpoint", type=Path, required=True)
    c.add_argument("--layer", default=None, help="attention layer (omit to list them)")
    c.add_argument("--index", type=int, default=0, help="item of the evaluated split")
    c.add_argument("--query", type=int, default=0, help="query node index in that layer")
    c.add_argument("--near", type=float, nargs=3, default=None, help="query nearest to x y z")
    c.add_argument("--head", type=int, default=None, help="head (default: mean over heads)")
    c.add_argument("--out", type=Path, default=Path("attention.png"))
    c.add_argument("--view", default="iso")
    c.add_argument("--override", nargs="*", default=[], help="config overrides section.key=v")
    args = p.parse_args(argv)
    command = {"predictions": _predictions, "shape": _shape, "attention": _attention}
    try:
        command[args.command](args)
    except (ValueError, FileNotFoundError, IndexError) as e:  # ConfigError, DatasetError too
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()

r"""An experiment's data and model from its config: the split readers, what the model and the
metrics need to know about the data (:class:`DataInfo`), the model of ``cfg.model``, and the
checkpoints ``train.py`` writes, read back as data only.

``train.py`` and the viewer (``python -m pcattn.viz attention``) both rebuild a run from its
config (the one stored in every checkpoint) through these two functions;
:func:`check_model_runs` tries the model once on one item, so that an option it accepts but
cannot run with is refused before a run writes anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch_geometric.data import Batch

from . import data as D
from .config import Config, ConfigError
from .models import MODELS

__all__ = [
    "CheckpointError",
    "DataInfo",
    "build_data",
    "build_model",
    "check_model_runs",
    "load_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is not a ``train.py`` checkpoint, or does not fit the
    model; the message names the file."""


@dataclass
class DataInfo:
    """What the model and the metrics need to know about the data."""

    task: str  # "classification" | "segmentation" | "node"
    num_classes: int
    in_channels: int
    class_names: list[str]
    num_categories: int = 0
    category_names: list[str] = field(default_factory=list)
    category_parts: dict[int, list[int]] = field(default_factory=dict)


def build_data(cfg: Config) -> tuple[object, object, DataInfo]:
    """The training split, the evaluated split, and their :class:`DataInfo`.

    Raises:
        ConfigError: a data option the dataset refuses (the dataset's message, prefixed).
        DatasetError, FileNotFoundError: a missing or malformed file, named.
    """
    try:
        return _build_data(cfg)
    except D.DatasetError:
        raise
    except ValueError as e:
        raise ConfigError(f"data ({cfg.data.name}): {e}") from None


def _build_data(cfg: Config) -> tuple[object, object, DataInfo]:
    c = cfg.data
    root = Path(c.root) if c.root is not None else None
    if c.name == "synthetic":
        common = dict(num_points=c.num_points, seed=c.seed, task=c.task, categories=c.categories)
        train = D.SyntheticParts(c.train_shapes, split="train", **common)
        val = D.SyntheticParts(c.val_shapes, split=c.val_split, **common)
        parts = D.SYNTHETIC_PARTS
        cats = list(parts)
        if c.task == "classification":
            info = DataInfo("classification", len(cats), 3 if c.use_normals else 0, cats)
        else:
            names = [f"{k}/{n}" for k, v in D.synthetic.SYNTHETIC_PART_NAMES.items() for n in v]
            info = DataInfo(
                "segmentation",
                train.num_parts,
                3 if c.use_normals else 0,
                names,
                len(cats),
                cats,
                {i: parts[k] for i, k in enumerate(cats)},
            )
    elif c.name == "modelnet":
        root = root or Path("datasets") / "modelnet40_normal_resampled"
        common = dict(classes=c.classes, format=c.format, use_normals=c.use_normals)
        common["cache_dir"] = c.cache_dir
        common["num_points"] = c.num_points or None
        train = D.ModelNet(root, split="train", **common)
        val = D.ModelNet(root, split="test", **common)
        names = list(D.MODELNET40_CLASSES if c.classes == 40 else D.MODELNET10_CLASSES)
        in_ch = 3 if c.use_normals and getattr(train[0], "x", None) is not None else 0
        info = DataInfo("classification", len(names), in_ch, names)
    elif c.name == "shapenetpart":
        root = root or Path("datasets") / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
        common = dict(categories=c.categories, format=c.format, use_normals=c.use_normals)
        common["cache_dir"] = c.cache_dir
        train_split = "trainval" if c.val_split == "test" else "train"
        train = D.ShapeNetPart(root, split=train_split, **common)
        val = D.ShapeNetPart(root, split=c.val_split, **common)
        in_ch = 3 if c.use_normals and getattr(train[0], "x", None) is not None else 0
        names = [f"{k}/{p}" for k in D.CATEGORIES for p in D.CATEGORY_PARTS[k]]
        info = DataInfo(
            "segmentation",
            D.NUM_PARTS,
            in_ch,
            names,
            D.NUM_CATEGORIES,
            list(D.CATEGORIES),
            {i: list(D.CATEGORY_PARTS[k]) for i, k in enumerate(D.CATEGORIES)},
        )
    elif c.name == "digits":
        train = D.Digits("train", seed=c.seed)
        val = D.Digits("test", seed=c.seed)
        info = DataInfo("classification", 10, 1, [str(d) for d in range(10)])
    else:  # karate
        train = val = D.KarateClub()
        info = DataInfo("node", 2, 34, ["Mr. Hi", "Officer"])
    return train, val, info


def build_model(cfg: Config, info: DataInfo) -> nn.Module:
    cls = MODELS[cfg.model.name]
    if cls.task != info.task:
        raise ConfigError(
            f"model {cfg.model.name!r} is for {cls.task}, but data {cfg.data.name!r} is {info.task}"
        )
    extra = {"num_categories": info.num_categories} if info.task == "segmentation" else {}
    try:
        return cls(info.in_channels, info.num_classes, **extra, **cfg.model.options)
    except ValueError as e:
        raise ConfigError(f"model {cfg.model.name!r}: {e}") from None


def check_model_runs(model: nn.Module, dataset, cfg: Config) -> None:
    r"""Run ``model`` once on the first item of ``dataset`` (in evaluation mode, without
    gradients, with torch's random state restored afterwards: no side effect), so that an
    option the model accepts at construction but refuses at its first forward (``k: 0``) is
    a :class:`ConfigError` before the run writes anything.

    Raises:
        ConfigError: the model's ``ValueError`` on this data, prefixed with the model's name.
    """
    if len(dataset) == 0:
        return
    device = next(model.parameters()).device
    batch = Batch.from_data_list([dataset[0]]).to(device)
    was_training = model.training
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            model(batch)
    except ValueError as e:
        raise ConfigError(
            f"model {cfg.model.name!r} cannot run on data {cfg.data.name!r}: {e}"
        ) from None
    finally:
        model.train(was_training)


def _reason(e: Exception) -> str:
    """One line of ``torch.load``'s error: the unpickler's own reason when it refused a
    global (its message spans a page, advising ``weights_only=False``), else the first line."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", x).strip() for x in str(e).splitlines()]
    lines = [x for x in lines if x] or [repr(e)]
    marker = "WeightsUnpickler error: "
    refused = [x[len(marker) :] for x in lines if x.startswith(marker)]
    return refused[0].split(". ")[0] if refused else lines[0]


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "step", "config")


def load_checkpoint(path: Path) -> dict:
    r"""Read a checkpoint onto the CPU as data only (``weights_only=True``: a file cannot run
    code); ``load_state_dict`` moves the tensors to the model's device."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt or not a checkpoint
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {_reason(e)}"
        ) from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a train.py checkpoint: it lacks {', '.join(missing)}")
    return ckpt

r"""An experiment's data and model from its config: the split readers, what the model and the
metrics need to know about the data (:class:`DataInfo`), the model of ``cfg.model``, and the
checkpoints ``train.py`` writes, read back as data only.

``train.py`` and the viewer (``python -m pcattn.viz attention``) both rebuild a run from its
config (the one stored in every checkpoint) through these two functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import data as D
from .config import Config, ConfigError
from .models import MODELS

__all__ = ["DataInfo", "build_data", "build_model", "load_checkpoint"]


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
        common["num_points"] = c.num_points or None
        train = D.ModelNet(root, split="train", **common)
        val = D.ModelNet(root, split="test", **common)
        names = list(D.MODELNET40_CLASSES if c.classes == 40 else D.MODELNET10_CLASSES)
        in_ch = 3 if c.use_normals and getattr(train[0], "x", None) is not None else 0
        info = DataInfo("classification", len(names), in_ch, names)
    elif c.name == "shapenetpart":
        root = root or Path("datasets") / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
        common = dict(categories=c.categories, format=c.format, use_normals=c.use_normals)
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


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "step", "config")


def load_checkpoint(path: Path) -> dict:
    r"""Read a checkpoint onto the CPU as data only (``weights_only=True``: a file cannot run
    code); ``load_state_dict`` moves the tensors to the model's device."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt or not a checkpoint
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a train.py checkpoint: it lacks {', '.join(missing)}")
    return ckpt

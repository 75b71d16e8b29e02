r"""Experiment configs: one YAML file per experiment, loaded into dataclasses.

A config has six sections, ``data``, ``model``, ``optim``, ``schedule``, ``train`` and ``run``
(see the dataclasses below for every key and its default). Loading is strict: an unknown
section or key is an error that names the file and suggests the closest known key, and every
value is checked against its declared type. The ``model`` section holds ``name`` (a key of
:data:`pcattn.models.MODELS`) and that model's keyword options, checked against the model's
own signature. Command-line overrides ``--section.key=value`` are parsed as YAML values
(``--train.epochs=3``, ``--model.channels=[32,64]``, ``--data.root=null``) and checked the same
way. A file must be UTF-8 and must not repeat a key in any mapping (YAML would silently keep
the last one); every number must be finite. :func:`dump_config` writes the resolved config
back as YAML; :func:`config_diff` lists the keys in which two configs differ (what
``train.py --resume`` checks against the checkpoint's config).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any

import yaml

from .runlog import atomic_write_bytes

__all__ = [
    "ABSENT",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "check_keys",
    "config_diff",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "format_diff",
    "load_config",
]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names where."""


# --------------------------------------------------------------------------------------------
# the schema


@dataclass
class AugmentConfig:
    """Training augmentation, applied in this order (evaluation sees none, except voting)."""

    #: rotate about this axis by a uniform angle (``"x"``, ``"y"``, ``"z"``), ``"so3"``, or
    #: ``null`` for none
    rotate: str | None = None
    #: isotropic scale drawn uniformly from ``[low, high]``; ``null`` for none
    scale: list[float] | None = field(default_factory=lambda: [0.8, 1.25])
    #: per-axis scale instead of isotropic
    anisotropic: bool = False
    #: Gaussian jitter sigma per coordinate (each offset clipped to +-0.05); ``0`` for none
    jitter: float = 0.0
    #: PointNet++ point dropout: a ratio drawn from ``U(0, dropout)``, dropped points replaced
    #: by copies of the first point (the size is kept); ``0`` for none
    dropout: float = 0.0
    #: shuffle the point order
    shuffle: bool = True


@dataclass
class DataConfig:
    """Which dataset, where, and how it is sampled."""

    #: ``synthetic`` | ``modelnet`` | ``shapenetpart`` | ``digits`` | ``karate``
    name: str = "synthetic"
    #: folder holding the dataset's published layout (``null``: ModelNet from
    #: ``datasets/modelnet40_normal_resampled``, ShapeNetPart from
    #: ``datasets/shapenetcore_partanno_segmentation_benchmark_v0_normal``)
    root: str | None = None
    #: folder of the parsed-dataset cache (``null``: ``$PCATTN_CACHE`` or ``~/.cache/pcattn``;
    #: never inside ``root``)
    cache_dir: str | None = None
    #: ``classification`` or ``segmentation`` (SyntheticParts only)
    task: str = "classification"
    #: points per shape (ModelNet: the first ones of each file, ``0`` for all; ShapeNetPart:
    #: a random subset in training and a fixed one in evaluation, ``0`` for all)
    num_points: int = 1024
    #: feed the normals as features ``x``
    use_normals: bool = True
    #: ModelNet: ``40`` or ``10``
    classes: int = 40
    #: reader layout (``auto`` or a format name of the reader)
    format: str = "auto"
    #: restrict to these categories (SyntheticParts, ShapeNetPart); ``null`` for all
    categories: list[str] | None = None
    #: SyntheticParts: shapes in the training split
    train_shapes: int = 1024
    #: SyntheticParts: shapes in the validation split
    val_shapes: int = 256
    #: the split evaluated after each epoch (``val`` or ``test``)
    val_split: str = "val"
    #: seed of the SyntheticParts dataset / of the Digits split
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    """``name`` (a key of :data:`pcattn.models.MODELS`) and the model's keyword options."""

    name: str = "attention_net_cls"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """The optimiser."""

    #: ``adamw`` or ``sgd``
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    #: SGD momentum (AdamW ignores it)
    momentum: float = 0.9
    nesterov: bool = False
    #: AdamW betas
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    """Learning rate per step: linear warm-up from ``warmup_start * lr``, then cosine decay to
    ``min_lr * lr`` at the last step."""

    warmup_epochs: float = 1.0
    warmup_start: float = 0.01
    min_lr: float = 0.01


@dataclass
class TrainConfig:
    """The loop."""

    epochs: int = 10
    batch_size: int = 32
    #: batch size of evaluation (``0``: same as training)
    eval_batch_size: int = 0
    label_smoothing: float = 0.0
    #: clip the gradient norm at this value (``0``: no clipping)
    grad_clip: float = 0.0
    #: mixed precision on CUDA (ignored on CPU)
    amp: bool = True
    #: DataLoader worker processes
    num_workers: int = 0
    seed: int = 0
    #: test-time augmentation: average the logits of this many randomly scaled copies
    votes: int = 1
    #: evaluate every this many epochs (and always after the last)
    eval_every: int = 1
    #: stop after this many optimiser steps in total (``0``: run all epochs); for smoke runs
    max_steps: int = 0


@dataclass
class RunConfig:
    """Where the run writes."""

    #: run folder (checkpoints, log.csv, curves.png, config.yaml)
    out: str = "runs/default"
    #: ``auto`` (CUDA when available), ``cpu`` or ``cuda``
    device: str = "auto"
    #: ``auto`` (when the package is installed), ``true`` or ``false``
    tensorboard: str = "auto"
    #: progress bars
    progress: bool = True
    #: epoch checkpoints kept in ``checkpoints/`` besides ``last.pt`` and ``best.pt`` (the
    #: newest ones; ``--resume`` falls back to them when ``last.pt`` is unreadable)
    keep_checkpoints: int = 3


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


_CHOICES: dict[str, tuple] = {
    "data.name": ("synthetic", "modelnet", "shapenetpart", "digits", "karate"),
    "data.task": ("classification", "segmentation"),
    "data.classes": (40, 10),
    "data.val_split": ("val", "test"),
    "data.augment.rotate": (None, "x", "y", "z", "so3"),
    "optim.name": ("adamw", "sgd"),
    "run.device": ("auto", "cpu", "cuda"),
    "run.tensorboard": ("auto", "true", "false"),
}
_POSITIVE = {
    "data.train_shapes",
    "data.val_shapes",
    "train.epochs",
    "train.batch_size",
    "train.votes",
    "train.eval_every",
    "optim.lr",
}
_NON_NEGATIVE = {
    "data.num_points",
    "data.seed",
    "data.augment.jitter",
    "train.eval_batch_size",
    "train.label_smoothing",
    "train.grad_clip",
    "train.num_workers",
    "train.seed",
    "train.max_steps",
    "run.keep_checkpoints",
    "optim.weight_decay",
    "optim.momentum",
    "schedule.warmup_epochs",
    "schedule.warmup_start",
    "schedule.min_lr",
}
#: fractions (also checked >= 0 above)
_AT_MOST_ONE = {"train.label_smoothing", "schedule.warmup_start", "schedule.min_lr"}
_BELOW_ONE = {"optim.momentum"}
#: ``torch.manual_seed`` takes seeds below 2**64; the per-epoch seeds derived from
#: ``train.seed`` (``seed + epoch`` in the data sampler) need the room above 2**63
_MAX_SEED = 2**63 - 1


# --------------------------------------------------------------------------------------------
# type checking


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (ints are accepted for floats, lists for tuples), else raise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, UnionType):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check(value, arm, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where} must be null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{where} must be a finite number, got {value!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        args = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} must be a list of {len(args)} items, got {value!r}")
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
        arm = args[0] if args else Any
        items = [_check(v, arm, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list or tp is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


_PAIRS = {"data.augment.scale", "optim.betas"}  # [low, high] / [beta1, beta2]


def _check_ranges(path: str, value: Any) -> None:
    if path in _PAIRS and value is not None:
        if len(value) != 2:
            raise ConfigError(f"{path} must be a list of 2 numbers, got {value!r}")
        if path == "data.augment.scale" and not 0 < value[0] <= value[1]:
            raise ConfigError(f"{path} must be [low, high] with 0 < low <= high, got {value!r}")
        if path == "optim.betas" and not all(0 <= b < 1 for b in value):
            raise ConfigError(f"{path} must be two numbers in [0, 1), got {value!r}")
    if path == "data.augment.dropout" and not 0 <= value < 1:
        raise ConfigError(f"{path} must be in [0, 1), got {value!r}")
    if path in _CHOICES and value not in _CHOICES[path]:
        choices = ", ".join("null" if c is None else str(c) for c in _CHOICES[path])
        raise ConfigError(f"{path} must be one of {choices}, got {value!r}")
    if path in _POSITIVE and not value > 0:
        raise ConfigError(f"{path} must be > 0, got {value!r}")
    if path in _NON_NEGATIVE and not value >= 0:
        raise ConfigError(f"{path} must be >= 0, got {value!r}")
    if path in _AT_MOST_ONE and not value <= 1:
        raise ConfigError(f"{path} must be in [0, 1], got {value!r}")
    if path in _BELOW_ONE and not value < 1:
        raise ConfigError(f"{path} must be in [0, 1), got {value!r}")
    if path == "train.seed" and value > _MAX_SEED:
        raise ConfigError(f"{path} must be <= 2**63 - 1 = {_MAX_SEED}, got {value!r}")


def _fill(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from the mapping ``raw``, strictly."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            name = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown key {name!r}{_suggest(str(key), names)}")
    values = {}
    for f in dataclasses.fields(cls):
        path = f"{where}.{f.name}" if where else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            values[f.name] = _fill(tp, raw.get(f.name), path)
        elif f.name in raw:
            values[f.name] = _check(raw[f.name], tp, path)
            _check_ranges(path, values[f.name])
    return cls(**values)


def _model_signature(name: str) -> dict[str, tuple[Any, Any]]:
    """``option -> (type, default)`` of the keyword options of model ``name``."""
    from .models import MODELS

    if name not in MODELS:
        raise ConfigError(f"model.name {name!r} is not a model{_suggest(name, sorted(MODELS))}")
    init = MODELS[name].__init__
    hints = typing.get_type_hints(init)
    options = {}
    for p in inspect.signature(init).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name != "num_categories":
            options[p.name] = (hints.get(p.name, Any), p.default)
    return options


def _fill_model(raw: Any) -> ModelConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"model must be a mapping, got {raw!r}")
    raw = dict(raw)
    name = raw.pop("name", ModelConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"model.name must be a string, got {name!r}")
    signature = _model_signature(name)
    options = {}
    for key, value in raw.items():
        if key not in signature:
            raise ConfigError(
                f"unknown key 'model.{key}' for model {name!r}{_suggest(str(key), list(signature))}"
            )
        options[key] = _check(value, signature[key][0], f"model.{key}")
    return ModelConfig(name=name, options=options)


# --------------------------------------------------------------------------------------------
# loading, overriding, writing


def config_from_dict(raw: Any) -> Config:
    """A :class:`Config` from a nested mapping (strict: see the module docstring)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of sections, got {type(raw).__name__}")
    sections = [f.name for f in dataclasses.fields(Config)]
    for key in raw:
        if key not in sections:
            raise ConfigError(f"unknown section {key!r}{_suggest(str(key), sections)}")
    rest = {k: v for k, v in raw.items() if k != "model"}
    cfg = _fill(Config, {**rest, "model": None}, "")
    cfg.model = _fill_model(raw.get("model"))
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The nested mapping of ``cfg`` (``model`` flattened to ``name`` plus its options)."""
    out = dataclasses.asdict(cfg)
    out["model"] = {"name": cfg.model.name, **cfg.model.options}
    return _plain(out)


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (YAML and checkpoints hold plain lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping, at any depth (the plain
    loader keeps the last value silently). Keys merged in with ``<<`` may be overridden."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    seen = key in first
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first[key] + 1})",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` with duplicate keys refused (:class:`_StrictLoader`)."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects


def _read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` (a byte order mark is dropped), else a ConfigError naming the
    file, the byte offset and the line of the first byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
            f"(line {line}); save the file as UTF-8"
        ) from None


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    r"""Read the YAML file ``path`` (``None``: the defaults) and apply ``overrides``
    (``["train.epochs=3", ...]``). Errors name the file (and line, for YAML syntax, a repeated
    key, or the byte offset of text that is not UTF-8)."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text = _read_text(path)
        try:
            raw = _parse_yaml(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or " ".join(str(e).split())
            raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    try:
        cfg = config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    r"""``cfg`` with ``section.key=value`` overrides applied (value parsed as YAML)."""
    raw = config_to_dict(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = _parse_yaml(text) if text.strip() else None
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None)
            why = f" ({problem})" if problem else ""
            raise ConfigError(f"override {item!r}: {text!r} is not a YAML value{why}") from None
        *parents, leaf = key.split(".")
        node = raw
        for depth, part in enumerate(parents):
            if not isinstance(node, dict) or part not in node:
                known = list(node) if isinstance(node, dict) else []
                where = ".".join(parents[: depth + 1])
                hint = _suggest(part, known)
                raise ConfigError(f"override {item!r}: unknown key {where!r}{hint}")
            node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parents)} is not a section")
        if parents != ["model"] and leaf not in node:
            raise ConfigError(f"override {item!r}: unknown key {key!r}{_suggest(leaf, list(node))}")
        node[leaf] = value
        try:
            cfg = config_from_dict(raw)
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        raw = config_to_dict(cfg)
    return cfg


def dump_config(cfg: Config, path: str | os.PathLike | None = None) -> str:
    """``cfg`` as YAML text; written to ``path`` when given (atomically: a failed write leaves
    the old file, and no temporary file)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    if path is not None:
        atomic_write_bytes(path, text.encode("utf-8"))
    return text


# --------------------------------------------------------------------------------------------
# comparing configs


class _Absent:
    """A key one of two compared configs does not have (an option of another model)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


def _flat(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data.augment.jitter": 0.0, ...}`` from a nested mapping (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _resolved(cfg: Config) -> dict[str, Any]:
    """Every key of ``cfg`` with its value in force, model options left out included (at the
    model's defaults), flattened."""
    raw = config_to_dict(cfg)
    defaults = {k: d for k, (_, d) in _model_signature(cfg.model.name).items()}
    raw["model"] = {"name": cfg.model.name, **_plain(defaults), **raw["model"]}
    return _flat(raw)


def config_diff(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    r"""The keys in which ``old`` and ``new`` differ, as ``(key, old value, new value)`` in
    the order of the config's sections. Model options count at their values in force, so an
    option left at the model's default equals the same default written out; an option only
    one of two models has shows :data:`ABSENT` on the other side."""
    a, b = _resolved(old), _resolved(new)
    keys = list(a) + [k for k in b if k not in a]
    pairs = [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in keys]
    return [(k, x, y) for k, x, y in pairs if x != y]


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def format_diff(
    diff: Sequence[tuple[str, Any, Any]], old: str = "checkpoint", new: str = "requested"
) -> str:
    """One line for :func:`config_diff`'s list: ``optim.lr: 0.1 (checkpoint) -> 0.2
    (requested); ...``."""
    return "; ".join(f"{k}: {_show(a)} ({old}) -> {_show(b)} ({new})" for k, a, b in diff)


def check_keys(keys: Sequence[str], cfgs: Sequence[Config], where: str) -> None:
    """Every one of ``keys`` must be a key (``section.key``) of one of ``cfgs``; else a
    ConfigError naming ``where`` and the closest known key."""
    known: list[str] = []
    for cfg in cfgs:
        known += [k for k in _resolved(cfg) if k not in known]
    for key in keys:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, known)}")

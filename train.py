r"""Train and evaluate a pcattn model: config -> data -> model -> optimiser -> loop -> checkpoint.

    python train.py                                   # SyntheticParts, built in, a few minutes
    python train.py --config configs/modelnet40_pt.yaml --train.epochs=100
    python train.py --config configs/X.yaml --resume  # continue runs/<...>/last.pt exactly
    python train.py --eval-only --checkpoint runs/X/best.pt --votes 10  # its own config
    torchrun --nproc_per_node 2 train.py --config configs/X.yaml   # data parallel (gloo / nccl)

Any config key can be overridden as ``--section.key=value`` (a YAML value, type-checked).
The run folder (``run.out``) receives ``config.yaml``, ``last.pt`` (every epoch, written
atomically), ``best.pt``, the newest ``run.keep_checkpoints`` epoch checkpoints in
``checkpoints/``, ``log.csv``, ``curves.png`` and, with ``--save-predictions``,
``predictions.npz``. SIGINT / SIGTERM finish the current step, write ``last.pt`` (mid-epoch,
resumable exactly) and exit with status 128 + the signal number (one that arrives during
evaluation stops the run after that epoch's checkpoint; under torchrun every process stops
after the same step); ``--resume`` falls back to the newest readable epoch checkpoint when
``last.pt`` is corrupt, and refuses a config that differs from the checkpoint's unless the
differing keys are named with ``--resume-override`` (``config.yaml`` then holds the config in
force). Stale temporary files of a killed run are removed when a run starts.

A config that cannot run (a bad option, a model option the model refuses on this data, CUDA
asked for but missing, a training set that gives a batch the model cannot train on) is refused
before the run folder is touched: run as a script, every such error is one ``error:`` line and
exit status 2; a run that fails later (a write on a full disk, a non-finite loss) prints one
``error:`` line and exits with 1.
"""

from __future__ import annotations

import argparse
import io
import math
import re
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.loader import DataLoader
from tqdm import tqdm

from pcattn import data as D
from pcattn import distributed
from pcattn.checks import positive_int_arg
from pcattn.config import (
    Config,
    ConfigError,
    apply_overrides,
    check_keys,
    config_diff,
    config_from_dict,
    config_to_dict,
    dump_config,
    format_diff,
    load_config,
)
from pcattn.experiment import (
    CheckpointError,
    DataInfo,
    build_data,
    build_model,
    check_model_runs,
    load_checkpoint,
)
from pcattn.metrics import ClassificationMeter, SegmentationMeter, constrain_to_category
from pcattn.runlog import (
    RunLog,
    atomic_copy,
    atomic_torch_save,
    atomic_write_bytes,
    remove_stale_temp_files,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


# --------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description="Train a pcattn model. Override any config key with --section.key=value.",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML experiment file")
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        help="continue from a checkpoint (default: <run.out>/last.pt); the config must equal "
        "the checkpoint's, except for the keys named with --resume-override",
    )
    p.add_argument(
        "--resume-override",
        nargs="+",
        default=[],
        metavar="KEY",
        help="with --resume: config keys (section.key) allowed to differ from the checkpoint's "
        "config, taking the requested values (e.g. train.epochs to extend a run); config.yaml "
        "is rewritten to the config in force",
    )
    p.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint and stop")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint for --eval-only (its config is used unless --config is given)",
    )
    p.add_argument("--votes", type=positive_int_arg, default=None, help="test-time augmentations")
    p.add_argument(
        "--save-predictions",
        action="store_true",
        help="write per-point (or per-shape) predictions of the evaluated split",
    )
    args, rest = p.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--") or "=" not in item or "." not in item.split("=")[0]:
            p.error(f"unrecognised argument {item!r} (overrides look like --section.key=value)")
        overrides.append(item[2:])
    if args.eval_only and args.checkpoint is None:
        p.error("--eval-only needs --checkpoint PATH")
    args.resume_override = [k for item in args.resume_override for k in item.split(",") if k]
    if args.resume_override and args.resume is None:
        p.error("--resume-override needs --resume")
    return args, overrides


# --------------------------------------------------------------------------------------------
# data


def augmentation(cfg: Config, pos_dim: int) -> D.Compose | None:
    a = cfg.data.augment
    steps = []
    if a.rotate is not None and pos_dim == 3:
        steps.append(D.RandomRotate(a.rotate))
    if a.scale is not None:
        steps.append(D.RandomScale(a.scale[0], a.scale[1], a.anisotropic))
    if a.jitter > 0:
        steps.append(D.Jitter(a.jitter))
    if a.dropout > 0:
        steps.append(D.PointDropout(a.dropout))
    if a.shuffle:
        steps.append(D.Shuffle())
    return D.Compose(steps, seed=cfg.train.seed) if steps else None


def with_transform(dataset, transform):
    """Set the per-item transform (training augmentation, evaluation resampling)."""
    if hasattr(dataset, "transform"):
        dataset.transform = transform
    return dataset


def make_loader(dataset, cfg: Config, dist_info, *, train: bool, epoch: int = 0) -> DataLoader:
    r"""Training: a fresh permutation per epoch from ``(seed, epoch)``, split across processes,
    ``batch_size / world`` shapes per process, the last partial batch dropped. Evaluation: in
    order, process ``r`` takes items ``r, r + world, ...``."""
    bs = cfg.train.batch_size if train else (cfg.train.eval_batch_size or cfg.train.batch_size)
    if train:  # (check_train_batches has checked the sizes)
        bs //= dist_info.world
        sampler = torch.utils.data.DistributedSampler(
            dataset,
            num_replicas=dist_info.world,
            rank=dist_info.rank,
            shuffle=True,
            seed=cfg.train.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        drop_last = len(sampler) >= bs
    else:
        sampler = list(range(dist_info.rank, len(dataset), dist_info.world))
        drop_last = False
    gen = torch.Generator().manual_seed((cfg.train.seed * 100_003 + epoch) % 2**64)
    return DataLoader(
        dataset,
        batch_size=bs,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=cfg.train.num_workers,
        generator=gen,
    )


def check_train_batches(cfg: Config, num_train: int, world: int, task: str) -> None:
    r"""Refuse a training set and batch size whose batches the model cannot train on: every
    process takes ``batch_size / world`` shapes of its ``num_train // world``, and when that
    share is smaller than one batch its one batch is the whole share; a classification head's
    BatchNorm needs at least 2 shapes per batch (segmentation and node models normalise over
    points or nodes: 1 will do)."""
    bs = cfg.train.batch_size
    if bs % world:
        raise ConfigError(
            f"train.batch_size ({bs}) must be divisible by the number of processes ({world})"
        )
    need = 2 if task == "classification" else 1
    if bs // world < need:
        raise ConfigError(
            f"train.batch_size ({bs}) must give every process at least {need} shapes: the "
            f"classification head's BatchNorm needs {need} per batch"
        )
    share = num_train // world  # the sampler drops the remainder
    if share < need:
        size = "data.train_shapes" if cfg.data.name == "synthetic" else "the training split"
        per = f" per process ({world} processes)" if world > 1 else ""
        why = (
            "the classification head's BatchNorm needs 2 per batch"
            if need == 2
            else "there is nothing to train on"
        )
        raise ConfigError(
            f"the training set of {num_train} shape(s) ({size}) gives batches of {share} "
            f"shape(s){per} with train.batch_size {bs}: {why}; use at least {need * world} "
            "training shapes"
        )


def check_device(cfg: Config) -> None:
    """``run.device: cuda`` needs CUDA."""
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        why = "torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(
            f"run.device is 'cuda' but CUDA is not available ({why}); use run.device=cpu or auto"
        )


# --------------------------------------------------------------------------------------------
# model, optimiser, schedule


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))


def apply_optim_config(
    optimizer: torch.optim.Optimizer, scheduler, cfg: Config, total: int, warmup: int
) -> None:
    r"""After a resume, make ``cfg``'s optimiser settings the ones in force: loading the
    checkpoint's states brought back its learning rate, weight decay, momentum or betas and
    the scheduler's base learning rate; the config's values (equal unless a key was allowed by
    ``--resume-override``) replace them, and the learning rate of the next step is the
    config's schedule at the restored step (the same number when nothing changed)."""
    o = cfg.optim
    for group, decay in zip(optimizer.param_groups, (o.weight_decay, 0.0), strict=True):
        group["weight_decay"] = decay
        group["initial_lr"] = o.lr
        if o.name == "sgd":
            group.update(momentum=o.momentum, nesterov=o.nesterov)
        else:
            group["betas"] = tuple(o.betas)
    scheduler.base_lrs = [o.lr] * len(optimizer.param_groups)
    factor = lr_factor(scheduler.last_epoch, total, warmup, cfg)
    for group in optimizer.param_groups:
        group["lr"] = o.lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def lr_factor(step: int, total: int, warmup: int, cfg: Config) -> float:
    r"""Linear warm-up from ``warmup_start`` to 1 over ``warmup`` steps, then cosine to
    ``min_lr`` at step ``total``."""
    s = cfg.schedule
    if step < warmup:
        return s.warmup_start + (1 - s.warmup_start) * step / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return s.min_lr + (1 - s.min_lr) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


# --------------------------------------------------------------------------------------------
# steps


def targets(batch, info: DataInfo, *, train: bool) -> tuple[Tensor, Tensor | None]:
    """Labels and, for node classification, the mask of the nodes that count."""
    if info.task == "node":
        return batch.y, batch.train_mask if train else batch.test_mask
    return batch.y, None


def predict(model: nn.Module, batch, info: DataInfo, votes: int, gen: torch.Generator) -> Tensor:
    r"""Logits, averaged over ``votes`` copies scaled by ``U(0.8, 1.25)`` (the first copy is
    the input itself), as PointNet++ / Point Transformer voting."""
    logits = model(batch)
    for _ in range(votes - 1):
        scaled = batch.clone()
        s = 0.8 + 0.45 * torch.rand((), generator=gen)
        scaled.pos = batch.pos * s.to(batch.pos)
        logits = logits + model(scaled)
    return logits / votes


@torch.no_grad()
def evaluate(model, loader, info: DataInfo, device, *, votes: int = 1, keep: bool = False):
    """Metrics of ``model`` on ``loader`` (summed over processes), and optionally the
    predictions."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    if info.task == "segmentation":
        meter = SegmentationMeter(info.category_parts, info.category_names, info.num_classes)
        mask = meter.part_mask.to(device)  # (categories, parts)
    else:
        meter = ClassificationMeter(info.num_classes)
    loss_sum = torch.zeros(2, dtype=torch.float64)
    kept: dict[str, list] = {"pos": [], "pred": [], "target": [], "ptr": [0], "category": []}
    for batch in loader:
        batch = batch.to(device)
        y, m = targets(batch, info, train=False)
        logits = predict(model, batch, info, votes, gen).float()
        if m is not None:
            logits, y = logits[m], y[m]
        loss_sum += torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(), y.numel()])
        if info.task == "segmentation":
            pred = constrain_to_category(logits, batch.batch, batch.category, mask).argmax(1)
            meter.update(pred, y, batch.batch, batch.category)
        else:
            pred = logits.argmax(1)
            meter.update(pred, y)
        if keep:
            kept["pred"].append(pred.cpu())
            kept["target"].append(y.cpu())
            kept["pos"].append(batch.pos.cpu())
            counts = torch.bincount(batch.batch, minlength=batch.num_graphs).cpu()
            start = kept["ptr"][-1]
            kept["ptr"].extend((start + counts.cumsum(0)).tolist())
            if info.task == "segmentation":
                kept["category"].append(batch.category.cpu())
    meter.all_reduce()
    distributed.all_reduce_sum(loss_sum)
    metrics = {"loss": float(loss_sum[0] / max(loss_sum[1], 1))}
    if info.task == "segmentation":
        out = meter.compute()
        metrics.update(
            instance_miou=out["instance_miou"],
            class_miou=out["class_miou"],
            acc=out["point_accuracy"],
        )
    else:
        out = meter.compute()
        metrics.update(oa=out["oa"], macc=out["macc"])
    return metrics, (kept if keep else None)


def main_metric(info: DataInfo) -> str:
    return "instance_miou" if info.task == "segmentation" else "oa"


# --------------------------------------------------------------------------------------------
# checkpoints


def rng_state() -> dict:
    r"""Torch's generators: everything random in a run draws from them (dropout, the data
    order and augmentation from generators seeded per epoch, SyntheticParts from its own
    seeds)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")


def epoch_checkpoints(folder: Path) -> list[Path]:
    """The ``epoch_N.pt`` files of ``folder``, oldest first, ordered by the number ``N``
    (``epoch_10000.pt`` comes after ``epoch_9999.pt``)."""
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _EPOCH_FILE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def keep_history(out: Path, epoch: int, keep: int) -> None:
    r"""Copy ``last.pt`` of ``epoch`` to ``checkpoints/epoch_XXXX.pt`` atomically (a failed copy
    leaves no temporary file) and delete all but the newest ``keep`` of them."""
    if keep <= 0:
        return
    folder = out / "checkpoints"
    folder.mkdir(exist_ok=True)
    # a copy, not a link: damage to one spares the other
    atomic_copy(out / "last.pt", folder / f"epoch_{epoch + 1:04d}.pt")
    for old in epoch_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)


def load_resume(out: Path) -> tuple[dict, Path]:
    r"""The checkpoint ``--resume`` continues from: ``last.pt``, or when it cannot be read
    (truncated, corrupt), the newest readable ``checkpoints/epoch_*.pt``, with a warning."""
    candidates = [out / "last.pt", *reversed(epoch_checkpoints(out / "checkpoints"))]
    errors = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path)
        except (CheckpointError, FileNotFoundError) as e:
            errors.append(e)
            continue
        for e in errors:
            print(f"warning: {e}; resuming from {path} instead", file=sys.stderr)
        return ckpt, path
    if len(errors) == 1:
        raise errors[0]
    raise CheckpointError(
        "no readable checkpoint to resume from: " + "; ".join(str(e) for e in errors)
    )


def saved_config(ckpt: dict, path: Path) -> Config:
    """The config a checkpoint was trained with."""
    try:
        return config_from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path} holds a config this version cannot use: {e}") from None


def check_resume(
    saved: Config, cfg: Config, allowed: list[str], ckpt: dict, path: Path
) -> list[tuple]:
    r"""The differences between the checkpoint's config ``saved`` and the requested ``cfg``,
    when every one is ``allowed`` (``--resume-override``) and can take effect; else a
    :class:`ConfigError` listing them. The optimiser cannot change (its state is another's),
    and a checkpoint stopped inside an epoch cannot change what that epoch's batches hold."""
    check_keys(allowed, [saved, cfg], "--resume-override")
    diff = config_diff(saved, cfg)
    refused = [d for d in diff if d[0] not in allowed]
    if refused:
        keys = " ".join(k for k, _, _ in refused)
        raise ConfigError(
            f"--resume: the config differs from the one checkpoint {path} was trained with: "
            f"{format_diff(refused)}; resume with that config, or continue with the requested "
            f"values with --resume-override {keys}"
        )
    for key, old, new in diff:
        if key == "optim.name":
            raise ConfigError(
                f"--resume-override optim.name: checkpoint {path} holds the state of {old}, "
                f"which {new} cannot continue; start a new run"
            )
        if ckpt.get("batch", 0) > 0 and key.startswith(("data.", "train.batch_size", "train.seed")):
            raise ConfigError(
                f"--resume-override {key}: checkpoint {path} stopped inside epoch "
                f"{ckpt['epoch'] + 1} (after batch {ckpt['batch']}), whose batches {key} would "
                "change; resume unchanged to the end of that epoch first, or from a "
                "checkpoints/epoch_XXXX.pt"
            )
    return diff


class StopRequest:
    r"""SIGINT / SIGTERM ask the loop to stop after the current step (a second signal stops at
    once). Handlers are installed only in the main thread, and restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name} received: stopping after this step and saving a "
            "checkpoint (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def requested(self, dist_enabled: bool) -> int | None:
        """The signal to stop for, agreed by every process (so all stop at the same step)."""
        if not dist_enabled:
            return self.signum
        # how many processes got each signal (a sum of the signal numbers would name another
        # signal when several processes got one); SIGTERM wins over SIGINT
        got = torch.tensor([float(self.signum == s) for s in (signal.SIGTERM, signal.SIGINT)])
        distributed.all_reduce_sum(got)
        if got[0] > 0:
            return int(signal.SIGTERM)
        return int(signal.SIGINT) if got[1] > 0 else None


# --------------------------------------------------------------------------------------------
# the run


def main(argv: list[str] | None = None) -> dict:
    args, overrides = parse_args(argv)
    # the checkpoint to start from, if any; without --config its own config is used
    ckpt_path = args.checkpoint if args.eval_only else None
    if args.resume not in (None, "last"):
        ckpt_path = Path(args.resume)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    if args.config is None and ckpt is not None:
        cfg = apply_overrides(saved_config(ckpt, ckpt_path), overrides)
    else:
        config_path = args.config
        if config_path is None and DEFAULT_CONFIG.is_file():
            config_path = DEFAULT_CONFIG
        cfg = load_config(config_path, overrides)
    if args.resume == "last":
        ckpt, ckpt_path = load_resume(Path(cfg.run.out))
    resumed_with = []  # the keys --resume-override changed, (key, checkpoint's, requested)
    if args.resume is not None:
        saved = saved_config(ckpt, ckpt_path)
        resumed_with = check_resume(saved, cfg, args.resume_override, ckpt, ckpt_path)
    check_device(cfg)

    # everything up to the run folder's first write only checks: a config that cannot run is
    # refused with the run folder untouched
    want_cuda = cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())
    dist_info = distributed.setup("cuda" if want_cuda else "cpu")
    device = torch.device(f"cuda:{dist_info.local_rank}" if want_cuda else "cpu")
    main_proc = dist_info.is_main
    out = Path(cfg.run.out)
    torch.manual_seed(cfg.train.seed)

    # data
    train_set, val_set, info = build_data(cfg)
    if not args.eval_only:
        check_train_batches(cfg, len(train_set), dist_info.world, info.task)
    pos_dim = 2 if cfg.data.name == "digits" else 3
    train_aug = augmentation(cfg, pos_dim) if info.task != "node" else None
    eval_resample = None
    if cfg.data.name == "shapenetpart" and cfg.data.num_points:
        # shapes have 1-3k points: train on random subsets, evaluate on fixed ones
        steps = [D.Resample(cfg.data.num_points), *(train_aug.transforms if train_aug else [])]
        train_aug = D.Compose(steps, seed=cfg.train.seed)
        eval_resample = D.Resample(cfg.data.num_points, seed=cfg.train.seed)
    with_transform(train_set, train_aug)
    if val_set is not train_set:  # (the karate club trains and evaluates on one graph)
        with_transform(val_set, eval_resample)

    def val_loader() -> DataLoader:
        """The evaluated split, in order, with the same point subsets every time."""
        if eval_resample is not None:
            eval_resample.reseed(cfg.train.seed)
        return make_loader(val_set, cfg, dist_info, train=False)

    # model
    model = build_model(cfg, info).to(device)
    check_model_runs(model, train_set, cfg)  # options it takes but cannot run with (k: 0)
    if dist_info.enabled:
        model = distributed.convert_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if want_cuda else None
        )
    net = model.module if dist_info.enabled else model
    votes = args.votes or cfg.train.votes

    if ckpt is not None:
        try:
            net.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            why = " ".join(str(e).split())
            raise CheckpointError(
                f"checkpoint {ckpt_path or args.resume} does not fit model "
                f"{cfg.model.name!r} of this config: {why}"
            ) from None

    if args.eval_only:
        metrics, kept = evaluate(
            net, val_loader(), info, device, votes=votes, keep=args.save_predictions
        )
        if main_proc:
            print(_format("eval", metrics))
            if kept is not None:
                out.mkdir(parents=True, exist_ok=True)
                save_predictions(out / "predictions.npz", kept, info)
        distributed.teardown()
        return metrics

    # optimiser and schedule (per step)
    optimizer = build_optimizer(cfg, net)
    steps_per_epoch = len(make_loader(train_set, cfg, dist_info, train=True))
    total = cfg.train.epochs * steps_per_epoch
    warmup = round(cfg.schedule.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg)
    )
    use_amp = cfg.train.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start_epoch, step, best, best_epoch = 0, 0, -math.inf, -1
    skip, resumed_sums = 0, None  # batches of start_epoch already trained (a mid-epoch stop)
    last_good = None  # the newest checkpoint of this run (named when the loss turns NaN)
    if args.resume is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        apply_optim_config(optimizer, scheduler, cfg, total, warmup)
        if ckpt["scaler"]:  # (empty when saved without float16 AMP: a new scaler starts)
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        last_good = ckpt_path
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        best, best_epoch = ckpt["best"], ckpt["best_epoch"]
        if ckpt.get("batch", 0) > 0:  # stopped by a signal inside this epoch
            start_epoch, skip = ckpt["epoch"], int(ckpt["batch"])
            # the sums of every process, saved reduced: the main process carries them on
            resumed_sums = torch.tensor(ckpt["sums"], dtype=torch.float64) * float(main_proc)
        if main_proc:
            where = f", batch {skip + 1}" if skip else ""
            changed = f", with {format_diff(resumed_with)}" if resumed_with else ""
            print(f"resumed from {ckpt_path} at epoch {start_epoch + 1}{where}{changed}")

    log = None
    if main_proc:
        stale = [p for d in (out, out / "checkpoints") for p in remove_stale_temp_files(d)]
        if stale:
            names = ", ".join(str(p) for p in stale)
            print(f"removed {len(stale)} temporary file(s) of a killed run: {names}")
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")  # the config in force
        log = RunLog(out, tensorboard=cfg.run.tensorboard, resume=args.resume is not None)
        n_params = sum(p.numel() for p in net.parameters())
        print(
            f"{cfg.model.name}: {n_params / 1e6:.2f} M parameters | data {cfg.data.name} "
            f"({len(train_set)} train / {len(val_set)} {cfg.data.val_split}) | {device} x "
            f"{dist_info.world} | run folder {out}"
        )

    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    metrics: dict = {}
    t0 = time.time()

    def state_dict(epoch: int, batch: int = 0, sums: Tensor | None = None) -> dict:
        """Everything a resume needs; ``batch > 0`` marks a stop inside ``epoch``."""
        state = {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "step": step,
            "best": best,
            "best_epoch": best_epoch,
            "config": config_to_dict(cfg),
        }
        if batch:
            state.update(batch=batch, sums=sums.tolist())
        return state

    with StopRequest() as stop:
        for epoch in range(start_epoch, cfg.train.epochs):
            if train_aug is not None:
                train_aug.reseed(cfg.train.seed * 1_000_003 + epoch)
            loader = make_loader(train_set, cfg, dist_info, train=True, epoch=epoch)
            model.train()
            sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
            if resumed_sums is not None:
                sums, resumed_sums = resumed_sums, None
            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                disable=not (main_proc and cfg.run.progress),
                leave=False,
                dynamic_ncols=True,
            )
            for i, batch in enumerate(bar):
                if i < skip:  # trained before a stop: loaded (and augmented) again, not trained
                    continue
                batch = batch.to(device)
                y, m = targets(batch, info, train=True)
                autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext()
                with autocast:
                    logits = model(batch)
                logits = logits.float()
                if m is not None:
                    logits, y = logits[m], y[m]
                loss = criterion(logits, y)
                if not torch.isfinite(loss):
                    good = (
                        f"the last good checkpoint is {last_good}"
                        if last_good is not None
                        else "no checkpoint of this run was written yet"
                    )
                    raise FloatingPointError(
                        f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; {good}"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.train.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                n = y.numel()
                sums += torch.tensor([loss.item() * n, (logits.argmax(1) == y).sum().item(), n])
                bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}")
                signum = stop.requested(dist_info.enabled)
                if signum is not None:
                    total = distributed.all_reduce_sum(sums.clone())  # every process's part
                    _stop_run(signum, state_dict(epoch, i + 1, total), out, main_proc)
                if cfg.train.max_steps and step >= cfg.train.max_steps:
                    break
            skip = 0
            distributed.all_reduce_sum(sums)
            metrics = {
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": float(sums[0] / max(sums[2], 1)),
                "train_acc": float(sums[1] / max(sums[2], 1)),
            }
            last = epoch + 1 == cfg.train.epochs or bool(
                cfg.train.max_steps and step >= cfg.train.max_steps
            )
            if (epoch + 1) % cfg.train.eval_every == 0 or last:
                val, _ = evaluate(net, val_loader(), info, device, votes=1)
                metrics.update({f"val_{k}": v for k, v in val.items()})
            if main_proc:
                score = metrics.get(f"val_{main_metric(info)}", -math.inf)
                if score > best:
                    best, best_epoch = score, epoch
                # the log row first: a run killed before the checkpoint below redoes this epoch
                # and its resumed log replaces the row; the other order could lose the row
                log.log(epoch + 1, metrics)
                state = state_dict(epoch)
                atomic_torch_save(state, out / "last.pt")
                last_good = out / "last.pt"
                keep_history(out, epoch, cfg.run.keep_checkpoints)
                if best_epoch == epoch:
                    atomic_torch_save(state, out / "best.pt")
                if "val_loss" in metrics or last:
                    log.plot()
                print(_format(f"epoch {epoch + 1}/{cfg.train.epochs}", metrics), flush=True)
            if last:
                break
            # a signal during evaluation or the checkpoint: last.pt is this epoch's, stop here
            signum = stop.requested(dist_info.enabled)
            if signum is not None:
                _stop_run(signum, state_dict(epoch), out, main_proc, saved=True)

    if main_proc:
        minutes = (time.time() - t0) / 60
        print(
            f"done in {minutes:.1f} min; best val {main_metric(info)} {best:.4f} "
            f"at epoch {best_epoch + 1}; run folder {out}"
        )
        log.close()
    if args.save_predictions or votes > 1:
        voted, kept = evaluate(
            net, val_loader(), info, device, votes=votes, keep=args.save_predictions
        )
        if main_proc:
            print(_format(f"last epoch, {votes} vote(s)", voted))
            if kept is not None:
                save_predictions(out / "predictions.npz", kept, info)
    distributed.teardown()
    return metrics


def _stop_run(signum: int, state: dict, out: Path, main_proc: bool, saved: bool = False) -> None:
    """Write the checkpoint ``state`` (unless ``saved``: already ``last.pt``), say how to
    resume, and exit with 128 + ``signum``."""
    name = signal.Signals(signum).name
    if main_proc:
        if not saved:
            atomic_torch_save(state, out / "last.pt")
        print(
            f"stopped by {name} at epoch {state['epoch'] + 1}, step {state['step']}; checkpoint "
            f"{out / 'last.pt'}\nresume with: python train.py --resume {out / 'last.pt'}",
            flush=True,
        )
    distributed.teardown()
    raise SystemExit(128 + signum)


def save_predictions(path: Path, kept: dict, info: DataInfo) -> None:
    r"""``predictions.npz``: ``pos (P, D)`` packed points, ``ptr (B + 1,)`` shape offsets,
    ``pred`` / ``target`` (per point for segmentation and node tasks, per shape for
    classification), ``category (B,)`` for segmentation, ``class_names``, ``task``."""
    arrays = {
        "pos": torch.cat(kept["pos"]).numpy(),
        "ptr": np.asarray(kept["ptr"], dtype=np.int64),
        "pred": torch.cat(kept["pred"]).numpy(),
        "target": torch.cat(kept["target"]).numpy(),
        "class_names": np.asarray(info.class_names),
        "task": np.asarray(info.task),
    }
    if kept["category"]:
        arrays["category"] = torch.cat(kept["category"]).numpy()
        arrays["category_names"] = np.asarray(info.category_names)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    print(f"predictions of {len(arrays['ptr']) - 1} items written to {path}")


def _format(prefix: str, metrics: dict) -> str:
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
    return f"{prefix}: " + " | ".join(parts)


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return "; ".join(lines) or type(e).__name__


def cli(argv: list[str] | None = None) -> int:
    r"""``main`` with its expected failures as one ``error:`` line on stderr: exit status 2
    for what was refused before the run started (a config, dataset or checkpoint that cannot
    be used, a missing file), 1 for a run that failed on its way (a write on a full disk, a
    non-finite loss)."""
    try:
        main(argv)
    except (ConfigError, D.DatasetError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (OSError, FloatingPointError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())

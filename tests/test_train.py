"""train.py end to end: every config at tiny size, exact resume, eval-only, predictions, and
data-parallel training on two CPU processes."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def _load_train():
    spec = importlib.util.spec_from_file_location("pcattn_train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


train = _load_train()

# model options that shrink each model to a few thousand parameters
TINY_MODEL = {
    "attention_net_cls": ["model.channels=[8,16]", "model.blocks=[1,1]", "model.k=4"],
    "attention_net_seg": ["model.channels=[8,16]", "model.blocks=[1,1]", "model.k=4"],
    "point_transformer_cls": ["model.channels=[8,16]", "model.blocks=[1,1]", "model.k=4"],
    "point_transformer_seg": ["model.channels=[8,16]", "model.blocks=[1,1]", "model.k=4"],
    "dgcnn_cls": ["model.k=4", "model.channels=[8,8,8,16]", "model.emb_channels=16"],
    "dgcnn_seg": ["model.k=4", "model.channels=[8,8,8]", "model.emb_channels=16"],
    "pointnet2_cls": [
        "model.sa_channels=[[8,8],[8,16]]",
        "model.global_channels=[16,16]",
        "model.head_channels=[16]",
    ],
    "pointnet2_seg": [
        "model.sa_channels=[[8,8],[8,16]]",
        "model.global_channels=[16,16]",
        "model.fp_channels=[[16],[16],[8]]",
        "model.head_channels=[8]",
    ],
    "graph_node_classifier": [],
}


def _data_overrides(cfg_path: Path, data_root: Path | None) -> list[str]:
    name = yaml.safe_load(cfg_path.read_text())["data"]["name"]
    if name == "synthetic":
        return ["data.train_shapes=4", "data.val_shapes=3", "data.num_points=64"]
    if name == "modelnet":
        return [f"data.root={data_root / 'modelnet40_normal_resampled'}", "data.num_points=64"]
    if name == "shapenetpart":
        root = data_root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
        return [f"data.root={root}", "data.num_points=64"]
    return []


def _needs_data(cfg_path: Path) -> bool:
    return yaml.safe_load(cfg_path.read_text())["data"]["name"] in ("modelnet", "shapenetpart")


def _read_log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # parsed datasets go to a temporary cache, never beside the shared samples
    monkeypatch.setenv("PCATTN_CACHE", str(tmp_path / "cache"))


@pytest.mark.filterwarnings("ignore:.*have no file under:UserWarning")  # the samples are subsets
@pytest.mark.parametrize("cfg_path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_runs_two_steps(cfg_path, tmp_path, request):
    data_root = request.getfixturevalue("data_root") if _needs_data(cfg_path) else None
    model = yaml.safe_load(cfg_path.read_text())["model"]["name"]
    out = tmp_path / "run"
    argv = [
        "--config",
        str(cfg_path),
        "--train.max_steps=2",
        "--train.batch_size=2",
        "--train.num_workers=0",
        f"--run.out={out}",
        "--run.progress=false",
        "--run.device=cpu",
        *(f"--{o}" for o in _data_overrides(cfg_path, data_root) + TINY_MODEL[model]),
    ]
    metrics = train.main(argv)
    assert set(os.listdir(out)) >= {"last.pt", "best.pt", "log.csv", "curves.png", "config.yaml"}
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 2  # 2 steps: one epoch, or two for the one-graph karate club
    rows = _read_log(out / "log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, ckpt["epoch"] + 2))
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
    main_metric = "val_instance_miou" if model.endswith("_seg") else "val_oa"
    assert 0.0 <= metrics[main_metric] <= 1.0
    # the resolved config is in the run folder and in the checkpoint, and they agree
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written == ckpt["config"]
    assert written["train"]["max_steps"] == 2 and written["run"]["out"] == str(out)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tiny_synthetic(out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(ROOT / "configs" / "default.yaml"),
        "--data.train_shapes=16",
        "--data.val_shapes=8",
        "--data.num_points=64",
        "--train.batch_size=4",
        "--train.epochs=4",
        "--model.channels=[8,16]",
        "--model.blocks=[1,1]",
        "--model.k=4",
        "--model.dropout=0.5",
        f"--run.out={out}",
        "--run.progress=false",
        "--run.device=cpu",
        *extra,
    ]


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train.main(_tiny_synthetic(straight))
    # the same run stopped after 2 of its 4 epochs (4 steps each), then resumed
    train.main(_tiny_synthetic(split, "--train.max_steps=8"))
    stopped = torch.load(split / "last.pt", weights_only=True)
    assert stopped["epoch"] == 1 and stopped["step"] == 8
    # max_steps was part of the stopped run's config: dropping it is a change to allow
    train.main(_tiny_synthetic(split, "--resume", "--resume-override", "train.max_steps"))
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 16
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for group_a, group_b in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(group_a[k], group_b[k]) for k in group_a)
    assert a["scheduler"] == b["scheduler"]
    # the resumed log has each epoch once, and the same numbers as the straight run
    rows_a, rows_b = _read_log(straight / "log.csv"), _read_log(split / "log.csv")
    assert [r["epoch"] for r in rows_b] == ["1", "2", "3", "4"]
    assert rows_a == rows_b
    # and the last two epochs did change the weights
    assert any(not torch.equal(v, stopped["model"][k]) for k, v in a["model"].items())


def test_eval_only_and_predictions_match_the_logged_metrics(tmp_path):
    out = tmp_path / "run"
    metrics = train.main(_tiny_synthetic(out, "--train.epochs=2", "--save-predictions"))
    pred = np.load(out / "predictions.npz")
    assert pred["task"] == "classification"
    assert pred["pred"].shape == pred["target"].shape == (8,)
    assert pred["ptr"].tolist() == list(range(0, 8 * 64 + 1, 64))
    assert pred["pos"].shape == (8 * 64, 3)
    assert np.mean(pred["pred"] == pred["target"]) == pytest.approx(metrics["val_oa"])
    again = train.main(
        _tiny_synthetic(tmp_path / "eval", "--eval-only", "--checkpoint", str(out / "last.pt"))
    )
    assert again["oa"] == pytest.approx(metrics["val_oa"])
    assert again["loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)
    # without --config the checkpoint's own config rebuilds the model
    alone = train.main(["--eval-only", "--checkpoint", str(out / "last.pt")])
    assert alone == again
    # a checkpoint of another model is refused by name
    wrong = _tiny_synthetic(tmp_path / "w", "--eval-only", "--checkpoint", str(out / "last.pt"))
    with pytest.raises(ValueError, match="does not fit model 'attention_net_cls' of this config"):
        train.main([*wrong, "--model.channels=[8,32]"])


def test_segmentation_predictions_are_per_point(tmp_path):
    out = tmp_path / "run"
    argv = _tiny_synthetic(out, "--data.task=segmentation", "--train.epochs=1")
    argv[argv.index("--config") + 1] = str(ROOT / "configs" / "default.yaml")
    argv += ["--model.name=attention_net_seg", "--save-predictions"]
    metrics = train.main(argv)
    pred = np.load(out / "predictions.npz")
    assert pred["pred"].shape == pred["target"].shape == (8 * 64,)
    assert pred["category"].shape == (8,)
    # every predicted part belongs to its shape's category (the benchmark's constraint)
    from pcattn.data import SYNTHETIC_PARTS

    parts = list(SYNTHETIC_PARTS.values())
    for b in range(8):
        lo, hi = pred["ptr"][b], pred["ptr"][b + 1]
        assert set(pred["pred"][lo:hi].tolist()) <= set(parts[pred["category"][b]])
    assert np.mean(pred["pred"] == pred["target"]) == pytest.approx(metrics["val_acc"])


def test_eval_only_needs_a_checkpoint_and_refuses_a_corrupt_one(tmp_path):
    with pytest.raises(SystemExit):
        train.parse_args(["--eval-only"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read checkpoint {bad}"):
        train.main(_tiny_synthetic(tmp_path / "e", "--eval-only", "--checkpoint", str(bad)))
    torch.save({"model": {}}, bad)
    with pytest.raises(ValueError, match="is not a train.py checkpoint: it lacks optimizer"):
        train.main(["--eval-only", "--checkpoint", str(bad)])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        train.main(_tiny_synthetic(tmp_path / "e", "--resume", str(tmp_path / "missing.pt")))


def test_unknown_override_is_refused_with_a_suggestion(tmp_path):
    from pcattn.config import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        train.main(_tiny_synthetic(tmp_path / "r", "--train.epoch=3"))
    with pytest.raises(SystemExit):
        train.parse_args(["--nonsense"])


def test_schedule_warms_up_then_follows_the_cosine():
    cfg = train.load_config(None, ["schedule.warmup_start=0.1", "schedule.min_lr=0.0"])
    total, warmup = 100, 10
    f = [train.lr_factor(s, total, warmup, cfg) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[5] == pytest.approx(0.1 + 0.9 * 0.5)
    assert f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert f[100] == pytest.approx(0.0, abs=1e-12)


def test_torchrun_two_processes_take_the_single_process_step(tmp_path):
    # one SGD step with lr 1 and no momentum: weights_after = weights_before - gradient, so
    # equal weights mean equal first-step gradients. Augmentation and dropout are off so both
    # runs see the same global batch of 4 shapes (2 per process in the parallel run).
    common = _tiny_synthetic(
        tmp_path / "x",
        "--train.max_steps=1",
        "--optim.name=sgd",
        "--optim.lr=1.0",
        "--optim.momentum=0.0",
        "--optim.weight_decay=0.0",
        "--schedule.warmup_epochs=0",
        "--model.dropout=0.0",
        "--data.augment.scale=null",
        "--data.augment.shuffle=false",
        "--data.augment.rotate=null",
        "--data.augment.jitter=0.0",
    )
    common = [a for a in common if not a.startswith("--run.out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    cmd = [sys.executable, str(ROOT / "train.py"), *common, f"--run.out={single}"]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True, timeout=300)
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "train.py"),
        *common,
        f"--run.out={parallel}",
    ]
    try:
        done = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:  # show where it stood
        raise AssertionError(f"torchrun hung:\n{e.stdout}\n{e.stderr}") from None
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(single / "last.pt", weights_only=True)["model"]
    b = torch.load(parallel / "last.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    cfg = train.load_config(ROOT / "configs" / "default.yaml", [c[2:] for c in common[2:]])
    _, _, info = train.build_data(cfg)
    before = train.build_model(cfg, info).state_dict()
    moved = max((a[k].float() - before[k].float()).abs().max().item() for k in a)
    assert moved > 1e-3  # the step did something
    for k in a:
        if k.endswith("num_batches_tracked"):
            assert torch.equal(a[k], b[k])
        else:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    # rank 0 alone wrote the run folder: one log row, one config
    assert len(_read_log(parallel / "log.csv")) == 1
    assert "torch.distributed" not in (parallel / "config.yaml").read_text()


def test_voting_averages_scaled_copies():
    # votes = 3: the input itself and two copies scaled by U(0.8, 1.25) drawn from `gen`
    from torch_geometric.data import Batch, Data

    torch.manual_seed(0)
    batch = Batch.from_data_list([Data(pos=torch.randn(10, 3)) for _ in range(2)])

    class Probe(torch.nn.Module):  # logits that depend on the scale of the cloud
        def forward(self, data):
            size = data.pos.norm(dim=1).view(2, 10).sum(1)  # (B,), linear in the scale
            return torch.stack([size, -size], 1)  # (B, 2)

    gen = torch.Generator().manual_seed(7)
    out = train.predict(Probe(), batch, None, 3, gen)
    ref_gen = torch.Generator().manual_seed(7)
    s1 = 0.8 + 0.45 * torch.rand((), generator=ref_gen)
    s2 = 0.8 + 0.45 * torch.rand((), generator=ref_gen)
    base = Probe()(batch)
    torch.testing.assert_close(out, base * (1 + s1 + s2) / 3)


# --------------------------------------------------------------------------------------------
# interruptions: signals, kill -9, damaged checkpoints


def _same_weights(a: Path, b: Path) -> None:
    wa = torch.load(a, weights_only=True)
    wb = torch.load(b, weights_only=True)
    assert wa["step"] == wb["step"]
    for name, value in wa["model"].items():
        assert torch.equal(value, wb["model"][name]), name


def _start(args: list[str], **env_vars: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_vars}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    import time

    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended before {path.name} appeared:\n{out}\n{err}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, how):
    args = ["--train.epochs=12", "--run.keep_checkpoints=20"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train.main(_tiny_synthetic(straight, *args))
    proc = _start(_tiny_synthetic(cut, *args))
    _wait_for(cut / "checkpoints" / "epoch_0002.pt", proc)
    proc.send_signal(getattr(__import__("signal"), how))
    out, err = proc.communicate(timeout=240)
    if how != "SIGKILL":
        signum = int(getattr(__import__("signal"), how))
        assert proc.returncode == 128 + signum, err
        assert f"{how} received: stopping after this step" in err
        assert f"resume with: python train.py --resume {cut / 'last.pt'}" in out
        stopped = torch.load(cut / "last.pt", weights_only=True)
        # stopped long before the 48th step: inside an epoch (4 steps each), or at the end of
        # epoch 2 when the signal came before that epoch's last check
        assert 8 <= stopped["step"] < 48
        if "batch" in stopped:
            assert stopped["step"] % 4 == stopped["batch"] % 4
        else:
            assert stopped["step"] % 4 == 0
    else:
        assert proc.returncode == -9
        assert torch.load(cut / "last.pt", weights_only=True)["step"] < 48
    train.main(_tiny_synthetic(cut, *args, "--resume"))
    _same_weights(straight / "last.pt", cut / "last.pt")
    assert _read_log(straight / "log.csv") == _read_log(cut / "log.csv")


def test_a_signal_during_evaluation_stops_after_the_epoch_checkpoint(tmp_path, monkeypatch):
    # SIGTERM while epoch 2 is being evaluated: the epoch finishes (log row, checkpoint), the
    # run stops there with 143 instead of training another step, and resumes exactly
    import signal

    args = ["--train.epochs=4"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train.main(_tiny_synthetic(straight, *args))
    calls = []
    evaluate = train.evaluate

    def signalling_evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*a, **k)

    monkeypatch.setattr(train, "evaluate", signalling_evaluate)
    with pytest.raises(SystemExit) as stop:
        train.main(_tiny_synthetic(cut, *args))
    assert stop.value.code == 143
    saved = torch.load(cut / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and "batch" not in saved  # the end of epoch 2, not mid-epoch
    assert len(_read_log(cut / "log.csv")) == 2
    monkeypatch.setattr(train, "evaluate", evaluate)
    train.main(_tiny_synthetic(cut, *args, "--resume"))
    _same_weights(straight / "last.pt", cut / "last.pt")
    assert _read_log(straight / "log.csv") == _read_log(cut / "log.csv")


def _two_processes(args: list[str], port: int) -> list[subprocess.Popen]:
    """``train.py`` as ranks 0 and 1 of a gloo group, as ``torchrun --nproc_per_node=2``
    would start them (started directly, so a signal can reach one rank alone)."""
    group = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    group["OMP_NUM_THREADS"] = "1"
    return [_start(args, **group, RANK=str(r), LOCAL_RANK=str(r)) for r in range(2)]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """Exit status and output of every process; all are killed if one hangs (a rank left
    alone waits in its next all-reduce until gloo's 30-minute timeout)."""
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = []
        for i, p in enumerate(procs):
            try:
                err = results[i][2] if i < len(results) else p.communicate(timeout=10)[1]
            except subprocess.TimeoutExpired:  # pipes held open by a stuck child
                err = ""
            tails.append(f"rank {i}: exit {p.wait()}\n{err[-3000:]}")
        pytest.fail("a rank hung:\n" + "\n".join(tails))
    return results


@pytest.mark.parametrize("signalled", [(1,), (0, 1)], ids=["one rank", "both ranks"])
def test_sigterm_under_two_processes_stops_both_at_one_step_and_resumes_exactly(
    tmp_path, signalled, free_port
):
    # one rank (a preempted node) or both (torchrun forwarding SIGTERM) get the signal; both
    # must stop after the same step (else one hangs in its next all-reduce) with status 143,
    # one checkpoint is written, and the resumed pair ends where an uninterrupted pair does
    args = ["--train.epochs=8", "--run.keep_checkpoints=20"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    for code, _, err in _finish(_two_processes(_tiny_synthetic(straight, *args), free_port())):
        assert code == 0, err
    procs = _two_processes(_tiny_synthetic(cut, *args), free_port())
    try:
        _wait_for(cut / "checkpoints" / "epoch_0002.pt", procs[0])
    finally:  # when rank 0 died or was killed, rank 1 must not outlive the test
        if procs[0].poll() is not None:
            procs[1].kill()
    for rank in signalled:
        procs[rank].send_signal(__import__("signal").SIGTERM)
    (code0, out0, err0), (code1, _, err1) = _finish(procs)
    assert (code0, code1) == (143, 143), err0 + err1
    assert ("SIGTERM received: stopping after this step" in err0) == (0 in signalled)
    assert "SIGTERM received: stopping after this step" in err1
    assert f"resume with: python train.py --resume {cut / 'last.pt'}" in out0
    stopped = torch.load(cut / "last.pt", weights_only=True)
    assert 8 <= stopped["step"] < 32  # mid-epoch, or at an epoch's end (no "batch")
    for code, _, err in _finish(
        _two_processes(_tiny_synthetic(cut, *args, "--resume"), free_port())
    ):
        assert code == 0, err
    _same_weights(straight / "last.pt", cut / "last.pt")
    assert _read_log(straight / "log.csv") == _read_log(cut / "log.csv")


def test_resume_falls_back_past_a_damaged_last_checkpoint(tmp_path, capsys):
    straight, run = tmp_path / "straight", tmp_path / "run"
    train.main(_tiny_synthetic(straight, "--train.epochs=4"))
    train.main(_tiny_synthetic(run, "--train.epochs=4", "--train.max_steps=12"))  # 3 epochs
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])  # truncated
    capsys.readouterr()
    train.main(
        _tiny_synthetic(run, "--train.epochs=4", "--resume", "--resume-override", "train.max_steps")
    )
    err = capsys.readouterr().err
    assert f"warning: cannot read checkpoint {run / 'last.pt'}" in err
    assert f"resuming from {run / 'checkpoints' / 'epoch_0003.pt'} instead" in err
    _same_weights(straight / "last.pt", run / "last.pt")
    # every checkpoint unreadable: one error naming them all
    for path in [run / "last.pt", *(run / "checkpoints").glob("*.pt")]:
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"no readable checkpoint to resume from: cannot read"):
        train.main(_tiny_synthetic(run, "--train.epochs=5", "--resume"))


def test_only_the_newest_epoch_checkpoints_are_kept(tmp_path):
    run = tmp_path / "run"
    train.main(_tiny_synthetic(run, "--train.epochs=5", "--run.keep_checkpoints=2"))
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["epoch_0004.pt", "epoch_0005.pt"]
    assert torch.load(run / "checkpoints" / "epoch_0005.pt", weights_only=True)["epoch"] == 4
    none = tmp_path / "none"
    train.main(_tiny_synthetic(none, "--train.epochs=2", "--run.keep_checkpoints=0"))
    assert not (none / "checkpoints").exists()


class _Payload:
    """Unpickling this would write a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_checkpoint_carrying_code_is_refused_and_nothing_runs(tmp_path):
    marker, evil = tmp_path / "pwned.txt", tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil)
    for argv in (
        ["--eval-only", "--checkpoint", str(evil)],
        _tiny_synthetic(tmp_path / "r", "--resume", str(evil)),
    ):
        with pytest.raises(ValueError, match=f"cannot read checkpoint {evil}: UnpicklingError"):
            train.main(argv)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is real: a full unpickle runs it
    assert marker.read_text() == "code ran"


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = torch.nn.CrossEntropyLoss
    calls = {"n": 0}

    class NaNOnSixthStep(real):
        def forward(self, logits, target):
            calls["n"] += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(train.nn, "CrossEntropyLoss", NaNOnSixthStep)
    with pytest.raises(FloatingPointError, match=rf"loss is nan at epoch 2, step 6; the last good "
                                                 rf"checkpoint is {run / 'last.pt'}"):  # fmt: skip
        train.main(_tiny_synthetic(run))
    good = torch.load(run / "last.pt", weights_only=True)
    assert good["epoch"] == 0 and good["step"] == 4
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_a_run_writes_only_inside_its_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative run.out, as in the configs
    top = set(os.listdir(ROOT))
    args = _tiny_synthetic(Path("runs") / "confined", "--train.epochs=2", "--save-predictions")
    train.main(args)
    train.main([*args, "--resume", "--train.epochs=3", "--resume-override", "train.epochs"])
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written and all(p.parts[:2] == ("runs", "confined") for p in written), written
    assert set(os.listdir(ROOT)) - top <= {".pytest_cache"}  # nothing new beside the code


# --------------------------------------------------------------------------------------------
# resuming with another config, temporary files, one error line for a run that cannot start


def _small(out: Path, *extra: str) -> list[str]:
    """``_tiny_synthetic`` with 8 training shapes (2 steps per epoch, the first epoch the
    warm-up), evaluated (and plotted) after the last epoch only."""
    small = ["--data.train_shapes=8", "--data.val_shapes=2", "--train.eval_every=100"]
    return _tiny_synthetic(out, *small, *extra)


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes and modification time."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def test_resume_refuses_a_changed_config_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    train.main(_small(run, "--train.epochs=1"))
    # what a killed run leaves: a hidden atomic-write temporary and an old-style copy temporary
    stale = [run / ".last.pt.0123456789ab.tmp", run / "checkpoints" / "epoch_0001.pt.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 10)
    before = _snapshot(run)
    capsys.readouterr()
    changed = ["--data.train_shapes=12", "--data.seed=1", "--optim.lr=0.2"]
    assert train.cli(_small(run, "--train.epochs=1", "--resume", *changed)) == 2
    assert capsys.readouterr().err == (
        f"error: --resume: the config differs from the one checkpoint {run / 'last.pt'} was "
        "trained with: data.train_shapes: 8 (checkpoint) -> 12 (requested); data.seed: 0 "
        "(checkpoint) -> 1 (requested); optim.lr: 0.003 (checkpoint) -> 0.2 (requested); "
        "resume with that config, or continue with the requested values with "
        "--resume-override data.train_shapes data.seed optim.lr\n"
    )
    # a checkpoint named without --config: its own config plus the overrides, checked the same
    assert train.cli(["--resume", str(run / "last.pt"), "--optim.lr=0.2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: the config differs") and err.count("\n") == 1
    assert "optim.lr: 0.003 (checkpoint) -> 0.2 (requested); resume with" in err
    assert _snapshot(run) == before  # the stale files too: a refused run touches nothing
    # the unchanged config resumes (nothing left to train) and sweeps the stale files first
    assert train.cli(_small(run, "--train.epochs=1", "--resume")) == 0
    out = capsys.readouterr().out
    assert f"removed 2 temporary file(s) of a killed run: {stale[0]}, {stale[1]}" in out
    assert not any(p.exists() for p in stale)
    assert (run / "checkpoints" / "epoch_0001.pt").read_bytes() == before[
        Path("checkpoints", "epoch_0001.pt")
    ][0]


def test_resume_override_continues_with_the_requested_values_in_force(tmp_path, capsys):
    run = tmp_path / "run"
    train.main(_small(run, "--train.epochs=2"))  # 2 steps per epoch, 2 of warm-up
    capsys.readouterr()
    extend = ["--train.epochs=3", "--optim.lr=0.01", "--resume"]
    train.main(_small(run, *extend, "--resume-override", "train.epochs", "optim.lr"))
    assert (
        f"resumed from {run / 'last.pt'} at epoch 3, with optim.lr: 0.003 (checkpoint) -> 0.01 "
        "(requested); train.epochs: 2 (checkpoint) -> 3 (requested)"
    ) in capsys.readouterr().out
    ckpt = torch.load(run / "last.pt", weights_only=True)
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written == ckpt["config"]
    assert (written["optim"]["lr"], written["train"]["epochs"], ckpt["step"]) == (0.01, 3, 6)
    # the requested learning rate is the one in force, not the checkpoint's
    assert ckpt["scheduler"]["base_lrs"] == [0.01, 0.01]
    assert [g["initial_lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.01, 0.01]
    rows = _read_log(run / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    # end of each cosine: min_lr (0.01) x lr, at step 4 of 4 under lr 0.003, 6 of 6 under 0.01
    assert float(rows[1]["lr"]) == pytest.approx(0.003 * 0.01, rel=1e-9)
    assert float(rows[2]["lr"]) == pytest.approx(0.01 * 0.01, rel=1e-9)


def test_resume_override_refuses_unknown_keys_the_optimiser_and_mid_epoch_batches(tmp_path, capsys):
    run = tmp_path / "run"
    train.main(_small(run, "--train.epochs=1"))
    mid = tmp_path / "mid.pt"  # as if stopped by a signal after batch 2 of epoch 1
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt.update(batch=2, sums=[1.0, 1.0, 8.0])
    torch.save(ckpt, mid)
    before = _snapshot(run)
    capsys.readouterr()
    cases = [
        (
            ["--resume", "--resume-override", "train.epoch"],
            "error: --resume-override: unknown key 'train.epoch'; did you mean 'train.epochs'?",
        ),
        (
            ["--resume", "--optim.name=sgd", "--resume-override", "optim.name"],
            f"error: --resume-override optim.name: checkpoint {run / 'last.pt'} holds the state "
            "of adamw, which sgd cannot continue; start a new run",
        ),
        (
            ["--resume", str(mid), "--data.seed=1", "--resume-override", "data.seed"],
            f"error: --resume-override data.seed: checkpoint {mid} stopped inside epoch 1 (after "
            "batch 2), whose batches data.seed would change; resume unchanged to the end of "
            "that epoch first, or from a checkpoints/epoch_XXXX.pt",
        ),
    ]
    for extra, message in cases:
        assert train.cli(_small(run, "--train.epochs=1", *extra)) == 2
        assert capsys.readouterr().err == message + "\n"
    assert _snapshot(run) == before
    with pytest.raises(SystemExit):
        train.parse_args(["--resume-override", "train.epochs"])  # needs --resume
    assert "--resume-override needs --resume" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["last.pt", "checkpoints/epoch_0001.pt"])
def test_a_full_disk_leaves_no_temporary_file_and_one_error_line(
    tmp_path, monkeypatch, capsys, target
):
    import errno

    from pcattn import runlog

    def full(source, f, *rest):  # torch.save(obj, f) / shutil.copyfileobj(src, f, size)
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if target == "last.pt":
        monkeypatch.setattr(torch, "save", full)
    else:
        monkeypatch.setattr(runlog.shutil, "copyfileobj", full)
    run = tmp_path / "run"
    assert train.cli(_small(run, "--train.epochs=1")) == 1
    assert capsys.readouterr().err == (
        f"error: [Errno 28] cannot write {run / target}: {os.strerror(errno.ENOSPC)}\n"
    )
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not (run / target).exists()
    monkeypatch.undo()
    if target != "last.pt":  # the epoch's last.pt was written before the copy failed
        assert torch.load(run / "last.pt", weights_only=True)["step"] == 2


def _fake_checkpoint(path: Path, epoch: int) -> None:
    keys = ("model", "optimizer", "scheduler", "scaler", "rng", "config")
    torch.save({**{k: {} for k in keys}, "epoch": epoch, "step": epoch}, path)


def test_epoch_history_is_ordered_by_number_past_epoch_9999(tmp_path):
    out = tmp_path / "run"
    folder = out / "checkpoints"
    folder.mkdir(parents=True)
    for n in range(9998, 10003):
        (folder / f"epoch_{n:04d}.pt").write_bytes(str(n).encode())
    (out / "last.pt").write_bytes(b"epoch 10003")
    train.keep_history(out, 10002, 3)
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch_10001.pt",
        "epoch_10002.pt",
        "epoch_10003.pt",
    ]
    assert (folder / "epoch_10003.pt").read_bytes() == b"epoch 10003"
    # --resume past a damaged last.pt takes the newest epoch by number, not by name
    for p in folder.iterdir():
        p.unlink()
    _fake_checkpoint(folder / "epoch_9999.pt", 9998)
    _fake_checkpoint(folder / "epoch_10000.pt", 9999)
    ckpt, path = train.load_resume(out)
    assert path == folder / "epoch_10000.pt" and ckpt["epoch"] == 9999


def _write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _torch_file(path: Path) -> Path:
    torch.save({"w": torch.ones(2)}, path)
    return path


DUPLICATE_SECTION = b"data:\n  seed: 1\ntrain:\n  epochs: 2\ndata:\n  seed: 3\n"


def _truncated_checkpoint(path: Path) -> Path:
    torch.save({"model": {"w": torch.ones(1000)}}, path)
    return _write_file(path, path.read_bytes()[:500])


# each case: (extra arguments given tmp_path, the error line, a regular expression when the
# wording of a third-party message is not ours)
BAD_RUNS = {
    "truncated checkpoint": lambda t: (
        ["--resume", str(_truncated_checkpoint(t / "cut.pt"))],
        rf"error: cannot read checkpoint {t / 'cut.pt'}: \w+: .+",
    ),
    "not a checkpoint": lambda t: (
        ["--resume", str(_write_file(t / "x.pt", b"not a checkpoint"))],
        rf"error: cannot read checkpoint {t / 'x.pt'}: \w+: .+",
    ),
    "another torch file": lambda t: (
        ["--resume", str(_torch_file(t / "w.pt"))],
        f"error: {t / 'w.pt'} is not a train.py checkpoint: it lacks model, optimizer, "
        "scheduler, scaler, rng, epoch, step, config",
    ),
    "config not UTF-8": lambda t: (
        ["--config", str(_write_file(t / "latin1.yaml", b"train:\n  epochs: 2\n# caf\xe9\n"))],
        f"error: {t / 'latin1.yaml'}: not UTF-8 text: byte 0xe9 at offset 24 (line 3); save "
        "the file as UTF-8",
    ),
    "duplicate section": lambda t: (
        ["--config", str(_write_file(t / "d.yaml", DUPLICATE_SECTION))],
        f"error: {t / 'd.yaml'}, line 5, column 1: not valid YAML: duplicate key 'data' (first "
        "at line 1)",
    ),
    "model.k 0": lambda t: (  # refused by the model's first forward (or by its constructor)
        ["--model.k=0"],
        r"error: model 'attention_net_cls'( cannot run on data 'synthetic')?: k must be >= 1, "
        r"got 0",
    ),
    "seed out of range": lambda t: (
        ["--train.seed=99999999999999999999"],
        "error: override 'train.seed=99999999999999999999': train.seed must be <= 2**63 - 1 = "
        "9223372036854775807, got 99999999999999999999",
    ),
    "one shape, batch 64": lambda t: (
        ["--data.train_shapes=1", "--train.batch_size=64"],
        "error: the training set of 1 shape(s) (data.train_shapes) gives batches of 1 shape(s) "
        "with train.batch_size 64: the classification head's BatchNorm needs 2 per batch; use "
        "at least 2 training shapes",
    ),
    "lr inf": lambda t: (
        ["--optim.lr=.inf"],
        "error: override 'optim.lr=.inf': optim.lr must be a finite number, got inf",
    ),
    "dropout nan": lambda t: (
        ["--model.dropout=.nan"],
        "error: override 'model.dropout=.nan': model.dropout must be a finite number, got nan",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_a_run_that_cannot_start_is_one_error_line_and_writes_nothing(case, tmp_path, capsys):
    extra, message = BAD_RUNS[case](tmp_path)
    run = tmp_path / "run"
    assert train.cli(_small(run, *extra)) == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    if message.startswith("error: model") or "\\w" in message:
        assert re.fullmatch(message, err[:-1]), err
    else:
        assert err[:-1] == message
    assert not run.exists()


def test_check_model_runs_refuses_what_the_first_forward_refuses_without_side_effects():
    from torch_geometric.data import Data

    from pcattn.config import ConfigError
    from pcattn.experiment import check_model_runs

    class Picky(torch.nn.Module):  # builds, then refuses its input at the first forward
        def __init__(self, k: int) -> None:
            super().__init__()
            self.k, self.lin, self.seen = k, torch.nn.Linear(3, 2), []

        def forward(self, batch):
            self.seen.append((self.training, torch.is_grad_enabled(), batch.num_graphs))
            torch.rand(5)  # draws from the global generator
            if self.k < 1:
                raise ValueError(f"k must be >= 1, got {self.k}")
            return self.lin(batch.pos)

    items = [Data(pos=torch.randn(6, 3)) for _ in range(3)]
    cfg = train.load_config(None, [])
    good = Picky(4)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_model_runs(good, items, cfg)
    assert good.seen == [(False, False, 1)] and good.training  # eval, no grad; mode restored
    assert torch.equal(torch.rand(3), expected)  # torch's random state untouched
    with pytest.raises(
        ConfigError,
        match=r"^model 'attention_net_cls' cannot run on data 'synthetic': k must be >= 1, got 0$",
    ):
        check_model_runs(Picky(0), items, cfg)


def test_cuda_asked_for_without_cuda_is_refused_before_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    assert train.cli(_small(run, "--run.device=cuda")) == 2
    assert re.fullmatch(
        r"error: run\.device is 'cuda' but CUDA is not available \((torch is built without "
        r"CUDA|no GPU is visible)\); use run\.device=cpu or auto\n",
        capsys.readouterr().err,
    )
    assert not run.exists()


def test_train_py_exits_2_with_one_line_for_an_unreadable_resume(tmp_path):
    bad = _write_file(tmp_path / "bad.pt", b"not a checkpoint")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *_small(run, "--resume", str(bad))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(rf"error: cannot read checkpoint {bad}: \w+: .+\n", done.stderr)
    assert not run.exists()


def test_a_nan_loss_in_the_first_epoch_names_no_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"an earlier run's file")  # not this run's: never named
    real = torch.nn.CrossEntropyLoss

    class NaNLoss(real):
        def forward(self, logits, target):
            return super().forward(logits, target) * float("nan")

    monkeypatch.setattr(train.nn, "CrossEntropyLoss", NaNLoss)
    assert train.cli(_small(run)) == 1
    assert capsys.readouterr().err == (
        "error: loss is nan at epoch 1, step 1; no checkpoint of this run was written yet\n"
    )


@pytest.mark.parametrize(
    "num_train, batch_size, world, task, message",
    [
        (5, 4, 1, "classification", None),  # one batch of 4, the 5th shape dropped
        (3, 4, 1, "classification", None),  # smaller than a batch: one batch of 3
        (1, 64, 1, "segmentation", None),  # segmentation normalises over points: 1 shape works
        (8, 4, 2, "classification", None),
        (
            1,
            4,
            1,
            "classification",
            "the training set of 1 shape(s) (data.train_shapes) gives batches of 1 shape(s) "
            "with train.batch_size 4: the classification head's BatchNorm needs 2 per batch; "
            "use at least 2 training shapes",
        ),
        (
            3,
            4,
            2,
            "classification",
            "the training set of 3 shape(s) (data.train_shapes) gives batches of 1 shape(s) per "
            "process (2 processes) with train.batch_size 4: the classification head's BatchNorm "
            "needs 2 per batch; use at least 4 training shapes",
        ),
        (
            1,
            4,
            2,
            "segmentation",
            "the training set of 1 shape(s) (data.train_shapes) gives batches of 0 shape(s) per "
            "process (2 processes) with train.batch_size 4: there is nothing to train on; use "
            "at least 2 training shapes",
        ),
        (
            8,
            2,
            2,
            "classification",
            "train.batch_size (2) must give every process at least 2 shapes: the "
            "classification head's BatchNorm needs 2 per batch",
        ),
        (8, 3, 2, "segmentation", "train.batch_size (3) must be divisible by the number of"),
    ],
)
def test_train_batches_are_refused_exactly_when_a_batch_would_be_too_small(
    num_train, batch_size, world, task, message
):
    from pcattn.config import ConfigError
    from pcattn.data import SyntheticParts
    from pcattn.distributed import Distributed

    cfg = train.load_config(None, [f"train.batch_size={batch_size}", f"data.task={task}"])
    if message is not None:
        with pytest.raises(ConfigError, match="^" + re.escape(message)):
            train.check_train_batches(cfg, num_train, world, task)
        return
    train.check_train_batches(cfg, num_train, world, task)
    # what the loaders of every process then give: no batch smaller than the model needs
    data = SyntheticParts(num_train, split="train", num_points=16, task=task)
    sizes = [
        b.num_graphs
        for rank in range(world)
        for b in train.make_loader(data, cfg, Distributed(rank, world), train=True)
    ]
    expected = {5: [4], 3: [3], 1: [1], 8: [2] * 4}[num_train]
    assert sizes == expected

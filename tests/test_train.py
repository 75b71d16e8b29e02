"""train.py end to end: every config at tiny size, exact resume, eval-only, predictions, and
data-parallel training on two CPU processes."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
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
    train.main(_tiny_synthetic(split, "--resume"))
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
    train.main(_tiny_synthetic(run, "--train.epochs=4", "--resume"))
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
    train.main([*args, "--resume", "--train.epochs=3"])
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written and all(p.parts[:2] == ("runs", "confined") for p in written), written
    assert set(os.listdir(ROOT)) - top <= {".pytest_cache"}  # nothing new beside the code

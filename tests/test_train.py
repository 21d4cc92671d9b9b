"""Training: batch order and initialisation policies, learning curves, checkpoints at chosen
epochs, bit-identical resume, divergence."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAIN
from safetensors.torch import load_file

from modeconn import jobs, train
from modeconn.data import DataSpec, prepare_subsets
from modeconn.errors import UsageError
from modeconn.io import read_csv
from modeconn.models import load_model, model_config
from modeconn.train import TrainConfig, epoch_order, init_model, plan_members, runs, train_run

# ---------------------------------------------------------------- batch order, init


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(100, 100, seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(100))
    assert torch.equal(a, epoch_order(100, 100, seed=3, epoch=0))
    assert not torch.equal(a, epoch_order(100, 100, seed=3, epoch=1))
    assert not torch.equal(a, epoch_order(100, 100, seed=4, epoch=0))
    # A shorter subset visits the positions of the shared permutation that exist for it.
    short = epoch_order(90, 100, seed=3, epoch=0)
    assert short.tolist() == [i for i in a.tolist() if i < 90]


def _members(shift, batch_order, init="same", seeds=(0,), dataset="digits"):
    spec = DataSpec(dataset, shift=shift)
    subsets = prepare_subsets(spec)
    return plan_members(spec, subsets, init, list(seeds), batch_order, order_seed=5)


def _orders(members, epoch):
    return [epoch_order(len(m.data.train_y), m.order_size, m.order_seed, epoch) for m in members]


def test_batch_order_same_gives_identical_positions():
    # 10 classes × 20 samples: iid:50,50 gives two subsets of exactly 100.
    members = _members("iid:50,50", "same", dataset="synthetic:n=200,test=20")
    assert [len(m.data.train_y) for m in members] == [100, 100]
    for epoch in (0, 1, 5):
        a, b = _orders(members, epoch)
        assert torch.equal(a, b)
        assert sorted(a.tolist()) == list(range(100))
    # The data behind the positions differ: the subsets are disjoint.
    assert not torch.equal(members[0].data.train_x, members[1].data.train_x)


def test_batch_order_same_with_unequal_subsets_shares_the_sequence():
    members = _members("iid:30,70", "same")
    small, large = _orders(members, 2)
    n = len(members[0].data.train_y)
    assert sorted(small.tolist()) == list(range(n))
    assert small.tolist() == [i for i in large.tolist() if i < n]


def test_batch_order_independent_differs():
    members = _members("iid:50,50", "independent", dataset="synthetic:n=200,test=20")
    a, b = _orders(members, 0)
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(100))
    assert not torch.equal(a, b)
    assert members[0].order_seed != members[1].order_seed


def _params(member, cfg):
    return init_model(cfg, member.init_seed).state_dict()


def test_init_same_and_different():
    cfg = model_config("mlp", (1, 8, 8), 10, width=16)
    same = _members("iid:50,50", "same", init="same")
    pa, pb = (_params(m, cfg) for m in same)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    diff = _members("iid:50,50", "same", init="different")
    qa, qb = (_params(m, cfg) for m in diff)
    assert not any(torch.equal(qa[k], qb[k]) for k in qa if qa[k].numel() > 1)
    explicit = _members("iid:50,50", "same", init="different", seeds=(7, 9))
    assert [m.init_seed for m in explicit] == [7, 9]


def test_init_model_does_not_touch_global_rng():
    cfg = model_config("mlp", (1, 8, 8), 10, width=16)
    torch.manual_seed(1)
    expect = torch.rand(3)
    torch.manual_seed(1)
    init_model(cfg, 123)
    assert torch.equal(torch.rand(3), expect)


def test_plan_members_errors():
    spec = DataSpec("digits", shift="iid:50,50")
    subsets = prepare_subsets(spec)
    with pytest.raises(UsageError, match="one per subset"):
        plan_members(spec, subsets, "same", [1, 2, 3], "same", 0)
    with pytest.raises(UsageError, match="init same with different init seeds"):
        plan_members(spec, subsets, "same", [1, 2], "same", 0)
    with pytest.raises(UsageError):
        plan_members(spec, subsets, "shared", [0], "same", 0)
    with pytest.raises(UsageError):
        plan_members(spec, subsets, "same", [0], "random", 0)
    only = plan_members(spec, subsets, "same", [0], "same", 0, only=[1])
    assert [m.name for m in only] == ["b"]


@pytest.mark.parametrize("kw,match", [
    ({"epochs": 0}, "'epochs' of training must be an integer ≥ 1, got 0"),
    ({"batch_size": 0}, "'batch_size' of training must be an integer ≥ 1"),
    ({"lr": 0.0}, "'lr' of training must be a finite number > 0"),
    ({"lr": -1.0}, "'lr'"), ({"lr": math.nan}, "'lr'"),
    ({"weight_decay": -1.0}, "'weight_decay' of training must be a finite number ≥ 0"),
    ({"optimizer": "lbfgs"}, "'optimizer' of training must be one of sgd, adam, adamw"),
    ({"momentum": 1.0}, "'momentum' of training must be a finite number ≥ 0 and < 1"),
    ({"nesterov": True, "optimizer": "adam"}, "'nesterov' of training needs optimizer sgd"),
    ({"save_epochs": (0,)}, "'save_epochs'"), ({"save_epochs": (21,)}, "'save_epochs'"),
    ({"schedule": "linear"}, "schedule"), ({"warmup": -1.0}, "'warmup'"),
    ({"epochs": "ten"}, "'epochs' of training must be an integer ≥ 1, got 'ten'"),
])
def test_train_config_is_checked_when_built(kw, match):
    """Every bad setting is refused when the settings are built, naming the field."""
    with pytest.raises(UsageError, match=match):
        TrainConfig(**kw)


def test_noise_scale():
    assert train.noise_scale(0.1, 1000, 100) == pytest.approx(0.9)


# ---------------------------------------------------------------- a training run


def _rows(path: Path, keys=("epoch", "split", "loss", "acc", "lr")):
    return [{k: r[k] for k in keys} for r in read_csv(path)]


def test_train_run_writes_learning_curve_and_checkpoints(cli, tmp_path):
    out = tmp_path / "run"
    rc, stdout, err = cli("train", *FAST_TRAIN, "--epochs", "4", "--lr", "0.05",
                          "--save-epochs", "1,3", "--out", out)
    assert rc == 0, err
    assert "all: train loss" in stdout and "test loss" in stdout
    run = out / "all"
    with open(run / "metrics.csv") as f:
        header = f.readline().strip().split(",")
    assert header[:4] == ["epoch", "split", "loss", "acc"]
    rows = read_csv(run / "metrics.csv")
    assert [(r["epoch"], r["split"]) for r in rows] == [
        (str(e), s) for e in range(1, 5) for s in ("train", "test")]
    train_loss = [float(r["loss"]) for r in rows if r["split"] == "train"]
    assert train_loss[-1] < train_loss[0]
    assert train_loss[0] < math.log(10)  # better than chance after one epoch
    test_acc = float(rows[-1]["acc"])
    assert test_acc > 0.7  # chance is 0.1
    # Checkpoints at the chosen epochs, loadable, tagged with their epoch.
    assert sorted(p.name for p in run.glob("epoch_*.safetensors")) == [
        "epoch_1.safetensors", "epoch_3.safetensors"]
    m1, c1 = load_model(run / "epoch_1.safetensors")
    assert c1.meta["epoch"] == 1
    final, cf = load_model(run / "model.safetensors")
    assert cf.meta["epoch"] == 4
    assert not all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(),
                                                     final.state_dict().values(), strict=True))
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "complete" and status["epoch"] == 4
    assert status["test_acc"] == pytest.approx(test_acc)
    # The saved model reproduces the reported test metrics.
    from modeconn.evaluate import evaluate
    prepared = prepare_subsets(DataSpec("digits"))[0]
    loss, acc = evaluate(final, prepared.test_x, prepared.test_y)
    assert acc == pytest.approx(status["test_acc"])
    assert loss == pytest.approx(status["test_loss"], rel=1e-5)


def test_train_records_seeds_and_noise_scale(cli, tmp_path):
    out = tmp_path / "run"
    rc, _, err = cli("train", *FAST_TRAIN, "--epochs", "1", "--shift", "iid:50,50",
                     "--init", "different", "--init-seed", "3", "--batch-size", "32",
                     "--lr", "0.1", "--out", out)
    assert rc == 0, err
    for i, name in enumerate("ab"):
        cfg = json.loads((out / name / "config.json").read_text())
        assert cfg["seeds"]["init"] == 3 + i
        assert cfg["data"]["subset"] == i
        n = cfg["data"]["train_size"]
        assert cfg["noise_scale_g"] == pytest.approx(0.1 * (n / 32 - 1))
        assert sum(cfg["class_histogram"]) == n
        _, ckpt = load_model(out / name / "model.safetensors")
        assert ckpt.meta["seed"] == 3 + i
        assert ckpt.meta["data"]["shift"] == "iid:50,50"
    assert sum(int(r["count"]) for r in read_csv(out / "subsets.csv")) == 1437


def test_same_seed_same_result(tmp_path):
    """Two identical runs give bit-identical models (determinism on CPU)."""
    spec = DataSpec("digits")
    subsets = prepare_subsets(spec)
    cfg = model_config("mlp", (1, 8, 8), 10, width=16)
    tc = TrainConfig(epochs=2, lr=0.05)
    for name in ("x", "y"):
        members = plan_members(spec, subsets, "same", [0], "same", 0)
        train_run(cfg, members, tc, tmp_path / name, torch.device("cpu"), quiet=True)
    a = load_file(tmp_path / "x" / "all" / "model.safetensors")
    b = load_file(tmp_path / "y" / "all" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- resume


class _Interrupt:
    """Patch `_save_state` to raise KeyboardInterrupt right after saving the given epoch once."""

    def __init__(self, monkeypatch, after_epoch: int):
        self.after, self.fired = after_epoch, False
        self.original = runs._save_state
        monkeypatch.setattr(runs, "_save_state", self)

    def __call__(self, path, model, opt, epoch, *args, **kw):
        self.original(path, model, opt, epoch, *args, **kw)
        if epoch == self.after and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


RESUME_CASES = {
    "sgd-momentum-two-members": ["--model", "mlp", "--width", "32", "--optimizer", "sgd",
                                 "--momentum", "0.9", "--lr", "0.05", "--shift", "iid:50,50",
                                 "--schedule", "cosine", "--warmup", "1"],
    "adam": ["--model", "mlp", "--width", "32", "--optimizer", "adam", "--lr", "0.003"],
    "convnet-dropout": ["--model", "convnet", "--width", "0.25", "--lr", "0.05"],
    "resnet-batchnorm": ["--model", "resnet8", "--width", "0.25", "--optimizer", "adamw",
                         "--lr", "0.003"],
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_is_bit_identical(cli, tmp_path, monkeypatch, case):
    args = ["train", *RESUME_CASES[case], "--epochs", "4", "--batch-size", "128", "--quiet",
            "--device", "cpu"]
    rc, _, err = cli(*args, "--out", tmp_path / "A")
    assert rc == 0, err

    # Run B: interrupted (Ctrl-C) right after epoch 2 of the first member, then resumed.
    interrupt = _Interrupt(monkeypatch, after_epoch=2)
    rc, _, err = cli(*args, "--out", tmp_path / "B")
    assert interrupt.fired and rc == 130 and "interrupted" in err
    assert not (tmp_path / "B" / ("a" if "--shift" in args else "all") / "model.safetensors"
                ).exists()
    # The resumed run must continue from epoch 3, not start again.
    seen: list[tuple[int, int]] = []
    original_order = runs.epoch_order

    def spy(n, order_size, seed, epoch):
        seen.append((seed, epoch))
        return original_order(n, order_size, seed, epoch)

    monkeypatch.setattr(runs, "epoch_order", spy)
    rc, _, err = cli(*args, "--out", tmp_path / "B", "--resume")
    assert rc == 0, err
    # Epochs (0-based) trained after resuming: only 2 and 3, whether members train one after
    # the other or grouped in one batched step.
    assert sorted({e for _, e in seen}) == [2, 3]

    members = sorted(p.name for p in (tmp_path / "A").iterdir() if p.is_dir())
    assert members == sorted(p.name for p in (tmp_path / "B").iterdir() if p.is_dir())
    for m in members:
        a = load_file(tmp_path / "A" / m / "model.safetensors")
        b = load_file(tmp_path / "B" / m / "model.safetensors")
        assert list(a) == list(b)
        for k in a:
            assert torch.equal(a[k], b[k]), f"{m}/{k} differs after resume"
        assert _rows(tmp_path / "A" / m / "metrics.csv") == \
            _rows(tmp_path / "B" / m / "metrics.csv")
        assert json.loads((tmp_path / "A" / m / "status.json").read_text()) == \
            json.loads((tmp_path / "B" / m / "status.json").read_text())


def test_resume_with_other_settings_refused(cli, tmp_path, monkeypatch):
    args = ["train", *FAST_TRAIN, "--epochs", "3"]
    _Interrupt(monkeypatch, after_epoch=1)
    rc, _, _ = cli(*args, "--out", tmp_path / "run")
    assert rc == 130
    top_config = (tmp_path / "run" / "config.json").read_text()
    member_config = (tmp_path / "run" / "all" / "config.json").read_text()
    rc, out, err = cli(*args[:-1], "5", "--lr", "0.01", "--out", tmp_path / "run", "--resume")
    assert rc == 2 and err.startswith("modeconn: error:") and "resumed with different settings" in err
    assert len(err.strip().splitlines()) == 1
    # The refused attempt leaves the interrupted run as it was, so it can still be resumed.
    assert (tmp_path / "run" / "all" / "config.json").read_text() == member_config
    assert (tmp_path / "run" / "config.json").read_text() == top_config


def test_resume_of_complete_run_is_a_no_op(cli, tmp_path):
    args = ["train", *FAST_TRAIN, "--epochs", "2", "--out", tmp_path / "run"]
    assert cli(*args)[0] == 0
    before = load_file(tmp_path / "run" / "all" / "model.safetensors")
    rows = _rows(tmp_path / "run" / "all" / "metrics.csv")
    rc, out, err = cli(*args, "--resume")
    assert rc == 0, err
    after = load_file(tmp_path / "run" / "all" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _rows(tmp_path / "run" / "all" / "metrics.csv") == rows


# ---------------------------------------------------------------- divergence


def test_divergence_stops_run(cli, tmp_path):
    out = tmp_path / "run"
    rc, stdout, err = cli("train", *FAST_TRAIN, "--epochs", "3", "--lr", "1e6", "--out", out)
    assert rc == 1
    assert "DIVERGED" in stdout
    status = json.loads((out / "all" / "status.json").read_text())
    assert status["status"] == "diverged"
    assert isinstance(status["epoch"], int) and status["epoch"] >= 1
    assert isinstance(status["step"], int) and status["step"] >= 1
    assert not (out / "all" / "model.safetensors").exists()
    summary = read_csv(out / "summary.csv")
    assert summary[0]["status"] == "diverged"


def test_divergence_is_exit_status_1_of_the_job_result(tmp_path):
    result = jobs.run("train", width=32, quiet=True, device="cpu", epochs=2, lr=1e6,
                      out=tmp_path / "run")
    assert result.diverged and result.exit_code == 1
    assert result.lines()[0].startswith("all: DIVERGED at epoch")


def test_divergence_in_library_returns_status(tmp_path):
    spec = DataSpec("digits")
    subsets = prepare_subsets(spec)
    members = plan_members(spec, subsets, "same", [0], "same", 0)
    cfg = model_config("mlp", (1, 8, 8), 10, width=16)
    (res,) = train_run(cfg, members, TrainConfig(epochs=2, lr=1e6), tmp_path / "r",
                       torch.device("cpu"), quiet=True)
    assert res["status"] == "diverged" and res["epoch"] == 1
    assert not (tmp_path / "r" / "all" / "model.safetensors").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_is_bit_identical_on_cuda_with_dropout(cli, tmp_path, monkeypatch):
    """Dropout on a GPU draws from the CUDA generator, which resume must restore too."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    args = ["train", "--model", "convnet", "--width", "0.25", "--epochs", "4", "--quiet",
            "--device", "cuda"]
    assert cli(*args, "--out", tmp_path / "A")[0] == 0
    _Interrupt(monkeypatch, after_epoch=2)
    assert cli(*args, "--out", tmp_path / "B")[0] == 130
    assert cli(*args, "--out", tmp_path / "B", "--resume")[0] == 0
    a = load_file(tmp_path / "A" / "all" / "model.safetensors")
    b = load_file(tmp_path / "B" / "all" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """A real `modeconn train` process killed mid-run (SIGKILL, no clean-up) resumes to the same
    model as an uninterrupted run: every file it relies on was written atomically."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "modeconn", "train", "--width", "256", "--epochs", "12",
            "--optimizer", "adam", "--lr", "0.001", "--shift", "iid:50,50", "--quiet",
            "--device", "cpu"]
    a = subprocess.run([*args, "--out", str(tmp_path / "A")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert a.returncode == 0, a.stderr

    proc = subprocess.Popen([*args, "--out", str(tmp_path / "B")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "B" / "a" / "metrics.csv"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) > 2 * 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "B" / "a" / "model.safetensors").exists()

    b = subprocess.run([*args, "--out", str(tmp_path / "B"), "--resume"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr
    for m in ("a", "b"):
        ta = load_file(tmp_path / "A" / m / "model.safetensors")
        tb = load_file(tmp_path / "B" / m / "model.safetensors")
        assert all(torch.equal(ta[k], tb[k]) for k in ta), m
        assert _rows(tmp_path / "A" / m / "metrics.csv") == \
            _rows(tmp_path / "B" / m / "metrics.csv")


def test_grouped_runs_of_the_same_settings_write_the_same_resume_state(tmp_path):
    """The resume state of grouped members, global generator included, is the same for every
    run of the settings (it was not seeded, so each run saved another generator state)."""
    states = []
    for run in ("A", "B"):
        jobs.run("train", width=16, epochs=1, shift="iid:50,50", quiet=True, device="cpu",
                 out=tmp_path / run)
        states.append(load_file(tmp_path / run / "group_state.safetensors"))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def _kill_when(args: list[str], out: Path, env: dict, ready) -> list[str]:
    """Start `args --out out`, SIGKILL it once `ready(seconds since start)` holds; return the
    files it left."""
    proc = subprocess.Popen([*args, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and not ready(time.monotonic() - t0):
            time.sleep(0.002)
        assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        proc.kill()
        proc.wait()
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []


@pytest.mark.slow
def test_sigkill_at_any_moment_then_the_same_command_with_resume_is_bit_identical(tmp_path):
    """Killed before its first file, as soon as its directory exists (before its settings are
    recorded) and mid-training, `modeconn train` resumed with the same command line plus
    --resume ends with the models and learning curves of a run never killed (issue 22)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "modeconn", "train", "--model", "convnet", "--width", "0.25",
            "--epochs", "4", "--save-epochs", "2", "--quiet", "--device", "cpu"]
    a = subprocess.run([*args, "--out", str(tmp_path / "A")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert a.returncode == 0, a.stderr

    def rows(path: Path) -> list[str]:
        return [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]  # no seconds

    def mid_training(_: float) -> bool:  # a header and two epochs of rows written
        metrics = tmp_path / "mid-training" / "all" / "metrics.csv"
        return metrics.exists() and len(rows(metrics)) > 3

    kills = {"before any file": lambda t: t > 0.2,
             "directory made": lambda _: (tmp_path / "directory made").exists(),
             "mid-training": mid_training}
    for name, ready in kills.items():
        left = _kill_when(args, tmp_path / name, env, ready)
        if name == "before any file":
            assert left == []
        if name == "mid-training":
            assert "config.json" in left and "all/model.safetensors" not in left
        b = subprocess.run([*args, "--out", str(tmp_path / name), "--resume"], env=env,
                           capture_output=True, text=True, timeout=300)
        assert b.returncode == 0, (name, b.stderr)
        for f in ("model.safetensors", "epoch_2.safetensors"):
            ta, tb = load_file(tmp_path / "A" / "all" / f), load_file(tmp_path / name / "all" / f)
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), (name, f)
        assert rows(tmp_path / "A" / "all" / "metrics.csv") == \
            rows(tmp_path / name / "all" / "metrics.csv"), name
        for f in ("config.json", "all/config.json", "all/status.json", "summary.csv"):
            assert (tmp_path / "A" / f).read_text() == (tmp_path / name / f).read_text(), (name, f)
        assert not list((tmp_path / name).rglob("*.tmp")), name


# ---------------------------------------------------------------- resume at the last epoch

FINAL_CASES = {
    # Two MLP members train grouped (one batched step); with BatchNorm they train one by one.
    "grouped-pair": ["--model", "mlp", "--width", "32", "--shift", "iid:50,50"],
    "member-by-member-pair": ["--model", "mlp", "--width", "32", "--norm", "bn",
                              "--shift", "iid:50,50"],
    "single": ["--model", "mlp", "--width", "32", "--optimizer", "adam", "--lr", "0.003"],
}


def _hashes(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and modification time of every file under `root`."""
    import hashlib
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _same_models(a_dir: Path, b_dir: Path) -> None:
    models = sorted(p.relative_to(a_dir) for p in a_dir.rglob("*.safetensors")
                    if "state" not in p.name)
    assert models
    assert models == sorted(p.relative_to(b_dir) for p in b_dir.rglob("*.safetensors")
                            if "state" not in p.name)
    for rel in models:
        a, b = load_file(a_dir / rel), load_file(b_dir / rel)
        assert list(a) == list(b), rel
        for k in a:
            assert torch.equal(a[k], b[k]), f"{rel}/{k} differs from the uninterrupted run"


@pytest.mark.parametrize("case", list(FINAL_CASES))
def test_resume_after_kill_at_the_final_state_write_is_bit_identical(cli, tmp_path, monkeypatch,
                                                                     case):
    """Killed right after the last epoch's resume state was written (before any model file),
    the resumed run writes the trained models, not the initialisation."""
    epochs = 3
    args = ["train", *FINAL_CASES[case], "--epochs", str(epochs), "--batch-size", "128",
            "--quiet", "--device", "cpu"]
    assert cli(*args, "--out", tmp_path / "A")[0] == 0
    interrupt = _Interrupt(monkeypatch, after_epoch=epochs)
    assert cli(*args, "--out", tmp_path / "B")[0] == 130 and interrupt.fired
    assert not list((tmp_path / "B").rglob("model.safetensors"))
    rc, out, err = cli(*args, "--out", tmp_path / "B", "--resume")
    assert rc == 0, err
    _same_models(tmp_path / "A", tmp_path / "B")
    for m in sorted(p.name for p in (tmp_path / "A").iterdir() if p.is_dir()):
        assert _rows(tmp_path / "A" / m / "metrics.csv") == \
            _rows(tmp_path / "B" / m / "metrics.csv")  # all but the seconds column
        for name in ("status.json", "config.json"):
            assert (tmp_path / "A" / m / name).read_bytes() == \
                (tmp_path / "B" / m / name).read_bytes(), f"{m}/{name}"
    assert (tmp_path / "A" / "summary.csv").read_bytes() == \
        (tmp_path / "B" / "summary.csv").read_bytes()


@pytest.mark.parametrize("case", ["grouped-pair", "single"])
def test_resume_of_a_complete_run_changes_no_file(cli, tmp_path, case):
    args = ["train", *FINAL_CASES[case], "--epochs", "2", "--quiet", "--device", "cpu",
            "--out", tmp_path / "run"]
    rc, first, _ = cli(*args)
    assert rc == 0
    before = _hashes(tmp_path / "run")
    rc, again, err = cli(*args, "--resume")
    assert rc == 0, err
    assert again == first  # the same metrics are reported
    assert _hashes(tmp_path / "run") == before  # same bytes, not even rewritten


def test_resume_of_a_diverged_group_member_keeps_its_divergence(tmp_path, monkeypatch):
    """A grouped member that diverged stays diverged at the same step after a resume."""
    spec = DataSpec("digits", shift="iid:50,50")
    subsets = prepare_subsets(spec)
    subsets[1].train_x = subsets[1].train_x.clone()
    subsets[1].train_x[3] = math.inf  # member b diverges in its first epoch, a trains on
    members = plan_members(spec, subsets, "same", [0], "same", 0)
    cfg = model_config("mlp", (1, 8, 8), 10, width=16)
    tc = TrainConfig(epochs=3)
    full = train_run(cfg, members, tc, tmp_path / "A", torch.device("cpu"), quiet=True)
    assert [(r["status"], r["epoch"]) for r in full] == [("complete", 3), ("diverged", 1)]
    _Interrupt(monkeypatch, after_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, members, tc, tmp_path / "B", torch.device("cpu"), quiet=True)
    resumed = train_run(cfg, members, tc, tmp_path / "B", torch.device("cpu"), quiet=True,
                        resume=True)
    assert resumed == full


@pytest.mark.slow
def test_sigkill_right_after_the_final_state_write_resumes_bit_identical(tmp_path):
    """A real process killed by SIGKILL the moment its last resume state is on disk (a wrapper
    kills it from inside `_save_state`; no hook in the library) resumes to the same models."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    epochs = 3
    argv = ["train", "--width", "32", "--epochs", str(epochs), "--shift", "iid:50,50",
            "--quiet", "--device", "cpu"]
    wrapper = (
        "import os, signal, sys\n"
        "import modeconn.train.runs as t\n"
        "from modeconn.cli import main\n"
        "real = t._save_state\n"
        "def save(path, model, opt, epoch, *a, **k):\n"
        "    real(path, model, opt, epoch, *a, **k)\n"
        f"    if epoch == {epochs}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "t._save_state = save\n"
        "sys.exit(main(sys.argv[1:]))\n")
    a = subprocess.run([sys.executable, "-m", "modeconn", *argv, "--out", str(tmp_path / "A")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stderr
    killed = subprocess.run([sys.executable, "-c", wrapper, *argv, "--out", str(tmp_path / "B")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not list((tmp_path / "B").rglob("model.safetensors"))
    b = subprocess.run([sys.executable, "-m", "modeconn", *argv, "--out", str(tmp_path / "B"),
                        "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr
    assert b.stdout == a.stdout.replace(str(tmp_path / "A"), str(tmp_path / "B"))
    _same_models(tmp_path / "A", tmp_path / "B")

"""MPF as the reference repository runs it (`--preset mpf-reference`, issue 25) against a port of
its procedure: tanguy8001/continual-learning-via-model-merging, src/curve_merging.py (the loop,
the schedule, the optimiser) and src/curves.py (Bezier bends, the layers' random init)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from modeconn import jobs
from modeconn.checkpoint import load_checkpoint
from modeconn.data import DataSpec, eval_data
from modeconn.errors import UsageError
from modeconn.jobs.continual import ContinualConfig
from modeconn.jobs.merge import MergeConfig, method_options
from modeconn.merge import MPF_PRESETS, MPFOptions, mpf
from modeconn.models import build_model, model_config
from modeconn.paths import curves
from modeconn.paths.curves import fit_curve, layer_inits
from modeconn.train import TrainConfig, epoch_order, init_model
from modeconn.train.schedules import parse_schedule

REFERENCE = MPF_PRESETS["mpf-reference"]


# ---------------------------------------------------------------- a port of the reference

def _reference_lr(base_lr: float, epoch: int, total_epochs: int) -> float:
    """curve_merging.py `learning_rate_schedule`, called from `for epoch in range(epochs)`."""
    alpha = epoch / total_epochs
    if alpha <= 0.5:
        factor = 1.0
    elif alpha <= 0.9:
        factor = 1.0 - (alpha - 0.5) / 0.4 * 0.99
    else:
        factor = 0.01
    return factor * base_lr


def _reference_bezier(t: float) -> torch.Tensor:
    """curves.Bezier with 3 bends: binom(2, k)·t^k·(1 − t)^(2−k), in float32."""
    k = torch.arange(3.0)
    return torch.tensor([1.0, 2.0, 1.0]) * torch.pow(torch.tensor(t), k) * \
        torch.pow(1.0 - torch.tensor(t), 2.0 - k)


def _reference_curve_midpoint(model, a, b, middle, x, y, *, epochs, lr, batch_size, orders, ts):
    """curve_ensembling + train_model: endpoints fixed (fix_start, fix_end), the middle bend a
    parameter starting at `middle`, SGD(momentum 0.9, weight_decay 0: config.curve is set), the
    lr set per epoch from the schedule, CrossEntropyLoss of the curve net's log_softmax output,
    one t per batch (given: `ts`, the draws `curves.CurveNet.forward` makes), and θ(0.5) back."""
    keys = [k for k, _ in model.named_parameters()]
    w1 = {k: middle[k].clone().requires_grad_() for k in keys}
    opt = torch.optim.SGD(list(w1.values()), lr=lr, momentum=0.9, weight_decay=0.0)
    draws = iter(ts)

    def point(t: float) -> dict[str, torch.Tensor]:
        c = _reference_bezier(t)
        return {k: a[k] * c[0] + w1[k] * c[1] + b[k] * c[2] for k in keys}

    for epoch in range(epochs):
        order = orders(epoch)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            for group in opt.param_groups:
                group["lr"] = _reference_lr(lr, epoch, epochs)
            opt.zero_grad()
            out = F.log_softmax(functional_call(model, point(next(draws)), (x[idx],)), dim=1)
            F.cross_entropy(out, y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return point(0.5)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def setting():
    """A small bias-carrying MLP on digits, two endpoints of different seeds."""
    data = eval_data(DataSpec())
    cfg = model_config("mlp", data.input_shape, 10, widths=[24, 16])
    a = {k: v.detach() for k, v in init_model(cfg, 1).state_dict().items()}
    b = {k: v.detach() for k, v in init_model(cfg, 2).state_dict().items()}
    return build_model(cfg), cfg, a, b, data.train_x, data.train_y


# ---------------------------------------------------------------- agreement

def test_the_preset_is_the_reference_procedure_and_changes_nothing_else():
    ours = MPFOptions()
    ref = MPFOptions(preset="mpf-reference")
    assert (ref.bend_init, ref.weight_decay, ref.schedule) == ("random", 0.0, "curve:0")
    assert (ref.epochs, ref.lr, ref.batch_size) == (10, 0.07, 128)
    assert (ours.bend_init, ours.weight_decay, ours.schedule) == ("segment", 5e-4, "curve")
    assert (ours.epochs, ours.lr, ours.batch_size) == (20, 0.05, 64)
    assert ref.seed == ours.seed  # the one setting the preset leaves alone
    # Options added after configs were recorded: a default config records none of them.
    assert set(ours.to_dict()) == {"epochs", "lr", "batch_size", "seed"}


@pytest.mark.parametrize("epochs", [1, 3, 10, 20])
def test_the_schedule_from_epoch_0_is_the_references_at_every_step(epochs):
    sched, steps = parse_schedule("curve:0"), 7
    got = [0.07 * sched.factor(e, s / steps, epochs) for e in range(epochs) for s in range(steps)]
    want = [_reference_lr(0.07, e, epochs) for e in range(epochs) for _ in range(steps)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_ten_epochs_from_0_have_six_at_the_full_rate_and_from_1_five():
    lrs = {s: [parse_schedule(s).factor(e, 0.0, 10) for e in range(10)] for s in ("curve", "curve:0")}
    assert sum(f == 1.0 for f in lrs["curve:0"]) == 6 and sum(f == 1.0 for f in lrs["curve"]) == 5
    assert lrs["curve:0"][1:] == lrs["curve"][:-1]  # one epoch later, the same sequence
    assert parse_schedule("curve:1") == parse_schedule("curve")


def test_the_random_bend_is_the_layers_own_initialisation(setting):
    model, cfg, a, b, _, _ = setting
    (bend,) = layer_inits(model, a, seed=0, count=1)
    # curves.Linear.reset_parameters: U(−1/√in, 1/√in) for weight and bias — the law of
    # nn.Linear's own reset_parameters (kaiming_uniform with a = √5, and its bias).
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            bound = 1 / math.sqrt(m.in_features)
            for k in ("weight", "bias"):
                v = bend[f"{name}.{k}"]
                assert v.abs().max() <= bound, (name, k)
                if v.numel() >= 100:  # uniform on (−bound, bound): E|v| = bound / 2
                    assert v.abs().mean() == pytest.approx(bound / 2, rel=0.15), (name, k)
    # Exactly what building the architecture afresh draws from the bend's stream (an MLP has no
    # init of its own beyond its layers').
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(
            int(np.random.SeedSequence([0, curves._BEND_STREAM]).generate_state(1)[0]))
        fresh = build_model(cfg).state_dict()
    assert all(torch.equal(bend[k], fresh[k]) for k in a)
    # Drawn from the MPF seed, apart from the members' initialisation with that seed.
    assert all(torch.equal(bend[k], layer_inits(model, a, 0, 1)[0][k]) for k in a)
    assert not any(torch.equal(bend[k], layer_inits(model, a, 1, 1)[0][k]) for k in a)
    member = init_model(cfg, 0).state_dict()
    assert not any(torch.equal(bend[k], member[k]) for k in a)
    # The curve starts there (not on the segment): its midpoint before any step.
    curve = fit_curve(model, a, b, setting[4][:8], setting[5][:8],
                      TrainConfig(epochs=1, batch_size=8, lr=1e-12, weight_decay=0.0),
                      bend_init="random")
    mid = curve.bend_dicts()[1]
    assert all(torch.allclose(mid[k], bend[k], atol=1e-6) for k in a)


def test_mpf_under_the_preset_trains_as_the_reference_does(setting):
    model, _, a, b, x, y = setting
    seed, epochs = 3, 3  # from epoch 0: lr × [1, 1, 0.5875] (from 1: [1, 0.5875, 0.01])
    p = {**REFERENCE, "epochs": epochs}
    ours = mpf(model, a, b, x, y, seed=seed, **p)
    # The reference's inputs where it draws at random: its middle bend (the layers' init, here
    # ours), its batch order and its t per batch (here ours: the same draws on both sides).
    (middle,) = layer_inits(model, a, seed, 1)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(y) / p["batch_size"])
    ts = [float(torch.rand((), generator=gen)) for _ in range(steps)]
    ref = _reference_curve_midpoint(model, a, b, middle, x, y, epochs=epochs, lr=p["lr"],
                                    batch_size=p["batch_size"], ts=ts,
                                    orders=lambda e: epoch_order(len(y), len(y), seed, e))
    assert set(ours) == set(a)
    moved = max((ours[k] - (a[k] + b[k] + 2 * middle[k]) / 4).abs().max() for k in a)
    assert moved > 0.02  # trained: far from where the bend started
    for k in a:
        assert torch.allclose(ours[k], ref[k], atol=1e-6, rtol=0), k
    # Each of the preset's differences on its own moves the result well past that tolerance.
    for change in ({"schedule": "curve"}, {"weight_decay": 5e-4}, {"bend_init": "segment"}):
        other = mpf(model, a, b, x, y, seed=seed, **{**p, **change})
        assert max((other[k] - ref[k]).abs().max() for k in a) > 1e-4, change


def test_merge_with_the_preset_records_its_values_and_fuses_as_the_library(tmp_path):
    common = dict(dataset="digits", depth=1, width=16, epochs=1, quiet=True, init="different")
    jobs.run("train", out=tmp_path / "t", shift="label-skew:0-4=80,5-9=20", **common)
    pa, pb = tmp_path / "t/a/model.safetensors", tmp_path / "t/b/model.safetensors"
    r = jobs.run("merge", a=pa, b=pb, method="mpf", preset="mpf-reference", out=tmp_path / "m")
    import json
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    recorded = config.get("config", config)
    assert "preset" not in recorded and recorded["curve_lr"] == 0.07  # its values, not its name
    assert recorded["bend_init"] == "random" and recorded["curve_schedule"] == "curve:0"
    assert r.report["training"]["epochs"] == 10
    ft = jobs.run("merge", a=pa, b=pb, method="avg", finetune_epochs=10, preset="mpf-reference",
                  out=tmp_path / "f")
    assert ft.report["training"]["gradient_steps"] == r.report["training"]["gradient_steps"]
    merged = load_checkpoint(tmp_path / "m" / "merged.safetensors").tensors
    from modeconn.checkpoint import params_of
    from modeconn.models import load_model
    (mb, cb), ca = load_model(pb), load_model(pa)[1]
    data = eval_data(DataSpec.from_dict(cb.meta["data"]), "full")
    fused = mpf(mb, params_of(ca), params_of(cb), data.train_x, data.train_y, seed=0, **REFERENCE)
    assert all(torch.equal(merged[k], v) for k, v in fused.items())


# ---------------------------------------------------------------- where the preset goes

def test_the_merge_job_passes_the_preset_to_mpf_and_to_its_fine_tuning():
    c = MergeConfig(a="a", b="b", method="mpf", preset="mpf-reference")
    opts = method_options(c)
    assert (opts.epochs, opts.lr, opts.batch_size, opts.weight_decay, opts.schedule,
            opts.bend_init) == tuple(REFERENCE[k] for k in ("epochs", "lr", "batch_size",
                                                            "weight_decay", "schedule",
                                                            "bend_init"))
    ft = MergeConfig(a="a", b="b", method="avg", finetune_epochs=10, preset="mpf-reference")
    assert ft.sgd(10) == TrainConfig(epochs=10, batch_size=128, lr=0.07, schedule="curve:0",
                                     weight_decay=0.0)
    plain = MergeConfig(a="a", b="b", method="avg", finetune_epochs=5)
    assert plain.sgd(5) == TrainConfig(epochs=5, batch_size=64, lr=0.05, schedule="curve")
    assert not {"preset", "bend_init", "curve_schedule", "curve_weight_decay"} & set(
        plain.to_dict())


def test_continual_trains_mpfs_curve_by_the_preset_and_its_tasks_as_given():
    c = ContinualConfig(methods=("avg", "mpf"), epochs=3, lr=0.02, mpf_preset="mpf-reference")
    assert c.method_options("mpf") == MPFOptions(preset="mpf-reference", seed=0)
    assert (c.epochs, c.lr) == (3, 0.02)  # the tasks' training keeps its settings
    assert ContinualConfig(epochs=3).method_options("mpf") == MPFOptions(
        epochs=3, lr=0.05, batch_size=64)


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("argv,message", [
    (["--method", "avg", "--preset", "mpf-reference"],
     "--preset applies to --method mpf, or to the fine-tuning of --finetune-epochs"),
    (["--method", "ste", "--finetune-epochs", "2", "--preset", "mpf-reference"],
     "--preset sets --epochs, which --method ste also reads"),
    (["--method", "mpf", "--preset", "garipov"],
     "--preset must be one of otfusion, otfusion-readme, mpf-reference"),
    (["--method", "mpf", "--curve-schedule", "curve:2"],
     "--curve-schedule must be one of curve, curve:0"),
    (["--method", "mpf", "--bend-init", "zero"], "--bend-init must be one of segment, random"),
])
def test_bad_preset_and_procedure_options_are_one_line(cli, tmp_path, argv, message):
    rc, _, err = cli("merge", tmp_path / "a.safetensors", tmp_path / "b.safetensors", *argv,
                     "--out", tmp_path / "x")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_options_given_beside_the_preset_win_over_it(cli, tmp_path):
    c = MergeConfig.from_dict({"a": "a", "b": "b", "method": "mpf", "preset": "mpf-reference",
                               "curve_lr": 0.05, "epochs": 20})
    assert (c.curve_lr, c.epochs, c.curve_batch_size, c.bend_init) == (0.05, 20, 128, "random")
    assert MPFOptions(preset="mpf-reference", lr=0.1).lr == 0.1


def test_continual_refuses_the_preset_without_mpf(cli, tmp_path):
    rc, _, err = cli("continual", "--methods", "avg,wm", "--mpf-preset", "mpf-reference",
                     "--out", tmp_path / "c")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--mpf-preset sets MPF's procedure; add mpf to --methods or leave it out" in err


def test_library_refusals_name_the_fix(setting):
    model, _, a, b, x, y = setting
    with pytest.raises(UsageError, match=r"'preset' of MPF must be one of mpf-reference \(or none\), got "
                                         r"'garipov'"):
        MPFOptions(preset="garipov")
    with pytest.raises(UsageError, match="unknown bend init 'zero'; use segment or random"):
        fit_curve(model, a, b, x, y, TrainConfig(epochs=1), bend_init="zero")
    with pytest.raises(UsageError, match=r"bad schedule 'curve:2': .* write curve or curve:0"):
        parse_schedule("curve:2")

    class Scaled(torch.nn.Module):  # a parameter no layer's reset_parameters() draws
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(64, 10)
            self.scale = torch.nn.Parameter(torch.ones(10))

        def forward(self, x):
            return self.inner(x.flatten(1)) * self.scale

    m = Scaled()
    p = {k: v.detach() for k, v in m.state_dict().items()}
    with pytest.raises(UsageError, match=r"no layer draws scale; start the bends on the segment"):
        fit_curve(m, p, p, x, y, TrainConfig(epochs=1), bend_init="random")


# ---------------------------------------------------------------- the other commands

def test_the_curve_command_reaches_each_difference(cli, tmp_path):
    common = dict(dataset="digits", depth=1, width=16, epochs=1, quiet=True, init="different")
    jobs.run("train", out=tmp_path / "t", shift="iid:50,50", **common)
    pa, pb = tmp_path / "t/a/model.safetensors", tmp_path / "t/b/model.safetensors"
    runs = {}
    for name, extra in (("ours", []), ("reference", ["--bend-init", "random", "--schedule",
                                                     "curve:0", "--weight-decay", "0"])):
        rc, _, err = cli("curve", pa, pb, "--epochs", "1", "--batch-size", "128", "--points", "3",
                         "--quiet", *extra, "--out", tmp_path / name)
        assert rc == 0, err
        runs[name] = load_checkpoint(tmp_path / name / "curve.safetensors").tensors
    middle = [k for k in runs["ours"] if k.startswith("bend1/")]
    assert middle and all(not torch.allclose(runs["ours"][k], runs["reference"][k]) for k in middle)


def test_continual_runs_mpf_by_the_preset(tmp_path):
    r = jobs.run("continual", out=tmp_path / "c", tasks="0-4|5-9", epochs=1, width=16, depth=1,
                 methods=["mpf"], mpf_preset="mpf-reference", quiet=True, device="cpu")
    summary = {s["method"]: s for s in r.summary}
    assert set(summary) == {"mpf", "sequential", "joint"}
    assert 0.2 < summary["mpf"]["average_acc"] <= 1

"""Curves, curve ensembles, FGE, loss planes and Hessian trace: known answers and the commands."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.func import functional_call

from modeconn.checkpoint import load_checkpoint, params_of
from modeconn.curves import Curve, CurveTrainer, fit_curve, load_curve, save_curve
from modeconn.data import DataSpec, eval_data
from modeconn.errors import UsageError
from modeconn.models import build_model, model_config
from modeconn.train import TrainConfig, init_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from modeconn.cli import main

    root = tmp_path_factory.mktemp("curves")
    for seed in (0, 1, 2):
        assert main(["train", "--width", "32", "--depth", "1", "--epochs", "2", "--init-seed",
                     str(seed), "--out", str(root / f"m{seed}"), "--quiet"]) == 0
    return root, [root / f"m{s}" / "all" / "model.safetensors" for s in (0, 1, 2)]


def test_fitted_curve_keeps_its_endpoints_exactly(models):
    _, paths = models
    a, b = (load_checkpoint(p) for p in paths[:2])
    model = build_model(a.architecture)
    data = eval_data(DataSpec())
    curve = fit_curve(model, params_of(a), params_of(b), data.train_x, data.train_y,
                      TrainConfig(epochs=1, batch_size=128, schedule="curve", lr=0.05))
    path = curve.path()
    for t, ref in ((0.0, params_of(a)), (1.0, params_of(b))):
        point = path.point(t)
        for k, v in ref.items():
            if v.is_floating_point():
                assert torch.equal(point[k], v), k
    # The middle bend moved off the straight segment.
    mid = path.bends[1]
    seg = {k: 0.5 * (params_of(a)[k] + params_of(b)[k]) for k in mid if mid[k].is_floating_point()}
    assert any(not torch.allclose(mid[k], seg[k]) for k in seg)


def _bernstein(t: float, n: int) -> list[float]:
    return [math.comb(n - 1, k) * t**k * (1 - t) ** (n - 1 - k) for k in range(n)]


@pytest.mark.parametrize("n", [3, 4])
def test_fitted_bezier_curve_is_the_closed_form_of_its_saved_bends(models, tmp_path, n):
    _, paths = models
    a, b = (load_checkpoint(p) for p in paths[:2])
    data = eval_data(DataSpec())
    curve = fit_curve(build_model(a.architecture), params_of(a), params_of(b), data.train_x,
                      data.train_y, TrainConfig(epochs=1, batch_size=128, lr=0.05), "bezier", n)
    file = save_curve(tmp_path / "curve.safetensors", curve.path(), a.architecture)
    raw = load_file(str(file))  # the saved bends, read without modeconn
    bends = [{k[len(f"bend{i}/"):]: v.double() for k, v in raw.items() if k.startswith(f"bend{i}/")}
             for i in range(n)]
    assert set(bends[0]) == set(params_of(a))
    straight = {k: 0.5 * (bends[0][k] + bends[-1][k]) for k in bends[0]}
    assert max(float((bends[1][k] - straight[k]).abs().max()) for k in curve.param_keys) > 1e-4
    _, loaded, _ = load_curve(file)
    fitted = curve.path()
    for t in (0.0, 0.1, 0.37, 0.5, 0.8, 1.0):
        expected = {k: sum(c * w[k] for c, w in zip(_bernstein(t, n), bends)) for k in bends[0]}
        on_curve = curve.unflatten(curve.flat_point(t).detach())
        for k in curve.param_keys:
            for got in (on_curve[k], fitted.point(t)[k], loaded.point(t)[k]):
                torch.testing.assert_close(got.double(), expected[k], rtol=1e-5, atol=1e-6)
            assert torch.equal(loaded.point(t)[k], fitted.point(t)[k])


@pytest.mark.parametrize("kind", ["polychain", "bezier"])
def test_two_bend_curve_is_the_linear_path(kind):
    g = torch.Generator().manual_seed(0)
    model = build_model(model_config("mlp", (1, 8, 8), 10, width=8, depth=1))
    a, b = ({k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
            for _ in range(2))
    curve = Curve(model, a, b, kind, num_bends=2)
    path = curve.path()
    for t in (0.0, 0.2, 0.5, 0.75, 1.0):
        flat = curve.unflatten(curve.flat_point(t))
        for k in a:
            line = (1 - t) * a[k] + t * b[k]
            torch.testing.assert_close(flat[k], line, rtol=0, atol=1e-6)
            torch.testing.assert_close(path.point(t)[k], line, rtol=0, atol=1e-6)
    with pytest.raises(UsageError, match="no middle bend"):
        CurveTrainer(model, curve, torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long),
                     TrainConfig())


def _curve_objective(model, bends, kind, t, x, y, wd):
    """(CE(θ(t)) + ½·wd·‖θ(t)‖², CE(θ(t))) with θ(t) = Σ_k c_k(t)·w_k written out, buffers
    interpolated."""
    n = len(bends)
    c = _bernstein(t, n) if kind == "bezier" else \
        [max(0.0, 1 - abs(t * (n - 1) - k)) for k in range(n)]
    names = dict(model.named_parameters())
    theta = {k: sum(ck * w[k] for ck, w in zip(c, bends)) for k in names}
    buffers = {k: torch.lerp(bends[0][k], bends[-1][k], t) if v.is_floating_point() else v
               for k, v in bends[0].items() if k not in names}
    out = functional_call(model.train(), {**theta, **buffers}, (x,))
    ce = F.cross_entropy(out, y)
    return ce + 0.5 * wd * sum(v.square().sum() for v in theta.values()), ce


@pytest.mark.parametrize("kind,n,t", [("bezier", 3, 0.3), ("bezier", 4, 0.65),
                                      ("polychain", 4, 0.3), ("polychain", 3, 0.8)])
def test_curve_step_is_sgd_on_the_curve_objective(kind, n, t):
    """One CurveTrainer step (in-place buffers, gradient seed scaling) against autograd through
    the curve point written out term by term, in float64, on a BatchNorm MLP."""
    cfg_m = model_config("mlp", (1, 8, 8), 10, width=16, depth=2, norm="bn")
    a, b, *mid = (init_model(cfg_m, s).double().state_dict() for s in range(n))
    model = init_model(cfg_m, 0).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(32) % 10
    lr, wd = 0.1, 0.01
    curve = Curve(model, a, b, kind, n, middle=mid)
    bends = [{k: v.clone().requires_grad_(v.is_floating_point() and k in curve.param_keys)
              for k, v in d.items()} for d in curve.bend_dicts()]
    objective, ce = _curve_objective(copy.deepcopy(model), bends, kind, t, x, y, wd)
    grads = torch.autograd.grad(objective, [w[k] for w in bends[1:-1] for k in curve.param_keys])
    trainer = CurveTrainer(model, curve, x, y, TrainConfig(lr=lr, momentum=0.0, weight_decay=wd))
    loss = trainer.step(torch.arange(32), t=t)
    torch.testing.assert_close(loss, ce.detach(), rtol=1e-12, atol=1e-12)
    after = curve.bend_dicts()
    it = iter(grads)
    for k_bend in range(1, n - 1):
        for k in curve.param_keys:
            expected = bends[k_bend][k].detach() - lr * next(it)
            torch.testing.assert_close(after[k_bend][k], expected, rtol=1e-10, atol=1e-12)
    for k in a:  # the endpoints never move
        assert torch.equal(after[0][k], a[k]) and torch.equal(after[-1][k], b[k])


def test_curve_command_writes_outputs_and_curve_round_trips(models, tmp_path):
    from modeconn.cli import main

    _, paths = models
    out = tmp_path / "curve"
    assert main(["curve", str(paths[0]), str(paths[1]), "--epochs", "2", "--points", "7",
                 "--out", str(out)]) == 0
    rows = (out / "path.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 7 * 2  # curve and linear, train and test, 7 points
    bar = json.loads((out / "barrier.json").read_text())
    assert bar
    _, path, _ = load_curve(out / "curve.safetensors")
    a = params_of(load_checkpoint(paths[0]))
    assert all(torch.equal(path.point(0.0)[k], a[k]) for k in a if a[k].is_floating_point())
    ens = tmp_path / "ens"
    assert main(["curve-ensemble", str(out / "curve.safetensors"), "--out", str(ens)]) == 0
    assert any(ens.iterdir())


def test_plane_sharpness_and_fge_commands(models, tmp_path):
    from modeconn.cli import main

    _, paths = models
    assert main(["landscape", *map(str, paths), "--grid", "3", "--out", str(tmp_path / "ls")]) == 0
    assert any(p.suffix == ".csv" for p in (tmp_path / "ls").iterdir())
    assert main(["sharpness", str(paths[0]), "--probes", "2", "--out", str(tmp_path / "sh")]) == 0
    assert main(["fge", str(paths[0]), "--cycles", "2", "--cycle-epochs", "1",
                 "--out", str(tmp_path / "fge")]) == 0


def test_curve_between_different_architectures_exits_2(models, tmp_path, capsys):
    from modeconn.cli import main

    root, paths = models
    assert main(["train", "--width", "16", "--depth", "1", "--epochs", "1", "--out",
                 str(root / "other"), "--quiet"]) == 0
    rc = main(["curve", str(paths[0]), str(root / "other/all/model.safetensors"), "--out",
               str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("modeconn: error:")
    assert not (tmp_path / "bad").exists()

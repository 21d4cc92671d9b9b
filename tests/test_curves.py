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

from modeconn import jobs
from modeconn.checkpoint import load_checkpoint, params_of
from modeconn.data import DataSpec, eval_data
from modeconn.errors import UsageError
from modeconn.models import build_model, model_config, rebuild
from modeconn.paths.curves import Curve, CurveTrainer, fit_curve, load_curve, save_curve
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


CONV = {"name": "resnet8", "width": 0.25}  # with BatchNorm and a projection shortcut


@pytest.mark.parametrize("kind,n,t,arch,channels_last", [
    ("bezier", 3, 0.3, None, False), ("bezier", 4, 0.65, None, False),
    ("polychain", 4, 0.3, None, False), ("polychain", 3, 0.8, None, False),
    ("bezier", 3, 0.3, CONV, True), ("polychain", 4, 0.65, CONV, True),
    ("bezier", 3, 0.3, CONV, False)])
def test_curve_step_is_sgd_on_the_curve_objective(kind, n, t, arch, channels_last):
    """One CurveTrainer step (in-place buffers, gradient seed scaling) against autograd through
    the curve point written out term by term, in float64, on a BatchNorm MLP, and on a ResNet
    whose kernels the curve keeps in channels-last layout."""
    if arch is None:
        cfg_m = model_config("mlp", (1, 8, 8), 10, width=16, depth=2, norm="bn")
    else:
        cfg_m = model_config(arch["name"], (1, 8, 8), 10, width=arch["width"])
    a, b, *mid = (init_model(cfg_m, s).double().state_dict() for s in range(n))
    model = init_model(cfg_m, 0).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(32) % 10
    lr, wd = 0.1, 0.01
    curve = Curve(model, a, b, kind, n, middle=mid, channels_last=channels_last)
    views = [v for k, v in curve.unflatten(curve.ends[0]).items() if v.dim() == 4]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert all(v.is_contiguous(memory_format=layout) for v in views)
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


@pytest.fixture(scope="module")
def runs(models):
    """A fitted curve between models 0 and 1, FGE snapshots from model 0 and a narrower model
    (the curve and the FGE run through their jobs, as from Python)."""
    from modeconn.cli import main

    root, paths = models
    curve = jobs.run("curve", a=str(paths[0]), b=str(paths[1]), epochs=2, points=7, quiet=True,
                     out=root / "curve")
    fge = jobs.run("fge", checkpoint=str(paths[0]), cycles=2, cycle_epochs=1, quiet=True,
                   out=root / "fge")
    assert main(["train", "--width", "16", "--depth", "1", "--epochs", "1", "--out",
                 str(root / "other"), "--quiet"]) == 0
    return {"a": paths[0], "b": paths[1], "c": paths[2], "curve": root / "curve",
            "fge": root / "fge", "other": root / "other" / "all" / "model.safetensors",
            "curve_result": curve, "fge_result": fge}


def test_curve_job_writes_outputs_and_curve_round_trips(runs):
    out, result = runs["curve"], runs["curve_result"]
    assert result.out == out and result.exit_code == 0 and result.splits == ["train", "test"]
    rows = (out / "path.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 7 * 2  # curve and linear, train and test, 7 points
    bar = json.loads((out / "barrier.json").read_text())
    assert set(bar) >= {"curve", "linear"} and set(bar["curve"]) >= {"train", "test"}
    barrier = result.summary["curve"]["test"]["loss"]["linear"]["barrier"]
    assert bar["curve"]["test"]["loss"]["linear"]["barrier"] == pytest.approx(barrier)
    assert [line.split(":")[0] for line in result.lines()] == ["train", "test", f"wrote {out}"]
    config = json.loads((out / "config.json").read_text())
    assert config["job"] == "curve" and config["config"]["epochs"] == 2
    assert config["config"]["schedule"] == "curve" and config["data"]["on"] == "full"
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 2
    assert (out / "env.json").exists() and (out / "path.png").exists()
    _, path, _ = load_curve(out / "curve.safetensors")
    a = params_of(load_checkpoint(runs["a"]))
    assert all(torch.equal(path.point(0.0)[k], a[k]) for k in a if a[k].is_floating_point())


def test_fge_job_writes_a_snapshot_per_cycle_and_their_ensemble(runs):
    out, result = runs["fge"], runs["fge_result"]
    assert result.members == [str(out / f"snapshot_{i}.safetensors") for i in (1, 2)]
    saved = json.loads((out / "ensemble.json").read_text())
    assert saved["fge"] == pytest.approx(result.metrics) and saved["cycles"] == 2
    assert result.lines()[0].startswith("fge          K=2   acc ")
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["cycle_epochs"] == 1 and "epochs" not in config and "schedule" not in config


def test_curve_and_fge_commands_print_what_the_jobs_return(runs, cli, tmp_path):
    rc, out, err = cli("curve", runs["a"], runs["b"], "--epochs", "2", "--points", "7",
                       "--quiet", "--out", tmp_path / "curve")
    assert rc == 0, err
    assert out.splitlines() == runs["curve_result"].lines()[:-1] + [f"wrote {tmp_path / 'curve'}"]
    rc, out, err = cli("fge", runs["a"], "--cycles", "2", "--cycle-epochs", "1", "--quiet",
                       "--out", tmp_path / "fge")
    assert rc == 0, err
    assert out.splitlines() == [runs["fge_result"].lines()[0], f"wrote {tmp_path / 'fge'}"]


def test_curve_point_is_a_model_checkpoint_of_the_curve_at_t(runs, tmp_path):
    curve = runs["curve"] / "curve.safetensors"
    _, path, _ = load_curve(curve)
    for t in (0.0, 0.3):
        result = jobs.run("curve-point", curve=str(curve), t=t, out=tmp_path / f"p{t}.safetensors")
        assert result.out == tmp_path / f"p{t}.safetensors" and result.t == t
        assert result.lines()[0].startswith(f"t={t:g}: train loss ")
        assert set(result.metrics) == {"train", "test"}
        point = load_checkpoint(tmp_path / f"p{t}.safetensors", kind="model")
        assert point.meta["curve_point"]["t"] == t
        for k, v in path.point(t).items():  # the MLP has no BatchNorm: the point as it is
            assert torch.equal(point.tensors[k], v), k
    a = load_checkpoint(runs["a"]).tensors
    assert all(torch.equal(load_checkpoint(tmp_path / "p0.0.safetensors").tensors[k], v)
               for k, v in a.items())
    with pytest.raises(UsageError, match="must end in .safetensors"):
        jobs.run("curve-point", curve=str(curve), out=tmp_path / "p.pt")


def test_curve_point_command(runs, cli, tmp_path):
    curve = runs["curve"] / "curve.safetensors"
    rc, out, err = cli("curve-point", curve, "--t", "0.3", "--out", tmp_path / "p.safetensors")
    assert rc == 0 and out.startswith("t=0.3: train loss ") and out.count("\n") == 2, err
    # it is a model like any other: interpolate, sharpness, align take it
    rc, _, err = cli("sharpness", tmp_path / "p.safetensors", "--probes", "2")
    assert rc == 0, err
    rc, err_out, err = cli("curve-point", curve, "--t", "1.5", "--out", tmp_path / "bad.safetensors")
    assert rc == 2 and not (tmp_path / "bad.safetensors").exists()
    assert err.strip() == "modeconn: error: --t must be a finite number ≥ 0 and ≤ 1, got 1.5"
    rc, _, err = cli("curve-point", curve, "--out", tmp_path / "p.safetensors")
    assert rc == 2 and "already exists" in err
    rc, _, err = cli("curve-point", curve, "--out", tmp_path / "p.safetensors", "--overwrite")
    assert rc == 0, err


def test_curve_ensemble_table_has_independent_lmc_curve_and_fge_rows(runs, tmp_path):
    from modeconn.io import read_csv

    result = jobs.run("curve-ensemble", curve=str(runs["curve"] / "curve.safetensors"), k=3,
                      fge=str(runs["fge"]), out=tmp_path / "ens")
    assert list(result.table) == ["independent", "lmc", "curve", "fge"]
    assert [line.split()[0] for line in result.lines()[:4]] == list(result.table)
    table = {r["ensemble"]: r for r in read_csv(tmp_path / "ens" / "comparison.csv")}
    assert list(table) == ["independent", "lmc", "curve", "fge"]
    assert [int(table[k]["size"]) for k in table] == [2, 3, 3, 2]
    saved = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert saved["fge_members"] == [str(runs["fge"] / f"snapshot_{i}.safetensors") for i in (1, 2)]
    assert json.loads((tmp_path / "ens" / "config.json").read_text())["config"]["k"] == 3
    # The fge row is the snapshots' ensemble, scored as `modeconn fge` scores it ...
    own = json.loads((runs["fge"] / "ensemble.json").read_text())["fge"]
    assert saved["fge"]["acc"] == own["acc"]
    assert saved["fge"]["nll"] == pytest.approx(own["nll"], rel=1e-9)
    # ... which is the mean of the members' softmax outputs.
    data = eval_data(DataSpec())
    probs = []
    for name in saved["fge_members"]:
        net = rebuild(load_checkpoint(name)).eval()
        with torch.no_grad():
            probs.append(net(data.test_x).softmax(-1))
    acc = float((torch.stack(probs).mean(0).argmax(-1) == data.test_y).double().mean())
    assert float(table["fge"]["acc"]) == pytest.approx(acc, abs=1e-12)


def test_curve_ensemble_command(runs, cli, tmp_path):
    rc, out, err = cli("curve-ensemble", runs["curve"] / "curve.safetensors", "--k", "3",
                       "--out", tmp_path / "ens")
    assert rc == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["independent", "lmc", "curve",
                                                              "wrote"]


def test_landscape_job_on_three_models_and_on_a_curve(runs, tmp_path):
    result = jobs.run("landscape", models=[str(runs[k]) for k in "abc"], grid=3,
                      range=[-0.5, 1.5], device="cpu", out=tmp_path / "ls")
    plane_json = json.loads((tmp_path / "ls" / "plane.json").read_text())
    assert (result.dx, result.dy, result.grid) == (plane_json["dx"], plane_json["dy"], 3)
    assert plane_json["range"] == [-0.5, 1.5] and set(plane_json["paths"]) == {"linear path"}
    assert len((tmp_path / "ls" / "plane.csv").read_text().splitlines()) == 1 + 3 * 3 * 2
    assert {p.name for p in (tmp_path / "ls").glob("plane_*.png")} == {"plane_train.png",
                                                                       "plane_test.png"}
    config = json.loads((tmp_path / "ls" / "config.json").read_text())
    assert config["job"] == "landscape" and config["config"]["range"] == [-0.5, 1.5]
    assert (tmp_path / "ls" / "env.json").exists()
    jobs.run("landscape", curve=str(runs["curve"] / "curve.safetensors"), grid=3,
             splits=["test"], device="cpu", out=tmp_path / "lc")
    plane_json = json.loads((tmp_path / "lc" / "plane.json").read_text())
    assert set(plane_json["paths"]) == {"linear path", "bezier curve"}
    assert plane_json["points"]["A"] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert len((tmp_path / "lc" / "plane.csv").read_text().splitlines()) == 1 + 3 * 3


def test_sharpness_job_returns_the_estimate_and_writes_it_when_asked(runs, tmp_path):
    result = jobs.run("sharpness", checkpoint=str(runs["a"]), probes=2, device="cpu",
                      out=tmp_path / "sh.json")
    saved = json.loads((tmp_path / "sh.json").read_text())
    assert saved == {"checkpoint": str(runs["a"]), "split": "train", **result.estimate}
    assert saved["samples"] == 2 * 3 and result.out == tmp_path / "sh.json"
    again = jobs.run("sharpness", checkpoint=str(runs["a"]), probes=2, device="cpu")
    assert again.out is None and again.estimate == result.estimate  # seeded probes


def test_landscape_and_sharpness_commands(runs, cli, tmp_path):
    rc, out, err = cli("landscape", runs["a"], runs["b"], runs["c"], "--grid", "3",
                       "--range", "-0.5,1.5", "--out", tmp_path / "ls")  # a negative LOW as is
    assert rc == 0, err
    pl = json.loads((tmp_path / "ls" / "plane.json").read_text())
    assert pl["range"] == [-0.5, 1.5]
    assert out.splitlines() == [f"plane |u| {pl['dx']:.3f}, |v_perp| {pl['dy']:.3f}; 3x3 points",
                                f"wrote {tmp_path / 'ls'}"]
    rc, out, err = cli("sharpness", runs["a"], "--probes", "2", "--out", tmp_path / "sh.json")
    assert rc == 0, err
    r = json.loads((tmp_path / "sh.json").read_text())
    assert out.splitlines() == [
        f"Hessian trace {r['trace']:.4f} ± {r['trace_se']:.4f} (SE), weighted "
        f"{r['weighted_trace']:.4f} ± {r['weighted_trace_se']:.4f}; 2 probes × 3 batches",
        f"wrote {tmp_path / 'sh.json'}"]
    rc, out, err = cli("sharpness", runs["a"], "--probes", "2")
    assert rc == 0 and len(out.splitlines()) == 1, err


def test_fge_command_saves_one_snapshot_per_cycle(runs):
    snaps = sorted(p.name for p in runs["fge"].glob("snapshot_*.safetensors"))
    assert snaps == ["snapshot_1.safetensors", "snapshot_2.safetensors"]


BAD_INPUT = {
    "bezier with 2 bends": (["curve", "a", "b", "--bends", "2"],
                            "--bends must be at least 3 for a bezier curve, got 2"),
    "polychain with 2 bends": (["curve", "a", "b", "--kind", "polychain", "--bends", "2"],
                               "--bends must be at least 3 for a polychain curve, got 2"),
    "curve across architectures": (["curve", "a", "other"], "different architecture"),
    "curve ensemble of one": (["curve-ensemble", "curve", "--k", "1"], "--k must be an integer ≥ 2, got 1"),
    "fge of another architecture": (["curve-ensemble", "curve", "--fge", "other_fge"],
                                    "different architecture"),
    "fge folder without snapshots": (["curve-ensemble", "curve", "--fge", "empty"],
                                     "no snapshot_N"),
    "fge folder missing": (["curve-ensemble", "curve", "--fge", "missing"], "not found"),
    "fge without cycles": (["fge", "a", "--cycles", "0"], "--cycles must be an integer ≥ 1, got 0"),
    "landscape of two models": (["landscape", "a", "b"], "three checkpoints"),
    "landscape of models and a curve": (["landscape", "a", "--curve", "curve"], "not both"),
    "range of one value": (["landscape", "a", "b", "c", "--range", "0.5"],
                           "--range must be two numbers LOW,HIGH with LOW < HIGH, got 0.5"),
    "range reversed": (["landscape", "a", "b", "c", "--range=1,0"],
                       "--range must be two numbers LOW,HIGH with LOW < HIGH, got 1.0,0.0"),
    "range not numbers": (["landscape", "a", "b", "c", "--range", "x,y"],
                          "--range must be a list of finite numbers, got x,y"),
    "grid of one point": (["landscape", "a", "b", "c", "--grid", "1"],
                          "--grid must be an integer ≥ 2, got 1"),
    "sharpness without probes": (["sharpness", "a", "--probes", "0"],
                                 "--probes must be an integer ≥ 1, got 0"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_curve_and_landscape_input_is_one_line_and_writes_nothing(runs, cli, tmp_path, case):
    import shutil

    argv, message = BAD_INPUT[case]
    shutil.copy(runs["other"], tmp_path / "snapshot_1.safetensors")
    (tmp_path / "empty").mkdir()
    names = {"a": runs["a"], "b": runs["b"], "c": runs["c"], "other": runs["other"],
             "curve": runs["curve"] / "curve.safetensors", "other_fge": tmp_path,
             "empty": tmp_path / "empty", "missing": tmp_path / "missing"}
    out = tmp_path / "out"
    rc, _, err = cli(argv[0], *[names.get(a, a) for a in argv[1:]], "--out", out)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("modeconn: error:") and message in err, err
    assert not out.exists()


@pytest.mark.slow
def test_curve_ensemble_is_at_least_as_accurate_as_its_endpoints(cli, tmp_path):
    """Two digits MLPs from different seeds: the fitted curve removes most of the linear barrier,
    its points are better models than the linear path's, and its K=5 ensemble is at least as
    accurate as the endpoints on average."""
    from modeconn.io import read_csv

    for s in (0, 1):
        rc, _, err = cli("train", "--width", "128", "--depth", "2", "--epochs", "10", "--init-seed",
                         s, "--out", tmp_path / f"m{s}", "--quiet", "--device", "cpu")
        assert rc == 0, err
    a, b = (tmp_path / f"m{s}" / "all" / "model.safetensors" for s in (0, 1))
    # 15 curve epochs: with 10 (five at the full rate, as in the reference schedule) the ensemble
    # lands within one test image of the endpoints, either side.
    rc, _, err = cli("curve", a, b, "--epochs", "15", "--points", "11", "--out", tmp_path / "curve",
                     "--quiet", "--device", "cpu")
    assert rc == 0, err
    bar = json.loads((tmp_path / "curve" / "barrier.json").read_text())
    linear, curve = (bar[p]["train"]["loss"]["linear"]["barrier"] for p in ("linear", "curve"))
    assert linear > 0.2 and curve < 0.3 * linear
    rc, _, err = cli("curve-ensemble", tmp_path / "curve" / "curve.safetensors", "--k", "5",
                     "--out", tmp_path / "ens", "--device", "cpu")
    assert rc == 0, err
    table = {r["ensemble"]: {k: float(v) for k, v in r.items() if k != "ensemble"}
             for r in read_csv(tmp_path / "ens" / "comparison.csv")}
    endpoints = table["independent"]["member_acc"]  # the mean accuracy of the two endpoints
    assert table["curve"]["acc"] >= endpoints
    assert table["curve"]["member_nll"] < table["lmc"]["member_nll"]
    assert table["curve"]["nll"] < table["lmc"]["nll"]

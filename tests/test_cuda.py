"""The accelerator paths agree with the CPU: skipped without a CUDA device (CI has none).

Run on a GPU machine with `pytest -q tests/test_cuda.py`. MODECONN_TEST_ACCEL=cpu runs the same
comparisons with the CPU standing in for the accelerator (it checks the tests, not the device).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from modeconn.align import Permutation, WeightMatcher, auto_spec
from modeconn.data import DataSpec, eval_data
from modeconn.evaluate import Evaluator
from modeconn.models import model_config
from modeconn.paths import linear_path
from modeconn.paths.curves import fit_curve
from modeconn.paths.landscape import hessian_trace
from modeconn.train import TrainConfig, init_model

ACCEL = os.environ.get("MODECONN_TEST_ACCEL", "cuda")
pytestmark = pytest.mark.skipif(ACCEL == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA device")
MODELS = [("mlp", {"widths": [64, 64], "bn": True}), ("resnet8", {"width": 0.5})]


def _to(point: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in point.items()}


@pytest.fixture(scope="module")
def digits():
    return eval_data(DataSpec("digits"), "full")


@pytest.mark.parametrize("name, opts", MODELS, ids=[m[0] for m in MODELS])
def test_evaluator_with_bn_reestimation_agrees_with_cpu(digits, name, opts):
    cfg = model_config(name, digits.train_x.shape[1:], 10, **opts)
    model = init_model(cfg, 0)
    a, b = model.state_dict(), init_model(cfg, 1).state_dict()
    points = list(linear_path(a, b).points([0.0, 0.3, 1.0]))
    results = {}
    for device in ("cpu", ACCEL):
        data = digits.to(device)
        splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
        ev = Evaluator(model.to(device), splits, bn_data=data.train_x)
        results[device] = ev.evaluate([_to(p, device) for p in points])
    for got, want in zip(results[ACCEL], results["cpu"], strict=True):
        for split in want:
            assert got[split]["loss"] == pytest.approx(want[split]["loss"], rel=1e-3)
            assert abs(got[split]["acc"] - want[split]["acc"]) <= 2 / len(digits.test_y)


def test_weight_matching_recovers_a_permutation_on_the_device():
    cfg = model_config("resnet8", (3, 16, 16), 10, width=0.5)
    model = init_model(cfg, 0)
    spec = auto_spec(model, torch.randn(2, 3, 16, 16))
    state = _to(model.state_dict(), ACCEL)
    permuted = Permutation.random(spec, torch.Generator().manual_seed(0)).apply(state)
    found = WeightMatcher(spec)(state, permuted).apply(permuted)
    assert all(torch.equal(found[k], state[k]) for k in state)


def test_curve_fit_on_the_device_keeps_its_endpoints(digits):
    cfg = model_config("mlp", digits.train_x.shape[1:], 10, widths=[32])
    model = init_model(cfg, 0).to(ACCEL)
    a, b = _to(model.state_dict(), ACCEL), _to(init_model(cfg, 1).state_dict(), ACCEL)
    data = digits.to(ACCEL)
    curve = fit_curve(model, a, b, data.train_x, data.train_y,
                      TrainConfig(epochs=1, batch_size=64, schedule="curve"))
    path = curve.path()
    assert all(torch.equal(path.point(0.0)[k], a[k]) for k in a)
    assert all(torch.equal(path.point(1.0)[k], b[k]) for k in b)
    assert all(v.device.type == torch.device(ACCEL).type for v in path.bends[1].values())


def test_hessian_trace_agrees_with_cpu(digits):
    cfg = model_config("mlp", digits.train_x.shape[1:], 10, widths=[32])
    model = init_model(cfg, 0)
    params = model.state_dict()
    res = {d: hessian_trace(model.to(d), _to(params, d), digits.train_x.to(d),
                            digits.train_y.to(d), probes=3, max_batches=2)
           for d in ("cpu", ACCEL)}
    assert res[ACCEL]["trace"] == pytest.approx(res["cpu"]["trace"], rel=1e-3)


def test_commands_run_on_the_device(cli, tmp_path):
    dev = ["--device", ACCEL]
    for seed in (0, 1):
        rc, _, err = cli("train", "--model", "resnet8", "--width", "0.25", "--epochs", "1",
                         "--init-seed", seed, "--quiet", "--out", tmp_path / f"m{seed}", *dev)
        assert rc == 0, err
    a, b = (tmp_path / f"m{s}" / "all" / "model.safetensors" for s in (0, 1))
    runs = [("curve", a, b, "--epochs", "1", "--points", "5", "--quiet"),
            ("landscape", "--curve", tmp_path / "curve" / "curve.safetensors", "--grid", "3"),
            ("align", a, b, "--method", "ste", "--epochs", "1", "--points", "3"),
            ("align", a, b, "--method", "am", "--points", "3"),
            ("merge-many", a, b, "--method", "ste-mm", "--epochs", "1", "--points", "3",
             "--hessian-probes", "2")]
    for i, argv in enumerate(runs):
        out = tmp_path / (argv[0] if argv[0] != "align" else f"align{i}")
        rc, _, err = cli(*argv, "--out", out, *dev)
        assert rc == 0, f"{argv[0]}: {err}"
    merged = json.loads((tmp_path / "merge-many" / "merge.json").read_text())
    assert merged["normalisation"] == "bn-reset" and merged["merged"]["test"]["acc"] > 0


def test_multilabel_evaluation_agrees_with_cpu():
    from modeconn.task import MULTILABEL

    data = eval_data(DataSpec("synthetic:task=multilabel,n=400,test=200,classes=5,shape=3x8x8"))
    cfg = model_config("vgglike", (3, 8, 8), 5, width=0.125)
    model = init_model(cfg, 0)
    points = list(linear_path(model.state_dict(), init_model(cfg, 1).state_dict())
                  .points([0.0, 0.5, 1.0]))
    results = {}
    for device in ("cpu", ACCEL):
        d = data.to(device)
        ev = Evaluator(model.to(device), {"test": (d.test_x, d.test_y)}, bn_data=d.train_x,
                       task=MULTILABEL)
        results[device] = ev.evaluate([_to(p, device) for p in points])
    for got, want in zip(results[ACCEL], results["cpu"], strict=True):
        for k in ("loss", "map"):
            assert got["test"][k] == pytest.approx(want["test"][k], rel=1e-3)
        assert abs(got["test"]["f1"] - want["test"]["f1"]) <= 0.02

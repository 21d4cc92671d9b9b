"""Curves, curve ensembles, FGE, loss planes and Hessian trace: known answers and the commands."""

from __future__ import annotations

import json

import pytest
import torch

from modeconn.checkpoint import load_checkpoint, params_of
from modeconn.curves import fit_curve, load_curve
from modeconn.data import DataSpec, eval_data
from modeconn.models import build_model
from modeconn.train import TrainConfig


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

"""Performance choices measured per machine (`modeconn.tuning`): stored and reused, skippable,
and — what makes measuring them safe — none of them changes a result."""

from __future__ import annotations

import json

import pytest
import torch

from modeconn import tuning
from modeconn.cli import main
from modeconn.evaluate import Evaluator
from modeconn.models import build_model, model_config
from modeconn.paths import grid, linear_path
from modeconn.train import Stepper, TrainConfig, epoch_order, make_optimizer


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("MODECONN_TUNING_DIR", str(tmp_path))
    monkeypatch.delenv("MODECONN_TUNING", raising=False)
    tuning._SESSION.clear()
    tuning._stored.cache_clear()
    yield tmp_path
    tuning._SESSION.clear()
    tuning._stored.cache_clear()


def test_a_choice_is_measured_once_stored_and_reused(fresh, monkeypatch):
    calls = []
    real = tuning._PROBES["gather"]
    monkeypatch.setitem(tuning._PROBES, "gather", lambda: calls.append(1) or real())
    first = tuning.choice("gather")
    assert first in ("index_select", "index") and calls == [1]
    data = json.loads(next(fresh.glob("*.json")).read_text())
    assert data["machine"] == tuning.machine() and data["choices"]["gather"] == first
    tuning._SESSION.clear()  # a new process: read from the file, not measured again
    assert tuning.choice("gather") == first and calls == [1]


def test_defaults_skip_every_probe_and_a_broken_file_is_measured_again(fresh, monkeypatch):
    monkeypatch.setenv("MODECONN_TUNING", "defaults")
    monkeypatch.setitem(tuning._PROBES, "gather", lambda: pytest.fail("probed"))
    assert tuning.choice("gather") == tuning.DEFAULTS["gather"]
    monkeypatch.delenv("MODECONN_TUNING")
    (fresh / "x.json").write_text("{not json")
    monkeypatch.setattr(tuning, "_path", lambda: fresh / "x.json")
    monkeypatch.setitem(tuning._PROBES, "gather", lambda: ("index", {}))
    assert tuning.choice("gather") == "index"
    assert json.loads((fresh / "x.json").read_text())["choices"]["gather"] == "index"


def test_calibrate_prints_every_choice(fresh, capsys):
    assert main(["calibrate"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in tuning.DEFAULTS) and "machine:" in out


def test_the_engine_gives_the_same_numbers_in_any_chunk_of_points():
    torch.manual_seed(0)
    cfg = model_config("mlp", (1, 8, 8), 10, widths=[64, 64], bn=True)
    model = build_model(cfg)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = build_model(cfg).state_dict()
    x, y = torch.rand(300, 1, 8, 8), torch.randint(0, 10, (300,))
    pts = list(linear_path(a, b).points(grid(7)))
    runs = []
    for per_chunk in (1, 3, 7):
        ev = Evaluator(model, {"test": (x, y)}, bn_data=x, batch_size=64, method="vmap")
        ev.points_per_chunk = per_chunk
        runs.append(ev.evaluate(pts))
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("name, opts", [("mlp", {"widths": [32]}), ("resnet8", {"width": 0.25})])
def test_either_way_of_gathering_trains_bit_identically(monkeypatch, name, opts):
    # A convolutional model trains channels-last where that is safe: indexing keeps the
    # inputs' layout, index_select does not, and the steps must still agree.
    cfg = model_config(name, (3, 8, 8), 10, **opts)
    x, y = torch.rand(128, 3, 8, 8), torch.randint(0, 10, (128,))
    results = []
    for gather in ("index_select", "index"):
        monkeypatch.setitem(tuning._SESSION, "gather", gather)
        torch.manual_seed(0)
        model = build_model(cfg)
        opt = make_optimizer(model.parameters(), TrainConfig(lr=0.1, momentum=0.9))
        stepper = Stepper(model, opt, x, y, 16, drop_single=True)
        stepper.driver.run(2, lambda e: epoch_order(128, 128, 0, e), lambda e, b: 0.1,
                           quiet=True)
        results.append(model.state_dict())
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


@pytest.mark.parametrize("name", list(tuning._PROBES))
def test_a_probe_leaves_the_global_random_stream_as_it_was(fresh, name):
    """The first run on a machine measures; its dropout draws must be those of every later run,
    which reads the choice from the file (issue 22: the first run trained other models)."""
    torch.manual_seed(5)
    tuning.choice(name)  # measured now: nothing stored yet
    after_probe = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(4), after_probe)

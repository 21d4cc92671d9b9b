"""The evaluation engine: vmap and loop agree, points evaluate like loaded models, BatchNorm
re-estimation matches torch.optim.swa_utils.update_bn, chunking, probabilities, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from modeconn.errors import UsageError
from modeconn.evaluate import Evaluator, evaluate, resolve_bn_reset
from modeconn.models import build_model, model_config

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")

SHAPE = (1, 8, 8)
BATCH = 64


@pytest.fixture(scope="module")
def data():
    """Random 8×8 'images' with labels; sizes not multiples of the batch (last batch shorter)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, *SHAPE, generator=g)
    y = torch.randint(0, 10, (200,), generator=g)
    xt = torch.randn(90, *SHAPE, generator=g)
    yt = torch.randint(0, 10, (90,), generator=g)
    return {"train": (x, y), "test": (xt, yt)}


MODELS = {
    "mlp": ("mlp", {"width": 16, "depth": 2}),
    "mlp-bn": ("mlp", {"width": 16, "depth": 2, "norm": "bn"}),
    "resnet8": ("resnet8", {"width": 0.25}),
    "convnet-dropout": ("convnet", {"width": 0.25, "dropout": 0.5}),
}


def _model(kind, seed=0):
    name, kw = MODELS[kind]
    torch.manual_seed(seed)
    return build_model(model_config(name, SHAPE, 10, **kw))


def _points(kind, n=3, perturb_stats=True):
    """Parameter dicts of n differently initialised models, with running statistics scrambled
    (so that re-estimation, when on, visibly replaces them)."""
    pts = []
    for s in range(n):
        sd = {k: v.clone() for k, v in _model(kind, seed=s).state_dict().items()}
        if perturb_stats:
            g = torch.Generator().manual_seed(100 + s)
            for k in sd:
                if k.endswith("running_mean"):
                    sd[k] += torch.randn(sd[k].shape, generator=g)
                elif k.endswith("running_var"):
                    sd[k] = sd[k] * 3 + torch.rand(sd[k].shape, generator=g)
                elif k.endswith("num_batches_tracked"):
                    sd[k] = torch.tensor(17 + s)
        pts.append(sd)
    return pts


def _evaluator(model, data, **kw):
    kw.setdefault("batch_size", BATCH)
    return Evaluator(model, data, bn_data=data["train"][0], **kw)


def _assert_results_close(r1, r2, tol=1e-5):
    assert len(r1) == len(r2)
    for p1, p2 in zip(r1, r2, strict=True):
        assert p1.keys() == p2.keys()
        for split in p1:
            assert p1[split]["loss"] == pytest.approx(p2[split]["loss"], abs=tol, rel=tol)
            assert p1[split]["acc"] == pytest.approx(p2[split]["acc"], abs=1e-12)


def _with(model, point):
    m = copy.deepcopy(model)
    m.load_state_dict(point)
    return m


def _reference_bn(model, point, x, batch_size):
    """The reference: deepcopy, load, update_bn over a DataLoader of the same batches."""
    m = _with(model, point)
    update_bn(DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=False), m)
    return m.eval()


# ---------------------------------------------------------------- vmap vs loop


@pytest.mark.parametrize("kind", list(MODELS))
def test_vmap_and_loop_agree(kind, data):
    model = _model(kind)
    pts = _points(kind)
    rv = _evaluator(model, data, method="vmap").evaluate(pts)
    rl = _evaluator(model, data, method="loop").evaluate(pts)
    _assert_results_close(rv, rl)
    # The points really differ: the engine did not evaluate one point three times.
    assert len({r["test"]["loss"] for r in rv}) == 3


def test_dropout_is_off_in_evaluation(data):
    model = _model("convnet-dropout").train()  # handed over in train mode on purpose
    pts = _points("convnet-dropout", n=2)
    for method in ("vmap", "loop"):
        ev = _evaluator(model, data, method=method)
        first, second = ev.evaluate(pts), ev.evaluate(pts)
        assert first == second  # deterministic: no dropout noise
        for p, r in zip(pts, first, strict=True):
            for split, (x, y) in data.items():
                loss, acc = evaluate(_with(model, p), x, y, BATCH)
                assert r[split]["loss"] == pytest.approx(loss, rel=1e-5)
                assert r[split]["acc"] == acc


# ---------------------------------------------------------------- points are models


@pytest.mark.parametrize("kind", ["mlp", "mlp-bn", "resnet8"])
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_point_evaluates_like_the_loaded_model_without_bn_reset(kind, method, data):
    model = _model(kind)
    pts = _points(kind)
    ev = _evaluator(model, data, bn_reset="off", method=method)
    assert ev.bn_reset is False
    for p, r in zip(pts, ev.evaluate(pts), strict=True):
        m = _with(model, p)
        for split, (x, y) in data.items():
            loss, acc = evaluate(m, x, y, BATCH)
            assert r[split]["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
            assert r[split]["acc"] == acc


# ---------------------------------------------------------------- BatchNorm re-estimation


@pytest.mark.parametrize("kind", ["mlp-bn", "resnet8"])
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_bn_reestimated_statistics_match_update_bn(kind, method, data):
    model = _model(kind)
    x = data["train"][0]
    ev = _evaluator(model, data, method=method, batch_size=BATCH)
    assert ev.bn_reset is True and ev.batch_size == BATCH
    for p in _points(kind, n=2):
        got = ev.bn_reestimated(p)
        ref = _reference_bn(model, p, x, BATCH).state_dict()
        assert got.keys() == ref.keys()
        n_stats = 0
        for k, v in ref.items():
            if k.endswith(("running_mean", "running_var")):
                torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-5, msg=k)
                # ... and the scrambled statistics of the point were really replaced.
                assert not torch.allclose(p[k], v, atol=1e-3), k
                n_stats += 1
            elif k.endswith("num_batches_tracked"):
                assert int(got[k]) == int(v) == 4  # ceil(200 / 64) batches
            else:
                assert torch.equal(got[k], p[k]), k  # parameters untouched
        assert n_stats >= 2


@pytest.mark.parametrize("kind", ["mlp-bn", "resnet8"])
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_bn_reset_losses_match_update_bn_for_several_points(kind, method, data):
    model = _model(kind)
    pts = _points(kind, n=3)
    results = _evaluator(model, data, method=method).evaluate(pts)
    for p, r in zip(pts, results, strict=True):
        ref = _reference_bn(model, p, data["train"][0], BATCH)
        for split, (x, y) in data.items():
            loss, acc = evaluate(ref, x, y, BATCH)
            assert r[split]["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6), split
            assert r[split]["acc"] == acc


def test_bn_reestimation_keeps_dropout_off():
    """A model with BatchNorm and dropout: only BatchNorm is put in train mode for the pass."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.BatchNorm1d(32),
                          nn.ReLU(), nn.Linear(32, 10))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(150, 64, generator=g), torch.randint(0, 10, (150,), generator=g)
    # Reference: dropout in eval mode, BatchNorm alone in train mode with momentum=None.
    ref = copy.deepcopy(model).eval()
    bn = ref[3]
    bn.reset_running_stats()
    bn.momentum = None
    bn.train()
    with torch.no_grad():
        for i in range(0, 150, 50):
            ref(x[i:i + 50])
    ref.eval()
    for method in ("vmap", "loop"):
        ev = Evaluator(model, {"train": (x, y)}, bn_data=x, batch_size=50, method=method)
        got = ev.bn_reestimated(model.state_dict())
        torch.testing.assert_close(got["3.running_mean"], bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["3.running_var"], bn.running_var, rtol=1e-5, atol=1e-6)
        loss, acc = evaluate(ref, x, y, 50)
        r = ev.evaluate([model.state_dict()])[0]["train"]
        assert r["loss"] == pytest.approx(loss, rel=1e-5) and r["acc"] == acc


@pytest.mark.parametrize("kind, has_bn", [("mlp", False), ("mlp-bn", True), ("resnet8", True),
                                          ("convnet-dropout", False)])
def test_bn_reset_auto_is_on_iff_the_model_has_batchnorm(kind, has_bn, data):
    model = _model(kind)
    assert _evaluator(model, data).bn_reset is has_bn
    assert _evaluator(model, data, bn_reset="auto").bn_reset is has_bn
    assert _evaluator(model, data, bn_reset="on").bn_reset is has_bn  # nothing to re-estimate
    assert _evaluator(model, data, bn_reset="off").bn_reset is False
    assert resolve_bn_reset(model, True) is has_bn
    assert resolve_bn_reset(model, False) is False


def test_bn_reset_auto_changes_results_and_off_keeps_the_point_statistics(data):
    model = _model("mlp-bn")
    pts = _points("mlp-bn", n=1)
    on = _evaluator(model, data).evaluate(pts)[0]["test"]["loss"]
    off = _evaluator(model, data, bn_reset="off").evaluate(pts)[0]["test"]["loss"]
    assert on != pytest.approx(off, rel=1e-3)


def test_bn_reset_errors(data):
    model = _model("mlp-bn")
    with pytest.raises(UsageError, match="bn_reset must be one of"):
        Evaluator(model, data, bn_data=data["train"][0], bn_reset="sometimes")
    with pytest.raises(UsageError, match="bn_data"):
        Evaluator(model, data)  # auto with BatchNorm needs the training inputs
    Evaluator(model, data, bn_reset="off")  # ... but not when re-estimation is off
    with pytest.raises(UsageError, match="method"):
        Evaluator(model, data, bn_data=data["train"][0], method="jit")


# ---------------------------------------------------------------- the caller's model


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_the_original_model_is_not_modified(method, data):
    model = _model("resnet8").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    ev = _evaluator(model, data, method=method)
    ev.evaluate(_points("resnet8", n=2))
    ev.probabilities(_points("resnet8", n=1), "test")
    assert model.training and all(m.training for m in model.modules())
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == momenta
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert all(p.requires_grad for p in model.parameters())


def test_the_points_are_not_modified(data):
    pts = _points("mlp-bn", n=2)
    copies = [{k: v.clone() for k, v in p.items()} for p in pts]
    for method in ("vmap", "loop"):
        _evaluator(_model("mlp-bn"), data, method=method).evaluate(pts)
    for p, c in zip(pts, copies, strict=True):
        for k in p:
            assert torch.equal(p[k], c[k]), k


# ---------------------------------------------------------------- chunks


@pytest.mark.parametrize("kind", ["mlp", "mlp-bn"])
def test_many_points_in_chunks_equal_one_at_a_time(kind, data):
    model = _model(kind)
    pts = _points(kind, n=5)
    ev = _evaluator(model, data, method="vmap")
    single = [ev.evaluate([p])[0] for p in pts]
    ev.points_per_chunk = 2  # chunks of 2, 2, 1
    _assert_results_close(ev.evaluate(pts), single)
    # A generator of points works too (paths hand points over lazily).
    _assert_results_close(ev.evaluate(p for p in pts), single)
    # A tiny memory budget plans one point per chunk and still gives the same answers.
    small = _evaluator(model, data, memory_budget=1.0)
    assert small.points_per_chunk == 1
    _assert_results_close(small.evaluate(pts), single)


def test_batch_size_does_not_change_the_answer_without_bn(data):
    model = _model("mlp")
    pts = _points("mlp", n=2)
    r1 = _evaluator(model, data, batch_size=7).evaluate(pts)
    r2 = _evaluator(model, data, batch_size=1000).evaluate(pts)
    _assert_results_close(r1, r2)


# ---------------------------------------------------------------- probabilities


@pytest.mark.parametrize("kind", ["mlp-bn", "convnet-dropout"])
def test_probabilities_sum_to_one_and_agree_with_evaluate(kind, data):
    model = _model(kind)
    pts = _points(kind, n=3)
    ev = _evaluator(model, data)
    probs = ev.probabilities(pts, "test")
    x, y = data["test"]
    assert probs.shape == (3, len(y), 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, len(y)), atol=1e-5, rtol=0)
    assert (probs >= 0).all()
    for p_probs, r in zip(probs, ev.evaluate(pts), strict=True):
        acc = float((p_probs.argmax(-1) == y).double().mean())
        nll = float(-p_probs.double().gather(1, y[:, None]).log().mean())
        assert r["test"]["acc"] == pytest.approx(acc, abs=1e-12)
        assert r["test"]["loss"] == pytest.approx(nll, rel=1e-4)


def test_features_are_the_input_of_the_last_linear_layer(data):
    model = _model("mlp")
    pts = _points("mlp", n=2)
    ev = _evaluator(model, data)
    feats = ev.features(pts, "test")
    x = data["test"][0]
    for p, f in zip(pts, feats, strict=True):
        m = _with(model, p).eval()
        with torch.no_grad():
            ref = nn.Sequential(*list(m)[:-1])(x)
        assert f.shape == (len(x), 16)
        torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad points


def test_point_missing_keys_raises_usage_error(data):
    model = _model("mlp-bn")
    ev = _evaluator(model, data)
    good = _points("mlp-bn", n=2)
    broken = {k: v for k, v in good[0].items() if not k.endswith("running_var")}
    with pytest.raises(UsageError, match="does not belong"):
        ev.evaluate([broken])
    with pytest.raises(UsageError):
        ev.evaluate([good[1], broken])  # a broken point later in the list, too
    with pytest.raises(UsageError):
        ev.probabilities([broken], "test")
    foreign = _points("mlp", n=1)[0]
    with pytest.raises(UsageError):
        ev.evaluate([foreign])

"""Paths between parameter points (ALGORITHMS.md §1), their evaluation, `modeconn interpolate`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from modeconn.checkpoint import load_checkpoint, params_of
from modeconn.cli import main
from modeconn.errors import UsageError
from modeconn.evaluate import Evaluator
from modeconn.io import read_csv
from modeconn.models import build_model, model_config, rebuild
from modeconn.params import flatten, statistic_keys, weight_keys
from modeconn.paths import (
    ParamPath,
    check_compatible,
    evaluate_path,
    grid,
    interpolate,
    linear_path,
    summarize_path,
)
from modeconn.paths.barrier import DEFINITIONS, barrier

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


STATS = {"bn.running_mean", "bn.running_var"}


def _bends(n, dtype=torch.float64, seed=0):
    """n parameter dicts shaped like a small BN layer, with a num_batches_tracked buffer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        out.append({
            "fc.weight": torch.randn(3, 4, generator=g, dtype=dtype),
            "fc.bias": torch.randn(3, generator=g, dtype=dtype),
            "bn.running_mean": torch.randn(3, generator=g, dtype=dtype),
            "bn.running_var": torch.rand(3, generator=g, dtype=dtype) + 0.5,
            "bn.num_batches_tracked": torch.tensor(10 * (i + 1)),
        })
    return out


FLOAT_KEYS = ("fc.weight", "fc.bias", "bn.running_mean", "bn.running_var")


# ---------------------------------------------------------------- the paths themselves


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_path_endpoints_are_exact(dtype):
    a, b = _bends(2, dtype)
    path = linear_path(a, b)
    for t, ref in ((0.0, a), (1.0, b)):
        p = path.point(t)
        assert p.keys() == ref.keys()
        for k in FLOAT_KEYS:
            assert torch.equal(p[k], ref[k]), (t, k)
            assert p[k].dtype == ref[k].dtype
        assert torch.equal(p["bn.num_batches_tracked"], a["bn.num_batches_tracked"])


def test_linear_path_is_the_convex_combination():
    a, b = _bends(2)
    path = linear_path(a, b)
    for t in (0.1, 0.25, 0.5, 0.9):
        p = path.point(t)
        for k in FLOAT_KEYS:
            torch.testing.assert_close(p[k], (1 - t) * a[k] + t * b[k], rtol=0, atol=1e-14)


@pytest.mark.parametrize("t", [0.0, 0.2, 0.5, 0.7, 1.0])
def test_bezier_three_bends_closed_form(t):
    w0, w1, w2 = _bends(3)
    p = ParamPath([w0, w1, w2], kind="bezier").point(t)
    for k in FLOAT_KEYS:
        expected = (1 - t) ** 2 * w0[k] + 2 * t * (1 - t) * w1[k] + t**2 * w2[k]
        torch.testing.assert_close(p[k], expected, rtol=0, atol=1e-12)


def test_bezier_four_bends_closed_form():
    w = _bends(4)
    t = 0.3
    p = ParamPath(w, kind="bezier").point(t)
    c = [(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3]
    for k in FLOAT_KEYS:
        torch.testing.assert_close(p[k], sum(ci * wi[k] for ci, wi in zip(c, w, strict=True)),
                                   rtol=0, atol=1e-12)


def test_bezier_with_two_bends_is_the_linear_path():
    a, b = _bends(2)
    bez, lin = ParamPath([a, b], kind="bezier"), linear_path(a, b)
    for t in grid(7):
        for k in FLOAT_KEYS:
            torch.testing.assert_close(bez.point(t)[k], lin.point(t)[k], rtol=0, atol=1e-14)


def test_polychain_with_two_bends_is_the_linear_path():
    a, b = _bends(2)
    chain, lin = ParamPath([a, b], kind="polychain"), linear_path(a, b)
    for t in grid(9):
        for k in FLOAT_KEYS:
            torch.testing.assert_close(chain.point(t)[k], lin.point(t)[k], rtol=0, atol=1e-14)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_polychain_passes_through_its_bends(n):
    w = _bends(n)
    path = ParamPath(w, kind="polychain")
    for k_bend in range(n):
        p = path.point(k_bend / (n - 1))
        for k in FLOAT_KEYS:
            torch.testing.assert_close(p[k], w[k_bend][k], rtol=0, atol=1e-12)


def test_polychain_is_linear_between_neighbouring_bends():
    w = _bends(3)
    path = ParamPath(w, kind="polychain")
    # t = 0.75 is a quarter of the way from bend 1 (t=0.5) to bend 2 (t=1): ½·w1 + ½·w2 at 0.75.
    p = path.point(0.75)
    for k in FLOAT_KEYS:
        torch.testing.assert_close(p[k], 0.5 * w[1][k] + 0.5 * w[2][k], rtol=0, atol=1e-12)
    p = path.point(0.125)
    for k in FLOAT_KEYS:
        torch.testing.assert_close(p[k], 0.75 * w[0][k] + 0.25 * w[1][k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind, n", [("linear", 2), ("bezier", 3), ("polychain", 4)])
def test_integer_buffers_come_from_the_first_endpoint(kind, n):
    w = _bends(n)
    path = ParamPath(w, kind=kind)
    for t in grid(5):
        nbt = path.point(t)["bn.num_batches_tracked"]
        assert nbt.dtype == torch.int64
        assert int(nbt) == 10


def test_coefficients_sum_to_one():
    for kind, n in (("bezier", 3), ("bezier", 5), ("polychain", 4)):
        path = ParamPath(_bends(n), kind=kind)
        for t in grid(11):
            c = path.coefficients(t)
            assert float(c.sum()) == pytest.approx(1.0, abs=1e-12)
            assert (c >= 0).all()


def test_segment_lengths_of_a_linear_path():
    a, b = _bends(2)
    path = linear_path(a, b)
    ts = grid(5)
    lengths = path.segment_lengths(ts, STATS)
    assert len(lengths) == 5 and lengths[0] == 0.0
    # Parameters only: running statistics are not weights and do not add length.
    dist = math.sqrt(sum(float(((b[k] - a[k]) ** 2).sum()) for k in ("fc.weight", "fc.bias")))
    assert sum(lengths) == pytest.approx(dist, rel=1e-9)
    for seg in lengths[1:]:
        assert seg == pytest.approx(dist / 4, rel=1e-9)


def test_segment_lengths_ignore_running_statistics():
    a, b = _bends(2)
    b = dict(a, **{"bn.running_mean": a["bn.running_mean"] + 100.0,
                   "bn.running_var": a["bn.running_var"] * 50.0})
    assert sum(linear_path(a, b).segment_lengths(grid(3), STATS)) == pytest.approx(0.0, abs=1e-12)


def test_running_statistics_are_read_from_the_module_not_from_key_names():
    """What counts as a statistic comes from named_buffers(): a parameter named like a running
    statistic is a weight, a buffer with another name is a statistic."""
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.running_scale = torch.nn.Parameter(torch.ones(2))
            self.register_buffer("ema", torch.zeros(2))

    assert statistic_keys(Odd()) == {"ema"}
    bn = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert statistic_keys(bn) == {"1.running_mean", "1.running_var"}
    a = dict(Odd().state_dict())
    b = {"running_scale": a["running_scale"] + 3.0, "ema": a["ema"] + 100.0}
    assert sum(linear_path(a, b).segment_lengths(grid(2), statistic_keys(Odd()))) == \
        pytest.approx(3.0 * math.sqrt(2))


def test_segment_lengths_on_a_non_uniform_grid_are_proportional():
    a, b = _bends(2)
    keys = weight_keys(a, STATS)
    dist = float((flatten(b, keys) - flatten(a, keys)).norm())
    lengths = linear_path(a, b).segment_lengths([0.0, 0.1, 0.5, 1.0], STATS)
    assert lengths[1:] == pytest.approx([0.1 * dist, 0.4 * dist, 0.5 * dist], rel=1e-9)


def test_incompatible_dicts_raise_usage_error():
    a, b = _bends(2)
    missing = {k: v for k, v in b.items() if k != "fc.bias"}
    extra = dict(b, **{"fc2.weight": torch.zeros(2)})
    reshaped = dict(b, **{"fc.weight": torch.zeros(4, 3, dtype=torch.float64)})
    for bad in (missing, extra, reshaped):
        with pytest.raises(UsageError, match="architecture"):
            linear_path(a, bad)
        with pytest.raises(UsageError):
            check_compatible([a, b, bad])
        with pytest.raises(UsageError):
            ParamPath([a, bad, b], kind="bezier")


def test_bad_path_definitions_raise_usage_error():
    a, b, c = _bends(3)
    with pytest.raises(UsageError, match="kind"):
        ParamPath([a, b], kind="spline")
    with pytest.raises(UsageError):
        ParamPath([a], kind="bezier")
    with pytest.raises(UsageError, match="polychain"):
        ParamPath([a, b, c], kind="linear")


# ---------------------------------------------------------------- evaluating a path

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    def split(n):
        return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)

    return {"train": split(160), "test": split(70)}


def _params(norm=None, seed=0):
    torch.manual_seed(seed)
    kw = {"width": 16, "depth": 2} | ({"norm": norm} if norm else {})
    model = build_model(model_config("mlp", SHAPE, 10, **kw))
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _all_barriers(summary):
    for split in ("train", "test"):
        for metric in ("loss", "error"):
            for d in DEFINITIONS:
                yield (split, metric, d), summary[split][metric][d]["barrier"]


@pytest.mark.parametrize("norm, bn_reset", [(None, "auto"), ("bn", "auto"), ("bn", "off")])
def test_a_model_interpolated_with_itself_is_flat(norm, bn_reset, data):
    model, p = _params(norm)
    rows, summary = interpolate(model, p, {k: v.clone() for k, v in p.items()}, data,
                                bn_data=data["train"][0], points=7, bn_reset=bn_reset)
    assert len(rows) == 7 * 2
    for where, b in _all_barriers(summary):
        assert abs(b) <= 1e-6, where
    for split in ("train", "test"):
        assert summary[split]["delta_acc"] == pytest.approx(0.0, abs=1e-12)
        assert summary[split]["connected"] is True
        losses = [r["loss"] for r in rows if r["split"] == split]
        assert max(losses) - min(losses) <= 1e-6
    assert all(r["length"] == pytest.approx(0.0, abs=1e-5) for r in rows)  # float32 rounding


def test_evaluate_path_rows(data):
    model, a = _params("bn", seed=0)
    _, b = _params("bn", seed=1)
    b = {k: v + 0.5 if "running_mean" in k else v for k, v in b.items()}  # not a weight
    ev = Evaluator(model, data, bn_data=data["train"][0])
    ts = grid(5)
    path = linear_path(a, b)
    rows = evaluate_path(path, ev, ts)
    assert [(r["t"], r["split"]) for r in rows] == [(t, s) for t in ts for s in ("train", "test")]
    # Each row is the evaluator's answer for that point.
    direct = ev.evaluate(path.points(ts))
    for i, t in enumerate(ts):
        for split in ("train", "test"):
            (row,) = [r for r in rows if r["t"] == t and r["split"] == split]
            assert row["loss"] == direct[i][split]["loss"] and row["acc"] == direct[i][split]["acc"]
    # `length` is the cumulative weight-space distance: ||θ_B − θ_A|| (parameters only) at t=1.
    keys = weight_keys(a, statistic_keys(model))
    dist = float((flatten(b, keys) - flatten(a, keys)).norm())
    lengths = sorted({r["length"] for r in rows})
    assert lengths[0] == 0.0 and lengths[-1] == pytest.approx(dist, rel=1e-6)
    assert lengths == pytest.approx([dist * t for t in ts], rel=1e-6)
    # The summary is the barrier of each split's curve.
    summary = summarize_path(rows, tolerance=0.5)
    assert set(summary) == {"train", "test"}
    for split in ("train", "test"):
        loss = [r["loss"] for r in rows if r["split"] == split]
        for d in DEFINITIONS:
            assert summary[split]["loss"][d]["barrier"] == pytest.approx(barrier(ts, loss, d)[0])
        assert summary[split]["tolerance"] == 0.5


# ---------------------------------------------------------------- `modeconn interpolate`

TINY = ["--width", "16", "--depth", "1", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pair of MLPs on disjoint halves (2 epochs) and one MLP with BatchNorm (1 epoch)."""
    root = tmp_path_factory.mktemp("interp")
    assert main(["train", *TINY, "--epochs", "2", "--shift", "iid:50,50",
                 "--out", str(root / "pair")]) == 0
    assert main(["train", *TINY, "--norm", "bn", "--epochs", "1", "--out", str(root / "bn")]) == 0
    return root


def _assert_one_line_error(rc, out, err):
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modeconn: error: ")
    assert "Traceback" not in err + out


def test_interpolate_writes_path_barrier_and_figure(cli, runs, tmp_path):
    a = runs / "pair" / "a" / "model.safetensors"
    b = runs / "pair" / "b" / "model.safetensors"
    out = tmp_path / "interp"
    rc, stdout, err = cli("interpolate", a, b, "--points", "5", "--device", "cpu", "--out", out)
    assert rc == 0, err
    assert f"wrote {out}" in stdout
    assert "train: loss barrier" in stdout and "test: loss barrier" in stdout
    header = (out / "path.csv").read_text().splitlines()[0]
    assert header == "t,split,loss,acc,length"
    rows = read_csv(out / "path.csv")
    ts = grid(5)
    assert [(float(r["t"]), r["split"]) for r in rows] == [(t, s) for t in ts
                                                           for s in ("train", "test")]
    # The endpoints are the models themselves: their test accuracy and loss as trained.
    test = [r for r in rows if r["split"] == "test"]
    for row, member in ((test[0], "a"), (test[-1], "b")):
        status = json.loads((runs / "pair" / member / "status.json").read_text())
        assert float(row["acc"]) == pytest.approx(status["test_acc"], abs=1e-12)
        assert float(row["loss"]) == pytest.approx(status["test_loss"], rel=1e-5)
    pa, pb = (params_of(load_checkpoint(p)) for p in (a, b))
    keys = weight_keys(pa, statistic_keys(rebuild(load_checkpoint(a))))
    dist = float((flatten(pb, keys) - flatten(pa, keys)).norm())
    assert float(test[-1]["length"]) == pytest.approx(dist, rel=1e-6)
    assert float(test[0]["length"]) == 0.0

    summary = json.loads((out / "barrier.json").read_text())
    for split in ("train", "test"):
        s = summary[split]
        sel = [r for r in rows if r["split"] == split]
        loss = [float(r["loss"]) for r in sel]
        err_ = [1 - float(r["acc"]) for r in sel]
        for d in DEFINITIONS:
            assert s["loss"][d]["barrier"] == pytest.approx(barrier(ts, loss, d)[0], abs=1e-12)
            assert s["loss"][d]["lambda"] == barrier(ts, loss, d)[1]
            assert s["error"][d]["barrier"] == pytest.approx(barrier(ts, err_, d)[0], abs=1e-12)
        lam = s["lambda_star"]
        assert lam == s["loss"]["linear"]["lambda"]
        acc = [float(r["acc"]) for r in sel]
        assert s["interior"] is (0 < ts.index(lam) < len(ts) - 1)
        want = acc[ts.index(lam)] - (acc[0] + acc[-1]) / 2 if s["interior"] else 0.0
        assert s["delta_acc"] == pytest.approx(want, abs=1e-12)
        assert s["connected"] is (s["loss"]["linear"]["barrier"] <= 0.01)
        assert s["tolerance"] == 0.01
    assert summary["models"] == {"a": str(a), "b": str(b)}
    assert (out / "path.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("which", ["pair", "bn"])
def test_interpolating_a_checkpoint_with_itself_has_zero_barriers(cli, runs, tmp_path, which):
    ckpt = runs / which / ("a" if which == "pair" else "all") / "model.safetensors"
    out = tmp_path / "self"
    rc, _, err = cli("interpolate", ckpt, ckpt, "--points", "5", "--device", "cpu", "--out", out)
    assert rc == 0, err
    summary = json.loads((out / "barrier.json").read_text())
    for where, b in _all_barriers(summary):
        assert abs(b) <= 1e-6, where
    for split in ("train", "test"):
        assert summary[split]["delta_acc"] == pytest.approx(0.0, abs=1e-12)
        assert summary[split]["connected"] is True
    assert all(float(r["length"]) == pytest.approx(0.0, abs=1e-5)
               for r in read_csv(out / "path.csv"))


def test_interpolate_one_split_and_tolerance(cli, runs, tmp_path):
    a = runs / "pair" / "a" / "model.safetensors"
    b = runs / "pair" / "b" / "model.safetensors"
    out = tmp_path / "test-only"
    rc, _, err = cli("interpolate", a, b, "--points", "3", "--splits", "test",
                     "--tolerance", "100", "--device", "cpu", "--out", out)
    assert rc == 0, err
    rows = read_csv(out / "path.csv")
    assert [r["split"] for r in rows] == ["test"] * 3
    summary = json.loads((out / "barrier.json").read_text())
    assert "train" not in summary and summary["test"]["connected"] is True
    assert summary["test"]["tolerance"] == 100


def test_interpolate_refuses_different_architectures(cli, runs, tmp_path):
    out = tmp_path / "bad"
    rc, stdout, err = cli("interpolate", runs / "pair" / "a" / "model.safetensors",
                          runs / "bn" / "all" / "model.safetensors", "--device", "cpu",
                          "--out", out)
    _assert_one_line_error(rc, stdout, err)
    assert "architecture" in err
    assert not out.exists()


@pytest.mark.parametrize("args", [["--points", "1"], ["--splits", "valid"], ["--splits", ","]])
def test_interpolate_bad_options(cli, runs, tmp_path, args):
    a = runs / "pair" / "a" / "model.safetensors"
    out = tmp_path / "bad"
    rc, stdout, err = cli("interpolate", a, a, *args, "--device", "cpu", "--out", out)
    _assert_one_line_error(rc, stdout, err)
    assert not out.exists()

"""Loss planes and the Hutchinson Hessian trace (ALGORITHMS.md §8): known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from modeconn.errors import UsageError
from modeconn.evaluate import Evaluator
from modeconn.models import build_model, model_config
from modeconn.paths import ParamPath, linear_path
from modeconn.paths.landscape import hessian_trace, hutchinson, loss_plane, plane, project_path

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


# ---------------------------------------------------------------- Hutchinson


def _quadratic(mats: list[torch.Tensor]):
    """loss(θ, batch b) = ½·θᵀA_bθ over the flattened entries of θ: its Hessian is A_b."""

    def loss_fn(p: dict[str, torch.Tensor], b: int) -> torch.Tensor:
        theta = torch.cat([p["w"].reshape(-1), p["b"]])
        return 0.5 * theta @ mats[b] @ theta

    return loss_fn


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=g, dtype=torch.float64),
            "b": torch.randn(5, generator=g, dtype=torch.float64),
            "bn.running_mean": torch.randn(2, dtype=torch.float64)}  # a statistic: held fixed


STATS = {"bn.running_mean"}


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # With Rademacher probes v_i² = 1, so vᵀ·diag(a)·v = Σ a_i for every probe: no variance.
    p = _params()
    theta = torch.cat([p["w"].reshape(-1), p["b"]])
    g = torch.Generator().manual_seed(1)
    diags = [torch.rand(17, generator=g, dtype=torch.float64) * 3 for _ in range(3)]
    res = hutchinson(_quadratic([torch.diag(d) for d in diags]), p, batches=3, probes=4,
                     statistics=STATS)
    mean_diag = sum(diags) / 3
    assert res["samples"] == 12 and res["probes"] == 4 and res["batches"] == 3
    assert res["trace"] == pytest.approx(float(mean_diag.sum()), rel=1e-12)
    assert res["weighted_trace"] == pytest.approx(float((theta**2 * mean_diag).sum()), rel=1e-12)
    # Per batch the estimate is exact, so the spread is the batches' own.
    per_batch = [float(d.sum()) for d in diags]
    m = sum(per_batch) / 3
    se = math.sqrt(sum(4 * (v - m) ** 2 for v in per_batch) / 11 / 12)
    assert res["trace_se"] == pytest.approx(se, rel=1e-9)


def test_hutchinson_single_batch_diagonal_has_zero_standard_error():
    p = _params()
    res = hutchinson(_quadratic([torch.diag(torch.arange(1.0, 18.0, dtype=torch.float64))]), p,
                     batches=1, probes=5, statistics=STATS)
    assert res["trace"] == pytest.approx(153.0, rel=1e-12)  # 1 + 2 + ... + 17
    assert res["trace_se"] == 0.0 and res["weighted_trace_se"] == 0.0


def test_hutchinson_estimates_the_trace_of_a_dense_psd_hessian():
    p = _params(2)
    theta = torch.cat([p["w"].reshape(-1), p["b"]])
    g = torch.Generator().manual_seed(3)
    m = torch.randn(17, 17, generator=g, dtype=torch.float64)
    a = m.T @ m / 17 + torch.eye(17, dtype=torch.float64)
    res = hutchinson(_quadratic([a]), p, batches=1, probes=400, seed=5, statistics=STATS)
    trace, weighted = float(a.trace()), float((theta**2 * a.diagonal()).sum())
    assert 0 < res["trace_se"] < 0.1 * trace
    assert abs(res["trace"] - trace) < 4 * res["trace_se"]
    assert abs(res["weighted_trace"] - weighted) < 4 * res["weighted_trace_se"]
    # Off-diagonal terms are what the probes average out: a different seed, a different value.
    other = hutchinson(_quadratic([a]), p, batches=1, probes=400, seed=6, statistics=STATS)
    assert other["trace"] != res["trace"]


def test_hessian_trace_of_a_small_model_matches_the_exact_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    keys = list(params)
    shapes = [params[k].shape for k in keys]
    flat0 = torch.cat([params[k].reshape(-1) for k in keys])

    def full_loss(flat: torch.Tensor) -> torch.Tensor:
        p = dict(zip(keys, (v.view(s) for v, s in zip(flat.split([s.numel() for s in shapes]),
                                                      shapes))))
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    h = torch.autograd.functional.hessian(full_loss, flat0)
    # Equal batches: the mean of the per-batch Hessians is the Hessian of the mean loss.
    res = hessian_trace(model, params, x, y, probes=300, batch_size=16, seed=2)
    assert res["batches"] == 4 and res["samples"] == 1200
    assert abs(res["trace"] - float(h.trace())) < 4 * res["trace_se"]
    weighted = float((flat0**2 * h.diagonal()).sum())
    assert abs(res["weighted_trace"] - weighted) < 4 * res["weighted_trace_se"]
    assert res["trace_se"] < 0.2 * abs(float(h.trace()))


def test_hutchinson_needs_a_probe():
    with pytest.raises(UsageError, match="needs probes ≥ 1, got 0"):
        hutchinson(_quadratic([torch.eye(17, dtype=torch.float64)]), _params(), 1, 0)


# ---------------------------------------------------------------- planes


def _points(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Three parameter dicts with a weight, a bias, BatchNorm statistics and a counter."""
    g = torch.Generator().manual_seed(seed)
    return [{"fc.weight": torch.randn(3, 4, generator=g, dtype=torch.float64),
             "fc.bias": torch.randn(3, generator=g, dtype=torch.float64),
             "bn.running_mean": torch.randn(3, generator=g, dtype=torch.float64),
             "bn.num_batches_tracked": torch.tensor(7 * (i + 1))} for i in range(3)]


def _flat(p):
    return torch.cat([p["fc.weight"].reshape(-1), p["fc.bias"]])


def test_plane_places_its_three_points_by_gram_schmidt():
    w = _points()
    pl = plane(*w, statistics=STATS)
    u, v = _flat(w[1]) - _flat(w[0]), _flat(w[2]) - _flat(w[0])
    proj = float(u @ v) / float(u.norm())
    v_perp = float((v - (u @ v) / (u @ u) * u).norm())
    assert pl.dx == pytest.approx(float(u.norm()), rel=1e-12)
    assert pl.proj == pytest.approx(proj, rel=1e-12)
    assert pl.dy == pytest.approx(v_perp, rel=1e-12)
    for p, xy in zip(w, [(0.0, 0.0), (float(u.norm()), 0.0), (proj, v_perp)]):
        assert pl.coordinates(p) == pytest.approx(xy, abs=1e-12)
    assert float(pl.e1 @ pl.e2) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.3, -0.7), (1.2, 0.9)])
def test_plane_point_inverts_coordinates_for_points_of_the_plane(alpha, beta):
    w = _points(1)
    pl = plane(*w, statistics=STATS)
    p = {k: w[0][k] + alpha * (w[1][k] - w[0][k]) + beta * (w[2][k] - w[0][k])
         if w[0][k].is_floating_point() else w[0][k] for k in w[0]}
    back = pl.point(*pl.coordinates(p))
    assert back.keys() == p.keys()
    for k in p:
        torch.testing.assert_close(back[k], p[k], rtol=0, atol=1e-12)


def test_plane_grid_covers_the_range_21_by_21_by_default():
    pl = plane(*_points(), statistics=STATS)
    xs, ys = pl.grid()
    assert len(xs) == len(ys) == 21
    assert xs[0] == pytest.approx(-0.2 * pl.dx) and xs[-1] == pytest.approx(1.2 * pl.dx)
    assert ys[0] == pytest.approx(-0.2 * pl.dy) and ys[-1] == pytest.approx(1.2 * pl.dy)
    steps = [b - a for a, b in zip(xs, xs[1:])]
    assert max(steps) == pytest.approx(min(steps)) == pytest.approx(0.07 * pl.dx)
    xs, ys = pl.grid(5, -1.0, 2.0)
    assert xs == pytest.approx([v * pl.dx for v in (-1.0, -0.25, 0.5, 1.25, 2.0)])
    with pytest.raises(UsageError, match=r"n ≥ 2 points per axis, got 1"):
        pl.grid(1)
    with pytest.raises(UsageError, match=r"lo < hi, both finite, got 1.0, 0.5"):
        pl.grid(21, 1.0, 0.5)


def test_plane_needs_three_points_off_one_line():
    a, b, _ = _points()
    with pytest.raises(UsageError, match="identical"):
        plane(a, a, b)
    mid = {k: 0.5 * (a[k] + b[k]) if a[k].is_floating_point() else a[k] for k in a}
    with pytest.raises(UsageError, match="one line"):
        plane(a, b, mid)


def test_project_path_of_a_bezier_through_the_third_point():
    w = _points()
    pl = plane(*w, statistics=STATS)
    xs, ys = project_path(pl, linear_path(w[0], w[1]), 5)
    assert xs == pytest.approx([i / 4 * pl.dx for i in range(5)]) and ys == pytest.approx([0.0] * 5)
    # Bezier with control point w2: θ(½) = ¼·w0 + ½·w2 + ¼·w1.
    xs, ys = project_path(pl, ParamPath([w[0], w[2], w[1]], kind="bezier"), 3)
    assert xs[1] == pytest.approx(0.5 * pl.proj + 0.25 * pl.dx)
    assert ys[1] == pytest.approx(0.5 * pl.dy)


@pytest.mark.parametrize("bn", [False, True])
def test_loss_plane_evaluates_every_grid_point_through_the_evaluator(bn):
    cfg = model_config("mlp", (1, 4, 4), 3, width=8, depth=1, norm="bn" if bn else "none")
    w = []
    for s in range(3):
        torch.manual_seed(s)
        w.append(build_model(cfg).state_dict())
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 1, 4, 4, generator=g), torch.arange(60) % 3
    splits = {"train": (x[:40], y[:40]), "test": (x[40:], y[40:])}
    ev = Evaluator(build_model(cfg), splits, bn_data=x[:40])
    assert ev.bn_reset == bn
    pl = plane(*w, statistics=STATS)
    rows = loss_plane(pl, ev)  # the default 21×21 grid
    assert len(rows) == 21 * 21 * 2
    assert {(r["i"], r["j"]) for r in rows} == {(i, j) for i in range(21) for j in range(21)}
    xs, ys = pl.grid()
    for r in rows[::97]:
        assert (r["x"], r["y"]) == (xs[r["i"]], ys[r["j"]])
    # On the grid over [0, 1] the corners (0, 0) and (|u|, 0) are w0 and w1 themselves.
    rows = loss_plane(pl, ev, n=3, lo=0.0, hi=1.0)
    ref = ev.evaluate([w[0], w[1]])
    for (i, j), r in zip(((0, 0), (2, 0)), ref):
        for split in ("train", "test"):
            got = next(v for v in rows if (v["i"], v["j"], v["split"]) == (i, j, split))
            assert got["loss"] == pytest.approx(r[split]["loss"], rel=1e-5)
            assert got["acc"] == r[split]["acc"]
    assert len({round(r["loss"], 6) for r in rows if r["split"] == "train"}) == 9

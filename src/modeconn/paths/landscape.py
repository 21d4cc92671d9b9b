"""Loss landscapes and curvature (ALGORITHMS.md §8): the plane through three parameter points,
evaluated on a grid through the evaluation engine, and the Hutchinson Hessian trace."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import UsageError
from ..params import check_module, check_params, combine, flatten, statistic_keys, weight_keys
from ..task import CLASSIFICATION, Task
from .path import ParamPath, check_compatible

Point = Mapping[str, Tensor]


@dataclass
class Plane:
    """The plane through w0, w1, w2: e1 = u/|u| with u = w1 − w0, e2 = v orthogonalised against
    u (Gram–Schmidt) and normalised, v = w2 − w0. Coordinates are distances along e1 and e2, so
    w0, w1, w2 sit at (0, 0), (|u|, 0) and (v·e1, |v⊥|)."""

    w0: dict[str, Tensor]
    w1: dict[str, Tensor]
    w2: dict[str, Tensor]
    dx: float  # |u|
    dy: float  # |v⊥|
    proj: float  # v·e1
    e1: Tensor  # flat unit vectors over the weights (float64)
    e2: Tensor
    keys: list[str]  # the weights, in the order of e1 and e2

    def coefficients(self, x: float, y: float) -> tuple[float, float, float]:
        """Weights (c0, c1, c2) of w0, w1, w2 giving the point at plane coordinates (x, y)."""
        cv = y / self.dy
        cu = x / self.dx - cv * self.proj / self.dx
        return 1.0 - cu - cv, cu, cv

    def point(self, x: float, y: float) -> dict[str, Tensor]:
        """The parameter dict at plane coordinates (x, y) (buffers combined the same way)."""
        return combine([self.w0, self.w1, self.w2], self.coefficients(x, y))

    def coordinates(self, p: Point) -> tuple[float, float]:
        """Plane coordinates of the projection of a parameter point onto the plane."""
        d = flatten(p, self.keys) - flatten(self.w0, self.keys)
        return float(d @ self.e1), float(d @ self.e2)

    def grid(self, n: int = 21, lo: float = -0.2, hi: float = 1.2) -> tuple[list[float], list[float]]:
        """Grid coordinates: n values over [lo, hi]·|u| along e1 and [lo, hi]·|v⊥| along e2."""
        if n < 2:
            raise UsageError(f"a plane grid needs n ≥ 2 points per axis, got {n}")
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise UsageError(f"a plane grid needs lo < hi, both finite, got {lo}, {hi}")
        s = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        return [v * self.dx for v in s], [v * self.dy for v in s]

    def points(self, xs: Sequence[float], ys: Sequence[float]) -> Iterator[dict[str, Tensor]]:
        """Parameter dicts over the grid, rows of y outermost."""
        return (self.point(x, y) for y in ys for x in xs)


def plane(w0: Point, w1: Point, w2: Point, statistics: Iterable[str] = ()) -> Plane:
    """The plane through three parameter points of one architecture, over their weights (the
    entries named in `statistics`, `params.statistic_keys(model)`, are combined but not axes)."""
    check_compatible([w0, w1, w2])
    keys = weight_keys(w0, statistics)
    f0 = flatten(w0, keys)
    u, v = flatten(w1, keys) - f0, flatten(w2, keys) - f0
    dx = float(u.norm())
    if dx == 0:
        raise UsageError("the first two models are identical; the plane is undefined")
    e1 = u / dx
    proj = float(v @ e1)
    vp = v - proj * e1
    dy = float(vp.norm())
    if dy <= 1e-9 * max(dx, 1.0):
        raise UsageError("the three models lie on one line; the plane is undefined")
    return Plane(dict(w0), dict(w1), dict(w2), dx, dy, proj, e1, vp / dy, keys)


def loss_plane(plane_: Plane, evaluator, n: int = 21, lo: float = -0.2, hi: float = 1.2
               ) -> list[dict]:
    """Tidy rows (i, j, x, y, split and the task's metrics: loss, acc) of every grid point,
    evaluated by `evaluator`
    (BatchNorm re-estimated per point when it is on)."""
    xs, ys = plane_.grid(n, lo, hi)
    results = evaluator.evaluate(plane_.points(xs, ys))
    rows = []
    for idx, r in enumerate(results):
        j, i = divmod(idx, len(xs))
        for split, m in r.items():
            rows.append({"i": i, "j": j, "x": xs[i], "y": ys[j], "split": split,
                         **m})
    return rows


def project_path(plane_: Plane, path: ParamPath, points: int = 61) -> tuple[list[float], list[float]]:
    """Plane coordinates of a path's points on a grid of t."""
    xy = [plane_.coordinates(p) for p in path.points([i / (points - 1) for i in range(points)])]
    return [p[0] for p in xy], [p[1] for p in xy]


# ---------------------------------------------------------------- curvature

def hutchinson(loss_fn: Callable[[dict[str, Tensor], int], Tensor], params: Point, batches: int,
               probes: int, seed: int = 0, statistics: Iterable[str] = ()) -> dict[str, float]:
    """Hutchinson estimates of tr(H) and Σ θ_i²·H_ii of loss_fn(params, batch index), averaged over
    batches and Rademacher probes, with standard errors over the batch × probe samples.

    Each sample is one Hessian-vector product by double backprop: vᵀHv estimates the trace and
    Σ θ_i²·v_i·(Hv)_i the weighted trace (E[v_i v_j] = δ_ij). The Hessian is over the weights:
    the entries named in `statistics` (running statistics) stay fixed."""
    if probes < 1:
        raise UsageError(f"the Hutchinson estimate needs probes ≥ 1, got {probes}")
    keys = weight_keys(params, statistics)
    theta = {k: params[k].detach().clone().requires_grad_() for k in keys}
    rest = {k: v for k, v in params.items() if k not in theta}
    gen = torch.Generator().manual_seed(seed)
    plain, weighted = [], []
    for b in range(batches):
        # Double backprop: the fused attention kernels have no second derivative, the math one
        # (the same function) has.
        with sdpa_kernel(SDPBackend.MATH):
            loss = loss_fn({**rest, **theta}, b)
            grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        for p in range(probes):
            vs = [(torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t) for t in theta.values()]
            hv = torch.autograd.grad(grads, list(theta.values()), grad_outputs=vs,
                                     retain_graph=p < probes - 1 or b < batches - 1)
            plain.append(sum(float((v * h).sum()) for v, h in zip(vs, hv)))
            weighted.append(sum(float((t.detach() ** 2 * v * h).sum())
                                for t, v, h in zip(theta.values(), vs, hv)))
    return {"trace": _mean(plain), "trace_se": _se(plain), "weighted_trace": _mean(weighted),
            "weighted_trace_se": _se(weighted), "samples": len(plain), "probes": probes,
            "batches": batches}


def hessian_trace(model: nn.Module, params: Point, x: Tensor, y: Tensor, probes: int = 10,
                  batch_size: int = 512, max_batches: int | None = None, seed: int = 0, *,
                  task: Task = CLASSIFICATION) -> dict[str, float]:
    """Hutchinson trace of the Hessian of the task's mean loss (cross-entropy) of `model` at
    `params` on (x, y), per batch of `batch_size` (the model in eval mode: BatchNorm uses its
    running statistics)."""
    if batch_size < 1:
        raise UsageError(f"the Hessian trace needs batch_size ≥ 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise UsageError(f"the Hessian trace needs max_batches ≥ 1 (or None for the whole split), "
                         f"got {max_batches}")
    check_module(model)
    check_params(params)
    if len(x) == 0:
        raise UsageError("the Hessian trace needs at least one sample")
    net = model.eval()
    nb = math.ceil(len(x) / batch_size)
    if max_batches is not None:
        nb = min(nb, max_batches)

    def loss_fn(p: dict[str, Tensor], b: int) -> Tensor:
        sl = slice(b * batch_size, (b + 1) * batch_size)
        return task.loss(functional_call(net, p, (x[sl],), tie_weights=False), y[sl])

    return hutchinson(loss_fn, params, nb, probes, seed, statistic_keys(net))


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def _se(v: list[float]) -> float:
    if len(v) < 2:
        return float("nan")
    m = _mean(v)
    return math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1) / len(v))

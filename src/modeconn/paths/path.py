"""Paths between parameter points: linear, Bezier and polygonal chains (ALGORITHMS.md §1).

A path is a function t ∈ [0, 1] → parameter dict, defined by its bends w_0 … w_{n−1} (the
endpoints are w_0 and w_{n−1}) and a coefficient rule. The linear path is the two-bend chain.
Floating-point tensors (weights and BatchNorm running statistics) are combined; integer buffers
(num_batches_tracked) are taken from the first endpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from ..evaluate import Evaluator
from ..params import check_module, check_params, combine, flatten, statistic_keys, weight_keys
from ..task import CLASSIFICATION, Task, score_of
from .barrier import path_summary

PATH_KINDS = ("linear", "bezier", "polychain")


def bezier_coefficients(t: float | Tensor, n: int) -> Tensor:
    """Bernstein weights C(n−1, k)·t^k·(1−t)^(n−1−k) for k = 0 … n−1 (float64)."""
    t = float(t)  # scalar arithmetic: a curve-fitting step asks for these once per batch
    return torch.tensor([math.comb(n - 1, k) * t**k * (1 - t) ** (n - 1 - k) for k in range(n)],
                        dtype=torch.float64)


def polychain_coefficients(t: float | Tensor, n: int) -> Tensor:
    """Hat weights max(0, 1 − |t·(n−1) − k|) for k = 0 … n−1 (float64)."""
    t = float(t)
    return torch.tensor([max(0.0, 1 - abs(t * (n - 1) - k)) for k in range(n)], dtype=torch.float64)


class ParamPath:
    """A path t → parameters through `bends` (parameter dicts of one architecture)."""

    def __init__(self, bends: Sequence[Mapping[str, Tensor]], kind: str = "bezier"):
        if kind not in PATH_KINDS:
            raise UsageError(f"unknown path kind {kind!r}; use {', '.join(PATH_KINDS)}")
        if len(bends) < 2:
            raise UsageError("a path needs at least two bends (its endpoints)")
        if kind == "linear" and len(bends) != 2:
            raise UsageError("a linear path has exactly two bends; use polychain for more")
        check_compatible(bends)
        self.kind = kind
        self.bends = [dict(b) for b in bends]

    @property
    def num_bends(self) -> int:
        return len(self.bends)

    def coefficients(self, t: float | Tensor) -> Tensor:
        """Weights of the bends at t."""
        n = self.num_bends
        return bezier_coefficients(t, n) if self.kind == "bezier" else polychain_coefficients(t, n)

    def point(self, t: float) -> dict[str, Tensor]:
        """The parameter dict at t."""
        c = self.coefficients(t) if self.kind != "linear" else polychain_coefficients(t, 2)
        return combine(self.bends, [float(ci) for ci in c])

    def points(self, ts: Sequence[float]):
        """Parameter dicts at each t (a generator, so long grids stay cheap)."""
        return (self.point(float(t)) for t in ts)

    def segment_lengths(self, ts: Sequence[float], statistics: Iterable[str] = ()) -> list[float]:
        """Euclidean distance in weight space between consecutive grid points (the entries
        named in `statistics`, e.g. `params.statistic_keys(model)`, left out)."""
        weights = weight_keys(self.bends[0], statistics)
        prev, out = None, []
        for p in self.points(ts):
            vec = flatten(p, weights)
            out.append(0.0 if prev is None else float((vec - prev).norm()))
            prev = vec
        return out


def linear_path(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> ParamPath:
    """θ(λ) = (1−λ)·θ_A + λ·θ_B."""
    return ParamPath([a, b], kind="linear")


def check_compatible(points: Sequence[Mapping[str, Tensor]]) -> None:
    """Raise UsageError unless every point has the same names and shapes (TypeError unless each
    is a parameter dict)."""
    for i, p in enumerate(points):
        check_params(p, f"parameter point {i + 1}")
    ref = points[0]
    for i, p in enumerate(points[1:], 1):
        if set(p) != set(ref):
            diff = sorted(set(p) ^ set(ref))[:3]
            raise UsageError(f"parameter sets differ (e.g. {diff}); the models have different "
                             "architectures — compare checkpoints of one architecture")
        for k in ref:
            if p[k].shape != ref[k].shape:
                raise UsageError(f"{k} has shape {tuple(ref[k].shape)} in the first model and "
                                 f"{tuple(p[k].shape)} in model {i + 1}; the architectures differ")


def grid(n: int) -> list[float]:
    """n evenly spaced values in [0, 1], endpoints included."""
    if n < 2:
        raise UsageError(f"a path grid needs at least 2 points, got {n}")
    return [i / (n - 1) for i in range(n)]


def check_tolerance(tolerance: float) -> float:
    """The loss barrier below which a path counts as connected: a finite number >= 0."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"the tolerance must be a loss barrier ≥ 0 (e.g. 0.01), got {tolerance}")
    return tolerance


def evaluate_path(path: ParamPath, evaluator, ts: Sequence[float]) -> list[dict]:
    """Tidy rows (t, split, the task's metrics — loss, acc — and length) of `path` on the grid
    `ts` through `evaluator`."""
    results = evaluator.evaluate(path.points(ts))
    lengths = path.segment_lengths(ts, statistic_keys(evaluator.model))
    cum = list(np.cumsum(lengths))
    return [{"t": t, "split": split, **r[split], "length": c}
            for t, r, c in zip(ts, results, cum) for split in r]


def summarize_path(rows: Sequence[dict], tolerance: float = 0.01) -> dict:
    """barrier.json content: every barrier definition per split from `evaluate_path` rows."""
    check_tolerance(tolerance)
    out = {}
    for split in dict.fromkeys(r["split"] for r in rows):
        sel = [r for r in rows if r["split"] == split]
        score = score_of(sel[0])
        out[split] = path_summary([r["t"] for r in sel], [r["loss"] for r in sel],
                                  [r[score] for r in sel], tolerance, score)
    return out


def interpolate(model, a: Mapping[str, Tensor], b: Mapping[str, Tensor], splits: Mapping,
                bn_data: Tensor | None = None, points: int = 25, bn_reset: str = "auto",
                tolerance: float = 0.01, *, task: Task = CLASSIFICATION
                ) -> tuple[list[dict], dict]:
    """Evaluate the linear path between two parameter dicts: (path rows, barrier summary)."""
    check_module(model)
    check_tolerance(tolerance)
    evaluator = Evaluator(model, splits, bn_data=bn_data, bn_reset=bn_reset, task=task)
    rows = evaluate_path(linear_path(a, b), evaluator, grid(points))
    return rows, summarize_path(rows, tolerance)

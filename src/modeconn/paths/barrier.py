"""Loss and error barriers along a path (ALGORITHMS.md §2)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import UsageError

DEFINITIONS = ("linear", "midpoint", "local-min")


def barrier(ts: Sequence[float], values: Sequence[float], definition: str = "linear"
            ) -> tuple[float, float]:
    """(barrier height, λ* where it is reached) of `values` on the grid `ts` (ends 0 and 1)."""
    t = np.asarray(ts, dtype=float)
    v = np.asarray(values, dtype=float)
    if len(t) != len(v) or len(t) < 2:
        raise UsageError("barrier needs matching grids of at least two values")
    if not (np.isclose(t[0], 0) and np.isclose(t[-1], 1)) or np.any(np.diff(t) <= 0):
        raise UsageError("barrier needs an increasing grid from 0 to 1")
    line = (1 - t) * v[0] + t * v[-1]
    if definition == "linear":
        i = int(np.argmax(v - line))
        return float(v[i] - line[i]), float(t[i])
    if definition == "midpoint":
        i = int(np.argmax(v))
        return float(v[i] - 0.5 * (v[0] + v[-1])), float(t[i])
    if definition == "local-min":
        i = int(np.argmax(v - line))
        left = int(np.argmin(v[: i + 1]))
        right = len(v) - 1 - int(np.argmin(v[i:][::-1]))  # ties: the point nearest λ = 1
        if right == left:
            return 0.0, float(t[i])
        w = (t[i] - t[left]) / (t[right] - t[left])
        ref = (1 - w) * v[left] + w * v[right]
        return float(v[i] - ref), float(t[i])
    raise UsageError(f"unknown barrier definition {definition!r}; use {', '.join(DEFINITIONS)}")


def path_summary(ts: Sequence[float], loss: Sequence[float], acc: Sequence[float],
                 tolerance: float = 0.01, score: str = "acc") -> dict:
    """Every barrier definition for loss and error, Δ at the loss barrier's λ*, and connectivity.

    `acc` is the task's score along the path (accuracy; micro-F1 for multi-label, named by
    `score`), the error 1 − score. Δacc = acc(λ*) − ½(acc(0) + acc(1)) at the λ* of the linear
    loss barrier, stored as `delta_<score>` ('delta_acc', 'delta_f1'). When the loss never rises
    above the line between its endpoints, the largest excess (0) sits at an endpoint: there is
    no barrier, `interior` is False and Δ is 0, not half the endpoints' difference."""
    err = [1 - a for a in acc]
    out: dict = {"loss": {}, "error": {}}
    for d in DEFINITIONS:
        b, lam = barrier(ts, loss, d)
        out["loss"][d] = {"barrier": b, "lambda": lam}
        b, lam = barrier(ts, err, d)
        out["error"][d] = {"barrier": b, "lambda": lam}
    lam = out["loss"]["linear"]["lambda"]
    i = int(np.argmin(np.abs(np.asarray(ts) - lam)))
    interior = 0 < i < len(ts) - 1
    out[f"delta_{score}"] = float(acc[i] - 0.5 * (acc[0] + acc[-1])) if interior else 0.0
    if score != "acc":
        out["score"] = score
    out["lambda_star"] = lam
    out["interior"] = interior
    out["connected"] = bool(out["loss"]["linear"]["barrier"] <= tolerance)
    out["tolerance"] = tolerance
    bad = [t for t, v in zip(ts, loss) if not np.isfinite(v)]
    if bad:  # the barriers are NaN (null in JSON): say why
        out["undefined"] = "the loss is not finite at t = " + ", ".join(f"{t:.3g}" for t in bad)
    return out

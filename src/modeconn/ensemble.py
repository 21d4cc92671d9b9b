"""Ensembles and similarity between models (ALGORITHMS.md §7)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .params import flatten, weight_keys
from .task import CLASSIFICATION, Task, expected_calibration_error

__all__ = ["ensemble_metrics", "expected_calibration_error", "linear_cka", "member_scores",
           "pairwise_similarity", "similarity"]


def ensemble_metrics(probs: Tensor, y: Tensor, bins: int = 15, *,
                     task: Task = CLASSIFICATION) -> dict[str, float]:
    """The task's ensemble scores (accuracy, NLL, Brier, ECE; multi-label: F1, mAP, NLL, Brier,
    per-label ECE) of the mean of member probabilities `probs` (M, N, C), with the mean
    member's values and the ensemble's gain over it (in the task's score and in NLL)."""
    members = [task.ensemble_scores(p, y, bins) for p in probs]
    ens = task.ensemble_scores(probs.mean(0), y, bins)
    out = dict(ens)
    for key in ens:
        out[f"member_{key}"] = sum(m[key] for m in members) / len(members)
    if task.score in ens:
        out[f"gain_{task.score}"] = out[task.score] - out[f"member_{task.score}"]
    if "nll" in ens:
        out["gain_nll"] = out["member_nll"] - out["nll"]
    out["size"] = len(members)
    return out


def member_scores(probs: Tensor, y: Tensor, task: Task = CLASSIFICATION) -> list[float]:
    """Each member's score (accuracy; micro-F1 for multi-label) from probabilities (M, N, C)."""
    return [task.ensemble_scores(p, y)[task.score] for p in probs]


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between representations x (N, D1) and y (N, D2) (Kornblith et al. 2019)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    num = (x.T @ y).norm() ** 2
    den = (x.T @ x).norm() * (y.T @ y).norm()
    return float(num / den) if den > 0 else 0.0


def similarity(p1: Tensor, p2: Tensor, y: Tensor, params1: Mapping[str, Tensor] | None = None,
               params2: Mapping[str, Tensor] | None = None, feats1: Tensor | None = None,
               feats2: Tensor | None = None, statistics: Iterable[str] = (), *,
               task: Task = CLASSIFICATION) -> dict[str, float]:
    """Prediction, error, weight and representation similarity of two models (the task's
    probabilities p1, p2 of shape (N, C) on the same inputs with targets y; multi-label models
    compare their decisions label by label). The weight similarity leaves out the entries named
    in `statistics` (running statistics: `params.statistic_keys(model)`)."""
    a, t, c = task.decisions(p1, y)
    b, _, _ = task.decisions(p2, y)
    agree = (a == b).double().mean()
    ea, eb = (a != t).double(), (b != t).double()
    both, either = (ea * eb).sum(), ((ea + eb) > 0).double().sum()
    # Cohen's κ between the two prediction vectors.
    pa = torch.bincount(a, minlength=c).double() / len(a)
    pb = torch.bincount(b, minlength=c).double() / len(b)
    pe = float((pa * pb).sum())
    kappa = (float(agree) - pe) / (1 - pe) if pe < 1 else 1.0
    out = {"agreement": float(agree), "disagreement": 1 - float(agree),
           "error_overlap": float(both / either) if either > 0 else 1.0,
           "cohen_kappa": kappa, "error_correlation": _pearson(ea, eb)}
    if params1 is not None and params2 is not None:
        keys = weight_keys(params1, statistics)
        v1, v2 = flatten(params1, keys), flatten(params2, keys)
        out["weight_cosine"] = float(torch.nn.functional.cosine_similarity(v1, v2, dim=0))
        out["weight_l2"] = float((v1 - v2).norm())
    if feats1 is not None and feats2 is not None:
        out["cka"] = linear_cka(feats1, feats2)
    return out


def _pearson(u: Tensor, v: Tensor) -> float:
    u, v = u - u.mean(), v - v.mean()
    den = u.norm() * v.norm()
    return float((u * v).sum() / den) if den > 0 else 0.0


def pairwise_similarity(names: Sequence[str], probs: Tensor, y: Tensor,
                        params: Sequence[Mapping[str, Tensor]] | None = None,
                        feats: Sequence[Tensor] | None = None, statistics: Iterable[str] = (),
                        *, task: Task = CLASSIFICATION) -> list[dict]:
    """Tidy rows of `similarity` for every pair of models."""
    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            s = similarity(probs[i], probs[j], y,
                           params[i] if params else None, params[j] if params else None,
                           feats[i] if feats else None, feats[j] if feats else None, statistics,
                           task=task)
            rows.append({"a": names[i], "b": names[j], **s})
    return rows

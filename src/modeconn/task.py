"""The task: what a model's outputs are scored against — its loss, predictions and metrics.

Everything that turns outputs and targets into a number goes through a `Task`: the training
steps (`loss`), the evaluation engine (`totals`, `stacked_totals`, `metrics`), the Hessian
(`loss`), ensembles (`probabilities`, `ensemble_scores`). Classification (cross-entropy,
accuracy) is the default, `CLASSIFICATION`; another task (multi-label: BCE, F1, mAP) is one
subclass here, and every operation that takes `task=` then speaks it.

Evaluation accumulates, batch by batch, the sums `totals` returns (one value per statistic;
`stacked_totals` does it for P points at once) and turns them into the metrics with `metrics`.
A metric that is not a mean over samples (mAP) needs its task to keep per-sample scores in its
totals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


class Task(ABC):
    """Loss, prediction and metrics of one kind of supervised task: a subclass defines
    `losses`, `predict`, `probabilities` and `ensemble_scores` (and, for metrics beyond the mean
    loss, `totals` and `metrics`).

    Outputs are the model's (B, ...) outputs for a batch of B samples with targets `y`; stacked
    outputs (P, B, ...) are those of P parameter points on the same batch.
    """

    name = "task"
    metric_names: tuple[str, ...] = ("loss",)  # the keys of `metrics`, loss first

    @abstractmethod
    def losses(self, out: Tensor, y: Tensor) -> Tensor:
        """The loss of each sample of a batch (differentiable)."""

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean loss of a batch (differentiable): what training minimises."""
        return self.losses(out, y).mean()

    def loss_sum(self, out: Tensor, y: Tensor) -> Tensor:
        """Loss summed over a batch."""
        return self.losses(out, y).sum()

    @abstractmethod
    def predict(self, out: Tensor) -> Tensor:
        """Predicted targets."""

    @abstractmethod
    def probabilities(self, out: Tensor) -> Tensor:
        """Predicted probabilities (what an ensemble averages)."""

    def totals(self, out: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Sums over one model's batch that `metrics` turns into the metrics."""
        return {"loss": self.loss_sum(out, y).double()}

    def stacked_totals(self, out: Tensor, y: Tensor) -> dict[str, Tensor]:
        """`totals` of each of P points for stacked outputs (P, B, ...): (P,) tensors."""
        per = [self.totals(o, y) for o in out]
        return {k: torch.stack([p[k] for p in per]) for k in per[0]}

    def metrics(self, totals: Mapping[str, Tensor], n: int) -> dict[str, float]:
        """The metrics of `n` samples from their accumulated totals."""
        n = max(n, 1)
        return {k: v.item() / n for k, v in totals.items()}

    @abstractmethod
    def ensemble_scores(self, probs: Tensor, y: Tensor, bins: int = 15) -> dict[str, float]:
        """Scores of predicted probabilities `probs` (N, ...) against `y` (for ensembles)."""


class Classification(Task):
    """Single-label classification: cross-entropy on logits, argmax prediction, accuracy."""

    name = "classification"
    metric_names = ("loss", "acc")

    def losses(self, out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out, y, reduction="none")

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out, y)

    def loss_sum(self, out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out, y, reduction="sum")

    def predict(self, out: Tensor) -> Tensor:
        return out.argmax(-1)

    def probabilities(self, out: Tensor) -> Tensor:
        return out.softmax(-1)

    def totals(self, out: Tensor, y: Tensor) -> dict[str, Tensor]:
        return {"loss": self.loss_sum(out, y).double(), "acc": (self.predict(out) == y).sum()}

    def stacked_totals(self, out: Tensor, y: Tensor) -> dict[str, Tensor]:
        p = len(out)
        loss = self.losses(out.flatten(0, 1), y.repeat(p)).view(p, -1).double().sum(1)
        return {"loss": loss, "acc": (self.predict(out) == y).sum(1)}

    def ensemble_scores(self, probs: Tensor, y: Tensor, bins: int = 15) -> dict[str, float]:
        """Accuracy, NLL, Brier score and ECE of class probabilities (N, C)."""
        p = probs.double()
        conf, pred = p.max(-1)
        correct = (pred == y).double()
        onehot = F.one_hot(y, p.shape[-1]).double()
        return {
            "acc": float(correct.mean()),
            "nll": float(-p.gather(1, y[:, None]).clamp_min(1e-12).log().mean()),
            "brier": float(((p - onehot) ** 2).sum(1).mean()),
            "ece": expected_calibration_error(conf, correct, bins),
        }


def expected_calibration_error(conf: Tensor, correct: Tensor, bins: int = 15) -> float:
    """Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over equal-width confidence bins (right-closed)."""
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype)
    ece = conf.new_zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.double().mean() * (correct[mask].mean() - conf[mask].mean()).abs()
    return float(ece)


CLASSIFICATION = Classification()

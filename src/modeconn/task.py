"""The task: what a model's outputs are scored against — its loss, predictions and metrics.

Everything that turns outputs and targets into a number goes through a `Task`: the training
steps (`loss`), the evaluation engine (`totals`, `stacked_totals`, `metrics`), the Hessian
(`loss`), ensembles (`probabilities`, `ensemble_scores`). Classification (cross-entropy,
accuracy) is the default, `CLASSIFICATION`; multi-label (`MULTILABEL`: binary cross-entropy,
micro/macro F1, mAP) and language modelling (`LANGUAGE_MODEL`: next-token cross-entropy and
accuracy over every position of a sequence) are the others, and every operation that takes
`task=` speaks all three. A dataset
names its task (`TASKS`), so jobs take it from the data they evaluate.

Each task has one *score*, the accuracy-like metric in [0, 1] that errors, barriers and ensemble
gains are measured with (`score`: accuracy; micro-F1 for multi-label, whose "error" is
1 − micro-F1, ALGORITHMS.md §9).

Evaluation accumulates, batch by batch, the totals `totals` returns (sums, one value per
statistic; `stacked_totals` does it for P points at once) with `accumulate`, and turns them into
the metrics with `metrics`. A metric that is not a mean over samples (mAP) keeps per-sample scores
in its totals, which `accumulate` concatenates.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class Task(ABC):
    """Loss, prediction and metrics of one kind of supervised task: a subclass defines
    `losses`, `predict`, `probabilities`, `decisions` and `ensemble_scores` (and, for metrics
    beyond the mean loss, `totals` and `metrics`).

    Outputs are the model's (B, ...) outputs for a batch of B samples with targets `y`; stacked
    outputs (P, B, ...) are those of P parameter points on the same batch.
    """

    name = "task"
    metric_names: tuple[str, ...] = ("loss",)  # the keys of `metrics`, loss first
    score = "acc"  # the accuracy-like metric in [0, 1] (error = 1 − score)
    concatenated: tuple[str, ...] = ()  # totals kept per sample (concatenated, not summed)
    labelwise = False  # whether `per_label` scores labels one by one

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

    def accumulate(self, totals: dict[str, Tensor] | None, batch: dict[str, Tensor]
                   ) -> dict[str, Tensor]:
        """Running totals over batches: sums, and per-sample entries (`concatenated`) joined
        along the sample axis (the second-to-last: (B, L) or (P, B, L))."""
        if totals is None:
            return batch
        return {k: torch.cat([v, batch[k]], -2) if k in self.concatenated else v + batch[k]
                for k, v in totals.items()}

    def metrics(self, totals: Mapping[str, Tensor], n: int) -> dict[str, float]:
        """The metrics of `n` samples from their accumulated totals."""
        n = max(n, 1)
        return {k: v.item() / n for k, v in totals.items()}

    @abstractmethod
    def decisions(self, probs: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int]:
        """(predicted, true) discrete decisions as flat integer vectors and the number of
        categories: what prediction agreement and error overlap between models compare."""

    def per_label(self, probs: Tensor, y: Tensor) -> list[dict[str, float]] | None:
        """Per-label scores of probabilities (N, L) (multi-label: AP, F1); None when the task
        has no labels to score one by one."""
        return None

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

    def decisions(self, probs: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int]:
        return probs.argmax(-1), y, probs.shape[-1]

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


class MultiLabel(Task):
    """Multi-label classification (ALGORITHMS.md §9): the mean binary cross-entropy with logits
    over labels, a label predicted when its sigmoid probability exceeds `threshold` (0.5),
    micro- and macro-averaged F1 at that threshold and mAP, the mean over labels of
    scikit-learn's average precision. Targets are multi-hot (N, L) (any dtype; > 0.5 is a
    positive).

    Labels with no positive among the evaluated samples are left out of mAP (their average
    precision is undefined; scikit-learn would count it as 0 with a warning). Macro F1 follows
    scikit-learn's `f1_score(average="macro", zero_division=0)`: a label never present and never
    predicted scores 0.
    """

    name = "multilabel"
    metric_names = ("loss", "f1", "macro_f1", "map")
    score = "f1"
    concatenated = ("probs", "targets")
    labelwise = True

    def __init__(self, threshold: float = 0.5):
        if not 0 < threshold < 1:
            raise ValueError(f"the decision threshold must lie in (0, 1), got {threshold}")
        self.threshold = threshold

    def losses(self, out: Tensor, y: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(out, y.to(out.dtype), reduction="none").mean(-1)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(out, y.to(out.dtype))

    def predict(self, out: Tensor) -> Tensor:
        return out.sigmoid() > self.threshold

    def probabilities(self, out: Tensor) -> Tensor:
        return out.sigmoid()

    def totals(self, out: Tensor, y: Tensor) -> dict[str, Tensor]:
        probs, t = out.sigmoid(), y > 0.5
        p = probs > self.threshold
        return {"loss": self.loss_sum(out, y).double(), "tp": (p & t).sum(-2),
                "fp": (p & ~t).sum(-2), "fn": (~p & t).sum(-2), "probs": probs.float(),
                "targets": t.expand_as(p).to(torch.uint8)}

    def stacked_totals(self, out: Tensor, y: Tensor) -> dict[str, Tensor]:
        probs, t = out.sigmoid(), y > 0.5
        p = probs > self.threshold
        loss = F.binary_cross_entropy_with_logits(
            out, y.to(out.dtype).expand_as(out), reduction="none").mean(-1).double().sum(-1)
        return {"loss": loss, "tp": (p & t).sum(-2), "fp": (p & ~t).sum(-2),
                "fn": (~p & t).sum(-2), "probs": probs.float(),
                "targets": t.expand_as(p).to(torch.uint8)}

    def metrics(self, totals: Mapping[str, Tensor], n: int) -> dict[str, float]:
        tp, fp, fn = (totals[k].long() for k in ("tp", "fp", "fn"))
        return {"loss": totals["loss"].item() / max(n, 1),
                "f1": _f1(int(tp.sum()), int(fp.sum()), int(fn.sum())),
                "macro_f1": sum(_f1(*c) for c in zip(tp.tolist(), fp.tolist(), fn.tolist()))
                / max(len(tp), 1),
                "map": mean_average_precision(totals["probs"], totals["targets"])}

    def decisions(self, probs: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int]:
        return (probs > self.threshold).long().flatten(), (y > 0.5).long().flatten(), 2

    def per_label(self, probs: Tensor, y: Tensor) -> list[dict[str, float]]:
        from sklearn.metrics import average_precision_score

        probs, y = probs.detach().cpu(), y.detach().cpu()
        p, t = probs > self.threshold, y > 0.5
        out = []
        for j in range(t.shape[-1]):
            pos = int(t[:, j].sum())
            tp, fp, fn = (int((a & b).sum()) for a, b in ((p[:, j], t[:, j]),
                                                         (p[:, j], ~t[:, j]),
                                                         (~p[:, j], t[:, j])))
            ap = float("nan") if not pos else float(
                average_precision_score(t[:, j].numpy(), probs[:, j].double().numpy()))
            out.append({"label": j, "positives": pos, "ap": ap, "f1": _f1(tp, fp, fn)})
        return out

    def ensemble_scores(self, probs: Tensor, y: Tensor, bins: int = 15) -> dict[str, float]:
        """Micro/macro F1, mAP, NLL (mean binary cross-entropy of the probabilities), Brier
        score (mean squared error per label) and ECE per label (binary calibration of each
        label's probability, averaged over labels) of probabilities (N, L)."""
        p, t = probs.double().clamp(1e-12, 1 - 1e-12), (y > 0.5)
        pred = p > self.threshold
        tp, fp, fn = ((pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0))
        tf = t.double()
        return {
            "f1": _f1(int(tp.sum()), int(fp.sum()), int(fn.sum())),
            "macro_f1": sum(_f1(*c) for c in zip(tp.tolist(), fp.tolist(), fn.tolist()))
            / max(t.shape[-1], 1),
            "map": mean_average_precision(p, t),
            "nll": float(-(tf * p.log() + (1 - tf) * (1 - p).log()).mean()),
            "brier": float(((p - tf) ** 2).mean()),
            "ece": sum(expected_calibration_error(p[:, j], tf[:, j], bins)
                       for j in range(p.shape[-1])) / max(p.shape[-1], 1),
        }


class LanguageModel(Task):
    """Next-token prediction: outputs are logits (B, T, V) over a vocabulary of V tokens at each
    of T positions, targets token ids (B, T). A sequence's loss is the mean cross-entropy over its
    tokens; its score, token accuracy ("acc"), the share of positions whose argmax is the next
    token; "ppl" is the perplexity exp(mean loss). Every sequence of a dataset has the same
    length, so means over sequences are means over tokens. Ensembles average the token
    probabilities (B, T, V) and are scored like a classifier over all N·T positions."""

    name = "language-model"
    metric_names = ("loss", "acc", "ppl")

    def losses(self, out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out.transpose(1, -1), y, reduction="none").mean(-1)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out.flatten(0, -2), y.flatten())

    def predict(self, out: Tensor) -> Tensor:
        return out.argmax(-1)

    def probabilities(self, out: Tensor) -> Tensor:
        return out.softmax(-1)

    def totals(self, out: Tensor, y: Tensor) -> dict[str, Tensor]:
        return {"loss": self.loss_sum(out, y).double(),
                "acc": (self.predict(out) == y).double().mean(-1).sum()}

    def stacked_totals(self, out: Tensor, y: Tensor) -> dict[str, Tensor]:
        p = len(out)
        loss = self.losses(out.flatten(0, 1), y.repeat(p, 1)).view(p, -1).double().sum(1)
        return {"loss": loss, "acc": (self.predict(out) == y).double().mean(-1).sum(-1)}

    def metrics(self, totals: Mapping[str, Tensor], n: int) -> dict[str, float]:
        n = max(n, 1)
        loss = totals["loss"].item() / n
        return {"loss": loss, "acc": totals["acc"].item() / n,
                "ppl": math.exp(loss) if loss < 700 else math.inf}

    def decisions(self, probs: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int]:
        return probs.argmax(-1).flatten(), y.flatten(), probs.shape[-1]

    def ensemble_scores(self, probs: Tensor, y: Tensor, bins: int = 15) -> dict[str, float]:
        """Token accuracy, NLL, Brier score and ECE of token probabilities (N, T, V), over all
        N·T positions."""
        return CLASSIFICATION.ensemble_scores(probs.flatten(0, -2), y.flatten(), bins)


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 = 2 TP / (2 TP + FP + FN), 0 when there is nothing to score (scikit-learn's
    zero_division=0)."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def mean_average_precision(probs: Tensor, targets: Tensor, labels: str = "all") -> float:
    """Macro mean of scikit-learn's average precision of probabilities (N, L) against multi-hot
    targets (N, L).

    ``labels="all"`` (the default, scikit-learn's and torchmetrics' definition): every label
    counts, and one with no positive in the evaluated set has average precision 0.
    ``labels="present"``: the mean over the labels with at least one positive only (what
    modeconn reported before 0.2; nan when no label has one)."""
    from sklearn.metrics import average_precision_score

    if labels not in ("all", "present"):
        raise ValueError(f"labels must be 'all' or 'present', not {labels!r}")
    targets, probs = targets.detach().cpu(), probs.detach().cpu()  # scikit-learn: NumPy
    t = (targets > 0.5).numpy() if targets.dtype.is_floating_point else targets.bool().numpy()
    p = probs.double().numpy()
    keep = t.any(0)
    if labels == "present":
        if not keep.any():
            return float("nan")
        return float(average_precision_score(t[:, keep], p[:, keep], average="macro"))
    # scikit-learn warns for each label without positives and scores it 0: the same, quietly
    ap = np.zeros(t.shape[1])
    if keep.any():
        ap[keep] = average_precision_score(t[:, keep], p[:, keep], average=None)
    return float(ap.mean()) if len(ap) else float("nan")


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
MULTILABEL = MultiLabel()
LANGUAGE_MODEL = LanguageModel()
TASKS: dict[str, Task] = {"classification": CLASSIFICATION, "multilabel": MULTILABEL,
                          "language-model": LANGUAGE_MODEL}


def score_of(metrics: Mapping[str, object]) -> str:
    """The score key a metrics row or file holds ('acc', else multi-label's 'f1')."""
    return "acc" if "acc" in metrics or "f1" not in metrics else "f1"

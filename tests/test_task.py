"""The task floor (loss, predictions, metrics in one place) and the one epoch driver (schedule,
batches, divergence policy) that plain, grouped, curve and FGE training share."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeconn.data import DataSpec, prepare_subsets
from modeconn.ensemble import ensemble_metrics
from modeconn.errors import DivergedError
from modeconn.evaluate import Evaluator, evaluate
from modeconn.models import model_config
from modeconn.paths.curves import fit_curve
from modeconn.paths.landscape import hessian_trace
from modeconn.task import CLASSIFICATION, Task
from modeconn.train import (
    Stepper,
    TrainConfig,
    epoch_order,
    init_model,
    make_optimizer,
    plan_members,
    train_run,
)
from modeconn.train.loop import EpochDriver

CPU = torch.device("cpu")

# ---------------------------------------------------------------- classification


def test_classification_loss_predictions_and_metrics_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    ce = [math.log(math.exp(2) + 2) - 2, math.log(math.e + 2)]  # −log softmax of the label
    task = CLASSIFICATION
    assert task.losses(logits, y).tolist() == pytest.approx(ce)
    assert float(task.loss(logits, y)) == pytest.approx(sum(ce) / 2)
    assert float(task.loss_sum(logits, y)) == pytest.approx(sum(ce))
    assert task.predict(logits).tolist() == [0, 1]
    assert task.probabilities(logits).sum(-1).tolist() == pytest.approx([1.0, 1.0])
    metrics = task.metrics(task.totals(logits, y), len(y))
    assert list(metrics) == list(task.metric_names) == ["loss", "acc"]
    assert metrics["loss"] == pytest.approx(sum(ce) / 2) and metrics["acc"] == 0.5
    # The batched form for P points equals the points one by one (the base class's rule).
    stacked = torch.stack([logits, logits.flip(0)])
    fast, generic = task.stacked_totals(stacked, y), Task.stacked_totals(task, stacked, y)
    assert fast.keys() == generic.keys()
    for k in fast:
        assert torch.allclose(fast[k].double(), generic[k].double())


def test_classification_ensemble_scores_by_hand():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    y = torch.tensor([0, 2])
    s = CLASSIFICATION.ensemble_scores(p, y)
    assert s["acc"] == 0.5
    assert s["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    assert s["brier"] == pytest.approx((0.09 + 0.04 + 0.01 + 0.04 + 0.25 + 0.49) / 2)
    assert s["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.5)  # one sample in each of two bins
    ens = ensemble_metrics(torch.stack([p, p]), y)
    assert ens["acc"] == ens["member_acc"] == 0.5 and ens["gain_nll"] == 0.0


# ---------------------------------------------------------------- a second task, in the test


class MultiLabel(Task):
    """Multi-label: binary cross-entropy per label, a label is predicted when its logit > 0,
    micro-averaged F1."""

    name = "multilabel"
    metric_names = ("loss", "f1")

    def losses(self, out, y):
        return F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(-1)

    def predict(self, out):
        return out > 0

    def probabilities(self, out):
        return out.sigmoid()

    def totals(self, out, y):
        p, t = self.predict(out), y > 0.5
        return {"loss": self.loss_sum(out, y).double(), "tp": (p & t).sum(),
                "fp": (p & ~t).sum(), "fn": (~p & t).sum()}

    def metrics(self, totals, n):
        tp, fp, fn = (int(totals[k]) for k in ("tp", "fp", "fn"))
        return {"loss": totals["loss"].item() / max(n, 1),
                "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0}

    def decisions(self, probs, y):
        return (probs > 0.5).long().flatten(), (y > 0.5).long().flatten(), 2

    def ensemble_scores(self, probs, y, bins=15):
        p, t = probs > 0.5, y > 0.5
        tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
        return {"f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0}


def _multilabel_data(n=120, d=6, labels=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, labels, generator=g)
    return x, (x @ w > 0).float()


def test_a_second_task_runs_through_the_engine_the_driver_and_the_curves():
    task = MultiLabel()
    x, y = _multilabel_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # Training: the plain step and the epoch driver take the task as it is.
    cfg = TrainConfig(epochs=5, batch_size=32, lr=0.1)
    opt = make_optimizer(model.parameters(), cfg)
    stepper = Stepper(model, opt, x, y, cfg.batch_size, task=task)
    ends = []
    stepper.driver.run(cfg.epochs, lambda e: epoch_order(len(x), len(x), 0, e),
                       lambda e, b: cfg.lr, end_epoch=lambda e: ends.append(
                           evaluate(model, x, y, task=task)), quiet=True)
    assert len(ends) == 5 and ends[-1][0] < ends[0][0]  # (loss, f1) per epoch, loss falls
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    # Evaluation: the engine scores every point with the task, P points at once.
    ev = Evaluator(model, {"train": (x, y)}, task=task)
    got = ev.evaluate([start, trained])
    with torch.no_grad():
        out = model(x)
    p, t = out > 0, y > 0.5
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    assert got[1]["train"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert got[1]["train"]["loss"] == pytest.approx(
        float(F.binary_cross_entropy_with_logits(out, y)), rel=1e-6)
    assert got[1]["train"]["loss"] < got[0]["train"]["loss"]
    assert torch.allclose(ev.probabilities([trained], "train")[0], out.sigmoid())
    # Curves and the Hessian take the same task.
    curve = fit_curve(model, start, trained, x, y, TrainConfig(epochs=2, batch_size=40),
                      task=task)
    assert len(curve.path().bends) == 3
    h = hessian_trace(model, trained, x, y, probes=2, batch_size=60, task=task)
    assert math.isfinite(h["trace"])


# ---------------------------------------------------------------- the divergence policy


class _Steps:
    """A step that returns the losses given, one per call (nan where asked)."""

    def __init__(self, bad_call: int, members: int | None = None, bad_member: int = 0):
        self.calls, self.bad_call, self.members, self.bad_member = 0, bad_call, members, bad_member

    def __call__(self, idx):
        self.calls += 1
        if self.members is None:
            return torch.tensor(math.nan if self.calls == self.bad_call else 1.0)
        loss = torch.ones(self.members)
        if self.calls >= self.bad_call:  # a diverged member stays diverged
            loss[self.bad_member] = math.nan
        return loss


def _opt():
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


@pytest.mark.parametrize("check_every", [1, 4, 50])  # every step (CPU), batched (GPU)
def test_the_driver_reports_the_epoch_and_step_of_the_first_non_finite_loss(check_every):
    step = _Steps(bad_call=7)  # 3 steps per epoch: epoch 3, step 1
    driver = EpochDriver(step, _opt(), batch_size=10)
    driver.check_every = check_every
    lrs = []
    with pytest.raises(DivergedError) as e:
        driver.run(5, lambda epoch: torch.arange(25), lambda ep, b: lrs.append((ep, b)) or 0.1,
                   quiet=True)
    assert (e.value.epoch, e.value.step) == (3, 1)
    assert math.isnan(e.value.loss)
    assert lrs[:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]  # the schedule sees (epoch, step)


@pytest.mark.parametrize("check_every", [1, 4])
def test_the_driver_reports_each_grouped_member_once_and_goes_on(check_every):
    step = _Steps(bad_call=5, members=3, bad_member=1)  # 3 steps per epoch: epoch 2, step 2
    reports = []
    driver = EpochDriver(step, _opt(), batch_size=10,
                         diverged=lambda k, err: reports.append((k, err.epoch, err.step)))
    driver.check_every = check_every
    ended = []
    driver.run(3, lambda epoch: [torch.arange(25)] * 3, lambda ep, b: 0.1,
               end_epoch=lambda e: ended.append(e.number), quiet=True)
    assert ended == [1, 2, 3]  # the others train on
    assert reports[0] == (1, 2, 2) and {r[0] for r in reports} == {1}


def test_the_driver_drops_a_last_batch_of_one_sample_for_batchnorm():
    seen = []
    driver = EpochDriver(lambda idx: seen.append(len(idx)) or torch.tensor(1.0), _opt(),
                         batch_size=4, drop_single=True)
    driver.run_epoch(torch.arange(9), lambda b: 0.1)
    assert seen == [4, 4]


def _first_step_with(order, position, batch_size):
    return int((order == position).nonzero()[0, 0]) // batch_size + 1


def test_plain_training_diverges_at_the_step_of_a_nan_sample(tmp_path):
    spec = DataSpec("synthetic:n=200,test=20")
    sub = prepare_subsets(spec)[0]
    sub.train_x[37] = math.nan
    (member,) = plan_members(spec, [sub], "same", [0], "same", order_seed=3)
    cfg = model_config("mlp", sub.input_shape, 10, depth=1, width=8)
    tc = TrainConfig(epochs=2, batch_size=16)
    (res,) = train_run(cfg, [member], tc, tmp_path / "run", CPU, quiet=True)
    order = epoch_order(len(sub.train_y), member.order_size, member.order_seed, 0)
    assert res["status"] == "diverged"
    assert (res["epoch"], res["step"]) == (1, _first_step_with(order, 37, 16))


def test_grouped_training_diverges_at_the_step_of_a_nan_sample(tmp_path):
    spec = DataSpec("synthetic:n=200,test=20", shift="iid:50,50")
    subs = prepare_subsets(spec)
    subs[1] = replace(subs[1], train_x=subs[1].train_x.clone())
    subs[1].train_x[11] = math.nan
    members = plan_members(spec, subs, "same", [0], "independent", order_seed=3)
    cfg = model_config("mlp", subs[0].input_shape, 10, depth=1, width=8)
    tc = TrainConfig(epochs=2, batch_size=16)
    res = train_run(cfg, members, tc, tmp_path / "run", CPU, quiet=True, group=True)
    order = epoch_order(len(subs[1].train_y), members[1].order_size, members[1].order_seed, 0)
    assert res[0]["status"] == "complete"
    assert res[1]["status"] == "diverged"
    assert (res[1]["epoch"], res[1]["step"]) == (1, _first_step_with(order, 11, 16))
    status = json.loads((tmp_path / "run" / members[1].name / "status.json").read_text())
    assert status["step"] == res[1]["step"]


def test_curve_fitting_diverges_at_the_step_of_a_nan_sample():
    spec = DataSpec("synthetic:n=200,test=20")
    sub = prepare_subsets(spec)[0]
    cfg = model_config("mlp", sub.input_shape, 10, depth=1, width=8)
    a, b = (init_model(cfg, s).state_dict() for s in (0, 1))
    x = sub.train_x.clone()
    x[50] = math.nan
    with pytest.raises(DivergedError) as e:
        fit_curve(init_model(cfg, 0), a, b, x, sub.train_y, TrainConfig(epochs=2, batch_size=16),
                  seed=4)
    order = epoch_order(len(x), len(x), 4, 0)
    assert (e.value.epoch, e.value.step) == (1, _first_step_with(order, 50, 16))


def test_a_task_must_define_its_loss_predictions_probabilities_and_ensemble_scores():
    with pytest.raises(TypeError, match="abstract"):
        Task()
    # The second task's ensemble scores reach ensembles without any library change.
    x, y = _multilabel_data()
    probs = torch.stack([y * 0.9 + 0.05, (1 - y) * 0.9 + 0.05])  # one right member, one wrong
    scores = ensemble_metrics(probs, y, task=MultiLabel())
    assert scores["member_f1"] == pytest.approx(0.5) and scores["size"] == 2
    assert "gain_acc" not in scores

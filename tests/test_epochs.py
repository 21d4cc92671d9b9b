"""The one epoch driver (`modeconn.train.loop`) on tiny problems with known answers: the learning
rate of every step under a schedule, the batches an epoch is cut into and the order drawn for a
seed, the divergence policy (the epoch and step reported, on CPU and with the batched device
check), and the progress bar's count."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modeconn.errors import DivergedError
from modeconn.train import epoch_order
from modeconn.train import loop as epochs_module
from modeconn.train.loop import Epoch, EpochDriver, check_finite, scheduled_lr, set_lr
from modeconn.train.schedules import Schedule


def _opt(groups: int = 1) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))]} for _ in range(groups)],
                           lr=1.0)


class _Recorder:
    """A step that records the batch it got and the learning rate it ran with."""

    def __init__(self, opt, losses=None):
        self.opt, self.losses, self.batches, self.lrs = opt, losses or {}, [], []

    def __call__(self, idx):
        self.batches.append(idx.tolist() if torch.is_tensor(idx) else [i.tolist() for i in idx])
        self.lrs.append(self.opt.param_groups[0]["lr"])
        return torch.tensor(self.losses.get(len(self.batches), 1.0))


# ---------------------------------------------------------------- learning rate per step


def test_set_lr_sets_every_parameter_group():
    opt = _opt(groups=3)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25, 0.25]


def test_the_lr_sequence_of_a_cosine_schedule():
    # 2 epochs of 2 steps: t = 0, 1/4, 1/2, 3/4 of the run; lr = 0.1 · (1 + cos πt) / 2.
    opt = _opt()
    step = _Recorder(opt)
    driver = EpochDriver(step, opt, batch_size=2)
    driver.run(2, lambda e: torch.arange(4), scheduled_lr(0.1, Schedule("cosine"), 2, 2),
               quiet=True)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * t)) for t in (0, 0.25, 0.5, 0.75)]
    assert step.lrs == pytest.approx(expected, rel=1e-15)
    assert step.lrs[0] == 0.1 and step.lrs[2] == pytest.approx(0.05, rel=1e-15)


def test_the_lr_sequence_of_a_step_schedule_with_warm_up():
    # One epoch of warm-up over 4 steps per epoch: 0.25, 0.5, 0.75 of the peak (the first step
    # runs at ~0, not 0), then the peak, then ×0.1 from epoch 2 (the milestone).
    lr_at = scheduled_lr(2.0, Schedule("step", milestones=(2,), gamma=0.1, warmup=1.0), 3, 4)
    opt = _opt()
    step = _Recorder(opt)
    EpochDriver(step, opt, batch_size=1).run(3, lambda e: torch.arange(4), lr_at, quiet=True)
    assert step.lrs[0] == pytest.approx(2.0 * 1e-12)
    assert step.lrs[1:4] == pytest.approx([0.5, 1.0, 1.5], rel=1e-10)
    assert step.lrs[4:8] == [2.0] * 4
    assert step.lrs[8:] == pytest.approx([0.2] * 4, rel=1e-15)


def test_run_epoch_returns_the_last_lr_used_and_the_schedule_sees_epoch_and_step():
    opt = _opt()
    seen = []
    driver = EpochDriver(_Recorder(opt), opt, batch_size=3)
    lr = driver.run(2, lambda e: torch.arange(7),
                    lambda e, b: seen.append((e, b)) or 0.1 * (e + 1) + 0.01 * b, quiet=True)
    assert lr is None
    assert seen == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]  # ceil(7 / 3) = 3 steps
    assert driver.run_epoch(torch.arange(7), lambda b: 0.5 - 0.1 * b) == pytest.approx(0.3)
    assert math.isnan(driver.run_epoch(torch.arange(0), lambda b: 0.5))  # no step, no lr


def test_end_epoch_sees_each_epoch_and_may_stop_the_run():
    opt = _opt()
    step = _Recorder(opt)
    ended: list[Epoch] = []
    EpochDriver(step, opt, batch_size=2).run(
        5, lambda e: torch.arange(4), lambda e, b: 0.1 * (b + 1),
        end_epoch=lambda ep: ended.append(ep) or ep.number == 2, quiet=True)
    assert [(e.index, e.number, e.lr) for e in ended] == [(0, 1, 0.2), (1, 2, 0.2)]
    assert len(step.batches) == 4 and all(e.seconds >= 0 for e in ended)


def test_a_resumed_run_starts_at_its_epoch():
    opt = _opt()
    orders = []
    EpochDriver(_Recorder(opt), opt, batch_size=4).run(
        4, lambda e: orders.append(e) or torch.arange(4), lambda e, b: 0.1, start=2, quiet=True)
    assert orders == [2, 3]


# ---------------------------------------------------------------- batches


def test_an_epoch_is_cut_into_consecutive_batches_of_its_order():
    opt = _opt()
    step = _Recorder(opt)
    after = []
    EpochDriver(step, opt, batch_size=3).run_epoch(
        torch.tensor([4, 0, 6, 2, 5, 1, 3]), lambda b: 0.1, epoch=5,
        after_step=lambda e, b: after.append((e, b)))
    assert step.batches == [[4, 0, 6], [2, 5, 1], [3]]
    assert after == [(5, 0), (5, 1), (5, 2)]


def test_a_last_batch_of_one_is_dropped_only_for_batchnorm_models():
    for drop, expected in ((True, [[0, 1, 2], [3, 4, 5]]), (False, [[0, 1, 2], [3, 4, 5], [6]])):
        opt = _opt()
        step = _Recorder(opt)
        EpochDriver(step, opt, batch_size=3, drop_single=drop).run_epoch(torch.arange(7),
                                                                         lambda b: 0.1)
        assert step.batches == expected


def test_grouped_orders_are_cut_member_by_member_at_the_same_steps():
    opt = _opt()
    step = _Recorder(opt)
    orders = [torch.tensor([2, 0, 1]), torch.tensor([5, 4, 3])]
    EpochDriver(step, opt, batch_size=2, drop_single=True).run_epoch(orders, lambda b: 0.1)
    assert step.batches == [[[2, 0], [5, 4]], [[1], [3]]]  # a grouped batch of one is kept


def test_the_order_drawn_for_a_seed_is_fixed_and_shared_by_subsets():
    a = epoch_order(8, 8, seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(8))
    assert torch.equal(a, epoch_order(8, 8, seed=3, epoch=0))  # the same seed, the same order
    assert not torch.equal(a, epoch_order(8, 8, seed=3, epoch=1))  # each epoch its own
    assert not torch.equal(a, epoch_order(8, 8, seed=4, epoch=0))
    g = torch.Generator().manual_seed(3 * 1_000_003 + 0)  # resumable: a pure function of both
    assert torch.equal(a, torch.randperm(8, generator=g))
    # A member training on the first 5 samples visits them in the full order, skipping the rest.
    assert epoch_order(5, 8, seed=3, epoch=0).tolist() == [int(i) for i in a if i < 5]


# ---------------------------------------------------------------- divergence


@pytest.mark.parametrize("check_every,steps_run", [(1, 5), (2, 5), (3, 6), (50, 6)])
def test_divergence_is_raised_at_the_first_non_finite_step(check_every, steps_run):
    opt = _opt()
    # 3 steps per epoch; the 5th step overall is epoch 2 step 2, and a later inf is not reported.
    step = _Recorder(opt, losses={5: math.inf, 6: math.nan})
    driver = EpochDriver(step, opt, batch_size=2)
    driver.check_every = check_every  # (batched: as on a GPU)
    with pytest.raises(DivergedError) as e:
        driver.run(4, lambda e: torch.arange(6), lambda e, b: 0.1, quiet=True)
    assert (e.value.epoch, e.value.step, e.value.loss) == (2, 2, math.inf)
    assert str(e.value) == ("training diverged at epoch 2 step 2 (loss inf); lower the learning "
                            "rate or add warm-up")
    # On CPU training stops at once; the device check finds it at its next window, by the end of
    # the epoch at the latest.
    assert len(step.batches) == steps_run


def test_the_device_check_waits_for_every_gpu_check_every_steps():
    assert EpochDriver(lambda i: i, _opt(), batch_size=1).check_every == 1
    assert EpochDriver(lambda i: i, _opt(), batch_size=1, device="cuda:0",
                       gpu_check_every=7).check_every == 7


def test_check_finite_names_the_first_bad_step_of_a_window():
    losses = torch.tensor([1.0, 2.0, math.nan, math.inf, 3.0])
    check_finite(losses, 0, 2, epoch=0)  # the window before the nan is fine
    with pytest.raises(DivergedError) as e:
        check_finite(losses, 1, 5, epoch=4, offset=10)
    assert (e.value.epoch, e.value.step) == (5, 13) and math.isnan(e.value.loss)


def test_a_grouped_member_that_diverges_is_reported_and_the_others_go_on():
    opt = _opt()
    calls = []

    def step(idx):
        calls.append(len(calls))
        return torch.tensor([1.0, math.nan if len(calls) == 2 else 1.0, 1.0])

    reports = []
    driver = EpochDriver(step, opt, batch_size=2,
                         diverged=lambda k, err: reports.append((k, err.epoch, err.step)))
    driver.run(2, lambda e: [torch.arange(4)] * 3, lambda e, b: 0.1, quiet=True)
    assert reports == [(1, 1, 2)] and len(calls) == 4
    # Without a `diverged` callback a member's non-finite loss stops the run.
    with pytest.raises(DivergedError, match="epoch 1 step 2"):
        calls.clear()
        EpochDriver(step, opt, batch_size=2).run(2, lambda e: [torch.arange(4)] * 3,
                                                 lambda e, b: 0.1, quiet=True)


# ---------------------------------------------------------------- progress


class _Bar:
    def __init__(self, **kw):
        self.kw, self.n, self.closed = kw, kw["initial"], False

    def update(self, k):
        self.n += k

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    made = []
    monkeypatch.setattr(epochs_module, "progress", lambda **kw: made.append(_Bar(**kw)) or made[-1])
    return made


def test_the_progress_bar_counts_epochs_from_the_resumed_one(bars):
    opt = _opt()
    EpochDriver(_Recorder(opt), opt, batch_size=4).run(
        5, lambda e: torch.arange(4), lambda e, b: 0.1, start=2, desc="fit", quiet=True)
    (bar,) = bars
    assert bar.kw == {"total": 5, "initial": 2, "desc": "fit", "quiet": True}
    assert bar.n == 5 and bar.closed


def test_the_progress_bar_is_closed_when_training_diverges(bars):
    opt = _opt()
    with pytest.raises(DivergedError):
        EpochDriver(_Recorder(opt, losses={3: math.nan}), opt, batch_size=2).run(
            3, lambda e: torch.arange(4), lambda e, b: 0.1)
    (bar,) = bars
    assert bar.n == 1 and bar.closed and bar.kw["desc"] == "train" and not bar.kw["quiet"]

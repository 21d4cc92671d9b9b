"""The epoch driver: the one loop over epochs and steps that every trainer runs.

Plain training (`Stepper`, below), grouped training (`runs.train_group`), curve fitting
(`paths.curves.fit_curve`) and fast geometric ensembling (`fge.fge_snapshots`) each give only their
optimisation step and what they do after an epoch; the driver owns the rest: the order of each
epoch cut into batches (a last batch of one sample is dropped for BatchNorm models, which cannot
train on one sample), the learning rate of every step from the schedule and its warm-up, the
divergence policy and the progress bar.

Divergence policy: a non-finite batch loss is a `DivergedError` with the 1-based epoch and step
of the first such loss. Losses are checked every step on CPU; on other devices every
`gpu_check_every` steps and at the end of each epoch, so that training does not wait on the
device each step. A step may return one loss per member (grouped training): then each member's
first non-finite loss is reported to `diverged(member, error)` and training goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import tuning
from ..errors import DivergedError
from ..evaluate import nhwc, prefers_channels_last
from ..runtime import progress
from ..task import CLASSIFICATION, Task
from .schedules import Schedule

Order = Tensor | Sequence[Tensor]  # the positions of an epoch; one order per member when grouped
LrAt = Callable[[int, int], float]  # (epoch, step), both from 0 → learning rate


def scheduled_lr(lr: float, schedule: Schedule, epochs: int, steps: int) -> LrAt:
    """The learning rate of step `b` of `epoch` for peak `lr` under `schedule` (with warm-up)."""
    return lambda epoch, b: lr * schedule.factor(epoch, b / steps, epochs)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of `opt`."""
    for group in opt.param_groups:
        group["lr"] = lr


@dataclass
class Epoch:
    """An epoch just run: its 0-based index, the last learning rate used and its start time."""

    index: int
    lr: float
    started: float  # time.perf_counter() when the epoch began

    @property
    def number(self) -> int:
        """The 1-based epoch number (as logged)."""
        return self.index + 1

    @property
    def seconds(self) -> float:
        """Seconds since the epoch began."""
        return time.perf_counter() - self.started


def check_finite(losses: Tensor, lo: int, hi: int, epoch: int, offset: int = 0) -> None:
    """Raise DivergedError at the first non-finite loss of steps lo … hi − 1 (+ `offset`)."""
    bad = ~torch.isfinite(losses[lo:hi])
    if bad.any():
        step = lo + int(bad.nonzero()[0, 0])
        raise DivergedError(epoch + 1, offset + step + 1, float(losses[step]))


class EpochDriver:
    """Runs epochs of `step(batch) -> loss` along given orders with the optimizer's learning
    rate set from a schedule before each step (see the module docstring for the policies).

    `step` receives the positions of a batch (a list of them, one per member, when the order is a
    list) and returns the batch loss, detached: a scalar, or one loss per member with
    `diverged(member, error)` given.
    """

    def __init__(self, step: Callable[[Order], Tensor], optimizer: torch.optim.Optimizer, *,
                 batch_size: int, device: torch.device | str = "cpu", drop_single: bool = False,
                 gpu_check_every: int = 50,
                 diverged: Callable[[int, DivergedError], None] | None = None):
        self.step, self.optimizer, self.batch_size = step, optimizer, batch_size
        self.drop_single = drop_single  # BatchNorm cannot train on one sample
        self.check_every = 1 if torch.device(device).type == "cpu" else gpu_check_every
        self.diverged = diverged

    def run_epoch(self, order: Order, lr_at: Callable[[int], float], epoch: int = 0,
                  after_step: Callable[[int, int], None] | None = None) -> float:
        """Run the steps of `epoch` (from 0) along `order` in batches, with learning rate
        `lr_at(step)`, then `after_step(epoch, step)`; return the last learning rate used.

        Raises DivergedError (1-based epoch and step) at the first non-finite scalar loss."""
        bs = self.batch_size
        grouped = not torch.is_tensor(order)
        steps = math.ceil(len(order[0] if grouped else order) / bs)
        losses: Tensor | None = None  # kept between checks off the CPU
        checked = done = 0
        lr = math.nan
        for b in range(steps):
            sl = slice(b * bs, (b + 1) * bs)
            idx = [o[sl] for o in order] if grouped else order[sl]
            if self.drop_single and not grouped and len(idx) == 1:
                break
            lr = lr_at(b)
            set_lr(self.optimizer, lr)
            loss = self.step(idx)
            if self.check_every == 1:
                self._check(loss[None], b, epoch)
            else:
                if losses is None:
                    losses = loss.new_empty((steps, *loss.shape))
                losses[b] = loss
                done = b + 1
                if done - checked >= self.check_every:
                    self._check(losses[checked:done], checked, epoch)
                    checked = done
            if after_step is not None:
                after_step(epoch, b)
        if losses is not None and done > checked:
            self._check(losses[checked:done], checked, epoch)
        return lr

    def _check(self, losses: Tensor, first: int, epoch: int) -> None:
        """Apply the divergence policy to the losses of steps first, first + 1, … of `epoch`."""
        if losses.shape == (1,):  # the check of one step's scalar loss
            value = losses.item()
            if not math.isfinite(value):
                raise DivergedError(epoch + 1, first + 1, value)
            return
        if losses.dim() == 1:
            check_finite(losses, 0, len(losses), epoch, first)
            return
        bad = ~torch.isfinite(losses)
        for k in bad.any(0).nonzero().flatten().tolist():  # (steps, members)
            step = int(bad[:, k].nonzero()[0, 0])
            error = DivergedError(epoch + 1, first + step + 1, float(losses[step, k]))
            if self.diverged is None:
                raise error
            self.diverged(k, error)

    def run(self, epochs: int, order_of: Callable[[int], Order], lr_at: LrAt, *, start: int = 0,
            end_epoch: Callable[[Epoch], bool | None] | None = None, desc: str = "train",
            quiet: bool = False, after_step: Callable[[int, int], None] | None = None) -> None:
        """Run epochs `start` … `epochs` − 1 with the order `order_of(epoch)` and learning rates
        `lr_at(epoch, step)`; after each, `end_epoch(epoch)`, which stops the run by returning
        True. A progress bar counts the epochs."""
        bar = progress(total=epochs, initial=start, desc=desc, quiet=quiet)
        try:
            for epoch in range(start, epochs):
                started = time.perf_counter()
                lr = self.run_epoch(order_of(epoch), lambda b, e=epoch: lr_at(e, b), epoch,
                                    after_step)
                if end_epoch is not None and end_epoch(Epoch(epoch, lr, started)):
                    break
                bar.update(1)
        finally:
            bar.close()


class Stepper:
    """The inner training loop on in-memory tensors, shared by `train_member`, FGE and the
    benchmarks.

    `step(idx)` does one optimisation step on the samples at positions `idx`: gather the batch,
    forward, the task's loss (cross-entropy), backward, optimizer step. `run_epoch` runs the steps
    of one epoch through the epoch driver (`EpochDriver`: batches along `order`, the
    learning rate `lr_at(step)`, the divergence check). A model with 2-D convolutions on CPU
    trains in channels-last layout where that is proven right (`prefers_channels_last` with
    gradients): model, inputs and resumed optimizer state are moved in place, same values.
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor, batch_size: int, drop_single: bool = False,
                 gpu_check_every: int = 50, *, task: Task = CLASSIFICATION):
        if prefers_channels_last(model, x, gradients=True):
            model.to(memory_format=torch.channels_last)
            x = nhwc(x)
            # Resumed optimizer state in the layout of its parameter, as a fresh run makes it:
            # elementwise kernels round alike only over tensors of one layout.
            for param, state in opt.state.items():
                for key, value in state.items():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        state[key] = torch.empty_like(param).copy_(value)
        self.model, self.opt, self.x, self.y, self.task = model, opt, x, y, task
        self.batch_size = batch_size
        # index_select or indexing: the same rows, whichever this machine gathers faster.
        self._gather = tuning.choice("gather")
        self.driver = EpochDriver(self.step, opt, batch_size=batch_size, device=x.device,
                                  drop_single=drop_single, gpu_check_every=gpu_check_every)

    @property
    def drop_single(self) -> bool:
        """Whether a last batch of one sample is skipped (BatchNorm cannot train on one)."""
        return self.driver.drop_single

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group."""
        set_lr(self.opt, lr)

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        """One step on the samples at `idx`; return the batch loss (before the update)."""
        x = self.x.index_select(0, idx) if self._gather == "index_select" else self.x[idx]
        loss = self.task.loss(self.model(x), self.y.index_select(0, idx))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def run_epoch(self, order: torch.Tensor, lr_at: Callable[[int], float],
                  epoch: int = 0) -> float:
        """Train on `order` in batches; return the last learning rate used.

        Raises DivergedError (1-based epoch and step) at the first non-finite batch loss.
        """
        return self.driver.run_epoch(order, lr_at, epoch)

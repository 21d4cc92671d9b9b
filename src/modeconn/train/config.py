"""The training settings and what they build: the optimizer, a seeded model, each epoch's batch
order and the learning rate of every step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..models import build_model, has_batchnorm
from ..options import Options, option
from .loop import LrAt, scheduled_lr
from .schedules import parse_schedule

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Options):
    """Optimisation settings shared by every member of a run (checked when built)."""

    job = "training"
    epochs: int = option(20, "passes over the training data", low=1)
    batch_size: int = option(64, "examples per optimisation step", low=1)
    optimizer: str = option("sgd", "optimiser", choices=OPTIMIZERS)
    lr: float = option(0.05, "peak learning rate", low=0, low_open=True)
    momentum: float = option(0.9, "SGD momentum", low=0, high=1, high_open=True)
    nesterov: bool = option(False, "Nesterov momentum (SGD only)")
    weight_decay: float = option(5e-4, "L2 penalty (decoupled for adamw)", low=0)
    schedule: str = option("constant", "constant, cosine, curve[:0], step:M1,M2[@GAMMA], "
                                       "cyclic:EPOCHS[@LOW]")
    warmup: float = option(0.0, "epochs of linear warm-up", low=0)
    save_epochs: tuple[int, ...] = option((), "also save these epochs", low=1)
    eval_batch_size: int = option(2048, "examples per evaluation batch", low=1)

    def check(self) -> None:
        super().check()
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise self.invalid("nesterov", "needs optimizer sgd with momentum > 0")
        if any(e > self.epochs for e in self.save_epochs):
            raise self.invalid("save_epochs", f"must lie in 1..{self.epochs} (the epochs)")
        if self.warmup > self.epochs:  # the learning rate would never reach its peak
            raise self.invalid("warmup", f"must be at most the {self.epochs} epoch"
                                         f"{'s' if self.epochs != 1 else ''} of training "
                                         "(lower it or raise the epochs)")
        sched = parse_schedule(self.schedule, self.warmup)
        late = [m for m in sched.milestones if m >= self.epochs]
        if late:
            raise self.invalid("schedule", f"has milestones {late} not below the {self.epochs} "
                                           "epochs, so they never take effect")


def check_trainable(model: nn.Module, batch_size: int, n: int) -> None:
    """Refuse a BatchNorm model whose batches would all hold one sample: BatchNorm cannot train
    on one sample, so such a batch is skipped (`Stepper`) and no step would ever be taken. (A
    last batch of one sample in an epoch is skipped alike; the other batches train.)"""
    if has_batchnorm(model) and min(batch_size, n) < 2:
        what = f"batch size {batch_size}" if batch_size < 2 else f"a training set of {n} sample"
        raise UsageError(f"{what} with a BatchNorm model: BatchNorm cannot train on one sample, "
                         "so no step would be taken; use batches of 2 or more (or a model without "
                         "BatchNorm)")


def noise_scale(lr: float, n: int, batch_size: int) -> float:
    """SGD noise scale g = ε·(N/B − 1) (ALGORITHMS.md §3)."""
    return lr * (n / batch_size - 1)


def epoch_order(n: int, order_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The positions visited in `epoch`: one permutation of `order_size` from (seed, epoch),
    keeping those < n, so members with the same seed traverse their subsets in the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(order_size, generator=g)
    return perm[perm < n] if order_size > n else perm


def init_model(model_cfg: dict[str, Any], seed: int) -> nn.Module:
    """Build a model with parameters drawn from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model_cfg)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named in `cfg`, with fused kernels where this torch has them (a fixed
    policy, not a measured choice: fused and foreach kernels round differently, and a run's
    numbers must not depend on a measurement)."""
    params = list(params)
    kw: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        cls = torch.optim.SGD
        kw.update(momentum=cfg.momentum, nesterov=cfg.nesterov)
    else:
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, foreach=True, **kw)


def _lr_at(cfg: TrainConfig, epoch: int, steps: int) -> Callable[[int], float]:
    """The learning rate of each step of `epoch` (what `Stepper.run_epoch` takes)."""
    lr_at = _schedule(cfg, steps)
    return lambda b: lr_at(epoch, b)


def _schedule(cfg: TrainConfig, steps: int) -> LrAt:
    """The learning rate of every step of a run of `cfg` with `steps` steps per epoch."""
    return scheduled_lr(cfg.lr, parse_schedule(cfg.schedule, cfg.warmup), cfg.epochs, steps)

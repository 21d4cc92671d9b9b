"""Fast geometric ensembling (Garipov et al. 2018, ALGORITHMS.md §7): from a trained model, train on
with a cyclic learning rate and take a snapshot at each cycle's lowest rate."""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from .errors import UsageError
from .models import has_batchnorm
from .task import CLASSIFICATION, Task
from .train import Stepper, TrainConfig, check_trainable, epoch_order, make_optimizer
from .train.loop import scheduled_lr
from .train.schedules import Schedule

_SNAPSHOT = re.compile(r"snapshot_(\d+)\.safetensors")


def snapshot_name(cycle: int) -> str:
    """File name of the snapshot taken in `cycle` (1-based)."""
    return f"snapshot_{cycle}.safetensors"


def snapshot_paths(folder: str | os.PathLike) -> list[Path]:
    """The snapshots `modeconn fge` wrote into `folder`, in cycle order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"FGE folder {folder} not found; pass the output folder of an fge run")
    found = sorted((int(m.group(1)), p) for p in folder.iterdir()
                   if (m := _SNAPSHOT.fullmatch(p.name)))
    if not found:
        raise UsageError(f"{folder} holds no snapshot_N.safetensors; pass the output folder of "
                         "an fge run")
    return [p for _, p in found]


def fge_snapshots(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor,
                  cfg: TrainConfig, cycles: int = 4, cycle_epochs: int = 2, low: float = 0.01,
                  seed: int = 0, quiet: bool = True, *,
                  task: Task = CLASSIFICATION) -> list[dict[str, Tensor]]:
    """Parameter dicts at the lowest learning rate (lr·low, mid-cycle) of each of `cycles` cycles
    of `cycle_epochs` epochs, starting from `params`; lr goes linearly lr → lr·low → lr.

    The cycles are the schedule: `cfg` gives the optimizer, lr, momentum, weight decay and batch
    size; its epochs, schedule and warm-up are not used. Raises DivergedError at a non-finite
    loss of the task (cross-entropy)."""
    if cycles < 1:
        raise UsageError(f"fge_snapshots: cycles must be at least 1, got {cycles}")
    if cycle_epochs < 1:
        raise UsageError(f"fge_snapshots: cycle_epochs must be at least 1, got {cycle_epochs}")
    if not 0 < low <= 1:
        raise UsageError(f"fge_snapshots: low (the lowest learning-rate factor) must be in (0, 1], "
                         f"got {low}")
    net = copy.deepcopy(model).to(x.device)  # one private module for the whole run
    net.load_state_dict(params)
    net.train()
    opt = make_optimizer(net.parameters(), cfg)
    sched = Schedule("cyclic", cycle=cycle_epochs, low=low)
    n = len(y)
    steps = math.ceil(n / cfg.batch_size)
    epochs = cycles * cycle_epochs
    # After the step of each cycle nearest below its middle: the step taken at the lowest rate.
    per_cycle = steps * cycle_epochs
    snap_at = {c * per_cycle + per_cycle // 2 for c in range(cycles)}
    snaps: list[dict[str, Tensor]] = []

    def after_step(epoch: int, s: int) -> None:
        if epoch * steps + s in snap_at:
            snaps.append({k: v.detach().clone() for k, v in net.state_dict().items()})

    check_trainable(net, cfg.batch_size, n)
    stepper = Stepper(net, opt, x, y, cfg.batch_size, drop_single=has_batchnorm(net), task=task)
    stepper.driver.run(epochs, lambda epoch: epoch_order(n, n, seed, epoch).to(x.device),
                       scheduled_lr(cfg.lr, sched, epochs, steps), after_step=after_step,
                       desc="fge", quiet=quiet)
    return snaps

"""Fine-tuning: parameters trained further on data, from a fresh optimizer."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..models import has_batchnorm
from ..task import CLASSIFICATION, Task
from .config import TrainConfig, _schedule, check_trainable, epoch_order, make_optimizer
from .loop import Stepper


def finetune(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
             y: torch.Tensor, cfg: TrainConfig, seed: int = 0, quiet: bool = True, *,
             task: Task = CLASSIFICATION) -> tuple[dict[str, torch.Tensor], int]:
    """`params` trained further on (x, y) with `cfg` (from step 0 of its schedule, a fresh
    optimizer); returns the parameters and the number of gradient steps taken (the budget a fair
    comparison gives every method that trains)."""
    net = copy.deepcopy(model).to(x.device)
    net.load_state_dict(params)
    net.train()
    n = len(y)
    check_trainable(net, cfg.batch_size, n)
    opt = make_optimizer(net.parameters(), cfg)
    stepper = Stepper(net, opt, x, y, cfg.batch_size, drop_single=has_batchnorm(net), task=task)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    taken = 0

    def count(*_: Any) -> None:
        nonlocal taken
        taken += 1

    stepper.driver.run(cfg.epochs, lambda epoch: epoch_order(n, n, seed, epoch).to(x.device),
                       _schedule(cfg, steps_per_epoch), after_step=count, desc="fine-tune",
                       quiet=quiet)
    net.eval()
    out = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return {k: v.contiguous() for k, v in out.items()}, taken

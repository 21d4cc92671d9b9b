"""Mode path fusion (MPF): the midpoint of a Bezier curve trained between two models
(ALGORITHMS.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..options import Options, option
from ..params import Params
from ..paths.curves import fit_curve
from ..task import CLASSIFICATION, Task
from ..train import TrainConfig

MPF_EPOCHS = 20


def mpf(model: nn.Module, params_a: Params, params_b: Params, x: Tensor, y: Tensor, *,
        epochs: int = MPF_EPOCHS, lr: float = 0.05, batch_size: int = 64, seed: int = 0,
        task: Task = CLASSIFICATION, quiet: bool = True) -> dict[str, Tensor]:
    """Mode path fusion: the midpoint θ(0.5) of a quadratic Bezier curve between A and B whose
    middle bend is trained on (x, y) — SGD, the curve schedule (ALGORITHMS.md §6)."""
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule="curve")
    curve = fit_curve(model, params_a, params_b, x, y, cfg, "bezier", 3, seed=seed,
                      quiet=quiet, task=task)
    return curve.path().point(0.5)


@dataclass(frozen=True, kw_only=True)
class MPFOptions(Options):
    job = "MPF"
    epochs: int = option(MPF_EPOCHS, "epochs of the curve's training", low=1)
    lr: float = option(0.05, "peak learning rate of SGD", low=0, low_open=True)
    batch_size: int = option(64, "batch size", low=1)
    seed: int = option(0, "bend initialisation and batch order", low=0)

"""Mode path fusion (MPF): the midpoint of a Bezier curve trained between two models
(ALGORITHMS.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..options import Options, option
from ..params import Params
from ..paths.curves import BEND_INITS, fit_curve
from ..task import CLASSIFICATION, Task
from ..train import TrainConfig

MPF_EPOCHS = 20
# The curve's schedule: Garipov et al.'s, epochs counted from 1 (ours), or from 0 (the reference).
MPF_SCHEDULES = ("curve", "curve:0")

# The procedure of the MPF reference (tanguy8001/continual-learning-via-model-merging,
# src/curve_merging.py), each value where ours differs: the middle bend left at the curve layers'
# random initialisation (no init_linear), no weight decay on a curve (SGD's is 0 and no L2
# regulariser is added), the schedule's epochs counted from 0 (`for epoch in range(epochs)`: 6 of
# 10 at the full rate), and CurveConfig's 10 epochs, lr 0.07, batch 128. Momentum 0.9, t ~ U(0, 1)
# per batch, cross-entropy and θ(0.5) are the same in both.
MPF_PRESETS: dict[str, dict] = {
    "mpf-reference": {"bend_init": "random", "weight_decay": 0.0, "schedule": "curve:0",
                      "epochs": 10, "lr": 0.07, "batch_size": 128},
}


def preset_help() -> str:
    """The presets with their values in MPFOptions' names, as words, for an option's help
    ('NAME: bend init random, …'; a job's flags: `options.as_flags`)."""
    def value(v) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)
    return "; ".join(f"{name}: " + ", ".join(f"{k.replace('_', ' ')} {value(v)}"
                                             for k, v in values.items())
                     for name, values in MPF_PRESETS.items())


def mpf(model: nn.Module, params_a: Params, params_b: Params, x: Tensor, y: Tensor, *,
        epochs: int = MPF_EPOCHS, lr: float = 0.05, batch_size: int = 64, seed: int = 0,
        weight_decay: float = 5e-4, schedule: str = "curve", bend_init: str = "segment",
        task: Task = CLASSIFICATION, quiet: bool = True) -> dict[str, Tensor]:
    """Mode path fusion: the midpoint θ(0.5) of a quadratic Bezier curve between A and B whose
    middle bend is trained on (x, y) — SGD with momentum 0.9, L2 `weight_decay` on θ(t), the
    curve `schedule`, the bend starting where `bend_init` puts it (ALGORITHMS.md §6)."""
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
                      weight_decay=weight_decay)
    curve = fit_curve(model, params_a, params_b, x, y, cfg, "bezier", 3, seed=seed,
                      quiet=quiet, task=task, bend_init=bend_init)
    return curve.path().point(0.5)


@dataclass(frozen=True, kw_only=True)
class MPFOptions(Options):
    job = "MPF"
    presets = MPF_PRESETS
    epochs: int = option(MPF_EPOCHS, "epochs of the curve's training", low=1)
    lr: float = option(0.05, "peak learning rate of SGD", low=0, low_open=True)
    batch_size: int = option(64, "batch size", low=1)
    seed: int = option(0, "bend initialisation and batch order", low=0)
    weight_decay: float = option(5e-4, "L2 penalty on the curve's point θ(t)", low=0, later=True)
    schedule: str = option("curve", "the curve schedule, its epochs counted from 1 (curve) or 0 "
                                    "(curve:0)", choices=MPF_SCHEDULES, later=True)
    bend_init: str = option("segment", "where the middle bend starts: on the segment between A "
                                       "and B, or drawn by the layers' own random initialisation",
                            choices=tuple(BEND_INITS), later=True)
    preset: str | None = option(None, "the reference repository's procedure — "
                                      + preset_help(), choices=tuple(MPF_PRESETS), later=True)

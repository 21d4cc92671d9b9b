"""fge: fast geometric ensembling from a trained checkpoint, one snapshot per learning-rate cycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import artefacts
from ..checkpoint import save_model
from ..ensemble import ensemble_metrics
from ..evaluate import Evaluator
from ..fge import fge_snapshots, snapshot_name
from ..options import option
from ..train import TrainConfig
from ._inputs import (
    Overwrite,
    Runtime,
    bn_reset_option,
    load_models,
    on_option,
    output_dir,
    quiet_option,
    record,
    training,
)
from ._registry import JobConfig, Output, Record, Result, ensemble_line, numbers, register


@dataclass(frozen=True, kw_only=True)
class FgeConfig(Runtime, Overwrite, TrainConfig, JobConfig):
    job = "fge"
    # The cycles are fge's schedule: no epochs, schedule or warm-up of its own.
    hidden = ("epochs", "schedule", "warmup", "save_epochs", "eval_batch_size")
    checkpoint: str = option(help="trained model checkpoint to start from", positional=True)
    cycles: int = option(4, "learning-rate cycles, one snapshot each", low=1)
    cycle_epochs: int = option(2, "epochs per cycle", low=1)
    low: float = option(0.01, "lowest learning rate, as a factor of --lr", low=0, low_open=True,
                        high=1)
    seed: int = option(0, "batch order", low=0)
    on: str = on_option("train and evaluate on the whole dataset or on the model's own subset")
    bn_reset: str = bn_reset_option()
    quiet: bool = quiet_option()

    def train_config(self) -> TrainConfig:
        """The optimisation settings, with the cycles' epochs."""
        return training(self).replace(epochs=self.cycles * self.cycle_epochs)


@dataclass
class FgeResult(Result):
    metrics: dict = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    headline = ("acc", "member_acc", "gain_acc", "nll", "ece")

    def records(self) -> list[Record]:
        return [({}, numbers(self.metrics))]

    def lines(self) -> list[str]:
        return [ensemble_line("fge", self.metrics)] + super().lines()


@register("fge", FgeConfig, "fast geometric ensembling from a trained checkpoint",
          Output("output directory (one checkpoint per snapshot)",
                 writes=lambda c: [*artefacts.names(artefacts.CONFIG, artefacts.ENV, artefacts.ENSEMBLE),
                                   *(snapshot_name(i + 1) for i in range(c.cycles))]))
def run_fge(config: FgeConfig, out: Path) -> FgeResult:
    """snapshot_N.safetensors per cycle and ensemble.json with the snapshots' ensemble scores."""
    cfg = config.train_config()
    models = load_models([config.checkpoint], config)
    out = output_dir(out, config.overwrite)
    (ckpt,), (start,), model = models.checkpoints, models.params, models.module
    data = models.data(config.on, config.data_dir)
    snaps = fge_snapshots(model, start, data.train_x, data.train_y, cfg, config.cycles,
                          config.cycle_epochs, config.low, config.seed, config.quiet,
                          task=data.task)
    ev = Evaluator(model, {"test": (data.test_x, data.test_y)}, bn_data=data.train_x,
                   bn_reset=config.bn_reset, task=data.task)
    metrics = ensemble_metrics(ev.probabilities(snaps, "test"), data.test_y, task=data.task)
    out.mkdir(parents=True, exist_ok=True)
    record(out, config, models.device, data={**data.spec.to_dict(), "on": config.on})
    names = []
    for i, snap in enumerate(snaps):
        names.append(str(out / snapshot_name(i + 1)))
        model.load_state_dict(snap)
        save_model(names[-1], model, ckpt.architecture, data=ckpt.meta.get("data", {}),
                   fge={"start": str(ckpt.path), "cycle": i + 1})
    artefacts.ENSEMBLE.write(out, {"start": str(ckpt.path), "fge": metrics, "members": names,
                                       "cycles": config.cycles,
                                       "cycle_epochs": config.cycle_epochs, "lr": cfg.lr,
                                       "low": config.low, "seed": config.seed})
    return FgeResult(out, metrics, names)

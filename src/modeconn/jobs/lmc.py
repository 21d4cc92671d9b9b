"""lmc: the LMC-under-data-shift study over grids of batch size and learning rate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .. import artefacts
from ..experiments import lmc as experiment
from ..options import option
from ..runtime import resolve_device
from ..train import TrainConfig
from ._inputs import (
    HELP_SHIFT,
    DataOptions,
    ModelOptions,
    Runtime,
    bn_reset_option,
    quiet_option,
)
from ._registry import JobConfig, Output, Record, Result, numbers, register


@dataclass(frozen=True, kw_only=True)
class LMCConfig(Runtime, TrainConfig, ModelOptions, DataOptions, JobConfig):
    job = "lmc"
    hidden = ("save_epochs", "eval_batch_size")
    shift: str = option("iid:50,50", HELP_SHIFT)
    split_seed: int = option(0, "seed of the split into subsets and of dirichlet proportions "
                                "(added to each of --seeds)", low=0)
    # One value is a one-value grid: batch_size B is batch_sizes (B,), lr L is lrs (L,).
    batch_size: int | None = option(None, "examples per optimisation step (one value: "
                                          "--batch-sizes B)", low=1)
    lr: float | None = option(None, "peak learning rate (one value: --lrs L)", low=0,
                              low_open=True)
    init: tuple[str, ...] = option(("same",), "same, different, or same,different",
                                   choices=("same", "different"), nonempty=True)
    batch_order: tuple[str, ...] = option(("same", "independent"),
                                          "same, independent, or both comma-separated",
                                          choices=("same", "independent"), nonempty=True)
    batch_sizes: tuple[int, ...] | None = option(
        None, "grid of batch sizes, comma-separated (default 32; --batch-size B is "
              "--batch-sizes B)", low=1, nonempty=True)
    lrs: tuple[float, ...] | None = option(
        None, "grid of learning rates, comma-separated (default 0.05; --lr L is --lrs L)",
        low=0, low_open=True, nonempty=True)
    lr_scaling: str = option("none", "linear: scale each lr by batch size / first batch size",
                             choices=("none", "linear"))
    seeds: tuple[int, ...] = option((0, 1, 2), "one pair of models per seed and configuration",
                                    low=0, nonempty=True)
    points: int = option(25, "evenly spaced λ in [0, 1] per path", low=2)
    ensemble_size: int = option(3, "members of the LMC (points on the path) and independent "
                                   "ensembles", low=2)
    bn_reset: str = bn_reset_option(help="re-estimate BatchNorm statistics at every point "
                                         "(auto: when the model has BN)")
    tolerance: float = option(0.01, "largest train loss barrier counted as connected", low=0)
    contrast: bool = option(False, "add one init-different configuration (first batch order, "
                                   "batch size and lr) as a contrast row")
    label: str | None = option(None, "the model's name in tables and figures (default: --model)")
    resume: bool = option(False, "continue an interrupted study in --out, reusing finished runs",
                          setting=False)
    quiet: bool = quiet_option()

    def check(self) -> None:
        super().check()
        for one, many in (("batch_size", "batch_sizes"), ("lr", "lrs")):
            if getattr(self, one) is not None and getattr(self, many) is not None:
                raise self.invalid(one, f"must not be given with '{many}' (one value or a grid, "
                                        "not both)")
        if len(set(self.seeds)) != len(self.seeds):
            raise self.invalid("seeds", "must not repeat a seed")

    @property
    def batch_size_grid(self) -> tuple[int, ...]:
        """The batch sizes of the grid (one value when `batch_size` is given)."""
        return self.batch_sizes or ((self.batch_size,) if self.batch_size is not None else (32,))

    @property
    def lr_grid(self) -> tuple[float, ...]:
        """The learning rates of the grid (one value when `lr` is given)."""
        return self.lrs or ((self.lr,) if self.lr is not None else (0.05,))

    def study(self) -> experiment.LMCStudy:
        """The study these options describe."""
        train = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        train.update(batch_size=self.batch_size_grid[0], lr=self.lr_grid[0], save_epochs=())
        return experiment.LMCStudy(
            dataset=self.dataset, data_dir=self.data_dir, model=self.model,
            model_options=self.overrides(), shift=self.shift, num_subsets=self.subsets,
            split_seed=self.split_seed, normalise=self.normalise, bands=self.bands,
            on_bad_patch=self.on_bad_patch, inits=self.init,
            batch_orders=self.batch_order, batch_sizes=self.batch_size_grid, lrs=self.lr_grid,
            seeds=self.seeds, train=TrainConfig(**train), points=self.points,
            ensemble_size=self.ensemble_size, bn_reset=self.bn_reset, tolerance=self.tolerance,
            lr_scaling=self.lr_scaling, contrast=self.contrast, label=self.label)


@dataclass
class LMCResult(Result):
    summary: list[dict] = field(default_factory=list)
    headline = ("test_loss_barrier", "test_delta_acc", "lmc_ens_gain_acc", "ind_ens_gain_acc")

    def records(self) -> list[Record]:
        keys = ("init", "batch_order", "batch_size", "lr")
        return [({k: r[k] for k in keys}, numbers({k: v for k, v in r.items()
                                                    if k not in keys and not k.endswith("_std")}))
                for r in self.summary]

    def lines(self) -> list[str]:
        return [experiment.summary_table(self.summary)] + super().lines()


@register("lmc", LMCConfig, "the LMC-under-data-shift study: train pairs, interpolate, "
                            "ensembles, over grids of batch size and learning rate",
          Output("study directory", writes=(
              *artefacts.names(artefacts.LMC_STUDY, artefacts.ENV, artefacts.LMC_STATUS), "*.csv",
              "figures/*", "runs/*")))
def run_lmc(config: LMCConfig, out: Path) -> LMCResult:
    """The study's runs, tables and figures in `out` (its study.json and env.json are its
    record, checked on resume)."""
    summary = experiment.run_study(config.study(), out, resolve_device(config.device),
                                   config.resume, config.quiet)
    return LMCResult(out, summary)

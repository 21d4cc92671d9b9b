"""sharpness: a Hutchinson estimate of the Hessian trace at a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import artefacts
from ..data import EVAL_ON
from ..io import check_output_file, write_json
from ..options import option
from ..paths.landscape import hessian_trace
from ._inputs import Runtime, load_models, split_tensors
from ._registry import JobConfig, Output, Record, Result, numbers, register


@dataclass(frozen=True, kw_only=True)
class SharpnessConfig(Runtime, JobConfig):
    job = "sharpness"
    checkpoint: str = option(help="model checkpoint", positional=True)
    probes: int = option(10, "Rademacher probes (≥ 2 for an error)", low=1)
    batch_size: int = option(512, "examples per Hessian-vector product", low=1)
    max_batches: int | None = option(None, "average over the first N batches only (default: the "
                                           "whole split)", low=1)
    split: str = option("train", "split whose loss the Hessian is taken of",
                        choices=("train", "test"))
    on: str = option("full", "the whole dataset or the model's own subset", choices=EVAL_ON)
    seed: int = option(0, "Rademacher probes", low=0)
    overwrite: bool = option(False, "replace an existing output file", setting=False)


@dataclass
class SharpnessResult(Result):
    estimate: dict = field(default_factory=dict)
    headline = ("trace", "trace_se", "weighted_trace")

    def records(self) -> list[Record]:
        return [({}, numbers(self.estimate))]

    def lines(self) -> list[str]:
        r = self.estimate
        return [f"Hessian trace {r['trace']:.4f} ± {r['trace_se']:.4f} (SE), weighted "
                f"{r['weighted_trace']:.4f} ± {r['weighted_trace_se']:.4f}; "
                f"{r['probes']} probes × {r['batches']} batches", *super().lines()]


@register("sharpness", SharpnessConfig,
          "Hutchinson estimate of the Hessian trace at a checkpoint",
          Output("write the estimate to this JSON file", required=False, kind="file",
                 suffix=".json"))
def run_sharpness(config: SharpnessConfig, out: Path | None) -> SharpnessResult:
    """The Hessian trace of the split's loss (and the weighted trace), written to `out` when
    given."""
    if out is not None:
        out = check_output_file(out, config.overwrite, example=artefacts.SHARPNESS.name)
    models = load_models([config.checkpoint], config)
    data = models.data(config.on, config.data_dir)
    ((x, y),) = split_tensors(data, [config.split]).values()
    estimate = hessian_trace(models.module, models.params[0], x, y, config.probes,
                             config.batch_size, config.max_batches, config.seed,
                             task=data.task)
    if out is not None:
        write_json(out, {"checkpoint": str(models.checkpoints[0].path), "split": config.split,
                         **estimate})
    return SharpnessResult(out, estimate)

"""What jobs share on the way in and out: option groups, the output-directory rule, the device,
and checkpoints → (module, parameter dicts, evaluation data) on that device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import Checkpoint, load_same_architecture, params_of
from ..data import EVAL_ON, DataSpec, Prepared, eval_data
from ..errors import UsageError
from ..evaluate import BN_RESET
from ..io import check_output_dir
from ..options import option
from ..report.figures import display_names
from ..train import resolve_device

HELP_DATA_DIR = "where dataset files live (default: $MODECONN_DATA, else ~/.cache/modeconn/data)"
HELP_DEVICE = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"
HELP_BN_RESET = ("re-estimate BatchNorm statistics on the training data before evaluating "
                 "(auto: when the model has BN)")


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """Where a job runs and how it reports: not settings of what it computes."""

    device: str = option("auto", HELP_DEVICE, setting=False)
    data_dir: str | None = option(None, HELP_DATA_DIR, setting=False)


@dataclass(frozen=True, kw_only=True)
class Overwrite:
    """Permission to write into a non-empty output directory."""

    overwrite: bool = option(False, "write into the output even if it exists and is not empty",
                             setting=False)


@dataclass(frozen=True, kw_only=True)
class Combine(Runtime, Overwrite):
    """A job that reads model checkpoints of one architecture and evaluates them."""

    allow_dataset_mismatch: bool = option(
        False, "combine checkpoints trained on different datasets (or with and without input "
               "normalisation); all are evaluated on the first one's data")


def bn_reset_option(default: str = "auto", help: str = HELP_BN_RESET):
    """The BatchNorm re-estimation choice."""
    return option(default, help, choices=BN_RESET)


def on_option(help: str = "evaluate on the whole dataset or on model A's own subset"):
    """Which data a model is evaluated on."""
    return option("full", help, choices=EVAL_ON)


def output_dir(out: Path, overwrite: bool = False) -> Path:
    """The job's output directory: refused when it is a file, or not empty without `overwrite`."""
    out = check_output_dir(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"output directory {out} already exists and is not empty; choose "
                         "another one or allow overwriting it (--overwrite)")
    return out


@dataclass
class Models:
    """Checkpoints of one architecture loaded onto a device."""

    module: nn.Module
    checkpoints: list[Checkpoint]
    params: list[dict[str, torch.Tensor]]
    device: torch.device

    @property
    def names(self) -> list[str]:
        """Short readable names of the checkpoints (for titles and legends)."""
        return display_names([c.path for c in self.checkpoints])

    def data(self, on: str = "full", data_dir: str | None = None) -> Prepared:
        """The evaluation data of the first checkpoint's model, on the device."""
        spec = DataSpec.from_dict(self.checkpoints[0].meta.get("data", {}))
        return eval_data(spec, on, data_dir).to(self.device)


def load_models(paths, config: Combine) -> Models:
    """Model checkpoints of one architecture (and one dataset unless allowed), on the job's
    device."""
    device = resolve_device(config.device)
    module, ckpts = load_same_architecture(list(paths), device, config.allow_dataset_mismatch)
    return Models(module, ckpts, [params_of(c, device) for c in ckpts], device)


def split_tensors(data: Prepared, names=("train", "test")) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Named (inputs, labels) splits of prepared data."""
    tensors = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    return {s: tensors[s] for s in names}

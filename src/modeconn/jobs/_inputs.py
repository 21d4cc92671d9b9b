"""What jobs share on the way in and out: option groups, the output-directory rule, the device,
and checkpoints → (module, parameter dicts, evaluation data) on that device."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import artefacts, io
from ..checkpoint import Checkpoint, params_of
from ..data import (
    BAD_PATCH,
    EVAL_ON,
    NORMS,
    DataSpec,
    Prepared,
    check_spec,
    dataset_help,
    dataset_shape,
    eval_data,
)
from ..errors import UsageError
from ..evaluate import BN_RESET
from ..io import check_output_file
from ..models import WIDTH_IN_UNITS, arch_of, load_same_architecture, model_config, model_help
from ..options import option
from ..paths import ParamPath
from ..paths.curves import load_curve
from ..runtime import environment, resolve_device
from ..train import TrainConfig
from ._registry import refusing

HELP_DATA_DIR = "where dataset files live (default: $MODECONN_DATA, else ~/.cache/modeconn/data)"
HELP_DEVICE = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"
HELP_QUIET = "no progress bars"
HELP_SHIFT = ("none, iid:50,50, label-skew:0-4=80,5-9=20, dirichlet:ALPHA, "
              "domain:none|rotate=30+noise=0.1, bands:B02|B03,B04,B08 (multispectral data), "
              "sensors:S2|S1 (BigEarthNet v2 read with sensors=S2+S1)")
HELP_BN_RESET = ("re-estimate BatchNorm statistics on the training data before evaluating "
                 "(auto: when the model has BN)")


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """Where a job runs and how it reports: not settings of what it computes."""

    device: str = option("auto", HELP_DEVICE, setting=False)
    data_dir: str | None = option(None, HELP_DATA_DIR, setting=False)

    def preflight(self, here: bool = False) -> None:
        super().preflight(here)  # type: ignore[misc]
        # Whether CUDA is there is a fact of the machine that runs the job: checked `here` only.
        if here or not self.device.startswith("cuda"):
            with refusing("device"):
                resolve_device(self.device)


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


def quiet_option():
    """Silence progress bars (how a job shows itself, not a setting of what it computes)."""
    return option(False, HELP_QUIET, setting=False)


def on_option(help: str = "evaluate on the whole dataset or on model A's own subset"):
    """Which data a model is evaluated on."""
    return option("full", help, choices=EVAL_ON)


def output_dir(out: Path, overwrite: bool = False) -> Path:
    """The job's output directory: refused when it is a file, or not empty without `overwrite`."""
    return io.output_dir(out, allowed=overwrite)


def output_file(out: Path, overwrite: bool = False, suffix: str | None = None,
                example: str = "FILE") -> Path:
    """The job's output file: refused when it is a directory or lies under a file, exists
    without `overwrite`, or does not end in `suffix`."""
    out = check_output_file(out, overwrite, example=example)
    if suffix is not None and out.suffix != suffix:
        raise UsageError(f"output file {out} must end in {suffix}")
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
        # Here, not at the top: matplotlib (~0.3 s) is loaded by what draws, not by `import modeconn`.
        from ..plots import display_names

        return display_names([c.path for c in self.checkpoints])

    def data(self, on: str = "full", data_dir: str | None = None) -> Prepared:
        """The evaluation data of the first checkpoint's model, on the device."""
        return checkpoint_data(self.checkpoints[0], self.device, on, data_dir)


def checkpoint_data(checkpoint: Checkpoint, device: torch.device, on: str = "full",
                    data_dir: str | None = None) -> Prepared:
    """The evaluation data of the dataset a checkpoint (a model or a curve) was trained on, on
    the device."""
    spec = DataSpec.from_dict(checkpoint.meta.get("data", {}))
    return eval_data(spec, on, data_dir).to(device)


def load_models(paths, config: Runtime) -> Models:
    """Model checkpoints of one architecture (and one dataset, unless the config is a `Combine`
    that allows a mismatch), on the job's device."""
    device = resolve_device(config.device)
    allow = getattr(config, "allow_dataset_mismatch", False)
    module, ckpts = load_same_architecture(list(paths), device, allow)
    return Models(module, ckpts, [params_of(c, device) for c in ckpts], device)


@dataclass
class CurveModel:
    """A curve checkpoint loaded onto a device: the module, the path through its bends."""

    module: nn.Module
    path: ParamPath
    checkpoint: Checkpoint
    device: torch.device

    def data(self, on: str = "full", data_dir: str | None = None) -> Prepared:
        """The evaluation data of the curve's model, on the device."""
        return checkpoint_data(self.checkpoint, self.device, on, data_dir)


def load_curve_model(path, config: Runtime) -> CurveModel:
    """A `modeconn curve` checkpoint on the job's device."""
    device = resolve_device(config.device)
    return CurveModel(*load_curve(path, device), device)


def record(out: Path, config, device: torch.device | str, **extra) -> None:
    """Write a job's config.json (the job, its resolved config and `extra`) and env.json."""
    artefacts.CONFIG.write(out, {"job": config.job, "config": config.to_dict(), **extra})
    artefacts.ENV.write(out, environment(torch.device(device)))


def split_tensors(data: Prepared, names=("train", "test")) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Named (inputs, labels) splits of prepared data."""
    tensors = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    return {s: tensors[s] for s in names}


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """The dataset, its shift into subsets and the input normalisation."""

    dataset: str = option("digits", dataset_help())
    shift: str = option("none", HELP_SHIFT)
    subsets: int | None = option(None, "number of subsets for dirichlet", low=2)
    split_seed: int = option(0, "seed of the split into subsets and of dirichlet proportions",
                             low=0)
    normalise: str = option("global", "input normalisation statistics", choices=NORMS)
    bands: str | None = option(None, "spectral bands each subset sees, on top of any shift "
                                     "(multispectral data): one set for all (B04,B03,B02) or "
                                     "one per subset (B02|B03,B04,B08)")
    on_bad_patch: str = option("fail", "a malformed or missing patch file (BigEarthNet): stop "
                                       "with its name, or skip it and list it in the outputs",
                               choices=BAD_PATCH)

    def preflight(self, here: bool = False) -> None:
        super().preflight(here)  # type: ignore[misc]
        self.checked_data()

    def checked_data(self) -> tuple[tuple[int, int, int], int, list[str]]:
        """(input shape, class count, subset names) of the data, checked as the run checks it
        but without reading it."""
        spec = self.data_spec()
        with refusing("dataset"):
            dataset_shape(spec.dataset)
        with refusing("shift"):
            return check_spec(spec)

    def data_spec(self, split_seed: int | None = None) -> DataSpec:
        """The data spec of these options (with another split seed when given)."""
        return DataSpec(dataset=self.dataset, shift=self.shift, num_subsets=self.subsets,
                        split_seed=self.split_seed if split_seed is None else split_seed,
                        norm=self.normalise, bands=self.bands, on_bad_patch=self.on_bad_patch)


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """A model of the zoo and the options that override its preset."""

    model: str = option("mlp", model_help())
    depth: int | None = option(None, "MLP hidden layers / VGG or ResNet depth / ViT "
                                            "or GPT blocks", low=1)
    width: float | None = option(None, "MLP units per hidden layer or ViT embedding width (or a "
                                        "GPT's; whole numbers), or width multiplier (VGG, ResNet, ConvNet)",
                                 low=0, low_open=True)
    norm: str | None = option(None, "bn or none (MLP, VGG); bn, gn, ln or none (ResNet); ln or "
                                    "rms (GPT)")
    bias: bool | None = option(None, "MLP biases")
    dropout: float | None = option(None, "ConvNet dropout", low=0, high=1, high_open=True)
    heads: int | None = option(None, "ViT attention heads, or a GPT's (must divide --width; "
                                     "default: the preset's 4)", low=1, later=True)
    patch: int | None = option(None, "ViT patch side in pixels (must divide the image's sides; "
                                     "default: the preset's 7, or the largest patch below it "
                                     "that divides them)", low=1, later=True)
    kv_heads: int | None = option(None, "GPT key/value heads (grouped-query attention; must "
                                        "divide --heads; default: as many as --heads)", low=1,
                                  later=True)
    rotary: bool | None = option(None, "GPT rotary position embeddings instead of learned ones",
                                 later=True)
    mlp: str | None = option(None, "GPT MLP: gelu or swiglu", choices=("gelu", "swiglu"),
                             later=True)

    def check(self) -> None:
        super().check()  # type: ignore[misc]
        if self.width is not None and arch_of(self.model) in WIDTH_IN_UNITS \
                and self.width != int(self.width):
            what = {"mlp": "an MLP", "vit": "a ViT", "gpt": "a GPT"}.get(arch_of(self.model) or "",
                                                                      "this model")
            raise self.invalid("width", f"must be a whole number of units for {what}")  # type: ignore[attr-defined]

    def preflight(self, here: bool = False) -> None:
        super().preflight(here)  # type: ignore[misc]
        # The model is checked against the job's data when it has some (else any small data).
        data = getattr(self, "checked_data", None)
        shape, classes = data()[:2] if data is not None else ((1, 8, 8), 10)
        with refusing("model"):
            self.model_config(shape, classes)

    def overrides(self) -> dict:
        """The options that override the model's preset, every one named (None: the preset's),
        an MLP's or ViT's width as a whole number of units. Options added later are named only
        when given (records of earlier versions, such as 0.1's study.json, hold these dicts)."""
        width = self.width
        if width is not None and arch_of(self.model) in WIDTH_IN_UNITS:
            width = int(width)
        later = {k: v for k, v in (("heads", self.heads), ("patch", self.patch),
                                   ("kv_heads", self.kv_heads), ("rotary", self.rotary),
                                   ("mlp", self.mlp)) if v is not None}
        return {"depth": self.depth, "width": width, "norm": self.norm, "bias": self.bias,
                "dropout": self.dropout, **later}

    def model_config(self, input_shape, num_classes: int) -> dict:
        """The model's config (architecture JSON) for data of this shape and class count."""
        return model_config(self.model, input_shape, num_classes, **self.overrides())


def training(options: TrainConfig) -> TrainConfig:
    """The training settings held by a job config that extends `TrainConfig`."""
    return TrainConfig(**{f.name: getattr(options, f.name) for f in dataclasses.fields(TrainConfig)})

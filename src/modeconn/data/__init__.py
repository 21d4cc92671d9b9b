"""Data: datasets by name (a registry, `register` adds one), controlled subsets, and the in-memory
tensors a model trains on."""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..task import TASKS, Task
from .datasets import (
    DATASETS,
    Dataset,
    ImageData,
    dataset_channels,
    dataset_help,
    dataset_shape,
    dataset_task,
    default_data_dir,
    load_dataset,
    register,
    require_classification,
    synthetic,
)
from .shifts import (
    BAND_SHIFTS,
    SHIFT_KINDS,
    Shift,
    apply_transform,
    band_sets,
    channel_index,
    class_histogram,
    parse_shift,
    split_indices,
    strata,
    subset_name,
)
from .sources import MappedImages, as_tensor, channel_stats, normalise, take

NORMS = ("global", "subset", "none")
BAD_PATCH = ("fail", "skip")

__all__ = [
    "BAD_PATCH", "DATASETS", "NORMS", "SHIFT_KINDS", "DataSpec", "Dataset", "ImageData",
    "MappedImages", "Prepared", "Shift", "apply_transform", "as_tensor", "check_spec",
    "class_histogram", "eval_data", "dataset_channels", "dataset_help", "dataset_shape", "dataset_task",
    "default_data_dir", "load_dataset", "parse_shift", "prepare", "prepare_subsets", "register",
    "require_classification",
    "split_indices", "strata", "subset_name", "synthetic",
]


@dataclass(frozen=True)
class DataSpec:
    """Everything needed to rebuild the tensors a model saw: stored in every checkpoint."""

    dataset: str = "digits"
    shift: str = "none"  # "none": the whole training set
    subset: int | None = None  # index of the subset this model trains on
    num_subsets: int | None = None  # for shifts whose count is not in the string (dirichlet)
    split_seed: int = 0
    norm: str = "global"
    bands: str | None = None  # band sets per subset ("B02|B03,B04"), or one set for all
    on_bad_patch: str = "fail"  # what a reader does with a malformed file: fail or skip

    def to_dict(self) -> dict:
        """The spec as checkpoints record it; the fields added later are left out at their
        defaults, so runs of earlier versions keep their recorded settings (and resume)."""
        d = asdict(self)
        for k in _LATER_FIELDS:
            if d[k] == DataSpec.__dataclass_fields__[k].default:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


_LATER_FIELDS = ("bands", "on_bad_patch")


@dataclass
class Prepared:
    """Normalised train (subset) and test tensors for one model, plus how they were made
    (inputs are tensors, or memory-mapped sources for data larger than memory)."""

    spec: DataSpec
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: list[float]
    std: list[float]
    domain: str
    histogram: list[int]
    task_name: str = "classification"
    channels: tuple[str, ...] | None = None  # the names of the input channels (bands), if any
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) left out
    label_names: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def task(self) -> Task:
        """The task the data poses (classification, multi-label)."""
        return TASKS[self.task_name]

    def to(self, device: torch.device | str) -> Prepared:
        """Move the tensors to a device."""
        return replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                       test_x=self.test_x.to(device), test_y=self.test_y.to(device))


@functools.lru_cache(maxsize=4)
def _cached(name: str, data_dir: str | None, on_bad_patch: str = "fail") -> ImageData:
    return load_dataset(name, data_dir, on_bad_patch=on_bad_patch)


def _data(spec: DataSpec, data_dir) -> ImageData:
    if spec.on_bad_patch not in BAD_PATCH:
        raise UsageError(f"unknown bad-patch policy {spec.on_bad_patch!r}; use "
                         f"{' or '.join(BAD_PATCH)}")
    return _cached(spec.dataset, str(Path(data_dir)) if data_dir is not None else None,
                   spec.on_bad_patch)


def _domains(spec: DataSpec, data: ImageData | None, count: int, shift_domains: list[str]) -> list[str]:
    """Each subset's domain: the shift's, with the band set of `spec.bands` added."""
    if spec.bands is None:
        return shift_domains
    if _band_shift(spec):
        kind = spec.shift.partition(":")[0]
        raise UsageError(f"bands are given twice, by the {kind}: shift and by --bands; give them "
                         "once")
    sets = band_sets(spec.bands, spec.bands)
    if len(sets) not in (1, count):
        raise UsageError(f"--bands gives {len(sets)} band sets for {count} subsets; give one set "
                         "for every subset or one per subset (separated by '|')")
    sets = sets * count if len(sets) == 1 else sets
    return [("" if d == "none" else d + "+") + "bands=" + "/".join(b)
            for d, b in zip(shift_domains, sets)]


def _band_shift(spec: DataSpec) -> bool:
    """Whether the shift of `spec` chooses each subset's input channels (bands:, sensors:)."""
    return spec.shift.partition(":")[0] in BAND_SHIFTS


def _check_split(spec: DataSpec) -> None:
    """The checks of a spec's normalisation, split seed and subset count (no data read)."""
    if spec.norm not in NORMS:
        raise UsageError(f"unknown normalisation {spec.norm!r}; use one of {', '.join(NORMS)}")
    if spec.split_seed < 0:
        raise UsageError(f"the split seed must be an integer ≥ 0, got {spec.split_seed}")
    if spec.shift == "none" and spec.num_subsets is not None:
        raise UsageError(f"{spec.num_subsets} subsets need a shift (e.g. dirichlet:0.5); "
                         "without one the whole training set is one subset")


TEXT_SHIFTS = ("iid",)  # the shifts a text corpus (language model) takes: no class, no image


def _check_text(spec: DataSpec) -> bool:
    """Whether `spec` reads a text corpus (a language-model dataset), refusing what cannot apply
    to token ids: shifts by class or of images, per-subset normalisation, spectral bands."""
    if dataset_task(spec.dataset) != "language-model":
        return False
    name = spec.dataset.partition(":")[0]
    kind = spec.shift.partition(":")[0]
    if spec.shift != "none" and kind not in TEXT_SHIFTS:
        raise UsageError(f"shift {spec.shift!r} cannot apply to {name}, a text corpus (it splits "
                         "by class or transforms images); use --shift none, or iid:50,50 for "
                         "disjoint random subsets")
    if spec.norm == "subset":
        raise UsageError(f"{name} is a text corpus of token ids, which are not normalised; drop "
                         "--normalise subset (global and none both leave the ids as they are)")
    if spec.bands is not None:
        raise UsageError(f"{name} is a text corpus, without spectral bands; drop --bands")
    return True


def check_spec(spec: DataSpec) -> tuple[tuple[int, int, int], int, list[str]]:
    """What `prepare_subsets` refuses in `spec` without reading data (the dataset's name and
    options, the shift against its class count, the band sets against the subsets), through
    the same checks; returns (input shape, class count, subset names)."""
    _check_split(spec)
    if spec.on_bad_patch not in BAD_PATCH:
        raise UsageError(f"unknown bad-patch policy {spec.on_bad_patch!r}; use "
                         f"{' or '.join(BAD_PATCH)}")
    shape, classes = dataset_shape(spec.dataset)
    classes_for_shift = 1 if _check_text(spec) else classes  # text subsets are random
    if spec.shift == "none":
        count, domains, names = 1, ["none"], ["all"]
    else:
        shift = parse_shift(spec.shift, classes_for_shift, spec.num_subsets)
        count = shift.num_subsets
        domains = list(shift.domains) or ["none"] * count
        names = [subset_name(i) for i in range(count)]
    channels = dataset_channels(spec.dataset)
    for domain in _domains(spec, None, count, domains):
        if channels is not None:  # the bands each subset sees exist (a sensor's are loaded)
            channel_index(domain, channels)
    return shape, classes, names


def prepare_subsets(spec: DataSpec, data_dir: str | os.PathLike | None = None) -> list[Prepared]:
    """Prepared tensors for every subset of `spec.shift` (one entry when the shift is 'none')."""
    _check_split(spec)
    if _check_text(spec):
        return _prepare_text(spec, _data(spec, data_dir))
    data = _data(spec, data_dir)
    groups, domains = _groups(spec, data)
    gmean, gstd = _global_stats(spec, data)
    out = []
    for i, (idx, dom) in enumerate(zip(groups, domains)):
        # Distinct noise per subset and split, fixed by the split seed.
        tx = apply_transform(take(data.train_x, idx), dom, seed=spec.split_seed * 7919 + i,
                             channels=data.channels)
        ex = apply_transform(data.test_x, dom, seed=spec.split_seed * 7919 + 1000 + i,
                             channels=data.channels)
        index = channel_index(dom, data.channels)
        if spec.norm == "global":
            mean, std = (gmean, gstd) if index is None else (gmean[index], gstd[index])
        elif spec.norm == "subset":
            mean, std = channel_stats(tx, streamed=data.channels is not None)
        else:
            mean, std = torch.zeros(tx.shape[1]), torch.ones(tx.shape[1])
        ty = data.train_y[torch.from_numpy(idx)]
        names = data.channels if index is None or data.channels is None \
            else tuple(data.channels[j] for j in index)
        out.append(Prepared(
            spec=replace(spec, subset=None if spec.shift == "none" else i),
            train_x=normalise(tx, mean, std), train_y=ty,
            test_x=normalise(ex, mean, std), test_y=data.test_y.clone(),
            num_classes=data.num_classes, mean=mean.tolist(), std=std.tolist(), domain=dom,
            histogram=class_histogram(ty, data.num_classes), task_name=data.task,
            channels=names, skipped=list(data.skipped), label_names=data.label_names,
        ))
    return out


def _prepare_text(spec: DataSpec, data: ImageData) -> list[Prepared]:
    """The subsets of a text corpus: token ids as they are (no normalisation, no transform),
    split at random (iid) by windows; the histogram counts each token among the targets."""
    if spec.shift == "none":
        groups = [np.arange(len(data.train_y))]
    else:  # one "class": the shares apply to all windows, drawn at random from the split seed
        shift = parse_shift(spec.shift, 1, spec.num_subsets)
        groups = split_indices(np.zeros(len(data.train_y), dtype=np.int64), shift, 1,
                               spec.split_seed)
    out = []
    for i, idx in enumerate(groups):
        ty = data.train_y[torch.from_numpy(idx)]
        out.append(Prepared(
            spec=replace(spec, subset=None if spec.shift == "none" else i),
            train_x=data.train_x[torch.from_numpy(idx)], train_y=ty,
            test_x=data.test_x.clone(), test_y=data.test_y.clone(),
            num_classes=data.num_classes, mean=[], std=[], domain="none",
            histogram=class_histogram(ty.flatten(), data.num_classes), task_name=data.task,
            label_names=data.label_names))
    return out


def _groups(spec: DataSpec, data: ImageData) -> tuple[list[np.ndarray], list[str]]:
    """The training indices and the domain of every subset of `spec`."""
    if spec.shift == "none":
        groups, domains = [np.arange(len(data.train_y))], ["none"]
    else:
        shift = parse_shift(spec.shift, data.num_classes, spec.num_subsets)
        groups = split_indices(data.train_y, shift, data.num_classes, spec.split_seed)
        domains = list(shift.domains) or ["none"] * shift.num_subsets
    return groups, _domains(spec, data, len(groups), domains)


@functools.lru_cache(maxsize=8)
def _stats_of(x, streamed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return channel_stats(x, streamed)


def _global_stats(spec: DataSpec, data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel statistics of the whole training set (computed once per loaded dataset: a
    memory-mapped source streams through its cache for them). Multispectral data (named
    channels), which lives in memory or in its cache depending on its size, is streamed in
    memory too, so that both give the same numbers."""
    return _stats_of(data.train_x, data.channels is not None)


def prepare(spec: DataSpec, data_dir: str | os.PathLike | None = None) -> Prepared:
    """Prepared tensors for the one subset named by `spec.subset`."""
    subsets = prepare_subsets(spec, data_dir)
    i = spec.subset or 0
    if not 0 <= i < len(subsets):
        raise UsageError(f"subset {i} does not exist: shift {spec.shift!r} has {len(subsets)} "
                         f"subsets (0-{len(subsets) - 1})")
    return subsets[i]


EVAL_ON = ("full", "own")


def eval_data(spec: DataSpec, on: str = "full", data_dir: str | os.PathLike | None = None
              ) -> Prepared:
    """Data to evaluate a model trained under `spec`: the whole training set with global (or no)
    normalisation ('full'), or the model's own subset with its own domain and statistics ('own')."""
    if on == "own":
        return prepare(spec, data_dir)
    if on != "full":
        raise UsageError(f"unknown evaluation data {on!r}; use {' or '.join(EVAL_ON)}")
    norm = "none" if spec.norm == "none" else "global"
    return prepare(DataSpec(dataset=spec.dataset, shift="none", norm=norm,
                            bands=own_bands(spec, data_dir), on_bad_patch=spec.on_bad_patch),
                   data_dir)


def own_bands(spec: DataSpec, data_dir=None) -> str | None:
    """The bands the model of `spec` sees ('B02,B03'; None: every channel): its whole-dataset
    evaluation keeps them, as a model cannot read inputs of other channels."""
    if (spec.bands is None and not _band_shift(spec)) or _check_text(spec):
        return None
    data = _data(spec, data_dir)
    _, domains = _groups(spec, data)
    index = channel_index(domains[spec.subset or 0], data.channels)
    return None if index is None else ",".join(data.channels[j] for j in index)

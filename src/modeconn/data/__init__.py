"""Data: datasets by name, controlled subsets, and the in-memory tensors a model trains on."""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from .datasets import DATASETS, ImageData, default_data_dir, load_dataset, synthetic
from .shifts import (
    SHIFT_KINDS,
    Shift,
    apply_transform,
    class_histogram,
    parse_shift,
    split_indices,
    subset_name,
)

NORMS = ("global", "subset", "none")

__all__ = [
    "DATASETS", "NORMS", "SHIFT_KINDS", "DataSpec", "ImageData", "Prepared", "Shift",
    "apply_transform", "class_histogram", "eval_data", "default_data_dir", "load_dataset", "parse_shift",
    "prepare", "prepare_subsets", "split_indices", "subset_name", "synthetic",
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Prepared:
    """Normalised train (subset) and test tensors for one model, plus how they were made."""

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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> Prepared:
        """Move the tensors to a device."""
        return replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                       test_x=self.test_x.to(device), test_y=self.test_y.to(device))


@functools.lru_cache(maxsize=4)
def _cached(name: str, data_dir: str | None) -> ImageData:
    return load_dataset(name, data_dir)


def prepare_subsets(spec: DataSpec, data_dir: str | os.PathLike | None = None) -> list[Prepared]:
    """Prepared tensors for every subset of `spec.shift` (one entry when the shift is 'none')."""
    if spec.norm not in NORMS:
        raise UsageError(f"unknown normalisation {spec.norm!r}; use one of {', '.join(NORMS)}")
    if spec.split_seed < 0:
        raise UsageError(f"the split seed must be an integer ≥ 0, got {spec.split_seed}")
    if spec.shift == "none" and spec.num_subsets is not None:
        raise UsageError(f"{spec.num_subsets} subsets need a shift (e.g. dirichlet:0.5); "
                         "without one the whole training set is one subset")
    data = _cached(spec.dataset, str(Path(data_dir)) if data_dir is not None else None)
    if spec.shift == "none":
        groups, domains = [np.arange(len(data.train_y))], ["none"]
    else:
        shift = parse_shift(spec.shift, data.num_classes, spec.num_subsets)
        groups = split_indices(data.train_y, shift, data.num_classes, spec.split_seed)
        domains = list(shift.domains) or ["none"] * shift.num_subsets
    gmean, gstd = _stats(data.train_x)
    out = []
    for i, (idx, dom) in enumerate(zip(groups, domains)):
        # Distinct noise per subset and split, fixed by the split seed.
        tx = apply_transform(data.train_x[torch.from_numpy(idx)], dom, seed=spec.split_seed * 7919 + i)
        ex = apply_transform(data.test_x, dom, seed=spec.split_seed * 7919 + 1000 + i)
        if spec.norm == "global":
            mean, std = gmean, gstd
        elif spec.norm == "subset":
            mean, std = _stats(tx)
        else:
            mean, std = torch.zeros(tx.shape[1]), torch.ones(tx.shape[1])
        ty = data.train_y[torch.from_numpy(idx)]
        out.append(Prepared(
            spec=replace(spec, subset=None if spec.shift == "none" else i),
            train_x=_normalise(tx, mean, std), train_y=ty,
            test_x=_normalise(ex, mean, std), test_y=data.test_y.clone(),
            num_classes=data.num_classes, mean=mean.tolist(), std=std.tolist(), domain=dom,
            histogram=class_histogram(ty, data.num_classes),
        ))
    return out


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
    return prepare(DataSpec(dataset=spec.dataset, shift="none", norm=norm), data_dir)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return mean, std


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((x - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()

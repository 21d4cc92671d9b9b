"""The permutation alignment methods behind one signature: `METHODS[name].run(model, params_a,
params_b, x, y, *, spec, options, task) -> Permutation` (B's units permuted to A's).

Each method names its options dataclass (checked when built, like a job's config) and the
reference it follows, so the align and merge jobs, fusion by permutation and continual learning
all read one table instead of adapting three signatures each.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import UsageError
from ..options import Options, option
from ..task import CLASSIFICATION, Task
from .matching import activation_matching, ste_matching, weight_matching
from .spec import Permutation, PermutationSpec

Params = Mapping[str, Tensor]


@dataclass(frozen=True)
class Method:
    """A registered method: its callable (the family's one signature), its options dataclass
    and the reference it follows."""

    name: str
    run: Callable[..., Any]
    options: type[Options]
    reference: str


@dataclass(frozen=True, kw_only=True)
class WeightMatchingOptions(Options):
    job = "weight matching"
    seed: int = option(0, "order in which layers are matched", low=0)


@dataclass(frozen=True, kw_only=True)
class ActivationMatchingOptions(Options):
    job = "activation matching"
    batch_size: int = option(256, "examples per forward pass", low=1)


@dataclass(frozen=True, kw_only=True)
class STEOptions(Options):
    job = "STE"
    epochs: int | None = option(None, "epochs (none: modeconn.align.ste_epochs)", low=1)
    lr: float = option(1e-3, "learning rate (Adam)", low=0, low_open=True)
    batch_size: int = option(256, "batch size", low=1)
    seed: int = option(0, "batch order", low=0)
    warm: bool = option(True, "warm-start each batch's weight matching from the last one")
    quiet: bool = option(False, "no progress bar", setting=False)


def _wm(model: nn.Module, a: Params, b: Params, x: Tensor, y: Tensor, *,
        spec: PermutationSpec, options: WeightMatchingOptions, task: Task) -> Permutation:
    return weight_matching(a, b, spec=spec, seed=options.seed)


def _am(model: nn.Module, a: Params, b: Params, x: Tensor, y: Tensor, *,
        spec: PermutationSpec, options: ActivationMatchingOptions, task: Task) -> Permutation:
    return activation_matching(a, b, x, spec, model=model, batch_size=options.batch_size)


def _ste(model: nn.Module, a: Params, b: Params, x: Tensor, y: Tensor, *,
         spec: PermutationSpec, options: STEOptions, task: Task) -> Permutation:
    holder = copy.deepcopy(model)  # STE reads A from a module; the caller's stays untouched
    holder.load_state_dict(a)
    return ste_matching(holder, b, x, y, spec, epochs=options.epochs, lr=options.lr,
                        batch_size=options.batch_size, seed=options.seed, warm=options.warm,
                        loss_fn=task.loss, quiet=options.quiet)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("wm", _wm, WeightMatchingOptions, "weight matching, Ainsworth et al. 2023 (Git "
                                             "Re-Basin); ALGORITHMS.md §4"),
    Method("am", _am, ActivationMatchingOptions, "activation matching, Ainsworth et al. 2023 "
                                                 "(Git Re-Basin); ALGORITHMS.md §4"),
    Method("ste", _ste, STEOptions, "straight-through estimator, Ainsworth et al. 2023 (Git "
                                    "Re-Basin); ALGORITHMS.md §4"),
)}


def find_permutation(method: str, model: nn.Module, params_a: Params, params_b: Params, x: Tensor,
          y: Tensor, *, spec: PermutationSpec, options: Options | None = None,
          task: Task = CLASSIFICATION) -> Permutation:
    """The permutation of B's units that aligns them to A's by `method` (a key of METHODS),
    with its options (default: the method's defaults) on training data (x, y)."""
    m = method_of(method, METHODS, "alignment")
    return m.run(model, params_a, params_b, x, y, spec=spec, options=options_of(m, options),
                 task=task)


def method_of(name: str, methods: Mapping[str, Method], family: str) -> Method:
    """The registered method `name`, or a UsageError listing the family's methods."""
    if name not in methods:
        raise UsageError(f"unknown {family} method {name!r}; choose one of "
                         f"{', '.join(methods)}")
    return methods[name]


def options_of(method: Method, options: Options | None) -> Options:
    """The method's options: the given ones, checked to be of its dataclass, or its defaults."""
    if options is None:
        return method.options()
    if not isinstance(options, method.options):
        raise TypeError(f"{method.name} takes {method.options.__name__}, got "
                        f"{type(options).__name__}")
    return options

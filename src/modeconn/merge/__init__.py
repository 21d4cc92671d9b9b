"""Merging models (ALGORITHMS.md §5, §6): averaging and BatchNorm reset (`average`), REPAIR and
the normalisation a merge applies (`repair`), OT fusion (`ot`) and mode path fusion (`mpf`).

Everything is params-in/params-out on any nn.Module: parameter dicts (``state_dict()`` keys)
are combined and evaluated with ``torch.func.functional_call``; the module only supplies the
architecture.

Fusing two models, by any method, has one signature: `METHODS[name].run(model_a, params_a,
model_b, params_b, x, y, *, weights, options, task, spec) -> params` (B's architecture), with
the method's own options dataclass; `fuse(name, ...)` checks the weights and options and calls
it. The merge job and continual learning both go through it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ..align.methods import METHODS as ALIGN_METHODS
from ..align.methods import Method, method_of, options_of
from ..align.spec import PermutationSpec
from ..align.trace import auto_spec
from ..errors import UsageError
from ..options import Options
from ..params import Params
from ..task import CLASSIFICATION, Task
from .average import average, bn_reset
from .mpf import MPF_EPOCHS, MPF_PRESETS, MPF_SCHEDULES, MPFOptions, mpf
from .ot import COSTS, MARGINALS, SOLVERS, OTFusion, OTOptions, ot_fusion
from .repair import channel_stats, normalise, repair, repair_layers

__all__ = ["COSTS", "MARGINALS", "METHODS", "MPF_EPOCHS", "MPF_PRESETS", "MPF_SCHEDULES",
           "SOLVERS", "AverageOptions", "MPFOptions", "OTFusion", "OTOptions", "average",
           "bn_reset", "channel_stats", "fuse", "mpf", "normalise", "ot_fusion", "pair_weights",
           "repair", "repair_layers"]


@dataclass(frozen=True, kw_only=True)
class AverageOptions(Options):
    job = "avg"


def pair_weights(weights: Sequence[float]) -> tuple[float, float]:
    """Weights of A and B normalised to sum to 1; refused unless two non-negative finite
    numbers, not both 0."""
    if (len(weights) != 2 or not all(math.isfinite(w) and w >= 0 for w in weights)
            or sum(weights) <= 0):
        raise UsageError(f"fusion weights must be two non-negative numbers, not both 0, got "
                         f"{list(weights)}")
    wa, wb = (float(w) for w in weights)
    return wa / (wa + wb), wb / (wa + wb)


def _one_architecture(a: Params, b: Params, method: str) -> None:
    if {k: tuple(v.shape) for k, v in a.items()} != {k: tuple(v.shape) for k, v in b.items()}:
        raise UsageError(f"{method} fuses two models of one architecture and A and B differ; "
                         "fuse models of different widths with ot")


def _avg(model_a, a, model_b, b, x, y, *, weights, options, task, spec):
    _one_architecture(a, b, "avg")
    return average([a, b], list(weights))


def _permuting(name: str):
    def run(model_a, a, model_b, b, x, y, *, weights, options, task, spec):
        _one_architecture(a, b, name)
        spec = auto_spec(model_a, x[:2]) if spec is None else spec
        perm = ALIGN_METHODS[name].run(model_a, a, b, x, y, spec=spec, options=options,
                                       task=task)
        return average([a, perm.apply(b)], list(weights))
    return run


def _ot(model_a, a, model_b, b, x, y, *, weights, options: OTOptions, task, spec):
    return ot_fusion(model_a, a, model_b, b, x[:2], cost=options.cost, x=x[:options.samples],
                     solver=options.solver, reg=options.reg, marginals=options.marginals,
                     squared=options.squared, normalize_cost=options.normalize_cost,
                     proper_marginals=options.proper_marginals,
                     weight=weights[1], allow_partial=options.allow_partial).params


def _mpf(model_a, a, model_b, b, x, y, *, weights, options: MPFOptions, task, spec):
    _one_architecture(a, b, "mpf")
    if weights[0] != weights[1]:
        raise UsageError(f"mpf returns the middle of its curve (θ(0.5)): fusion weights "
                         f"{list(weights)} do not apply to it; leave them out")
    return mpf(model_b, a, b, x, y, epochs=options.epochs, lr=options.lr,
               batch_size=options.batch_size, seed=options.seed,
               weight_decay=options.weight_decay, schedule=options.schedule,
               bend_init=options.bend_init, task=task)


# How A and B are fused, by method: one callable each (B's architecture out), its options and
# the reference it follows.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("avg", _avg, AverageOptions, "the (weighted) parameter average; ALGORITHMS.md §6"),
    Method("ot", _ot, OTOptions, "OT fusion, Singh & Jaggi 2020; ALGORITHMS.md §6"),
    *(Method(name, _permuting(name), ALIGN_METHODS[name].options,
             f"B aligned to A by {ALIGN_METHODS[name].reference}, then averaged")
      for name in ("wm", "am", "ste")),
    Method("mpf", _mpf, MPFOptions, "mode path fusion: the midpoint of a trained Bezier curve "
                                    "(Garipov et al. 2018); ALGORITHMS.md §6"),
)}


def fuse(method: str, model_a: nn.Module, params_a: Params, model_b: nn.Module,
         params_b: Params, x: Tensor, y: Tensor, *, weights: Sequence[float] = (0.5, 0.5),
         options: Options | None = None, task: Task = CLASSIFICATION,
         spec: PermutationSpec | None = None) -> dict[str, Tensor]:
    """A and B fused into one parameter dict of B's architecture by `method` (a key of
    METHODS) with its options (default: the method's defaults), trained or matched on (x, y).

    `weights` of A and B are normalised; `spec` is the permutation spec of the permuting
    methods (wm, am, ste; None: traced from `model_a`). No BN reset or REPAIR is applied: see
    `normalise`."""
    m = method_of(method, METHODS, "fusion")
    return m.run(model_a, params_a, model_b, params_b, x, y, weights=pair_weights(weights),
                 options=options_of(m, options), task=task, spec=spec)

"""Merging aligned models: averaging, BatchNorm reset and REPAIR (ALGORITHMS.md §5, §6).

Everything is params-in/params-out on any nn.Module: parameter dicts (``state_dict()`` keys)
are combined and evaluated with ``torch.func.functional_call``; the module only supplies the
architecture.

REPAIR (Jordan et al. 2022) rescales every channel of each normalisation-free channel-producing
layer — a Linear or Conv whose output feeds an elementwise nonlinearity, found from the model's
fx graph — so that the merged model's pre-activation mean and standard deviation on training
data equal the interpolation of the endpoints' statistics. The per-channel affine correction
``y ← (y − μ_merged)·σ_goal/σ_merged + μ_goal`` is folded into the layer's weight (scale) and
bias (shift). A layer without a bias cannot absorb a shift: then only the scale
``σ_goal/σ_merged`` is folded and its mean is left as it is. Layers are repaired in forward
order, each with statistics measured after the earlier corrections. For a model with BatchNorm
REPAIR reduces to re-estimating the BatchNorm statistics (BN reset), which is what is done.

Fusing two models, by any method, has one signature: `METHODS[name].run(model_a, params_a,
model_b, params_b, x, y, *, weights, options, task, spec) -> params` (B's architecture), with
the method's own options dataclass; `fuse(name, ...)` checks the weights and options and calls
it. The merge job and continual learning both go through it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .align.methods import METHODS as ALIGN_METHODS
from .align.methods import Method, method_of, options_of
from .align.spec import PermutationSpec
from .align.trace import auto_spec
from .align.transport import COSTS, MARGINALS, SOLVERS, ot_fusion
from .curves import fit_curve
from .errors import UsageError
from .evaluate import Evaluator
from .graph import producer_layer, read
from .options import Options, option
from .params import check_params, has_batchnorm, mean
from .task import CLASSIFICATION, Task
from .train import TrainConfig

Params = Mapping[str, Tensor]
_HINT = "register the layer it cannot follow with modeconn.graph.register_layer"


def average(params_list: Sequence[Params], weights: Sequence[float] | None = None
            ) -> dict[str, Tensor]:
    """Uniform (or weighted) average of parameter dicts (AVG); integer buffers from the first."""
    if not params_list:
        raise UsageError("averaging needs at least one parameter dict")
    for i, p in enumerate(params_list):
        check_params(p, f"params_list[{i}]")
    if weights is not None:
        if len(weights) != len(params_list):
            raise UsageError(f"{len(weights)} weights for {len(params_list)} models")
        total = float(sum(weights))
        weights = [float(w) / total for w in weights]
    return mean(list(params_list), weights)


def bn_reset(model: nn.Module, params: Params, x: Tensor) -> dict[str, Tensor]:
    """`params` with BatchNorm statistics re-estimated on inputs `x` (update_bn semantics)."""
    # The split only sizes the engine's batches; nothing is evaluated on it.
    splits = {"bn": (x[:2], torch.zeros(min(len(x), 2), dtype=torch.long, device=x.device))}
    return Evaluator(model, splits, bn_data=x, bn_reset="on").bn_reestimated(params)


def repair_layers(model: nn.Module) -> list[str]:
    """Names of the channel-producing modules (Linear, Conv, registered producers) whose output
    goes straight into a nonlinearity only, in forward order.

    Found by the graph reader (any architecture fx can trace); layers feeding a normalisation
    layer are not listed (they are handled by BN reset). Modules called more than once are
    skipped: one correction cannot fit several uses.
    """
    return read(model, who="REPAIR", hint=_HINT).repair_layers()


@torch.no_grad()
def channel_stats(model: nn.Module, params: Params, x: Tensor, layers: Sequence[str],
                  batch_size: int = 512) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-channel (mean, std) of the outputs of `layers` (pre-activations) on inputs `x`."""
    mods = dict(model.named_modules())
    sums: dict[str, list] = {}

    def hook_for(name: str):
        layer = producer_layer(mods[name])
        dim = layer.channel_dim if layer is not None else 1

        def hook(_m, _inp, out):
            y = out.movedim(dim, -1).reshape(-1, out.shape[dim]).double()
            s = sums.setdefault(name, [0, 0.0, 0.0])
            s[0] += y.shape[0]
            s[1] = s[1] + y.sum(0)
            s[2] = s[2] + (y * y).sum(0)
        return hook

    handles = [mods[n].register_forward_hook(hook_for(n)) for n in layers]
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            functional_call(model, dict(params), (x[i:i + batch_size],))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    out = {}
    for n in layers:
        count, s1, s2 = sums[n]
        mean = s1 / count
        var = (s2 / count - mean * mean).clamp_min(0)
        out[n] = (mean, var.sqrt())
    return out


def _goal_weights(k: int, lam: float | Sequence[float] | None) -> list[float]:
    if lam is None:
        return [1.0 / k] * k
    if isinstance(lam, (int, float)):
        if k != 2:
            raise UsageError(f"a single λ interpolates two endpoints; {k} were given — pass "
                             "one weight per endpoint")
        return [1.0 - float(lam), float(lam)]
    if len(lam) != k:
        raise UsageError(f"{len(lam)} weights for {k} endpoints")
    total = float(sum(lam))
    return [float(w) / total for w in lam]


@torch.no_grad()
def repair(model: nn.Module, endpoints: Sequence[Params], merged: Params, x: Tensor,
           lam: float | Sequence[float] | None = None, eps: float = 1e-5,
           batch_size: int = 512) -> dict[str, Tensor]:
    """REPAIR `merged` (an interpolation of the aligned `endpoints`) on inputs `x`.

    `lam`: λ for two endpoints (goal = (1−λ)·stats_A + λ·stats_B), a weight per endpoint, or None
    for the uniform mean of the members' statistics. Returns the corrected parameter dict.
    For a model with BatchNorm this is BN reset (REPAIR reduces to it).
    """
    if has_batchnorm(model):
        return bn_reset(model, merged, x)
    weights = _goal_weights(len(endpoints), lam)
    layers = repair_layers(model)
    mods = dict(model.named_modules())
    member = [channel_stats(model, p, x, layers, batch_size) for p in endpoints]
    out = {k: v.clone() for k, v in merged.items()}
    for name in layers:
        goal_mu = sum(w * s[name][0] for w, s in zip(weights, member, strict=True))
        goal_sd = sum(w * s[name][1] for w, s in zip(weights, member, strict=True))
        mu, sd = channel_stats(model, out, x, [name], batch_size)[name]
        scale = goal_sd / (sd + eps)
        layer = producer_layer(mods[name])
        weight = out[f"{name}.{layer.weight}"]
        shape = [1] * weight.dim()
        shape[layer.out_axis] = -1
        out[f"{name}.{layer.weight}"] = weight * scale.to(weight).reshape(shape)
        bias_key = f"{name}.{layer.bias}"
        if layer.bias is not None and bias_key in out and out[bias_key] is not None:
            b = out[bias_key].double()
            out[bias_key] = ((b - mu) * scale + goal_mu).to(out[bias_key])
    return out


def normalise(model: nn.Module, endpoints: Sequence[Params], merged: Params, x: Tensor,
              repair_on: bool, lam: float | Sequence[float] | None = None
              ) -> tuple[dict[str, Tensor], str]:
    """BN reset when the model has BatchNorm, REPAIR when asked, else unchanged; + what was done."""
    if has_batchnorm(model):
        return bn_reset(model, merged, x), "bn-reset"
    if repair_on:
        return repair(model, endpoints, merged, x, lam), "repair"
    return dict(merged), "none"


# --- fusing two models: one signature, one registry ------------------------------------------

MPF_EPOCHS = 20


def mpf(model: nn.Module, params_a: Params, params_b: Params, x: Tensor, y: Tensor, *,
        epochs: int = MPF_EPOCHS, lr: float = 0.05, batch_size: int = 64, seed: int = 0,
        task: Task = CLASSIFICATION, quiet: bool = True) -> dict[str, Tensor]:
    """Mode path fusion: the midpoint θ(0.5) of a quadratic Bezier curve between A and B whose
    middle bend is trained on (x, y) — SGD, the curve schedule (ALGORITHMS.md §6)."""
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule="curve")
    curve = fit_curve(model, params_a, params_b, x, y, cfg, "bezier", 3, seed=seed,
                      quiet=quiet, task=task)
    return curve.path().point(0.5)


@dataclass(frozen=True, kw_only=True)
class AverageOptions(Options):
    job = "avg"


@dataclass(frozen=True, kw_only=True)
class OTOptions(Options):
    job = "OT fusion"
    cost: str = option("weights", "ground cost: squared distance of incoming weights, or of "
                                  "activations on `samples` training examples", choices=COSTS)
    solver: str = option("emd", "transport plan: exact EMD or Sinkhorn", choices=SOLVERS)
    reg: float = option(0.01, "Sinkhorn regularisation (relative to the largest cost)", low=0,
                        low_open=True)
    marginals: str = option("uniform", "uniform, or importance (L1 of incoming weights)",
                            choices=MARGINALS)
    samples: int = option(512, "training examples of the activation cost", low=1)


@dataclass(frozen=True, kw_only=True)
class MPFOptions(Options):
    job = "MPF"
    epochs: int = option(MPF_EPOCHS, "epochs of the curve's training", low=1)
    lr: float = option(0.05, "peak learning rate of SGD", low=0, low_open=True)
    batch_size: int = option(64, "batch size", low=1)
    seed: int = option(0, "bend initialisation and batch order", low=0)


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
                     weight=weights[1]).params


def _mpf(model_a, a, model_b, b, x, y, *, weights, options: MPFOptions, task, spec):
    _one_architecture(a, b, "mpf")
    return mpf(model_b, a, b, x, y, epochs=options.epochs, lr=options.lr,
               batch_size=options.batch_size, seed=options.seed, task=task)


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

"""REPAIR (Jordan et al. 2022) rescales every channel of each normalisation-free channel-producing
layer — a Linear or Conv whose output feeds an elementwise nonlinearity, found from the model's
fx graph — so that the merged model's pre-activation mean and standard deviation on training
data equal the interpolation of the endpoints' statistics. The per-channel affine correction
``y ← (y − μ_merged)·σ_goal/σ_merged + μ_goal`` is folded into the layer's weight (scale) and
bias (shift). A layer without a bias cannot absorb a shift: then only the scale
``σ_goal/σ_merged`` is folded and its mean is left as it is. Layers are repaired in forward
order, each with statistics measured after the earlier corrections. For a model with BatchNorm
REPAIR reduces to re-estimating the BatchNorm statistics (BN reset), which is what is done.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import UsageError
from ..graph import producer_layer, read
from ..params import Params, has_batchnorm
from .average import bn_reset

_HINT = "register the layer it cannot follow with modeconn.graph.register_layer"


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
            functional_call(model, dict(params), (x[i:i + batch_size],), tie_weights=False)
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

"""Parameter-dict algebra: the one place that combines, averages and flattens `state_dict`s.

A parameter dict maps `state_dict` names to tensors, buffers included. Floating-point entries
(weights and statistics such as BatchNorm running means) combine linearly. The one rule for
integer entries (`num_batches_tracked`), used by `combine` and `mean` alike: a copy of the first
dict's, whatever the weights — a counter has no meaningful weighted mean, the first dict is the
one the result is placed beside (the first endpoint, the reference model), and a copy means a
result never shares memory with its inputs. Which entries are statistics rather than weights is
read from the module (`named_buffers()`), never guessed from key names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

Params = Mapping[str, Tensor]


def is_float(t: Tensor) -> bool:
    """Whether a tensor takes part in linear combinations (floating point or complex)."""
    return t.is_floating_point() or t.is_complex()


def integer_entry(dicts: Sequence[Params], key: str) -> Tensor:
    """The one rule for an integer entry of a combination: a copy of the first dict's."""
    return dicts[0][key].clone()


def combine(dicts: Sequence[Params], weights: Sequence[float]) -> dict[str, Tensor]:
    """Σ_i w_i·d_i over the floating-point entries (in order, so equal inputs give equal bits);
    integer entries by `integer_entry`."""
    if len(dicts) != len(weights) or not dicts:
        raise ValueError(f"{len(weights)} weights for {len(dicts)} parameter dicts")
    terms = [(float(w), d) for w, d in zip(weights, dicts) if w != 0] or [(0.0, dicts[0])]
    out = {}
    for k, first in dicts[0].items():
        if is_float(first):
            acc = terms[0][1][k] * terms[0][0]
            for w, d in terms[1:]:
                acc = acc + d[k] * w
            out[k] = acc
        else:
            out[k] = integer_entry(dicts, k)
    return out


def mean(dicts: Sequence[Params], weights: Sequence[float] | Tensor | None = None
         ) -> dict[str, Tensor]:
    """The (weighted) mean of parameter dicts; integer entries by `integer_entry`.

    Its arithmetic is not `combine`'s (weights cast to each entry's dtype, zero weights kept):
    stored merges were computed this way, and routing through `combine` would change their bits.
    """
    k = len(dicts)
    if k == 0:
        raise ValueError("the mean of no parameter dicts")
    w = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights)
    out = {}
    for name, first in dicts[0].items():
        if is_float(first):
            out[name] = sum(w[i].to(first) * d[name] for i, d in enumerate(dicts))
        else:
            out[name] = integer_entry(dicts, name)
    return out


def statistic_keys(model: nn.Module) -> frozenset[str]:
    """Names of the module's floating-point buffers (running statistics), from `named_buffers()`."""
    return frozenset(n for n, b in model.named_buffers(remove_duplicate=False) if is_float(b))


def weight_keys(params: Params, statistics: Iterable[str] = ()) -> list[str]:
    """The floating-point entries of `params` that are not statistics, in order."""
    stats = frozenset(statistics)
    return [k for k, v in params.items() if is_float(v) and k not in stats]


def flatten(params: Params, keys: Sequence[str] | None = None) -> Tensor:
    """The entries `keys` (default: every floating-point entry) as one float64 vector."""
    keys = [k for k, v in params.items() if is_float(v)] if keys is None else keys
    return torch.cat([params[k].reshape(-1).double() for k in keys])


def distance(a: Params, b: Params) -> float:
    """Euclidean distance between two parameter dicts over their floating-point entries."""
    return float(sum(((a[k] - b[k]).double() ** 2).sum() for k in a if is_float(a[k]))) ** 0.5


def batchnorm_modules(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BatchNorm layers that keep running statistics, by name."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model has BatchNorm layers that keep running statistics (the one rule)."""
    return bool(batchnorm_modules(model))


def check_params(obj: object, name: str = "params") -> Params:
    """`obj` if it is a parameter dict (name → tensor); a TypeError naming `name` otherwise."""
    if isinstance(obj, nn.Module):
        raise TypeError(f"{name} must be a parameter dict (name -> tensor), got the module "
                        f"{type(obj).__name__}; pass its .state_dict()")
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise TypeError(f"{name} must be a parameter dict (name -> tensor), got "
                        f"{type(obj).__name__}")
    return obj


def check_module(obj: object, name: str = "model") -> nn.Module:
    """`obj` if it is an nn.Module (the model template); a TypeError naming `name` otherwise."""
    if not isinstance(obj, nn.Module):
        hint = "; parameter dicts are the other arguments" if isinstance(obj, Mapping) else ""
        raise TypeError(f"{name} must be an nn.Module (the model template), got "
                        f"{type(obj).__name__}{hint}")
    return obj

"""The (weighted) parameter average (AVG) and BatchNorm reset (ALGORITHMS.md §6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..evaluate import Evaluator
from ..params import Params, check_params, mean


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


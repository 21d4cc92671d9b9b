"""Several MLPs trained as one module of stacked weights (one batched matmul per layer).

On CPU the gain of training members together comes from grouped kernels (`torch.baddbmm`), not
from `vmap` (see CALIBRATION.md). Members keep their own data, batch order and parameters; each
member's gradient is that of its own mean loss, and SGD/Adam/AdamW act elementwise, so grouped
training equals training the members one after the other up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..task import CLASSIFICATION, Task

_SUPPORTED = (nn.Flatten, nn.Linear, nn.ReLU, nn.Identity)


def groupable(model: nn.Module) -> bool:
    """Whether `model` is a Sequential of Flatten/Linear/ReLU layers (an MLP without BN/dropout)."""
    return isinstance(model, nn.Sequential) and len(model) > 0 and \
        all(isinstance(m, _SUPPORTED) for m in model) and \
        any(isinstance(m, nn.Linear) for m in model)


class GroupedMLP(nn.Module):
    """K copies of one MLP architecture with stacked parameters; input (K, B, ...) → (K, B, C)."""

    def __init__(self, models: Sequence[nn.Sequential]):
        super().__init__()
        if not models or not all(groupable(m) for m in models):
            raise ValueError("GroupedMLP takes Sequential MLPs of Flatten/Linear/ReLU layers")
        self.k = len(models)
        self.ops: list[tuple[str, int]] = []
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.names: list[tuple[str, str | None]] = []
        for i, layer in enumerate(models[0]):
            if isinstance(layer, nn.Linear):
                # Stored as (K, in, out): bmm runs faster on a contiguous right operand.
                w = torch.stack([m[i].weight.detach().t() for m in models]).contiguous()
                self.weights.append(nn.Parameter(w.clone()))
                has_bias = layer.bias is not None
                if has_bias:
                    b = torch.stack([m[i].bias.detach() for m in models]).unsqueeze(1)
                    self.biases.append(nn.Parameter(b.clone()))
                self.ops.append(("linear", len(self.weights) - 1))
                self.names.append((f"{i}.weight", f"{i}.bias" if has_bias else None))
            elif isinstance(layer, nn.ReLU):
                self.ops.append(("relu", -1))
            elif isinstance(layer, nn.Flatten):
                self.ops.append(("flatten", -1))

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(2) if x.dim() > 3 else x
        bias_i = 0
        for op, i in self.ops:
            if op == "linear":
                w = self.weights[i]
                if self.names[i][1] is not None:
                    h = torch.baddbmm(self.biases[bias_i], h, w)
                    bias_i += 1
                else:
                    h = torch.bmm(h, w)
            elif op == "relu":
                h = F.relu(h)
            else:
                h = h.flatten(2)
        return h

    @torch.no_grad()
    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's parameters under the original module's state_dict names."""
        out: dict[str, Tensor] = {}
        bias_i = 0
        for i, (wname, bname) in enumerate(self.names):
            out[wname] = self.weights[i][k].t().contiguous()
            if bname is not None:
                out[bname] = self.biases[bias_i][k, 0].clone()
                bias_i += 1
        return out


def grouped_loss(logits: Tensor, targets: Sequence[Tensor], *,
                 task: Task = CLASSIFICATION) -> tuple[Tensor, Tensor]:
    """(sum of member mean losses, per-member losses) of the task (cross-entropy) for padded
    outputs (K, B, ...) and each member's targets (length ≤ B): padded rows carry no loss and
    no gradient."""
    k, b = logits.shape[:2]
    if all(len(t) == b for t in targets):
        per = task.losses(logits.flatten(0, 1), torch.cat(list(targets))).view(k, b).mean(1)
    else:
        per = torch.stack([task.loss(logits[j, :len(t)], t) for j, t in enumerate(targets)])
    return per.sum(), per.detach()

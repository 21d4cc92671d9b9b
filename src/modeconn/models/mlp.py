"""Multi-layer perceptrons, including the OT-fusion study's MLPNet/MLPLarge/MLPHuge."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Flatten, then [Linear, (BatchNorm1d), ReLU] per hidden width, then a Linear classifier."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int],
                 bn: bool = False, bias: bool = True):
        layers: list[nn.Module] = [nn.Flatten()]
        d = math.prod(input_shape)
        for w in widths:
            layers.append(nn.Linear(d, w, bias=bias))
            if bn:
                layers.append(nn.BatchNorm1d(w))
            layers.append(nn.ReLU())
            d = w
        layers.append(nn.Linear(d, num_classes, bias=bias))
        super().__init__(*layers)

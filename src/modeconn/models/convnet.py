"""A small convolutional network: three conv blocks, then two linear layers with dropout."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class ConvNet(nn.Sequential):
    """conv-relu-pool ×3 (pooling only while the feature map is larger than 1×1), linear, linear."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: float = 1.0,
                 dropout: float = 0.5, hidden: int = 128):
        c, h, w = input_shape
        chans = [max(1, round(32 * width)), max(1, round(64 * width)), max(1, round(64 * width))]
        layers: list[nn.Module] = []
        for out in chans:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        fc = max(1, round(hidden * width))
        layers += [nn.Flatten(), nn.Linear(c * h * w, fc), nn.ReLU(), nn.Dropout(dropout),
                   nn.Linear(fc, num_classes)]
        super().__init__(*layers)

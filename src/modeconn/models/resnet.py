"""CIFAR-style ResNets (He et al. 2016, §4.2): depth 6n+2, width multiplier, choice of norm."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

NORMS = ("bn", "gn", "ln", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2-d normalisation layer by name."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "ln":
        return nn.GroupNorm(1, channels)  # LayerNorm over (C, H, W) with per-channel affine
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual; a 1×1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.norm1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.norm2 = make_norm(norm, cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=bias),
                                          make_norm(norm, cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv, three stages of n blocks (16w, 32w, 64w channels), global pooling, linear."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 20,
                 width: float = 1.0, norm: str = "bn"):
        super().__init__()
        n = (depth - 2) // 6
        chans = [max(1, round(c * width)) for c in (16, 32, 64)]
        bias = norm == "none"
        self.conv1 = nn.Conv2d(input_shape[0], chans[0], 3, 1, 1, bias=bias)
        self.norm1 = make_norm(norm, chans[0])
        self.relu = nn.ReLU()
        blocks = []
        cin = chans[0]
        for stage, cout in enumerate(chans):
            for b in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.norm1(self.conv1(x)))
        return self.fc(self.flatten(self.pool(self.layers(x))))

"""VGG11/13/16/19 for small images: width multiplier, BatchNorm or none, one linear classifier;
and the VGG-like network for multispectral patches (`vgglike`: VGG8 features on any number of
bands, global average pooling and a hidden fully connected layer, the shape of VGG's
classifier)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

CONFIGS = {
    8: [64, "M", 128, "M", 256, 256, "M", 512, "M"],
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


class VGG(nn.Sequential):
    """VGG feature stack; a pooling stage is skipped once the map is 1×1, so 8×8 inputs work.

    `pool` 'flatten' feeds the last feature map to the classifier as it is; 'avg' averages it
    over space first (global average pooling: the classifier's size no longer grows with the
    input, 120×120 patches included). `hidden` > 0 puts one fully connected ReLU layer of that
    many units before the output layer.

    Convolutions get He initialisation (normal, fan-in, ReLU gain) and zero biases, as in
    torchvision's VGG: with PyTorch's default the signal of a normalisation-free VGG shrinks about
    six-fold per layer and the network does not train.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 11,
                 width: float = 1.0, bn: bool = True, pool: str = "flatten", hidden: int = 0):
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for v in CONFIGS[depth]:
            if v == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            out = max(1, round(v * width))
            layers.append(nn.Conv2d(c, out, 3, padding=1, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            c = out
        if pool == "avg":
            layers.append(nn.AdaptiveAvgPool2d(1))
            h = w = 1
        layers.append(nn.Flatten())
        d = c * h * w
        if hidden:
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        layers.append(nn.Linear(d, num_classes))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

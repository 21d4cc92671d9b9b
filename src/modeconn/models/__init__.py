"""The model zoo: every model is built from a JSON-serialisable config sized from the data."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import UsageError
from ..params import has_batchnorm
from .convnet import ConvNet
from .mlp import MLP
from .resnet import NORMS as RESNET_NORMS
from .resnet import ResNet
from .vgg import CONFIGS as VGG_CONFIGS
from .vgg import VGG

# Named presets; any key can be overridden (e.g. width, depth, bn).
PRESETS: dict[str, dict[str, Any]] = {
    "mlp": {"arch": "mlp", "widths": [512, 512, 512], "bn": False, "bias": True},
    "mlpnet": {"arch": "mlp", "widths": [400, 200, 100], "bn": False, "bias": False},
    "mlplarge": {"arch": "mlp", "widths": [800, 400, 200], "bn": False, "bias": False},
    "mlphuge": {"arch": "mlp", "widths": [1024, 512, 256], "bn": False, "bias": False},
    **{f"vgg{d}": {"arch": "vgg", "depth": d, "width": 1.0, "bn": True} for d in (11, 13, 16, 19)},
    # The VGG-like network for multispectral patches (BigEarthNet): any number of bands, any size.
    "vgglike": {"arch": "vgg", "depth": 8, "width": 1.0, "bn": True, "pool": "avg",
                "hidden": 256},
    "resnet": {"arch": "resnet", "depth": 20, "width": 1.0, "norm": "bn"},
    **{f"resnet{d}": {"arch": "resnet", "depth": d, "width": 1.0, "norm": "bn"}
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "convnet": {"arch": "convnet", "width": 1.0, "dropout": 0.5},
}
ARCHS = ("mlp", "vgg", "resnet", "convnet")


def model_config(name: str, input_shape: Sequence[int], num_classes: int,
                 **overrides: Any) -> dict[str, Any]:
    """The full config of a named model for the given data, with overrides applied."""
    cfg = _preset(name)
    for key, val in overrides.items():
        if val is None:
            continue
        if key == "depth" and cfg["arch"] == "mlp":  # MLP depth = number of hidden layers
            cfg["widths"] = [cfg["widths"][0]] * int(val)
        elif key == "width" and cfg["arch"] == "mlp":  # MLP width = units per hidden layer
            cfg["widths"] = [int(val)] * len(cfg["widths"])
        elif key == "norm" and cfg["arch"] in ("mlp", "vgg"):
            if val not in ("bn", "none"):
                raise UsageError(f"{name} supports norm bn or none, not {val!r}")
            cfg["bn"] = val == "bn"
        elif key in _ALLOWED[cfg["arch"]]:
            cfg[key] = val
        else:
            raise UsageError(f"model {name!r} has no option {key!r}; "
                             f"it takes {', '.join(sorted(_ALLOWED[cfg['arch']]))}")
    cfg["input_shape"] = [int(s) for s in input_shape]
    cfg["num_classes"] = int(num_classes)
    validate_config(cfg)
    return cfg


def _preset(name: str) -> dict[str, Any]:
    """The preset config of a named model; `resnetN` for any depth N (checked to be 6n+2)."""
    if name in PRESETS:
        return dict(PRESETS[name])
    m = re.fullmatch(r"resnet(\d+)", name)
    if m:
        return {**PRESETS["resnet"], "depth": int(m.group(1))}
    raise UsageError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)} "
                     "(or resnetN for any depth N = 6n+2)")


_ALLOWED = {
    "mlp": {"widths", "bn", "bias"},
    "vgg": {"depth", "width", "bn", "pool", "hidden"},
    "resnet": {"depth", "width", "norm"},
    "convnet": {"width", "dropout", "hidden"},
}


def validate_config(cfg: dict[str, Any]) -> None:
    """Raise UsageError when a config cannot build a model."""
    arch = cfg.get("arch")
    if arch not in ARCHS:
        raise UsageError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    shape = cfg.get("input_shape", [])
    if len(shape) != 3 or min(shape) <= 0:
        raise UsageError(f"input shape must be C×H×W with positive sizes, got {shape}")
    if cfg.get("num_classes", 0) < 2:
        raise UsageError(f"need at least 2 classes, got {cfg.get('num_classes')}")
    if arch == "mlp" and (not cfg["widths"] or min(cfg["widths"]) <= 0):
        raise UsageError(f"MLP widths must be positive, got {cfg['widths']}; "
                         "use a depth ≥ 1 and a width ≥ 1")
    if arch == "vgg" and cfg["depth"] not in VGG_CONFIGS:
        raise UsageError(f"VGG depth must be one of {', '.join(map(str, VGG_CONFIGS))}, got "
                         f"{cfg['depth']}")
    if arch == "vgg" and cfg.get("pool", "flatten") not in ("flatten", "avg"):
        raise UsageError(f"VGG pool must be flatten or avg, got {cfg['pool']!r}")
    if arch == "vgg" and not (isinstance(cfg.get("hidden", 0), int) and cfg.get("hidden", 0) >= 0):
        raise UsageError(f"VGG hidden units must be a whole number ≥ 0, got {cfg['hidden']}")
    if arch == "resnet":
        if cfg["depth"] < 8 or (cfg["depth"] - 2) % 6:
            raise UsageError(f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), "
                             f"got {cfg['depth']}")
        if cfg["norm"] not in RESNET_NORMS:
            raise UsageError(f"ResNet norm must be one of {', '.join(RESNET_NORMS)}, "
                             f"got {cfg['norm']!r}")
    if arch != "mlp" and not 0 < cfg.get("width", 1.0) < math.inf:
        raise UsageError(f"width multiplier must be positive, got {cfg.get('width')}")
    if arch == "convnet" and not 0 <= cfg.get("dropout", 0.0) < 1:
        raise UsageError(f"dropout must be in [0, 1), got {cfg['dropout']}")


def build_model(cfg: dict[str, Any] | str) -> nn.Module:
    """Build a model from its config (a dict or its JSON)."""
    if isinstance(cfg, str):
        cfg = json.loads(cfg)
    validate_config(cfg)
    arch = cfg["arch"]
    kw = {k: v for k, v in cfg.items() if k not in ("arch", "input_shape", "num_classes")}
    args = (cfg["input_shape"], cfg["num_classes"])
    if arch == "mlp":
        return MLP(*args, **kw)
    if arch == "vgg":
        return VGG(*args, **kw)
    if arch == "resnet":
        return ResNet(*args, **kw)
    return ConvNet(*args, **kw)


__all__ = ["ARCHS", "PRESETS", "ConvNet", "MLP", "ResNet", "VGG", "build_model",
           "has_batchnorm", "model_config", "validate_config"]

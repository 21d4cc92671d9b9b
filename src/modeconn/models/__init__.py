"""The model zoo: every model is built from a JSON-serialisable config sized from the data.

Two registries: `ARCHS` maps an architecture (a config's "arch") to its builder and the options
it takes, `PRESETS` maps a model name to a config; `register` adds a user's own model to both.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UsageError
from ..params import has_batchnorm
from .convnet import ConvNet
from .gpt import GPT
from .mlp import MLP
from .resnet import NORMS as RESNET_NORMS
from .resnet import ResNet
from .vgg import CONFIGS as VGG_CONFIGS
from .vgg import VGG
from .vit import POOLS as VIT_POOLS
from .vit import ViT

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
    # patch 7: 16 patches of a 28×28 image; on data whose sides 7 does not divide, the largest
    # patch below it that divides both (4 on 8×8 digits and 32×32 CIFAR).
    "vit": {"arch": "vit", "width": 128, "depth": 4, "heads": 4, "patch": 7, "mlp_ratio": 2.0,
            "pool": "cls"},
    # A character-level language model for text corpora (pydoc): small enough to train in
    # seconds on a CPU.
    "gpt": {"arch": "gpt", "width": 64, "depth": 2, "heads": 4, "mlp": "gelu", "norm": "layer",
            "rotary": False, "tied": True},
}
# What the `--model` help says after a preset's name.
NOTES: dict[str, str] = {"vgglike": "VGG-like for multispectral patches",
                         "resnet": "resnet20; resnetN for any depth N = 6n+2",
                         "vit": "Vision Transformer",
                         "gpt": "character-level language model, text data only"}
# Architectures whose `width` counts units (an MLP's per hidden layer, a ViT's embedding), not a
# multiplier of the preset's channels.
WIDTH_IN_UNITS = frozenset({"mlp", "vit", "gpt"})
# Architectures that read sequences of token ids (input shape (context,)), not images.
TEXT_ARCHS = frozenset({"gpt"})


def _gpt(input_shape: Sequence[int], num_classes: int, **options: Any) -> nn.Module:
    """A GPT over a vocabulary of `num_classes` tokens reading `input_shape` = (context,)."""
    return GPT(vocab_size=num_classes, context=int(input_shape[0]), **options)


@dataclass(frozen=True)
class Architecture:
    """`build(input_shape, num_classes, **options)` → the module; `options`: the config keys it
    takes besides those two."""

    build: Callable[..., nn.Module]
    options: frozenset[str]


ARCHS: dict[str, Architecture] = {
    "mlp": Architecture(MLP, frozenset({"widths", "bn", "bias"})),
    "vgg": Architecture(VGG, frozenset({"depth", "width", "bn", "pool", "hidden"})),
    "resnet": Architecture(ResNet, frozenset({"depth", "width", "norm"})),
    "convnet": Architecture(ConvNet, frozenset({"width", "dropout", "hidden"})),
    "vit": Architecture(ViT, frozenset({"width", "depth", "heads", "patch", "mlp_ratio", "pool"})),
    "gpt": Architecture(_gpt, frozenset({"width", "depth", "heads", "kv_heads", "mlp", "norm",
                                         "rotary", "tied"})),
}


def register(name: str, builder: Callable[..., nn.Module], *, note: str = "",
             **defaults: Any) -> None:
    """Add a model under `name` (then `--model NAME`, `model_config(NAME, ...)` build it):
    `builder(input_shape, num_classes, **options)` returns the module; `defaults` are its options
    (JSON values, stored in every checkpoint's config, each overridable by name)."""
    if not re.fullmatch(r"[A-Za-z][\w.-]*", name or ""):
        raise ValueError(f"a model name is a word (letters, digits, '_', '-', '.'), got {name!r}")
    if name in PRESETS or name in ARCHS or _preset_or_none(name) is not None:
        raise ValueError(f"model {name!r} is already registered; choose another name")
    if not callable(builder):
        raise TypeError(f"model {name!r}: the builder must be callable, got {type(builder).__name__}")
    try:
        json.dumps(defaults)
    except (TypeError, ValueError):
        raise ValueError(f"model {name!r}: its options must be JSON values (a checkpoint stores "
                         f"them), got {defaults!r}") from None
    ARCHS[name] = Architecture(builder, frozenset(defaults))
    PRESETS[name] = {"arch": name, **defaults}
    if note:
        NOTES[name] = note


def model_help() -> str:
    """The zoo as the `--model` help lists it: presets of one family by their numbers
    (vgg11/13/16/19), notes in brackets."""
    groups: list[list[str]] = []  # [family, number, number, ...] or [name]
    for name in PRESETS:
        m = re.fullmatch(r"([a-z]+)(\d+)", name)
        if m and name not in NOTES and groups and groups[-1][0] == m.group(1) and len(groups[-1]) > 1:
            groups[-1].append(m.group(2))
        else:
            groups.append([m.group(1), m.group(2)] if m and name not in NOTES else [name])
    words = [g[0] + "/".join(g[1:]) for g in groups]
    return ", ".join(w + (f" ({NOTES[w]})" if w in NOTES else "") for w in words)


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
        elif key == "norm" and cfg["arch"] == "gpt":
            cfg["norm"] = {"ln": "layer", "rms": "rms"}.get(val, val)
        elif key == "norm" and cfg["arch"] in ("mlp", "vgg"):
            if val not in ("bn", "none"):
                raise UsageError(f"{name} supports norm bn or none, not {val!r}")
            cfg["bn"] = val == "bn"
        elif key in ARCHS[cfg["arch"]].options:
            cfg[key] = val
        else:
            raise UsageError(f"model {name!r} has no option {key!r}; "
                             f"it takes {', '.join(sorted(ARCHS[cfg['arch']].options)) or 'none'}")
    if cfg["arch"] == "vit" and overrides.get("patch") is None:
        cfg["patch"] = _fitting_patch(cfg["patch"], input_shape)
    cfg["input_shape"] = [int(s) for s in input_shape]
    cfg["num_classes"] = int(num_classes)
    validate_config(cfg)
    return cfg


def _fitting_patch(patch: Any, input_shape: Sequence[int]) -> Any:
    """A preset's ViT patch where it divides the image's sides, else the largest patch below it
    that does (1 at worst); a value that is not a positive whole number is left to validation."""
    if len(input_shape) != 3 or not isinstance(patch, int) or patch < 1 or min(input_shape) < 1:
        return patch
    side = math.gcd(int(input_shape[1]), int(input_shape[2]))
    return max(p for p in range(1, patch + 1) if side % p == 0)


def arch_of(name: str) -> str | None:
    """The architecture a model name builds ("mlp", "vgg", ...; None: no such model)."""
    preset = _preset_or_none(name)
    return None if preset is None else preset["arch"]


def _preset_or_none(name: str) -> dict[str, Any] | None:
    if name in PRESETS:
        return dict(PRESETS[name])
    m = re.fullmatch(r"resnet(\d+)", name)
    if m:
        return {**PRESETS["resnet"], "depth": int(m.group(1))}
    return None


def _preset(name: str) -> dict[str, Any]:
    """The preset config of a named model; `resnetN` for any depth N (checked to be 6n+2)."""
    cfg = _preset_or_none(name)
    if cfg is None:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)} "
                         "(or resnetN for any depth N = 6n+2)")
    return cfg


def validate_config(cfg: dict[str, Any]) -> None:
    """Raise UsageError when a config cannot build a model."""
    arch = cfg.get("arch")
    if arch not in ARCHS:
        raise UsageError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    shape = cfg.get("input_shape", [])
    if arch in TEXT_ARCHS:
        if len(shape) != 1 or min(shape) <= 0:
            raise UsageError(f"{arch} reads token ids (a text dataset such as --dataset pydoc), "
                             f"not images of shape {'×'.join(map(str, shape))}; use an image "
                             "model (mlp, vgg11, resnet20, vit, ...) on this data")
    elif len(shape) == 1:
        raise UsageError(f"{arch} reads images, not sequences of {shape[0]} token ids (a text "
                         "dataset); use --model gpt on text data")
    elif len(shape) != 3 or min(shape) <= 0:
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
    if arch == "vit":
        _validate_vit(cfg)
    if arch == "gpt":
        _validate_gpt(cfg)
    if arch not in ("mlp", "gpt") and not 0 < cfg.get("width", 1.0) < math.inf:
        raise UsageError(f"width multiplier must be positive, got {cfg.get('width')}")
    if arch == "convnet" and not 0 <= cfg.get("dropout", 0.0) < 1:
        raise UsageError(f"dropout must be in [0, 1), got {cfg['dropout']}")


def _check_sizes(model: str, sizes: dict[str, Any], names: str) -> None:
    """Refuse sizes that are not whole numbers ≥ 1, naming them."""
    bad = {k: v for k, v in sizes.items()
           if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
        raise UsageError(f"{model} " + ", ".join(f"{k} {v}" for k, v in bad.items()) + ": "
                         f"{names} must be whole numbers ≥ 1")


def _check_heads(model: str, cfg: dict[str, Any], or_width: bool) -> None:
    """Refuse a width the heads do not divide, suggesting heads that do."""
    if cfg["width"] % cfg["heads"]:
        also = f" or a width that is a multiple of {cfg['heads']}" if or_width else ""
        raise UsageError(f"{model} width {cfg['width']} is not divisible by heads "
                         f"{cfg['heads']}; choose heads that divide the width (e.g. --heads "
                         f"{_divisor_near(cfg['width'], cfg['heads'])}){also}")


def _validate_vit(cfg: dict[str, Any]) -> None:
    _check_sizes("ViT", {k: cfg.get(k) for k in ("width", "depth", "heads", "patch")},
                 "width, depth, heads and patch")
    _check_heads("ViT", cfg, or_width=True)
    _, h, w = cfg["input_shape"]
    if h % cfg["patch"] or w % cfg["patch"]:
        raise UsageError(f"ViT patch {cfg['patch']} does not divide the {h}×{w} input; choose a "
                         f"patch that divides both sides (e.g. --patch "
                         f"{_divisor_near(math.gcd(h, w), cfg['patch'])})")
    ratio = cfg.get("mlp_ratio", 2.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) \
            or not 0 < ratio < math.inf or round(cfg["width"] * ratio) < 1:
        raise UsageError(f"ViT mlp_ratio must be a positive number (hidden units = width × "
                         f"ratio ≥ 1), got {ratio!r}")
    if cfg.get("pool", "cls") not in VIT_POOLS:
        raise UsageError(f"ViT pool must be one of {', '.join(VIT_POOLS)}, got {cfg['pool']!r}")


def _validate_gpt(cfg: dict[str, Any]) -> None:
    sizes = {k: cfg.get(k) for k in ("width", "depth", "heads")}
    if cfg.get("kv_heads") is not None:
        sizes["kv_heads"] = cfg["kv_heads"]
    _check_sizes("GPT", sizes, "width, depth, heads and kv_heads")
    _check_heads("GPT", cfg, or_width=False)
    try:  # the rest (mlp, norm, kv_heads, rotary) as the module checks it
        GPT(2, 1, width=cfg["width"], depth=1, heads=cfg["heads"],
            **{k: cfg[k] for k in ("mlp", "norm", "rotary", "kv_heads") if k in cfg})
    except ValueError as e:
        raise UsageError(f"GPT: {e}") from None


def _divisor_near(n: int, k: int) -> int:
    """The divisor of n nearest to k (the smaller on a tie)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), d))


def build_model(cfg: dict[str, Any] | str) -> nn.Module:
    """Build a model from its config (a dict or its JSON)."""
    if isinstance(cfg, str):
        cfg = json.loads(cfg)
    validate_config(cfg)
    kw = {k: v for k, v in cfg.items() if k not in ("arch", "input_shape", "num_classes")}
    model = ARCHS[cfg["arch"]].build(cfg["input_shape"], cfg["num_classes"], **kw)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the builder of {cfg['arch']!r} returned {type(model).__name__}, not an "
                        "nn.Module")
    return model


# Below build_model, which loading builds with.
from .loading import load_model, load_same_architecture, rebuild  # noqa: E402

__all__ = ["ARCHS", "PRESETS", "TEXT_ARCHS", "WIDTH_IN_UNITS", "Architecture", "arch_of",
           "ConvNet", "GPT", "MLP",
           "ResNet", "VGG", "ViT", "build_model", "has_batchnorm", "load_model",
           "load_same_architecture", "model_config", "model_help", "rebuild", "register",
           "validate_config"]

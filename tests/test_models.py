"""The model zoo: presets for any input shape, configs as JSON, validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from modeconn.errors import UsageError
from modeconn.models import PRESETS, TEXT_ARCHS, build_model, has_batchnorm, model_config

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (5, 16, 16)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", [n for n in PRESETS if PRESETS[n]["arch"] not in TEXT_ARCHS])
def test_every_preset_builds_for_any_input_shape(name, shape):
    classes = 7
    cfg = model_config(name, shape, classes)
    assert cfg["input_shape"] == list(shape) and cfg["num_classes"] == classes
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mlp", "mlpnet", "vgg11", "resnet20", "convnet"])
def test_presets_train_mode_step(name):
    """One backward pass in train mode works (BatchNorm, dropout) and reaches every parameter."""
    model = build_model(model_config(name, (3, 16, 16), 4, width=8 if name.startswith("mlp")
                                     else 0.25))
    model.train()
    loss = model(torch.randn(4, 3, 16, 16)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name,overrides", [
    ("mlp", {"width": 16, "depth": 2}), ("mlpnet", {}), ("vgg11", {"width": 0.125}),
    ("resnet8", {"norm": "gn", "width": 0.5}), ("convnet", {"width": 0.5, "dropout": 0.1}),
])
def test_config_json_round_trip(name, overrides):
    cfg = model_config(name, (3, 12, 12), 10, **overrides)
    text = json.dumps(cfg)
    assert json.loads(text) == cfg
    a, b = build_model(cfg), build_model(text)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype for k in sa)
    # A state dict of one loads strictly into the other and gives the same outputs.
    b.load_state_dict(sa)
    x = torch.randn(2, 3, 12, 12)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name,widths", [("mlpnet", [400, 200, 100]),
                                         ("mlplarge", [800, 400, 200]),
                                         ("mlphuge", [1024, 512, 256])])
def test_ot_fusion_mlps_have_no_biases_and_right_widths(name, widths):
    model = build_model(model_config(name, (1, 28, 28), 10))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == widths + [10]
    assert linears[0].in_features == 784
    assert all(m.bias is None for m in linears)
    assert not any("bias" in k for k in model.state_dict())
    assert not has_batchnorm(model)


def test_mlp_options():
    model = build_model(model_config("mlp", (1, 8, 8), 10))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [512, 512, 512, 10]
    assert all(m.bias is not None for m in linears)
    cfg = model_config("mlp", (1, 8, 8), 10, width=32, depth=4, norm="bn", bias=False)
    assert cfg["widths"] == [32] * 4 and cfg["bn"] is True and cfg["bias"] is False
    m = build_model(cfg)
    assert has_batchnorm(m)
    assert sum(isinstance(x, nn.BatchNorm1d) for x in m.modules()) == 4


@pytest.mark.parametrize("depth", [8, 14, 20, 32])
def test_resnet_depth_is_6n_plus_2(depth):
    model = build_model(model_config("resnet", (3, 32, 32), 10, depth=depth, width=0.25))
    # Weight layers on the main path: 3×3 convolutions plus the final linear layer.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == depth


@pytest.mark.parametrize("norm,kind", [("bn", nn.BatchNorm2d), ("gn", nn.GroupNorm),
                                       ("ln", nn.GroupNorm)])
def test_resnet_norms(norm, kind):
    model = build_model(model_config("resnet8", (3, 8, 8), 10, norm=norm, width=0.5))
    assert any(isinstance(m, kind) for m in model.modules())
    assert has_batchnorm(model) == (norm == "bn")
    plain = build_model(model_config("resnet8", (3, 8, 8), 10, norm="none", width=0.5))
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_vgg_width_and_norm():
    full = build_model(model_config("vgg11", (3, 32, 32), 10))
    convs = [m for m in full.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 and convs[0].out_channels == 64 and convs[-1].out_channels == 512
    half = build_model(model_config("vgg11", (3, 32, 32), 10, width=0.5, norm="none"))
    convs = [m for m in half.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 32 and not has_batchnorm(half)
    for depth, n in ((13, 10), (16, 13), (19, 16)):
        m = build_model(model_config("vgg11", (3, 8, 8), 10, depth=depth, width=0.0625))
        assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == n


@pytest.mark.parametrize("name,overrides,match", [
    ("resnet", {"depth": 21}, "6n\\+2"),
    ("resnet", {"depth": 2}, "6n\\+2"),
    ("resnet", {"norm": "batch"}, "norm"),
    ("vgg11", {"depth": 12}, "8, 11, 13, 16, 19"),
    ("vgg11", {"norm": "gn"}, "bn or none"),
    ("vgg11", {"width": 0}, "positive"),
    ("resnet20", {"width": -1.0}, "positive"),
    ("convnet", {"dropout": 1.0}, "dropout"),
    ("convnet", {"dropout": -0.1}, "dropout"),
    ("mlp", {"width": 0}, "positive"),
    ("mlp", {"depth": 0}, "positive"),
    ("mlp", {"dropout": 0.5}, "no option 'dropout'"),
    ("resnet20", {"bias": True}, "no option 'bias'"),
])
def test_bad_model_options(name, overrides, match):
    with pytest.raises(UsageError, match=match):
        model_config(name, (1, 8, 8), 10, **overrides)


def test_bad_model_names_and_shapes():
    with pytest.raises(UsageError, match="unknown model 'resnet'?x"):
        model_config("resnetx", (1, 8, 8), 10)
    with pytest.raises(UsageError, match=r"ResNet depth must be 6n\+2"):  # resnetN: any 6n+2
        model_config("resnet21", (1, 8, 8), 10)
    assert model_config("resnet26", (1, 8, 8), 10)["depth"] == 26
    with pytest.raises(UsageError, match="classes"):
        model_config("mlp", (1, 8, 8), 1)
    with pytest.raises(UsageError, match="input shape"):
        model_config("mlp", (8, 8), 10)
    with pytest.raises(UsageError, match="input shape"):
        model_config("mlp", (0, 8, 8), 10)
    with pytest.raises(UsageError, match="architecture"):
        build_model({"arch": "transformer", "input_shape": [1, 8, 8], "num_classes": 10})


def test_none_overrides_are_ignored():
    assert model_config("resnet20", (3, 8, 8), 10, depth=None, width=None) == \
        model_config("resnet20", (3, 8, 8), 10)


# ---------------------------------------------------------------- the registries


class _Tiny(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=4):
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def registries(monkeypatch):
    """The zoo's registries, restored after the test."""
    from modeconn import models

    for name in ("ARCHS", "PRESETS", "NOTES"):
        monkeypatch.setattr(models, name, dict(getattr(models, name)))
    return models


def test_help_and_messages_are_generated_from_the_registries(registries):
    assert registries.model_help() == (
        "mlp, mlpnet, mlplarge, mlphuge, vgg11/13/16/19, vgglike (VGG-like for multispectral "
        "patches), resnet (resnet20; resnetN for any depth N = 6n+2), resnet8/14/20/32/44/56/110, "
        "convnet, vit (Vision Transformer), gpt (character-level language model, text data "
        "only)")
    registries.register("tiny", _Tiny, note="a one-layer test net", hidden=4)
    assert registries.model_help().endswith(", gpt (character-level language model, text data "
                                               "only), tiny (a one-layer test net)")
    with pytest.raises(UsageError, match=r"^unknown model 'nope'; choose one of mlp, mlpnet, .*, "
                                         r"convnet, vit, gpt, tiny \(or resnetN"):
        model_config("nope", (1, 8, 8), 10)
    with pytest.raises(UsageError, match="unknown architecture 'transformer'; expected one of "
                                         "mlp, vgg, resnet, convnet, vit, gpt, tiny$"):
        build_model({"arch": "transformer", "input_shape": [1, 8, 8], "num_classes": 10})


def test_a_registered_model_is_configured_built_and_rebuilt_from_its_json(registries):
    registries.register("tiny", _Tiny, hidden=4)
    cfg = model_config("tiny", (1, 8, 8), 3, hidden=6, depth=None)
    assert cfg == {"arch": "tiny", "hidden": 6, "input_shape": [1, 8, 8], "num_classes": 3}
    model = build_model(json.dumps(cfg))
    assert isinstance(model, _Tiny) and model.net[1].out_features == 6
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(UsageError, match="^model 'tiny' has no option 'width'; it takes hidden$"):
        model_config("tiny", (1, 8, 8), 3, width=2.0)


def test_register_refuses_taken_names_and_bad_builders(registries):
    for taken in ("mlp", "vgg", "resnet21"):  # a preset, an architecture, a resnetN
        with pytest.raises(ValueError, match=f"^model '{taken}' is already registered; choose "
                                             "another name$"):
            registries.register(taken, _Tiny)
    with pytest.raises(ValueError, match="a model name is a word"):
        registries.register("my model", _Tiny)
    with pytest.raises(ValueError, match="must be JSON values"):
        registries.register("tiny", _Tiny, hidden=object())
    registries.register("broken", lambda shape, classes: "not a module")
    with pytest.raises(TypeError, match="^the builder of 'broken' returned str, not an nn.Module$"):
        build_model(model_config("broken", (1, 8, 8), 3))


def test_a_registered_model_trains_through_the_jobs_and_reloads(registries, tmp_path):
    from modeconn.cli import main
    from modeconn.models import load_model

    registries.register("tiny", _Tiny, hidden=4)
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny", "--epochs", "1", "--quiet", "--device", "cpu",
                 "--out", str(out)]) == 0
    model, _ = load_model(out / "all" / "model.safetensors")
    assert isinstance(model, _Tiny) and model.net[1].out_features == 4


class _Scaled(nn.Module):
    def __init__(self, input_shape, num_classes, width=1.0):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), max(1, int(8 * width))),
                                 nn.ReLU(), nn.Linear(max(1, int(8 * width)), num_classes))

    def forward(self, x):
        return self.net(x)


def test_a_registered_model_named_like_an_mlp_is_not_taken_for_one(registries):
    """Whether a width counts units is the architecture's business, not the name's: a user's
    `mlpish` with a width multiplier takes --width 0.5."""
    from modeconn import jobs

    registries.register("mlpish", _Scaled, width=1.0)
    assert registries.arch_of("mlpish") == "mlpish" and registries.arch_of("mlp") == "mlp"
    assert registries.arch_of("resnet26") == "resnet" and registries.arch_of("nope") is None
    config = jobs.get("train").config(model="mlpish", width=0.5)
    assert config.model_config((1, 8, 8), 10)["width"] == 0.5
    with pytest.raises(jobs.ConfigError, match="whole number of units for an MLP"):
        jobs.get("train").config(model="mlpnet", width=0.5)

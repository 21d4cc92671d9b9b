"""The graph reader: its facts on the zoo, the registration hook, and REPAIR's layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeconn import graph
from modeconn.align import Permutation, auto_spec, weight_matching
from modeconn.errors import UsageError
from modeconn.merge import average, channel_stats, repair, repair_layers
from modeconn.models import build_model, model_config

SHAPE = (3, 8, 8)


def zoo(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(model_config(name, SHAPE, 10, **kw))


def read(model: nn.Module) -> graph.ModelGraph:
    return graph.read(model, torch.randn(2, *SHAPE))


# --- the zoo ----------------------------------------------------------------------------------


def test_mlp_facts():
    g = read(zoo("mlp", widths=[32, 16]))
    assert g.producers == ["1", "3", "5"]  # Flatten is module 0
    assert g.activations == ["2", "4"]
    assert g.norms == [] and g.residual_adds == [] and g.ties == []
    assert [(c.name, c.size, c.fixed) for c in g.channel_groups()] == [
        ("1", 32, False), ("3", 16, False), ("5", 10, True)]  # the logits are the output
    assert g.repair_layers() == ["1", "3"]


def test_vgg11_facts():
    g = read(zoo("vgg11", width=0.125))
    assert g.producers == ["0", "4", "8", "11", "15", "18", "21", "24", "28"]
    assert g.norms == ["1", "5", "9", "12", "16", "19", "22", "25"]
    assert g.activations == ["2", "6", "10", "13", "17", "20", "23", "26"]
    assert g.ties == [] and g.residual_adds == []
    assert g.repair_layers() == []  # every conv feeds a BatchNorm


def test_resnet8_facts_and_residual_ties():
    g = read(zoo("resnet8", width=0.5))
    assert g.producers == ["conv1", "layers.0.conv1", "layers.0.conv2", "layers.1.conv1",
                           "layers.1.conv2", "layers.1.shortcut.0", "layers.2.conv1",
                           "layers.2.conv2", "layers.2.shortcut.0", "fc"]
    assert g.norms[:3] == ["norm1", "layers.0.norm1", "layers.0.norm2"]
    assert g.activations == ["relu", "layers.0.relu", "layers.1.relu", "layers.2.relu"]
    assert g.calls["layers.0.relu"] == 2
    assert len(g.residual_adds) == 3
    assert g.ties == [("conv1", "layers.0.conv2"),  # identity shortcut: the stem's channels
                      ("layers.1.conv2", "layers.1.shortcut.0"),
                      ("layers.2.conv2", "layers.2.shortcut.0")]
    # one permutation per free channel group: the spec auto_spec derives
    free = [c for c in g.channel_groups() if not c.fixed]
    spec = auto_spec(zoo("resnet8", width=0.5), torch.randn(2, *SHAPE))
    assert sorted(spec.sizes.values()) == sorted(c.size for c in free)


def test_convnet_facts():
    g = read(zoo("convnet", width=0.25))
    assert g.producers == ["0", "3", "6", "10", "13"]
    assert g.activations == ["1", "4", "7", "11"]
    assert g.layers("pool") == ["2", "5", "8"]
    assert g.layers("passthrough") == ["12"]  # dropout
    assert g.repair_layers() == ["0", "3", "6", "10"]
    assert g.producer("0").channel_dim == 1 and g.producer("10").channel_dim == -1


def test_nodes_come_in_forward_order_with_their_kinds():
    g = graph.read(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Dropout(), nn.Linear(5, 2)))
    kinds = [g.kind(n) for n in g.nodes if n.op == "call_module"]
    assert kinds == ["producer", "activation", "passthrough", "producer"]
    with pytest.raises(UsageError, match="example input"):
        g.channel_groups()  # shapes are needed to follow channels


def test_functional_activations_count_for_repair():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.c(self.b(torch.relu(self.a(x))).tanh())

    assert repair_layers(Functional()) == ["a", "b"]


# --- a custom layer, before and after registration --------------------------------------------


class Dense(nn.Module):
    """A linear layer that keeps its kernel as (in, out) and applies it with tensordot."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(n_in, n_out) / n_in ** 0.5)
        self.offset = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensordot(x, self.kernel, dims=([1], [0])) + self.offset


class Gate(nn.Module):
    """x·sigmoid(s·x) with a per-channel s, and a shape check that fx cannot trace."""

    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError("Gate takes (batch, features)")
        return x * torch.sigmoid(self.scale * x)


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(6, 12), Gate(12)
        self.dense, self.act2 = Dense(12, 10), Gate(10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act2(self.dense(self.act1(self.fc1(x)))))


@pytest.fixture
def registry():
    yield graph.register_layer
    graph.unregister_layer(Gate)
    graph.unregister_layer(Dense)


def test_untraceable_model_is_one_line_naming_the_layer():
    with pytest.raises(UsageError) as err:
        auto_spec(Custom(), torch.randn(4, 6))
    msg = str(err.value)
    assert "\n" not in msg
    for word in ("cannot trace Custom", "control flow", "Gate.forward ('act1')", "register_layer",
                 "spec="):
        assert word in msg
    with pytest.raises(UsageError, match=r"REPAIR cannot trace Custom.*Gate.*register_layer"):
        repair_layers(Custom())


def test_a_registered_layer_makes_auto_spec_work(registry):
    torch.manual_seed(0)
    model, x = Custom(), torch.randn(64, 6)
    registry(Gate, kind="activation")  # its per-channel `scale` is found by its length
    with pytest.raises(UsageError, match=r"tensordot in Dense.forward .*register_layer"):
        auto_spec(model, x)  # Dense is traced through, and tensordot is not followed
    registry(Dense, kind="producer", weight="kernel", bias="offset", in_axis=0, out_axis=1,
             channel_dim=-1)
    spec = auto_spec(model, x)  # checked inside: permuting by the spec keeps the function
    assert spec.sizes == {"fc1": 12, "dense": 10}
    assert spec.axes["dense.kernel"] == ("fc1", "dense")
    assert spec.axes["act1.scale"] == ("fc1",) and spec.axes["act2.scale"] == ("dense",)
    g = graph.read(model, x)
    assert g.producers == ["fc1", "dense", "fc2"] and g.activations == ["act1", "act2"]
    # a permuted copy is recovered exactly by weight matching with the derived spec
    perm = Permutation.random(spec, torch.Generator().manual_seed(3))
    assert not perm.is_identity()
    permuted = perm.apply(dict(model.state_dict()))
    found = weight_matching(model, permuted, spec=spec, example_input=x[:2])
    back = found.apply(permuted)
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v), k


def test_repair_finds_and_corrects_registered_producers(registry):
    registry(Gate, kind="activation")
    registry(Dense, kind="producer", weight="kernel", bias="offset", in_axis=0, out_axis=1,
             channel_dim=-1)
    assert repair_layers(Custom()) == ["fc1", "dense"]
    torch.manual_seed(0)
    model, x = Custom(), torch.randn(300, 6)
    a = dict(model.state_dict())
    b = dict(Custom().state_dict())
    fixed = repair(model, [a, b], average([a, b]), x, lam=0.5)
    sa, sb, sr = (channel_stats(model, p, x, ["dense"])["dense"] for p in (a, b, fixed))
    torch.testing.assert_close(sr[0], 0.5 * (sa[0] + sb[0]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sr[1], 0.5 * (sa[1] + sb[1]), atol=1e-4, rtol=1e-3)


def test_a_registered_passthrough_and_norm():
    class Scale(nn.Module):  # channels-last per-channel affine, written in a way fx cannot trace
        def __init__(self, n):
            super().__init__()
            self.gain, self.shift = nn.Parameter(torch.rand(n) + 1), nn.Parameter(torch.randn(n))

        def forward(self, x):
            return x * self.gain + self.shift if x.sum() == x.sum() else x

    class Tap(nn.Module):
        def forward(self, x):
            return x if x.dim() else x

    model = nn.Sequential(nn.Linear(5, 7), Scale(7), nn.ReLU(), Tap(), nn.Linear(7, 2))
    graph.register_layer(Scale, kind="norm", channel_dim=-1, params=("gain", "shift"))
    graph.register_layer(Tap, kind="passthrough")
    try:
        spec = auto_spec(model, torch.randn(4, 5))
        assert spec.axes["1.gain"] == ("0",) and spec.axes["1.shift"] == ("0",)
        g = graph.read(model)
        assert g.norms == ["1"] and g.layers("passthrough") == ["3"]
    finally:
        graph.unregister_layer(Scale)
        graph.unregister_layer(Tap)


def test_register_layer_refuses_what_it_cannot_use():
    with pytest.raises(UsageError, match="kind must be one of"):
        graph.register_layer(Gate, kind="pool")
    with pytest.raises(UsageError, match="nn.Module class"):
        graph.register_layer(Gate(3), kind="activation")
    with pytest.raises(UsageError, match="different axes"):
        graph.register_layer(Dense, kind="producer", in_axis=0, out_axis=0)
    assert graph.registered_layer(Gate(3)) is None

"""Permutation alignment: specs from the graph, permutations, LAP warm starts, matching, merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeconn.align import (
    Permutation,
    PermutationSpec,
    WarmLAP,
    WeightMatcher,
    activation_matching,
    auto_spec,
    certify,
    check_spec,
    linear_assignment,
    mean_params,
    merge_many,
    ste_epochs,
    ste_matching,
    ste_mm,
    weight_matching,
)
from modeconn.errors import UsageError
from modeconn.models import build_model, model_config

SMALL = (1, 8, 8)
CIFAR = (3, 32, 32)

ZOO = [
    ("mlp", SMALL, {"width": 32}),
    ("mlp", SMALL, {"width": 32, "norm": "bn"}),
    ("mlpnet", SMALL, {}),
    ("vgg11", SMALL, {"width": 0.125}),
    ("vgg11", SMALL, {"width": 0.125, "norm": "none"}),
    ("vgg11", CIFAR, {"width": 0.125}),
    ("resnet8", SMALL, {"width": 0.5, "norm": "bn"}),
    ("resnet8", SMALL, {"width": 0.5, "norm": "gn"}),
    ("resnet8", SMALL, {"width": 0.5, "norm": "ln"}),
    ("resnet8", SMALL, {"width": 0.5, "norm": "none"}),
    ("resnet20", CIFAR, {"width": 0.25, "norm": "bn"}),
    ("resnet20", CIFAR, {"width": 0.25, "norm": "ln"}),
    ("convnet", SMALL, {"width": 0.25}),
    ("convnet", CIFAR, {"width": 0.25}),
]


def zoo_id(case: tuple) -> str:
    name, shape, kw = case
    return f"{name}-{'x'.join(map(str, shape))}-" + "-".join(f"{k}{v}" for k, v in kw.items())


def make(name: str, shape: tuple[int, ...], seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(model_config(name, shape, 10, **kw)).eval()


def example(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def recovered(model: nn.Module, spec: PermutationSpec, trial: int) -> bool:
    """Whether weight matching undoes a random permutation exactly."""
    state = model.state_dict()
    permuted = Permutation.random(spec, torch.Generator().manual_seed(trial)).apply(state)
    found = WeightMatcher(spec, seed=trial)(state, permuted)
    return equal_states(found.apply(permuted), state)


# --- specs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ZOO, ids=zoo_id)
def test_auto_spec_fits_every_zoo_model(case):
    name, shape, kw = case
    model = make(name, shape, **kw)
    x = example(shape)
    spec = auto_spec(model, x)
    assert spec.sizes, "every zoo model has hidden units to permute"
    check_spec(model, spec, x, trials=3)
    state = model.state_dict()
    for key, axes in spec.axes.items():
        if key.endswith("num_batches_tracked"):
            assert axes == ()
    # The input axis of the first layer and the output axis of the last are never permuted.
    weights = [k for k in state if k.endswith("weight") and state[k].dim() >= 2]
    assert spec.axes[weights[0]][1] is None
    assert spec.axes[weights[-1]][0] is None


def test_residual_additions_tie_permutations():
    model = make("resnet8", SMALL, width=0.5, norm="bn")
    spec = auto_spec(model, example(SMALL))
    stem = spec.axes["conv1.weight"][0]
    assert spec.axes["layers.0.conv2.weight"][0] == stem
    assert spec.axes["layers.0.norm2.running_mean"][0] == stem
    assert spec.axes["layers.1.conv1.weight"][1] == stem
    assert spec.axes["layers.1.shortcut.0.weight"][1] == stem
    # The projection shortcut and the block's second conv share the new stage's permutation.
    assert spec.axes["layers.1.shortcut.0.weight"][0] == spec.axes["layers.1.conv2.weight"][0]
    assert spec.axes["fc.weight"] == (None, spec.axes["layers.2.conv2.weight"][0])


def test_groupnorm_with_several_groups_pins_its_channels():
    # resnet8 at width 0.5 has 8/16/32 channels; "gn" uses 8 groups: 8 channels means one
    # channel per group (equivariant), 16 and 32 do not.
    model = make("resnet8", SMALL, width=0.5, norm="gn")
    spec = auto_spec(model, example(SMALL))
    assert spec.axes["conv1.weight"][0] is not None
    assert spec.axes["layers.1.conv2.weight"][0] is None
    assert spec.axes["layers.1.conv1.weight"][0] is None


def test_flatten_after_conv_expands_channel_permutation():
    model = make("convnet", CIFAR, width=0.25)  # 4×4 feature map before the flatten
    spec = auto_spec(model, example(CIFAR))
    fc = next(k for k in spec.axes if k.endswith("weight") and model.state_dict()[k].dim() == 2)
    assert spec.layout(fc, 1) == (1, 16)
    perm = Permutation.random(spec, torch.Generator().manual_seed(0))
    x = example(CIFAR)
    assert torch.allclose(perm.apply(model)(x), model(x), atol=1e-5)


class FunctionalNet(nn.Module):
    """Functional layers, a learned per-channel scale, a residual, mean pooling, a transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(6) * 0.1)
        self.scale = nn.Parameter(torch.rand(6) + 0.5)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(F.conv2d(x, self.w1, self.b1, padding=1))
        h = h * self.scale.view(1, -1, 1, 1)
        h = h + torch.tanh(self.conv2(h))
        h = h.mean(dim=(2, 3))
        h = self.norm(h.unsqueeze(1).transpose(1, 2).squeeze(2))
        return self.head(h)


def test_auto_spec_follows_functional_code():
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    x = torch.randn(5, 3, 8, 8)
    spec = auto_spec(model, x)
    p = spec.axes["w1"][0]
    assert p is not None
    assert spec.axes["b1"] == (p,) and spec.axes["scale"] == (p,)
    assert spec.axes["conv2.weight"][:2] == (p, p)  # residual ties conv2's output to its input
    assert spec.axes["norm.weight"] == (p,) and spec.axes["head.weight"] == (None, p)


class Sorted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.sort(self.a(x), dim=1).values)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = -h
        return self.b(h)


class WithLRN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.lrn, self.fc = nn.Conv2d(1, 4, 3), nn.LocalResponseNorm(2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.lrn(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("model, words", [
    (Sorted(), ["torch.sort", "Sorted", "spec="]),
    (Branchy(), ["control flow", "Branchy", "spec="]),
    (WithLRN(), ["'lrn'", "LocalResponseNorm", "spec="]),
])
def test_unsupported_operations_name_themselves(model, words):
    x = torch.randn(3, 1, 6, 6) if isinstance(model, WithLRN) else torch.randn(3, 4)
    with pytest.raises(UsageError) as err:
        auto_spec(model, x)
    for word in words:
        assert word in str(err.value)


def mlp_spec_by_hand(model: nn.Module) -> PermutationSpec:
    # mlp with widths [32, 32]: Flatten, Linear(1), ReLU, Linear(3), ReLU, Linear(5)
    axes = {"1.weight": ("h1", None), "1.bias": ("h1",),
            "3.weight": ("h2", "h1"), "3.bias": ("h2",),
            "5.weight": (None, "h2"), "5.bias": (None,)}
    return PermutationSpec.from_axes(axes, model.state_dict())


def test_hand_written_spec_matches_auto_and_aligns():
    model = make("mlp", SMALL, widths=[32, 32])
    x = example(SMALL)
    spec = mlp_spec_by_hand(model)
    check_spec(model, spec, x)
    auto = auto_spec(model, x)
    assert sorted(auto.sizes.values()) == sorted(spec.sizes.values())
    permuted = Permutation.random(spec, torch.Generator().manual_seed(3)).apply(model)
    found = weight_matching(model, permuted, spec=spec, example_input=x)
    assert equal_states(found.apply(permuted).state_dict(), model.state_dict())


def test_wrong_spec_is_refused_naming_the_permutation():
    model = make("mlp", SMALL, widths=[32, 32])
    axes = {"1.weight": ("h1", None), "1.bias": ("h1",), "3.weight": ("h2", None),
            "3.bias": ("h2",), "5.weight": (None, "h2")}
    spec = PermutationSpec.from_axes(axes, model.state_dict())
    with pytest.raises(UsageError, match="'h1'"):
        check_spec(model, spec, example(SMALL))
    with pytest.raises(UsageError, match="size"):
        PermutationSpec({"1.weight": ("h1", None)}, {"h1": 7}).validate(model.state_dict())


# --- permutations -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", [ZOO[1], ZOO[5], ZOO[6], ZOO[13]], ids=zoo_id)
def test_permutation_apply_inverse_and_outputs(case):
    name, shape, kw = case
    model = make(name, shape, **kw)
    x = example(shape, n=6)
    spec = auto_spec(model, x)
    perm = Permutation.random(spec, torch.Generator().manual_seed(1))
    assert not perm.is_identity()
    permuted = perm.apply(model)
    assert isinstance(permuted, type(model)) and permuted is not model
    assert torch.allclose(permuted(x), model(x), atol=1e-5, rtol=1e-4)
    state = model.state_dict()
    assert not equal_states(perm.apply(state), state)
    assert equal_states(perm.inverse().apply(perm.apply(state)), state)
    assert perm.inverse().compose(perm).is_identity()
    twice = perm.compose(perm)
    assert equal_states(twice.apply(state), perm.apply(perm.apply(state)))
    assert Permutation.from_json(perm.to_json()) == perm
    assert Permutation.identity(spec).apply(state).keys() == state.keys()


def test_permutation_validates_its_groups():
    model = make("mlp", SMALL, widths=[4, 4])
    spec = mlp_spec_by_hand(model)
    with pytest.raises(UsageError, match="not a permutation"):
        Permutation(spec, {"h1": [0, 0, 1, 2], "h2": [0, 1, 2, 3]})
    with pytest.raises(UsageError, match="missing"):
        Permutation(spec, {"h1": [0, 1, 2, 3]})


# --- linear assignment ------------------------------------------------------------------------


def test_linear_assignment_maximises():
    rng = np.random.default_rng(0)
    score = rng.standard_normal((6, 6))
    cols = linear_assignment(score)
    best = max(score[np.arange(6), list(p)].sum()
               for p in __import__("itertools").permutations(range(6)))
    assert score[np.arange(6), cols].sum() == pytest.approx(best)


@pytest.mark.parametrize("structured", [False, True])
def test_warm_lap_equals_cold_on_random_and_perturbed_matrices(structured):
    rng = np.random.default_rng(1)
    lap = WarmLAP(min_size=0)
    for trial in range(6):
        n = int(rng.integers(20, 120))
        if structured:  # low rank plus noise, like weight-matching costs
            u = rng.standard_normal((n, 8))
            base = u @ (u + 0.5 * rng.standard_normal((n, 8))).T
        else:
            base = rng.standard_normal((n, n))
        for scale in (0.0, 1e-6, 1e-3, 1e-1, 1.0):
            score = base + scale * rng.standard_normal((n, n))
            assert np.array_equal(lap.solve(trial, score), linear_assignment(score))
    assert lap.certified > 0 and lap.solved > 0


def test_warm_lap_skips_solves_while_still_optimal():
    rng = np.random.default_rng(2)
    u = rng.standard_normal((150, 10))
    score = u @ u.T
    lap = WarmLAP(min_size=0)
    first = lap.solve("p", score)
    for _ in range(5):
        score = score + 1e-6 * rng.standard_normal(score.shape)
        assert np.array_equal(lap.solve("p", score), first)
    assert lap.solved == 1 and lap.certified == 5


def test_warm_lap_backs_off_when_certificates_keep_failing():
    rng = np.random.default_rng(0)
    lap = WarmLAP(max_backoff=8)
    for _ in range(21):  # unrelated matrices: the last answer is never optimal again
        score = rng.standard_normal((128, 128))
        np.testing.assert_array_equal(lap.solve("k", score), linear_assignment(score))
    # Attempts after the first solve at calls 2, 4, 7, 12, 21: back-off 1, 2, 4, 8, 8.
    assert (lap.attempts, lap.certified, lap.solved) == (5, 0, 21)
    same = rng.standard_normal((128, 128))
    for _ in range(40):  # the matrix stops changing: certificates come back
        np.testing.assert_array_equal(lap.solve("k", same), linear_assignment(same))
    assert lap.certified >= 20


def test_certificate_rejects_a_suboptimal_assignment():
    rng = np.random.default_rng(3)
    score = rng.standard_normal((40, 40))
    cols = linear_assignment(score)
    ok, _ = certify(score, cols)
    assert ok
    worse = cols.copy()
    worse[[0, 1]] = worse[[1, 0]]
    assert not certify(score, worse)[0]
    cycled = cols.copy()
    cycled[[0, 1, 2]] = cycled[[1, 2, 0]]
    assert not certify(score, cycled)[0]


# --- weight matching --------------------------------------------------------------------------


def test_weight_matching_recovers_random_permutations_mlp():
    model = make("mlp", SMALL, widths=[24, 24, 24])
    spec = auto_spec(model, example(SMALL))
    assert sum(recovered(model, spec, t) for t in range(100)) == 100


@pytest.mark.parametrize("case", [("vgg11", SMALL, {"width": 0.125}),
                                  ("convnet", CIFAR, {"width": 0.125})], ids=zoo_id)
def test_weight_matching_recovers_random_permutations_cnn(case):
    name, shape, kw = case
    model = make(name, shape, **kw)
    spec = auto_spec(model, example(shape))
    assert sum(recovered(model, spec, t) for t in range(20)) == 20


@pytest.mark.parametrize("norm", ["bn", "ln", "none"])
def test_weight_matching_recovery_rate_resnet(norm):
    model = make("resnet8", SMALL, width=0.5, norm=norm)
    spec = auto_spec(model, example(SMALL))
    rate = sum(recovered(model, spec, t) for t in range(10)) / 10
    print(f"resnet8 {norm}: recovered {rate:.0%} of 10 random permutations")
    assert rate >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    ("mlp", SMALL, {"width": 64}), ("vgg11", SMALL, {"width": 0.25}),
    ("vgg11", CIFAR, {"width": 0.125, "norm": "none"}), ("convnet", CIFAR, {"width": 0.25}),
    ("resnet20", CIFAR, {"width": 0.5, "norm": "bn"}),
    ("resnet20", CIFAR, {"width": 0.5, "norm": "ln"}),
    ("resnet20", CIFAR, {"width": 0.5, "norm": "none"})], ids=zoo_id)
def test_weight_matching_recovers_100_of_100(case):
    name, shape, kw = case
    model = make(name, shape, **kw)
    spec = auto_spec(model, example(shape))
    hits = sum(recovered(model, spec, t) for t in range(100))
    print(f"{zoo_id(case)}: recovered {hits}/100")
    assert hits == 100 if not name.startswith("resnet") else hits >= 90


def test_weight_matching_api_forms():
    model = make("mlp", SMALL, widths=[16, 16])
    other = make("mlp", SMALL, seed=1, widths=[16, 16])
    x = example(SMALL)
    spec = auto_spec(model, x)
    by_module = weight_matching(model, other, example_input=x)
    by_dict = weight_matching(model.state_dict(), other.state_dict(), spec=spec)
    assert by_module == by_dict
    with pytest.raises(UsageError, match="example input"):
        weight_matching(model.state_dict(), other.state_dict())
    # Matching improves the alignment objective over the identity.
    sa = model.state_dict()
    inner = sum(float((sa[k] * by_dict.apply(other.state_dict())[k]).sum()) for k in sa)
    base = sum(float((sa[k] * other.state_dict()[k]).sum()) for k in sa)
    assert inner > base


def test_warm_matcher_agrees_with_cold_restarts_on_drifting_weights():
    model = make("mlp", SMALL, widths=[160, 160])
    other = make("mlp", SMALL, seed=1, widths=[160, 160])
    spec = auto_spec(model, example(SMALL))
    warm, cold = WeightMatcher(spec), WeightMatcher(spec, warm=False)
    gen = torch.Generator().manual_seed(0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    target = other.state_dict()
    previous = None
    for _ in range(6):
        state = {k: v + 1e-3 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
        got = warm(state, target)
        previous = cold(state, target, init=previous)
        assert got == previous
    assert warm.passes == 1 or warm.lap.certified > 0


def test_warm_matcher_sees_in_place_updates_of_its_inputs():
    # STE proxies are updated in place by the optimizer and passed as fresh detach() views,
    # which share the version counter: a cache keyed on it must still notice the change.
    model = make("mlp", SMALL, widths=[24, 24])
    spec = auto_spec(model, example(SMALL))
    target = make("mlp", SMALL, seed=1, widths=[24, 24]).state_dict()
    proxy = {k: v.clone() for k, v in model.state_dict().items()}
    warm = WeightMatcher(spec)
    first = warm({k: v.detach() for k, v in proxy.items()}, target)
    assert first == WeightMatcher(spec, warm=False)(proxy, target)
    moved = Permutation.random(spec, torch.Generator().manual_seed(3))
    with torch.no_grad():
        for k, v in moved.inverse().apply(target).items():
            proxy[k].copy_(v)  # the proxy becomes a permuted copy of the target
    got = warm({k: v.detach() for k, v in proxy.items()}, target)
    assert got != first
    assert equal_states(got.apply(target), proxy)


def test_ste_epochs_reach_the_reference_step_count_on_small_data():
    from modeconn.align.matching import STE_MIN_STEPS

    assert ste_epochs(50_000, 256) == 10  # CIFAR-sized: the reference's 10 epochs
    small = ste_epochs(1437, 256)  # digits: 6 steps per epoch
    assert small * 6 >= STE_MIN_STEPS and (small - 1) * 6 < STE_MIN_STEPS
    assert ste_epochs(1437, 256, epochs=3) == 3
    with pytest.raises(UsageError, match="at least 1"):
        ste_epochs(1437, 256, epochs=0)


# --- activations, STE, merging -----------------------------------------------------------------


def test_activation_matching_recovers_permuted_copy():
    model = make("mlp", SMALL, widths=[32, 32])
    x = example(SMALL, n=512)
    spec = auto_spec(model, x[:4])
    permuted = Permutation.random(spec, torch.Generator().manual_seed(5)).apply(model)
    found = activation_matching(model, permuted, x, batch_size=128)
    assert equal_states(found.apply(permuted).state_dict(), model.state_dict())
    by_dict = activation_matching(model.state_dict(), permuted.state_dict(), x, spec,
                                  model=model, statistic="cross")
    assert equal_states(by_dict.apply(permuted).state_dict(), model.state_dict())


def test_activation_matching_residual_network():
    model = make("resnet8", SMALL, width=0.5, norm="none")
    x = example(SMALL, n=256)
    spec = auto_spec(model, x[:4])
    perm = Permutation.random(spec, torch.Generator().manual_seed(6))
    permuted = perm.apply(model)
    found = activation_matching(model, permuted, x)
    # Units that never activate cannot be told apart; all others must be matched.
    agree = np.mean([(found[p] == perm.inverse()[p]).float().mean().item() for p in spec.sizes])
    assert agree > 0.9


class PoolNet(nn.Module):
    """conv-relu-pool twice (the second map stays 2x2 into the flatten), dropout, linear-relu."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)
        self.r1, self.r2, self.r3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.drop = nn.Dropout(0.1)
        self.f1, self.f2 = nn.Linear(5 * 2 * 2, 7), nn.Linear(7, 3)

    def forward(self, x):
        x = F.max_pool2d(self.r1(self.c1(x)), 2)
        x = self.drop(F.avg_pool2d(self.r2(self.c2(x)), 2))
        return self.f2(self.r3(self.f1(torch.flatten(x, 1))))


def reference_am(a: nn.Module, b: nn.Module, x: torch.Tensor, after: dict[str, str]) -> dict:
    """Activation matching as git-re-basin's VGG script and the REPAIR notebook do it: each unit
    read at its ReLU's output (before pooling), every position a sample, Pearson correlation."""
    acts: dict[str, list] = {}
    hooks = []
    for tag, m in (("a", a), ("b", b)):
        for perm, relu in after.items():
            def hook(_m, _i, out, key=(tag, perm)):
                t = out.movedim(1, -1) if out.dim() > 2 else out
                acts.setdefault(key, []).append(t.reshape(-1, t.shape[-1]).double())
            hooks.append(m.get_submodule(relu).register_forward_hook(hook))
    with torch.no_grad():
        a.eval()(x)
        b.eval()(x)
    for h in hooks:
        h.remove()
    perms = {}
    for perm in after:
        xa, xb = (torch.cat(acts[(t, perm)]) for t in "ab")
        sa, sb = xa.std(0, unbiased=False), xb.std(0, unbiased=False)
        corr = torch.nan_to_num((xa - xa.mean(0)).T @ (xb - xb.mean(0)) / len(xa)
                                / (sa[:, None] * sb[None, :]))
        perms[perm] = (torch.from_numpy(linear_assignment(corr.numpy())), sa > 0, sb > 0)
    return perms


def assert_same_matching(found: Permutation, want: dict) -> None:
    """Equal wherever the matching is determined: a dead unit (constant zero after its ReLU,
    common in untrained networks) correlates with nothing and may go anywhere."""
    checked = 0
    for p, (cols, alive_a, alive_b) in want.items():
        sure = alive_a & alive_b[cols]
        assert sure.any(), p
        assert torch.equal(found[p][sure], cols[sure]), p
        checked += int(sure.sum())
    assert checked > 0.6 * sum(len(cols) for cols, _, _ in want.values())


def test_activation_matching_reads_units_after_the_relu_before_pooling():
    x = example(SMALL, n=512, seed=3)
    torch.manual_seed(0)
    a, b = PoolNet(), PoolNet()
    spec = auto_spec(a, x[:4])
    assert set(spec.sizes) == {"c1", "c2", "f1"}
    found = activation_matching(a, b, x, batch_size=100)
    assert_same_matching(found, reference_am(a, b, x, {"c1": "r1", "c2": "r2", "f1": "r3"}))


class MeanNet(nn.Module):
    """conv-relu, a global mean over the map written as a reduction, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.r1, self.f1 = nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x):
        return self.f1(self.r1(self.c1(x)).mean((2, 3)))


def test_activation_matching_reads_units_before_a_global_mean():
    x = example(SMALL, n=256, seed=5)
    torch.manual_seed(1)
    a, b = MeanNet(), MeanNet()
    assert_same_matching(activation_matching(a, b, x), reference_am(a, b, x, {"c1": "r1"}))


@pytest.mark.parametrize("case", [ZOO[3], ZOO[5], ZOO[12]], ids=zoo_id)
def test_activation_matching_of_zoo_convnets_equals_the_reference_style(case):
    name, shape, kw = case
    a, b = make(name, shape, seed=0, **kw), make(name, shape, seed=1, **kw)
    x = example(shape, n=64, seed=4)
    # Each convolution's (or linear layer's) ReLU is the next ReLU module in the Sequential.
    mods = list(a.named_children())
    after = {}
    for i, (n, m) in enumerate(mods):
        if isinstance(m, (nn.Conv2d, nn.Linear)) and i + 1 < len(mods):
            after[n] = next(k for k, r in mods[i + 1:] if isinstance(r, nn.ReLU))
    spec = auto_spec(a, x[:4])
    assert set(spec.sizes) == set(after)
    assert_same_matching(activation_matching(a, b, x), reference_am(a, b, x, after))


def test_ste_matching_recovers_permuted_copy():
    model = make("mlp", SMALL, widths=[16, 16])
    x = example(SMALL, n=128)
    y = torch.randint(0, 10, (128,), generator=torch.Generator().manual_seed(0))
    spec = auto_spec(model, x[:4])
    permuted = Permutation.random(spec, torch.Generator().manual_seed(7)).apply(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = ste_matching(model, permuted, x, y, batch_size=64, epochs=2)
    assert equal_states(found.apply(permuted).state_dict(), model.state_dict())
    assert equal_states(model.state_dict(), before), "STE must not modify its inputs"


def test_merge_many_of_permuted_copies_recovers_the_model():
    model = make("vgg11", SMALL, width=0.125)
    x = example(SMALL)
    spec = auto_spec(model, x)
    copies = [Permutation.random(spec, torch.Generator().manual_seed(s)).apply(model)
              for s in range(3)]
    merged = merge_many([model] + copies, spec)
    assert merged.perms[0].is_identity()
    state = model.state_dict()
    for key, value in merged.params.items():
        assert torch.allclose(value.float(), state[key].float(), atol=1e-6), key
    for perm, member in zip(merged.perms, [model] + copies, strict=True):
        assert equal_states(perm.apply(member.state_dict()), state)


def test_ste_mm_of_permuted_copies_recovers_the_model():
    model = make("mlp", SMALL, widths=[16, 16])
    x = example(SMALL, n=64)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    spec = auto_spec(model, x[:4])
    copies = [Permutation.random(spec, torch.Generator().manual_seed(s)).apply(model)
              for s in range(2)]
    merged = ste_mm([model] + copies, x, y, batch_size=32, epochs=1)
    state = model.state_dict()
    for key, value in merged.params.items():
        assert torch.allclose(value, state[key], atol=1e-6), key


def _ste_setup(k: int = 2):
    models = [make("mlp", SMALL, seed=s, widths=[8]).train() for s in range(k)]
    x = example(SMALL, n=40)
    y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(0))
    return models, x, y, auto_spec(models[0], x[:4])


def test_ste_mm_on_the_epoch_driver_keeps_the_reference_loop_bit_for_bit():
    """The loop STE-MM ran before the epoch driver: same batch order, λ draws and float ops."""
    from modeconn.align.matching import _forward, _mean_loss, _straight_through, batch_statistics
    models, x, y, spec = _ste_setup(k=3)
    states = [dict(m.state_dict()) for m in models]
    trainable = {n for n, _ in models[0].named_parameters()}  # no buffers in this MLP
    proxies = [{n: states[0][n].clone().requires_grad_(True) for n in trainable} for _ in range(2)]
    opt = torch.optim.Adam([t for p in proxies for t in p.values()], lr=1e-2)
    matchers = [WeightMatcher(spec, seed=i) for i in range(2)]
    gen = torch.Generator().manual_seed(0)

    def proxy_state(i):
        return {n: proxies[i][n].detach() if n in trainable else v for n, v in states[0].items()}

    def matched():
        perms = [Permutation.identity(spec)] + [matchers[i](proxy_state(i), states[i + 1])
                                                for i in range(2)]
        merged = mean_params([p.apply(s) for p, s in zip(perms, states, strict=True)])
        return perms, _mean_loss(models[0], merged, x, y, F.cross_entropy, 16)

    with batch_statistics(models[0]):
        best, best_loss = matched()
        for _ in range(3):
            for idx in torch.randperm(len(x), generator=gen).split(16):
                points = [states[0]] + [
                    {n: _straight_through(v, proxies[i][n]) if n in trainable else v
                     for n, v in matchers[i](proxy_state(i), states[i + 1]).apply(
                         states[i + 1]).items()} for i in range(2)]
                lam = -torch.rand(3, generator=gen, dtype=torch.float64).log()
                lam /= lam.sum()
                loss = F.cross_entropy(_forward(models[0], mean_params(points, lam), x[idx]),
                                       y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            perms, loss_now = matched()
            if loss_now < best_loss:
                best, best_loss = perms, loss_now
    reference = mean_params([p.apply(s) for p, s in zip(best, states, strict=True)])
    merged = ste_mm(models, x, y, spec, batch_size=16, epochs=3, lr=1e-2, quiet=True)
    assert merged.perms == best
    assert equal_states(merged.params, reference)


@pytest.mark.parametrize("method", ["ste", "ste-mm"])
def test_ste_and_ste_mm_stop_at_the_first_diverged_step(method):
    from modeconn.errors import DivergedError

    models, x, y, spec = _ste_setup()
    x = torch.full_like(x, float("nan"))  # every batch loss is NaN
    with pytest.raises(DivergedError, match="epoch 1 step 1 "):
        if method == "ste":
            ste_matching(models[0], models[1], x, y, spec, batch_size=16, epochs=2)
        else:
            ste_mm(models, x, y, spec, batch_size=16, epochs=2)


@pytest.mark.parametrize("method,desc", [("ste", "STE"), ("ste-mm", "STE-MM")])
@pytest.mark.parametrize("quiet", [False, True])
def test_ste_and_ste_mm_count_their_epochs_on_a_progress_bar(monkeypatch, method, desc, quiet):
    import modeconn.train.loop as loop

    bars = []
    real = loop.progress

    def recording(total, desc, quiet=False, initial=0):
        bars.append((total, desc, quiet))
        return real(total, desc, quiet=True, initial=initial)

    monkeypatch.setattr(loop, "progress", recording)
    models, x, y, spec = _ste_setup()
    if method == "ste":
        ste_matching(models[0], models[1], x, y, spec, batch_size=16, epochs=2, quiet=quiet)
    else:
        ste_mm(models, x, y, spec, batch_size=16, epochs=2, quiet=quiet)
    assert bars == [(2, desc, quiet)]


# --- trained models (slow) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from modeconn.data.datasets import load_dataset

    return load_dataset("digits")


def trained(name: str, data, seed: int = 0, epochs: int = 5, **kw) -> nn.Module:
    """A zoo model trained briefly on digits (Adam 1e-3, batch 32)."""
    model = make(name, tuple(data.input_shape), seed=seed, **kw).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(data.train_x), generator=gen).split(32):
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def midpoint_barrier(model: nn.Module, a: dict, b: dict, x: torch.Tensor, y: torch.Tensor
                     ) -> float:
    """Loss at the midpoint of a and b minus the mean of their losses."""
    from torch.func import functional_call

    def loss(state: dict) -> float:
        return float(F.cross_entropy(functional_call(model, state, (x,)), y))

    mid = {k: (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k] for k in a}
    return loss(mid) - (loss(a) + loss(b)) / 2


@pytest.mark.slow
@pytest.mark.parametrize("name, kw", [("mlp", {"width": 128}), ("vgg11", {"width": 0.25}),
                                      ("convnet", {"width": 0.5}),
                                      ("resnet8", {"width": 0.5, "norm": "bn"})])
def test_trained_models_permutations_recovered(digits, name, kw):
    model = trained(name, digits, epochs=2, **kw)
    spec = auto_spec(model, digits.train_x[:4])
    hits = sum(recovered(model, spec, t) for t in range(100))
    print(f"trained {name}: recovered {hits}/100")
    assert hits == 100 if name != "resnet8" else hits >= 90


@pytest.mark.slow
def test_matching_cuts_the_barrier_between_digits_mlps(digits):
    a, b = trained("mlp", digits, seed=0), trained("mlp", digits, seed=1)
    x, y = digits.test_x, digits.test_y
    sa, sb = a.state_dict(), b.state_dict()
    before = midpoint_barrier(a, sa, sb, x, y)
    wm = weight_matching(a, b, example_input=x[:4])
    after_wm = midpoint_barrier(a, sa, wm.apply(sb), x, y)
    ste = ste_matching(a, b, digits.train_x, digits.train_y, epochs=3)
    after_ste = midpoint_barrier(a, sa, ste.apply(sb), x, y)
    print(f"digits MLP midpoint barrier: {before:.3f} -> WM {after_wm:.3f}, STE {after_ste:.3f}")
    assert after_wm <= 0.2 * before
    assert after_ste <= after_wm + 0.02


@pytest.mark.slow
def test_ste_mm_merges_at_least_as_well_as_matching_to_the_first(digits):
    models = [trained("mlp", digits, seed=s, epochs=3, width=64) for s in range(3)]
    x, y = digits.train_x, digits.train_y
    spec = auto_spec(models[0], x[:4])
    states = [m.state_dict() for m in models]
    to_first = [Permutation.identity(spec)] + [weight_matching(states[0], s, spec)
                                               for s in states[1:]]

    def merged_loss(perms):
        merged = mean_params([p.apply(s) for p, s in zip(perms, states, strict=True)])
        return float(F.cross_entropy(torch.func.functional_call(models[0], merged, (x,)), y))

    result = ste_mm(models, x, y, spec, epochs=8)
    assert result.perms[0].is_identity()
    start, end = merged_loss(to_first), merged_loss(result.perms)
    print(f"STE-MM merged train loss {start:.4f} -> {end:.4f}")
    assert end < start

"""OT fusion (Singh & Jaggi 2020): known answers on any traceable model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from modeconn.align import Permutation, auto_spec
from modeconn.errors import UsageError
from modeconn.merge.ot import ot_fusion
from modeconn.models import build_model, model_config

pytest.importorskip("ot")

MODELS = {
    "mlp": ("mlp", (1, 8, 8), {"widths": [32, 24, 16]}),
    "mlp-bn": ("mlp", (1, 8, 8), {"widths": [32, 24], "bn": True}),
    "vgg-bn": ("vgg11", (3, 16, 16), {"width": 0.125}),
    "resnet-bn": ("resnet20", (3, 16, 16), {"width": 0.25}),
}


def model(name: str, seed: int = 0, **overrides) -> nn.Module:
    arch, shape, opts = MODELS[name]
    cfg = model_config(arch, shape, 10, **{**opts, **overrides}) if "widths" not in opts else \
        {**model_config(arch, shape, 10), **opts, **overrides}
    torch.manual_seed(seed)
    m = build_model(cfg)
    for mod in m.modules():  # non-trivial BN statistics
        if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def example(name: str, n: int = 64) -> torch.Tensor:
    return torch.randn(n, *MODELS[name][1], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("cost", ["weights", "activations"])
def test_fusing_a_model_with_a_permuted_copy_of_itself_returns_its_function(name, cost):
    m = model(name)
    x = example(name)
    spec = auto_spec(m, x[:2])
    state = {k: v.clone() for k, v in m.state_dict().items()}
    perm = Permutation.random(spec, torch.Generator().manual_seed(3))
    copy = perm.apply(state)
    out = ot_fusion(m, state, m, copy, x[:2], cost=cost, x=x)
    # every exact plan with equal widths is a permutation matrix (scaled by 1/n)
    for group, plan in out.plans.items():
        n = spec.sizes[group]
        p = plan.numpy() * n
        assert np.allclose(np.sort(p.ravel())[-n:], 1.0) and np.allclose(p.sum(0), 1.0)
        assert ((p > 1e-9).sum(0) == 1).all()
    ref = functional_call(m, copy, (x,))
    got = functional_call(m, out.params, (x,))
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    if cost == "weights":  # aligned A is B, tensor by tensor (activations cannot tell apart
        for k, v in copy.items():  # units that are 0 on every sample: the same function on x)
            if v.is_floating_point():
                assert torch.allclose(out.aligned[k], v, atol=1e-6), k


def test_sinkhorn_with_small_regularisation_approaches_the_permutation():
    m = model("mlp")
    x = example("mlp")
    spec = auto_spec(m, x[:2])
    state = dict(m.state_dict())
    copy = Permutation.random(spec, torch.Generator().manual_seed(4)).apply(state)
    exact = ot_fusion(m, state, m, copy, x[:2])
    errs = []
    for reg in (0.1, 0.01, 0.002):
        soft = ot_fusion(m, state, m, copy, x[:2], solver="sinkhorn", reg=reg)
        errs.append(max(float((soft.plans[g] - exact.plans[g]).abs().sum())
                        for g in exact.plans))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05


def test_models_of_different_widths_fuse_into_the_targets_widths():
    a = model("mlp", seed=0, widths=[48, 32, 24])
    b = model("mlp", seed=1)
    x = example("mlp")
    out = ot_fusion(a, a.state_dict(), b, b.state_dict(), x[:2])
    for k, v in b.state_dict().items():
        assert out.params[k].shape == v.shape
    for plan in out.plans.values():  # rows: A's marginal, columns: B's
        n_a, n_b = plan.shape
        assert np.allclose(plan.sum(1).numpy(), 1 / n_a) and np.allclose(plan.sum(0).numpy(),
                                                                         1 / n_b)
    assert torch.isfinite(functional_call(b, out.params, (x,))).all()
    conv_a, conv_b = model("vgg-bn", 0, width=0.25), model("vgg-bn", 1)
    xv = example("vgg-bn")
    out = ot_fusion(conv_a, conv_a.state_dict(), conv_b, conv_b.state_dict(), xv[:2],
                    cost="activations", x=xv)
    assert torch.isfinite(functional_call(conv_b, out.params, (xv,))).all()


def test_weight_zero_is_b_and_weight_one_is_a_carried_over():
    m, other = model("mlp"), model("mlp", seed=1)
    x = example("mlp")
    out = ot_fusion(m, m.state_dict(), other, other.state_dict(), x[:2], weight=1.0)
    assert all(torch.equal(out.params[k], v) for k, v in other.state_dict().items())
    out = ot_fusion(m, m.state_dict(), other, other.state_dict(), x[:2], weight=0.0)
    assert all(torch.allclose(out.params[k], out.aligned[k]) for k in out.aligned)


def test_bad_options_are_refused():
    m = model("mlp")
    x = example("mlp")
    s = m.state_dict()
    for kw, msg in (({"cost": "x"}, "cost must be"), ({"solver": "lp"}, "solver must be"),
                    ({"weight": 2.0}, "weight must be in"), ({"cost": "activations"}, "needs"),
                    ({"solver": "sinkhorn", "reg": 0.0}, "reg must be positive")):
        with pytest.raises(UsageError, match=msg):
            ot_fusion(m, s, m, s, x[:2], **kw)
    other = model("vgg-bn")
    with pytest.raises(UsageError):
        ot_fusion(m, s, other, other.state_dict(), x[:2])

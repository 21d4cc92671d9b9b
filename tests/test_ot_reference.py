"""OT fusion against sidak/otfusion's own math (`wasserstein_ensemble.py`,
`get_wassersteinized_layers_modularized`, and `ground_metric.py`), ported below in float64: the
fused weights agree to 1e-9 under each of its ground-metric options, importance marginals and
both solvers, and its settings are reachable by name (`--preset otfusion`, `otfusion-readme`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeconn.jobs.merge import MergeConfig
from modeconn.merge.ot import OTOptions, ot_fusion
from modeconn.options import ConfigError

ot = pytest.importorskip("ot")
from otfusion_port import reference_fusion  # noqa: E402  (needs POT)

# ------------------------------------------------------------------ models

def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 24, bias=False), nn.ReLU(), nn.Linear(24, 20, bias=False),
                         nn.ReLU(), nn.Linear(20, 12, bias=False), nn.ReLU(),
                         nn.Linear(12, 10, bias=False)).double()


def convnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Conv2d(8, 6, 3, bias=False),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 10, bias=False)).double()


INPUTS = {mlp: (16,), convnet: (3, 8, 8)}


def fuse_both(build, b_params=None, **kw):
    ma, mb = build(0), build(1)
    a = ma.state_dict()
    b = mb.state_dict() if b_params is None else b_params
    x = torch.randn(2, *INPUTS[build], dtype=torch.float64)
    ref_kw = {"exact": kw.get("solver", "emd") == "emd", "reg": kw.get("reg", 0.01),
              "squared": kw.get("squared", True), "normalize": kw.get("normalize_cost", "max"),
              "importance": {"uniform": None, "importance-l1": "l1", "importance-l2": "l2"}[
                  kw.get("marginals", "uniform")], "step": kw.get("weight", 0.5),
              "proper_marginals": kw.get("proper_marginals", True)}
    ref, plans = reference_fusion(list(a.values()), list(b.values()), **ref_kw)
    ours = ot_fusion(ma, a, mb, b, x, **kw)
    return ours, dict(zip(a, ref)), plans


SETTINGS = [
    {"squared": False, "normalize_cost": "none", "proper_marginals": False},  # its README's
    {"squared": True, "normalize_cost": "log"},
    {"solver": "sinkhorn", "reg": 0.01, "squared": True, "normalize_cost": "log",  # its parser's
     "proper_marginals": False},  # (Sinkhorn stops short of its column marginals here)
    {"solver": "sinkhorn", "reg": 0.01, "squared": True, "normalize_cost": "log"},
    {"solver": "sinkhorn", "reg": 0.05, "squared": True, "normalize_cost": "max",
     "marginals": "importance-l1"},
    {"solver": "sinkhorn", "reg": 0.1, "squared": False, "normalize_cost": "median",
     "marginals": "importance-l2", "weight": 0.3},
    {"solver": "sinkhorn", "reg": 0.02, "squared": True, "normalize_cost": "mean",
     "marginals": "importance-l1"},
    {"squared": True, "normalize_cost": "none", "marginals": "importance-l1"},
]


@pytest.mark.parametrize("build", [mlp, convnet], ids=["mlp", "conv"])
@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: "-".join(map(str, kw.values())))
def test_fused_weights_agree_with_the_reference(build, kw):
    ours, ref, plans = fuse_both(build, **kw)
    for name, r in ref.items():
        assert torch.allclose(ours.params[name], r, rtol=0, atol=1e-9), name
    assert all(torch.allclose(p, r, rtol=0, atol=1e-12)
               for p, r in zip(ours.plans.values(), plans))


def test_the_reference_transports_the_output_layer_to_itself_where_classes_match():
    """Ours never moves the output units (classes correspond); the reference, without
    --skip-last-layer, solves a plan for them too: where B is a perturbed permuted copy of A that
    plan is the identity, and the two agree."""
    ma = mlp(0)
    a = ma.state_dict()
    g = torch.Generator().manual_seed(3)
    perms = [torch.randperm(n, generator=g) for n in (24, 20, 12)]
    keys = list(a)
    b = {}
    for i, k in enumerate(keys):
        w = a[k]
        if i < len(perms):
            w = w[perms[i]]
        if i > 0:
            w = w[:, perms[i - 1]]
        b[k] = w + 1e-3 * torch.randn(w.shape, generator=g, dtype=w.dtype)
    ref, plans = reference_fusion(list(a.values()), list(b.values()), squared=False,
                                  normalize="none", proper_marginals=False,
                                  skip_last_layer=False)
    assert torch.equal(plans[-1], torch.eye(10, dtype=torch.float64) / 10)
    ours = ot_fusion(ma, a, mlp(1), b, torch.randn(2, 16, dtype=torch.float64), squared=False,
                     normalize_cost="none", proper_marginals=False)
    for name, r in zip(keys, ref):
        assert torch.allclose(ours.params[name], r, rtol=0, atol=1e-9), name


def test_importance_of_the_carried_weights_is_the_earlier_variant_and_differs():
    """`importance` (modeconn 0.2, the reference's commented-out line) weighs units by their
    carried weights: with Sinkhorn's soft plans the later layers' marginals differ."""
    kw = {"solver": "sinkhorn", "reg": 0.05}
    ours, ref, _ = fuse_both(mlp, marginals="importance-l1", **kw)
    old = ot_fusion(mlp(0), mlp(0).state_dict(), mlp(1), mlp(1).state_dict(),
                    torch.randn(2, 16, dtype=torch.float64), marginals="importance", **kw)
    first = next(iter(ours.plans))
    assert torch.allclose(ours.plans[first], old.plans[first])  # nothing carried yet
    later = list(ours.plans)[1:]
    assert all((ours.plans[g].sum(1) - old.plans[g].sum(1)).abs().max() > 1e-4 for g in later)


def test_the_presets_set_the_references_options_and_given_options_win():
    o = OTOptions.from_dict({"preset": "otfusion-readme"})
    assert (o.solver, o.squared, o.normalize_cost, o.marginals, o.proper_marginals) == (
        "emd", False, "none", "uniform", False)
    assert o.preset is None  # the values are recorded, not the name
    d = OTOptions.from_dict({"preset": "otfusion", "reg": 0.5})
    assert (d.solver, d.reg, d.normalize_cost, d.squared) == ("sinkhorn", 0.5, "log", True)
    assert OTOptions(preset="otfusion-readme").to_dict() == o.to_dict()
    assert "preset" not in o.to_dict() and o.to_dict()["normalize_cost"] == "none"
    with pytest.raises(ConfigError, match="'preset' of OT fusion must be one of otfusion, "
                                          "otfusion-readme.*got 'sidak'"):
        OTOptions.from_dict({"preset": "sidak"})


def test_a_merge_preset_sets_its_method_and_is_the_same_job_as_spelled_out():
    base = {"a": "a.safetensors", "b": "b.safetensors"}
    c = MergeConfig.from_dict({**base, "preset": "otfusion-readme"})
    spelled = MergeConfig.from_dict({**base, "method": "ot", "squared": False,
                                     "normalize_cost": "none", "proper_marginals": False})
    assert c == spelled and c.to_dict() == spelled.to_dict()
    assert MergeConfig.from_dict({**base}).to_dict().keys() == \
        MergeConfig.from_dict({**base, "preset": None}).to_dict().keys()
    assert "squared" not in MergeConfig.from_dict(base).to_dict()  # earlier records unchanged
    with pytest.raises(ConfigError, match="'method' of merge must be 'ot' with preset otfusion"):
        MergeConfig.from_dict({**base, "preset": "otfusion", "method": "avg"})


def test_a_study_sweeps_presets_and_a_preset_is_the_job_spelled_out():
    from conftest import digits_study

    from modeconn.studies import parse

    head = digits_study() + """
[fuse]
job = "merge"
a = "@train/a/model.safetensors"
b = "@train/b/model.safetensors"
"""
    swept = parse(head + '[fuse.sweep]\ngrid = { preset = ["otfusion-readme", "otfusion"] }\n')
    spelled = parse(head + 'method = "ot"\nsquared = false\nnormalize_cost = "none"\n'
                           'proper_marginals = false\n')
    ids = {p: {j.id for j in swept.jobs if j.labels.get("fuse.preset") == p}
           for p in ("otfusion", "otfusion-readme")}
    assert ids["otfusion-readme"] == {j.id for j in spelled.jobs if j.stage == "fuse"}
    assert len(ids["otfusion"]) == 4 and not ids["otfusion"] & ids["otfusion-readme"]


def test_every_preset_sets_fields_of_its_class_to_values_they_take():
    from modeconn.jobs.continual import ContinualConfig
    from modeconn.merge import MPFOptions
    from modeconn.options import config_fields

    for cls in (OTOptions, MPFOptions, MergeConfig):
        fields = {i.name for i in config_fields(cls)}
        assert cls.presets and "preset" in fields
        for name, values in cls.presets.items():
            assert set(values) <= fields - {"preset"}, (cls, name)
    for name in MergeConfig.presets:  # each builds, checked like any option
        extra = {"method": "mpf"} if name == "mpf-reference" else {}
        MergeConfig.from_dict({"a": "a", "b": "b", "preset": name, **extra})
    assert "preset" not in {i.name for i in config_fields(ContinualConfig)}  # --mpf-preset

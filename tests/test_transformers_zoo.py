"""Transformers in the zoo: the ViT (a zoo model, trained from the CLI) and the small GPT (a
library model): shapes, fx-traceability, tied weights, causality, refused configs."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.fx

from modeconn import jobs
from modeconn.errors import UsageError
from modeconn.models import GPT, PRESETS, ViT, build_model, model_config

GPT_VARIANTS = [dict(mlp=m, norm=n, rotary=r, kv_heads=kv, tied=t)
                for m, n, r, kv, t in itertools.product(("gelu", "swiglu"), ("layer", "rms"),
                                                        (False, True), (None, 2), (True, False))]


def _name(v: dict) -> str:
    return "-".join(f"{k}={v[k]}" for k in v)


def _small_gpt(seed: int = 0, **variant) -> GPT:
    torch.manual_seed(seed)
    return GPT(37, context=12, width=16, depth=2, heads=4, **variant).eval()


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_shapes_and_fx_trace(pool):
    torch.manual_seed(0)
    model = ViT((3, 14, 14), 5, width=24, depth=2, heads=3, patch=7, pool=pool).eval()
    assert model.pos.shape == (1, 4 + 1, 24) and model.cls.shape == (1, 1, 24)
    assert model.blocks[0].attn.qkv.out_features == 3 * 24
    assert model.blocks[0].mlp.fc1.out_features == 48  # mlp_ratio 2
    x = torch.randn(4, 3, 14, 14)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (4, 5)
        assert torch.equal(traced(x), out)
        assert traced(x[:1]).shape == (1, 5)  # batch size read from the tensor, not baked in


@pytest.mark.parametrize("variant", GPT_VARIANTS, ids=_name)
def test_gpt_variants_shapes_fx_trace_and_causality(variant):
    model = _small_gpt(**variant)
    idx = torch.randint(0, 37, (3, 9))
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        logits = model(idx)
        assert logits.shape == (3, 9, 37)
        assert torch.equal(traced(idx), logits)
        assert traced(idx[:, :5]).shape == (3, 5, 37)  # T read from the tensor
        later = idx.clone()
        later[:, 5:] = (later[:, 5:] + 1) % 37
        changed = model(later)
    assert torch.allclose(changed[:, :5], logits[:, :5], atol=1e-6)
    assert not torch.allclose(changed[:, 5:], logits[:, 5:])


def test_gpt_structure_tied_weights_gqa_and_buffers():
    tied, untied = _small_gpt(tied=True), _small_gpt(tied=False)
    assert tied.lm_head.weight is tied.tok.weight
    with torch.no_grad():
        tied.tok.weight[0, 0] += 1.0
    assert tied.lm_head.weight[0, 0] == tied.tok.weight[0, 0]
    assert untied.lm_head.weight is not untied.tok.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n_tied + 37 * 16
    gqa = _small_gpt(kv_heads=2).blocks[0].attn
    assert (gqa.q.out_features, gqa.k.out_features, gqa.v.out_features) == (16, 8, 8)
    assert all(layer.bias is None for layer in (gqa.q, gqa.k, gqa.v, gqa.o))
    rope = _small_gpt(rotary=True)
    assert rope.pos is None and rope.blocks[0].attn.cos.shape == (12, 4)
    # Masks and RoPE tables are rebuilt, not stored.
    assert not any(k.endswith(("mask", "cos", "sin")) for k in rope.state_dict())
    assert isinstance(_small_gpt(norm="rms").norm, torch.nn.RMSNorm)
    assert hasattr(_small_gpt(mlp="swiglu").blocks[0].mlp, "gate")


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=18, heads=4), "width 18 must be divisible by heads 4"),
    (dict(heads=4, kv_heads=3), "heads 4 must be divisible by kv_heads 3"),
    (dict(width=12, heads=4, rotary=True), "even head size"),
    (dict(mlp="relu"), "mlp must be one of gelu, swiglu"),
    (dict(norm="batch"), "norm must be one of layer, rms"),
    (dict(depth=0), "must be positive"),
])
def test_gpt_refuses_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPT(11, **kwargs)


def test_vit_preset_fits_the_patch_to_the_data_unless_given():
    assert PRESETS["vit"]["patch"] == 7
    assert model_config("vit", (1, 28, 28), 10)["patch"] == 7
    assert model_config("vit", (1, 8, 8), 10)["patch"] == 4
    assert model_config("vit", (3, 32, 32), 10)["patch"] == 4
    assert model_config("vit", (1, 28, 28), 10, patch=4)["patch"] == 4
    cfg = model_config("vit", (1, 8, 8), 10, width=32, depth=1, heads=2)
    assert json.loads(json.dumps(cfg)) == cfg
    model = build_model(cfg)
    assert len(model.blocks) == 1 and model.head.in_features == 32


@pytest.mark.parametrize("overrides,match", [
    ({"heads": 3}, r"^ViT width 128 is not divisible by heads 3; choose heads that divide "
                   r"the width \(e\.g\. --heads 2\) or a width that is a multiple of 3$"),
    ({"patch": 5}, r"^ViT patch 5 does not divide the 28×28 input; choose a patch that "
                   r"divides both sides \(e\.g\. --patch 4\)$"),
    ({"width": 0}, r"^ViT width 0: width, depth, heads and patch must be whole numbers ≥ 1$"),
    ({"depth": 0}, r"^ViT depth 0: .* must be whole numbers ≥ 1$"),
    ({"pool": "max"}, r"^ViT pool must be one of cls, mean, got 'max'$"),
    ({"mlp_ratio": 0}, r"^ViT mlp_ratio must be a positive number"),
    ({"norm": "bn"}, r"^model 'vit' has no option 'norm'"),
])
def test_vit_bad_configs_are_refused_in_one_line(overrides, match):
    with pytest.raises(UsageError, match=match) as e:
        model_config("vit", (1, 28, 28), 10, **overrides)
    assert "\n" not in str(e.value)


def test_vit_cli_options_and_refusals(cli, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli("train", "--help")
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--heads HEADS" in out and "--patch PATCH" in out
    assert "ViT attention heads" in out and "ViT embedding width" in out
    rc, _, err = cli("train", "--model", "vit", "--heads", "3", "--width", "128",
                     "--out", tmp_path / "x")
    assert rc == 2 and err.startswith("modeconn: error: ViT width 128 is not divisible by "
                                      "heads 3") and err.count("\n") == 1
    rc, _, err = cli("train", "--model", "vit", "--width", "64.5", "--out", tmp_path / "x")
    assert rc == 2 and "--width must be a whole number of units for a ViT" in err
    rc, _, err = cli("train", "--model", "mlp", "--heads", "2", "--out", tmp_path / "x")
    assert rc == 2 and "model 'mlp' has no option 'heads'" in err


def test_unset_later_options_stay_out_of_records_and_job_ids():
    """--heads/--patch left unset record nothing: ids and config.json of earlier versions hold."""
    train = jobs.get("train").config
    plain = train(model="mlp").to_dict()
    assert "heads" not in plain and "patch" not in plain
    assert train(model="mlp").overrides() == {"depth": None, "width": None, "norm": None,
                                               "bias": None, "dropout": None}
    given = train(model="vit", heads=2, patch=4)
    assert given.to_dict(settings_only=True)["heads"] == 2
    assert given.recorded_options()["heads"] == 2 and "patch" in given.recorded_options()
    assert "heads" not in train(model="vit").recorded_options()
    assert train.from_dict(given.to_dict()) == given


def test_vit_trains_on_digits_from_the_cli(cli, tmp_path):
    out = tmp_path / "run"
    rc, _, err = cli("train", "--model", "vit", "--width", "32", "--depth", "1", "--heads", "2",
                     "--epochs", "3", "--optimizer", "adamw", "--lr", "3e-3", "--quiet",
                     "--device", "cpu", "--out", out)
    assert rc == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["arch"] == "vit" and config["model"]["patch"] == 4
    assert config["options"]["heads"] == 2 and "patch" not in config["options"]
    lines = (out / "all" / "metrics.csv").read_text().splitlines()
    losses = [float(line.split(",")[2]) for line in lines[1:] if ",train," in line]
    assert len(losses) == 3 and losses[-1] < losses[0] < 2.5
    # It resumes from its recorded options alone (heads among them): nothing left to train.
    rc, _, err = cli("train", "--resume", "--quiet", "--out", out)
    assert rc == 0, err

"""Grouped training: members trained in one batched step equal members trained one by one."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from modeconn.checkpoint import load_checkpoint
from modeconn.data import DataSpec, prepare_subsets
from modeconn.models import build_model, model_config
from modeconn.train import TrainConfig, can_group, plan_members, train_run
from modeconn.train.grouped import GroupedMLP, groupable

CPU = torch.device("cpu")


def _members(order="same", init="same", dtype=torch.float32, shift="iid:50,50"):
    spec = DataSpec(shift=shift)
    subs = [replace(s, train_x=s.train_x.to(dtype), test_x=s.test_x.to(dtype))
            for s in prepare_subsets(spec)]
    return plan_members(spec, subs, init, [0], order, 0), subs[0]


def _final(path):
    return load_checkpoint(path).tensors


@pytest.mark.parametrize("order", ["same", "independent"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_grouped_equals_one_after_the_other_in_float64(tmp_path, order, optimizer):
    torch.set_default_dtype(torch.float64)
    try:
        members, sub = _members(order, dtype=torch.float64)
        cfg = model_config("mlp", sub.input_shape, 10, depth=2, width=32)
        tc = TrainConfig(epochs=2, batch_size=32, optimizer=optimizer,
                         lr=0.05 if optimizer == "sgd" else 1e-3)
        assert can_group(cfg, members, tc)
        grouped = train_run(cfg, members, tc, tmp_path / "g", CPU, quiet=True, group=True)
        single = train_run(cfg, members, tc, tmp_path / "s", CPU, quiet=True, group=False)
    finally:
        torch.set_default_dtype(torch.float32)
    assert (tmp_path / "g/group_state.safetensors").exists()
    assert not (tmp_path / "s/group_state.safetensors").exists()
    for m in ("a", "b"):
        a, b = _final(tmp_path / f"g/{m}/model.safetensors"), _final(tmp_path / f"s/{m}/model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12)
    for g, s in zip(grouped, single):
        assert g["test_acc"] == s["test_acc"]
        assert g["train_loss"] == pytest.approx(s["train_loss"], abs=1e-12)


def test_grouped_member_state_round_trips_the_modules():
    torch.manual_seed(0)
    cfg = model_config("mlp", (1, 8, 8), 10, depth=2, width=16, bias=False)
    models = [build_model(cfg) for _ in range(3)]
    g = GroupedMLP(models)
    x = torch.randn(3, 5, 1, 8, 8)
    out = g(x)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[k], m(x[k]))
        state = g.member_state(k)
        assert state.keys() == m.state_dict().keys()
        for name, t in m.state_dict().items():
            assert torch.equal(state[name], t)


def test_only_plain_mlps_are_grouped():
    assert groupable(build_model(model_config("mlp", (1, 8, 8), 10)))
    assert not groupable(build_model(model_config("mlp", (1, 8, 8), 10, norm="bn")))
    assert not groupable(build_model(model_config("convnet", (1, 8, 8), 10)))
    assert not groupable(build_model(model_config("resnet8", (1, 8, 8), 10, width=0.25)))


def test_a_diverging_member_does_not_disturb_the_others(tmp_path):
    members, sub = _members("independent")
    cfg = model_config("mlp", sub.input_shape, 10, depth=1, width=16)
    # Member b sees inputs scaled so large that its loss overflows; a is untouched.
    members[1] = replace(members[1], data=replace(members[1].data,
                                                  train_x=members[1].data.train_x * 1e38))
    tc = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    res = train_run(cfg, members, tc, tmp_path / "g", CPU, quiet=True, group=True)
    train_run(cfg, members[:1], tc, tmp_path / "s", CPU, quiet=True, group=False)
    assert res[1]["status"] == "diverged" and res[1]["epoch"] == 1 and res[1]["step"] >= 1
    status = json.loads((tmp_path / "g/b/status.json").read_text())
    assert status["status"] == "diverged"
    assert not (tmp_path / "g/b/model.safetensors").exists()
    assert res[0]["status"] == "complete"
    a, s = _final(tmp_path / "g/a/model.safetensors"), _final(tmp_path / "s/a/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], s[k], rtol=1e-4, atol=1e-5)


def test_grouped_resume_is_bit_identical(tmp_path, monkeypatch):
    import modeconn.train.runs as train

    members, sub = _members("same")
    cfg = model_config("mlp", sub.input_shape, 10, depth=1, width=16)
    tc = TrainConfig(epochs=3, batch_size=32)
    train_run(cfg, members, tc, tmp_path / "full", CPU, quiet=True)

    calls = {"n": 0}
    real = train._save_state

    def interrupt_after_first_epoch(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "_save_state", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, members, tc, tmp_path / "cut", CPU, quiet=True)
    monkeypatch.setattr(train, "_save_state", real)
    train_run(cfg, members, tc, tmp_path / "cut", CPU, quiet=True, resume=True)
    for m in ("a", "b"):
        a = _final(tmp_path / f"full/{m}/model.safetensors")
        b = _final(tmp_path / f"cut/{m}/model.safetensors")
        for k in a:
            assert torch.equal(a[k], b[k])
        assert (tmp_path / f"full/{m}/metrics.csv").read_text() .count("\n") == \
            (tmp_path / f"cut/{m}/metrics.csv").read_text().count("\n")

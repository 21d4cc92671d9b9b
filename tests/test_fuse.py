"""modeconn merge: two models fused by AVG, OT, WM/AM/STE or MPF into an ordinary checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

import modeconn
from modeconn import jobs
from modeconn.checkpoint import load_checkpoint, params_of
from modeconn.data import DataSpec, eval_data
from modeconn.errors import UsageError
from modeconn.merge import METHODS
from modeconn.merge.ot import ot_fusion
from modeconn.models import load_model

pytest.importorskip("ot")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A label-skewed pair (width 24) and a third model of another width (16) on digits."""
    root = tmp_path_factory.mktemp("fuse")
    common = dict(dataset="digits", depth=2, epochs=2, quiet=True, init="different")
    jobs.run("train", out=root / "skew", shift="label-skew:0-4=80,5-9=20", width=24, **common)
    jobs.run("train", out=root / "narrow", width=16, **common)
    return {"a": root / "skew/a/model.safetensors", "b": root / "skew/b/model.safetensors",
            "narrow": root / "narrow/all/model.safetensors", "root": root}


@pytest.mark.parametrize("method", ["avg", "ot", "wm", "am"])
def test_a_model_merged_with_itself_is_itself(pairs, tmp_path, method):
    r = jobs.run("merge", a=pairs["a"], b=pairs["a"], method=method, out=tmp_path / "m")
    rep = r.report
    assert rep["fused"]["test"]["acc"] == pytest.approx(rep["a"]["test"]["acc"], abs=1e-12)
    assert rep["fused"]["test"]["loss"] == pytest.approx(rep["a"]["test"]["loss"], rel=1e-5)
    fused = load_checkpoint(tmp_path / "m" / "merged.safetensors")
    original = load_checkpoint(pairs["a"])
    for k, v in original.tensors.items():
        assert torch.allclose(fused.tensors[k].float(), v.float(), atol=1e-6), k


def test_merge_writes_a_checkpoint_other_commands_accept_and_scores_each_subset(pairs, tmp_path):
    r = jobs.run("merge", a=pairs["a"], b=pairs["b"], method="wm", weights=[0.3, 0.7],
                 out=tmp_path / "m")
    rep = json.loads((tmp_path / "m" / "merge.json").read_text())
    assert rep["weights"] == pytest.approx([0.3, 0.7]) and rep["method"] == "wm"
    for name in ("fused", "a", "b"):
        assert {"train", "test", "own_a", "own_b"} <= set(rep[name])
    # each parent knows its own subset better than the other's (label skew)
    assert rep["a"]["own_a"]["train"]["acc"] > rep["a"]["own_b"]["train"]["acc"]
    labels = [lab["model"] for lab, _ in r.records()]
    assert labels == ["fused", "a", "b"]
    interp = jobs.run("interpolate", a=pairs["a"], b=tmp_path / "m" / "merged.safetensors",
                      points=3, out=tmp_path / "i")
    assert interp.summary["test"]["loss"]["linear"]["barrier"] >= 0


def test_ot_fuses_models_of_different_widths_into_the_targets(pairs, tmp_path):
    r = jobs.run("merge", a=pairs["a"], b=pairs["narrow"], method="ot", out=tmp_path / "ot")
    fused = load_checkpoint(tmp_path / "ot" / "merged.safetensors")
    narrow = load_checkpoint(pairs["narrow"])
    assert {k: v.shape for k, v in fused.tensors.items()} == \
        {k: v.shape for k, v in narrow.tensors.items()}
    assert 0.1 < r.report["fused"]["test"]["acc"] <= 1.0
    with pytest.raises(Exception, match="architecture"):  # averaging is not defined there
        jobs.run("merge", a=pairs["a"], b=pairs["narrow"], method="avg", out=tmp_path / "avg")


def test_mpf_returns_the_curve_midpoint_fitted_on_the_union(pairs, tmp_path):
    r = jobs.run("merge", a=pairs["a"], b=pairs["b"], method="mpf", epochs=2, out=tmp_path / "p")
    avg = jobs.run("merge", a=pairs["a"], b=pairs["b"], method="avg", out=tmp_path / "q")
    # trained on the union, the midpoint beats the data-free average of the same pair
    assert r.report["fused"]["train"]["loss"] < avg.report["fused"]["train"]["loss"]


@pytest.mark.parametrize("argv,message", [
    (["--weights", "0.5"], "--weights must be two non-negative numbers"),
    (["--weights", "0,0"], "--weights must be two non-negative numbers"),
    (["--method", "fuse"], "--method must be one of"),
    (["--reg", "0", "--solver", "sinkhorn"], "--reg must be"),
    (["--preset", "otfusion", "--method", "avg"], "--method must be 'ot' with preset otfusion"),
    (["--preset", "sidak"], "--preset must be one of otfusion"),
    (["--preset", "otfusion", "--marginals", "importance-l1"], "--marginals other than uniform "
                                                            "needs proper marginals"),
    (["--normalize-cost", "sum"], "--normalize-cost must be one of max, median, mean, log"),
])
def test_bad_merge_options_are_one_line(cli, pairs, tmp_path, argv, message):
    rc, _, err = cli("merge", pairs["a"], pairs["b"], *argv, "--out", tmp_path / "x")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_preset_merge_records_the_references_options_not_the_name(pairs, tmp_path):
    r = jobs.run("merge", a=pairs["a"], b=pairs["b"], preset="otfusion-readme", out=tmp_path / "o")
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())["config"]
    assert r.report["method"] == "ot" and "preset" not in cfg
    assert (cfg["method"], cfg["solver"], cfg["squared"], cfg["normalize_cost"],
            cfg["proper_marginals"]) == ("ot", "emd", False, "none", False)
    same = jobs.run("merge", a=pairs["a"], b=pairs["b"], method="ot", squared=False,
                    normalize_cost="none", proper_marginals=False, out=tmp_path / "s")
    fused = [load_checkpoint(d / "merged.safetensors").tensors for d in (r.out, same.out)]
    assert all(torch.equal(fused[0][k], fused[1][k]) for k in fused[0])


def test_the_fine_tuning_baseline_gets_exactly_mpfs_gradient_steps(pairs, tmp_path):
    mpf = jobs.run("merge", a=pairs["a"], b=pairs["b"], method="mpf", epochs=2, out=tmp_path / "p")
    ft = jobs.run("merge", a=pairs["a"], b=pairs["b"], method="avg", finetune_epochs=2,
                  out=tmp_path / "f")
    assert ft.report["training"]["gradient_steps"] == mpf.report["training"]["gradient_steps"] > 0
    plain = jobs.run("merge", a=pairs["a"], b=pairs["b"], method="avg", out=tmp_path / "q")
    assert ft.report["fused"]["train"]["loss"] < plain.report["fused"]["train"]["loss"]
    assert "fine-tuned 2 epochs" in ft.report["normalisation"]


def _library_inputs(pairs, b="b"):
    (ma, ca), (mb, cb) = load_model(pairs["a"]), load_model(pairs[b])
    data = eval_data(DataSpec.from_dict(cb.meta["data"]), "full")
    return ma, params_of(ca), mb, params_of(cb), data


@pytest.mark.parametrize("method", list(METHODS))
def test_the_library_fuses_bit_identically_to_the_merge_job(pairs, tmp_path, method):
    trains = {"epochs": 1} if method in ("ste", "mpf") else {}
    weights = (0.5, 0.5) if method == "mpf" else (0.4, 0.6)  # MPF: always the curve's middle
    jobs.run("merge", a=pairs["a"], b=pairs["b"], method=method, weights=list(weights),
             out=tmp_path / "m", **trains)
    ma, pa, mb, pb, data = _library_inputs(pairs)
    fused = modeconn.fuse(method, ma, pa, mb, pb, data.train_x, data.train_y, weights=weights,
                          options=METHODS[method].options(**trains), task=data.task)
    merged = load_checkpoint(tmp_path / "m" / "merged.safetensors").tensors  # no BN: as fused
    assert set(merged) == set(fused)
    for k, v in fused.items():
        assert torch.equal(merged[k], v), k
    if method == "mpf":  # the registry's MPF is the library's
        again = modeconn.mpf(mb, pa, pb, data.train_x, data.train_y, epochs=1, task=data.task)
        assert all(torch.equal(again[k], v) for k, v in fused.items())
    if method == "ot":
        assert modeconn.ot_fusion is ot_fusion


def test_library_fusion_refuses_in_one_line(pairs):
    ma, pa, mb, pb, data = _library_inputs(pairs)
    x, y = data.train_x, data.train_y
    with pytest.raises(UsageError, match="unknown fusion method 'nope'; choose one of avg, ot, "
                                         "wm, am, ste, mpf"):
        modeconn.fuse("nope", ma, pa, mb, pb, x, y)
    with pytest.raises(UsageError, match=r"fusion weights must be two non-negative numbers, not "
                                         r"both 0, got \[0.0, 0.0\]"):
        modeconn.fuse("avg", ma, pa, mb, pb, x, y, weights=(0.0, 0.0))
    mn, pn = load_model(pairs["narrow"])[0], params_of(load_model(pairs["narrow"])[1])
    with pytest.raises(UsageError, match="wm fuses two models of one architecture and A and B "
                                         "differ; fuse models of different widths with ot"):
        modeconn.fuse("wm", ma, pa, mn, pn, x, y)
    with pytest.raises(UsageError, match=r"mpf returns the middle of its curve \(θ\(0.5\)\): fusion "
                                         r"weights \[0.4, 0.6\] do not apply to it"):
        modeconn.fuse("mpf", ma, pa, mb, pb, x, y, weights=(0.4, 0.6))
    with pytest.raises(jobs.ConfigError, match="do not apply to --method mpf"):
        jobs.get("merge").config(a="a", b="b", method="mpf", weights=(0.4, 0.6))
    with pytest.raises(TypeError, match="mpf takes MPFOptions, got OTOptions"):
        modeconn.fuse("mpf", ma, pa, mb, pb, x, y, options=METHODS["ot"].options())
    with pytest.raises(UsageError, match="'epochs' of MPF must be an integer ≥ 1, got 0"):
        METHODS["mpf"].options(epochs=0)

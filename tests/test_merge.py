"""Alignment and merging through the CLI, and the merge module (average, BN reset, REPAIR)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import FAST_TRAIN
from torch import nn

from modeconn import jobs
from modeconn.align import Permutation, auto_spec
from modeconn.checkpoint import load_checkpoint, save_checkpoint
from modeconn.cli import main
from modeconn.merge import average, bn_reset, channel_stats, repair, repair_layers
from modeconn.models import rebuild


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two digits MLPs (2×32) from different seeds, and one of another width."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, seed, width in (("s0", 0, "32"), ("s1", 1, "32"), ("w16", 0, "16")):
        argv = ["train", "--out", root / name, "--epochs", "3", "--depth", "2",
                "--init-seed", seed, *FAST_TRAIN]
        argv[argv.index("--width") + 1] = width
        assert main([str(a) for a in argv]) == 0
        out[name] = root / name / "all" / "model.safetensors"
    return out


def _permuted_copy(path, dest, seed):
    """Save a randomly permuted copy of a checkpoint; returns (dest, the permuted params)."""
    ckpt = load_checkpoint(path)
    model = rebuild(ckpt)
    spec = auto_spec(model, torch.randn(2, *ckpt.architecture["input_shape"]))
    perm = Permutation.random(spec, torch.Generator().manual_seed(seed))
    params = perm.apply(dict(model.state_dict()))
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("modeconn_version",)}
    save_checkpoint(dest, params, **meta)
    return dest


def _barrier(path):
    return json.loads(path.read_text())["test"]["loss"]["linear"]["barrier"]


@pytest.mark.parametrize("method", ["wm", "am", "ste"])
def test_align_recovers_a_random_permutation(trained, tmp_path, method):
    b = _permuted_copy(trained["s0"], tmp_path / "perm.safetensors", seed=3)
    result = jobs.run("align", a=str(trained["s0"]), b=str(b), method=method, points=5, epochs=1,
                      device="cpu", out=tmp_path / "al")
    assert result.exit_code == 0 and result.out == tmp_path / "al"
    assert result.before["test"]["loss"]["linear"]["barrier"] > 0.05
    assert result.after["test"]["loss"]["linear"]["barrier"] == pytest.approx(0, abs=1e-6)
    assert result.reduction == pytest.approx(100, abs=1e-3)
    assert not result.permutation.is_identity()
    assert result.lines()[0].startswith("test loss barrier ") and f"reduction, {method})" \
        in result.lines()[0]
    assert _barrier(tmp_path / "al" / "barrier_after.json") == pytest.approx(0, abs=1e-6)
    assert _barrier(tmp_path / "al" / "barrier_before.json") > 0.05
    config = json.loads((tmp_path / "al" / "config.json").read_text())
    assert config["job"] == "align" and config["config"]["method"] == method
    assert (tmp_path / "al" / "env.json").exists()
    a = load_checkpoint(trained["s0"]).tensors
    aligned = load_checkpoint(tmp_path / "al" / "aligned_b.safetensors")
    assert aligned.meta["alignment"]["method"] == method
    for k, v in a.items():
        torch.testing.assert_close(aligned.tensors[k], v)
    perm = Permutation.from_json((tmp_path / "al" / "permutation.json").read_text())
    assert not perm.is_identity()
    for name in ("path_before.csv", "path_after.csv", "path.png"):
        assert (tmp_path / "al" / name).exists()


def test_align_reduces_barrier_of_different_seeds(trained, tmp_path, cli):
    rc, out, err = cli("align", trained["s0"], trained["s1"], "--method", "wm", "--points", "7",
                       "--out", tmp_path / "al", "--device", "cpu")
    assert rc == 0, err
    before = _barrier(tmp_path / "al" / "barrier_before.json")
    after = _barrier(tmp_path / "al" / "barrier_after.json")
    assert after < 0.5 * before
    assert out.splitlines() == [
        f"test loss barrier {before:.4f} → {after:.4f} "
        f"({100 * (before - after) / before:.1f}% reduction, wm)", f"wrote {tmp_path / 'al'}"]


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(),
                         nn.Linear(12, 5))


def test_repair_layers_are_found_from_the_graph():
    assert repair_layers(_mlp(0)) == ["1", "3"]  # not the classifier


def test_repair_matches_goal_statistics():
    model, x = _mlp(0), torch.randn(400, 1, 4, 4)
    a, b = dict(model.state_dict()), dict(_mlp(1).state_dict())
    fixed = repair(model, [a, b], average([a, b]), x, lam=0.3)
    sa, sb, sr = (channel_stats(model, p, x, ["1"])["1"] for p in (a, b, fixed))
    torch.testing.assert_close(sr[0], 0.7 * sa[0] + 0.3 * sb[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sr[1], 0.7 * sa[1] + 0.3 * sb[1], atol=1e-4, rtol=1e-3)
    # K members: the goal is the mean of the members' statistics
    c = dict(_mlp(2).state_dict())
    fixed = repair(model, [a, b, c], average([a, b, c]), x)
    sc, sr = (channel_stats(model, p, x, ["1"])["1"] for p in (c, fixed))
    torch.testing.assert_close(sr[1], (sa[1] + sb[1] + sc[1]) / 3, atol=1e-4, rtol=1e-3)


def test_repair_of_a_model_with_itself_changes_nothing():
    model, x = _mlp(0), torch.randn(300, 1, 4, 4)
    a = dict(model.state_dict())
    fixed = repair(model, [a, a], average([a, a]), x)
    for k, v in a.items():
        torch.testing.assert_close(fixed[k], v, atol=1e-4, rtol=1e-4)


def test_bn_reset_equals_update_bn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(200, 6) * 3 + 1
    got = bn_reset(model, dict(model.state_dict()), x)
    ref = copy.deepcopy(model)
    torch.optim.swa_utils.update_bn(torch.utils.data.DataLoader(x, batch_size=len(x)), ref)
    for k in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(got[k], ref.state_dict()[k], atol=1e-5, rtol=1e-5)
    # With BatchNorm, REPAIR is BN reset
    rep = repair(model, [got, got], dict(model.state_dict()), x)
    torch.testing.assert_close(rep["1.running_mean"], got["1.running_mean"])


def test_merge_many_of_permuted_copies_reproduces_the_model(trained, tmp_path):
    copies = [trained["s0"]] + [_permuted_copy(trained["s0"], tmp_path / f"p{i}.safetensors", i)
                                for i in range(1, 3)]
    result = jobs.run("merge-many", models=[str(c) for c in copies], method="wm", points=3,
                      device="cpu", out=tmp_path / "mm")
    assert result.exit_code == 0 and result.out == tmp_path / "mm"
    merged = load_checkpoint(tmp_path / "mm" / "merged.safetensors").tensors
    for k, v in load_checkpoint(trained["s0"]).tensors.items():
        torch.testing.assert_close(merged[k], v, atol=1e-5, rtol=1e-5)
    report = json.loads((tmp_path / "mm" / "merge.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert len(result.barriers) == 3 and all(r["test_loss_barrier"] == pytest.approx(0, abs=1e-5)
                                              for r in result.barriers)
    config = json.loads((tmp_path / "mm" / "config.json").read_text())
    assert config["job"] == "merge-many" and config["config"]["models"] == [str(c) for c in copies]
    assert report["merged"]["test"]["acc"] == pytest.approx(report["members"][0]["test"]["acc"])
    # The merged model is the first member itself: the same estimate (same probes); the permuted
    # copies have the same Hessian trace, estimated with probes on permuted coordinates.
    trace = report["hessian_trace"]
    assert trace["trace"] > 0 and trace["samples"] == 10 * trace["batches"]
    first, *others = (m["hessian_trace"] for m in report["members"])
    assert first["trace"] == pytest.approx(trace["trace"], rel=1e-3)
    for other in others:
        assert abs(other["trace"] - trace["trace"]) < 4 * (other["trace_se"] ** 2
                                                          + trace["trace_se"] ** 2) ** 0.5
    assert result.lines()[1].startswith("Hessian trace (train, 10 probes")
    lines = (tmp_path / "mm" / "barriers.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 3


def test_merge_many_avg_with_repair_runs(trained, tmp_path, cli):
    rc, out, err = cli("merge-many", trained["s0"], trained["s1"], "--method", "avg", "--repair",
                       "--points", "3", "--out", tmp_path / "mm", "--device", "cpu")
    assert rc == 0, err
    report = json.loads((tmp_path / "mm" / "merge.json").read_text())
    assert report["normalisation"] == "repair"
    assert "merged_without_repair" in report
    lines = out.splitlines()
    assert lines[0].startswith("merged (avg, repair): test loss ")
    assert lines[1].startswith("without REPAIR: test loss ")
    assert lines[2].startswith("Hessian trace (train, 10 probes × ")
    assert lines[3] == f"wrote {tmp_path / 'mm'}" and len(lines) == 4


@pytest.mark.parametrize("argv", [
    ["align", "{s0}", "{w16}"],
    ["align", "{s0}", "{s1}", "--method", "nope"],
    ["merge-many", "{s0}"],
    ["merge-many", "{s0}", "{w16}"],
    ["merge-many", "{s0}", "{s1}", "--method", "nope"],
    ["merge-many", "{s0}", "{s1}", "--hessian-probes", "-1"],
])
def test_cli_errors_exit_2_with_one_line(trained, tmp_path, cli, argv):
    argv = [a.format(**trained) for a in argv] + ["--out", str(tmp_path / "o"), "--device", "cpu"]
    rc, out, err = cli(*argv)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("modeconn: error:")


@pytest.mark.parametrize("options, message", [
    ({"models": ["m0.safetensors"]},
     "'models' of merge-many must name at least 2 checkpoints, got ['m0.safetensors']"),
    ({"models": ["m0", "m1"], "hessian_probes": -1},
     "'hessian_probes' of merge-many must be an integer ≥ 0, got -1"),
    ({"models": ["m0", "m1"], "hessian_batches": 0},
     "'hessian_batches' of merge-many must be an integer ≥ 1, got 0"),
    ({"models": ["m0", "m1"], "method": "ste"},
     "'method' of merge-many must be one of wm, ste-mm, avg, got 'ste'"),
])
def test_merge_many_config_refuses_bad_options_by_field(tmp_path, options, message):
    with pytest.raises(jobs.ConfigError) as e:
        jobs.run("merge-many", out=tmp_path / "mm", **options)
    assert str(e.value) == message
    assert not (tmp_path / "mm").exists()


def test_merge_many_of_one_model_names_the_argument(trained, tmp_path, cli):
    rc, _, err = cli("merge-many", trained["s0"], "--out", tmp_path / "mm")
    assert rc == 2
    assert err.strip() == (f"modeconn: error: models must name at least 2 checkpoints, got "
                           f"{trained['s0']}")


def test_merge_many_with_batchnorm_does_bn_reset(tmp_path, cli):
    paths = []
    for seed in (0, 1):
        rc, _, err = cli("train", "--out", tmp_path / f"bn{seed}", "--norm", "bn", "--epochs", "1",
                         "--depth", "1", "--init-seed", seed, *FAST_TRAIN)
        assert rc == 0, err
        paths.append(tmp_path / f"bn{seed}" / "all" / "model.safetensors")
    rc, out, err = cli("merge-many", *paths, "--repair", "--points", "3", "--out", tmp_path / "mm",
                       "--device", "cpu")
    assert rc == 0, err
    assert json.loads((tmp_path / "mm" / "merge.json").read_text())["normalisation"] == "bn-reset"


def test_align_with_a_hand_written_spec(trained, tmp_path, cli):
    # The traced spec, round-tripped through an align run's permutation.json, gives the same result.
    rc, _, err = cli("align", trained["s0"], trained["s1"], "--points", "3", "--out",
                     tmp_path / "auto", "--device", "cpu")
    assert rc == 0, err
    written = tmp_path / "auto" / "permutation.json"
    rc, _, err = cli("align", trained["s0"], trained["s1"], "--points", "3", "--spec", written,
                     "--out", tmp_path / "given", "--device", "cpu")
    assert rc == 0, err
    assert (tmp_path / "given" / "permutation.json").read_text() == written.read_text()
    # A spec that permutes only the first hidden layer: the second layer's units stay in place.
    spec = json.loads(written.read_text())["spec"]
    first = next(iter(spec["sizes"]))
    narrow = {"sizes": {first: spec["sizes"][first]},
              "axes": {k: [p if p == first else None for p in v] for k, v in spec["axes"].items()
                       if first in v}}
    (tmp_path / "narrow.json").write_text(json.dumps(narrow))
    rc, _, err = cli("merge-many", trained["s0"], trained["s1"], "--spec", tmp_path / "narrow.json",
                     "--points", "3", "--hessian-probes", "0", "--out", tmp_path / "mm",
                     "--device", "cpu")
    assert rc == 0, err
    merged = load_checkpoint(tmp_path / "mm" / "merged.safetensors").tensors
    a, b = (load_checkpoint(trained[s]).tensors for s in ("s0", "s1"))
    second_bias = next(k for k, v in spec["axes"].items() if k.endswith("bias") and v[0] != first)
    torch.testing.assert_close(merged[second_bias], (a[second_bias] + b[second_bias]) / 2)
    first_bias = next(k for k, v in spec["axes"].items() if k.endswith("bias") and v[0] == first)
    assert not torch.allclose(merged[first_bias], (a[first_bias] + b[first_bias]) / 2)


@pytest.mark.parametrize("content, message", [
    (None, "'spec' of align names {path}, which cannot be read: No such file or directory"),
    ("[1, 2]", "is not a permutation spec"),
    ('{"sizes": {"P0": 32}}', "is not a permutation spec"),
    ('{"sizes": {"P0": 7}, "axes": {"1.weight": ["P0", null]}}', "has size 7"),
    ('{"sizes": {"P0": 32}, "axes": {"1.weight": ["P0", null]}}', "does not fit"),
])
def test_bad_hand_written_spec_is_one_line(trained, tmp_path, cli, content, message):
    path = tmp_path / "spec.json"
    if content is not None:
        path.write_text(content)
    rc, _, err = cli("align", trained["s0"], trained["s1"], "--spec", path, "--out",
                     tmp_path / "o", "--device", "cpu")
    message = message.format(path=path)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()

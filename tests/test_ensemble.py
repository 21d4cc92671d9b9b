"""Ensemble metrics and similarity on hand-made predictions (ALGORITHMS.md §7), and the
`ensemble` job (from Python and as `modeconn ensemble`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from modeconn import jobs
from modeconn.checkpoint import load_checkpoint, params_of
from modeconn.cli import main
from modeconn.ensemble import (
    ensemble_metrics,
    expected_calibration_error,
    linear_cka,
    pairwise_similarity,
    similarity,
)
from modeconn.io import read_csv
from modeconn.models import rebuild
from modeconn.options import ConfigError
from modeconn.params import flatten, statistic_keys, weight_keys

# ---------------------------------------------------------------- ensemble metrics

# Two members, three samples, three classes; labels 0, 1, 2.
M1 = [[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4]]
M2 = [[0.5, 0.4, 0.1], [0.2, 0.1, 0.7], [0.1, 0.2, 0.7]]
Y3 = torch.tensor([0, 1, 2])


def _probs(*members):
    return torch.tensor(members, dtype=torch.float64)


def test_ensemble_metrics_by_hand():
    m = ensemble_metrics(_probs(M1, M2), Y3)
    # Mean prediction: [.65 .25 .10], [.15 .40 .45], [.20 .25 .55] → predicts 0, 2, 2: 2 of 3 right.
    assert m["acc"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["nll"] == pytest.approx(-(math.log(0.65) + math.log(0.40) + math.log(0.55)) / 3,
                                     abs=1e-12)
    # Brier: (.35² + .25² + .1²) + (.15² + .6² + .45²) + (.2² + .25² + .45²) = .195 + .585 + .305.
    assert m["brier"] == pytest.approx((0.195 + 0.585 + 0.305) / 3, abs=1e-12)
    # ECE: confidences .65, .45, .55 fall in three different bins, correct 1, 0, 1:
    # (|1 − .65| + |0 − .45| + |1 − .55|) / 3.
    assert m["ece"] == pytest.approx((0.35 + 0.45 + 0.45) / 3, abs=1e-12)
    # Members: M1 gets all three right, M2 predicts 0, 2, 2 (2 of 3).
    assert m["member_acc"] == pytest.approx(5 / 6, abs=1e-12)
    assert m["gain_acc"] == pytest.approx(2 / 3 - 5 / 6, abs=1e-12)
    nll1 = -(math.log(0.8) + math.log(0.7) + math.log(0.4)) / 3
    nll2 = -(math.log(0.5) + math.log(0.1) + math.log(0.7)) / 3
    assert m["member_nll"] == pytest.approx((nll1 + nll2) / 2, abs=1e-12)
    assert m["gain_nll"] == pytest.approx((nll1 + nll2) / 2 - m["nll"], abs=1e-12)
    assert m["size"] == 2


def test_ensemble_of_diverse_members_gains_accuracy():
    # Member k is wrong (0.6 on class 1) only on sample k and right with 0.9 elsewhere; the mean
    # puts 2.2/3 on class 0 everywhere, so the ensemble is always right.
    members = [[[0.4, 0.6] if j == k else [0.9, 0.1] for j in range(3)] for k in range(3)]
    m = ensemble_metrics(_probs(*members), torch.zeros(3, dtype=torch.long))
    assert m["acc"] == 1.0
    assert m["member_acc"] == pytest.approx(2 / 3)
    assert m["gain_acc"] == pytest.approx(1 / 3)
    assert m["nll"] == pytest.approx(-math.log(2.2 / 3), abs=1e-12)
    member_nll = -(math.log(0.4) + 2 * math.log(0.9)) / 3
    assert m["gain_nll"] == pytest.approx(member_nll + math.log(2.2 / 3), abs=1e-12)
    assert m["gain_nll"] > 0


def test_ensemble_of_copies_equals_its_member():
    p = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), -1)
    y = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(1))
    m = ensemble_metrics(torch.stack([p, p, p]), y)
    for key in ("acc", "nll", "brier", "ece"):
        assert m[key] == pytest.approx(m[f"member_{key}"], abs=1e-6)  # float32 mean
    assert m["gain_acc"] == pytest.approx(0.0, abs=1e-12)
    assert m["size"] == 3


def test_perfect_confident_predictions():
    y = torch.tensor([0, 1, 2, 1])
    p = torch.nn.functional.one_hot(y, 3).double()
    m = ensemble_metrics(p[None], y)
    assert m["acc"] == 1.0
    assert m["nll"] == pytest.approx(0.0, abs=1e-12)
    assert m["brier"] == pytest.approx(0.0, abs=1e-12)
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ece_single_bin_overconfident():
    # Every prediction has confidence 0.8 and half are right: ECE = |0.5 − 0.8| = 0.3.
    conf = torch.full((10,), 0.8, dtype=torch.float64)
    correct = torch.tensor([1, 0] * 5, dtype=torch.float64)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.3, abs=1e-12)
    # The same through ensemble_metrics: p = [0.8, 0.2], labels alternate between the classes.
    p = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    y = torch.tensor([0, 1] * 5)
    assert ensemble_metrics(p[None], y)["ece"] == pytest.approx(0.3, abs=1e-12)


def test_ece_weights_bins_by_their_size():
    # Three predictions at 0.95, all right (|1 − .95| = .05), one at 0.35, wrong (.35):
    # ECE = 3/4·0.05 + 1/4·0.35 = 0.125 (one bin would give |0.75 − 0.8| = 0.05).
    conf = torch.tensor([0.95, 0.95, 0.95, 0.35], dtype=torch.float64)
    correct = torch.tensor([1, 1, 1, 0], dtype=torch.float64)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.125, abs=1e-12)
    assert expected_calibration_error(conf, correct, bins=1) == pytest.approx(0.05, abs=1e-12)


# ---------------------------------------------------------------- similarity


def _onehot(labels, c=2):
    return torch.nn.functional.one_hot(torch.tensor(labels), c).double() * 0.8 + 0.2 / c


def test_identical_predictions():
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    p = _onehot([0, 1, 0, 0, 1, 1])  # wrong on samples 2 and 5
    s = similarity(p, p.clone(), y)
    assert s["agreement"] == 1.0
    assert s["disagreement"] == 0.0
    assert s["cohen_kappa"] == pytest.approx(1.0, abs=1e-12)
    assert s["error_overlap"] == 1.0
    assert s["error_correlation"] == pytest.approx(1.0, abs=1e-12)


def test_known_kappa_overlap_and_error_correlation():
    a = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    b = [0, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 0, 1])
    s = similarity(_onehot(a), _onehot(b), y)
    # Agreement 7/10; marginals a: (.5, .5), b: (.4, .6) → p_e = .5; κ = (.7 − .5)/(1 − .5) = .4.
    assert s["agreement"] == pytest.approx(0.7, abs=1e-12)
    assert s["disagreement"] == pytest.approx(0.3, abs=1e-12)
    assert s["cohen_kappa"] == pytest.approx(0.4, abs=1e-12)
    # a is wrong on {8}, b on {3, 4, 8, 9}: both wrong 1, either wrong 4.
    assert s["error_overlap"] == pytest.approx(0.25, abs=1e-12)
    # Pearson of the error indicators: cov 0.6, norms √0.9 and √2.4 → 1/√6.
    assert s["error_correlation"] == pytest.approx(1 / math.sqrt(6), abs=1e-12)


def test_kappa_of_independent_looking_predictions_is_zero():
    # a: 0 0 1 1, b: 0 1 0 1 → agreement .5 = chance agreement → κ = 0.
    s = similarity(_onehot([0, 0, 1, 1]), _onehot([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
    assert s["cohen_kappa"] == pytest.approx(0.0, abs=1e-12)


def _reps(n=40, d=6, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_linear_cka_invariances():
    x = _reps()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(_reps(6, 6, seed=1))
    assert torch.allclose(q.T @ q, torch.eye(6, dtype=torch.float64), atol=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 0.1 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x.float(), (x @ q).float()) == pytest.approx(1.0, abs=1e-5)
    # Different widths are allowed, and CKA is symmetric.
    z = _reps(d=3, seed=2)
    assert linear_cka(x, z) == pytest.approx(linear_cka(z, x), abs=1e-12)
    assert 0.0 <= linear_cka(x, z) < 0.9


def test_linear_cka_of_one_dimensional_features_is_squared_correlation():
    u = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    v = torch.tensor([[1.0], [3.0], [2.0], [5.0]], dtype=torch.float64)
    # Pearson r = 5.5 / √(5·8.75).
    r = 5.5 / math.sqrt(5 * 8.75)
    assert linear_cka(u, v) == pytest.approx(r**2, abs=1e-12)


def test_weight_similarity():
    p1 = {"fc.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "fc.bias": torch.tensor([1.0, 0.0]),
          "bn.running_mean": torch.tensor([7.0, 7.0]), "bn.running_var": torch.tensor([2.0, 2.0]),
          "bn.num_batches_tracked": torch.tensor(3)}
    y = torch.tensor([0, 1])
    pr = _onehot([0, 1])
    stats = {"bn.running_mean", "bn.running_var"}
    s = similarity(pr, pr, y, p1, p1, statistics=stats)
    assert s["weight_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert s["weight_l2"] == 0.0
    # Only parameters count: change running statistics freely, weights by a (3, 4) step → L2 = 5.
    p2 = dict(p1, **{"fc.bias": torch.tensor([4.0, 4.0]),
                     "bn.running_mean": torch.tensor([0.0, 9.0]),
                     "bn.running_var": torch.tensor([1.0, 5.0]),
                     "bn.num_batches_tracked": torch.tensor(11)})
    assert similarity(pr, pr, y, p1, p2, statistics=stats)["weight_l2"] == pytest.approx(5.0, abs=1e-6)
    # Without knowing which entries are statistics, every floating-point entry is a coordinate.
    assert similarity(pr, pr, y, p1, p2)["weight_l2"] > 5.0
    neg = {k: -v if v.is_floating_point() else v for k, v in p1.items()}
    assert similarity(pr, pr, y, p1, neg, statistics=stats)["weight_cosine"] == \
        pytest.approx(-1.0, abs=1e-12)
    assert flatten(p1, weight_keys(p1, stats)).tolist() == [1.0, 2.0, 3.0, 4.0, 1.0, 0.0]


def test_pairwise_similarity_covers_every_pair_once():
    y = torch.tensor([0, 1, 1, 0])
    probs = torch.stack([_onehot([0, 1, 1, 0]), _onehot([0, 1, 0, 0]), _onehot([1, 1, 1, 0])])
    feats = [_reps(4, 3, seed=s) for s in range(3)]
    rows = pairwise_similarity(["x", "y", "z"], probs, y, feats=feats)
    assert [(r["a"], r["b"]) for r in rows] == [("x", "y"), ("x", "z"), ("y", "z")]
    assert rows[0]["agreement"] == 0.75 and rows[1]["agreement"] == 0.75
    assert rows[2]["agreement"] == 0.5
    assert all("cka" in r and "weight_cosine" not in r for r in rows)


# ---------------------------------------------------------------- `modeconn ensemble`

TINY = ["--width", "16", "--depth", "1", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two MLPs trained on disjoint halves of digits (2 epochs)."""
    out = tmp_path_factory.mktemp("pair") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--shift", "iid:50,50", "--out", str(out)]) == 0
    return out


def _status(run, member):
    return json.loads((run / member / "status.json").read_text())


def test_ensemble_job_writes_metrics_and_similarity(pair, tmp_path):
    a, b = pair / "a" / "model.safetensors", pair / "b" / "model.safetensors"
    out = tmp_path / "ens"
    result = jobs.run("ensemble", checkpoints=[str(a), str(b)], device="cpu", out=out)
    assert result.out == out and result.exit_code == 0
    assert result.members == [str(a), str(b)]
    m = json.loads((out / "ensemble.json").read_text())
    assert m == {"members": [str(a), str(b)], **result.metrics}
    assert m["size"] == 2
    # The mean member is the mean of the two models' own test accuracies (same test set).
    sa, sb = _status(pair, "a"), _status(pair, "b")
    assert m["member_acc"] == pytest.approx((sa["test_acc"] + sb["test_acc"]) / 2, abs=1e-9)
    assert m["member_nll"] == pytest.approx((sa["test_loss"] + sb["test_loss"]) / 2, rel=1e-5)
    assert m["gain_acc"] == pytest.approx(m["acc"] - m["member_acc"], abs=1e-12)
    for key in ("acc", "ece"):
        assert 0.0 <= m[key] <= 1.0
    assert 0.0 < m["brier"] < 2.0 and m["nll"] > 0
    rows = read_csv(out / "similarity.csv")
    assert len(rows) == 1 == len(result.similarity)
    row = rows[0]
    assert (row["a"], row["b"]) == (str(a), str(b))
    pa = params_of(load_checkpoint(a))
    pb = params_of(load_checkpoint(b))
    keys = weight_keys(pa, statistic_keys(rebuild(load_checkpoint(a))))
    expected_l2 = float((flatten(pa, keys) - flatten(pb, keys)).norm())
    assert float(row["weight_l2"]) == pytest.approx(expected_l2, rel=1e-9)
    assert float(row["agreement"]) + float(row["disagreement"]) == pytest.approx(1.0)
    for key in ("cohen_kappa", "weight_cosine", "cka", "error_overlap", "error_correlation"):
        assert key in row and row[key] != ""
    assert (out / "polar_similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert config["job"] == "ensemble" and config["config"]["checkpoints"] == [str(a), str(b)]
    assert config["config"]["bn_reset"] == "off" and (out / "env.json").exists()


def test_ensemble_command_prints_the_summary(cli, pair, tmp_path):
    a, b = pair / "a" / "model.safetensors", pair / "b" / "model.safetensors"
    out = tmp_path / "ens"
    rc, stdout, err = cli("ensemble", a, b, "--device", "cpu", "--out", out)
    assert rc == 0, err
    m = json.loads((out / "ensemble.json").read_text())
    assert stdout.splitlines() == [
        f"ensemble of 2: acc {m['acc']:.4f} (mean member {m['member_acc']:.4f}, gain "
        f"{100 * m['gain_acc']:+.2f}%), NLL {m['nll']:.4f}, Brier {m['brier']:.4f}, "
        f"ECE {m['ece']:.4f}", f"wrote {out}"]


def test_ensemble_of_a_checkpoint_with_itself(pair, tmp_path):
    a = pair / "a" / "model.safetensors"
    out = tmp_path / "self"
    jobs.run("ensemble", checkpoints=[str(a), str(a)], device="cpu", out=out)
    m = json.loads((out / "ensemble.json").read_text())
    assert m["acc"] == pytest.approx(_status(pair, "a")["test_acc"], abs=1e-9)
    assert m["gain_acc"] == pytest.approx(0.0, abs=1e-12)
    assert m["nll"] == pytest.approx(m["member_nll"], abs=1e-9)
    (row,) = read_csv(out / "similarity.csv")
    assert float(row["agreement"]) == 1.0
    assert float(row["cohen_kappa"]) == pytest.approx(1.0, abs=1e-12)
    assert float(row["weight_cosine"]) == pytest.approx(1.0, abs=1e-9)
    assert float(row["weight_l2"]) == 0.0
    assert float(row["cka"]) == pytest.approx(1.0, abs=1e-6)


def test_ensemble_needs_two_checkpoints(cli, pair, tmp_path):
    a = pair / "a" / "model.safetensors"
    with pytest.raises(ConfigError, match=r"^'checkpoints' of ensemble must name at least two "
                                          r"checkpoints, got \['a.safetensors'\]$"):
        jobs.run("ensemble", checkpoints=["a.safetensors"], out=tmp_path / "py")
    out = tmp_path / "one"
    rc, stdout, err = cli("ensemble", a, "--out", out)
    assert rc == 2
    assert err == f"modeconn: error: checkpoints must name at least two checkpoints, got {a}\n"
    assert not out.exists()

"""Multi-label tasks (ALGORITHMS.md §9): the task's metrics against scikit-learn, the engine's
accumulation, barriers on 1 − micro-F1, ensembles, dominant-label splits, band selection, the
memory-mapped data source, the VGG-like model, and the jobs on multi-label data."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score
from torch import nn

from modeconn.cli import main
from modeconn.data import DataSpec, MappedImages, eval_data, parse_shift, prepare_subsets, strata
from modeconn.data.shifts import channel_index
from modeconn.ensemble import ensemble_metrics, similarity
from modeconn.errors import UsageError
from modeconn.evaluate import Evaluator, evaluate
from modeconn.models import build_model, model_config
from modeconn.paths.barrier import path_summary
from modeconn.task import MULTILABEL, MultiLabel, mean_average_precision
from modeconn.train import Stepper, TrainConfig, epoch_order, make_optimizer

ML = "synthetic:task=multilabel,n=600,test=200,classes=5,shape=3x8x8"


def _scores(n=300, labels=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, labels, generator=g) < 0.3).float()
    y[:, -1] = 0  # a label never present: left out of mAP, scores 0 in macro F1
    logits = 2 * (y - 0.5) + torch.randn(n, labels, generator=g)
    return logits, y


def test_multilabel_metrics_agree_with_scikit_learn():
    logits, y = _scores()
    p = logits.sigmoid()
    m = MULTILABEL.metrics(MULTILABEL.totals(logits, y), len(y))
    assert list(m) == list(MULTILABEL.metric_names) == ["loss", "f1", "macro_f1", "map"]
    pred = (p > 0.5).numpy()
    assert m["f1"] == pytest.approx(f1_score(y.numpy(), pred, average="micro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(y.numpy(), pred, average="macro",
                                                   zero_division=0))
    # scikit-learn's (and torchmetrics') macro mAP: the last label has no positive and scores 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["map"] == pytest.approx(average_precision_score(y.numpy(), p.numpy(),
                                                                 average="macro"))
    assert m["map"] == pytest.approx(mean_average_precision(p, y, "present") *
                                     (y.shape[1] - 1) / y.shape[1])
    assert m["loss"] == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, y)))
    per = MULTILABEL.per_label(p, y)
    assert [r["ap"] for r in per[:-1]] == pytest.approx(
        list(average_precision_score(y.numpy()[:, :-1], p.numpy()[:, :-1], average=None)))
    assert math.isnan(per[-1]["ap"]) and per[-1]["positives"] == 0
    assert mean_average_precision(p, torch.zeros_like(y)) == 0.0  # as scikit-learn scores it
    assert math.isnan(mean_average_precision(p, torch.zeros_like(y), "present"))
    with pytest.raises(ValueError, match="labels must be 'all' or 'present'"):
        mean_average_precision(p, y, "some")


def test_a_threshold_changes_predictions_and_is_checked():
    logits, y = _scores()
    low = MultiLabel(threshold=0.2)
    assert low.predict(logits).sum() > MULTILABEL.predict(logits).sum()
    with pytest.raises(ValueError, match="threshold"):
        MultiLabel(threshold=1.0)


def test_the_engine_accumulates_per_sample_scores_across_batches_and_points():
    torch.manual_seed(0)
    x = torch.randn(250, 7)
    y = (torch.rand(250, 4) < 0.4).float()
    model = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 4))
    pts = [{k: v + 0.1 * i * torch.randn_like(v) for k, v in model.state_dict().items()}
           for i in range(3)]
    batched = Evaluator(model, {"test": (x, y)}, batch_size=64, task=MULTILABEL).evaluate(pts)
    loop = Evaluator(model, {"test": (x, y)}, batch_size=1000, method="loop",
                     task=MULTILABEL).evaluate(pts)
    for a, b, p in zip(batched, loop, pts):
        model.load_state_dict(p)
        whole = dict(zip(MULTILABEL.metric_names, evaluate(model, x, y, batch_size=37,
                                                           task=MULTILABEL)))
        for k in MULTILABEL.metric_names:
            assert a["test"][k] == pytest.approx(b["test"][k], rel=1e-5)
            assert a["test"][k] == pytest.approx(whole[k], rel=1e-5)


def test_barriers_measure_the_error_one_minus_micro_f1():
    ts = [0.0, 0.5, 1.0]
    s = path_summary(ts, [0.2, 0.5, 0.2], [0.8, 0.5, 0.7], score="f1")
    assert s["error"]["linear"]["barrier"] == pytest.approx(0.5 - 0.25)
    assert s["delta_f1"] == pytest.approx(0.5 - 0.75) and s["score"] == "f1"
    assert "delta_acc" not in s


def test_multilabel_ensemble_scores_by_hand():
    p = torch.tensor([[0.9, 0.2], [0.4, 0.6]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    s = MULTILABEL.ensemble_scores(p, y, bins=10)
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))  # tp 2 (0.9, 0.6), fn 1 (0.4)
    bce = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.6)) / 4
    assert s["nll"] == pytest.approx(bce)
    assert s["brier"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.16) / 4)
    # Label 0: bins (0.3,0.4] frac 1 conf 0.4, (0.8,0.9] frac 1 conf 0.9 → (0.6 + 0.1)/2;
    # label 1: (0.1,0.2] frac 0 conf 0.2, (0.5,0.6] frac 1 conf 0.6 → (0.2 + 0.4)/2.
    assert s["ece"] == pytest.approx((0.35 + 0.3) / 2)
    ens = ensemble_metrics(torch.stack([p, p]), y, task=MULTILABEL)
    assert ens["f1"] == ens["member_f1"] and ens["gain_f1"] == 0 and "gain_acc" not in ens


def test_similarity_of_multilabel_models_compares_label_decisions():
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p1 = torch.tensor([[0.9, 0.1], [0.2, 0.8]])  # all four decisions right
    p2 = torch.tensor([[0.9, 0.7], [0.2, 0.8]])  # one wrong
    s = similarity(p1, p2, y, task=MULTILABEL)
    assert s["agreement"] == 0.75 and s["error_overlap"] == 0.0


def test_multilabel_data_splits_by_the_dominant_label():
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 1, 0]])
    # Frequencies 4, 2, 1: the rarest label each row carries; no label → the most frequent.
    assert strata(y).tolist() == [1, 0, 2, 0, 1]
    subs = prepare_subsets(DataSpec(dataset=ML, shift="label-skew:0-1=90,2-4=10"))
    hist = [s.histogram for s in subs]
    assert len(hist[0]) == 5 and sum(hist[0][:2]) > sum(hist[1][:2])
    assert subs[0].task is MULTILABEL and subs[0].train_y.shape[1] == 5


def test_band_shifts_parse_and_refuse_what_cannot_work():
    s = parse_shift("bands:B02|B03,B04,B08", 19)
    assert s.num_subsets == 2 and s.domains == ("bands=B02", "bands=B03/B04/B08")
    assert channel_index("bands=B04/B02", ("B02", "B03", "B04")) == [2, 0]
    with pytest.raises(UsageError, match="unknown band 'B99'"):
        channel_index("bands=B99", ("B02", "B03"))
    with pytest.raises(UsageError, match="no band names"):
        prepare_subsets(DataSpec(dataset="digits", shift="bands:B02|B03"))
    with pytest.raises(UsageError, match="band set per subset"):
        parse_shift("bands:B02", 19)
    with pytest.raises(UsageError, match="names a band twice"):
        parse_shift("bands:B02,B02|B03", 19)


def _mapped(n=40, c=4, size=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10000, size=(n, c, size, size), dtype=np.uint16)


def test_a_mapped_source_reads_what_the_array_holds():
    arr = _mapped()
    rows = np.array([5, 3, 9, 1, 30])
    src = MappedImages.of(arr, rows, scale=1e-4)
    ref = torch.from_numpy(arr[rows].astype(np.float32)) * 1e-4
    assert src.shape == ref.shape and len(src) == 5 and src.dim() == 4
    assert torch.equal(src[1:4], ref[1:4])
    idx = torch.tensor([4, 0, 2, 2])
    assert torch.equal(src.index_select(0, idx), ref.index_select(0, idx))
    assert torch.equal(src[idx], ref[idx])
    with pytest.raises(TypeError, match="slices"):
        src[2]
    view = src.take(np.array([2, 0])).select_channels([3, 1])
    assert torch.equal(view.materialise(), ref[[2, 0]][:, [3, 1]])
    mean, std = src.stats()
    assert torch.allclose(mean, ref.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(std, ref.std((0, 2, 3)), atol=1e-5)
    norm = src.normalised(mean, std)
    assert torch.allclose(norm[0:5], (ref - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
    assert norm.contiguous(memory_format=torch.channels_last)[0:2].is_contiguous(
        memory_format=torch.channels_last)


def test_training_on_a_mapped_source_equals_training_in_memory():
    arr = _mapped(n=64, c=3, size=8)
    y = torch.from_numpy((np.arange(64)[:, None] % np.array([2, 3, 5]) == 0).astype(np.float32))
    src = MappedImages.of(arr, scale=1e-4)
    mem = src.materialise()
    cfg = model_config("vgglike", (3, 8, 8), 3, width=0.125)
    runs = []
    for x in (mem, src):
        torch.manual_seed(0)
        model = build_model(cfg)
        opt = make_optimizer(model.parameters(), TrainConfig(lr=0.05))
        stepper = Stepper(model, opt, x, y, 16, drop_single=True, task=MULTILABEL)
        stepper.driver.run(2, lambda e: epoch_order(64, 64, 0, e), lambda e, b: 0.05,
                           quiet=True)
        runs.append((model.state_dict(), evaluate(model, x, y, 32, task=MULTILABEL)))
    for k, v in runs[0][0].items():
        assert torch.equal(v, runs[1][0][k]), k
    assert runs[0][1] == runs[1][1]


def test_the_vgg_like_model_takes_any_bands_and_sizes_and_its_spec_recovers_a_permutation():
    from modeconn.align import Permutation, auto_spec, weight_matching

    for c, s in ((1, 20), (3, 60), (12, 32)):
        cfg = model_config("vgglike", (c, s, s), 19, width=0.125)
        assert build_model(cfg)(torch.randn(2, c, s, s)).shape == (2, 19)
    torch.manual_seed(0)
    model = build_model(model_config("vgglike", (3, 16, 16), 4, width=0.125)).eval()
    x = torch.randn(4, 3, 16, 16)
    spec = auto_spec(model, x)
    a = model.state_dict()
    b = Permutation.random(spec, torch.Generator().manual_seed(1)).apply(a)
    found = weight_matching(a, b, spec=spec)
    back = found.apply(b)
    for k in a:
        assert torch.allclose(back[k].float(), a[k].float()), k


def _cli(*args) -> int:
    return main([str(a) for a in args])


def test_train_interpolate_ensemble_and_align_speak_multilabel(tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli("train", "--dataset", ML, "--shift", "iid:50,50", "--epochs", "4",
                "--width", "64", "--depth", "1", "--out", run, "--quiet") == 0
    metrics = (run / "a" / "metrics.csv").read_text().splitlines()[0]
    assert metrics == "epoch,split,loss,f1,macro_f1,map,lr,seconds"
    status = json.loads((run / "a" / "status.json").read_text())
    assert {"test_f1", "test_map", "test_macro_f1"} <= set(status) and "test_acc" not in status
    assert (run / "a" / "per_label.csv").read_text().startswith("label,name,positives,ap,f1")
    a, b = run / "a" / "model.safetensors", run / "b" / "model.safetensors"
    assert _cli("interpolate", a, b, "--points", "5", "--out", tmp_path / "i") == 0
    assert (tmp_path / "i" / "path.csv").read_text().startswith(
        "t,split,loss,f1,macro_f1,map,length")
    bar = json.loads((tmp_path / "i" / "barrier.json").read_text())
    assert bar["test"]["score"] == "f1" and "delta_f1" in bar["test"]
    assert _cli("ensemble", a, b, "--out", tmp_path / "e") == 0
    ens = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert {"f1", "map", "gain_f1", "ece"} <= set(ens)
    assert _cli("align", a, b, "--method", "wm", "--points", "3", "--out", tmp_path / "al") == 0
    assert "Δf1" in capsys.readouterr().out


def test_continual_and_the_fusion_table_refuse_multilabel_data(tmp_path, capsys):
    assert _cli("continual", "--dataset", ML, "--out", tmp_path / "c") == 2
    assert "single-label classification" in capsys.readouterr().err


def test_whole_dataset_evaluation_keeps_a_models_bands():
    spec = DataSpec(dataset="synthetic:task=multilabel,n=100,test=40,classes=3,shape=3x4x4",
                    shift="iid:50,50")
    assert eval_data(spec).train_x.shape[1] == 3


def test_curves_planes_merging_and_fge_speak_multilabel(tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli("train", "--dataset", ML, "--shift", "iid:50,50", "--epochs", "5",
                "--optimizer", "adam", "--lr", "0.003", "--width", "64", "--depth", "1",
                "--out", run, "--quiet") == 0
    a, b = run / "a" / "model.safetensors", run / "b" / "model.safetensors"
    assert json.loads((run / "a" / "status.json").read_text())["test_f1"] > 0.3
    assert _cli("curve", a, b, "--epochs", "1", "--points", "5", "--out", tmp_path / "c",
                "--quiet") == 0
    assert (tmp_path / "c" / "path.csv").read_text().startswith(
        "path,t,split,loss,f1,macro_f1,map,length")
    curve = tmp_path / "c" / "curve.safetensors"
    assert _cli("landscape", "--curve", curve, "--grid", "3", "--out", tmp_path / "l") == 0
    assert (tmp_path / "l" / "plane.csv").read_text().startswith(
        "i,j,x,y,split,loss,f1,macro_f1,map")
    assert _cli("curve-ensemble", curve, "--k", "3", "--out", tmp_path / "ce") == 0
    assert "gain_f1" in json.loads((tmp_path / "ce" / "ensemble.json").read_text())["curve"]
    assert _cli("merge-many", a, b, "--out", tmp_path / "mm") == 0
    merged = json.loads((tmp_path / "mm" / "merge.json").read_text())["merged"]["test"]
    assert {"f1", "map"} <= set(merged)
    for method in ("avg", "ot"):
        assert _cli("merge", a, b, "--method", method, "--out", tmp_path / method) == 0
    assert _cli("fge", a, "--cycles", "2", "--cycle-epochs", "1", "--out", tmp_path / "f",
                "--quiet") == 0
    assert "f1" in json.loads((tmp_path / "f" / "ensemble.json").read_text())["fge"]
    out = capsys.readouterr().out
    assert " f1 " in out and " acc " not in out

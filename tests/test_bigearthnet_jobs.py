"""BigEarthNet through the jobs: a small folder in the real layout (GeoTIFF bands at native sizes,
label JSON, split CSVs) read as a multi-label dataset, band shifts, bad patches, the memory-mapped
path, and the LMC study on it."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from ben_fixture import write_bigearthnet

from modeconn.checkpoint import load_checkpoint
from modeconn.cli import main
from modeconn.data import _cached

DATASET = "bigearthnet:size=20,labels=19"
SHIFT = "bands:B04,B03,B02|B08,B11,B12"


@pytest.fixture(scope="module")
def ben_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_bigearthnet(root / "bigearthnet", n=60, seed=0, splits=True)
    return root


def _cli(*args) -> int:
    return main([str(a) for a in args])


def _train(out, data_dir, *extra) -> int:
    return _cli("train", "--dataset", DATASET, "--data-dir", data_dir, "--model", "vgglike",
                "--width", "0.125", "--epochs", "2", "--batch-size", "8", "--out", out,
                "--quiet", *extra)


def test_a_band_shift_trains_multilabel_models_that_interpolate(ben_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, ben_dir, "--shift", SHIFT) == 0
    a = load_checkpoint(run / "a" / "model.safetensors")
    assert a.architecture["input_shape"] == [3, 20, 20]
    assert a.architecture["num_classes"] == 19
    status = json.loads((run / "b" / "status.json").read_text())
    assert "test_f1" in status and "test_map" in status
    names = [r["name"] for r in csv.DictReader((run / "a" / "per_label.csv").open())]
    assert names[0] == "Urban fabric" and len(names) == 19
    assert _cli("interpolate", run / "a" / "model.safetensors", run / "b" / "model.safetensors",
                "--points", "3", "--data-dir", ben_dir, "--out", tmp_path / "i") == 0
    bar = json.loads((tmp_path / "i" / "barrier.json").read_text())
    # Evaluated on the whole dataset through A's own bands.
    assert bar["eval_data"]["bands"] == "B04,B03,B02"
    assert bar["test"]["score"] == "f1"


def test_models_on_different_numbers_of_bands_are_refused_clearly(ben_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, ben_dir, "--shift", "bands:B02|B03,B04,B08", "--epochs", "1") == 0
    capsys.readouterr()
    assert _cli("interpolate", run / "a" / "model.safetensors", run / "b" / "model.safetensors",
                "--data-dir", ben_dir, "--out", tmp_path / "i") == 2
    err = capsys.readouterr().err
    assert "1 input channels" in err and "3" in err and "band sets of one size" in err
    assert "Traceback" not in err and not (tmp_path / "i").exists()


def test_bands_combine_with_any_shift(ben_dir, tmp_path):
    run = tmp_path / "run"
    assert _train(run, ben_dir, "--shift", "dirichlet:1.0", "--subsets", "2", "--bands",
                  "B02,B03|B08,B11", "--epochs", "1") == 0
    cfg = json.loads((run / "b" / "config.json").read_text())
    assert cfg["data"]["domain"] == "bands=B08/B11" and cfg["data"]["bands"] == "B02,B03|B08,B11"
    assert load_checkpoint(run / "b" / "model.safetensors").architecture["input_shape"][0] == 2


def test_a_bad_patch_stops_with_its_name_or_is_skipped_and_listed(tmp_path, capsys):
    data = tmp_path / "data"
    names = write_bigearthnet(data / "bigearthnet", n=30, seed=1, splits=True,
                              bad={3: "unreadable_tiff"})
    assert _train(tmp_path / "r1", data) == 2
    err = capsys.readouterr().err
    assert names[3] in err and "--on-bad-patch skip" in err and "Traceback" not in err
    assert not (tmp_path / "r1").exists()
    assert _train(tmp_path / "r2", data, "--on-bad-patch", "skip", "--epochs", "1") == 0
    skipped = list(csv.DictReader((tmp_path / "r2" / "skipped.csv").open()))
    assert names[3] in [r["file"] for r in skipped]


def test_the_memory_mapped_path_trains_exactly_as_in_memory(ben_dir, tmp_path, monkeypatch):
    runs = []
    for budget in ("1000000000", "0"):  # in memory, then batches from the memory-mapped cache
        monkeypatch.setenv("MODECONN_IN_MEMORY_BYTES", budget)
        _cached.cache_clear()
        out = tmp_path / f"run{budget}"
        assert _train(out, ben_dir, "--shift", SHIFT, "--epochs", "1") == 0
        runs.append(load_checkpoint(out / "a" / "model.safetensors").tensors)
    # Every feature reads its batches from the source: alignment, merging, curves, planes.
    a, b = (tmp_path / "run0" / m / "model.safetensors" for m in ("a", "b"))
    for cmd in (["align", a, b, "--method", "am"], ["merge-many", a, b, "--repair"],
                ["merge", a, b, "--method", "ot", "--cost", "activations"],
                ["curve", a, b, "--epochs", "1", "--points", "3", "--quiet"]):
        assert _cli(*cmd, "--data-dir", ben_dir, "--out", tmp_path / cmd[0]) == 0, cmd
    assert _cli("landscape", "--curve", tmp_path / "curve" / "curve.safetensors", "--grid", "3",
                "--data-dir", ben_dir, "--out", tmp_path / "plane") == 0
    _cached.cache_clear()
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


@pytest.mark.slow
def test_the_lmc_study_runs_on_bigearthnet_with_a_band_shift(ben_dir, tmp_path):
    out = tmp_path / "lmc"
    assert _cli("lmc", "--dataset", DATASET, "--data-dir", ben_dir, "--model", "vgglike",
                "--width", "0.125", "--shift", SHIFT, "--epochs", "2", "--seeds", "0,1",
                "--batch-size", "8", "--lr", "0.05", "--batch-order", "same",
                "--points", "5", "--ensemble-size", "2", "--out", out, "--quiet") == 0
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert len(summary) == 1 and "test_delta_f1" in summary[0] and "lmc_ens_gain_f1" in summary[0]
    assert float(summary[0]["test_loss_barrier"]) == float(summary[0]["test_loss_barrier"])
    assert (out / "figures" / "delta.png").is_file()


@pytest.mark.slow
def test_a_study_of_multilabel_jobs_runs_tabulates_and_reports(ben_dir, tmp_path, capsys):
    study = tmp_path / "ben.toml"
    study.write_text(f"""
[study]
name = "ben"
description = "multi-label study on the BigEarthNet fixture"

[train]
dataset = "{DATASET}"
data_dir = "{ben_dir}"
model = "vgglike"
width = 0.125
epochs = 2
batch_size = 8
shift = "{SHIFT}"

[train.sweep]
seeds = [0, 1]

[interpolate]
a = "@train/a/model.safetensors"
b = "@train/b/model.safetensors"
data_dir = "{ben_dir}"
points = 3

[ensemble]
checkpoints = ["@train/a/model.safetensors", "@train/b/model.safetensors"]
data_dir = "{ben_dir}"
""")
    out = tmp_path / "out"
    assert _cli("run", study, "--out", out, "--quiet") == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    metrics = {r["metric"] for r in rows}
    assert {"test_f1", "test_map", "test_delta_f1", "gain_f1"} <= metrics
    capsys.readouterr()
    assert _cli("results", out) == 0
    text = capsys.readouterr().out
    assert "test_delta_f1" in text and "test_f1" in text
    assert _cli("report", out, "--out", tmp_path / "report.html") == 0
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64" in html and "test_f1" in html

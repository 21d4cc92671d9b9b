"""The command line: `train` outputs, one-line errors with exit status 2, `info`."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
from conftest import FAST_TRAIN, make_mnist_arrays, write_mnist

from modeconn import jobs
from modeconn.models import load_model


def _assert_one_line_error(rc, out, err):
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modeconn: error: ")
    assert "Traceback" not in err and "Traceback" not in out


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


FAST = {"width": 32, "quiet": True, "device": "cpu"}


def test_train_job_writes_run_directory(tmp_path):
    out = tmp_path / "runs" / "demo"
    result = jobs.run("train", **FAST, epochs=2, shift="iid:50,50", save_epochs=[1], out=out)
    assert result.out == out and result.exit_code == 0 and not result.diverged
    assert [r["member"] for r in result.members] == ["a", "b"]
    assert all(r["status"] == "complete" for r in result.members)
    for f in ("config.json", "env.json", "subsets.csv", "summary.csv"):
        assert (out / f).is_file(), f
    for m in ("a", "b"):
        for f in ("config.json", "metrics.csv", "model.safetensors", "status.json",
                  "epoch_1.safetensors"):
            assert (out / m / f).is_file(), f"{m}/{f}"
    # No temporary files left behind.
    assert not [p for p in _tree(out) if ".tmp" in p]
    env = json.loads((out / "env.json").read_text())
    assert env["device"] == "cpu" and "torch" in env
    config = json.loads((out / "config.json").read_text())
    assert config["members"] == ["a", "b"]
    assert config["train"]["epochs"] == 2 and config["data"]["shift"] == "iid:50,50"
    assert config["options"]["width"] == 32.0 and config["options"]["save_epochs"] == [1]
    model, ckpt = load_model(out / "a" / "model.safetensors")
    assert ckpt.architecture["arch"] == "mlp" and ckpt.architecture["widths"] == [32] * 3


def test_train_command_prints_one_line_per_member(cli, tmp_path):
    out = tmp_path / "runs" / "demo"
    rc, stdout, err = cli("train", *FAST_TRAIN, "--epochs", "1", "--shift", "iid:50,50",
                          "--out", out)
    assert rc == 0, err
    assert err == ""
    lines = stdout.splitlines()
    assert lines[0].startswith("a: train loss") and lines[1].startswith("b: train loss")
    assert lines[2] == f"wrote {out}"


def test_train_only_one_subset(cli, tmp_path):
    out = tmp_path / "run"
    rc, stdout, err = cli("train", *FAST_TRAIN, "--epochs", "1", "--shift", "iid:50,50",
                          "--only", "b", "--out", out)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["b"]


BAD_TRAIN = {
    "unknown dataset": ["--dataset", "imagenet"],
    "dataset options": ["--dataset", "synthetic:n=0"],
    "unknown model": ["--model", "resnet21"],
    "bad model option": ["--model", "resnet", "--depth", "21"],
    "fractional mlp width": ["--width", "1.5"],
    "unknown shift": ["--shift", "random:50,50"],
    "shares over 100": ["--shift", "iid:60,60"],
    "zero share": ["--shift", "iid:0,100"],
    "empty subset": ["--shift", "iid:0.01,99"],
    "uncovered classes": ["--shift", "label-skew:0-4=80"],
    "bad dirichlet": ["--shift", "dirichlet:0"],
    "unknown transform": ["--shift", "domain:none|flip"],
    "channel out of range": ["--shift", "domain:none|keep=2"],
    "zero epochs": ["--epochs", "0"],
    "negative epochs": ["--epochs", "-3"],
    "zero batch size": ["--batch-size", "0"],
    "zero lr": ["--lr", "0"],
    "negative lr": ["--lr", "-0.1"],
    "nan lr": ["--lr", "nan"],
    "non-number epochs": ["--epochs", "many"],
    "unknown optimizer": ["--optimizer", "lbfgs"],
    "unknown normalisation": ["--normalise", "batch"],
    "unknown schedule": ["--schedule", "linear"],
    "save epoch out of range": ["--epochs", "2", "--save-epochs", "3"],
    "init seed not a number": ["--init-seed", "one"],
    "bad init seeds": ["--shift", "iid:50,50", "--init", "different", "--init-seed", "1,2,3"],
    "only nonexistent subset": ["--shift", "iid:50,50", "--only", "c"],
    "unknown device": ["--device", "tpu"],
    "unknown option": ["--frobnicate"],
}


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_bad_train_input_is_one_line_and_leaves_nothing(cli, tmp_path, case):
    out = tmp_path / "runs" / "x"
    rc, stdout, err = cli("train", "--quiet", "--epochs", "1", *BAD_TRAIN[case], "--out", out)
    _assert_one_line_error(rc, stdout, err)
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_file(cli, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "run"
    rc, stdout, err = cli("train", "--dataset", "mnist", "--data-dir", data, "--out", out)
    _assert_one_line_error(rc, stdout, err)
    assert "train-images-idx3-ubyte" in err and str(data / "mnist") in err
    assert not out.exists()
    assert _tree(tmp_path) == ["data"]


def test_missing_out_and_command(cli):
    _assert_one_line_error(*cli("train", "--epochs", "1"))
    _assert_one_line_error(*cli())
    _assert_one_line_error(*cli("fly"))


def test_existing_out_dir_without_resume_is_untouched(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "all").mkdir()
    (out / "all" / "metrics.csv").write_text("precious")
    before = {p: (out / p).stat().st_mtime_ns for p in _tree(out)}
    rc, stdout, err = cli("train", *FAST_TRAIN, "--epochs", "1", "--out", out)
    _assert_one_line_error(rc, stdout, err)
    assert "--resume" in err
    assert {p: (out / p).stat().st_mtime_ns for p in _tree(out)} == before
    assert (out / "all" / "metrics.csv").read_text() == "precious"


def test_train_into_empty_existing_dir(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    rc, _, err = cli("train", *FAST_TRAIN, "--epochs", "1", "--out", out)
    assert rc == 0, err
    assert (out / "all" / "model.safetensors").is_file()


def test_info_prints_architecture(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train", *FAST_TRAIN, "--epochs", "1", "--out", out)[0] == 0
    ckpt = out / "all" / "model.safetensors"
    rc, stdout, err = cli("info", ckpt)
    assert rc == 0, err
    assert "architecture" in stdout and '"arch": "mlp"' in stdout
    assert '"widths": [32, 32, 32]' in stdout
    assert "kind          model" in stdout
    assert [line.split()[0] for line in stdout.splitlines()].count("kind") == 1, stdout
    assert str(ckpt) in stdout


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_info_job_describes_each_checkpoint(tmp_path):
    out = tmp_path / "run"
    jobs.run("train", **FAST, epochs=1, shift="iid:50,50", out=out)
    paths = [out / m / "model.safetensors" for m in ("a", "b")]
    result = jobs.run("info", checkpoints=[str(p) for p in paths])
    assert result.out is None and result.exit_code == 0
    assert len(result.lines()) == 2
    assert all(str(p) in text and '"arch": "mlp"' in text for p, text in zip(paths, result.lines()))


def test_info_refuses_pickle(cli, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(_Evil(marker)))
    rc, stdout, err = cli("info", path)
    _assert_one_line_error(rc, stdout, err)
    assert "pickle" in err
    assert not marker.exists()


def test_info_missing_file(cli, tmp_path):
    rc, stdout, err = cli("info", tmp_path / "nope.safetensors")
    _assert_one_line_error(rc, stdout, err)
    assert "not found" in err


def test_python_m_modeconn_help():
    r = subprocess.run([sys.executable, "-m", "modeconn", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: modeconn" in r.stdout
    assert "train" in r.stdout and "info" in r.stdout


def test_damaged_dataset_download_is_one_line_error(cli, tmp_path):
    """An interrupted download (a cut-off .gz file) is reported, not a traceback."""
    d = write_mnist(tmp_path / "data", "mnist", make_mnist_arrays(), gz=True)
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:100])
    assert p.read_bytes()[:2] == b"\x1f\x8b"  # still starts like a gzip file
    rc, stdout, err = cli("train", "--dataset", "mnist", "--data-dir", tmp_path / "data",
                          "--out", tmp_path / "run")
    _assert_one_line_error(rc, stdout, err)
    assert "train-images-idx3-ubyte" in err
    assert not (tmp_path / "run").exists()

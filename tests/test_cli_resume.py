"""`modeconn train --out DIR --resume` needs no other option: the run's config.json holds them."""

from __future__ import annotations

import json

import pytest
from conftest import FAST_TRAIN
from safetensors.torch import load_file

import modeconn.train
from modeconn import jobs

# Not the defaults: a resume that fell back on them would train something else.
SETTINGS = [*FAST_TRAIN, "--depth", "2", "--epochs", "3", "--lr", "0.1", "--batch-size", "32",
            "--shift", "iid:50,50", "--init", "different", "--init-seed", "3"]


def _interrupt_at_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C while `epoch` is being logged (its state is not yet written)."""
    log_epoch = modeconn.train.MemberRecord.log_epoch

    def interrupted(self, model, e, *args, **kwargs):
        if e == epoch:
            raise KeyboardInterrupt
        return log_epoch(self, model, e, *args, **kwargs)

    monkeypatch.setattr(modeconn.train.MemberRecord, "log_epoch", interrupted)


@pytest.fixture
def interrupted_run(cli, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_at_epoch(m, 2)
        rc, _, err = cli("train", *SETTINGS, "--out", out)
    assert rc == 130, err
    assert not (out / "a" / "model.safetensors").exists()
    return out


def test_resume_with_only_out_continues_the_original_run(cli, tmp_path, interrupted_run):
    rc, stdout, err = cli("train", "--out", interrupted_run, "--resume", "--quiet")
    assert rc == 0, err
    reference = tmp_path / "reference"
    assert cli("train", *SETTINGS, "--out", reference)[0] == 0
    for m in ("a", "b"):
        got = load_file(interrupted_run / m / "model.safetensors")
        want = load_file(reference / m / "model.safetensors")
        assert got.keys() == want.keys()
        assert all((got[k] == want[k]).all() for k in want), m
        assert (interrupted_run / m / "metrics.csv").read_text().count("\n") == 1 + 3 * 2
    config = json.loads((interrupted_run / "config.json").read_text())
    assert config == json.loads((reference / "config.json").read_text())
    assert config["options"]["lr"] == 0.1 and config["options"]["init"] == "different"


def test_resume_repeating_the_same_options_is_accepted(cli, interrupted_run):
    rc, _, err = cli("train", "--out", interrupted_run, "--resume", "--lr", "0.1", "--epochs", "3",
                     "--quiet")
    assert rc == 0, err


@pytest.mark.parametrize("changed", [["--lr", "0.05"], ["--epochs", "4"], ["--init", "same"]])
def test_resume_with_different_options_is_refused(cli, interrupted_run, changed):
    rc, stdout, err = cli("train", "--out", interrupted_run, "--resume", *changed)
    assert rc == 2
    assert "different settings" in err and len(err.strip().splitlines()) == 1
    assert not (interrupted_run / "a" / "model.safetensors").exists()


def test_resume_job_with_only_out_and_resume(interrupted_run):
    """From Python as from the command line: the stored options fill those not given."""
    result = jobs.run("train", out=interrupted_run, resume=True, quiet=True)
    assert result.exit_code == 0 and [r["member"] for r in result.members] == ["a", "b"]
    assert all(r["status"] == "complete" for r in result.members)
    assert (interrupted_run / "a" / "model.safetensors").is_file()


def test_resume_of_a_run_that_recorded_no_options_needs_them_again(cli, tmp_path):
    """A run written before config.json held "options" resumes as before: from the options
    typed again, compared with what it recorded."""
    out = tmp_path / "old"
    assert cli("train", *FAST_TRAIN, "--epochs", "1", "--out", out)[0] == 0
    config = json.loads((out / "config.json").read_text())
    del config["options"]
    (out / "config.json").write_text(json.dumps(config))
    assert jobs.build(jobs.get("train"), {"resume": True}, out).width is None  # nothing filled
    rc, _, err = cli("train", "--out", out, "--resume", "--quiet")
    assert rc == 2 and "different settings" in err

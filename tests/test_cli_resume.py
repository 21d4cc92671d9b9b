"""`modeconn train --out DIR --resume` needs no other option: the run's config.json holds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAIN
from safetensors.torch import load_file

import modeconn.artefacts
import modeconn.train
from modeconn import jobs
from modeconn.errors import UsageError

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


# ---------------------------------------------------------------- nothing recorded (issue 22)

def _killed_before_its_settings(cli, monkeypatch, out) -> None:
    """A run stopped after it made its directory and env.json, before it wrote config.json."""
    write_json = modeconn.artefacts.write_json  # the one writer of the run's documents

    def stopped(path, *args, **kwargs):
        if Path(path) == out / "config.json":
            raise KeyboardInterrupt
        return write_json(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(modeconn.artefacts, "write_json", stopped)
        assert cli("train", *SETTINGS, "--out", out)[0] == 130
    assert sorted(p.name for p in out.iterdir()) == ["env.json"]


@pytest.mark.parametrize("state", ["missing", "empty", "killed before its settings"])
def test_resume_with_no_option_where_nothing_is_recorded_is_refused(cli, tmp_path, monkeypatch,
                                                                     state):
    """Not a new run of the defaults: a mistyped directory, or a run stopped before it recorded
    anything, says what is missing."""
    out = tmp_path / "run"
    if state == "empty":
        out.mkdir()
    elif state != "missing":
        _killed_before_its_settings(cli, monkeypatch, out)
    before = sorted(out.rglob("*")) if out.exists() else None
    rc, stdout, err = cli("train", "--out", out, "--resume", "--quiet", "--device", "cpu")
    assert rc == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"modeconn: error: nothing to resume: {out} ")
    assert "give its options with --resume" in lines[0]
    assert (sorted(out.rglob("*")) if out.exists() else None) == before


def test_resume_job_where_nothing_is_recorded_is_refused(tmp_path):
    with pytest.raises(UsageError, match="nothing to resume: .* does not exist"):
        jobs.run("train", out=tmp_path / "nope", resume=True, quiet=True)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("state", ["missing", "killed before its settings"])
def test_resume_with_options_where_nothing_is_recorded_starts_that_run(cli, tmp_path,
                                                                       monkeypatch, state):
    """The same command line plus --resume, after a stop before anything was recorded, trains
    the run that command line describes (and says so): the same models as one never stopped."""
    out = tmp_path / "run"
    if state != "missing":
        _killed_before_its_settings(cli, monkeypatch, out)
    rc, _, err = cli("train", *SETTINGS, "--out", out, "--resume")
    assert rc == 0, err
    assert err.strip() == f"modeconn: no recorded settings in {out}: starting the run these " \
                          "options describe"
    reference = tmp_path / "reference"
    assert cli("train", *SETTINGS, "--out", reference)[0] == 0
    for m in ("a", "b"):
        got = load_file(out / m / "model.safetensors")
        want = load_file(reference / m / "model.safetensors")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert (out / "config.json").read_text() == (reference / "config.json").read_text()


def test_resume_removes_what_a_kill_during_a_write_left(cli, tmp_path, interrupted_run):
    """SIGKILL while a file was being written leaves its temporary (`io.atomic_path`); the
    resumed run removes it and writes the file itself."""
    stale = [interrupted_run / ".config.json.0123456789ab.tmp",
             interrupted_run / "a" / ".state.safetensors.ba9876543210.tmp",
             interrupted_run / "b" / ".metrics.csv.00000000abcd.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (interrupted_run / ".keep").write_text("mine")  # not a temporary of ours: left alone
    rc, _, err = cli("train", "--out", interrupted_run, "--resume", "--quiet")
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and (interrupted_run / ".keep").exists()
    assert all((interrupted_run / m / "model.safetensors").is_file() for m in ("a", "b"))


def test_resume_of_an_unreadable_config_is_refused(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"options": ')
    rc, _, err = cli("train", "--out", out, "--resume", "--quiet")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"{out / 'config.json'} cannot be read as a run's settings" in err


def test_resume_of_a_finished_run_with_a_metric_recorded_as_null_reads_it_as_nan(cli, tmp_path):
    """A final loss that was not finite is written as null (strict JSON); resuming the finished
    run reports it as nan instead of failing on it."""
    out = tmp_path / "run"
    rc, _, err = cli("train", *SETTINGS, "--out", out)
    assert rc == 0, err
    status_path = out / "a" / "status.json"
    status = json.loads(status_path.read_text())
    status["test_loss"] = None
    status_path.write_text(json.dumps(status))
    rc, printed, err = cli("train", "--out", out, "--resume")
    assert rc == 0, err
    assert "test loss nan" in printed

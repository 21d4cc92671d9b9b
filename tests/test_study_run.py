"""The sweep runner: idempotent, kill-safe, failures and divergence recorded, results database."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import digits_study

from modeconn.studies import parse, results_summary, run_study

STUDY = digits_study()


def files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def table(root: Path) -> list[dict[str, str]]:
    with open(root / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The tiny study, run once to the end by 2 local workers."""
    out = tmp_path_factory.mktemp("study") / "tiny"
    run = run_study(parse(STUDY, "tiny.toml"), out, workers=2, quiet=True)
    return out, run


def test_a_study_runs_every_job_and_tabulates_one_row_per_job_and_metric(done):
    out, run = done
    assert run.complete and run.counts == {"complete": 8} and run.ran == 8
    rows = table(out)
    ids = {r["id"] for r in rows}
    assert len(ids) == 8
    interp = [r for r in rows if r["stage"] == "interpolate"]
    assert {r["metric"] for r in interp} >= {"test_loss_barrier", "train_error_barrier",
                                            "test_delta_acc"}
    # each row carries the job's settings and the sweep values it inherited
    r = interp[0]
    assert r["points"] == "5" and r["train.batch_order"] in ("same", "independent")
    assert r["a"].startswith("@train-")
    # the same numbers as the job's own barrier.json
    bar = json.loads((out / "jobs" / r["id"] / "out" / "barrier.json").read_text())
    value = next(float(x["value"]) for x in interp
                 if x["id"] == r["id"] and x["metric"] == "test_loss_barrier")
    assert value == bar["test"]["loss"]["linear"]["barrier"]
    con = sqlite3.connect(out / "results.sqlite")
    n = con.execute("SELECT count(*) FROM results").fetchone()[0]
    assert n == len(rows)
    by_order = dict(con.execute(
        'SELECT "train.batch_order", count(*) FROM results WHERE metric = "test_acc" '
        'GROUP BY 1').fetchall())
    assert by_order == {"same": 4, "independent": 4}  # 2 seeds × 2 members
    assert con.execute("SELECT count(*) FROM jobs WHERE status = 'complete'").fetchone()[0] == 8


def test_running_a_finished_study_again_runs_nothing_and_changes_no_file(done):
    out, _ = done
    before = files(out)
    again = run_study(parse(STUDY, "tiny.toml"), out, workers=2, quiet=True)
    assert again.ran == 0 and again.reused == 8 and again.complete
    assert files(out) == before


def test_results_summary_is_mean_and_std_over_seeds(done):
    out, _ = done
    text, failed = results_summary(out)
    assert failed == []
    assert "[interpolate] mean ± std over seeds, by train.batch_order" in text
    assert "[train] mean ± std over seeds, by train.batch_order, member" in text
    text, _ = results_summary(out, where="batch_order=same", group_by=["member"])
    assert "independent" not in text and "by member" in text


def test_a_half_written_job_is_redone_and_a_changed_setting_is_a_new_job(done, tmp_path):
    src, _ = done
    out = tmp_path / "tiny"
    subprocess.run(["cp", "-a", str(src), str(out)], check=True)
    study = parse(STUDY, "tiny.toml")
    interp = next(j for j in study.jobs if j.stage == "interpolate")
    train = next(j for j in study.jobs if j.stage == "train")
    reference = (out / "jobs" / interp.id / "out" / "path.csv").read_bytes()
    trained = (out / "jobs" / train.id / "out" / "a" / "model.safetensors").read_bytes()
    # killed mid-write: no result.json, a torn output
    (out / "jobs" / interp.id / "result.json").unlink()
    (out / "jobs" / interp.id / "out" / "path.csv").write_text("t,split\n0.0,tr")
    (out / "jobs" / train.id / "result.json").unlink()
    run = run_study(study, out, workers=1, quiet=True)
    assert run.ran == 2 and run.complete
    assert (out / "jobs" / interp.id / "out" / "path.csv").read_bytes() == reference
    assert (out / "jobs" / train.id / "out" / "a" / "model.safetensors").read_bytes() == trained
    assert table(out) == table(src)
    changed = parse(STUDY.replace("points = 5", "points = 6"), "tiny.toml")
    run = run_study(changed, out, workers=2, quiet=True)
    assert run.ran == 4 and run.reused == 4  # the interpolations are new jobs, training is kept


def test_failed_jobs_are_listed_with_error_and_log_and_retried_alone(tmp_path):
    # A file train writes, but not a checkpoint: only reading it tells (a missing file is
    # refused before the study runs).
    text = STUDY.replace('b = "@train/b/model.safetensors"', 'b = "@train/b/metrics.csv"')
    out = tmp_path / "s"
    run = run_study(parse(text, "tiny.toml"), out, workers=2, quiet=True)
    assert not run.complete and run.counts == {"complete": 4, "failed": 4}
    assert len(run.failed) == 4
    line = run.failed[0]
    assert line.startswith("FAILED interpolate-") and "metrics.csv" in line
    log = Path(line.split("log: ")[1])
    assert log.is_file() and "metrics.csv" in log.read_text()
    trained = {p: m for p, m in files(out).items() if p.startswith("jobs/train-")}
    again = run_study(parse(text, "tiny.toml"), out, workers=2, retry_failed=True, quiet=True)
    assert again.ran == 4 and again.reused == 4
    assert {p: m for p, m in files(out).items() if p.startswith("jobs/train-")} == trained
    assert log.read_text().count("--- ") == 2  # each attempt appends to the log


def test_divergence_is_an_outcome_not_retried_and_never_averaged(tmp_path):
    text = STUDY.replace("epochs = 2", "epochs = 2\noptimizer = \"sgd\"\nmomentum = 0.0") \
        .replace('grid = { batch_order = ["same", "independent"] }', "grid = { lr = [0.05, 1e6] }")
    out = tmp_path / "d"
    run = run_study(parse(text, "tiny.toml"), out, workers=2, quiet=True)
    assert run.counts == {"complete": 4, "diverged": 2, "skipped": 2}, run.counts
    assert run.complete  # nothing left to run: divergence is a result
    again = run_study(parse(text, "tiny.toml"), out, workers=2, quiet=True)
    assert again.ran == 0
    text_summary, _ = results_summary(out)
    row = next(ln for ln in text_summary.splitlines() if ln.startswith("1e+06"))
    assert row.split()[-1] == "2" and "n/a" in row  # 2 diverged jobs, nothing averaged
    jobs = list(csv.DictReader(open(out / "jobs.csv")))
    skipped = [j for j in jobs if j["status"] == "skipped"]
    assert len(skipped) == 2 and all("diverged" in j["error"] for j in skipped)


def test_a_directory_holding_something_else_is_refused(tmp_path):
    from modeconn.errors import UsageError

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("mine")
    with pytest.raises(UsageError, match="is not a study directory"):
        run_study(parse(STUDY, "tiny.toml"), tmp_path / "x", quiet=True)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(1))
def test_killing_the_driver_and_its_workers_at_any_moment_loses_nothing(tmp_path, done, trial):
    """SIGKILL the whole process group (driver and workers) at a random moment, run again:
    the final table equals the uninterrupted run's, and no finished job ran twice."""
    reference, _ = done
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "modeconn", "run", str(path), "--out", str(out), "--jobs", "2",
           "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(4.0 + 2.5 * trial)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.read_bytes() for p in out.glob("jobs/*/result.json")}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"found {len(finished)} done" in r.stdout
    for job_id, data in finished.items():  # a finished job was not run again
        assert (out / "jobs" / job_id / "result.json").read_bytes() == data
    ours = sorted(table(out), key=lambda r: (r["id"], r.get("member", ""), r["metric"]))
    theirs = sorted(table(reference), key=lambda r: (r["id"], r.get("member", ""), r["metric"]))
    assert ours == theirs


def test_a_training_killed_before_it_recorded_its_settings_starts_again(tmp_path):
    """A train job whose out/ exists but holds no config.json (killed before writing it) is run
    from the start, even when its stage gives none of the options a run records (a resume
    would have nothing to continue from, and would be refused)."""
    text = '[study]\nname = "bare"\n\n[train]\ndevice = "cpu"\n'
    study = parse(text, "bare.toml")
    reference = tmp_path / "reference"
    assert run_study(study, reference, workers=1, quiet=True).complete
    (job,) = study.jobs
    out = tmp_path / "killed"
    job_out = out / "jobs" / job.id / "out"
    subprocess.run(["cp", "-a", str(reference), str(out)], check=True)
    for path in sorted(job_out.iterdir()):
        subprocess.run(["rm", "-r", str(path)], check=True)
    (job_out / "all").mkdir()  # what a kill right after the member folder appeared leaves
    (out / "jobs" / job.id / "result.json").unlink()
    run = run_study(study, out, workers=1, quiet=True)
    assert run.complete and run.ran == 1
    name = "all/model.safetensors"
    assert (job_out / name).read_bytes() == (reference / "jobs" / job.id / "out" / name).read_bytes()

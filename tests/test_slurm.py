"""The slurm executor on a real one-node SLURM cluster (scripts/slurm.sh start; .ci/run starts it).

A 20-job study runs through SLURM job arrays via submitit; a worker task is cancelled (scancel),
another killed with SIGKILL mid-run, the driver is killed too, and running the study again
completes it with the local executor's numbers bit for bit, nothing lost and nothing run twice
that had finished.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import digits_study

ROOT = Path(__file__).resolve().parents[1]

STUDY = digits_study("slurm-test", seeds=5, epochs=2)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """The local SLURM cluster, or a skip saying why (a failure where CI requires it)."""
    why = None
    if shutil.which("sbatch") is None:
        why = "SLURM is not installed (scripts/slurm.sh start installs and starts it)"
    else:
        r = subprocess.run([str(ROOT / "scripts" / "slurm.sh"), "status"], capture_output=True,
                           text=True)
        if r.returncode != 0:
            why = f"the SLURM cluster is not up (scripts/slurm.sh start): {r.stdout.strip()}"
    try:
        import submitit  # noqa: F401
    except ImportError:
        why = "submitit is not installed (pip install 'modeconn[cluster]')"
    if why is not None:
        if os.environ.get("MODECONN_REQUIRE_SLURM"):
            pytest.fail(why)
        pytest.skip(why)


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "modeconn", *args], capture_output=True,
                          text=True, env=env, timeout=900, **kw)


def rows(root: Path) -> list[dict[str, str]]:
    with open(root / "results.csv", newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: (r["id"], r.get("member", ""), r["metric"]))


def running_tasks() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", "modeconn", "-t", "RUNNING", "-o", "%i"],
                         capture_output=True, text=True).stdout
    return [t for t in out.split() if t]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("local")
    (d / "s.toml").write_text(STUDY)
    r = run("run", str(d / "s.toml"), "--out", str(d / "out"), "--jobs", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    return d / "out"


def test_a_20_job_study_on_slurm_survives_cancelled_and_killed_workers_and_driver(
        cluster, tmp_path, local_reference):
    """Through SLURM job arrays: a task cancelled, another SIGKILLed and the driver SIGKILLed
    mid-run; running again completes the study with the local executor's numbers, nothing lost,
    nothing run twice that had finished; a third run finds everything done."""
    (tmp_path / "s.toml").write_text(STUDY)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "modeconn", "run", str(tmp_path / "s.toml"), "--out", str(out),
           "--executor", "slurm", "--time", "10", "--mem", "1", "--quiet"]
    driver = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Wait until some jobs are finished and two are running, then cancel one, SIGKILL another.
    while time.monotonic() < deadline:
        finished = list(out.glob("jobs/*/result.json"))
        tasks = running_tasks()
        if len(finished) >= 3 and len(tasks) >= 2:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the study never had 3 finished and 2 running jobs")
    subprocess.run(["scancel", tasks[0]], check=True)
    subprocess.run(["scancel", "--signal=KILL", "--full", tasks[1]], check=True)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    done = {p.parent.name: p.read_bytes() for p in out.glob("jobs/*/result.json")}
    assert len(done) < 20
    r = run(*cmd[3:])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "20 jobs (20 complete)" in r.stdout
    for job_id, data in done.items():  # finished before the kills: kept, not run again
        assert (out / "jobs" / job_id / "result.json").read_bytes() == data
        assert (out / "jobs" / job_id / "log.txt").read_text().count("--- ") == 1
    assert rows(out) == rows(local_reference)
    logs = [p.read_text() for p in out.glob("jobs/*/log.txt")]
    assert len(logs) == 20 and all("slurm job " in log for log in logs)
    assert list((out / "slurm").glob("*/*_submitted.pkl"))  # submitit's own records
    again = run(*cmd[3:])
    assert again.returncode == 0 and "ran 0, found 20 done" in again.stdout

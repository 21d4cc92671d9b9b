"""Killing a process the project started leaks nothing: its workers (a study's pool, the
BigEarthNet reader's forkserver and workers) and multiprocessing's resource tracker end within
seconds, whatever killed it, and a rerun finishes the work with the same results."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from ben_fixture import write_bigearthnet
from conftest import digits_study

from modeconn.studies import parse, run_study
from modeconn.studies.worker import run_job

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="finds processes through /proc")

STUDY = digits_study()
GONE_WITHIN = 5.0  # seconds after the kill by which every process of the tree must have ended


def marked(mark: str) -> dict[int, str]:
    """The live processes (pid → command line) whose environment carries MODECONN_TEST_MARK=mark:
    everything started, directly or not, by a process given that variable."""
    want = f"MODECONN_TEST_MARK={mark}".encode()
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue  # a zombie has ended; only its parent's wait is missing
            with open(f"/proc/{pid}/environ", "rb") as f:
                if want not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):  # ended meanwhile, or not ours to read
            continue
    return found


def until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert proc is None or proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def left_after_kill(mark: str) -> dict[int, str]:
    """The processes of the tree still alive GONE_WITHIN seconds after its root was killed
    (each is then killed, so that a failing test leaks nothing either)."""
    deadline = time.monotonic() + GONE_WITHIN
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def environment(mark: str | None = None) -> dict[str, str]:
    """This test's environment for a child (this interpreter's path), marked with `mark`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return {**env, "MODECONN_TEST_MARK": mark} if mark else env


def start(args: list[str], mark: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=environment(mark),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --- the helper itself --------------------------------------------------------------------------

_PARENT = """
import os, subprocess, sys, threading, time
child = [sys.executable, "-c", "import sys, time; from modeconn.lifeline import die_with; "
         "die_with(int(sys.argv[1])); print('armed', flush=True); "
         "sum(range(10**13)) if sys.argv[2] == 'main' else time.sleep(600)",
         str(os.getpid()), sys.argv[1]]
if sys.argv[1] == "main":
    subprocess.Popen(child)
else:  # started from a thread that ends at once: the child must outlive the thread
    t = threading.Thread(target=subprocess.Popen, args=(child,))
    t.start()
    t.join()
time.sleep(600)
"""


@pytest.mark.parametrize("started_by", ["main", "thread"])
def test_a_worker_outlives_the_thread_that_started_it_and_not_its_parent(started_by):
    """Started by the parent's main thread, the child ends even while it holds the GIL in C code
    (`sum` over a range: no thread of its own can run), so the kernel ended it; started by a
    helper thread, it outlives that thread and still ends with the parent."""
    mark = uuid.uuid4().hex
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, started_by], env=environment(mark),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "armed"
        time.sleep(1.0)  # the starting thread has ended long ago
        assert len(marked(mark)) == 2, "the child died with the thread that started it"
    finally:
        parent.kill()
        parent.wait()
    assert left_after_kill(mark) == {}


def test_a_worker_whose_starter_died_before_it_armed_ends_at_once():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that has ended (and is reaped): reuse within this test is implausible
    r = subprocess.run([sys.executable, "-c", "from modeconn.lifeline import die_with; "
                        f"die_with({gone.pid}); print('survived')"], env=environment(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 70 and "survived" not in r.stdout


# --- a study's local workers --------------------------------------------------------------------


def table(root: Path) -> list[dict[str, str]]:
    with open(root / "results.csv", newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: (r["id"], r.get("member", ""), r["metric"]))


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """The tiny study, run once without interruption."""
    out = tmp_path_factory.mktemp("reference") / "tiny"
    assert run_study(parse(STUDY, "tiny.toml"), out, workers=2, quiet=True).complete
    return out


@pytest.fixture(scope="module")
def reference(done) -> list[dict[str, str]]:
    return table(done)


def study_args(tmp_path: Path) -> list[str]:
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY)
    return ["-m", "modeconn", "run", str(path), "--out", str(tmp_path / "out"), "--jobs", "2",
            "--quiet"]


def running_job(out: Path) -> tuple[str, int] | None:
    """A job that a worker is running now (it has a log, no result) and that worker's pid."""
    for log in out.glob("jobs/*/log.txt"):
        if not (log.parent / "result.json").exists():
            pids = re.findall(r" pid (\d+),", log.read_text())
            if pids:
                return log.parent.name, int(pids[-1])
    return None


@pytest.mark.slow
def test_killing_a_study_driver_ends_its_workers_and_a_rerun_completes(tmp_path, reference):
    mark = uuid.uuid4().hex
    args = study_args(tmp_path)
    out = tmp_path / "out"
    driver = start(args, mark)
    try:
        until(lambda: running_job(out), 120, "a worker to run a job", driver)
        tree = marked(mark)
        assert len(tree) >= 4, tree  # the driver, its resource tracker, two workers
    finally:
        driver.kill()
        driver.wait()
    assert left_after_kill(mark) == {}
    finished = {p.parent.name: p.read_bytes() for p in out.glob("jobs/*/result.json")}
    again = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                           env=environment())
    assert again.returncode == 0, again.stderr
    assert "8 jobs (8 complete)" in again.stdout and f"found {len(finished)} done" in again.stdout
    for job_id, data in finished.items():  # nothing finished ran again
        assert (out / "jobs" / job_id / "result.json").read_bytes() == data
    assert table(out) == reference
    assert not list(out.glob("jobs/*/.*.tmp")), "a half-written file was left behind"


@pytest.mark.slow
def test_killing_a_study_worker_reruns_its_job_and_leaks_nothing(tmp_path, reference):
    mark = uuid.uuid4().hex
    out = tmp_path / "out"
    driver = start(study_args(tmp_path), mark)
    try:
        job_id, pid = until(lambda: running_job(out), 120, "a worker to run a job", driver)
        os.kill(pid, signal.SIGKILL)
        unfinished = not (out / "jobs" / job_id / "result.json").exists()
        assert driver.wait(timeout=600) == 0
    finally:
        driver.kill()
        driver.wait()
    assert left_after_kill(mark) == {}
    assert table(out) == reference
    if unfinished:  # the killed attempt, then the one that finished it
        assert (out / "jobs" / job_id / "log.txt").read_text().count("--- ") == 2


@pytest.mark.slow
def test_a_result_torn_by_a_kill_is_cleared_when_the_job_is_redone(tmp_path, done):
    out = tmp_path / "tiny"
    shutil.copytree(done, out)
    job = sorted(out.glob("jobs/interpolate-*"))[0]
    kept = json.loads((job / "result.json").read_text())
    # killed between writing the result's temporary file and renaming it
    (job / "result.json").unlink()
    (job / ".result.json.0123456789ab.tmp").write_text('{"status": "comp')
    outcome = run_job(str(out), job.name)
    assert outcome["ran"] and outcome["status"] == "complete"
    assert outcome["records"] == kept["records"]
    assert sorted(p.name for p in job.iterdir() if p.name.startswith(".")) == [".lock"]


# --- the BigEarthNet reader's forkserver and workers --------------------------------------------

_READ = """
import sys
from modeconn.data.bigearthnet import open_bigearthnet
open_bigearthnet(sys.argv[1], workers=2, quiet=True)
"""


def test_killing_a_bigearthnet_read_ends_its_forkserver_and_workers(tmp_path):
    names = write_bigearthnet(tmp_path / "ds", n=6)
    for name in names:  # every label file a pipe nobody writes: the workers block reading it
        meta = tmp_path / "ds" / name / f"{name}_labels_metadata.json"
        meta.unlink()
        os.mkfifo(meta)
    mark = uuid.uuid4().hex
    reader = start(["-c", _READ, str(tmp_path / "ds")], mark)
    try:
        # the reader, its resource tracker, the forkserver and two workers
        until(lambda: len(marked(mark)) >= 5, 120, "the reading workers", reader)
        time.sleep(1.0)  # they are blocked reading (or about to be)
        assert reader.poll() is None
    finally:
        reader.kill()
        reader.wait()
    assert left_after_kill(mark) == {}

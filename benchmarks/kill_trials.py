"""Kill-safety of the study runner: kill at random moments, run again, count losses and leaks.

Each trial starts `modeconn run` on a small digits study and, at a random moment while jobs run
(a random delay of up to 0.5 s after a random k-th job started), kills:

- `--kill group`: the driver and its local workers together (SIGKILL to the process group);
- `--kill driver`: the driver alone (SIGKILL), as `kill -9 PID` or an out-of-memory kill does:
  its workers and multiprocessing's resource tracker must notice and end by themselves;
- `--kill worker`: one local worker (SIGKILL; the one running a job where there is one): the
  driver must rerun the jobs the broken pool lost and finish;
- on SLURM: cancels one running task (scancel), SIGKILLs another (scancel --signal=KILL) and
  SIGKILLs the driver.

Then it runs the study again to the end and reports: jobs finished before the kill, jobs of those
lost or changed (must be 0), jobs of those run again (must be 0), processes of the killed run
left alive 30 s after the kill (after a worker kill: after the driver ended; found by an
environment marker that every process it starts inherits; must be 0), and whether the final
results table is identical to an uninterrupted run's.

    python benchmarks/kill_trials.py --trials 20 --kill driver --study tiny
    python benchmarks/kill_trials.py --trials 10 --executor slurm   # scripts/slurm.sh start first
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from study_runner import TWENTY
from train_throughput import cpu_model

TINY = """
[study]
name = "tiny"

[train]
dataset = "digits"
shift = "iid:50,50"
width = 16
depth = 1
epochs = 2

[train.sweep]
seeds = [0, 1]
grid = { batch_order = ["same", "independent"] }

[interpolate]
a = "@train/a/model.safetensors"
b = "@train/b/model.safetensors"
points = 5
"""
STUDIES = {"twenty": (TWENTY, 20),  # 10 trainings, 10 interpolations
           "tiny": (TINY, 8)}  # 4 trainings, 4 interpolations
MARK = "MODECONN_KILL_TRIAL"


def command(study: Path, out: Path, executor: str) -> list[str]:
    return [sys.executable, "-m", "modeconn", "run", str(study), "--out", str(out), "--executor",
            executor, "--jobs", "2", "--quiet", "--time", "10", "--mem", "1"]


def tree(mark: str) -> dict[int, str]:
    """The live (not zombie) processes whose environment carries MARK=mark: every process the
    trial's run started, directly or not, whoever adopted it since."""
    want = f"{MARK}={mark}".encode()
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if want not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
    return found


def a_worker(out: Path, mark: str, driver: int) -> int | None:
    """A local worker of the run: the one running a job (its pid is in the job's log) if any."""
    for log in out.glob("jobs/*/log.txt"):
        if not (log.parent / "result.json").exists():
            pids = re.findall(r" pid (\d+),", log.read_text())
            if pids and int(pids[-1]) in tree(mark):
                return int(pids[-1])
    workers = [p for p, cmd in tree(mark).items() if p != driver and "spawn_main" in cmd]
    return workers[0] if workers else None


def left_alive(mark: str, since: float, within: float = 30.0) -> tuple[int, float | None]:
    """How many processes of the tree are alive `within` s after `since`, and when (s after
    `since`) the last one ended. Survivors are then killed, so one trial does not leak into the
    next."""
    while (left := tree(mark)) and time.monotonic() - since < within:
        time.sleep(0.1)
    gone = None if left else time.monotonic() - since
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left), gone


def attempts(out: Path, job_id: str) -> int:
    """How many times the job was started (each attempt opens its log's section)."""
    return (out / "jobs" / job_id / "log.txt").read_text().count("--- ")


def running_tasks() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", "modeconn", "-t", "RUNNING", "-o", "%i"],
                         capture_output=True, text=True).stdout
    return out.split()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--kill", choices=("group", "driver", "worker"), default="group",
                   help="what a local trial kills (default: the driver and workers together)")
    p.add_argument("--study", choices=tuple(STUDIES), default="twenty")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    text, n_jobs = STUDIES[args.study]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    work = Path(tempfile.mkdtemp(prefix="kill-trials-"))
    study = work / "study.toml"
    study.write_text(text)
    t0 = time.perf_counter()
    ref = subprocess.run(command(study, work / "reference", args.executor), env=env,
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    full = time.perf_counter() - t0
    reference = (work / "reference" / "results.csv").read_text()
    print(f"# {args.executor} executor, {n_jobs}-job study, uninterrupted run {full:.1f} s; "
          f"{cpu_model()}, {os.cpu_count()} cores")
    print("| trial | killed | what was killed | finished before | lost | finished ones rerun "
          "| left alive 30 s after (all gone after) | rerun (s) | table identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    totals = [0, 0, 0, 0]
    for trial in range(args.trials):
        out = work / f"trial{trial}"
        mark = uuid.uuid4().hex
        # Kill while jobs run: a random delay after the k-th job started (its log appeared).
        k, delay = rng.randint(1, n_jobs), rng.uniform(0.0, 0.5)
        proc = subprocess.Popen(command(study, out, args.executor), env={**env, MARK: mark},
                                start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and len(list(out.glob("jobs/*/log.txt"))) < k:
            time.sleep(0.02)
        time.sleep(delay)
        at = f"{delay:.2f} s after job {k} started"
        what = {"group": "driver + workers (SIGKILL)", "driver": "driver (SIGKILL)",
                "worker": "1 worker (SIGKILL)"}[args.kill]
        if args.executor == "slurm":
            tasks = running_tasks()
            killed = []
            if tasks:
                subprocess.run(["scancel", tasks[0]])
                killed.append("1 task scancel")
            if len(tasks) > 1:
                subprocess.run(["scancel", "--signal=KILL", "--full", tasks[1]])
                killed.append("1 task SIGKILL")
            what = ", ".join(killed + ["driver SIGKILL"])
            os.killpg(proc.pid, signal.SIGKILL)
        elif proc.poll() is not None:
            what = "nothing (the run had ended)"
        elif args.kill == "group":
            os.killpg(proc.pid, signal.SIGKILL)
        elif args.kill == "driver":
            proc.kill()
        else:
            while (victim := a_worker(out, mark, proc.pid)) is None and proc.poll() is None:
                time.sleep(0.02)  # the pool is starting
            if victim is None:
                what = "nothing (the run had ended)"
            else:
                os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # finished at the kill, and how many attempts each had then
        before = {p.parent.name: p.read_bytes() for p in out.glob("jobs/*/result.json")}
        tries = {j: attempts(out, j) for j in before}
        proc.wait()  # after a worker kill the driver goes on to the end: count from there
        left, gone = left_alive(mark, time.monotonic() if args.kill == "worker" else killed_at)
        t1 = time.perf_counter()
        again = subprocess.run(command(study, out, args.executor), env=env, capture_output=True,
                               text=True)
        rerun = time.perf_counter() - t1
        lost = sum(not (out / "jobs" / j / "result.json").is_file()
                   or (out / "jobs" / j / "result.json").read_bytes() != data
                   for j, data in before.items())
        twice = sum(attempts(out, j) > tries[j] for j in before)
        same = again.returncode == 0 and (out / "results.csv").read_text() == reference
        totals[0] += lost
        totals[1] += twice
        totals[2] += left
        totals[3] += same
        print(f"| {trial} | {at} | {what} | {len(before)} | {lost} | {twice} | {left} "
              f"({'n/a' if gone is None else f'{gone:.1f} s'}) | {rerun:.1f} | "
              f"{'yes' if same else 'NO'} |", flush=True)
    print(f"\n{args.trials} trials: {totals[0]} jobs lost, {totals[1]} finished jobs rerun, "
          f"{totals[2]} processes left alive 30 s after the kill, {totals[3]}/{args.trials} final "
          "tables identical to the uninterrupted run")


if __name__ == "__main__":
    main()

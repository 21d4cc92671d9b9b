"""Kill-safety of the study runner: kill everything at random moments, run again, count losses.

Each trial starts `modeconn run` on a 20-job digits study, and at a random moment (a random
delay of up to 1 s after a random k-th job finished) SIGKILLs the driver and its
local workers (local) — or, on SLURM, cancels one running task (scancel),
SIGKILLs another (scancel --signal=KILL) and SIGKILLs the driver. Then it runs the study again
to the end and reports: jobs finished before the kill, jobs of those lost or changed (must be
0), jobs of those run again (must be 0), and whether the final results table is identical to an
uninterrupted run's.

    python benchmarks/kill_trials.py --trials 10 --executor local
    python benchmarks/kill_trials.py --trials 10 --executor slurm   # scripts/slurm.sh start first
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from study_runner import TWENTY
from train_throughput import cpu_model

STUDY = TWENTY  # 10 trainings, 10 interpolations


def command(study: Path, out: Path, executor: str) -> list[str]:
    return [sys.executable, "-m", "modeconn", "run", str(study), "--out", str(out), "--executor",
            executor, "--jobs", "2", "--quiet", "--time", "10", "--mem", "1"]


def running_tasks() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", "modeconn", "-t", "RUNNING", "-o", "%i"],
                         capture_output=True, text=True).stdout
    return out.split()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    work = Path(tempfile.mkdtemp(prefix="kill-trials-"))
    study = work / "study.toml"
    study.write_text(STUDY)
    t0 = time.perf_counter()
    ref = subprocess.run(command(study, work / "reference", args.executor), env=env,
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    full = time.perf_counter() - t0
    reference = (work / "reference" / "results.csv").read_text()
    print(f"# {args.executor} executor, 20-job study, uninterrupted run {full:.1f} s; "
          f"{cpu_model()}, {os.cpu_count()} cores")
    print("| trial | killed | what was killed | finished before | lost | finished "
          "ones rerun | rerun (s) | table identical |")
    print("|---|---|---|---|---|---|---|---|")
    totals = [0, 0, 0]
    for trial in range(args.trials):
        out = work / f"trial{trial}"
        # Kill while jobs are finishing: a random delay after the k-th job's result.
        k, delay = rng.randint(1, 19), rng.uniform(0.0, 1.0)
        proc = subprocess.Popen(command(study, out, args.executor), env=env,
                                start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and len(list(out.glob("jobs/*/result.json"))) < k:
            time.sleep(0.02)
        time.sleep(delay)
        at = f"{delay:.2f} s after job {k}"
        what = "driver + workers (SIGKILL)"
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
        proc.wait()
        before = {p.parent.name: p.read_bytes() for p in out.glob("jobs/*/result.json")}
        t1 = time.perf_counter()
        again = subprocess.run(command(study, out, args.executor), env=env, capture_output=True,
                               text=True)
        rerun = time.perf_counter() - t1
        lost = sum(not (out / "jobs" / j / "result.json").is_file()
                   or (out / "jobs" / j / "result.json").read_bytes() != data
                   for j, data in before.items())
        twice = sum((out / "jobs" / j / "log.txt").read_text().count("--- ") > 1 for j in before)
        same = again.returncode == 0 and (out / "results.csv").read_text() == reference
        totals[0] += lost
        totals[1] += twice
        totals[2] += same
        print(f"| {trial} | {at} | {what} | {len(before)} | {lost} | {twice} | {rerun:.1f} | "
              f"{'yes' if same else 'NO'} |", flush=True)
    print(f"\n{args.trials} trials: {totals[0]} jobs lost, {totals[1]} finished jobs rerun, "
          f"{totals[2]}/{args.trials} final tables identical to the uninterrupted run")


if __name__ == "__main__":
    main()

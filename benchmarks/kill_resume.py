"""Kill-and-resume trials: `modeconn train` killed by SIGKILL, resumed, compared bit for bit.

One uninterrupted run of a small training (an MLP pair on digits, trained grouped), then trials
that each start the same command, kill it (SIGKILL: no clean-up runs), resume it with
`--resume`, and compare every `model.safetensors` tensor, the learning curves (all but the
seconds column) and status.json with the uninterrupted run. Three kinds of kill:

- random: once the first resume state is on disk, after a uniformly random delay up to the rest
  of the uninterrupted run's duration (any epoch, the final writes, or after the end; a kill
  before the first state leaves nothing to resume from);
- poll-final: as soon as the resume state on disk says the last epoch (found by polling its
  header), i.e. right after the final state write, often before any model file is written;
- exact-final: the process kills itself inside `_save_state` right after the final state is
  on disk (a wrapper replaces the function; the library has no hook for it).

Each trial then resumes once more and checks that resuming a complete run changes no file.
Prints one row per trial and a summary "k/N bit-identical".

    python benchmarks/kill_resume.py --random 20 --final 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modeconn.io import read_csv

WRAPPER = """
import os, signal, sys
import modeconn.train.runs as t
from modeconn.cli import main
real, final = t._save_state, int(sys.argv.pop(1))
def save(path, model, opt, epoch, *a, **k):
    real(path, model, opt, epoch, *a, **k)
    if epoch == final:
        os.kill(os.getpid(), signal.SIGKILL)
t._save_state = save
sys.exit(main(sys.argv[1:]))
"""


def train_args(epochs: int) -> list[str]:
    return ["train", "--model", "mlp", "--width", "64", "--epochs", str(epochs),
            "--shift", "iid:50,50", "--batch-size", "32", "--quiet", "--device", "cpu"]


def state_epoch(out: Path) -> int | None:
    """The epoch recorded in the run's resume state on disk, if there is one yet."""
    epochs = []
    for path in out.rglob("*state.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as f:
                epochs.append(json.loads(f.metadata()["epoch"]))
        except Exception:  # noqa: BLE001 - replaced between the listing and the read
            pass
    return max(epochs) if epochs else None


def files(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def compare(ref: Path, run: Path) -> str:
    """'' when `run` holds exactly the uninterrupted run's models and curves, else what differs."""
    models = sorted(p.relative_to(ref) for p in ref.rglob("model.safetensors"))
    for rel in models:
        if not (run / rel).is_file():
            return f"{rel} missing"
        a, b = load_file(ref / rel), load_file(run / rel)
        if list(a) != list(b) or not all(torch.equal(a[k], b[k]) for k in a):
            return f"{rel} tensors differ"
        if (ref / rel).read_bytes() != (run / rel).read_bytes():
            return f"{rel} bytes differ (tensors equal)"
    for member in {rel.parent for rel in models}:
        keys = ("epoch", "split", "loss", "acc", "lr")
        rows = [[{k: r[k] for k in keys} for r in read_csv(d / member / "metrics.csv")]
                for d in (ref, run)]
        if rows[0] != rows[1]:
            return f"{member}/metrics.csv differs"
        if (ref / member / "status.json").read_text() != (run / member / "status.json").read_text():
            return f"{member}/status.json differs"
    return ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--random", type=int, default=20, help="trials killed at a random moment")
    p.add_argument("--final", type=int, default=5,
                   help="trials of each kind killed right after the final state write")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    root = Path(args.out or tempfile.mkdtemp(prefix="kill_resume_"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "modeconn", *train_args(args.epochs)]

    t0 = time.perf_counter()
    ref = root / "uninterrupted"
    proc = subprocess.Popen([*cmd, "--out", str(ref)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first_state = None
    while proc.poll() is None:
        if first_state is None and state_epoch(ref) is not None:
            first_state = time.perf_counter() - t0
        time.sleep(0.002)
    if proc.returncode != 0:
        sys.exit(f"uninterrupted run failed:\n{proc.stderr.read()}")
    duration = time.perf_counter() - t0
    first_state = first_state or 0.0
    print(f"uninterrupted run: {args.epochs} epochs, {duration:.1f} s wall (start-up included, "
          f"first resume state after {first_state:.1f} s); work directory {root}")

    trials = ["random"] * args.random + ["poll-final"] * args.final + ["exact-final"] * args.final
    rows = []
    for i, kind in enumerate(trials, 1):
        out = root / f"trial{i:02d}_{kind}"
        kill_at = None
        if kind == "exact-final":
            proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(args.epochs),
                                     *train_args(args.epochs), "--out", str(out)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            proc.wait()
        else:
            proc = subprocess.Popen([*cmd, "--out", str(out)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            start = time.perf_counter()
            if kind == "random":
                delay = rng.uniform(0.0, duration - first_state)
                while proc.poll() is None and state_epoch(out) is None:
                    time.sleep(0.001)
                seen = time.perf_counter()
                while proc.poll() is None and time.perf_counter() - seen < delay:
                    time.sleep(0.001)
            else:
                while proc.poll() is None and state_epoch(out) != args.epochs:
                    time.sleep(0.0005)
            kill_at = time.perf_counter() - start
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        killed = proc.returncode == -signal.SIGKILL
        epoch = state_epoch(out) if out.exists() else None
        models = len(list(out.rglob("model.safetensors"))) if out.exists() else 0
        resumed = subprocess.run([*cmd, "--out", str(out), "--resume"], env=env,
                                 capture_output=True, text=True)
        diff = compare(ref, out) if resumed.returncode == 0 else f"resume exit {resumed.returncode}"
        before = files(out)
        again = subprocess.run([*cmd, "--out", str(out), "--resume"], env=env,
                               capture_output=True, text=True)
        untouched = again.returncode == 0 and files(out) == before
        rows.append({"trial": i, "kind": kind, "kill_s": kill_at, "killed": killed,
                     "state_epoch": epoch, "models_at_kill": models, "identical": not diff,
                     "why": diff, "untouched": untouched})
        r = rows[-1]
        print(f"{i:>3} {kind:<12} kill {'-' if kill_at is None else f'{kill_at:5.2f} s':>7} "
              f"{'SIGKILL' if killed else 'finished':<8} state epoch {str(epoch):>4} "
              f"models on disk {models} -> {'bit-identical' if r['identical'] else 'DIFFERENT'}"
              f"{'' if r['identical'] else ' (' + diff + ')'}; "
              f"2nd resume {'changed nothing' if untouched else 'CHANGED FILES'}", flush=True)

    print()
    for kind in dict.fromkeys(trials):
        sel = [r for r in rows if r["kind"] == kind]
        final = [r for r in sel if r["killed"] and r["state_epoch"] == args.epochs]
        print(f"{kind:<12} {sum(r['identical'] for r in sel)}/{len(sel)} bit-identical "
              f"({sum(r['killed'] for r in sel)} killed, {len(final)} with the final state on "
              f"disk, {sum(r['models_at_kill'] == 0 for r in final)} of them before any model "
              f"file); resuming the complete run changed no file in "
              f"{sum(r['untouched'] for r in sel)}/{len(sel)}")
    ok = sum(r["identical"] for r in rows)
    print(f"total: {ok}/{len(rows)} bit-identical, "
          f"{sum(r['untouched'] for r in rows)}/{len(rows)} complete-run resumes changed no file "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0 if ok == len(rows) and all(r["untouched"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The study runner: parallel speed-up of the local executor, and the runner's cost per job.

1. A 20-job digits study (10 trainings, 10 interpolations) on the local executor (one worker
   per core, cores / workers torch threads each) against the same jobs run one after another in
   one process with every core's threads (what a loop over commands does, without its process
   start-ups), in the same run.
2. The runner's own cost per job on a 1,000-job study of a trivial job (a 2-point interpolation
   of two tiny MLPs): expanding the study (parse, validate, ids), the first run's wall time
   beyond the jobs' own time, a second run that finds everything done (the skip check), and
   collecting the results tables.

    python benchmarks/study_runner.py [--jobs 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from train_throughput import cpu_model

from modeconn import jobs
from modeconn.studies import parse, run_study
from modeconn.studies import results as tables
from modeconn.studies.executors import machine_cores
from modeconn.studies.worker import read_result

TWENTY = """
[study]
name = "twenty"

[train]
dataset = "digits"
shift = "iid:50,50"
width = 512
depth = 3
epochs = 10

[train.sweep]
seeds = [0, 1, 2, 3, 4]
grid = { batch_order = ["same", "independent"] }

[interpolate]
a = "@train/a/model.safetensors"
b = "@train/b/model.safetensors"
points = 25
"""


def resolved(spec, outs: dict[str, Path], root: Path) -> tuple[dict, Path]:
    """A job's options with its "@<job id>/<file>" references made paths of the jobs already
    run (`outs`), and its output directory under `root`."""
    options = {}
    for k, v in spec.options.items():
        if isinstance(v, str) and v.startswith("@"):
            job_id, _, rest = v[1:].partition("/")
            v = str(outs[job_id] / rest)
        options[k] = v
    return options, root / spec.id


def sequential(study, root: Path) -> float:
    """The study's jobs one after another in this process (references made paths)."""
    torch.set_num_threads(machine_cores())
    t0 = time.perf_counter()
    outs: dict[str, Path] = {}
    for spec in study.jobs:
        options, out = resolved(spec, outs, root)
        if "quiet" in {i.name for i in jobs.config_fields(jobs.get(spec.job).config)}:
            options["quiet"] = True
        jobs.run(spec.job, out=out, **options)
        outs[spec.id] = out
    return time.perf_counter() - t0


def process_loop(study, root: Path) -> float:
    """The study's jobs one after another, each in a fresh process (what a loop over commands
    does), with every core's threads."""
    t0 = time.perf_counter()
    outs: dict[str, Path] = {}
    for spec in study.jobs:
        options, out = resolved(spec, outs, root)
        code = (f"from modeconn import jobs; jobs.run({spec.job!r}, out={str(out)!r}, "
                f"**{options!r})")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        outs[spec.id] = out
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1000, help="jobs in the overhead study")
    p.add_argument("--skip-overhead", action="store_true", help="only the 20-job comparison")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="study-bench-"))
    cores = machine_cores()
    print(f"# {cpu_model()}, {cores} cores, torch {torch.__version__}")

    study = parse(TWENTY, "twenty.toml")
    t0 = time.perf_counter()
    run = run_study(study, work / "local", quiet=True)
    local = time.perf_counter() - t0
    assert run.complete, run.failed
    seq = sequential(study, work / "sequential")
    loop = process_loop(study, work / "loop")
    print(f"20-job study (MLP 3×512, 10 epochs, pairs then 25-point interpolations): local "
          f"executor {local:.1f} s ({cores} workers × 1 thread); one after another in one "
          f"process {seq:.1f} s ({cores} threads) → {seq / local:.2f}×; one process per job "
          f"(a loop over commands) {loop:.1f} s → {loop / local:.2f}×")

    if args.skip_overhead:
        return
    # A 1,000-job study of a trivial job.
    ckpt = work / "pair"
    jobs.run("train", out=ckpt, dataset="digits", shift="iid:50,50", width=8, depth=1,
             epochs=1, quiet=True)
    tolerances = ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(args.jobs))
    text = f"""
[study]
name = "overhead"

[interpolate]
a = "{ckpt / 'a' / 'model.safetensors'}"
b = "{ckpt / 'b' / 'model.safetensors'}"
points = 2
splits = ["test"]

[interpolate.sweep]
grid = {{ tolerance = [{tolerances}] }}
"""
    t0 = time.perf_counter()
    big = parse(text, "overhead.toml")
    expand = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = run_study(big, work / "overhead", quiet=True)
    wall = time.perf_counter() - t0
    assert first.complete, first.failed[:3]
    job_seconds = sum(read_result(work / "overhead" / "jobs" / j.id)["seconds"]
                      for j in big.jobs)
    t0 = time.perf_counter()
    again = run_study(big, work / "overhead", quiet=True)
    skip = time.perf_counter() - t0
    assert again.ran == 0
    t0 = time.perf_counter()
    rows, job_rows = tables.collect(work / "overhead", big)
    collect = time.perf_counter() - t0
    n = len(big.jobs)
    beyond = wall - job_seconds / cores
    print(f"{n}-job study of a trivial job ({job_seconds / n * 1e3:.0f} ms of work each):")
    print(f"  expand (parse, validate, ids): {expand / n * 1e3:.2f} ms per job")
    print(f"  first run: {wall:.1f} s wall, {job_seconds:.1f} s in the jobs themselves; "
          f"runner cost beyond the jobs' own time on {cores} workers: "
          f"{beyond / n * 1e3:.1f} ms per job")
    print(f"  second run (everything done: skip check, tables): {skip / n * 1e3:.2f} ms per job")
    print(f"  collect results ({len(rows)} rows): {collect / n * 1e3:.2f} ms per job")


if __name__ == "__main__":
    main()

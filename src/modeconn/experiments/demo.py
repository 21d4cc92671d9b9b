"""`modeconn demo`: the LMC-under-shift study on the embedded digits data, in a few minutes.

MLPs with 1 and 3 hidden layers, with and without BatchNorm, and a small ResNet; iid 50/50 and
label skew 80/20; initialisation shared; batch order same vs independent; batch sizes 32 and 128
(learning rate 0.05 and 0.2: scaled linearly so both train in the same epoch budget); three
seeds; plus one init-different configuration per model and shift as the contrast row.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..io import check_output_dir, json_text, output_dir, write_text
from ..report import figures
from ..train import TrainConfig
from .lmc import LMCStudy, run_study, summary_table, write_summary

MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("mlp1", "mlp", {"depth": 1, "width": 128}),
    ("mlp1-bn", "mlp", {"depth": 1, "width": 128, "norm": "bn"}),
    ("mlp3", "mlp", {"depth": 3, "width": 128}),
    ("mlp3-bn", "mlp", {"depth": 3, "width": 128, "norm": "bn"}),
    ("resnet8", "resnet8", {"width": 0.5}),
]
SHIFTS = ["iid:50,50", "label-skew:0-4=80,5-9=20"]


def demo_studies(quick: bool = False) -> list[LMCStudy]:
    """The demo's studies; `quick` shrinks them to a smoke test (one seed, fewer epochs)."""
    train = TrainConfig(epochs=3 if quick else 8, optimizer="sgd", lr=0.05, momentum=0.9,
                        weight_decay=5e-4)
    base = LMCStudy(dataset="digits", inits=("same",), batch_orders=("same", "independent"),
                    batch_sizes=(32,) if quick else (32, 128), lrs=(0.05,),
                    seeds=(0, 1) if quick else (0, 1, 2), train=train, points=7 if quick else 25,
                    ensemble_size=2 if quick else 3, contrast=True, lr_scaling="linear")
    models = [MODELS[0], MODELS[-1]] if quick else MODELS
    shifts = SHIFTS[1:] if quick else SHIFTS
    return [replace(base, model=arch, model_options=opts, label=label, shift=shift)
            for label, arch, opts in models for shift in shifts]


def _one_thread() -> None:
    torch.set_num_threads(1)


def _say(prefix: str, message: str) -> None:
    """One progress line on stderr, from the main process or a worker."""
    print(f"{prefix}{message}", file=sys.stderr, flush=True)


def run_demo(out: Path, device: torch.device, quick: bool = False, resume: bool = False,
             quiet: bool = False, jobs: int | None = None) -> list[dict[str, Any]]:
    """Run every demo study into `out/<model>_<shift>/`; write the combined summary and figures.

    On CPU the studies run in `jobs` worker processes (default: one per core) with one thread
    each: these models are too small for intra-op threads to pay, and independent studies are not.
    An `out` that already holds this demo (same demo.json) is continued as with `resume`:
    finished studies are reused as they are, the rest is run; a demo of other settings there
    is refused. Progress goes to stderr, one line per configuration and study, unless `quiet`.
    """
    out = check_output_dir(out)
    studies = demo_studies(quick)
    dirs = [out / f"{s.name}_{s.shift.split(':')[0]}" for s in studies]
    if jobs is None:
        jobs = os.cpu_count() or 1 if device.type == "cpu" else 1
    if jobs < 1:
        raise UsageError(f"'jobs' of the demo must be at least 1, got {jobs}")
    manifest = json_text({"demo": "LMC under data shift on digits", "quick": quick,
                          "device": device.type, "studies": [asdict(s) for s in studies]})
    manifest_path = out / "demo.json"
    say = functools.partial(_say, "")
    if out.exists() and any(out.iterdir()):
        if manifest_path.is_file():
            if manifest_path.read_text() != manifest:
                raise UsageError(f"{out} holds a demo run with other settings (demo.json differs: "
                                 "quick, device or the demo's studies); remove it or choose "
                                 "another output directory")
            resume = True
            if not quiet:
                say(f"{out} holds this demo already: reusing what is done, running the rest")
        else:
            output_dir(out, allowed=resume, way="resume")
    write_text(manifest_path, manifest, changed_only=True)
    t0 = time.perf_counter()

    def done(k: int, i: int) -> None:
        if not quiet:
            say(f"[{k}/{len(studies)}] {dirs[i].name} done ({time.perf_counter() - t0:.0f} s "
                "since the start)")

    logs = [None if quiet else functools.partial(_say, f"  {d.name} ") for d in dirs]
    if jobs == 1:
        results = []
        for i, (s, d) in enumerate(zip(studies, dirs)):
            results.append(run_study(s, d, device, resume=resume, quiet=quiet, log=logs[i]))
            done(i + 1, i)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_one_thread) as pool:
            # The convolutional studies are the longest: start them first.
            order = sorted(range(len(studies)), key=lambda i: studies[i].model.startswith("mlp"))
            futures = {pool.submit(run_study, studies[i], dirs[i], device, resume, True,
                                   logs[i]): i for i in order}
            by_study = {}
            for k, future in enumerate(as_completed(futures), 1):
                by_study[futures[future]] = future.result()
                done(k, futures[future])
            results = [by_study[i] for i in range(len(studies))]
    rows: list[dict[str, Any]] = [r for res in results for r in res]
    # Unchanged files are left as they are: a second run over a complete demo rewrites nothing.
    write_summary(out / "summary.csv", rows, changed_only=True)
    write_text(out / "summary.txt", summary_table(rows) + "\n", changed_only=True)
    labels = [f"{r['model']} {r['shift'].split(':')[0]} {r['init']} {r['batch_order']} "
              f"bs{r['batch_size']}" for r in rows]
    figures.save(figures.bar_figure(labels, {
        s: ([r[f"{s}_loss_barrier"] for r in rows], [r[f"{s}_loss_barrier_std"] for r in rows])
        for s in ("train", "test")}, "loss barrier (linear)",
        "digits: loss barrier per configuration (mean ± std over seeds)"), out / "barriers.png",
        changed_only=True)
    figures.save(figures.bar_figure(labels, {
        s: ([100 * r[f"{s}_delta_acc"] for r in rows],
            [100 * r[f"{s}_delta_acc_std"] for r in rows]) for s in ("train", "test")},
        "Δ accuracy at λ* (%)", "digits: accuracy drop along the path (−5% reference)",
        hline=-5.0), out / "delta.png", changed_only=True)
    return rows

"""The sweep runner: a study's jobs through an executor, skipping what is done, kill-safe.

The driver writes only what it can write again identically (study.toml, each job's job.json)
and, at the end, the results tables rebuilt from the jobs' result.json files; the jobs write
their own directories (see worker). So the driver, a worker, or both can be killed at any moment:
running the study again finds every finished job by its id, redoes the rest, and runs nothing
twice that had finished.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import artefacts
from ..errors import UsageError
from ..io import check_output_dir, write_text
from . import results as tables
from .executors import EXECUTORS, SlurmOptions
from .spec import MAX_JOBS, Study, preflight
from .spec import parse as parse_study
from .worker import DONE, OUT, job_dir, read_result

STUDY_FILE = artefacts.STUDY_FILE.name
SLURM_PING_S = 15  # how long `scontrol ping` may take to say whether the controller answers


@dataclass
class StudyRun:
    """What a run of a study did and found."""

    out: Path
    study: Study
    counts: dict[str, int] = field(default_factory=dict)  # status → jobs, after the run
    ran: int = 0  # jobs run by this invocation
    reused: int = 0  # jobs found done
    lost: list[str] = field(default_factory=list)  # "<id>: why" for workers that died
    failed: list[str] = field(default_factory=list)  # one line per failed job
    summary: str = ""
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return sum(self.counts.get(s, 0) for s in (*DONE, "skipped")) == len(self.study.jobs)


def open_study_dir(out: str | Path, study: Study) -> Path:
    """The study directory `out`: new, or one holding this study (by name); others refused."""
    out = check_output_dir(out, "study directory")
    given = out / STUDY_FILE
    if out.exists() and any(out.iterdir()):
        if not given.is_file():
            raise UsageError(f"{out} exists and is not a study directory (no {STUDY_FILE}); "
                             "choose a new or empty directory for the study")
        held = parse_study(given.read_text(), given)
        if held.name != study.name:
            raise UsageError(f"{out} holds study {held.name!r}, not {study.name!r}; choose "
                             "another directory (--out)")
    return out


def run_study(study: Study, out: str | Path, executor: str = "local", workers: int | None = None,
              retry_failed: bool = False, quiet: bool = False,
              slurm: SlurmOptions | None = None,
              overrides: dict[str, Any] | None = None, yes: bool = False) -> StudyRun:
    """Run the study's jobs that are not done into `out`; rebuild its results tables.

    Jobs that are complete or diverged are kept. A plain run runs new, unfinished and failed
    jobs; `retry_failed` runs only the failed ones (and the jobs waiting on them). A job that
    reads a diverged job is recorded as skipped; one that reads a failed job waits for a later
    run. `overrides` sets options that say where jobs run, not what they compute (device,
    data_dir), in every job that has them; they do not change the job ids.

    Everything that can be refused is refused before the study directory is written: a sweep
    larger than the study allows (unless `yes`), a job's device on this machine (local
    executor), a SLURM controller that does not answer."""
    t0 = time.perf_counter()
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UsageError(f"--jobs must be at least 1, got {workers}")
    limit = study.max_jobs or MAX_JOBS
    if len(study.jobs) > limit and not yes:
        raise UsageError(f"study {study.name} expands to {len(study.jobs)} jobs, more than "
                         f"{limit}; start it with --yes (or set max_jobs = {len(study.jobs)} "
                         "in its [study] table)")
    specs = [_with_overrides(spec, overrides or {}, executor == "local", study)
             for spec in study.jobs]
    if executor == "slurm":
        _check_gpus(study, specs, slurm or SlurmOptions())
        check_slurm()
    root = open_study_dir(out, study)
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / STUDY_FILE, study.text, changed_only=True)
    for spec in specs:
        artefacts.JOB.write(job_dir(root, spec["id"]), spec, changed_only=True)
    status = {j.id: _status(root, j.id) for j in study.jobs}
    _adopt(root, specs, status)
    run = StudyRun(root, study)
    run.reused = sum(s in DONE or s == "skipped" for s in status.values())
    if retry_failed:
        todo = {i for i, s in status.items() if s == "failed"}
        todo |= _waiting_on(study, todo, status)
    else:
        todo = {i for i, s in status.items() if s not in (*DONE, "skipped")}
    interactive = not quiet and sys.stderr.isatty()
    if todo:
        bars = interactive and executor == "local"
        ex = EXECUTORS[executor](root, workers=workers, bars=bars, slurm=slurm)
        try:
            _schedule(study, root, ex, todo, status, run, interactive)
        finally:
            ex.close()
    rows, jobs = tables.collect(root, study)
    tables.write(root, rows, jobs)
    run.counts = {}
    for j in jobs:
        run.counts[j["status"]] = run.counts.get(j["status"], 0) + 1
    run.failed = tables.failed_lines(jobs)
    run.summary = tables.summary(rows, metrics=tables.headlines(root, study)) if rows else ""
    run.seconds = time.perf_counter() - t0
    return run


def _check_gpus(study: Study, specs: list[dict[str, Any]], slurm: SlurmOptions) -> None:
    """A job on a CUDA device needs that device among the GPUs its SLURM task asks for (the
    nodes' GPUs cannot be seen from here, the request can)."""
    for spec in specs:
        device = str(spec["options"].get("device", "auto"))
        if not device.startswith("cuda"):
            continue
        index = int(device[5:]) if device[5:].isdigit() else 0
        if index >= slurm.gpus:
            raise UsageError(f"{study.path.name}: [{spec['stage']}] device {device} needs "
                             f"{index + 1} GPU(s) but each SLURM task asks for {slurm.gpus}; "
                             f"give --gpus {index + 1} or more, or device auto or cpu "
                             f"(job {spec['id']})")


def _with_overrides(spec, overrides: dict[str, Any], here: bool, study: Study) -> dict[str, Any]:
    """The job's job.json: its options with the overrides, checked as the job checks them
    (`here`: on this machine, where the local executor runs it)."""
    from ..jobs import config_fields, get

    job = get(spec.job)
    fields = {i.name: i for i in config_fields(job.config)}
    bad = [k for k in overrides if k in fields and fields[k].meta.setting]
    if bad:
        raise UsageError(f"{', '.join(bad)} would change what the jobs compute; set it in the "
                         "study file instead")
    given = {k: v for k, v in overrides.items() if k in fields and v is not None}
    options = {**spec.options, **given}
    if given or here:
        at = f"{study.path.name}: [{spec.stage}]"
        try:
            config = job.config.from_dict(options)
        except UsageError as e:
            raise UsageError(f"{at} {e} (job {spec.id})") from None
        preflight(at, config, spec.id, here=here)
    return {**spec.to_dict(), "options": options}


def check_slurm() -> None:
    """Refuse the slurm executor where no SLURM controller answers (before anything is written
    or submitted): submitit is installed, and `scontrol ping` reports the controller UP."""
    import importlib.util

    if importlib.util.find_spec("submitit") is None:
        raise UsageError("the slurm executor needs submitit: pip install 'modeconn[cluster]' "
                         "(or pip install submitit)")
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise UsageError("--executor slurm: SLURM's commands are not installed here (no "
                         "scontrol on PATH); run on a SLURM login node, or use --executor local")
    try:
        r = subprocess.run([scontrol, "ping"], capture_output=True, text=True,
                           timeout=SLURM_PING_S)
        said = " ".join((r.stdout + r.stderr).split())
        up = r.returncode == 0 and " UP" in f" {said}"
    except subprocess.TimeoutExpired:
        said, up = f"no answer in {SLURM_PING_S} s", False
    except OSError as e:
        said, up = str(e), False
    if not up:
        raise UsageError(f"--executor slurm: no SLURM controller answers (scontrol ping: "
                         f"{said[:200] or 'no output'}); start it (a local test cluster: "
                         "scripts/slurm.sh start) or use --executor local")


def _adopt(root: Path, specs: list[dict[str, Any]], status: dict[str, str]) -> None:
    """Let each job not yet done take its work over from the jobs of an earlier version of the
    study (job directories no longer in it: modeconn 0.1's lmc jobs held a whole grid each)."""
    from ..jobs import JobConfig, get

    earlier = [d / OUT for d in sorted((root / "jobs").iterdir())
               if d.name not in status and (d / OUT).is_dir()]
    if not earlier:
        return
    for spec in specs:
        job = get(spec["job"])
        if job.config.adopt is JobConfig.adopt or status[spec["id"]] in (*DONE, "skipped"):
            continue
        if not (job_dir(root, spec["id"]) / OUT).exists():
            job.config.from_dict(spec["options"]).adopt(job_dir(root, spec["id"]) / OUT, earlier)


def _status(root: Path, job_id: str) -> str:
    result = read_result(job_dir(root, job_id))
    return "pending" if result is None else result["status"]


def _waiting_on(study: Study, failed: set[str], status: dict[str, str]) -> set[str]:
    """The jobs not yet done that read (directly or not) one of `failed`."""
    out: set[str] = set()
    blocked = set(failed)
    for spec in study.jobs:  # stage order: readers come after what they read
        if status[spec.id] == "pending" and blocked & set(spec.deps):
            out.add(spec.id)
            blocked.add(spec.id)
    return out


def _schedule(study: Study, root: Path, ex: Any, todo: set[str], status: dict[str, str],
              run: StudyRun, interactive: bool) -> None:
    """Submit each job once what it reads is done; follow them to the end."""
    by_id = study.by_id
    order = [j.id for j in study.jobs if j.id in todo]
    waiting = list(order)
    running: set[str] = set()
    bar = tqdm(total=len(todo), desc=f"{study.name}", unit="job", position=0,
               disable=not interactive, dynamic_ncols=True,
               bar_format="{desc}: {n_fmt}/{total_fmt} jobs |{bar}| {elapsed}<{remaining}"
                          "{postfix}")
    failed = 0
    retried: set[str] = set()

    def post() -> None:
        slots = getattr(ex, "workers", None) or len(running)  # a pool runs `workers` at once
        now = min(len(running), slots)
        queued = f", queued {len(running) - now}" if len(running) > now else ""
        bar.set_postfix_str(f"running {now}{queued}, failed {failed}, diverged "
                            f"{sum(status[i] == 'diverged' for i in todo)}", refresh=True)

    try:
        while waiting or running:
            ready, still = [], []
            for job_id in waiting:
                deps = [status[d] for d in by_id[job_id].deps]
                if any(s in ("diverged", "skipped") for s in deps):
                    _skip(root, job_id, [d for d in by_id[job_id].deps
                                         if status[d] in ("diverged", "skipped")])
                    status[job_id] = "skipped"
                    bar.update()
                elif any(s in ("failed", "lost") for s in deps):
                    status[job_id] = "blocked"  # a later run does it once its inputs exist
                    bar.update()
                elif all(s == "complete" for s in deps):
                    ready.append(job_id)
                else:
                    still.append(job_id)
            waiting = still
            if ready:
                ex.submit(ready)
                running.update(ready)
                post()
            if not running:
                if waiting:  # nothing can move: inputs never came
                    for job_id in waiting:
                        status[job_id] = "blocked"
                    waiting = []
                break
            for job_id, outcome, why in ex.wait():
                running.discard(job_id)
                result = read_result(job_dir(root, job_id))  # the files, not the messenger
                if result is None and getattr(ex, "retry_lost", False) \
                        and job_id not in retried:
                    retried.add(job_id)  # a pool that broke takes its neighbours down too
                    waiting.append(job_id)
                elif result is None:
                    status[job_id] = "lost"
                    run.lost.append(f"{job_id}: {why or 'ended without a result'}")
                else:
                    status[job_id] = result["status"]
                    run.ran += bool((outcome or {}).get("ran", True))
                    failed += result["status"] == "failed"
                bar.update()
                post()
    finally:
        bar.close()


def _skip(root: Path, job_id: str, because: list[str]) -> None:
    artefacts.RESULT.write(job_dir(root, job_id), {
        "status": "skipped", "error": f"reads {', '.join(because)}, which diverged",
        "records": [], "headline": []})


def load_study(path: str | Path) -> Study:
    """The study in a study file (or in a study directory's study.toml)."""
    from .spec import load

    path = Path(path)
    if path.is_dir() and (path / STUDY_FILE).is_file():
        return load(path / STUDY_FILE)
    return load(path)

"""One job of a study, run where an executor puts it (a local worker process, a SLURM task).

A job's directory ``jobs/<id>/`` holds ``job.json`` (what to run, written by the driver),
``out/`` (what the job writes), ``log.txt`` (every attempt, appended) and ``result.json``: its
outcome, written last and atomically. A job counts as done only once ``result.json`` says
complete or diverged; anything else is redone: a job that can resume (training) continues from
its checkpoints, bit-identical to an uninterrupted run, any other starts again from an empty
``out/``. An exclusive lock on ``jobs/<id>/.lock`` is held while the job runs, so two drivers
(or a killed driver's orphaned worker and a new one) never run the same job at once, and the
second finds the first's result instead of running it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import artefacts
from .._version import __version__
from ..errors import DivergedError, UsageError

JOB = artefacts.JOB.name
RESULT = artefacts.RESULT.name
LOG = artefacts.LOG.name
OUT = "out"
DONE = ("complete", "diverged")  # outcomes a rerun keeps; "failed" is retried


def job_dir(root: Path, job_id: str) -> Path:
    return root / "jobs" / job_id


def read_result(directory: Path) -> dict[str, Any] | None:
    """The outcome recorded in a job directory (None: not run to the end)."""
    try:
        result = artefacts.RESULT.read(directory)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and "status" in result else None


def output_path(directory: Path, job_name: str) -> Path:
    """Where the job writes: ``out/`` for jobs that write a directory, ``out/<file>`` for the
    others."""
    from ..jobs import get

    output = get(job_name).output
    if output is not None and output.kind == "file":
        return directory / OUT / f"output{output.suffix or ''}"
    return directory / OUT


def resolve(value: Any, root: Path) -> Any:
    """An option with its "@<job id>/<path>" references made paths under `root`."""
    if isinstance(value, list):
        return [resolve(v, root) for v in value]
    if isinstance(value, str) and value.startswith("@"):
        job_id, _, rest = value[1:].partition("/")
        spec = artefacts.JOB.read(job_dir(root, job_id))
        target = output_path(job_dir(root, job_id), spec["job"])
        return str(target / rest if rest else target)
    return value


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the job's lock (waits while another process holds it)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock; so does the process's death


def run_job(root: str, job_id: str, threads: int | None = None, bars: bool = False
            ) -> dict[str, Any]:
    """Run the study job `job_id` under `root` unless it is done; return its outcome.

    `threads` sets torch's intra-op threads (so workers sharing a machine do not oversubscribe
    it); `bars` lets the job draw its progress bars on this process's terminal."""
    root_path = Path(root)
    directory = job_dir(root_path, job_id)
    with locked(directory):
        done = read_result(directory)
        if done is not None and done["status"] in DONE:
            return {**done, "ran": False}
        return {**_attempt(root_path, directory, threads, bars), "ran": True}


def _attempt(root: Path, directory: Path, threads: int | None, bars: bool) -> dict[str, Any]:
    import torch

    from ..jobs import build, config_fields, execute, get

    if threads:
        torch.set_num_threads(threads)
    spec = artefacts.JOB.read(directory)
    job = get(spec["job"])
    out = output_path(directory, spec["job"])
    fields = {i.name for i in config_fields(job.config)}
    options = {k: resolve(v, root) for k, v in spec["options"].items()}
    resumable = "resume" in fields
    if (directory / RESULT).exists():
        (directory / RESULT).unlink()  # a failure being retried
    for torn in directory.glob(f".{RESULT}.*.tmp"):  # an attempt killed while writing its result
        torn.unlink(missing_ok=True)  # (we hold the lock: no live writer owns it)
    if resumable and artefacts.CONFIG.path(out).is_file():
        options["resume"] = True  # training continues from its checkpoints
    elif out.exists():  # (a run killed before it recorded its settings has nothing to continue)
        shutil.rmtree(out)  # half-written by an attempt that died: start again
    if "quiet" in fields:
        options["quiet"] = not bars
    t0 = time.perf_counter()
    log = directory / LOG
    with open(log, "a") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {spec['job']} on "
                f"{socket.gethostname()} pid {os.getpid()}, modeconn {__version__}, "
                f"{torch.get_num_threads()} threads"
                f"{', slurm job ' + os.environ['SLURM_JOB_ID'] if 'SLURM_JOB_ID' in os.environ else ''}\n")
        f.flush()
        captured = io.StringIO()
        outcome: dict[str, Any]
        try:
            with warnings.catch_warnings(record=True) as caught, \
                    contextlib.redirect_stdout(captured):
                warnings.simplefilter("default")
                result = execute(job, build(job, options, out), out)
            for w in caught:
                f.write(f"warning: {w.category.__name__}: {w.message}\n")
            f.write("".join(line + "\n" for line in result.lines()))
            outcome = {"status": "diverged" if result.diverged else "complete",
                       "records": [{"labels": labels, "metrics": metrics}
                                   for labels, metrics in result.records()],
                       "headline": result.headlines()}
            if result.diverged:
                outcome["error"] = "; ".join(line for line in result.lines()
                                             if "DIVERGED" in line) or "training diverged"
        except DivergedError as e:  # a diverged fit (STE, curves): an outcome, not a failure
            outcome = {"status": "diverged", "error": str(e), "records": [], "headline": []}
            f.write(f"diverged: {e}\n")
        except UsageError as e:
            outcome = {"status": "failed", "error": str(e).splitlines()[0]}
            f.write(f"error: {e}\n")
        except Exception as e:  # noqa: BLE001 - any failure is recorded, the study goes on
            outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]}
            f.write(traceback.format_exc())
        f.write(captured.getvalue())
    outcome.update(seconds=round(time.perf_counter() - t0, 3), log=str(log.relative_to(root)),
                   host=socket.gethostname())
    artefacts.RESULT.write(directory, outcome)  # last: the job counts as done only from here
    return outcome


def main() -> None:
    """`python -m modeconn.studies.worker ROOT JOB_ID`: one job (for schedulers of your own)."""
    root, job_id = sys.argv[1:3]
    outcome = run_job(root, job_id)
    print(json.dumps({k: outcome[k] for k in ("status", "seconds") if k in outcome}))


if __name__ == "__main__":
    main()

"""Where a study's jobs run: a local process pool, or SLURM through submitit — a registry.

An executor takes job ids (`submit`), says which have ended (`wait`, with the outcome the worker
returned, or None and why when the worker died), and is closed at the end. The job's directory is
the source of truth either way: the runner reads result.json, never trusts the executor alone.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..lifeline import die_with
from .worker import run_job

Ended = tuple[str, "dict[str, Any] | None", str]  # (job id, outcome or None, why it has none)


def machine_cores() -> int:
    """The cores this process may use (the affinity mask: SLURM's or a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_init(driver: int, threads: int, slots, bars: bool) -> None:
    die_with(driver)  # first: a killed driver must not leave its workers behind
    import torch

    from .. import runtime

    torch.set_num_threads(threads)
    if bars:
        with slots.get_lock():
            slots.value += 1
            runtime.BAR_POSITION = slots.value


def _run_in_worker(root: str, job_id: str, bars: bool) -> dict[str, Any]:
    return run_job(root, job_id, threads=None, bars=bars)


class LocalExecutor:
    """A pool of `workers` processes on this machine, each with cores // workers torch threads
    (at least one), so that the pool uses the machine without oversubscribing it. Each worker
    ends within a second of the driver, however the driver ended (`lifeline.die_with`)."""

    name = "local"
    retry_lost = True  # once: a worker's death breaks the pool and loses its neighbours' jobs

    def __init__(self, root: Path, workers: int | None = None, bars: bool = False,
                 **_: Any) -> None:
        cores = machine_cores()
        self.root, self.bars = str(root), bars
        self.workers = workers or cores
        self.threads = max(1, cores // self.workers)
        self._ctx = multiprocessing.get_context("spawn")
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Future, str] = {}

    def describe(self) -> str:
        return f"{self.workers} local worker process(es) × {self.threads} thread(s)"

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            slots = self._ctx.Value("i", 0)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=self._ctx,
                                             initializer=_worker_init,
                                             initargs=(os.getpid(), self.threads, slots,
                                                       self.bars))
        return self._pool

    def submit(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            future = self._get_pool().submit(_run_in_worker, self.root, job_id, self.bars)
            self._futures[future] = job_id

    def running(self) -> int:
        return len(self._futures)

    def wait(self, timeout: float = 1.0) -> list[Ended]:
        if not self._futures:
            return []
        done, _ = wait_futures(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        ended: list[Ended] = []
        broken = False
        for future in done:
            job_id = self._futures.pop(future)
            try:
                ended.append((job_id, future.result(), ""))
            except BrokenProcessPool:
                broken = True
                ended.append((job_id, None, "its worker process died (killed, or out of memory)"))
            except Exception as e:  # noqa: BLE001 - the worker records failures; this is the pool
                ended.append((job_id, None, f"the pool lost it ({type(e).__name__}: {e})"))
        if broken:  # the pool is unusable: a fresh one takes the remaining work
            self._pool = None
        return ended

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


@dataclass(frozen=True)
class SlurmOptions:
    """What each SLURM task asks for."""

    partition: str | None = None
    time: int = 60  # minutes
    mem: float = 4.0  # GB
    cpus: int = 1
    gpus: int = 0
    array_size: int = 500  # jobs per SLURM job array
    parallelism: int = 256  # array tasks running at once


class SlurmExecutor:
    """Each job a SLURM array task submitted through submitit (its logs in slurm/ of the study);
    jobs submitted together form one job array (at most `array_size` tasks each)."""

    name = "slurm"
    retry_lost = False  # a cancelled task was cancelled on purpose; a rerun redoes it

    def __init__(self, root: Path, slurm: SlurmOptions | None = None, **_: Any) -> None:
        try:
            import submitit
        except ImportError:
            raise UsageError("the slurm executor needs submitit: pip install 'modeconn[cluster]' "
                             "(or pip install submitit)") from None
        self.root = str(root)
        self.options = slurm or SlurmOptions()
        o = self.options
        self.executor = submitit.AutoExecutor(folder=str(Path(root) / "slurm" / "%j"),
                                              cluster="slurm")
        params: dict[str, Any] = dict(timeout_min=o.time, mem_gb=o.mem, cpus_per_task=o.cpus,
                                      slurm_array_parallelism=o.parallelism, name="modeconn")
        if o.partition:
            params["slurm_partition"] = o.partition
        if o.gpus:
            params["gpus_per_node"] = o.gpus
        self.executor.update_parameters(**params)
        self._jobs: dict[str, Any] = {}

    def describe(self) -> str:
        o = self.options
        return (f"SLURM via submitit (partition {o.partition or 'default'}, {o.cpus} CPU(s), "
                f"{o.mem:g} GB, {o.time} min, {o.gpus} GPU(s) per task)")

    def submit(self, job_ids: list[str]) -> None:
        o = self.options
        for start in range(0, len(job_ids), o.array_size):
            chunk = job_ids[start:start + o.array_size]
            with self.executor.batch():
                jobs = [self.executor.submit(run_job, self.root, job_id, o.cpus, False)
                        for job_id in chunk]
            self._jobs.update(zip(chunk, jobs))

    def running(self) -> int:
        return len(self._jobs)

    def wait(self, timeout: float = 2.0) -> list[Ended]:
        deadline = time.monotonic() + timeout
        while True:
            ended: list[Ended] = []
            for job_id, job in list(self._jobs.items()):
                if not job.done():
                    continue
                del self._jobs[job_id]
                try:
                    ended.append((job_id, job.result(), ""))
                except Exception as e:  # noqa: BLE001 - cancelled, killed, timed out, node lost
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    ended.append((job_id, None, f"SLURM job {job.job_id} ended {job.state}"
                                                f"{': ' + first[:160] if first else ''}"))
            if ended or not self._jobs or time.monotonic() >= deadline:
                return ended
            time.sleep(0.5)

    def close(self) -> None:
        self._jobs.clear()


EXECUTORS: dict[str, Callable[..., Any]] = {"local": LocalExecutor, "slurm": SlurmExecutor}

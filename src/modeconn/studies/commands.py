"""run and results: a study file's jobs through the sweep runner, and its results database."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import artefacts
from ..jobs import JobConfig, Output, Result, register
from ..options import option


@dataclass(frozen=True, kw_only=True)
class RunConfig(JobConfig):
    job = "run"
    study: str = option(help="the study file (.toml), or a study directory to run again",
                        positional=True)
    executor: str = option("local", "local: a process pool on this machine; slurm: SLURM job "
                                    "arrays through submitit", choices=("local", "slurm"),
                           setting=False)
    jobs: int | None = option(None, "local worker processes (default: one per core; torch "
                                    "threads per worker: cores / workers)", low=1, setting=False)
    retry_failed: bool = option(False, "run only the failed jobs (and those waiting on them)",
                                setting=False)
    partition: str | None = option(None, "SLURM partition (default: the cluster's)",
                                   setting=False)
    time: int = option(60, "SLURM time limit per job, minutes", low=1, setting=False)
    mem: float = option(4.0, "SLURM memory per job, GB", low=0, low_open=True, finite=True,
                        setting=False)
    cpus: int = option(1, "SLURM CPUs per job (its torch threads)", low=1, setting=False)
    gpus: int = option(0, "SLURM GPUs per job", low=0, setting=False)
    array_size: int = option(500, "SLURM jobs per job array", low=1, setting=False)
    parallelism: int = option(256, "SLURM array tasks running at once", low=1, setting=False)
    device: str | None = option(None, "device of every job (default: each job's own, auto)",
                                setting=False)
    quiet: bool = option(False, "no progress bars", setting=False)
    yes: bool = option(False, "start a sweep of more than 1,000 jobs (or of more than the study's "
                              "[study] max_jobs)", setting=False)


@dataclass
class StudyResult(Result):
    run: object = None  # studies.runner.StudyRun

    def lines(self) -> list[str]:
        r = self.run
        counts = ", ".join(f"{n} {s}" for s, n in sorted(r.counts.items()))
        out = [r.summary] if r.summary else []
        out += r.failed
        out += [f"lost (its worker died; run the study again to redo it): {x}" for x in r.lost]
        out.append(f"study {r.study.name}: {len(r.study.jobs)} jobs ({counts}); ran {r.ran}, "
                   f"found {r.reused} done, in {r.seconds:.1f} s")
        if r.failed:
            out.append("rerun the failed jobs with: modeconn run "
                       f"{artefacts.STUDY_FILE.path(r.out)} --out {r.out} --retry-failed")
        out.append(f"wrote {r.out} (results.csv, results.sqlite, jobs/<id>/)")
        return out

    @property
    def exit_code(self) -> int:
        return 0 if self.run.complete else 1


def default_out(study) -> Path:
    return Path("results") / study.name


@register("run", RunConfig, "run a study file: its sweep of jobs, locally or on SLURM, "
                            "skipping what is done",
          Output("study directory (default: results/<study name>)", required=False))
def run_run(config: RunConfig, out: Path | None) -> StudyResult:
    """Every job of the study not done yet, then results.csv and results.sqlite in `out`."""
    from . import SlurmOptions, load_study, run_study

    study = load_study(config.study)
    if out is None:
        given = Path(config.study)
        out = given if given.is_dir() else default_out(study)
    slurm = SlurmOptions(partition=config.partition, time=config.time, mem=config.mem,
                         cpus=config.cpus, gpus=config.gpus, array_size=config.array_size,
                         parallelism=config.parallelism)
    run = run_study(study, out, config.executor, config.jobs, config.retry_failed,
                    config.quiet, slurm, overrides={"device": config.device}, yes=config.yes)
    return StudyResult(run.out, run)


@dataclass(frozen=True, kw_only=True)
class ResultsConfig(JobConfig):
    job = "results"
    study_dir: str = option(help="a study directory (what modeconn run wrote)", positional=True)
    where: str | None = option(None, "only rows with key=value, comma-separated (e.g. "
                                     "batch_size=32,shift=iid:50,50)")
    group_by: tuple[str, ...] | None = option(None, "columns to group by, comma-separated "
                                                    "(default: every sweep axis but the seeds)")
    metrics: tuple[str, ...] | None = option(None, "metrics to show, comma-separated (default: "
                                                   "each job kind's main ones)")


@dataclass
class ResultsSummary(Result):
    text: str = ""
    failed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return ([self.text] if self.text else ["no results yet"]) + self.failed


@register("results", ResultsConfig, "summarise a study's results: mean ± std over seeds, and "
                                    "the failed jobs", None)
def run_results(config: ResultsConfig, out: Path | None = None) -> ResultsSummary:
    """The summary of the study in `study_dir` (its tables rebuilt from the jobs first)."""
    from . import results_summary

    text, failed = results_summary(Path(config.study_dir), config.where,
                                   None if config.group_by is None else list(config.group_by),
                                   None if config.metrics is None else list(config.metrics))
    return ResultsSummary(None, text, failed)

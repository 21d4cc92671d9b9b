"""Studies: declarative study files (TOML), the sweep runner, executors, the results database.

`modeconn run STUDY.toml` expands a study into jobs with stable ids, runs those not done through
an executor (a local process pool, or SLURM via submitit), and tabulates every job's metrics in
results.csv and results.sqlite; `modeconn results DIR` summarises them.
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import artefacts
from .executors import EXECUTORS, SlurmOptions
from .runner import StudyRun, load_study, run_study
from .spec import JobSpec, Stage, Study, StudyError, load, parse

EXAMPLES = Path(__file__).parent / "examples"


def results_summary(root: Path, where: str | None = None, group_by: list[str] | None = None,
                    metrics: list[str] | None = None) -> tuple[str, list[str]]:
    """(summary text, lines naming the failed jobs and those left out as damaged or pending) of
    the study directory `root`, its tables rebuilt from the jobs' result files first."""
    from ..errors import UsageError
    from . import results

    if not artefacts.STUDY_FILE.path(root).is_file():
        raise UsageError(f"{root} is not a study directory (no study.toml); name the directory "
                         "`modeconn run` wrote")
    study = load_study(root)
    rows, jobs = results.collect(root, study)
    results.write(root, rows, jobs)
    conditions = [] if not where else re.split(r",(?=[\w.]+=)", where)
    selected = results.select(rows, conditions)
    if metrics is not None and rows:
        results.check_metrics(rows, metrics)
    head = metrics if metrics is not None else results.headlines(root, study)
    text = results.summary(selected, group_by, head) if selected else ""
    return text, results.failed_lines(jobs) + results.left_out_lines(root, jobs)


__all__ = ["EXAMPLES", "EXECUTORS", "JobSpec", "SlurmOptions", "Stage", "Study", "StudyError",
           "StudyRun", "load", "load_study", "parse", "results_summary", "run_study"]

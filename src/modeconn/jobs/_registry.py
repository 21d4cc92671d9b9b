"""The job registry: name → (config class, run function, what it writes)."""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import UsageError
from ..options import Options
from ..task import score_of

Record = tuple[dict[str, Any], dict[str, float]]


def numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a flat dict (booleans as 0/1), keys prefixed."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            out[prefix + k] = float(v)
        elif isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
            out[prefix + k] = float(v)
    return out


def path_metrics(summary: dict[str, Any], splits) -> dict[str, float]:
    """A barrier summary (barrier.json) as flat metrics: per split, the loss and error barrier
    (the linear definition unsuffixed, the others suffixed), Δacc at λ*, λ*, connected. A
    null (how the file writes a number that was not finite) is NaN."""
    out: dict[str, float] = {}
    for split in splits:
        s = summary[split]
        for metric in ("loss", "error"):
            for definition, v in s[metric].items():
                suffix = "" if definition == "linear" else "_" + definition.replace("-", "_")
                out[f"{split}_{metric}_barrier{suffix}"] = _float(v["barrier"])
        score = s.get("score", "acc")
        out[f"{split}_delta_{score}"] = _float(s[f"delta_{score}"])
        out[f"{split}_lambda_star"] = _float(s["lambda_star"])
        out[f"{split}_connected"] = float(s["connected"])
    return out


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def split_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{split: {loss, acc, ...}} as flat metrics split_loss, split_acc, ..."""
    return {k: v for split, r in results.items() if isinstance(r, dict)
            for k, v in numbers(r, f"{split}_").items()}


def loss_and_score(m: dict[str, Any]) -> str:
    """'loss L acc A' (or 'loss L f1 F' for a multi-label task) of one split's metrics."""
    k = score_of(m)
    return f"loss {m['loss']:.4f} {k} {m[k]:.4f}"


def ensemble_line(name: str, m: dict) -> str:
    """One ensemble's scores as one printed line (ensemble, fge and curve-ensemble print
    these)."""
    k = score_of(m)
    return (f"{name:<12} K={m['size']:<3} {k} {m[k]:.4f} (mean member {m[f'member_{k}']:.4f}, "
            f"gain {100 * m[f'gain_{k}']:+.2f}%) NLL {m['nll']:.4f} Brier {m['brier']:.4f} "
            f"ECE {m['ece']:.4f}")


class OptionRefused(UsageError):
    """A value a job would refuse when it runs, with the option that holds it."""

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(message)


@contextlib.contextmanager
def refusing(option: str) -> Iterator[None]:
    """Name `option` on the UsageError raised inside (a preflight check of its value)."""
    try:
        yield
    except OptionRefused:
        raise
    except UsageError as e:
        raise OptionRefused(option, str(e)) from None


class JobConfig(Options):
    """Base of every job's config (`job` is the job's registered name)."""

    job = "job"

    def preflight(self, here: bool = False) -> None:
        """Refuse, without running, a value the job would refuse when it runs: its data spec,
        shift, model and (`here`: on this machine) device, each through the validator the run
        uses; raises OptionRefused naming the option. Mixins extend it (cooperatively)."""

    def adopt(self, out: Path, earlier: Iterable[Path]) -> bool:
        """Take this job's finished work over into `out` from what an earlier version of
        modeconn wrote (`earlier`: outputs of jobs no longer in the study), so that the job
        continues it; whether it did. Most jobs have nothing to take over."""
        return False

    def expand(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The jobs these options stand for in a study, as (labels, option updates) pairs: one
        job with no updates, unless the job measures a grid one point per job (lmc)."""
        return [({}, {})]


@dataclass
class Result:
    """What a job returns: where it wrote, the lines the CLI prints, and the exit status."""

    out: Path | None
    # The metrics a study's summary shows first (all are in its results table).
    headline: ClassVar[tuple[str, ...]] = ()

    def lines(self) -> list[str]:
        """The summary printed after the job (one line per fact)."""
        return [] if self.out is None else [f"wrote {self.out}"]

    def records(self) -> list[Record]:
        """The job's numbers as (labels, metrics) pairs, one per thing measured (a member, a
        path, a model); a study tabulates them, one row per job and metric."""
        return []

    def headlines(self) -> list[str]:
        """`headline` in this result's own metric names: a multi-label job measures micro-F1
        where a classifier measures accuracy ('test_acc' → 'test_f1', 'gain_acc' →
        'gain_f1')."""
        names = {k for _, metrics in self.records() for k in metrics}
        return [h.replace("acc", "f1") if h not in names and h.replace("acc", "f1") in names
                else h for h in self.headline]

    @property
    def diverged(self) -> bool:
        """Whether training diverged (an outcome a study records, not a failure to retry)."""
        return False

    @property
    def exit_code(self) -> int:
        return 0


@dataclass(frozen=True)
class Output:
    """The job's output location: a directory (or a file), required or with a default."""

    help: str
    required: bool = True
    default: str | None = None
    kind: str = "dir"  # or "file"
    suffix: str | None = None  # of a file: what its name ends in
    # What a directory output holds, as paths inside it (fnmatch patterns, '*' any run of
    # characters): a tuple, or a function of the config for outputs that depend on it (train's
    # member folders). None: not declared.
    writes: tuple[str, ...] | Callable[[Any], Iterable[str]] | None = None

    def files(self, config: Any) -> list[str] | None:
        """The paths (patterns) the job writes inside its output for this config."""
        if self.writes is None:
            return None
        return list(self.writes(config) if callable(self.writes) else self.writes)

    def holds(self, config: Any, path: str) -> bool:
        """Whether `path` (inside the output) is a file the job writes, or a folder of them."""
        files = self.files(config)
        if files is None or not path:
            return True
        return any(fnmatch.fnmatchcase(path, f) or fnmatch.fnmatchcase(path + "/x", f)
                   or f.startswith(path.rstrip("/") + "/") for f in files)


@dataclass(frozen=True)
class Job:
    """A registered job."""

    name: str
    config: type[JobConfig]
    run: Callable[[Any, Path | None], Result]
    help: str
    output: Output | None
    # Options given → options to build the config from (train --resume reads the stored ones).
    resolve: Callable[[dict[str, Any], Path | None], dict[str, Any]] | None = None


JOBS: dict[str, Job] = {}
# Face commands that share a job's name: `modeconn lmc` runs the lmc job's grid as a study (one
# job per configuration), where a study's lmc stage runs the job itself.
COMMANDS: dict[str, Job] = {}


def register(name: str, config: type[JobConfig], help: str, output: Output | None,
             resolve: Callable | None = None, command: bool = False
             ) -> Callable[[Callable], Callable]:
    """Register `run(config, out) -> Result` under `name` (`command`: as the command of the job
    of that name, registered beside it by a face)."""
    if config.job != name:
        raise ValueError(f"config {config.__name__} says job {config.job!r}, registered as {name!r}")

    def deco(fn: Callable) -> Callable:
        (COMMANDS if command else JOBS)[name] = Job(name, config, fn, help, output, resolve)
        return fn

    return deco


def get(name: str) -> Job:
    """The job registered under `name`."""
    _load()
    try:
        return JOBS[name]
    except KeyError:
        raise UsageError(f"unknown job {name!r}; choose from {', '.join(sorted(JOBS))}") from None


def command(name: str) -> Job:
    """What `modeconn NAME` runs: the face command of that name, else the job."""
    job = get(name)
    return COMMANDS.get(name, job)


def names() -> list[str]:
    """The registered job names."""
    _load()
    return sorted(JOBS)


def run(name: str, out: str | Path | None = None, **options: Any) -> Result:
    """Run job `name` with these options, writing under `out`, as the command does."""
    job = command(name)
    return execute(job, build(job, options, out), out)


def build(job: Job, options: dict[str, Any], out: str | Path | None = None) -> JobConfig:
    """The job's config from the options given (resolved by the job first, when it says how)."""
    if job.resolve is not None:
        options = job.resolve(dict(options), None if out is None else Path(out))
    return job.config.from_dict(options)


def execute(job: Job, config: JobConfig, out: str | Path | None) -> Result:
    """Run a built config; `out` checked against what the job writes."""
    if job.output is not None:
        if out is None:
            out = job.output.default
        if out is None and job.output.required:
            raise UsageError(f"{job.name} needs an output {job.output.kind} (out)")
    return job.run(config, None if out is None else Path(out))


def _load() -> None:
    """Import the job modules (they register themselves)."""
    from . import _jobs  # noqa: F401

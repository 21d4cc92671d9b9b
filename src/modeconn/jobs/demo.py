"""demo: the LMC-under-shift study on the embedded digits data, in a few minutes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..experiments import demo as experiment
from ..experiments.lmc import summary_table
from ..options import option
from ..train import resolve_device
from ._inputs import Runtime
from ._registry import JobConfig, Output, Result, register


@dataclass(frozen=True, kw_only=True)
class DemoConfig(Runtime, JobConfig):
    job = "demo"
    hidden = ("data_dir",)  # the digits are embedded
    quick: bool = option(False, "a smaller smoke run")
    jobs: int | None = option(None, "worker processes on CPU (default: one per core)", low=1,
                              setting=False)
    resume: bool = option(False, "continue a demo directory without demo.json (one that holds "
                                 "this demo is continued without it)", setting=False)
    quiet: bool = option(False, "no progress lines", setting=False)


@dataclass
class DemoResult(Result):
    summary: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [summary_table(self.summary),
                f"wrote {self.out} in {self.seconds:.0f} s (summary.csv, summary.txt, "
                "barriers.png, delta.png, one folder per study)"]


@register("demo", DemoConfig, "the LMC-under-shift study on digits (a few minutes)",
          Output("output directory", required=False, default="results/demo"))
def run_demo(config: DemoConfig, out: Path) -> DemoResult:
    """Every demo study in `out/<model>_<shift>/`, the combined summary and figures (its
    demo.json is its record: the same demo in `out` is continued, another refused)."""
    t0 = time.perf_counter()
    rows = experiment.run_demo(out, resolve_device(config.device), config.quick, config.resume,
                               config.quiet, config.jobs)
    return DemoResult(out, rows, time.perf_counter() - t0)

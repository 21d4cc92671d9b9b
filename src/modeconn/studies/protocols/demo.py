"""demo: the LMC-under-shift study on the embedded digits data, as a study (examples/demo.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ... import artefacts
from ...jobs import JobConfig, Output, Result, register
from ...jobs._inputs import HELP_DEVICE
from ...options import option


@dataclass(frozen=True, kw_only=True)
class DemoConfig(JobConfig):
    job = "demo"
    quick: bool = option(False, "a smaller smoke run (examples/demo-quick.toml)")
    device: str = option("auto", HELP_DEVICE, setting=False)
    jobs: int | None = option(None, "worker processes (default: one per core)", low=1,
                              setting=False)
    quiet: bool = option(False, "no progress bars", setting=False)


@dataclass
class DemoResult(Result):
    table: str = ""
    run: object = None  # studies.runner.StudyRun

    def lines(self) -> list[str]:
        r = self.run
        out = [self.table] + r.failed
        out.append(f"study {r.study.name}: {len(r.study.jobs)} jobs; ran {r.ran}, found "
                   f"{r.reused} done, in {r.seconds:.0f} s")
        out.append(f"wrote {self.out} (summary.csv, summary.txt, barriers.png, delta.png, "
                   "results.csv, results.sqlite, one job directory per configuration)")
        out.append(f"report: {artefacts.REPORT.path(self.out)}")
        return out

    @property
    def exit_code(self) -> int:
        return 0 if self.run.complete else 1


@register("demo", DemoConfig, "the LMC-under-shift study on digits (a few minutes)",
          Output("study directory", required=False, default="results/demo"))
def run_demo(config: DemoConfig, out: Path) -> DemoResult:
    """The demo study in `out` (what is done there is kept), its combined summary and figures."""
    from ...io import write_text
    from ...report.build import build as build_report
    from .. import EXAMPLES, load, run_study
    from .demo_summary import write_summary

    study = load(EXAMPLES / ("demo-quick.toml" if config.quick else "demo.toml"))
    run = run_study(study, out, workers=config.jobs, quiet=config.quiet,
                    overrides={"device": config.device})
    table = write_summary(run) if run.complete else "the demo is not complete: see the failed jobs"
    text, _ = build_report(run.out)
    write_text(artefacts.REPORT.path(run.out), text, changed_only=True)
    return DemoResult(run.out, table=table, run=run)

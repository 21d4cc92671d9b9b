"""report: one self-contained HTML file of a study's (or a job's) tables and figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import artefacts
from ..io import write_text
from ..jobs import JobConfig, Output, Result, register
from ..jobs._inputs import output_file
from ..options import option


@dataclass(frozen=True, kw_only=True)
class ReportConfig(JobConfig):
    job = "report"
    source: str = option(help="a study directory (what modeconn run wrote) or one job's output "
                              "directory", positional=True)
    format: str = option("png", "figures as PNG, or as SVG (vector: for papers)",
                         choices=("png", "svg"))
    overwrite: bool = option(True, "replace an existing report", setting=False)


@dataclass
class ReportResult(Result):
    figures: int = 0
    tables: int = 0

    def lines(self) -> list[str]:
        return [f"report: {self.figures} figures, {self.tables} tables"] + super().lines()


@register("report", ReportConfig, "a self-contained HTML report of a study or of one job's output",
          Output("the HTML file (default: report.html in the directory)", required=False,
                 kind="file", suffix=".html"))
def run_report(config: ReportConfig, out: Path | None) -> ReportResult:
    """The report of `source`, written to `out` (a single HTML file, figures embedded)."""
    from .build import Figure, build

    source = Path(config.source)
    target = output_file(out if out is not None else artefacts.REPORT.path(source),
                         config.overwrite, suffix=".html", example=artefacts.REPORT.name)
    text, info = build(source, config.format)
    write_text(target, text, changed_only=True)
    blocks = [b for s in info["sections"] for b in s.blocks]
    return ReportResult(target, sum(isinstance(b, Figure) for b in blocks),
                        sum(not isinstance(b, Figure) for b in blocks))

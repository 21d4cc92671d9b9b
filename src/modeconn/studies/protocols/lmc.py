"""`modeconn lmc`: the LMC-under-data-shift protocol as a study — one lmc job per configuration
of the grid, run by the one runner (in parallel, or on SLURM through `modeconn run`) — and its
combined tables and figures, as the command wrote them when it ran its grid in one process."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import artefacts, plots
from ...errors import UsageError
from ...io import output_dir, write_bytes, write_text
from ...jobs import Output, Result, register
from ...jobs.lmc import (
    LMCConfig,
    earlier_record,
    prepare,
    summary_score,
    summary_table,
    write_tables,
)
from ...options import option
from ..runner import StudyRun, run_study
from ..spec import Study, parse, to_toml
from ..worker import OUT, job_dir

STAGE = "lmc"


@dataclass(frozen=True, kw_only=True)
class LMCCommand(LMCConfig):
    job = "lmc"
    jobs: int | None = option(None, "worker processes, one configuration each (default: one "
                                    "per core)", low=1, setting=False)


def study(config: LMCConfig) -> Study:
    """The study of these options: one stage, one lmc job per configuration of the grid."""
    settings = {k: v for k, v in config.to_dict(settings_only=True).items() if v is not None}
    text = to_toml({"study": {"name": "lmc", "description": f"LMC under data shift: "
                              f"{config.name} on {config.dataset}, {config.shift}"},
                    STAGE: {"job": "lmc", **settings}})
    return parse(text, "modeconn lmc")  # how its messages name it


@dataclass
class LMCStudyResult(Result):
    summary: list[dict] = field(default_factory=list)
    run: StudyRun | None = None
    note: str = ""

    def lines(self) -> list[str]:
        out = [summary_table(self.summary)] if self.summary else []
        if self.run is not None:
            r = self.run
            out += r.failed
            out.append(f"study lmc: {len(r.study.jobs)} jobs, one per configuration; ran {r.ran}, "
                       f"found {r.reused} done, in {r.seconds:.0f} s")
        if self.note:
            out.append(self.note)
        return out + super().lines()

    @property
    def exit_code(self) -> int:
        return 0 if self.run is None or self.run.complete else 1


@register("lmc", LMCCommand, "the LMC-under-data-shift study: train pairs, interpolate, "
                             "ensembles, over grids of batch size and learning rate",
          Output("study directory"), command=True)
def run_lmc_study(config: LMCCommand, out: Path) -> LMCStudyResult:
    """The grid's study in `out` (continued with `resume`), then its combined tables
    (summary.csv, paths.csv, barriers.csv, ensembles.csv, similarity.csv, learning_curves.csv,
    paths_mean.csv) and figures beside the study's own files."""
    the_study = study(config)
    # What every job would refuse, refused here, before anything is written.
    model_cfg = prepare(config, min(config.batch_size_grid))[1]
    if artefacts.LMC_STUDY.path(out).is_file() and not artefacts.STUDY_FILE.path(out).is_file():
        done = _earlier_version(config, out, the_study, model_cfg)
        if done is not None:
            return done
    else:
        output_dir(out, allowed=config.resume, way="resume")
        held = artefacts.STUDY_FILE.path(out)
        if config.resume and held.is_file() and held.read_text() != the_study.text:
            raise UsageError(f"{out}: resumed with different study settings than the original "
                             f"run ({held.name} differs); repeat the original settings or use a "
                             "new output directory")
    overrides = {"device": config.device}
    if config.data_dir is not None:
        overrides["data_dir"] = config.data_dir
    run = run_study(the_study, out, workers=config.jobs, quiet=config.quiet, overrides=overrides)
    if not run.complete:
        return LMCStudyResult(run.out, run=run, note="the study is not complete: the combined "
                              "tables are written once every configuration is")
    return LMCStudyResult(run.out, summary=write_combined(run, config), run=run)


def write_combined(run: StudyRun, config: LMCConfig) -> list[dict]:
    """The tables and figures of every configuration of a complete study in its directory
    (files that would not change are left as they are); returns the summary rows."""
    tables: dict[str, list[dict]] = defaultdict(list)
    summary: list[dict] = []
    polar: list[Path] = []
    for spec in run.study.jobs:
        out = job_dir(run.out, spec.id) / OUT
        summary += artefacts.LMC_STATUS.read(out)["summary"]
        for name, table in artefacts.LMC_TABLES.items():
            tables[name] += table.read(out)
        polar += sorted((out / "figures").glob("polar_*.png"))
    means = write_tables(run.out, tables, summary, changed_only=True)
    figures = run.out / "figures"
    for png in polar:  # each configuration's pair, as its job drew it
        write_bytes(figures / png.name, png.read_bytes(), changed_only=True)
    draw(figures, tables, means, summary, config)
    return summary


def draw(figures: Path, tables: dict[str, list[dict]], means: dict[str, list[dict]],
         summary: list[dict], config: LMCConfig) -> None:
    """Interpolation and learning curves per model and initialisation (a curve per
    configuration), the loss barrier and the drop along the path per configuration."""
    score = summary_score(summary)
    by_id = {r["id"]: r for r in summary}

    def label(r: dict) -> str:
        return f"{r['batch_order']} bs{r['batch_size']} lr{r['lr']:g}"

    groups: dict[tuple, dict[str, list]] = defaultdict(dict)
    for cfg_id, rows in means.items():
        c = by_id[cfg_id]
        groups[(c["model"], c["init"])][label(c)] = rows
    for (model, init), curves in groups.items():
        views = "; splits @b: through subset b's channels" if config.views == "both" else ""
        plots.save(plots.path_figure(curves, title=f"{model}, {config.shift}, init {init} "
                                     f"(mean ± std over seeds{views})"),
                   figures / f"interpolation_{model}_init-{init}.png", changed_only=True)
    lc: dict[tuple, dict[str, list]] = defaultdict(dict)
    for cfg_id in dict.fromkeys(r["id"] for r in tables["learning_curves"]):
        sel = [r for r in tables["learning_curves"] if r["id"] == cfg_id]
        rows = []
        for ep, split in dict.fromkeys((r["epoch"], r["split"]) for r in sel):
            pts = [r for r in sel if r["epoch"] == ep and r["split"] == split]
            rows.append({"epoch": ep, "split": split,
                         "loss": statistics.fmean(float(r["loss"]) for r in pts),
                         score: statistics.fmean(float(r[score]) for r in pts)})
        c = by_id[cfg_id]
        lc[(c["model"], c["init"])][label(c)] = rows
    for (model, init), runs in lc.items():
        plots.save(plots.learning_curves_figure(runs, title=f"{model}, {config.shift}, "
                                                f"init {init}"),
                   figures / f"learning_curves_{model}_init-{init}.png", changed_only=True)
    if not summary:
        return
    labels = [f"{r['model']} {r['init']} {label(r)}" for r in summary]
    held = f"{config.dataset}, {config.shift}, {config.epochs} epochs (mean ± std over seeds)"
    none_ok = "all runs diverged — nothing to plot"
    plots.save(plots.bar_figure(labels, {
        s: ([r[f"{s}_loss_barrier"] for r in summary],
            [r[f"{s}_loss_barrier_std"] for r in summary]) for s in ("train", "test")},
        f"loss barrier ({'binary ' if score == 'f1' else ''}cross-entropy)",
        f"loss barrier per configuration\n{held}", missing="diverged", empty=none_ok),
        figures / "barriers.png", changed_only=True)
    plots.save(plots.bar_figure(labels, {
        s: ([100 * r[f"{s}_delta_{score}"] for r in summary],
            [100 * r[f"{s}_delta_{score}_std"] for r in summary]) for s in ("train", "test")},
        f"Δ {plots.SCORE_LABEL[score]} at λ* (percentage points)",
        f"{plots.SCORE_LABEL[score]} drop along the path (−5 points reference)\n{held}",
        hline=-5.0, missing="diverged", empty=none_ok), figures / "delta.png", changed_only=True)


# ---------------------------------------------------------------- directories of modeconn 0.1


def _earlier_version(config: LMCConfig, out: Path, the_study: Study, model_cfg: dict[str, Any]
                     ) -> LMCStudyResult | None:
    """An LMC directory written by modeconn 0.1 (one process, its settings in study.json):
    complete, it is returned as it is; otherwise each configuration's training runs move into
    the job that continues them (`LMCConfig.adopt`), and the study goes on from there (None)."""
    if not config.resume:
        output_dir(out, allowed=False, way="resume")
    if not artefacts.LMC_STUDY.holds(out, earlier_record(config, model_cfg)):
        raise UsageError(f"{out}: resumed with different study settings than the original run "
                         "(study.json differs); repeat the original settings or use a new "
                         "output directory")
    if artefacts.LMC_STATUS.path(out).is_file():
        status = artefacts.LMC_STATUS.read(out)
        if status.get("status") == "complete":
            return LMCStudyResult(out, summary=status["summary"],
                                  note="complete (written by modeconn 0.1), reused as it is")
    for spec in the_study.jobs:  # (the data's folder is where the study reads it, not a setting)
        point = LMCConfig.from_dict({**spec.options, "data_dir": config.data_dir})
        point.adopt(job_dir(out, spec.id) / OUT, [out])
    # Last: from here on the directory is a study directory, continued as one.
    write_text(artefacts.STUDY_FILE.path(out), the_study.text)
    return None

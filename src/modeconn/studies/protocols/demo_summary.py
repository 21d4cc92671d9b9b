"""The demo's combined summary: every lmc job's configurations in one table and two figures."""

from __future__ import annotations

from typing import Any

from ... import artefacts, plots
from ...io import write_text
from ...jobs.lmc import summary_table
from ...jobs.lmc import write_summary as write_summary_csv


def summary_rows(run) -> list[dict[str, Any]]:
    """The summary rows of the study's lmc jobs, in study order."""
    rows: list[dict[str, Any]] = []
    for spec in run.study.jobs:
        rows.extend(artefacts.LMC_STATUS.read(run.out / "jobs" / spec.id / "out")["summary"])
    return rows


def write_summary(run) -> str:
    """summary.csv, summary.txt, barriers.png and delta.png of a complete demo (unchanged files
    are left as they are); returns the summary table."""
    out = run.out
    rows = summary_rows(run)
    table = summary_table(rows)
    write_summary_csv(out, rows, changed_only=True, table=artefacts.DEMO_SUMMARY)
    write_text(artefacts.DEMO_SUMMARY_TEXT.path(out), table + "\n", changed_only=True)
    labels = [f"{r['model']} {r['shift'].split(':')[0]} {r['init']} {r['batch_order']} "
              f"bs{r['batch_size']}" for r in rows]
    plots.save(plots.bar_figure(labels, {
        s: ([r[f"{s}_loss_barrier"] for r in rows], [r[f"{s}_loss_barrier_std"] for r in rows])
        for s in ("train", "test")}, "loss barrier (linear)",
        "digits: loss barrier per configuration (mean ± std over seeds)"), out / "barriers.png",
        changed_only=True)
    plots.save(plots.bar_figure(labels, {
        s: ([100 * r[f"{s}_delta_acc"] for r in rows],
            [100 * r[f"{s}_delta_acc_std"] for r in rows]) for s in ("train", "test")},
        "Δ accuracy at λ* (%)", "digits: accuracy drop along the path (−5% reference)",
        hline=-5.0), out / "delta.png", changed_only=True)
    return table

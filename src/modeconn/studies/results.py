"""A study's results database: results.csv and results.sqlite, and their summary.

``results`` holds one row per job and metric: the job's id, stage, kind and status, its sweep
values (``<stage>.<axis>``, inherited from the jobs it reads), its resolved settings as columns,
the labels of what was measured (a member, a path, a model), ``metric`` and ``value``.
``jobs`` (in the database) holds one row per job with its status, error, log and seconds. Both
are rebuilt from the jobs' result.json files, so they are never staler than the jobs.
Query across studies with plain SQL, e.g.::

    sqlite3 results/lmc/results.sqlite \\
      'SELECT "train.batch_size", avg(value) FROM results
       WHERE metric = "test_loss_barrier" AND status = "complete" GROUP BY 1'
"""

from __future__ import annotations

import difflib
import math
import sqlite3
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import artefacts
from ..errors import UsageError
from ..io import atomic_path
from .spec import JobSpec, Study
from .worker import RESULT, job_dir, output_path, read_result

FIXED = ("id", "stage", "job", "status")
STATUSES = ("complete", "diverged", "skipped", "failed")
SHOWN_IDS = 5  # of the jobs left out, named in a line


def read_job(root: Path, spec: JobSpec) -> tuple[dict[str, Any] | None, str]:
    """(the job's result, "") or (None, why it is left out: pending, or damaged and why)."""
    directory = job_dir(root, spec.id)
    if not (directory / RESULT).exists():
        return None, "pending"
    result = read_result(directory)
    if result is None:
        return None, f"damaged: {RESULT} unreadable"
    records = result.get("records", [])
    if result["status"] not in STATUSES or not isinstance(records, list) or not all(
            isinstance(r, dict) and isinstance(r.get("labels"), dict)
            and isinstance(r.get("metrics"), dict) for r in records):
        return None, f"damaged: {RESULT} malformed"
    if result["status"] == "complete" and not output_path(directory, spec.job).exists():
        return None, "damaged: its output (out/) is missing"
    return result, ""


def _cell(v: Any) -> Any:
    """A config value as a table cell (lists comma-joined)."""
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return v


def job_row(root: Path, spec: JobSpec, result: dict[str, Any] | None,
            why: str = "pending") -> dict[str, Any]:
    """The job's row of the jobs table (without a result: pending, or damaged and why)."""
    status = result["status"] if result is not None else why.partition(":")[0]
    error = (result or {}).get("error", "") if result is not None else why.partition(": ")[2]
    return {"id": spec.id, "stage": spec.stage, "job": spec.job, "status": status,
            "error": error, "seconds": (result or {}).get("seconds"),
            "log": str(artefacts.LOG.path(job_dir(root, spec.id))), **spec.labels}


def collect(root: Path, study: Study) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(result rows, job rows) of the study's jobs, read from their directories."""
    from ..jobs import get

    rows: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    for spec in study.jobs:
        result, why = read_job(root, spec)
        jobs.append(job_row(root, spec, result, why))
        if result is None or result["status"] not in ("complete", "diverged", "skipped"):
            continue
        config = get(spec.job).config.from_dict(spec.options).to_dict(settings_only=True)
        base = {"id": spec.id, "stage": spec.stage, "job": spec.job, "status": result["status"],
                **spec.labels, **{k: _cell(v) for k, v in config.items()}}
        records = result.get("records", [])
        for rec in records:
            for metric, value in rec["metrics"].items():
                rows.append({**base, **rec["labels"], "metric": metric, "value": value})
        if not records:  # a diverged job measured nothing, but it is counted
            rows.append({**base, "metric": "", "value": None})
    return rows, jobs


def headlines(root: Path, study: Study) -> dict[str, list[str]]:
    """The metrics each stage's summary shows first (as its jobs' results name them)."""
    out: dict[str, list[str]] = {}
    for spec in study.jobs:
        if spec.stage not in out:
            result = read_result(job_dir(root, spec.id))
            if result is not None and result.get("headline"):
                out[spec.stage] = list(result["headline"])
    return out


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(FIXED)
    for r in rows:
        cols.extend(k for k in r if k not in cols and k not in ("metric", "value"))
    return cols + ["metric", "value"] if rows and "metric" in rows[0] else cols


def write(root: Path, rows: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> None:
    """results.csv, jobs.csv and results.sqlite (tables results and jobs), each written
    atomically; when neither table changed, no file is rewritten."""
    changed = artefacts.RESULTS.write(root, rows, columns=_columns(rows) if rows else
                                      [*FIXED, "metric", "value"], changed_only=True)
    changed |= artefacts.JOBS.write(root, jobs, columns=_columns(jobs), changed_only=True)
    if not changed and artefacts.RESULTS_DB.path(root).is_file():
        return
    with atomic_path(artefacts.RESULTS_DB.path(root)) as tmp:
        tmp.unlink()  # sqlite creates its own file
        con = sqlite3.connect(tmp)
        try:
            for table, data in (("results", rows), ("jobs", jobs)):
                cols = _columns(data) if data else list(FIXED) + (["metric", "value"]
                                                                 if table == "results" else [])
                con.execute(f"CREATE TABLE {table} ({', '.join(_q(c) for c in cols)})")
                con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(cols))})",
                                [tuple(_sql(r.get(c)) for c in cols) for r in data])
            con.commit()
        finally:
            con.close()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _column(row: dict[str, Any], key: str) -> str | None:
    """The column `key` names in a row: itself, or the one sweep column ending in .key."""
    if key in row:
        return key
    matches = [c for c in row if c.endswith("." + key)]
    return matches[0] if len(matches) == 1 else None


def select(rows: list[dict[str, Any]], where: list[str]) -> list[dict[str, Any]]:
    """The rows matching every key=value (a value compares as a number when it reads as one)."""
    conditions = []
    for w in where:
        key, sep, value = w.partition("=")
        if not sep or not key:
            raise UsageError(f"--where takes key=value, got {w!r}")
        if rows and not any(_column(r, key) for r in rows):
            cols = sorted({c for r in rows for c in r if r.get(c) not in (None, "")})
            raise UsageError(f"--where {key}: no such column; columns: {', '.join(cols)}")
        conditions.append((key, _norm(value)))
    out = []
    for r in rows:
        if all((c := _column(r, k)) is not None and _norm(r[c]) == v for k, v in conditions):
            out.append(r)
    return out


def _is_seed(column: str) -> bool:
    return column.rsplit(".", 1)[-1] == "seed"


@dataclass
class StageSummary:
    """One stage's results: per group (its `keys` values), each metric's values over seeds."""

    stage: str
    keys: list[str]  # the grouping columns
    metrics: list[str]  # the metrics shown
    groups: list[tuple[tuple, dict[str, list[float]], int]]  # (key values, metric → values, diverged)

    def header(self) -> list[str]:
        return [*(k.split(".", 1)[-1] for k in self.keys), *self.metrics, "n", "diverged"]


def summarise(rows: list[dict[str, Any]], group_by: list[str] | None = None,
              metrics: dict[str, list[str]] | list[str] | None = None) -> list[StageSummary]:
    """Per stage and group, each metric's values over seeds (the seed axes and whatever is not
    grouped); diverged jobs are counted, never averaged."""
    by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_stage[r["stage"]].append(r)
    for g in group_by or ():
        if not any(_column(sel[0], g) for sel in by_stage.values()):
            cols = sorted({c for sel in by_stage.values() for c in sel[0]} - {"metric", "value"})
            raise UsageError(f"--group-by {g}: no such column; columns: {', '.join(cols)}")
    out = []
    for stage, sel in by_stage.items():
        if group_by is None:
            # The sweep values that vary, but the seeds, and the labels of what was measured.
            measured = _record_labels(sel)
            keys = [c for c in _columns(sel) if ("." in c and not _is_seed(c) or c in measured)
                    and len({str(r.get(c)) for r in sel}) > 1]
        else:  # the columns this stage has (a stage has none of another's labels)
            keys = [c for g in group_by if (c := _column(sel[0], g)) is not None]
        wanted = metrics.get(stage) if isinstance(metrics, dict) else metrics
        names = list(dict.fromkeys(r["metric"] for r in sel if r["metric"]))
        shown = [m for m in (wanted or names) if m in names] or names
        groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        diverged: dict[tuple, set] = defaultdict(set)
        for r in sel:
            key = tuple(r.get(k) for k in keys)
            if r["status"] in ("diverged", "skipped"):
                diverged[key].add(r["id"])
                groups[key]
                continue
            if r["metric"] in shown:
                groups[key][r["metric"]].append(float(r["value"]))
        out.append(StageSummary(stage, keys, shown, [
            (key, dict(values), len(diverged.get(key, ()))) for key, values in groups.items()]))
    return out


def summary(rows: list[dict[str, Any]], group_by: list[str] | None = None,
            metrics: dict[str, list[str]] | list[str] | None = None) -> str:
    """The summary as text: one fixed-width table per stage (mean ± std over seeds)."""
    blocks = []
    for st in summarise(rows, group_by, metrics):
        head = st.header()
        table = [head]
        for key, values, diverged in st.groups:
            n = max((len(v) for v in values.values()), default=0)
            table.append([*(_fmt(k) for k in key),
                          *(mean_std(values.get(m, [])) for m in st.metrics), str(n),
                          str(diverged)])
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        lines = [f"[{st.stage}] mean ± std over seeds"
                 + (f", by {', '.join(st.keys)}" if st.keys else "")]
        for i, row in enumerate(table):
            lines.append("  ".join(c.rjust(w) if j >= len(st.keys) else c.ljust(w)
                                   for j, (c, w) in enumerate(zip(row, widths))))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _record_labels(rows: list[dict[str, Any]]) -> set[str]:
    """Columns that name what a job measured: not settings of its job kind, or varying within
    one job (an lmc job's configurations)."""
    from ..jobs import config_fields, get

    settings = {r["job"]: {i.name for i in config_fields(get(r["job"]).config)} for r in rows}
    out = set()
    within: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for r in rows:
        for c, v in r.items():
            if c in FIXED or c in ("metric", "value") or "." in c:
                continue
            if c not in settings[r["job"]]:
                out.add(c)
            within[r["id"]][c].add(str(v))
    out |= {c for cols in within.values() for c, vs in cols.items() if len(vs) > 1}
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "" if v is None else str(v)


def mean_std(values: list[float]) -> str:
    """Mean ± sample std as text (one value: the value; none: n/a)."""
    if not values:
        return "n/a"
    m = statistics.fmean(values)
    if len(values) == 1:
        return f"{m:.4f}"
    return f"{m:.4f}±{statistics.stdev(values):.4f}"


def left_out_lines(root: Path, jobs: list[dict[str, Any]]) -> list[str]:
    """One line each for the jobs the tables leave out as damaged and as pending."""
    def ids(rows: list[dict[str, Any]], why: bool = False) -> str:
        named = [r["id"] + (f" ({r['error']})" if why else "") for r in rows[:SHOWN_IDS]]
        more = len(rows) - SHOWN_IDS
        return ", ".join(named) + (f" and {more} more (see {artefacts.JOBS.name})" if more > 0 else "")

    study = artefacts.STUDY_FILE.path(root)
    out = []
    damaged = [j for j in jobs if j["status"] == "damaged"]
    pending = [j for j in jobs if j["status"] == "pending"]
    if damaged:
        out.append(f"left out {len(damaged)} damaged job(s): {ids(damaged, True)}; delete "
                   f"their directories under {root / 'jobs'} and run again: modeconn run "
                   f"{study} --out {root}")
    if pending:
        out.append(f"left out {len(pending)} pending job(s), not run to the end yet: "
                   f"{ids(pending)}; run them: modeconn run {study} --out {root}")
    return out


def check_metrics(rows: list[dict[str, Any]], metrics: list[str]) -> None:
    """Refuse a metric the study's results do not have, naming those they have."""
    have = list(dict.fromkeys(r["metric"] for r in rows if r["metric"]))
    for m in metrics:
        if m not in have:
            close = difflib.get_close_matches(m, have, n=1)
            near = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"--metrics {m}: the study has no metric {m!r}{near}; its metrics: "
                             f"{', '.join(have) or 'none yet'}")


def failed_lines(jobs: list[dict[str, Any]]) -> list[str]:
    """One line per failed job: its id, sweep values, error and log."""
    out = []
    for j in jobs:
        if j["status"] == "failed":
            labels = ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in j.items()
                               if "." in k and k not in ("error", "log"))
            out.append(f"FAILED {j['id']} ({labels}): {j['error']} — log: {j['log']}")
    return out

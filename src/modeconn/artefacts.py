"""The file contract: the name (and, for tables, the columns) of every file a job, a training
run or a study writes, with one writer and one reader each, so that studies and reports read what
jobs write through here. No other module spells a contract file's name (tests/test_artefacts.py
checks it); checkpoints are written and read by `modeconn.checkpoint`, their names are here.

Tables are CSV with a fixed column order; documents are strict JSON (a number that is not finite
is null). Both are written atomically (`modeconn.io`). Readers return tables with numbers parsed
(int where integral text, else float; other text as is) and documents as written, except that in
a document of numbers (barriers) null reads back as NaN.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import json_text, read_csv, read_json, write_csv, write_json, write_text
from .task import TASKS, Task

Folder = str | os.PathLike


@dataclass(frozen=True)
class File:
    """A file of the contract by name (checkpoints, logs, study files: written by their own
    modules, located through here)."""

    name: str

    def path(self, folder: Folder) -> Path:
        return Path(folder) / self.name


@dataclass(frozen=True)
class Table(File):
    """A CSV file of rows with these columns (None: the union of the rows' keys)."""

    columns: tuple[str, ...] | None = None

    def write(self, folder: Folder, rows: Iterable[Mapping[str, Any]],
              changed_only: bool = False, *, task: Task | None = None,
              columns: Iterable[str] | None = None) -> bool:
        """Write the rows into `folder` (missing cells empty; extra keys dropped). The column
        'acc' stands for the task's metrics after the loss: rows of a multi-label task write
        f1, macro_f1 and map there (those of `task` when given, even with no rows). `columns`:
        this file's columns where they depend on what it holds (a table declared without)."""
        rows = list(rows)
        if columns is not None:
            cols = list(columns)
        elif self.columns is None:
            cols = None
        else:
            cols = task_columns(self.columns, rows, task)
        return write_csv(self.path(folder), rows, cols, changed_only=changed_only)

    def read(self, folder: Folder) -> list[dict[str, Any]]:
        """The rows, numbers parsed."""
        return [{k: _parse(v) for k, v in row.items()} for row in read_csv(self.path(folder))]


@dataclass(frozen=True)
class Document(File):
    """A JSON file; in one whose every null stands for a number that was not finite
    (`numeric`), null reads back as NaN."""

    numeric: bool = False

    def write(self, folder: Folder, obj: Any, changed_only: bool = False) -> bool:
        return write_json(self.path(folder), obj, changed_only=changed_only)

    def write_text(self, folder: Folder, text: str, changed_only: bool = False) -> bool:
        """Write JSON text serialised by its owner (a permutation's compact `to_json`)."""
        return write_text(self.path(folder), text, changed_only=changed_only)

    def read(self, folder: Folder) -> Any:
        return read_json(self.path(folder), nulls_as_nan=self.numeric)

    def holds(self, folder: Folder, obj: Any) -> bool:
        """Whether the file in `folder` is, to the byte, what `write` would write for `obj` (a
        resumed run or study checks its settings so)."""
        path = self.path(folder)
        return path.is_file() and path.read_text() == json_text(obj)


def names(*files: File) -> tuple[str, ...]:
    """The names of these files (what a job declares it writes)."""
    return tuple(f.name for f in files)


def task_columns(columns: Iterable[str], rows: list[Mapping[str, Any]],
                 task: Task | None = None) -> list[str]:
    """`columns` with 'acc' replaced by the metrics (after the loss) of `task`, else of the task
    whose score the rows carry."""
    cols = list(columns)
    if "acc" not in cols:
        return cols
    if task is None:
        if not rows or "acc" in rows[0]:
            return cols
        task = next((t for t in TASKS.values() if t.score in rows[0]), None)
    if task is None:
        return cols
    i = cols.index("acc")
    return cols[:i] + [m for m in task.metric_names if m != "loss"] + cols[i + 1:]


def _parse(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


# Every job's output directory.
CONFIG = Document("config.json")  # {"job", "config": the resolved config, ...}
ENV = Document("env.json")  # versions, device, threads, git SHA
STATUS = Document("status.json")  # complete / diverged / failed, with why
# An lmc study's status.json: "complete" and its summary rows, all numbers (a spread of one
# seed is NaN, null in the file).
LMC_STATUS = Document("status.json", numeric=True)

# Training runs: the run's config.json, env.json, subsets.csv (class histogram per subset),
# summary.csv (each member's status) and skipped.csv (what a reader left out); per member its
# config.json, status.json (final metrics: null for one that was not finite), metrics.csv,
# per_label.csv (multi-label), model.safetensors and the resume state.
METRICS = Table("metrics.csv", ("epoch", "split", "loss", "acc", "lr", "seconds"))
SUBSETS = Table("subsets.csv")
RUN_SUMMARY = Table("summary.csv")
SKIPPED = Table("skipped.csv", ("file", "reason"))
PER_LABEL = Table("per_label.csv", ("label", "name", "positives", "ap", "f1"))
MEMBER_STATUS = Document("status.json", numeric=True)
MODEL = File("model.safetensors")
TRAIN_STATE = File("state.safetensors")  # a member's resume state (model, optimiser, RNG)
GROUP_STATE = File("group_state.safetensors")  # the resume state of members trained together


def snapshot(epoch: int) -> File:
    """epoch_<N>.safetensors: a member's model after epoch N (asked for with save_epochs)."""
    return File(f"epoch_{epoch}.safetensors")


# Paths and barriers.
PATH = Table("path.csv", ("t", "split", "loss", "acc", "length"))
BARRIER = Document("barrier.json", numeric=True)
CURVE_PATH = Table("path.csv", ("path", "t", "split", "loss", "acc", "length"))
CURVE_METRICS = Table("metrics.csv", ("epoch", "loss", "lr"))
CURVE = File("curve.safetensors")


def aligned_path(label: str) -> Table:
    """path_before.csv / path_after.csv of an alignment."""
    return Table(f"path_{label}.csv", PATH.columns)


def aligned_barrier(label: str) -> Document:
    """barrier_before.json / barrier_after.json of an alignment."""
    return Document(f"barrier_{label}.json", numeric=True)


# Alignment: B permuted onto A, and the permutation with its spec (compact JSON, written by
# `Permutation.to_json`; `--spec` reads it back).
ALIGNED = File("aligned_b.safetensors")
PERMUTATION = Document("permutation.json")

# Merging, ensembles, landscapes, sharpness.
MERGE = Document("merge.json")
MERGED = File("merged.safetensors")
PAIR_BARRIERS = Table("barriers.csv", ("a", "b", "test_loss_barrier", "test_error_barrier"))
ENSEMBLE = Document("ensemble.json")
SIMILARITY = Table("similarity.csv")
COMPARISON = Table("comparison.csv")
PLANE = Table("plane.csv", ("i", "j", "x", "y", "split", "loss", "acc"))
PLANE_INFO = Document("plane.json")
SHARPNESS = File("sharpness.json")  # the example name of the sharpness job's output file
CURVE_POINT = File("point.safetensors")  # the example name of curve-point's output file

# Continual learning: accuracy per step, method and task; the summary per method; the tasks.
CONTINUAL_ACCURACY = Table("accuracy.csv")
CONTINUAL_SUMMARY = Table("summary.csv")
CONTINUAL_TASKS = Document("tasks.json")

# An lmc study: study.json (its settings, checked on resume), env.json, status.json
# (LMC_STATUS), runs/<configuration>/seed<N>/ (training runs), the tables below and figures.
LMC_STUDY = Document("study.json")
LMC_SUMMARY = Table("summary.csv")  # one row per configuration (empty std: one seed)
LMC_PATHS_MEAN = Table("paths_mean.csv")
LMC_LEARNING_CURVES = Table("learning_curves.csv")
LMC_PATHS = Table("paths.csv")
LMC_BARRIERS = Table("barriers.csv")
LMC_ENSEMBLES = Table("ensembles.csv")
LMC_SIMILARITY = Table("similarity.csv")
LMC_TABLES = {t.name.removesuffix(".csv"): t for t in (
    LMC_LEARNING_CURVES, LMC_PATHS, LMC_BARRIERS, LMC_ENSEMBLES, LMC_SIMILARITY)}

# The settings record the demo wrote before it ran as a study: kept out of reports.
OLD_DEMO = Document("demo.json")

# A study directory: study.toml as given, jobs/<id>/ each with job.json (the job and its
# options), log.txt (every attempt, appended), result.json (its outcome, written last) and out/;
# results.csv, jobs.csv and results.sqlite (`modeconn results`), report.html.
STUDY_FILE = File("study.toml")
JOB = Document("job.json")
RESULT = Document("result.json")
LOG = File("log.txt")
RESULTS = Table("results.csv")
JOBS = Table("jobs.csv")
RESULTS_DB = File("results.sqlite")
REPORT = File("report.html")
# The demo (a study): its combined summary of every lmc job.
DEMO_SUMMARY = Table("summary.csv")
DEMO_SUMMARY_TEXT = File("summary.txt")
# The fusion protocol (a study): accuracy per model and cell, per subset, and as Markdown.
FUSION_ACCURACIES = Table("model_accuracies.csv")
FUSION_PER_SUBSET = Table("per_subset.csv")
FUSION_ACCURACIES_TEXT = File("model_accuracies.md")

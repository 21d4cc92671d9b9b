"""The file contract: the name (and, for tables, the columns) of every file a job writes, with
one writer and one reader each, so that studies and reports read what jobs write through here.

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

from .io import read_csv, read_json, write_csv, write_json
from .task import TASKS

Folder = str | os.PathLike


@dataclass(frozen=True)
class Table:
    """A CSV file of rows with these columns (None: the union of the rows' keys)."""

    name: str
    columns: tuple[str, ...] | None = None

    def path(self, folder: Folder) -> Path:
        return Path(folder) / self.name

    def write(self, folder: Folder, rows: Iterable[Mapping[str, Any]],
              changed_only: bool = False) -> bool:
        """Write the rows into `folder` (missing cells empty; extra keys dropped). The column
        'acc' stands for the task's metrics after the loss: rows of a multi-label task write
        f1, macro_f1 and map there."""
        rows = list(rows)
        cols = None if self.columns is None else task_columns(self.columns, rows)
        return write_csv(self.path(folder), rows, cols, changed_only=changed_only)

    def read(self, folder: Folder) -> list[dict[str, Any]]:
        """The rows, numbers parsed."""
        return [{k: _parse(v) for k, v in row.items()} for row in read_csv(self.path(folder))]


@dataclass(frozen=True)
class Document:
    """A JSON file; in one whose every null stands for a number that was not finite
    (`numeric`), null reads back as NaN."""

    name: str
    numeric: bool = False

    def path(self, folder: Folder) -> Path:
        return Path(folder) / self.name

    def write(self, folder: Folder, obj: Any, changed_only: bool = False) -> bool:
        return write_json(self.path(folder), obj, changed_only=changed_only)

    def read(self, folder: Folder) -> Any:
        return read_json(self.path(folder), nulls_as_nan=self.numeric)


def task_columns(columns: Iterable[str], rows: list[Mapping[str, Any]]) -> list[str]:
    """`columns` with 'acc' replaced by the metrics (after the loss) of the task whose score
    the rows carry."""
    cols = list(columns)
    if "acc" not in cols or not rows or "acc" in rows[0]:
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

# Training runs (per member).
METRICS = Table("metrics.csv", ("epoch", "split", "loss", "acc", "lr", "seconds"))
SUBSETS = Table("subsets.csv")
RUN_SUMMARY = Table("summary.csv")

# Paths and barriers.
PATH = Table("path.csv", ("t", "split", "loss", "acc", "length"))
BARRIER = Document("barrier.json", numeric=True)
CURVE_PATH = Table("path.csv", ("path", "t", "split", "loss", "acc", "length"))
CURVE_METRICS = Table("metrics.csv", ("epoch", "loss", "lr"))


def aligned_path(label: str) -> Table:
    """path_before.csv / path_after.csv of an alignment."""
    return Table(f"path_{label}.csv", PATH.columns)


def aligned_barrier(label: str) -> Document:
    """barrier_before.json / barrier_after.json of an alignment."""
    return Document(f"barrier_{label}.json", numeric=True)


# Merging, ensembles, landscapes.
MERGE = Document("merge.json")
PAIR_BARRIERS = Table("barriers.csv", ("a", "b", "test_loss_barrier", "test_error_barrier"))
ENSEMBLE = Document("ensemble.json")
SIMILARITY = Table("similarity.csv")
COMPARISON = Table("comparison.csv")
PLANE = Table("plane.csv", ("i", "j", "x", "y", "split", "loss", "acc"))
PLANE_INFO = Document("plane.json")

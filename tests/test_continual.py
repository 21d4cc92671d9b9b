"""modeconn continual: tasks in sequence, merged step by step, against sequential and joint."""

from __future__ import annotations

import csv

import pytest

from modeconn import jobs
from modeconn.errors import UsageError
from modeconn.jobs.continual import parse_tasks

pytest.importorskip("ot")


def test_task_lists():
    assert parse_tasks("0-4|5-9", 10) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert parse_tasks("pairs", 10) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert parse_tasks("0,2|1,3-4", 10) == [[0, 2], [1, 3, 4]]
    for bad in ("0-4", "0-4|4-9", "0-4|5-12", "a|b"):
        with pytest.raises(UsageError, match="--tasks"):
            parse_tasks(bad, 10)


def test_every_method_is_scored_on_every_task_seen_and_joint_does_not_forget(tmp_path):
    r = jobs.run("continual", out=tmp_path / "c", tasks="0-2|3-5|6-9", epochs=2, width=32,
                 depth=1, methods=["avg", "wm"])
    rows = list(csv.DictReader(open(tmp_path / "c" / "accuracy.csv")))
    methods = {"avg", "wm", "sequential", "joint"}
    for step in (1, 2, 3):
        got = {(x["method"], x["task"]) for x in rows if int(x["step"]) == step}
        assert got == {(m, f"task{t}") for m in methods for t in range(1, step + 1)}
    summary = {s["method"]: s for s in r.summary}
    assert set(summary) == methods
    assert summary["joint"]["average_acc"] > summary["sequential"]["average_acc"]
    assert summary["joint"]["forgetting"] < summary["sequential"]["forgetting"]
    assert (tmp_path / "c" / "accuracy.png").stat().st_size > 0

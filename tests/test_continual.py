"""modeconn continual: tasks in sequence, merged step by step, against sequential and joint."""

from __future__ import annotations

import csv

import pytest

from modeconn import jobs
from modeconn.errors import UsageError
from modeconn.jobs import continual
from modeconn.jobs.continual import BASELINES, ContinualConfig, parse_tasks
from modeconn.options import config_fields

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


# Small and fast: two 5-class tasks of digits, a one-layer 32-unit MLP, two epochs per task.
SMALL = {"tasks": "0-4|5-9", "epochs": 2, "width": 32, "depth": 1, "quiet": True,
         "device": "cpu"}


def _summary(out) -> dict[str, dict]:
    rows = list(csv.DictReader(open(out / "summary.csv")))
    return {r["method"]: {"average_acc": float(r["average_acc"]),
                          "forgetting": float(r["forgetting"])} for r in rows}


def _check_sane(out, methods) -> None:
    summary = _summary(out)
    assert list(summary) == [*methods, *BASELINES]
    for s in summary.values():
        assert 0 <= s["average_acc"] <= 1 and -1 <= s["forgetting"] <= 1
    rows = list(csv.DictReader(open(out / "accuracy.csv")))
    assert all(0 <= float(r["acc"]) <= 1 for r in rows)
    assert {(r["method"], r["task"]) for r in rows if r["step"] == "2"} == \
        {(m, t) for m in (*methods, *BASELINES) for t in ("task1", "task2")}


def test_the_readmes_command_with_the_default_methods_runs(cli, tmp_path):
    readme = ["continual", "--tasks", "0-4|5-9", "--methods", "avg,ot,wm,mpf"]
    assert ContinualConfig().methods == ("avg", "ot", "wm", "mpf")  # the README's are the defaults
    rc, out, err = cli(*readme, "--epochs", "2", "--width", "32", "--depth", "1", "--quiet",
                       "--device", "cpu", "--out", tmp_path / "c")
    assert rc == 0, err
    assert "Traceback" not in err
    _check_sane(tmp_path / "c", ["avg", "ot", "wm", "mpf"])
    assert "joint" in out and f"wrote {tmp_path / 'c'}" in out


# Every fusion method the protocol offers (its --methods choices), one run each.
OFFERED = next(i.meta.choices for i in config_fields(ContinualConfig) if i.name == "methods")


@pytest.mark.parametrize("method", OFFERED)
def test_every_method_the_protocol_offers_merges_through_it(tmp_path, method):
    jobs.run("continual", out=tmp_path / "c", methods=[method], **SMALL)
    _check_sane(tmp_path / "c", [method])
    rows = list(csv.DictReader(open(tmp_path / "c" / "accuracy.csv")))

    def after_merge(m):
        return [r["acc"] for r in rows if r["method"] == m and r["step"] == "2"]
    # the merged model is not the model of the last task alone (what sequential keeps)
    assert after_merge(method) != after_merge("sequential")


def test_quiet_reaches_the_protocols_progress_bar(tmp_path, monkeypatch):
    asked = []
    real = continual.progress

    def spy(*args, quiet=False, **kwargs):
        asked.append(quiet)
        return real(*args, quiet=quiet, **kwargs)
    monkeypatch.setattr(continual, "progress", spy)
    for quiet in (True, False):
        jobs.run("continual", out=tmp_path / str(quiet), methods=["avg"],
                 **{**SMALL, "quiet": quiet, "epochs": 1})
    assert asked == [True, False]

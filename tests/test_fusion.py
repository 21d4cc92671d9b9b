"""modeconn fusion: the fusion protocol as a study, summarised in the reference's table."""

from __future__ import annotations

import csv

import pytest

from modeconn import jobs

pytest.importorskip("ot")


@pytest.mark.slow
def test_the_fusion_table_has_every_row_filled_and_a_rerun_changes_nothing(tmp_path):
    out = tmp_path / "fusion"
    kw = dict(models=["mlp"], seeds=[0, 1], epochs=2, curve_epochs=1, jobs=2, quiet=True)
    r = jobs.run("fusion", out=out, **kw)
    assert r.exit_code == 0 and r.run.ran == len(r.run.study.jobs) == 22
    cells = list(csv.DictReader(open(out / "model_accuracies.csv")))
    rows = {c["row"] for c in cells}
    assert len(rows) == 12 and all(int(c["n"]) == 2 for c in cells)  # every row, both seeds
    acc = {c["row"]: float(c["mean"]) for c in cells if c["metric"] == "test accuracy %"}
    assert acc["Joint"] > acc["A"] and acc["ensemble(A, B)"] > acc["A"]
    md = (out / "model_accuracies.md").read_text()
    assert "| MPF |" in md and "| AVG fine-tuned (MPF's budget) |" in md
    subsets = list(csv.DictReader(open(out / "per_subset.csv")))
    assert {s["on"] for s in subsets} == {"A's subset", "B's subset"}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = jobs.run("fusion", out=out, **kw)
    assert again.run.ran == 0 and again.table == r.table
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before

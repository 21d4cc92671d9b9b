"""`modeconn demo`: the demo study; a second run finds everything done and prints the summary at
once; a directory that is not a study is refused (a tiny demo file stands in for the demo's)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import modeconn.studies as studies
from modeconn import jobs

TINY = """
[study]
name = "demo"
description = "a tiny stand-in for the demo"

[mlp]
job = "lmc"
dataset = "digits"
model = "mlp"
width = 16
depth = 1
epochs = 2
batch_sizes = [32]
lrs = [0.05]
seeds = [0, 1]
points = 5
ensemble_size = 2

[mlp.sweep]
zip = { label = ["mlp1", "mlp2"], shift = ["iid:50,50", "label-skew:0-4=80,5-9=20"] }
"""


@pytest.fixture
def tiny_demo(monkeypatch, tmp_path):
    """Make the demo a tiny study; returns a setter to change its text."""
    folder = tmp_path / "examples"
    folder.mkdir()

    def use(text: str) -> None:
        (folder / "demo.toml").write_text(text)

    use(TINY)
    monkeypatch.setattr(studies, "EXAMPLES", folder)
    return use


def _files(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_twice_reuses_the_first_run_and_changes_no_file(cli, tmp_path, tiny_demo):
    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--jobs", "2", "--device", "cpu"]
    rc, first, err = cli(*args)
    assert rc == 0, err
    assert "ran 4, found 0 done" in first  # one job per configuration: 2 models × 2 orders
    before = _files(out)
    assert len([f for f in before if f.endswith("model.safetensors")]) == 16
    # the combined summary and figures, the study's tables and the report
    rows = list(__import__("csv").DictReader(open(out / "summary.csv")))
    assert [r["model"] for r in rows] == ["mlp1"] * 2 + ["mlp2"] * 2
    assert [r["shift"] for r in rows] == ["iid:50,50"] * 2 + ["label-skew:0-4=80,5-9=20"] * 2
    assert (out / "summary.txt").read_text().rstrip("\n") in first
    for f in ("study.toml", "results.csv", "results.sqlite", "barriers.png", "delta.png",
              "report.html"):
        assert (out / f).is_file(), f
    assert first.splitlines()[-1] == f"report: {out / 'report.html'}"

    rc, second, err = cli(*args, "--quiet")
    assert rc == 0 and err == ""  # quiet: nothing on stderr
    assert "ran 0, found 4 done" in second
    assert second.splitlines()[:-3] == first.splitlines()[:-3]  # the same summary table
    assert _files(out) == before  # same bytes, not even rewritten


@pytest.mark.slow
def test_a_changed_demo_runs_only_the_jobs_it_changed(cli, tmp_path, tiny_demo):
    """(and the demo job from Python returns its table)"""
    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--jobs", "2", "--device", "cpu", "--quiet"]
    assert cli(*args)[0] == 0
    tiny_demo(TINY.replace('"label-skew:0-4=80,5-9=20"', '"label-skew:0-4=90,5-9=10"'))
    result = jobs.run("demo", out=out, jobs=2, device="cpu", quiet=True)  # from Python
    assert result.exit_code == 0 and result.run.ran == 2 and result.run.reused == 2
    assert result.table == (out / "summary.txt").read_text().rstrip("\n")
    assert "label-skew:0-4=90,5-9=10" in result.table and "80,5-9=20" not in result.table


def test_demo_refuses_a_directory_that_is_not_a_study(cli, tmp_path, tiny_demo):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    rc, _, err = cli("demo", "--out", out, "--jobs", "1", "--device", "cpu", "--quiet")
    assert rc == 2 and "is not a study directory" in err and len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_the_shipped_demo_is_the_lmc_study_on_digits():
    s = studies.load(studies.EXAMPLES / "demo.toml")
    assert s.name == "demo" and {j.job for j in s.jobs} == {"lmc"}
    labels = sorted(j.options.get("label") for j in s.jobs)
    # Per model and shift: 2 batch orders × 2 batch sizes and the init-different contrast row.
    assert labels == sorted(["mlp1", "mlp1-bn", "mlp3", "mlp3-bn", "resnet8"] * 10)
    assert all(j.options["dataset"] == "digits" for j in s.jobs)
    assert sum(j.options["init"] == ["different"] for j in s.jobs) == 10

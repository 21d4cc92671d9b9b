"""End-to-end: the console commands as a user runs them, in fresh processes (slow tier)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "modeconn", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def test_demo_quick_writes_summary_and_figures(tmp_path):
    out = tmp_path / "demo"
    r = run("demo", "--quick", "--out", str(out), "--jobs", "1")
    assert r.returncode == 0, r.stderr
    assert "train barrier" in r.stdout and "wrote" in r.stdout
    rows = list(csv.DictReader(open(out / "summary.csv")))
    # mlp1 and resnet8 on label skew: same init × two batch orders, plus the init-different row
    assert len(rows) == 6
    assert {r["model"] for r in rows} == {"mlp1", "resnet8"}
    for row in rows:
        assert int(row["seeds_ok"]) + int(row["diverged"]) == 2
    diff = [r for r in rows if r["init"] == "different"]
    same = [r for r in rows if r["init"] == "same"]
    # Different initialisations are separated by a barrier; one shared start is not (much).
    assert min(float(r["train_loss_barrier"]) for r in diff) > \
        max(float(r["train_loss_barrier"]) for r in same)
    for name in ("barriers.png", "delta.png", "summary.txt"):
        assert (out / name).stat().st_size > 0
    # One job per configuration: mlp1's three (two batch orders, the contrast row).
    outs = [p.parent / "out" for p in out.glob("jobs/*/job.json")
            if json.loads(p.read_text())["options"]["label"] == "mlp1"]
    assert len(outs) == 3
    for job in outs:
        for name in ("paths.csv", "barriers.csv", "ensembles.csv", "similarity.csv",
                     "learning_curves.csv", "paths_mean.csv", "config.json", "status.json"):
            assert (job / name).exists(), name
        assert len(list((job / "figures").glob("polar_*.png"))) == 1
    assert "ran 6, found 0 done" in r.stdout

    # `make demo` twice: the second run reuses the first, reprints the summary, rewrites nothing.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run("demo", "--quick", "--out", str(out), "--jobs", "1")
    assert again.returncode == 0, again.stderr
    assert "ran 0, found 6 done" in again.stdout
    assert again.stdout.splitlines()[:-3] == r.stdout.splitlines()[:-3]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_train_interpolate_info_pipeline(tmp_path):
    out = tmp_path / "run"
    r = run("train", "--shift", "iid:50,50", "--width", "32", "--depth", "1", "--epochs", "3",
            "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    r = run("interpolate", str(out / "a/model.safetensors"), str(out / "b/model.safetensors"),
            "--points", "5", "--out", str(tmp_path / "interp"))
    assert r.returncode == 0, r.stderr
    bar = json.loads((tmp_path / "interp/barrier.json").read_text())
    assert set(bar) >= {"train", "test"}
    r = run("info", str(out / "a/model.safetensors"))
    assert r.returncode == 0 and '"arch": "mlp"' in r.stdout
    r = run("interpolate", str(out / "a/model.safetensors"), str(tmp_path / "missing.safetensors"),
            "--out", str(tmp_path / "bad"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()

"""`modeconn demo` on an existing directory: reused when it holds the same demo, refused when it
holds another; progress lines while it runs (tiny studies stand in for the demo's)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

import modeconn.experiments.demo as demo
from modeconn import jobs
from modeconn.experiments.lmc import LMCStudy, summary_table
from modeconn.train import TrainConfig

TINY = LMCStudy(dataset="digits", model="mlp", model_options={"width": 16, "depth": 1},
                shift="iid:50,50", inits=("same",), batch_orders=("same", "independent"),
                batch_sizes=(32,), lrs=(0.05,), seeds=(0, 1), points=5, ensemble_size=2,
                train=TrainConfig(epochs=2, batch_size=32, lr=0.05))


@pytest.fixture
def tiny_demo(monkeypatch):
    """Make the demo two tiny studies; returns a setter to change them."""
    def use(studies):
        monkeypatch.setattr(demo, "demo_studies", lambda quick=False: studies)
    use([replace(TINY, label="mlp1"), replace(TINY, label="mlp2", shift="label-skew:0-4=80,5-9=20")])
    return use


def _files(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_twice_reuses_the_first_run_and_changes_no_file(cli, tmp_path, tiny_demo):
    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--jobs", "1", "--device", "cpu"]
    rc, first, err = cli(*args)
    assert rc == 0, err
    # Progress while it runs: a line per configuration and one per study.
    lines = err.splitlines()
    assert "  mlp1_iid [1/2] " in err and "  mlp2_label-skew [2/2] " in err
    assert [ln.split()[0] for ln in lines if ln.startswith("[")] == ["[1/2]", "[2/2]"]
    before = _files(out)
    assert len([f for f in before if f.endswith("model.safetensors")]) == 16

    rc, second, err = cli(*args)
    assert rc == 0, err
    assert "reusing" in err and "reused" in err
    assert second.splitlines()[:-1] == first.splitlines()[:-1]  # the same summary table
    assert _files(out) == before  # same bytes, not even rewritten


def test_demo_job_returns_the_summary_rows(tmp_path, tiny_demo):
    out = tmp_path / "d"
    result = jobs.run("demo", out=out, jobs=1, device="cpu", quiet=True)
    assert result.out == out and result.exit_code == 0
    assert [r["shift"] for r in result.summary] == ["iid:50,50"] * 2 + \
        ["label-skew:0-4=80,5-9=20"] * 2
    assert (out / "summary.txt").read_text() == summary_table(result.summary) + "\n"
    for f in ("demo.json", "summary.csv", "barriers.png", "delta.png"):
        assert (out / f).is_file(), f
    assert result.lines()[-1].startswith(f"wrote {out} in ")


def test_quiet_demo_prints_nothing_to_stderr(cli, tmp_path, tiny_demo):
    rc, out, err = cli("demo", "--out", tmp_path / "d", "--jobs", "1", "--device", "cpu",
                       "--quiet")
    assert rc == 0 and err == ""
    assert "train barrier" in out


def test_demo_of_other_settings_in_the_directory_is_refused(cli, tmp_path, tiny_demo):
    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--jobs", "1", "--device", "cpu", "--quiet"]
    assert cli(*args)[0] == 0
    before = _files(out)
    tiny_demo([replace(TINY, label="mlp1", points=7)])
    rc, stdout, err = cli(*args)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("modeconn: error: ") and "other settings" in err
    assert _files(out) == before


def test_demo_refuses_a_directory_that_is_not_a_demo(cli, tmp_path, tiny_demo):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    rc, _, err = cli("demo", "--out", out, "--jobs", "1", "--device", "cpu", "--quiet")
    assert rc == 2 and "not empty" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_demo_continues_after_an_interruption_bit_identical(cli, tmp_path, tiny_demo,
                                                            monkeypatch):
    import modeconn.train as train

    assert cli("demo", "--out", tmp_path / "A", "--jobs", "1", "--device", "cpu", "--quiet")[0] == 0
    real, calls = train._save_state, []

    def interrupt(path, model, opt, epoch, *a, **k):
        real(path, model, opt, epoch, *a, **k)
        calls.append(epoch)
        if len(calls) == 10:  # the final state of the second study's first run
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "_save_state", interrupt)
    args = ["demo", "--out", tmp_path / "B", "--jobs", "1", "--device", "cpu", "--quiet"]
    assert cli(*args)[0] == 130
    monkeypatch.setattr(train, "_save_state", real)
    rc, _, err = cli(*args)
    assert rc == 0, err
    a, b = _files(tmp_path / "A"), _files(tmp_path / "B")
    models = [f for f in a if f.endswith("model.safetensors")]
    assert len(models) == 16 and sorted(models) == sorted(f for f in b if f in models)
    assert {f: a[f][0] for f in models} == {f: b[f][0] for f in models}
    assert (tmp_path / "A" / "summary.txt").read_text() == (tmp_path / "B" / "summary.txt").read_text()

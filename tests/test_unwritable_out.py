"""An output that cannot be created or written is refused in one line, before anything runs, in
every command (issue 22, item 7): a path under /proc (which takes no new entries, even for root,
where permission bits stop nothing), or a file system that is read-only."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import FAST_TRAIN, digits_study

from modeconn import io, jobs
from modeconn.checkpoint import save_model
from modeconn.data import DataSpec
from modeconn.errors import UsageError
from modeconn.models import model_config
from modeconn.train import init_model

# What each job that writes needs besides --out ({a}, {b}, {c}: checkpoints, {curve}: a curve,
# {study}: a study file, {dir}: a directory to report on).
ARGS = {
    "align": ["{a}", "{b}"],
    "continual": ["--tasks", "0-4|5-9", "--methods", "avg", "--epochs", "1"],
    "curve": ["{a}", "{b}", "--epochs", "1", "--quiet"],
    "curve-ensemble": ["{curve}", "--k", "2"],
    "curve-point": ["{curve}"],
    "demo": ["--quick", "--quiet"],
    "ensemble": ["{a}", "{b}"],
    "fge": ["{a}", "--cycles", "1", "--cycle-epochs", "1", "--quiet"],
    "fusion": ["--models", "mlp", "--seeds", "1", "--epochs", "1", "--quiet"],
    "interpolate": ["{a}", "{b}", "--points", "3"],
    "landscape": ["{a}", "{b}", "{c}", "--grid", "3"],
    "lmc": [*FAST_TRAIN, "--epochs", "1", "--seeds", "0"],
    "merge": ["{a}", "{b}"],
    "merge-many": ["{a}", "{b}", "{c}"],
    "report": ["{dir}"],
    "run": ["{study}", "--quiet"],
    "sharpness": ["{a}", "--probes", "1", "--max-batches", "1"],
    "train": [*FAST_TRAIN, "--epochs", "1"],
}
DEVICE = {"align", "continual", "curve", "curve-ensemble", "curve-point", "demo", "ensemble",
          "fge", "fusion", "interpolate", "landscape", "merge", "merge-many", "sharpness"}
KIND = {"dir": "directory", "file": "file"}
STUDIES = {"demo", "fusion", "run"}  # a study directory
WRITERS = [n for n in jobs.names() if jobs.get(n).output is not None]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from modeconn.paths import ParamPath
    from modeconn.paths.curves import save_curve

    root = tmp_path_factory.mktemp("inputs")
    cfg = model_config("mlp", (1, 8, 8), 10, width=32)
    data = DataSpec().to_dict()
    names = {}
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        names[name] = save_model(root / f"{name}.safetensors", init_model(cfg, seed), cfg,
                                 data=data, seed=seed)
    ends = [dict(init_model(cfg, s).state_dict()) for s in (0, 1)]
    mid = {k: (ends[0][k] + ends[1][k]) / 2 for k in ends[0]}
    names["curve"] = save_curve(root / "curve.safetensors", ParamPath([ends[0], mid, ends[1]]),
                                cfg, data=data)
    names["study"] = root / "tiny.toml"
    names["study"].write_text(digits_study(epochs=1))
    (root / "job").mkdir()
    names["dir"] = root / "job"
    return root, {k: str(v) for k, v in names.items()}


def _snapshot(path: Path):
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.is_dir())
            for p in sorted(path.rglob("*"))}


def test_every_writing_job_is_tried():
    assert sorted(ARGS) == WRITERS


@pytest.mark.parametrize("where", ["missing", "existing"])
@pytest.mark.parametrize("job", WRITERS)
def test_unwritable_output_is_one_line_exit_2(cli, tmp_path, monkeypatch, inputs, job, where):
    """`--out /proc/modeconn-missing` (to be created under /proc) and `--out /proc/self` (an
    existing directory nobody can add to): one line naming the path and the fix, nothing
    written anywhere (the inputs' folder and the working directory included)."""
    root, names = inputs
    monkeypatch.chdir(tmp_path)  # where a default output would land
    base = Path("/proc/modeconn-missing") if where == "missing" else Path("/proc/self")
    output = jobs.get(job).output
    out = base / f"out{output.suffix}" if output.kind == "file" else base
    argv = [job, *[a.format(**names) for a in ARGS[job]], "--out", str(out)]
    argv += ["--device", "cpu"] if job in DEVICE else []
    before = _snapshot(root)
    rc, stdout, err = cli(*argv)
    assert rc == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stdout + err, err
    what = "study directory" if job in STUDIES else f"output {KIND[output.kind]}"
    above = "/proc" if where == "missing" else base  # the folder that takes no new entries
    if out == base:  # the directory itself: created under /proc, or written into /proc/self
        expect = (f"cannot write {what} {out} (" if where == "existing" else
                  f"cannot create {what} {out}: {above} takes no new entries (")
    else:  # a file in it
        expect = f"cannot create {what} {out}: {above} takes no new entries ("
    assert lines[0].startswith("modeconn: error: " + expect), lines[0]
    assert lines[0].endswith("); choose a writable --out"), lines[0]
    assert _snapshot(root) == before
    assert list(tmp_path.iterdir()) == []


def test_read_only_file_system(tmp_path, monkeypatch):
    """A read-only file system (EROFS from mkdir, as a ro mount answers even root) names the
    reason; the folder is left as it was."""
    real = os.mkdir

    def read_only(path, *args, **kw):
        if Path(path).parent == tmp_path:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(UsageError) as e:
        io.output_dir(tmp_path / "run")
    assert str(e.value) == (f"cannot create output directory {tmp_path / 'run'}: {tmp_path} takes "
                            "no new entries (Read-only file system); choose a writable --out")
    with pytest.raises(UsageError, match=r"^cannot write output directory .* \(Read-only file "
                                         r"system\); choose a writable --out$"):
        io.output_dir(tmp_path, allowed=True)
    with pytest.raises(UsageError, match=r"^cannot create output file .*s\.json: .* takes no new "
                                         r"entries \(Read-only file system\)"):
        io.check_output_file(tmp_path / "s.json")
    assert list(tmp_path.iterdir()) == []


def test_the_probe_leaves_no_trace(tmp_path):
    """A writable output passes; the folder it probes keeps its entries and its times (resuming
    a complete run touches nothing)."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "f").write_text("x")
    before = {p: os.stat(p).st_mtime_ns for p in (tmp_path, tmp_path / "run")}
    assert io.output_dir(tmp_path / "run", allowed=True) == tmp_path / "run"
    assert io.output_dir(tmp_path / "new") == tmp_path / "new"
    assert io.check_output_file(tmp_path / "run" / "g.json") == tmp_path / "run" / "g.json"
    assert {p: os.stat(p).st_mtime_ns for p in before} == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f", "run"]

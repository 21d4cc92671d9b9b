"""The layers of DESIGN.md where import-linter cannot see them: jobs import no face, even inside a
function, and the face commands still reach the one job registry (the CLI, `modeconn.jobs.run`,
spawned study workers)."""

from __future__ import annotations

import ast
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import modeconn.jobs

SRC = Path(__file__).resolve().parents[1] / "src"
JOBS = SRC / "modeconn" / "jobs"
FACES = ("modeconn.studies", "modeconn.report", "modeconn.cli")
FACE_COMMANDS = {"run": "modeconn.studies.commands", "results": "modeconn.studies.commands",
                 "report": "modeconn.report.command", "demo": "modeconn.studies.protocols.demo",
                 "fusion": "modeconn.studies.protocols.fusion"}
# Commands of a face that share a job's name: the job runs one point, the command its grid.
FACE_OVER_JOB = {"lmc": ("modeconn.studies.protocols.lmc", "modeconn.jobs.lmc")}


def imported_modules(path: Path) -> set[str]:
    """Every name `path` (a module of modeconn.jobs) imports, at any depth, as absolute dotted
    names: `from ..studies import run_study` is modeconn.studies.run_study."""
    package = ["modeconn", "jobs"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


def test_jobs_import_no_face():
    """No job module imports a study, the report or the CLI, not even lazily
    inside a function (where the import-linter contract does not look either way)."""
    upward = sorted((path.name, m) for path in JOBS.rglob("*.py") for m in imported_modules(path)
                    if m.startswith(FACES))
    assert upward == []


def test_relative_imports_resolve_to_their_modules():
    """The scan above reads `from ..studies import x` as modeconn.studies (checked on a file)."""
    found = imported_modules(JOBS / "_registry.py")
    assert {"modeconn.errors.UsageError", "modeconn.jobs._jobs"} <= found


def _names_in_fresh_process(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_face_commands_are_registered_after_import_modeconn_jobs():
    """`import modeconn.jobs` alone (no CLI, no studies imported by hand) knows run, results,
    report, demo and fusion, each from its face module."""
    out = _names_in_fresh_process(
        "import modeconn.jobs as j\n"
        "for n in j.names(): print(n, j.get(n).run.__module__)\n")
    registered = dict(line.split() for line in out.splitlines())
    for name, module in FACE_COMMANDS.items():
        assert registered.get(name) == module, (name, registered.get(name))
    assert registered["train"] == "modeconn.jobs.train"
    out = _names_in_fresh_process(
        "import modeconn.jobs as j\n"
        "for n in j.names(): print(n, j.command(n).run.__module__, j.get(n).run.__module__)\n")
    both = {line.split()[0]: tuple(line.split()[1:]) for line in out.splitlines()}
    for name, (face, job) in FACE_OVER_JOB.items():
        assert both[name] == (face, job), name


def test_a_spawned_worker_knows_every_command():
    """A spawn-started process (as the study runner's local workers and SLURM's unpickling of
    studies.worker.run_job are) finds the same commands as this one."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        names = pool.apply(modeconn.jobs.names)
    assert names == modeconn.jobs.names()
    assert set(FACE_COMMANDS) <= set(names)

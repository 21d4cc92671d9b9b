"""Atomic file output: permissions follow the umask, unchanged files are left alone."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from modeconn import plots
from modeconn.checkpoint import save_model
from modeconn.io import write_csv, write_json, write_text
from modeconn.models import build_model, model_config


@pytest.fixture
def umask():
    """Set a umask for the test; restore the previous one afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_respect_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    write_text(tmp_path / "a.txt", "x\n")
    write_json(tmp_path / "a.json", {"a": 1})
    write_csv(tmp_path / "a.csv", [{"a": 1}])
    cfg = model_config("mlp", (1, 8, 8), 10, width=4)
    save_model(tmp_path / "m.safetensors", build_model(cfg), cfg)
    import matplotlib.pyplot as plt
    plots.save(plt.figure(), tmp_path / "f.png", pdf=True)
    names = ["a.txt", "a.json", "a.csv", "m.safetensors", "f.png", "f.pdf"]
    assert {n: oct(_mode(tmp_path / n)) for n in names} == {n: oct(expected) for n in names}
    # Replacing a file gives the new file the umask's mode too.
    write_text(tmp_path / "a.txt", "y\n")
    assert _mode(tmp_path / "a.txt") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary left


def test_changed_only_leaves_an_identical_file_untouched(tmp_path):
    path = tmp_path / "a.json"
    assert write_json(path, {"a": 1}, changed_only=True)
    mtime = path.stat().st_mtime_ns
    assert not write_json(path, {"a": 1}, changed_only=True)
    assert path.stat().st_mtime_ns == mtime
    assert write_json(path, {"a": 2}, changed_only=True)
    assert path.read_text() == '{\n  "a": 2\n}\n'


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "a.csv"
    write_csv(path, [{"a": 1}])
    with pytest.raises(TypeError):
        write_json(path, {"a": torch})  # not serialisable
    assert path.read_bytes() == b"a\r\n1\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]

"""Atomic file output: everything is written to a temporary name and renamed when complete."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import UsageError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` when it is not a directory."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse an output directory that is an existing file or lies under one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is an existing file, not a directory; choose a "
                         "directory path")
    if (above := _file_above(path)) is not None:
        raise UsageError(f"{option} {path}: {above} is a file, not a directory; choose another path")
    return path


def check_output_file(path: str | os.PathLike, overwrite: bool = False,
                      option: str = "--out", example: str = "FILE") -> Path:
    """Refuse an output file path that is a directory, lies under a file, or (unless
    `overwrite`) exists."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; name the file to write, e.g. "
                         f"{path / example}")
    if (above := _file_above(path)) is not None:
        raise UsageError(f"{option} {path}: {above} is a file, not a directory; choose another path")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists; choose another {option} or pass --overwrite")
    return path


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh directory beside `path`; when the block succeeds its files move into `path`
    (created if missing), otherwise it is removed: nothing half-written reaches `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()  # os.mkdir, so the umask applies as to any directory the user creates
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        else:
            for item in tmp.iterdir():
                target = path / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
              columns: list[str] | None = None) -> None:
    """Write dict rows as CSV atomically; columns default to the union of keys in first-seen order."""
    rows = list(rows)
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV written by `write_csv` into dict rows (values stay strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(v: Any) -> Any:
    if isinstance(v, float):  # numpy floats too: plain repr, full precision
        return repr(float(v))
    return v


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")

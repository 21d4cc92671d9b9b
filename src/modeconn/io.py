"""Atomic file output: everything is written to a temporary name and renamed when complete."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import UsageError


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"


_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")  # what _temporary_name makes


def remove_temporaries(directory: str | os.PathLike) -> None:
    """Remove the temporary files that a process killed while writing left in `directory`: the
    files they were to become are either complete already or written again by whoever resumes."""
    directory = Path(directory)
    if directory.is_dir():
        for path in directory.iterdir():
            if _TEMPORARY.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary file is created with mode 0666 less the umask (as `open` would create
    `path`), not tempfile's 0600: results stay readable by whoever may read the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp_path = _temporary_name(path)
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    os.close(fd)
    mode = stat.S_IMODE(os.stat(tmp_path).st_mode)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # writers that re-create the file (safetensors) make it 0600
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


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Refuse an output directory that is an existing file, lies under one, or cannot be
    created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is an existing file, not a directory; choose a "
                         "directory path")
    if (above := _file_above(path)) is not None:
        raise UsageError(f"{what} {path}: {above} is a file, not a directory; choose another path")
    _check_writable(path, path, what)
    return path


def _check_writable(folder: Path, target: Path, what: str) -> None:
    """Refuse `target` (`folder` or a file in it) when `folder`, or the nearest existing folder
    above it where it would be created, does not take a new entry: a read-only file system, a folder
    without write permission, /proc or /sys. Tried, not predicted (permission bits say nothing
    for root), before anything runs: a sub-folder is made and removed, and the folder's times
    are put back, so a refused or resumed command leaves it as it was."""
    base = folder if folder.exists() else next((p for p in folder.parents if p.exists()), folder)
    try:
        times = os.stat(base)
        probe = base / f".modeconn-probe.{secrets.token_hex(6)}"
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        verb = "write" if target.exists() else "create"
        where = (f"cannot write {what} {target} ({reason})" if base == target else
                 f"cannot {verb} {what} {target}: {base} takes no new entries ({reason})")
        raise UsageError(f"{where}; choose a writable --out") from None
    with contextlib.suppress(OSError):  # only the owner may set times; nothing else depends on it
        os.utime(base, ns=(times.st_atime_ns, times.st_mtime_ns))


WAYS_ON = {"overwrite": "allow overwriting it (--overwrite)",
           "resume": "continue it (--resume)"}


def output_dir(path: str | os.PathLike, *, allowed: bool = False, way: str = "overwrite") -> Path:
    """An output directory: refused when it is a file or lies under one, and when it exists and is
    not empty unless `allowed` (the caller overwrites or continues it, `way`)."""
    path = check_output_dir(path)
    if path.exists() and any(path.iterdir()) and not allowed:
        raise UsageError(f"output directory {path} already exists and is not empty; choose "
                         f"another one or {WAYS_ON[way]}")
    return path


def check_output_file(path: str | os.PathLike, overwrite: bool = False,
                      what: str = "output file", example: str = "FILE") -> Path:
    """Refuse an output file path that is a directory, lies under a file, or (unless
    `overwrite`) exists."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory; name the file to write, e.g. "
                         f"{path / example}")
    if (above := _file_above(path)) is not None:
        raise UsageError(f"{what} {path}: {above} is a file, not a directory; choose another path")
    if path.exists() and not overwrite:
        raise UsageError(f"{what} {path} already exists; choose another or allow overwriting it "
                         "(--overwrite)")
    _check_writable(path.parent, path, what)
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


def write_bytes(path: str | os.PathLike, data: bytes, changed_only: bool = False) -> bool:
    """Write bytes atomically; with `changed_only`, leave a file that already holds exactly
    `data` untouched (not even rewritten). Return whether the file was written."""
    path = Path(path)
    if changed_only and path.is_file() and path.stat().st_size == len(data) \
            and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def write_text(path: str | os.PathLike, text: str, changed_only: bool = False) -> bool:
    """Write UTF-8 text atomically (see `write_bytes` for `changed_only`)."""
    return write_bytes(path, text.encode(), changed_only)


def json_text(obj: Any) -> str:
    """The text `write_json` writes for `obj`: strict JSON, where a number that is not finite
    (NaN, inf: no JSON number spells them) is null."""
    return json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any, changed_only: bool = False) -> bool:
    """Write JSON atomically (indented, keys in insertion order; non-finite numbers as null)."""
    return write_text(path, json_text(obj), changed_only)


def read_json(path: str | os.PathLike, nulls_as_nan: bool = False) -> Any:
    """A JSON file; with `nulls_as_nan`, every null reads as NaN (the number `write_json` could
    not write), for documents where null means nothing else."""
    obj = json.loads(Path(path).read_text())
    return _nan_for_null(obj) if nulls_as_nan else obj


def _finite(o: Any) -> Any:
    """`o` with non-finite floats as None; arrays and tensors as lists, paths as text."""
    if isinstance(o, float):  # numpy float64 too
        return o if math.isfinite(o) else None
    if isinstance(o, Mapping):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    return _finite(_json_default(o))


def _nan_for_null(o: Any) -> Any:
    if o is None:
        return math.nan
    if isinstance(o, dict):
        return {k: _nan_for_null(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_nan_for_null(v) for v in o]
    return o


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
              columns: list[str] | None = None, changed_only: bool = False) -> bool:
    """Write dict rows as CSV atomically; columns default to the union of keys in first-seen order."""
    rows = list(rows)
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k, "")) for k in columns})
    return write_text(path, buf.getvalue(), changed_only)


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

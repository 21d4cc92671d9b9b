"""Performance choices measured on this machine, not constants tuned on another.

Each choice is a small timed probe, run the first time it is needed (tens of milliseconds to
about a second) and its answer kept in a file per machine — `$MODECONN_TUNING_DIR`, else
``~/.cache/modeconn/tuning``, named by the CPU model, its kernels' instruction set, the torch
version and the thread count — so every later run on the machine takes the same decisions.
`MODECONN_TUNING=defaults` skips every probe and takes the defaults (what the code did before it
measured). `modeconn calibrate` (or `calibrate()`) takes every probe again and prints what it
chose, with the timings.

No choice here changes a number a job computes, only how fast it is computed: the evaluation
engine's points per chunk (each point's arithmetic is the same in any chunk) and how a training
batch is gathered (`index_select` or indexing: the same rows); tests check both. Choices that
would change numbers are not made by measurement: the optimizers' fused kernels round differently
from their foreach ones in a real training loop (checked: SGD with momentum and weight decay
differs after a few steps), and convolution kernels differ between memory layouts, so those stay
fixed policies (`train.make_optimizer`, `evaluate.prefers_channels_last`) that every run on a
machine shares and a resumed run repeats.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .io import write_json

DEFAULTS: dict[str, Any] = {
    # Bytes of one activation tensor of a chunk of points (points × batch × widest layer × 4):
    # the engine's vmap path streams every elementwise op through it, so past the caches it runs
    # at memory speed; the working set is where that starts (benchmarks/RESULTS.md).
    "eval_working_set": 8 * 2**20,
    "gather": "index_select",  # how a training batch is gathered from in-memory tensors
}
_PROBES: dict[str, Callable[[], tuple[Any, dict[str, float]]]] = {}


def _probe(name: str):
    def register(fn):
        _PROBES[name] = fn
        return fn
    return register


def machine() -> str:
    """This machine as the tuning file names it: CPU model, kernel ISA, torch, threads."""
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return (f"{model} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads")


def _path() -> Path:
    base = os.environ.get("MODECONN_TUNING_DIR")
    folder = Path(base) if base else Path.home() / ".cache" / "modeconn" / "tuning"
    return folder / f"{hashlib.sha256(machine().encode()).hexdigest()[:16]}.json"


@functools.cache
def _stored() -> dict[str, Any]:
    try:
        data = json.loads(_path().read_text())
        return data.get("choices", {}) if data.get("machine") == machine() else {}
    except (OSError, ValueError, AttributeError):
        return {}


_SESSION: dict[str, Any] = {}


def choice(name: str) -> Any:
    """The choice `name` for this machine: stored, else measured now (and stored), else the
    default (with MODECONN_TUNING=defaults, or when the probe fails)."""
    if os.environ.get("MODECONN_TUNING") == "defaults":
        return DEFAULTS[name]
    if name in _SESSION:
        return _SESSION[name]
    stored = _stored()
    if name in stored:
        _SESSION[name] = stored[name]
        return stored[name]
    try:
        # The probes draw random tensors: off the global generator, or the first run on a
        # machine would train with another dropout stream than every later run.
        with torch.random.fork_rng(devices=[]):
            value, _ = _PROBES[name]()
    except Exception:  # noqa: BLE001 — a probe that cannot run leaves the default
        value = DEFAULTS[name]
    _SESSION[name] = value
    _store({name: value})
    return value


def _store(values: dict[str, Any], timings: dict[str, Any] | None = None) -> None:
    """Merge `values` into this machine's tuning file (best effort: a read-only home keeps the
    choices for this process only)."""
    path = _path()
    try:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}  # none yet, or unreadable: written afresh
        if not isinstance(data, dict) or data.get("machine") != machine():
            data = {"machine": machine()}
        data.setdefault("choices", {}).update(values)
        if timings:
            data.setdefault("timings", {}).update(timings)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
    except (OSError, ValueError):
        pass
    _stored.cache_clear()


def calibrate() -> dict[str, Any]:
    """Take every probe again; store and return {name: (choice, timings)}."""
    out = {}
    for name, probe in _PROBES.items():
        value, timings = probe()
        out[name] = (value, timings)
        _SESSION[name] = value
    _store({k: v for k, (v, _) in out.items()}, {k: t for k, (_, t) in out.items()})
    return out


def _best(fn: Callable[[], Any], repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@_probe("eval_working_set")
def _eval_working_set() -> tuple[int, dict[str, float]]:
    """Seconds per sample·point of a stacked two-layer forward (batched matmul, bias, ReLU, as
    the engine's vmap path runs an MLP) at chunks of 1-8 points of 2048 samples × 512 units
    (4-32 MiB per activation tensor): the working set of the fastest."""
    batch, width = 2048, 512
    x = torch.randn(batch, width)
    timings = {}
    with torch.no_grad():
        for points in (1, 2, 4, 8):
            w = torch.randn(points, width, width) / width**0.5
            bias = torch.randn(points, 1, width)

            def run(w=w, bias=bias):
                h = torch.relu(torch.matmul(x, w.transpose(1, 2)) + bias)
                return torch.relu(torch.bmm(h, w.transpose(1, 2)) + bias)

            timings[str(points * batch * width * 4)] = _best(run, 2) / (points * batch)
    best = min(timings, key=timings.get)
    return int(best), timings


@_probe("gather")
def _gather() -> tuple[str, dict[str, float]]:
    """Batches of 32 and 512 rows of a 3×32×32 float tensor, by `index_select` and by indexing."""
    x = torch.randn(4096, 3, 32, 32)
    idx = [torch.randperm(4096)[:b] for b in (32, 512)]
    timings = {
        "index_select": sum(_best(lambda i=i: x.index_select(0, i), 5) for i in idx),
        "index": sum(_best(lambda i=i: x[i], 5) for i in idx),
    }
    return min(timings, key=timings.get), timings


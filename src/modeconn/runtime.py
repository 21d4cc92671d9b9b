"""The runtime floor: the device a run uses, the environment record (env.json) and progress bars."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ._version import __version__
from .errors import UsageError

# The terminal line of this process's bars: a study's local worker k draws on line k, under the
# study's overall bar (None: tqdm's own placement).
BAR_POSITION: int | None = None


def progress(total: int, desc: str, quiet: bool = False, initial: int = 0) -> tqdm:
    """A tqdm bar, silent with `quiet` or when stderr is not a terminal."""
    return tqdm(total=total, initial=initial, desc=desc, leave=False, position=BAR_POSITION,
                disable=quiet or not sys.stderr.isatty())


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device} asked for but no CUDA device is available; use auto "
                         "or cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UsageError(f"device {device} asked for but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s); use auto, cuda or cuda:0")
    return torch.device(device)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and git SHA, for env.json."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {"modeconn": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device),
            "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "threads": torch.get_num_threads(), "git_sha": sha}

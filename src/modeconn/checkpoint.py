"""Checkpoints: safetensors files with JSON metadata; loading never unpickles anything.

A floor: it reads, writes and checks files and their metadata; rebuilding the module a
checkpoint describes is science (`modeconn.models.loading`).

Metadata keys (all JSON): ``modeconn_version``, ``kind`` (model | curve | train-state),
``architecture`` (the model config), ``data`` (the DataSpec), ``seed`` and any extras.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from . import artefacts
from ._version import __version__
from .errors import UsageError
from .io import atomic_path


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors by name plus decoded metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> dict[str, Any]:
        return self.meta["architecture"]

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "model")


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                    **meta: Any) -> Path:
    """Write tensors and JSON-encoded metadata to `path` atomically."""
    path = Path(path)
    header = {"modeconn_version": __version__, **meta}
    encoded = {k: json.dumps(v) for k, v in header.items()}
    data: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():  # tied weights share memory, which safetensors refuses
        t = v.detach().to("cpu").contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        data[k] = t
    raw = memoryview(save(data, metadata=encoded))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(_canonical_header(raw))
        f.write(raw[8 + struct.unpack("<Q", raw[:8])[0]:])
    return path


def _canonical_header(raw: memoryview) -> bytes:
    """The length-prefixed header of a safetensors file with its metadata keys sorted: safetensors
    writes them in hash order, which would make files of equal content differ from run to run."""
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(bytes(raw[8:8 + n]))
    meta = header.pop("__metadata__", None)
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"])
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | dict(entries)
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors keeps it
    return struct.pack("<Q", len(text)) + text


def save_model(path: str | os.PathLike, model: nn.Module, architecture: dict[str, Any],
               **meta: Any) -> Path:
    """Save a model's parameters and buffers with the config that rebuilds it."""
    return save_checkpoint(path, dict(model.state_dict()), kind="model",
                           architecture=architecture, **meta)


_PICKLE_HINT = ("modeconn never unpickles files; convert it once in trusted code with "
                "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> Checkpoint:
    """Read and validate a checkpoint; refuse pickles, torch.save files and damaged files.

    A model or curve checkpoint (`kind` "model" or "curve": what every science command asks for)
    is also refused when a floating tensor holds NaN or inf: everything computed from it would be
    NaN, or worse, look plausible. Train-state files are not checked (resuming a run replays it
    as it was), nor files read without a kind (`modeconn info` lists what is not finite)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"checkpoint {path} is a directory, not a file; {_inside(path)}")
    if not path.is_file():
        raise UsageError(f"checkpoint {path} not found; check the path")
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors file starts with its header length (8 bytes, little-endian) and then '{';
    # only a file that does not look like that is checked for pickle/zip signatures.
    if len(head) < 9 or struct.unpack("<Q", head[:8])[0] > path.stat().st_size - 8 \
            or head[8:9] != b"{":
        if head[:2] == b"PK":
            raise UsageError(f"{path} is a torch.save (zip/pickle) file, not safetensors; "
                             f"{_PICKLE_HINT}")
        if head[:1] == b"\x80":
            raise UsageError(f"{path} is a pickle file, not safetensors; {_PICKLE_HINT}")
        raise UsageError(f"{path} is not a valid safetensors file (bad header); "
                         "re-create it with modeconn or safetensors")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0]}); "
                         "re-create it with modeconn or safetensors") from None
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items()}
    except json.JSONDecodeError:
        meta = {}
    if "architecture" not in meta:
        raise UsageError(f"{path} has no modeconn metadata (architecture); it was not written by "
                         "modeconn — save it with modeconn.checkpoint.save_model")
    for key in ("architecture", "data"):
        if key in meta and not isinstance(meta[key], dict):
            raise UsageError(f"{path}: metadata {key!r} is {type(meta[key]).__name__} JSON, not an "
                             "object; the file is damaged or was edited — re-create it with "
                             "modeconn.checkpoint.save_model")
    ckpt = Checkpoint(path, tensors, meta)
    if kind is not None and ckpt.kind != kind:
        raise UsageError(f"{path} holds a {ckpt.kind} checkpoint, expected a {kind}; "
                         f"pass a {kind} checkpoint")
    if kind in ("model", "curve") and (bad := non_finite(tensors)):
        name, counts = next(iter(bad.items()))
        more = f", {len(bad) - 1} more tensors too" if len(bad) > 1 else ""
        raise UsageError(f"{path}: tensor {name!r} holds {counts}{more}{_diverged(path)}: "
                         "results computed from it would be NaN or meaningless; retrain (e.g. "
                         "with a lower --lr) or pick an earlier checkpoint")
    return ckpt


def non_finite(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """{name: 'N NaN and M inf values'} of the floating tensors that are not all finite, in
    file order. One `isfinite` pass per tensor; values are counted only for the bad ones."""
    out = {}
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            nan = int(torch.isnan(t).sum())
            inf = t.numel() - nan - int(torch.isfinite(t).sum())
            out[name] = " and ".join(f"{n} {what} value{'s' if n != 1 else ''}"
                                     for n, what in ((nan, "NaN"), (inf, "inf")) if n)
    return out


def _diverged(path: Path) -> str:
    """' (its training diverged: see DIR/status.json)' when the run beside the file says so."""
    try:
        status = artefacts.STATUS.read(path.parent)
    except (OSError, ValueError):
        return ""
    if isinstance(status, dict) and status.get("status") == "diverged":
        return f" (its training diverged: see {artefacts.STATUS.path(path.parent)})"
    return ""


def _inside(folder: Path) -> str:
    """Which checkpoint files in `folder` (or its member folders) to pass instead."""
    found = sorted(p for p in folder.glob("*.safetensors")
                   if not p.name.endswith(artefacts.TRAIN_STATE.name))  # resume states too
    found += sorted(folder.glob(f"*/{artefacts.MODEL.name}"))
    if not found:
        return "pass a .safetensors checkpoint file (e.g. RUN/MEMBER/model.safetensors)"
    names = ", ".join(str(p) for p in found[:4]) + (", ..." if len(found) > 4 else "")
    return f"pass one of the checkpoint files in it: {names}"


def describe(ckpt: Checkpoint) -> str:
    """Human-readable summary of a checkpoint (used by `modeconn info`)."""
    n_params = sum(v.numel() for v in ckpt.tensors.values())
    lines = [f"file          {ckpt.path}", f"kind          {ckpt.kind}",
             f"tensors       {len(ckpt.tensors)} ({n_params:,} values)"]
    for key in sorted(k for k in ckpt.meta if k != "kind"):  # kind is the second line
        lines.append(f"{key:<13} {json.dumps(ckpt.meta[key])}")
    for name, counts in non_finite(ckpt.tensors).items():
        lines.append(f"{'not finite':<13} {name}: {counts}")
    return "\n".join(lines)


def _evaluation_data(ckpt: Checkpoint) -> tuple[str, str] | None:
    """(dataset, input normalisation) a checkpoint's model is evaluated on, None when unrecorded
    (checkpoints written before the data metadata existed)."""
    data = ckpt.meta.get("data")
    if not isinstance(data, dict) or "dataset" not in data:
        return None
    return str(data["dataset"]), "unnormalised" if data.get("norm") == "none" else "normalised"


def check_same_dataset(ckpts: list[Checkpoint], allow_mismatch: bool = False) -> None:
    """Refuse checkpoints trained on different datasets (or with and without input normalisation):
    everything is evaluated on the first one's data. `allow_mismatch` lets them through."""
    if allow_mismatch or not ckpts:
        return
    ref, ref_data = ckpts[0], _evaluation_data(ckpts[0])
    for c in ckpts[1:]:
        data = _evaluation_data(c)
        if ref_data is None or data is None or data == ref_data:
            continue
        if data[0] != ref_data[0]:
            what = f"{ref.path} was trained on {ref_data[0]}, {c.path} on {data[0]}"
        else:
            what = (f"{ref.path} has {ref_data[1]} inputs, {c.path} {data[1]} inputs "
                    "(--normalise none vs global/subset)")
        raise UsageError(f"{what}; all are evaluated on the first one's data — pass checkpoints "
                         "trained on one dataset, or --allow-dataset-mismatch to do it anyway")


def check_same_architecture(ckpts: list[Checkpoint]) -> None:
    """Refuse model checkpoints whose architectures differ from the first one's, naming what
    differs."""
    ref = ckpts[0]
    for c in ckpts[1:]:
        if c.architecture != ref.architecture:
            diff = {k: (ref.architecture.get(k), c.architecture.get(k))
                    for k in set(ref.architecture) | set(c.architecture)
                    if ref.architecture.get(k) != c.architecture.get(k)}
            shapes = diff.get("input_shape")
            if set(diff) == {"input_shape"} and shapes[0][1:] == shapes[1][1:]:
                raise UsageError(
                    f"{ref.path} reads {shapes[0][0]} input channels and {c.path} "
                    f"{shapes[1][0]}: models trained on different numbers of bands have input "
                    "layers of different shapes and cannot be combined; train them on band sets "
                    "of one size (e.g. bands:B04,B03,B02|B08,B11,B12)")
            raise UsageError(f"{c.path} has a different architecture from {ref.path} "
                             f"({', '.join(f'{k}: {a} vs {b}' for k, (a, b) in sorted(diff.items()))}); "
                             "pass checkpoints of one architecture")


def params_of(ckpt: Checkpoint, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's model tensors (parameters and buffers) as a parameter dict."""
    return {k: v.to(device) for k, v in ckpt.tensors.items() if "/" not in k}

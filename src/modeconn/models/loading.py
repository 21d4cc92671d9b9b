"""Modules from model checkpoints: the architecture in a checkpoint's metadata, built by the zoo,
with the checkpoint's parameters and buffers loaded into it."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..checkpoint import Checkpoint, check_same_architecture, check_same_dataset, load_checkpoint
from ..errors import UsageError
from . import build_model


def rebuild(ckpt: Checkpoint, device: torch.device | str = "cpu") -> nn.Module:
    """The module of a model checkpoint, with its parameters and buffers loaded."""
    try:
        model = build_model(ckpt.architecture)
    except UsageError as e:
        raise UsageError(f"{ckpt.path}: metadata architecture cannot build a model ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{ckpt.path}: metadata architecture is incomplete or damaged "
                         f"({type(e).__name__}: {e}); re-create it with "
                         "modeconn.checkpoint.save_model") from None
    state = {k: v for k, v in ckpt.tensors.items() if "/" not in k}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0:2]
        raise UsageError(f"{ckpt.path}: tensors do not match its architecture "
                         f"({' '.join(first)}); the file is damaged or was edited") from None
    return model.to(device)


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[nn.Module, Checkpoint]:
    """Load a model checkpoint and rebuild its module."""
    ckpt = load_checkpoint(path, kind="model")
    return rebuild(ckpt, device), ckpt


def load_same_architecture(paths: list[str | os.PathLike], device: torch.device | str = "cpu",
                           allow_dataset_mismatch: bool = False
                           ) -> tuple[nn.Module, list[Checkpoint]]:
    """Load model checkpoints that must share one architecture and (unless
    `allow_dataset_mismatch`) one dataset; return the module and all of them."""
    ckpts = [load_checkpoint(p, kind="model") for p in paths]
    check_same_architecture(ckpts)
    check_same_dataset(ckpts, allow_dataset_mismatch)
    model = rebuild(ckpts[0], device)
    for c in ckpts[1:]:
        rebuild(c, "cpu")  # validates tensors against the architecture
    return model, ckpts

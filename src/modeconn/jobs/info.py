"""info: what checkpoints hold."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import describe, load_checkpoint
from ..options import option
from ._registry import JobConfig, Result, register


@dataclass(frozen=True, kw_only=True)
class InfoConfig(JobConfig):
    job = "info"
    checkpoints: tuple[str, ...] = option(help="checkpoint files (.safetensors)", positional=True,
                                          nonempty=True)


@dataclass
class InfoResult(Result):
    descriptions: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return list(self.descriptions)


@register("info", InfoConfig, "show what a checkpoint holds", None)
def run_info(config: InfoConfig, out: Path | None = None) -> InfoResult:
    """A readable description of each checkpoint (nothing is written)."""
    return InfoResult(None, [describe(load_checkpoint(p)) for p in config.checkpoints])

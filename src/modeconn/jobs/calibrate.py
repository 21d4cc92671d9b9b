"""calibrate: measure this machine's performance choices again (`modeconn.tuning`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import tuning
from ._registry import JobConfig, Result, register


@dataclass(frozen=True, kw_only=True)
class CalibrateConfig(JobConfig):
    job = "calibrate"


@dataclass
class CalibrateResult(Result):
    choices: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"machine: {tuning.machine()}"]
        for name, (value, timings) in self.choices.items():
            times = ", ".join(f"{k} {v * 1e6:.3g} µs" for k, v in timings.items())
            out.append(f"{name}: {value}  ({times})")
        return out + [f"kept in {tuning._path()}"]


@register("calibrate", CalibrateConfig, "measure this machine's performance choices again "
                                        "(they change no result, only speed)", None)
def run_calibrate(config: CalibrateConfig, out: Path | None = None) -> CalibrateResult:
    """Every probe of `modeconn.tuning` taken again and stored for this machine."""
    return CalibrateResult(None, tuning.calibrate())

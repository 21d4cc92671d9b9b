"""Learning-rate schedules as pure functions of training progress (so resuming needs no state)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError

SCHEDULES = ("constant", "step", "cosine", "curve", "cyclic")


@dataclass(frozen=True)
class Schedule:
    """lr(epoch, fraction of the epoch done) = base_lr · factor · warm-up factor."""

    kind: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    cycle: int = 1  # cyclic: epochs per cycle
    low: float = 0.01  # curve/cyclic: lowest factor
    start: int = 1  # curve: the number the first epoch counts as
    warmup: float = 0.0  # epochs of linear warm-up

    def factor(self, epoch: int, frac: float, epochs: int) -> float:
        """Multiplier of the base learning rate at `epoch` (counted from 0) + `frac` of `epochs`."""
        t = (epoch + frac) / epochs
        if self.kind == "constant":
            f = 1.0
        elif self.kind == "step":
            f = self.gamma ** sum(epoch >= m for m in self.milestones)
        elif self.kind == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * t))
        elif self.kind == "curve":  # Garipov et al. 2018: once per epoch, epochs counted from 1
            a = (epoch + self.start) / epochs  # (from 0: the MPF reference's loop, `curve:0`)
            f = 1.0 if a <= 0.5 else 1.0 - (a - 0.5) / 0.4 * (1 - self.low) if a <= 0.9 else self.low
        else:  # cyclic (FGE): linear from 1 down to `low` and back up within each cycle
            c = ((epoch % self.cycle) + frac) / self.cycle
            f = (1 - 2 * c) * (1 - self.low) + self.low if c <= 0.5 else \
                (2 * c - 1) * (1 - self.low) + self.low
        done = epoch + frac
        if self.warmup > 0 and done < self.warmup:
            f *= (done + 1e-12) / self.warmup
        return f


def parse_schedule(text: str, warmup: float = 0.0) -> Schedule:
    """Parse 'constant', 'cosine', 'curve[:0]', 'step:30,60[@0.1]' or 'cyclic:4[@0.01]'."""
    if not (math.isfinite(warmup) and warmup >= 0):
        raise UsageError(f"the warm-up must be a number of epochs ≥ 0, got {warmup}")
    kind, _, arg = text.partition(":")
    if kind not in SCHEDULES:
        raise UsageError(f"unknown schedule {text!r}; use constant, cosine, curve[:0], "
                         "step:M1,M2[@GAMMA] or cyclic:EPOCHS[@LOW]")
    if kind == "curve" and arg:
        if arg not in ("0", "1"):
            raise UsageError(f"bad schedule {text!r}: curve counts epochs from 1 (Garipov et al.), "
                             "curve:0 from 0 (the MPF reference); write curve or curve:0")
        return Schedule("curve", start=int(arg), warmup=warmup)
    body, _, extra = arg.partition("@")
    try:
        if kind == "step":
            milestones = tuple(int(m) for m in body.split(",")) if body else ()
            gamma = float(extra) if extra else 0.1
            if not milestones or min(milestones) < 1 or not (math.isfinite(gamma) and gamma > 0):
                raise ValueError
            return Schedule("step", milestones, gamma, warmup=warmup)
        if kind == "cyclic":
            cycle = int(body or 4)
            low = float(extra) if extra else 0.01
            if cycle < 1 or not 0 < low <= 1:
                raise ValueError
            return Schedule("cyclic", cycle=cycle, low=low, warmup=warmup)
    except ValueError:
        raise UsageError(f"bad schedule {text!r}: step takes epochs >= 1 and GAMMA > 0, cyclic "
                         "EPOCHS >= 1 and LOW in (0, 1]; e.g. step:30,60@0.1 or cyclic:4@0.01"
                         ) from None
    if arg:
        raise UsageError(f"schedule {kind!r} takes no options; write just {kind}")
    return Schedule(kind, warmup=warmup)

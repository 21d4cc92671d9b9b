"""The epoch driver lives in `modeconn.train.loop`; this name stays importable (the README names it)."""

from .train.loop import Epoch, EpochDriver, LrAt, Order, check_finite, scheduled_lr, set_lr

__all__ = ["Epoch", "EpochDriver", "LrAt", "Order", "check_finite", "scheduled_lr", "set_lr"]

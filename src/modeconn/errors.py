"""Errors a user can fix: the CLI prints them as one line and exits with status 2."""


class UsageError(ValueError):
    """Bad input: the message names the problem and the fix."""


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""

    def __init__(self, epoch: int, step: int, loss: float,
                 fix: str = "lower the learning rate or add warm-up"):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"training diverged at epoch {epoch} step {step} (loss {loss}); {fix}")

"""Small shared helpers."""

from __future__ import annotations

import sys

from tqdm import tqdm

# The terminal line of this process's bars: a study's local worker k draws on line k, under the
# study's overall bar (None: tqdm's own placement).
BAR_POSITION: int | None = None


def progress(total: int, desc: str, quiet: bool = False, initial: int = 0) -> tqdm:
    """A tqdm bar, silent with `quiet` or when stderr is not a terminal."""
    return tqdm(total=total, initial=initial, desc=desc, leave=False, position=BAR_POSITION,
                disable=quiet or not sys.stderr.isatty())

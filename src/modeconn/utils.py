"""Small shared helpers."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(total: int, desc: str, quiet: bool = False, initial: int = 0) -> tqdm:
    """A tqdm bar, silent with `quiet` or when stderr is not a terminal."""
    return tqdm(total=total, initial=initial, desc=desc, leave=False,
                disable=quiet or not sys.stderr.isatty())

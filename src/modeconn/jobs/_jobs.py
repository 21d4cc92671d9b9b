"""Imports every job module so that each registers itself."""

from . import (
    curve,  # noqa: F401
    fge,  # noqa: F401
    interpolate,  # noqa: F401
)

"""Imports every job module so that each registers itself."""

from . import (
    ensemble,  # noqa: F401
    interpolate,  # noqa: F401
    landscape,  # noqa: F401
    sharpness,  # noqa: F401
)

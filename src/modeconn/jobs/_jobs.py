"""Imports every job module so that each registers itself."""

from . import (  # noqa: F401
    align,
    curve,
    ensemble,
    fge,
    interpolate,
    landscape,
    merge,
    sharpness,
)

"""Imports every job module so that each registers itself."""

from . import interpolate  # noqa: F401

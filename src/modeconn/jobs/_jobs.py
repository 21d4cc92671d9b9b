"""Imports every job module so that each registers itself."""

from . import align, interpolate, merge  # noqa: F401

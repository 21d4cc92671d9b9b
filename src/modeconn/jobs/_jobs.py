"""Imports every job module so that each registers itself."""

from . import (  # noqa: F401
    align,
    calibrate,
    continual,
    curve,
    ensemble,
    fge,
    info,
    interpolate,
    landscape,
    lmc,
    merge,
    merge_many,
    sharpness,
    train,
)

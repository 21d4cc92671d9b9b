"""Imports every job module so that each registers itself."""

from . import (  # noqa: F401
    align,
    calibrate,
    continual,
    curve,
    demo,
    ensemble,
    fge,
    fusion,
    info,
    interpolate,
    landscape,
    lmc,
    merge,
    merge_many,
    report,
    sharpness,
    study,
    train,
)

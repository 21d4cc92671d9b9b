"""Curves live in `modeconn.paths.curves`; this name stays importable (the README imports from it)."""

from .paths.curves import (
    CURVE_KINDS,
    Curve,
    CurveTrainer,
    compare_with_linear,
    fit_curve,
    load_curve,
    min_bends,
    path_ensemble,
    save_curve,
)

__all__ = ["CURVE_KINDS", "Curve", "CurveTrainer", "compare_with_linear", "fit_curve", "load_curve",
           "min_bends", "path_ensemble", "save_curve"]

"""Paths between models: parameter paths and their evaluation (`path`), loss barriers (`barrier`),
trained curves (`curves`) and loss landscapes (`landscape`)."""

from .barrier import DEFINITIONS, barrier, path_summary
from .curves import (
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
from .landscape import Plane, hessian_trace, hutchinson, loss_plane, plane, project_path
from .path import (
    PATH_KINDS,
    ParamPath,
    bezier_coefficients,
    check_compatible,
    check_tolerance,
    evaluate_path,
    grid,
    interpolate,
    linear_path,
    polychain_coefficients,
    summarize_path,
)

__all__ = ["CURVE_KINDS", "DEFINITIONS", "PATH_KINDS", "Curve", "CurveTrainer", "ParamPath", "Plane",
           "barrier", "bezier_coefficients", "check_compatible", "check_tolerance", "compare_with_linear",
           "evaluate_path", "fit_curve", "grid", "hessian_trace", "hutchinson", "interpolate",
           "linear_path", "load_curve", "loss_plane", "min_bends", "path_ensemble", "path_summary",
           "plane", "polychain_coefficients", "project_path", "save_curve", "summarize_path"]

"""Landscapes live in `modeconn.paths.landscape`; this name stays importable (the README imports
from it)."""

from .paths.landscape import Plane, hessian_trace, hutchinson, loss_plane, plane, project_path

__all__ = ["Plane", "hessian_trace", "hutchinson", "loss_plane", "plane", "project_path"]

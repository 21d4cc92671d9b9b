"""landscape: the loss on the plane through three checkpoints or through a curve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import artefacts, plots
from ..errors import UsageError
from ..evaluate import Evaluator
from ..options import option
from ..params import statistic_keys
from ..paths import linear_path
from ..paths.curves import load_curve
from ..paths.landscape import loss_plane, plane, project_path
from ..runtime import resolve_device
from ._inputs import (
    Combine,
    bn_reset_option,
    checkpoint_data,
    load_models,
    output_dir,
    record,
    split_tensors,
)
from ._registry import JobConfig, Output, Record, Result, register


@dataclass(frozen=True, kw_only=True)
class LandscapeConfig(Combine, JobConfig):
    job = "landscape"
    models: tuple[str, ...] = option((), "three checkpoints w0 w1 w2", positional=True)
    curve: str | None = option(None, "a curve checkpoint: its endpoints and middle bend")
    grid: int = option(21, "points per axis", low=2)
    range: tuple[float, ...] = option((-0.2, 1.2), "LOW,HIGH in units of |u| and |v_perp|")
    splits: tuple[str, ...] = option(("train", "test"), "splits to evaluate, comma-separated",
                                     choices=("train", "test"), nonempty=True)
    bn_reset: str = bn_reset_option(help="re-estimate BatchNorm statistics at every grid point "
                                         "(auto: when the model has BN)")
    pdf: bool = option(False, "also write the figure as PDF", setting=False)

    def check(self) -> None:
        super().check()
        if self.curve is not None and self.models:
            raise self.invalid("models", "must be left out when a curve is given (three "
                                         "checkpoints or a curve, not both)")
        if self.curve is None and len(self.models) != 3:
            raise self.invalid("models", "must be three checkpoints (or give a curve)")
        if len(self.range) != 2 or not self.range[0] < self.range[1]:
            raise self.invalid("range", "must be two numbers LOW,HIGH with LOW < HIGH")


@dataclass
class LandscapeResult(Result):
    dx: float = 0.0
    dy: float = 0.0
    grid: int = 0

    def records(self) -> list[Record]:
        return [({}, {"plane_u_norm": self.dx, "plane_v_norm": self.dy})]

    def lines(self) -> list[str]:
        return [f"plane |u| {self.dx:.3f}, |v_perp| {self.dy:.3f}; {self.grid}x{self.grid} points",
                *super().lines()]


@register("landscape", LandscapeConfig, "loss on the plane through three checkpoints or a curve",
          Output("output directory", writes=(*artefacts.names(
              artefacts.CONFIG, artefacts.ENV, artefacts.PLANE, artefacts.PLANE_INFO),
              "plane_*.png", "plane_*.pdf")))
def run_landscape(config: LandscapeConfig, out: Path) -> LandscapeResult:
    """plane.csv, plane.json and one contour figure per split of the plane through three points
    (a curve's endpoints and middle bend), with the paths projected onto it."""
    lo, hi = config.range
    if config.curve is not None:
        device = resolve_device(config.device)
        module, path, ckpt = load_curve(config.curve, device)
        if path.num_bends < 3:
            raise UsageError(f"{config.curve} has only {path.num_bends} bends; its plane needs a "
                             "middle bend (a polychain with 2 bends is the linear path)")
        w = [path.bends[0], path.bends[-1], path.bends[path.num_bends // 2]]
        names = ["A", "B", "bend"]
    else:
        models = load_models(config.models, config)
        module, device, w, ckpt = models.module, models.device, models.params, models.checkpoints[0]
        path, names = None, ["A", "B", "C"]
    out = output_dir(out, config.overwrite)
    pl = plane(*w, statistics=statistic_keys(module))
    data = checkpoint_data(ckpt, device, "full", config.data_dir)
    ev = Evaluator(module, split_tensors(data, config.splits), bn_data=data.train_x,
                   bn_reset=config.bn_reset, task=data.task)
    rows = loss_plane(pl, ev, config.grid, lo, hi)
    xs, ys = pl.grid(config.grid, lo, hi)
    paths = {"linear path": project_path(pl, linear_path(w[0], w[1]), 2)}
    if path is not None:
        paths[f"{path.kind} curve"] = project_path(pl, path, 61)
    marks = {n: pl.coordinates(p) for n, p in zip(names, w)}
    out.mkdir(parents=True, exist_ok=True)
    record(out, config, device)
    artefacts.PLANE.write(out, rows)
    artefacts.PLANE_INFO.write(out, {"dx": pl.dx, "dy": pl.dy, "proj": pl.proj, "grid": config.grid,
                                    "range": [lo, hi],
                                    "points": {n: list(m) for n, m in marks.items()},
                                    "paths": {k: {"x": v[0], "y": v[1]} for k, v in paths.items()},
                                    "bn_reset": ev.bn_reset})
    for split in config.splits:
        values = np.full((len(ys), len(xs)), np.nan)
        for r in rows:
            if r["split"] == split:
                values[r["j"], r["i"]] = r["loss"]
        fig = plots.plane_figure(xs, ys, values, paths, marks, title=f"{split} loss on the plane",
                                 label=f"{split} loss")
        plots.save(fig, out / f"plane_{split}.png", config.pdf)
    return LandscapeResult(out, pl.dx, pl.dy, config.grid)

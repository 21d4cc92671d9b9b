"""curve, curve-point, curve-ensemble: fit a curve between two checkpoints, take the model at t
on it, and score ensembles of points on it beside the linear path (and FGE snapshots)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import artefacts, plots
from ..checkpoint import save_checkpoint
from ..ensemble import ensemble_metrics
from ..errors import UsageError
from ..evaluate import Evaluator
from ..fge import snapshot_paths
from ..io import staged_dir
from ..options import option
from ..paths import linear_path
from ..paths.curves import (
    BEND_INITS,
    CURVE_KINDS,
    compare_with_linear,
    fit_curve,
    min_bends,
    path_ensemble,
    save_curve,
)
from ..train import TrainConfig
from ._inputs import (
    Combine,
    CurveModel,
    Overwrite,
    Runtime,
    bn_reset_option,
    load_curve_model,
    load_models,
    on_option,
    output_dir,
    output_file,
    quiet_option,
    record,
    split_tensors,
    training,
)
from ._registry import (
    JobConfig,
    Output,
    Record,
    Result,
    ensemble_line,
    loss_and_score,
    numbers,
    path_metrics,
    register,
    split_metrics,
)

HELP_CURVE = "a `modeconn curve` checkpoint (curve.safetensors)"


# ---------------------------------------------------------------- curve

@dataclass(frozen=True, kw_only=True)
class CurveConfig(Combine, TrainConfig, JobConfig):
    job = "curve"
    hidden = ("save_epochs", "eval_batch_size")
    a: str = option(help="model checkpoint at t = 0 (kept fixed)", positional=True)
    b: str = option(help="model checkpoint at t = 1 (kept fixed)", positional=True)
    kind: str = option("bezier", "Bezier curve or polygonal chain through the bends",
                       choices=CURVE_KINDS)
    bends: int = option(3, "bends including both endpoints")
    epochs: int = option(30, "passes over the training data", low=1)
    schedule: str = option("curve", "constant, cosine, curve[:0], step:M1,M2[@GAMMA], "
                                    "cyclic:EPOCHS[@LOW]")
    seed: int = option(0, "batch order and t samples", low=0)
    on: str = on_option("fit and evaluate on the whole training set (the union of the subsets) "
                        "or on model A's own subset")
    points: int = option(61, "evaluated points along the curve", low=2)
    splits: tuple[str, ...] = option(("train", "test"), "splits to evaluate, comma-separated",
                                     choices=("train", "test"), nonempty=True)
    bn_reset: str = bn_reset_option(help="re-estimate BatchNorm statistics at every point "
                                         "(auto: when the model has BN)")
    tolerance: float = option(0.01, "loss barrier counted as connected", low=0)
    bend_init: str = option("segment", "the middle bends start on the segment between A and B "
                                       "(Garipov et al.), or drawn by the layers' own random "
                                       "initialisation (the MPF reference)",
                            choices=tuple(BEND_INITS), later=True)
    pdf: bool = option(False, "also write PDF figures", setting=False)
    quiet: bool = quiet_option()

    def check(self) -> None:
        super().check()
        if self.bends < min_bends(self.kind):
            raise self.invalid("bends", f"must be at least {min_bends(self.kind)} for a "
                                        f"{self.kind} curve")


@dataclass
class CurveResult(Result):
    summary: dict = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)
    headline = ("test_loss_barrier", "test_error_barrier", "train_loss_barrier")

    def records(self) -> list[Record]:
        return [({"path": p}, path_metrics(self.summary[p], self.splits))
                for p in ("curve", "linear")]

    def lines(self) -> list[str]:
        out = []
        for split in self.splits:
            c, lin = self.summary["curve"][split], self.summary["linear"][split]
            out.append(f"{split}: loss barrier curve {c['loss']['linear']['barrier']:.4f} vs "
                       f"linear {lin['loss']['linear']['barrier']:.4f}; error barrier curve "
                       f"{c['error']['linear']['barrier']:.4f} vs linear "
                       f"{lin['error']['linear']['barrier']:.4f}")
        return out + super().lines()


@register("curve", CurveConfig, "fit a Bezier or polychain curve between two checkpoints",
          Output("output directory", writes=(*artefacts.names(
              artefacts.CONFIG, artefacts.ENV, artefacts.CURVE, artefacts.CURVE_METRICS,
              artefacts.CURVE_PATH, artefacts.BARRIER), "path.png", "path.pdf")))
def run_curve(config: CurveConfig, out: Path) -> CurveResult:
    """curve.safetensors, metrics.csv, path.csv (curve and linear path), barrier.json and
    path.png; a fit that diverges or fails leaves nothing in `out`."""
    cfg = training(config)
    models = load_models([config.a, config.b], config)
    final = output_dir(out, config.overwrite)
    data = models.data(config.on, config.data_dir)
    (a, b), (pa, pb), model = models.checkpoints, models.params, models.module
    ends = {"a": str(a.path), "b": str(b.path)}
    history: list[dict] = []
    with staged_dir(final) as staged:
        record(staged, config, models.device, data={**data.spec.to_dict(), "on": config.on})
        curve = fit_curve(model, pa, pb, data.train_x, data.train_y, cfg, config.kind,
                          config.bends, seed=config.seed, quiet=config.quiet, task=data.task,
                          bend_init=config.bend_init, on_epoch=lambda e, loss, lr: history.append(
                              {"epoch": e, "loss": loss, "lr": lr}))
        path = curve.path()
        artefacts.CURVE_METRICS.write(staged, history)
        save_curve(artefacts.CURVE.path(staged), path, a.architecture, data=data.spec.to_dict(),
                   endpoints=list(ends.values()), seed=config.seed, train=asdict(cfg))
        rows, summary = compare_with_linear(model, path, split_tensors(data, config.splits),
                                            data.train_x, config.points, config.bn_reset,
                                            config.tolerance, task=data.task)
        artefacts.CURVE_PATH.write(staged, rows)
        artefacts.BARRIER.write(staged, {**summary, "models": ends})
        fig = plots.path_figure({k: [r for r in rows if r["path"] == k]
                                 for k in ("curve", "linear")},
                                title=f"{config.kind} curve ({config.bends} bends) vs linear "
                                      f"path, {' → '.join(models.names)}", xlabel="t")
        plots.save(fig, staged / "path.png", config.pdf)
    return CurveResult(final, summary, list(config.splits))


# ---------------------------------------------------------------- curve-point

@dataclass(frozen=True, kw_only=True)
class CurvePointConfig(Runtime, JobConfig):
    job = "curve-point"
    curve: str = option(help=HELP_CURVE, positional=True)
    t: float = option(0.5, "position on the curve, in [0, 1]", low=0, high=1)
    bn_reset: str = bn_reset_option(help="re-estimate BatchNorm statistics at the point (auto: "
                                         "when the model has BN)")
    overwrite: bool = option(False, "replace the output file if it exists", setting=False)


@dataclass
class CurvePointResult(Result):
    t: float = 0.0
    metrics: dict = field(default_factory=dict)
    headline = ("test_loss", "test_acc")

    def records(self) -> list[Record]:
        return [({}, split_metrics(self.metrics))]

    def lines(self) -> list[str]:
        tr, te = self.metrics["train"], self.metrics["test"]
        return [f"t={self.t:g}: train {loss_and_score(tr)} | test {loss_and_score(te)}"] \
            + super().lines()


@register("curve-point", CurvePointConfig, "the model at t on a curve, as a model checkpoint",
          Output("the model checkpoint to write (.safetensors)", kind="file",
                 suffix=".safetensors"))
def run_curve_point(config: CurvePointConfig, out: Path) -> CurvePointResult:
    """The model at t on the curve (BatchNorm re-estimated when it has BN) as a model
    checkpoint."""
    out = output_file(out, config.overwrite, suffix=".safetensors", example=artefacts.CURVE_POINT.name)
    c = load_curve_model(config.curve, config)
    data = c.data("full", config.data_dir)
    splits = split_tensors(data)
    ev = Evaluator(c.module, splits, bn_data=data.train_x, bn_reset=config.bn_reset,
                   task=data.task)
    point = ev.bn_reestimated(c.path.point(config.t))
    # The point already holds its statistics: evaluate it as it is, without a second BN pass.
    (res,) = Evaluator(c.module, splits, bn_reset="off", task=data.task).evaluate([point])
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, point, kind="model", architecture=c.checkpoint.architecture,
                    data=c.checkpoint.meta.get("data", {}),
                    curve_point={"curve": str(c.checkpoint.path), "t": config.t,
                                 "bn_reset": ev.bn_reset})
    return CurvePointResult(out, config.t, res)


# ---------------------------------------------------------------- curve-ensemble

@dataclass(frozen=True, kw_only=True)
class CurveEnsembleConfig(Runtime, Overwrite, JobConfig):
    job = "curve-ensemble"
    curve: str = option(help=HELP_CURVE, positional=True)
    k: int = option(5, "points per path ensemble, endpoints included", low=2)
    fge: str | None = option(None, "also score the snapshots in this `modeconn fge --out` folder",
                             metavar="DIR")
    bn_reset: str = bn_reset_option()


@dataclass
class CurveEnsembleResult(Result):
    table: dict = field(default_factory=dict)
    headline = ("acc", "nll", "ece", "gain_acc")

    def records(self) -> list[Record]:
        return [({"ensemble": name}, numbers(m)) for name, m in self.table.items()]

    def lines(self) -> list[str]:
        return [ensemble_line(name, m) for name, m in self.table.items()] + super().lines()


def _fge_members(config: CurveEnsembleConfig, curve: CurveModel) -> tuple[list[str], list[dict]]:
    """Names and parameter dicts of the snapshots in the `fge` folder, refused unless they share
    the curve's architecture and dataset."""
    folder, ckpt = config.fge, curve.checkpoint
    snaps = load_models(snapshot_paths(folder), config)  # safetensors only
    if snaps.checkpoints[0].architecture != ckpt.architecture:
        raise UsageError(f"the FGE snapshots in {folder} have a different architecture from the "
                         f"curve {ckpt.path}; run modeconn fge on one of the curve's endpoints")
    data = [c.meta.get("data", {}).get("dataset") for c in (ckpt, snaps.checkpoints[0])]
    if data[0] != data[1]:
        raise UsageError(f"the FGE snapshots in {folder} were trained on {data[1]}, the curve on "
                         f"{data[0]}; run modeconn fge on one of the curve's endpoints")
    return [str(c.path) for c in snaps.checkpoints], snaps.params


@register("curve-ensemble", CurveEnsembleConfig,
          "ensembles of K points on a curve and on the linear path, beside the two endpoints "
          "(and FGE snapshots)",
          Output("output directory", writes=artefacts.names(
              artefacts.CONFIG, artefacts.ENV, artefacts.ENSEMBLE, artefacts.COMPARISON)))
def run_curve_ensemble(config: CurveEnsembleConfig, out: Path) -> CurveEnsembleResult:
    """ensemble.json and comparison.csv: the independent (endpoints), lmc, curve and fge
    ensembles on the test set."""
    c = load_curve_model(config.curve, config)
    fge_names, fge_points = _fge_members(config, c) if config.fge else ([], [])
    out = output_dir(out, config.overwrite)
    data = c.data("full", config.data_dir)
    ev = Evaluator(c.module, split_tensors(data, ["test"]), bn_data=data.train_x,
                   bn_reset=config.bn_reset, task=data.task)
    ends = [c.path.bends[0], c.path.bends[-1]]
    table = {
        "independent": {**ensemble_metrics(ev.probabilities(ends, "test"), data.test_y,
                                           task=data.task), "t": [0.0, 1.0]},
        "lmc": path_ensemble(linear_path(*ends), ev, config.k),
        "curve": path_ensemble(c.path, ev, config.k),
    }
    if fge_points:
        table["fge"] = ensemble_metrics(ev.probabilities(fge_points, "test"), data.test_y,
                                        task=data.task)
    out.mkdir(parents=True, exist_ok=True)
    record(out, config, c.device)
    artefacts.ENSEMBLE.write(out, {"curve": str(c.checkpoint.path), "k": config.k, **table,
                                       **({"fge_members": fge_names} if fge_names else {})})
    artefacts.COMPARISON.write(out, [{"ensemble": k, **{m: v for m, v in r.items() if m != "t"}}
                                       for k, r in table.items()])
    return CurveEnsembleResult(out, table)

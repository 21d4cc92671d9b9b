"""interpolate: the linear path between two checkpoints and its barriers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import artefacts, plots
from ..options import option
from ..paths import interpolate
from ._inputs import (
    Combine,
    bn_reset_option,
    load_models,
    on_option,
    output_dir,
    record,
    split_tensors,
)
from ._registry import JobConfig, Output, Record, Result, path_metrics, register


@dataclass(frozen=True, kw_only=True)
class InterpolateConfig(Combine, JobConfig):
    job = "interpolate"
    a: str = option(help="model checkpoint at t = 0", positional=True)
    b: str = option(help="model checkpoint at t = 1", positional=True)
    points: int = option(25, "evenly spaced t in [0, 1]", low=2)
    splits: tuple[str, ...] = option(("train", "test"), "splits to evaluate, comma-separated",
                                     choices=("train", "test"), nonempty=True)
    bn_reset: str = bn_reset_option(help="re-estimate BatchNorm statistics at every point "
                                         "(auto: when the model has BN)")
    on: str = on_option()
    tolerance: float = option(0.01, "loss barrier counted as connected", low=0)
    pdf: bool = option(False, "also write PDF figures", setting=False)


@dataclass
class InterpolateResult(Result):
    summary: dict = field(default_factory=dict)
    headline = ("test_loss_barrier", "test_error_barrier", "test_delta_acc", "train_loss_barrier")

    def records(self) -> list[Record]:
        return [({}, path_metrics(self.summary, self.summary["splits"]))]

    def lines(self) -> list[str]:
        out = []
        for split in self.summary["splits"]:
            s = self.summary[split]
            where = f"at λ={s['lambda_star']:.2f}" if s.get("interior", True) \
                else "(no interior maximum)"
            if "undefined" in s:
                where = f"(undefined: {s['undefined']})"
            score = s.get("score", "acc")
            out.append(f"{split}: loss barrier {s['loss']['linear']['barrier']:.4f} {where}, "
                       f"error barrier "
                       f"{s['error']['linear']['barrier']:.4f}, Δ{score} "
                       f"{s[f'delta_{score}']:+.4f}, "
                       f"{'connected' if s['connected'] else 'not connected'}")
        return out + super().lines()


@register("interpolate", InterpolateConfig, "evaluate the linear path between two checkpoints",
          Output("output directory", writes=(*artefacts.names(
              artefacts.CONFIG, artefacts.ENV, artefacts.PATH, artefacts.BARRIER),
              "path.png", "path.pdf")))
def run_interpolate(config: InterpolateConfig, out: Path) -> InterpolateResult:
    """path.csv, barrier.json and path.png of the linear path from A to B."""
    models = load_models([config.a, config.b], config)
    out = output_dir(out, config.overwrite)
    data = models.data(config.on, config.data_dir)
    (pa, pb), (na, nb) = models.params, models.names
    rows, summary = interpolate(models.module, pa, pb, split_tensors(data, config.splits),
                                bn_data=data.train_x, points=config.points,
                                bn_reset=config.bn_reset, tolerance=config.tolerance,
                                task=data.task)
    summary["models"] = {"a": str(models.checkpoints[0].path), "b": str(models.checkpoints[1].path)}
    summary["eval_data"] = {**data.spec.to_dict(), "on": config.on}
    out.mkdir(parents=True, exist_ok=True)
    record(out, config, models.device)
    artefacts.PATH.write(out, rows)
    artefacts.BARRIER.write(out, summary)
    on = "the whole dataset" if config.on == "full" else f"{na}'s own subset"
    fig = plots.path_figure({"linear": rows}, title=f"linear path {na} → {nb}, on "
                            f"{data.spec.dataset} ({on})", xlabel=f"λ (0: {na}, 1: {nb})")
    plots.save(fig, out / "path.png", config.pdf)
    return InterpolateResult(out, {**summary, "splits": list(config.splits)})

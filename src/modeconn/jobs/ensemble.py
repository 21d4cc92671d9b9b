"""ensemble: score an ensemble of checkpoints and how similar its members are."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import artefacts, plots
from ..ensemble import ensemble_metrics, member_scores, pairwise_similarity
from ..evaluate import Evaluator
from ..options import option
from ..params import statistic_keys
from ..task import score_of
from ._inputs import Combine, bn_reset_option, load_models, output_dir, record
from ._registry import JobConfig, Output, Record, Result, numbers, register


@dataclass(frozen=True, kw_only=True)
class EnsembleConfig(Combine, JobConfig):
    job = "ensemble"
    checkpoints: tuple[str, ...] = option(help="the members (one architecture)", positional=True,
                                          nonempty=True)
    bn_reset: str = bn_reset_option("off", "re-estimate each member's BatchNorm statistics first")

    def check(self) -> None:
        super().check()
        if len(self.checkpoints) < 2:
            raise self.invalid("checkpoints", "must name at least two checkpoints")


@dataclass
class EnsembleResult(Result):
    metrics: dict = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    similarity: list[dict] = field(default_factory=list)
    headline = ("acc", "member_acc", "gain_acc", "nll", "ece")

    def records(self) -> list[Record]:
        return [({}, numbers(self.metrics))]

    def lines(self) -> list[str]:
        m = self.metrics
        k = score_of(m)
        return [f"ensemble of {len(self.members)}: {k} {m[k]:.4f} (mean member "
                f"{m[f'member_{k}']:.4f}, gain {100 * m[f'gain_{k}']:+.2f}%), NLL {m['nll']:.4f}, "
                f"Brier {m['brier']:.4f}, ECE {m['ece']:.4f}", *super().lines()]


@register("ensemble", EnsembleConfig, "score an ensemble of checkpoints and their similarity",
          Output("output directory", writes=(*artefacts.names(
              artefacts.CONFIG, artefacts.ENV, artefacts.ENSEMBLE, artefacts.SIMILARITY),
              "polar_similarity.png")))
def run_ensemble(config: EnsembleConfig, out: Path) -> EnsembleResult:
    """ensemble.json, similarity.csv and polar_similarity.png of the members on the test set."""
    models = load_models(config.checkpoints, config)
    out = output_dir(out, config.overwrite)
    data = models.data("full", config.data_dir)
    ev = Evaluator(models.module, {"test": (data.test_x, data.test_y)}, bn_data=data.train_x,
                   bn_reset=config.bn_reset, task=data.task)
    points = models.params
    probs = ev.probabilities(points, "test")
    metrics = ensemble_metrics(probs, data.test_y, task=data.task)
    names = [str(c.path) for c in models.checkpoints]
    sims = pairwise_similarity(names, probs, data.test_y, points, ev.features(points, "test"),
                               statistics=statistic_keys(models.module), task=data.task)
    out.mkdir(parents=True, exist_ok=True)
    record(out, config, models.device)
    artefacts.ENSEMBLE.write(out, {"members": names, **metrics})
    artefacts.SIMILARITY.write(out, sims)
    scores = member_scores(probs, data.test_y, data.task)
    ref = [r for r in sims if r["a"] == names[0]]
    fig = plots.polar_similarity_figure(models.names, [1.0] + [r["weight_cosine"] for r in ref],
                                        scores, title=f"ensemble members on {data.spec.dataset}",
                                        rlabel=f"test {plots.SCORE_LABEL[data.task.score]}")
    plots.save(fig, out / "polar_similarity.png")
    return EnsembleResult(out, metrics, names, sims)

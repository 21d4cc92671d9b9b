"""merge: fuse two models — AVG, OT fusion, a permutation merge (WM, AM, STE) or mode path fusion
(MPF) — into an ordinary checkpoint, scored beside A and B overall and on each one's own data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import artefacts
from ..checkpoint import save_checkpoint
from ..evaluate import Evaluator
from ..merge import METHODS, MPF_EPOCHS, MPF_PRESETS, MPF_SCHEDULES, fuse, normalise, pair_weights
from ..merge.ot import (
    COSTS,
    NEEDS_PROPER,
    SOLVERS,
    marginals_option,
    normalize_cost_option,
    proper_marginals_option,
    reg_option,
    squared_option,
)
from ..merge.ot import PRESETS as OT_PRESETS
from ..models import has_batchnorm
from ..options import ConfigError, Options, as_flags, option, preset_option
from ..paths.curves import BEND_INITS
from ..task import score_of
from ..train import TrainConfig, finetune
from ._inputs import Models, load_models, output_dir, record, split_tensors
from ._registry import JobConfig, Output, Record, Result, loss_and_score, register, split_metrics
from .align import (
    Alignment,
    align_setup,
    model_meta,
    options_for,
    ste_batch_size_option,
    ste_epochs_option,
    ste_lr_option,
    ste_warm_option,
)

# The merge job's fields that carry MPFOptions' (whose names they take in MPF's presets).
MPF_FIELDS = {"epochs": "epochs", "lr": "curve_lr", "batch_size": "curve_batch_size",
              "weight_decay": "curve_weight_decay", "schedule": "curve_schedule",
              "bend_init": "bend_init"}
# The methods' presets as the job's options: OT's set --method ot; MPF's set the curve's
# training, which --finetune-epochs shares (the fair baseline of that procedure).
PRESETS = {**{name: {"method": "ot", **values} for name, values in OT_PRESETS.items()},
           **{name: {MPF_FIELDS[k]: v for k, v in values.items()}
              for name, values in MPF_PRESETS.items()}}


@dataclass(frozen=True, kw_only=True)
class MergeConfig(Alignment, JobConfig):
    job = "merge"
    a: str = option(help="model checkpoint A (OT fusion carries it onto B)", positional=True)
    b: str = option(help="model checkpoint B (OT fusion's target: the fused model has its "
                         "widths)", positional=True)
    method: str = option("avg", "avg: the parameter average; ot: optimal-transport fusion; wm, "
                                "am, ste: B aligned to A by permutation, then averaged; mpf: the "
                                "midpoint of a quadratic Bezier curve fitted between them",
                         choices=tuple(METHODS))
    weights: tuple[float, ...] = option((0.5, 0.5), "weights of A and B, comma-separated "
                                                     "(normalised)", low=0, finite=True,
                                        nonempty=True)
    repair: bool = option(False, "REPAIR the fused model (models with BatchNorm always get BN "
                                 "reset)")
    cost: str = option("weights", "OT ground cost: the distance of incoming weights, or of "
                                  "activations on --samples training examples", choices=COSTS)
    solver: str = option("emd", "OT plan: exact EMD or Sinkhorn", choices=SOLVERS)
    reg: float = reg_option()
    marginals: str = marginals_option()
    samples: int = option(512, "training examples of the OT activation cost", low=1)
    epochs: int | None = ste_epochs_option("STE (or MPF: curve epochs, default 20)")
    lr: float = ste_lr_option("STE")
    batch_size: int = ste_batch_size_option("STE/AM")
    warm: bool = ste_warm_option("STE")
    curve_lr: float = option(0.05, "MPF (and --finetune-epochs): peak learning rate of SGD",
                             low=0, low_open=True)
    curve_batch_size: int = option(64, "MPF (and --finetune-epochs): batch size", low=1)
    finetune_epochs: int = option(0, "then fine-tune the fused model on the union of the data "
                                     "for this many epochs (SGD, --curve-lr, --curve-batch-size, "
                                     "--curve-schedule, --curve-weight-decay): with MPF's "
                                     "--epochs, exactly MPF's gradient-step budget — the fair "
                                     "baseline", low=0)
    curve_weight_decay: float = option(5e-4, "MPF (and --finetune-epochs): L2 penalty (on the "
                                             "curve's point θ(t))", low=0, later=True)
    curve_schedule: str = option("curve", "MPF (and --finetune-epochs): the curve schedule, its "
                                          "epochs counted from 1 (curve, Garipov et al.) or 0 "
                                          "(curve:0, the MPF reference)", choices=MPF_SCHEDULES,
                                 later=True)
    bend_init: str = option("segment", "MPF: the middle bend starts on the segment between A and "
                                       "B, or drawn by the layers' own random initialisation",
                            choices=tuple(BEND_INITS), later=True)
    squared: bool = squared_option()
    normalize_cost: str = normalize_cost_option()
    proper_marginals: bool = proper_marginals_option()
    preset: str | None = preset_option(PRESETS, "a reference implementation's settings — "
                                                "sidak/otfusion's option defaults, otfusion: "
                                                + as_flags(PRESETS["otfusion"]) + "; its README's "
                                                "commands, otfusion-readme: "
                                                + as_flags(PRESETS["otfusion-readme"]) + "; MPF "
                                                "as tanguy8001's repository runs it (with "
                                                "--method mpf, or for the fine-tuning of "
                                                "--finetune-epochs), mpf-reference: "
                                                + as_flags(PRESETS["mpf-reference"]))
    presets = PRESETS
    preset_fixed = ("method",)

    @classmethod
    def check_preset(cls, name: str, values: Mapping[str, Any]) -> None:
        if name not in MPF_PRESETS:
            return
        method = values.get("method", "avg")
        if method != "mpf" and not values.get("finetune_epochs"):
            raise ConfigError(cls.job, "preset", "applies to --method mpf, or to the fine-tuning "
                                                 "of --finetune-epochs; give one of them or leave "
                                                 "it out", name)
        if method == "ste":  # its --epochs would be STE's
            raise ConfigError(cls.job, "preset", "sets --epochs, which --method ste also reads; "
                                                 "leave it out with ste", name)

    def check(self) -> None:
        super().check()
        if len(self.weights) != 2 or sum(self.weights) <= 0:
            raise self.invalid("weights", "must be two non-negative numbers, not both 0")
        if self.method == "mpf" and self.weights[0] != self.weights[1]:
            raise self.invalid("weights", "do not apply to --method mpf, which returns the "
                                          "middle of its curve (θ(0.5)); leave them out")
        if self.method == "ot" and not self.proper_marginals and self.marginals != "uniform":
            raise self.invalid("marginals", NEEDS_PROPER)
        if self.method == "mpf" and self.finetune_epochs:
            raise self.invalid("finetune_epochs", "must be 0 with --method mpf (MPF trains "
                                                  "already; fine-tune the other methods)")

    def sgd(self, epochs: int) -> TrainConfig:
        """The training of MPF's curve and of the fine-tuning baseline (one budget)."""
        return TrainConfig(epochs=epochs, batch_size=self.curve_batch_size, lr=self.curve_lr,
                           schedule=self.curve_schedule, weight_decay=self.curve_weight_decay)


@dataclass
class MergeResult(Result):
    report: dict = field(default_factory=dict)  # what merge.json holds
    # A subset is a part of the training data: "own" accuracies are on its training examples
    headline = ("test_acc", "test_loss", "own_a_train_acc", "own_b_train_acc")

    def lines(self) -> list[str]:
        r = self.report
        out = []
        for name in ("fused", "a", "b"):
            m = r[name]
            k = score_of(m["test"])
            out.append(f"{name:>5}: test {loss_and_score(m['test'])} | {k} on A's training "
                       f"subset {m['own_a']['train'][k]:.4f}, on B's "
                       f"{m['own_b']['train'][k]:.4f}")
        return [f"merge ({r['method']}, {r['normalisation']}):", *out, *super().lines()]

    def records(self) -> list[Record]:
        out = []
        for name in ("fused", "a", "b"):
            m = self.report[name]
            metrics = split_metrics({s: m[s] for s in ("train", "test")})
            for own in ("own_a", "own_b"):
                metrics.update({f"{own}_{k}": v for k, v in split_metrics(m[own]).items()})
            out.append(({"model": name}, metrics))
        return out


def method_options(config: MergeConfig) -> Options:
    """The options of the config's fusion method, from the job's options."""
    method = METHODS[config.method]
    if config.method == "mpf":  # the curve trains with the --curve-* options
        return method.options(seed=config.seed, **{
            k: getattr(config, name) for k, name in MPF_FIELDS.items()} | {
            "epochs": config.epochs or MPF_EPOCHS})
    return options_for(method, config)


def gradient_steps(n: int, cfg: TrainConfig, batchnorm: bool) -> int:
    """Steps of `cfg.epochs` epochs over n examples (a last batch of one is skipped with BN)."""
    per_epoch = n // cfg.batch_size + (1 if n % cfg.batch_size > (1 if batchnorm else 0) else 0)
    return cfg.epochs * per_epoch


@register("merge", MergeConfig, "fuse two models: AVG, OT fusion, WM/AM/STE merges or MPF",
          Output("output directory", required=False, default="results/merge",
                 writes=artefacts.names(artefacts.CONFIG, artefacts.ENV, artefacts.MERGED,
                                        artefacts.MERGE)))
def run_merge(config: MergeConfig, out: Path) -> MergeResult:
    """merged.safetensors and merge.json: the fused model and A and B, scored on the whole
    train and test data and on each one's own subset."""
    if config.method == "ot":  # widths may differ: each model its own architecture
        a, b = load_models([config.a], config), load_models([config.b], config)
        data = b.data("full", config.data_dir)
        spec = None
    else:
        both, data, spec = align_setup([config.a, config.b], config)
        a = Models(both.module, both.checkpoints[:1], both.params[:1], both.device)
        b = Models(both.module, both.checkpoints[1:], both.params[1:], both.device)
    out = output_dir(out, config.overwrite)
    weights = pair_weights(config.weights)
    fused = fuse(config.method, a.module, a.params[0], b.module, b.params[0], data.train_x,
                 data.train_y, weights=weights, options=method_options(config), task=data.task,
                 spec=spec)
    x = data.train_x
    ends = [a.params[0], b.params[0]] if config.method != "ot" else [b.params[0], b.params[0]]
    fused, how = normalise(b.module, ends, fused, x, config.repair)
    budget = {}
    if config.method == "mpf":
        budget = {"epochs": config.epochs or MPF_EPOCHS, "gradient_steps": gradient_steps(
            len(data.train_y), config.sgd(config.epochs or MPF_EPOCHS),
            has_batchnorm(b.module))}
    elif config.finetune_epochs:
        fused, steps = finetune(b.module, fused, x, data.train_y,
                                config.sgd(config.finetune_epochs), seed=config.seed,
                                task=data.task)
        fused, how = normalise(b.module, [fused, fused], fused, x, False)
        how = f"fine-tuned {config.finetune_epochs} epochs, then {how}"
        budget = {"epochs": config.finetune_epochs, "gradient_steps": steps}
    own = {"own_a": a.data("own", config.data_dir), "own_b": b.data("own", config.data_dir)}
    report: dict = {"method": config.method, "weights": list(weights), "normalisation": how,
                    "a": str(a.checkpoints[0].path), "b": str(b.checkpoints[0].path),
                    "training": budget}
    for name, models, params in (("fused", b, fused), ("a", a, a.params[0]),
                                 ("b", b, b.params[0])):
        ev = Evaluator(models.module, split_tensors(data), bn_data=x, bn_reset="off",
                       task=data.task)
        entry = ev.evaluate([params])[0]
        for key, d in own.items():
            entry[key] = Evaluator(models.module, split_tensors(d), bn_data=d.train_x,
                                   bn_reset="off", task=data.task).evaluate([params])[0]
        report[name] = entry
    out.mkdir(parents=True, exist_ok=True)
    record(out, config, b.device)
    save_checkpoint(artefacts.MERGED.path(out), fused,
                    **model_meta(b.checkpoints[0], kind="model",
                                 merge={"method": config.method, "models": [report["a"],
                                                                            report["b"]],
                                        "weights": list(weights), "normalisation": how}))
    artefacts.MERGE.write(out, report)
    return MergeResult(out, report)

"""continual: tasks arrive in sequence; each step's model is merged with the running one by each
fusion method, against sequential fine-tuning and joint training."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import artefacts, plots
from ..align import auto_spec
from ..data import DataSpec, prepare, require_classification
from ..errors import UsageError
from ..evaluate import Evaluator
from ..merge import METHODS, MPF_PRESETS, fuse
from ..merge.mpf import preset_help
from ..options import Options, config_fields, option
from ..runtime import progress, resolve_device
from ..train import TrainConfig, finetune, init_model
from ._inputs import ModelOptions, Runtime, output_dir, quiet_option, record
from ._registry import JobConfig, Output, Record, Result, register

BASELINES = ("sequential", "joint")


def parse_tasks(text: str, classes: int) -> list[list[int]]:
    """"0-4|5-9" → [[0..4], [5..9]]; "pairs" → five 2-class tasks (of 10 classes)."""
    if text == "pairs":
        return [[c, c + 1] for c in range(0, classes - 1, 2)]
    tasks = []
    for part in text.split("|"):
        cs: list[int] = []
        for item in part.split(","):
            lo, sep, hi = item.strip().partition("-")
            try:
                cs += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
            except ValueError:
                raise UsageError(f"--tasks: {part!r} is not a class list; write e.g. 0-4|5-9 "
                                 "or pairs") from None
        tasks.append(cs)
    flat = [c for t in tasks for c in t]
    if len(tasks) < 2 or len(set(flat)) != len(flat) or min(flat) < 0 or max(flat) >= classes:
        raise UsageError(f"--tasks must give at least 2 disjoint groups of classes 0-{classes - 1}"
                         f", got {text!r}")
    return tasks


@dataclass(frozen=True, kw_only=True)
class ContinualConfig(Runtime, ModelOptions, JobConfig):
    job = "continual"
    dataset: str = option("digits", "the dataset")
    tasks: str = option("0-4|5-9", "the tasks in order: class groups separated by | (e.g. "
                                   "0-4|5-9), or pairs (five 2-class tasks)")
    methods: tuple[str, ...] = option(("avg", "ot", "wm", "mpf"), "fusion methods merging each "
                                      "step's model with the running one", nonempty=True,
                                      choices=tuple(METHODS))
    start: str = option("previous", "each step's model starts from the running model or from "
                                    "scratch", choices=("previous", "scratch"))
    epochs: int = option(5, "epochs per task (also of STE and of MPF's curve)", low=1)
    batch_size: int = option(64, "batch size", low=1)
    lr: float = option(0.05, "SGD learning rate", low=0, low_open=True)
    seed: int = option(0, "initialisation and batch order", low=0)
    allow_partial: bool = option(False, "align and fuse what the traced spec can cover and leave "
                                        "in place the layers it names as not coverable",
                                 later=True)
    mpf_preset: str | None = option(None, "MPF's curve as the reference repository trains it, "
                                      "instead of with each task's epochs, lr and batch size — "
                                      + preset_help(), choices=tuple(MPF_PRESETS), later=True)
    quiet: bool = quiet_option()

    def check(self) -> None:
        super().check()
        if self.mpf_preset is not None and "mpf" not in self.methods:
            raise self.invalid("mpf_preset", "sets MPF's procedure; add mpf to --methods or "
                                             "leave it out")

    def method_options(self, method: str) -> Options:
        """A fusion method's options in this protocol: the seed, and the epochs of the methods
        that train (STE, MPF); MPF's curve also trains with each task's learning rate and batch
        size, or with the preset's procedure. The rest are the method's defaults."""
        given = {"seed": self.seed, "epochs": self.epochs, "quiet": True,  # (its own bar shows)
                 "allow_partial": self.allow_partial}
        if method == "mpf" and self.mpf_preset is not None:
            given = {"seed": self.seed, "quiet": True, "preset": self.mpf_preset}
        elif method == "mpf":
            given.update(lr=self.lr, batch_size=self.batch_size)
        cls = METHODS[method].options
        return cls(**{i.name: given[i.name] for i in config_fields(cls) if i.name in given})


@dataclass
class ContinualResult(Result):
    summary: list[dict] = field(default_factory=list)
    headline = ("average_acc", "forgetting")

    def lines(self) -> list[str]:
        out = [f"{'method':<12} {'average acc %':>14} {'forgetting %':>13}"]
        out += [f"{r['method']:<12} {100 * r['average_acc']:>14.2f} "
                f"{100 * r['forgetting']:>13.2f}" for r in self.summary]
        return out + super().lines()

    def records(self) -> list[Record]:
        return [({"method": r["method"]}, {"average_acc": r["average_acc"],
                                           "forgetting": r["forgetting"]}) for r in self.summary]


def _split(x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, ...]:
    keep = torch.isin(y, torch.tensor(classes, device=y.device))
    return x[keep], y[keep]


@register("continual", ContinualConfig, "continual learning by merging: tasks in sequence, each "
                                        "step's model merged with the running one",
          Output("output directory", required=False, default="results/continual",
                 writes=(*artefacts.names(artefacts.CONFIG, artefacts.ENV,
                                          artefacts.CONTINUAL_ACCURACY, artefacts.CONTINUAL_SUMMARY,
                                          artefacts.CONTINUAL_TASKS), "accuracy.png")))
def run_continual(config: ContinualConfig, out: Path) -> ContinualResult:
    """accuracy.csv (method, step, task, accuracy), summary.csv (average accuracy and forgetting
    after the last step) and accuracy.png (accuracy on each task after each step)."""
    device = resolve_device(config.device)
    require_classification(config.dataset, "continual learning by class groups")
    data = prepare(DataSpec(dataset=config.dataset), config.data_dir).to(device)
    tasks = parse_tasks(config.tasks, data.num_classes)
    out = output_dir(out)
    model_cfg = config.model_config(data.input_shape, data.num_classes)
    module = init_model(model_cfg, config.seed).to(device)
    cfg = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                      schedule="curve")
    train = [_split(data.train_x, data.train_y, t) for t in tasks]
    test = {f"task{i + 1}": _split(data.test_x, data.test_y, t) for i, t in enumerate(tasks)}
    evaluator = Evaluator(module, test, bn_reset="off")
    # One architecture throughout: its permutation spec is traced once, for the merges that use it
    traced = auto_spec(module, train[0][0][:2], allow_partial=config.allow_partial) \
        if {"wm", "am", "ste"} & set(config.methods) else None
    init = {k: v.detach().clone() for k, v in module.state_dict().items()}
    running = {m: init for m in (*config.methods, *BASELINES)}
    rows: list[dict] = []
    bar = progress(total=len(train) * len(running), desc="continual", quiet=config.quiet)
    for step, (x, y) in enumerate(train, 1):
        seen = {k: v for k, v in list(test.items())[:step]}

        def learn(method: str) -> dict[str, torch.Tensor]:
            """The method's running model after this step's task."""
            if method == "joint":  # trained on every task seen so far, from the start
                jx = torch.cat([t[0] for t in train[:step]])
                jy = torch.cat([t[1] for t in train[:step]])
                return finetune(module, init, jx, jy, cfg, config.seed)[0]
            begin = running[method] if config.start == "previous" else init
            new, _ = finetune(module, begin, x, y, cfg, config.seed + step)
            if method == "sequential" or step == 1:
                return new
            return fuse(method, module, running[method], module, new, x, y,
                        options=config.method_options(method), task=data.task, spec=traced)

        for method in running:
            running[method] = learn(method)
            bar.update()
        for method, params in running.items():
            res = evaluator.evaluate([params])[0]
            rows += [{"method": method, "step": step, "task": k, "acc": res[k]["acc"]}
                     for k in seen]
    bar.close()
    summary = []
    last = len(tasks)
    for method in running:
        final = [r["acc"] for r in rows if r["method"] == method and r["step"] == last]
        forgetting = [max(r["acc"] for r in rows if r["method"] == method and r["task"] == t)
                      - next(r["acc"] for r in rows if r["method"] == method and r["task"] == t
                             and r["step"] == last) for t in list(test)[:-1]]
        summary.append({"method": method, "average_acc": statistics.fmean(final),
                        "forgetting": statistics.fmean(forgetting)})
    out.mkdir(parents=True, exist_ok=True)
    record(out, config, device, tasks=tasks)
    artefacts.CONTINUAL_ACCURACY.write(out, rows)
    artefacts.CONTINUAL_SUMMARY.write(out, summary)
    artefacts.CONTINUAL_TASKS.write(out, {"tasks": tasks})
    plots.save(plots.continual_figure(rows, list(test), title=(
        f"{config.dataset}, {model_cfg['arch']}, tasks {config.tasks}, {config.epochs} epochs "
        f"per task, start from {config.start}")), out / "accuracy.png")
    return ContinualResult(out, summary)



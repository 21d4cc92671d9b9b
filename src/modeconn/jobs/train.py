"""train: models on controlled subsets of a dataset, one member directory per subset.

The run directory's contract is train_run's (config.json with the run's "options", summary.csv,
one folder per member, the resume fingerprint): a run started before the job layer resumes the
same. `--resume` with only `--out` works through `resolve_train`, which fills every option not
given again from the run's config.json. Where --out records no settings (missing, empty, or
stopped before config.json was written) the options given describe the run in full, as without
--resume, so the same command line plus --resume ends as a run never stopped; a resume that gives
none is refused rather than training the defaults.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import artefacts
from ..data import prepare_subsets
from ..errors import UsageError
from ..options import option
from ..runtime import resolve_device
from ..task import score_of
from ..train import TrainConfig, plan_members, train_run
from ._inputs import DataOptions, ModelOptions, Runtime, quiet_option, training
from ._registry import JobConfig, Output, Record, Result, numbers, register

# The options a run records in config.json under "options", in the order runs have always
# written them (the resume check and the member fingerprints compare them).
RECORDED_OPTIONS = (
    "dataset", "shift", "subsets", "split_seed", "normalise", "model", "depth", "width", "norm",
    "bias", "dropout", "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov",
    "weight_decay", "schedule", "warmup", "only", "init", "init_seed", "batch_order",
    "order_seed", "save_epochs")
# Options added later, recorded only where they differ from their defaults (so the runs of
# earlier versions keep their recorded options and resume).
LATER_OPTIONS = ("bands", "on_bad_patch", "heads", "patch")


@dataclass(frozen=True, kw_only=True)
class TrainJobConfig(Runtime, TrainConfig, ModelOptions, DataOptions, JobConfig):
    job = "train"
    hidden = ("eval_batch_size",)
    only: str | None = option(None, "train only these subsets, e.g. a or a,c")
    init: str = option("same", "one initialisation for every member, or one per member "
                               "(seed + i)", choices=("same", "different"))
    init_seed: tuple[int, ...] = option((0,), "one seed, or one per subset", low=0)
    batch_order: str = option("same", "same: every subset visited in one sequence of positions "
                                      "per epoch (same SGD noise); independent: each subset "
                                      "shuffled with its own seed",
                              choices=("same", "independent"))
    order_seed: int = option(0, "seed of the batch order", low=0)
    resume: bool = option(False, "continue an interrupted run in --out with the settings in its "
                                 "config.json (options given again must match them; where it "
                                 "recorded none, the options given start the run)",
                          setting=False)
    quiet: bool = quiet_option()

    def recorded_options(self) -> dict[str, Any]:
        """The run's options as its config.json records them."""
        values = self.to_dict()
        later = {k: values[k] for k in LATER_OPTIONS
                 if values.get(k) != type(self).__dataclass_fields__[k].default}
        return {**{k: values[k] for k in RECORDED_OPTIONS}, **later}


@dataclass
class TrainResult(Result):
    members: list[dict] = field(default_factory=list)
    headline = ("test_acc", "test_loss", "train_loss")

    def records(self) -> list[Record]:
        return [({"member": r["member"]}, numbers({k: v for k, v in r.items()
                                                    if k not in ("member", "status", "epoch")}))
                for r in self.members if r["status"] == "complete"]

    @property
    def diverged(self) -> bool:
        return any(r["status"] == "diverged" for r in self.members)

    def lines(self) -> list[str]:
        out = []
        for r in self.members:
            if r["status"] == "diverged":
                out.append(f"{r['member']}: DIVERGED at epoch {r['epoch']} step {r['step']} "
                           f"(loss {r['loss']}); lower --lr or add --warmup")
            else:
                k = score_of({m[5:] for m in r if m.startswith("test_")})
                out.append(f"{r['member']}: train loss {r['train_loss']:.4f} {k} "
                           f"{r[f'train_{k}']:.4f} | test loss {r['test_loss']:.4f} {k} "
                           f"{r[f'test_{k}']:.4f}")
        return out + super().lines()

    @property
    def exit_code(self) -> int:
        return 1 if self.diverged else 0


_NO_OPTIONS = object()  # a run whose config.json predates the recorded options
_NOTHING = object()  # --resume of a directory without a run's config.json


def _stored_options(out: Path | None, resume: bool) -> Any:
    """The options recorded in the run `out` resumes: {} when there is nothing to resume from
    (no --resume, no --out, or --out a file that train_run refuses), `_NOTHING` for a directory
    that is missing or holds no config.json, `_NO_OPTIONS` for a run that recorded none."""
    if not resume or out is None or (out.exists() and not out.is_dir()):
        return {}
    path = artefacts.CONFIG.path(out)
    if not path.is_file():
        return _NOTHING
    try:
        stored = artefacts.CONFIG.read(out)
    except (OSError, ValueError) as e:  # written atomically, so not a file a run wrote
        raise UsageError(f"{path} cannot be read as a run's settings ({e}); resume the run "
                         "it belongs to, or choose a new --out") from None
    if not isinstance(stored, dict):
        raise UsageError(f"{path} is not a run's settings (not a JSON object); resume the run "
                         "it belongs to, or choose a new --out")
    stored = stored.get("options")
    return _NO_OPTIONS if stored is None else stored


def _nothing_recorded(out: Path) -> str:
    """The refusal of a resume that gives no option where `out` records none: what is missing,
    and the way on."""
    start = ("to start a run there, give its options with --resume (at least one, e.g. "
             "--dataset digits)")
    if not out.exists():
        return f"nothing to resume: {out} does not exist, so no settings are recorded; {start}"
    if not any(out.iterdir()):
        return f"nothing to resume: {out} is empty, so no settings are recorded; {start}"
    return (f"nothing to resume: {out} holds no config.json with the run's settings (stopped "
            f"before it wrote them, or not a run directory); {start}, or choose a new --out")


def resolve_train(given: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """On resume, every recorded option not given again is taken from the run's config.json
    (those given must match it, which train_run checks). Where nothing is recorded (the run was
    stopped before it wrote its config.json, or never started), the options given describe the
    run in full, as they would without --resume; a resume that gives none of them is refused
    rather than training the defaults."""
    stored = _stored_options(out, bool(given.get("resume")))
    if stored is _NO_OPTIONS:
        return given
    if stored is _NOTHING:
        if not any(k in given for k in RECORDED_OPTIONS + LATER_OPTIONS):
            raise UsageError(_nothing_recorded(out))
        return given
    return {**{k: v for k, v in stored.items() if k in RECORDED_OPTIONS + LATER_OPTIONS},
            **given}


def train_files(config: TrainJobConfig) -> list[str]:
    """What a run writes: its own files, and one folder per member it trains (all the subsets,
    or those in `only`)."""
    members = config.checked_data()[2]
    if config.only:
        members = [m for m in members if m in {s.strip() for s in config.only.split(",")}]
    a = artefacts
    per_member = [a.MODEL.name, a.MEMBER_STATUS.name, a.METRICS.name, a.CONFIG.name,
                  a.PER_LABEL.name, *(a.snapshot(e).name for e in config.save_epochs)]
    return [a.CONFIG.name, a.ENV.name, a.SUBSETS.name, a.RUN_SUMMARY.name, a.SKIPPED.name,
            *(f"{m}/{f}" for m in members for f in per_member)]


@register("train", TrainJobConfig, "train models on controlled subsets of a dataset",
          Output("run directory", writes=train_files), resolve=resolve_train)
def run_train(config: TrainJobConfig, out: Path) -> TrainResult:
    """One member per subset (or those in `only`) trained into `out/<member>/`."""
    device = resolve_device(config.device)
    spec = config.data_spec()
    subsets = prepare_subsets(spec, config.data_dir)
    only = None
    if config.only:
        names = [s.strip() for s in config.only.split(",")]
        valid = [chr(ord("a") + i) for i in range(len(subsets))] if config.shift != "none" \
            else ["all"]
        bad = [s for s in names if s not in valid]
        if bad:
            raise UsageError(f"'only' of train names {','.join(bad)}: no such subset; choose "
                             f"from {','.join(valid)}")
        only = [valid.index(s) for s in names]
    model_cfg = config.model_config(subsets[0].input_shape, subsets[0].num_classes)
    members = plan_members(spec, subsets, config.init, list(config.init_seed),
                           config.batch_order, config.order_seed, only)
    for m in members:  # band sets of different sizes: each member's input layer its own
        if m.data.input_shape != subsets[0].input_shape:
            m.model_cfg = config.model_config(m.data.input_shape, m.data.num_classes)
    stored = _stored_options(out, config.resume)
    if stored is _NOTHING:  # resolve_train let it through: the options given describe the run
        print(f"modeconn: no recorded settings in {out}: starting the run these options "
              "describe", file=sys.stderr)
    legacy = stored is _NO_OPTIONS
    run_info = None if legacy else {"options": config.recorded_options()}
    results = train_run(model_cfg, members, training(config), out, device, config.resume,
                        config.quiet, run_info, task=subsets[0].task)
    return TrainResult(out, results)

"""align: permute B to A (weight matching, activation matching or STE) and compare the linear
paths before and after; and what align and merge-many share (the spec, the seed, STE options)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import artefacts, plots
from ..align import METHODS, Permutation, PermutationSpec, auto_spec, check_spec, find_permutation
from ..align.methods import Method
from ..checkpoint import Checkpoint, save_checkpoint
from ..data import Prepared
from ..errors import UsageError
from ..io import read_json
from ..options import Options, config_fields, option
from ..paths import interpolate
from ._inputs import (
    Combine,
    Models,
    load_models,
    output_dir,
    quiet_option,
    record,
    split_tensors,
)
from ._registry import JobConfig, Output, Record, Result, path_metrics, register


@dataclass(frozen=True, kw_only=True)
class Alignment(Combine):
    """Options of a job that aligns checkpoints by permutation: the spec and the seed."""

    spec: str | None = option(None, "a hand-written permutation spec instead of the one traced "
                                    "from the model (checked before use; an align run's "
                                    "permutation.json also works)", metavar="JSON")
    seed: int = option(0, "layer order of weight matching; batches and probes of STE, STE-MM and "
                          "the Hessian trace", low=0)
    allow_partial: bool = option(False, "align what the traced spec can cover and leave in place "
                                        "the layers it names as not coverable (otherwise they are "
                                        "refused)", later=True)
    quiet: bool = quiet_option()


def ste_epochs_option(method: str):
    """Epochs of a straight-through estimator (None: the reference's number of steps)."""
    return option(None, f"{method} epochs (default 10, or more on small datasets, enough for the "
                        "steps the reference takes: modeconn.align.ste_epochs)", low=1)


def ste_lr_option(method: str):
    """Adam learning rate of a straight-through estimator."""
    return option(1e-3, f"{method} learning rate (Adam)", low=0, low_open=True)


def ste_batch_size_option(batched: str):
    """Batch size of the data-driven matchings."""
    return option(256, f"{batched} batch size", low=1)


def ste_warm_option(method: str):
    """Warm starts of a straight-through estimator's per-batch matching."""
    return option(True, f"warm-start {method}'s per-batch weight matching from the last "
                        "permutation (as the reference code does) and LAP solution (--no-warm: "
                        "cold solves from the identity every batch; slower)")


def read_spec(path: str, job: str) -> PermutationSpec:
    """A hand-written permutation spec: PermutationSpec.to_dict JSON, or an align run's
    permutation.json (its "spec")."""
    try:
        data = read_json(path)  # a spec, or an align run's artefacts.PERMUTATION
        data = data.get("spec", data)
        return PermutationSpec.from_dict(data)
    except OSError as e:
        raise UsageError(f"'spec' of {job} names {path}, which cannot be read: "
                         f"{e.strerror}") from None
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise UsageError(f"'spec' of {job} names {path}, which is not a permutation spec "
                         f"({type(e).__name__}: {e}); write {{\"sizes\": {{P: n}}, \"axes\": "
                         "{tensor: [P or null per axis]}} or give an align run's "
                         f"{artefacts.PERMUTATION.name}") from None


def align_setup(paths, config: Alignment) -> tuple[Models, Prepared, PermutationSpec]:
    """Checkpoints of one architecture, their evaluation data (the whole dataset) and a checked
    spec: read from `config.spec`, else traced from the model's graph."""
    models = load_models(paths, config)
    data = models.data("full", config.data_dir)
    example = data.train_x[:2]
    if config.spec is not None:
        spec = read_spec(config.spec, config.job)
        check_spec(models.module, spec, example)  # validates names and sizes, then invariance
        return models, data, spec
    try:
        spec = auto_spec(models.module, example, allow_partial=config.allow_partial)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 — a tracer failure becomes one line
        raise UsageError(f"cannot derive a permutation spec for {type(models.module).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return models, data, spec


def model_meta(ckpt: Checkpoint, **extra) -> dict:
    """Metadata of a derived model checkpoint: the source's (architecture, data, ...) plus extras."""
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("modeconn_version", "kind")}
    return {**meta, **extra}


def loss_barrier(summary: dict, split: str = "test") -> float:
    """The loss barrier on `split` of a linear path's summary."""
    return summary[split]["loss"]["linear"]["barrier"]


@dataclass(frozen=True, kw_only=True)
class AlignConfig(Alignment, JobConfig):
    job = "align"
    a: str = option(help="model checkpoint to align to", positional=True)
    b: str = option(help="model checkpoint to permute", positional=True)
    method: str = option("wm", "weight matching, activation matching or straight-through "
                               "estimator", choices=tuple(METHODS))
    points: int = option(25, "points on the linear paths", low=2)
    epochs: int | None = ste_epochs_option("STE")
    lr: float = ste_lr_option("STE")
    batch_size: int = ste_batch_size_option("STE/AM")
    warm: bool = ste_warm_option("STE")


@dataclass
class AlignResult(Result):
    method: str = "wm"
    permutation: Permutation | None = None
    before: dict = field(default_factory=dict)  # barrier summaries of the path A → B ...
    after: dict = field(default_factory=dict)  # ... and A → aligned B
    headline = ("test_loss_barrier", "test_error_barrier", "test_loss_barrier_reduction_pct")

    def records(self) -> list[Record]:
        splits = [s for s in self.before if isinstance(self.before[s], dict)
                  and "loss" in self.before[s]]
        out = [({"path": "a-b"}, path_metrics(self.before, splits)),
               ({"path": "a-aligned_b"}, path_metrics(self.after, splits))]
        if self.reduction == self.reduction:
            out.append(({"path": "a-aligned_b"}, {"test_loss_barrier_reduction_pct":
                                                 float(self.reduction)}))
        return out

    @property
    def reduction(self) -> float:
        """How much alignment lowered the test loss barrier, in percent (nan without one)."""
        before, after = loss_barrier(self.before), loss_barrier(self.after)
        return 100 * (before - after) / before if before > 0 else math.nan

    def lines(self) -> list[str]:
        return [f"test loss barrier {loss_barrier(self.before):.4f} → "
                f"{loss_barrier(self.after):.4f} ({self.reduction:.1f}% reduction, "
                f"{self.method})"] + super().lines()


def options_for(method: Method, config: JobConfig) -> Options:
    """A method's options from the job's options of the same names."""
    return method.options(**{i.name: getattr(config, i.name)
                             for i in config_fields(method.options)})


@register("align", AlignConfig, "align B to A by permutation and compare the barriers",
          Output("output directory", required=False, default="results/align",
                 writes=(*artefacts.names(artefacts.CONFIG, artefacts.ENV, artefacts.ALIGNED,
                                          artefacts.PERMUTATION, *(artefacts.aligned_barrier(s)
                                                                   for s in ("before", "after")),
                                          *(artefacts.aligned_path(s) for s in ("before", "after"))),
                         "path.png")))
def run_align(config: AlignConfig, out: Path) -> AlignResult:
    """aligned_b.safetensors, permutation.json, the paths and barriers before and after aligning
    B to A, and path.png."""
    models, data, spec = align_setup([config.a, config.b], config)
    out = output_dir(out, config.overwrite)
    model, (a, b), (pa, pb) = models.module, models.checkpoints, models.params
    perm = find_permutation(config.method, model, pa, pb, data.train_x, data.train_y,
                            spec=spec, options=options_for(METHODS[config.method], config),
                            task=data.task)
    aligned = perm.apply(pb)
    splits = split_tensors(data)
    paths, summaries = {}, {}
    for label, other in (("before", pb), ("after", aligned)):
        rows, summary = interpolate(model, pa, other, splits, bn_data=data.train_x,
                                    points=config.points, bn_reset="auto", task=data.task)
        summary["models"] = {"a": str(a.path), "b": str(b.path), "aligned": label == "after"}
        paths[label], summaries[label] = rows, summary
    out.mkdir(parents=True, exist_ok=True)
    record(out, config, models.device)
    alignment = {"method": config.method, "to": str(a.path), "source": str(b.path),
                 "identity": perm.is_identity()}
    save_checkpoint(artefacts.ALIGNED.path(out), aligned,
                    **model_meta(b, kind="model", alignment=alignment))
    artefacts.PERMUTATION.write_text(out, perm.to_json())
    for label in ("before", "after"):
        artefacts.aligned_barrier(label).write(out, summaries[label])
        artefacts.aligned_path(label).write(out, paths[label])
    na, nb = models.names
    fig = plots.path_figure({f"{nb} before": paths["before"], f"{nb} aligned": paths["after"]},
                            title=f"linear path {na} → {nb}, before and after aligning {nb} "
                                  f"to {na} ({config.method})", xlabel=f"λ (0: {na}, 1: {nb})")
    plots.save(fig, out / "path.png")
    return AlignResult(out, config.method, perm, summaries["before"], summaries["after"])

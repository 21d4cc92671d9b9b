"""merge-many: align K checkpoints (MergeMany, STE-MM or none), average them, normalise (BN reset
or REPAIR), and score the merged model beside the plain average and the members."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import artefacts
from ..align import Permutation, PermutationSpec, merge_many, ste_mm
from ..checkpoint import save_checkpoint
from ..data import Prepared
from ..evaluate import Evaluator
from ..merge import average, normalise
from ..models import rebuild
from ..options import option
from ..paths import interpolate
from ..paths.landscape import hessian_trace
from ..task import score_of
from ._inputs import Models, output_dir, record, split_tensors
from ._registry import (
    JobConfig,
    Output,
    Record,
    Result,
    loss_and_score,
    numbers,
    register,
    split_metrics,
)
from .align import (
    Alignment,
    align_setup,
    loss_barrier,
    model_meta,
    ste_batch_size_option,
    ste_epochs_option,
    ste_lr_option,
    ste_warm_option,
)


@dataclass(frozen=True, kw_only=True)
class MergeManyConfig(Alignment, JobConfig):
    job = "merge-many"
    models: tuple[str, ...] = option(help="model checkpoints of one architecture",
                                     positional=True)
    method: str = option("wm", "MergeMany weight matching, STE-MM, or no alignment (plain "
                               "average)", choices=("wm", "ste-mm", "avg"))
    repair: bool = option(False, "REPAIR the merged model (models with BatchNorm always get BN "
                                 "reset)")
    points: int = option(11, "points per pairwise barrier", low=2)
    epochs: int | None = ste_epochs_option("STE-MM")
    lr: float = ste_lr_option("STE-MM")
    batch_size: int = ste_batch_size_option("STE-MM")
    warm: bool = ste_warm_option("STE-MM")
    hessian_probes: int = option(10, "Hutchinson probes for the Hessian trace of the merged model "
                                     "and of each member (0: skip)", low=0)
    hessian_batches: int = option(4, "training batches of 512 the Hessian trace averages over",
                                  low=1)

    def check(self) -> None:
        super().check()
        if len(self.models) < 2:
            raise self.invalid("models", "must name at least 2 checkpoints")


@dataclass
class MergeManyResult(Result):
    report: dict = field(default_factory=dict)  # what merge.json holds
    barriers: list[dict] = field(default_factory=list)  # what barriers.csv holds
    headline = ("test_loss", "test_acc", "hessian_trace")

    def records(self) -> list[Record]:
        r = self.report

        def metrics(entry: dict) -> dict[str, float]:
            out = split_metrics({s: entry[s] for s in ("train", "test") if s in entry})
            if "hessian_trace" in entry:
                out["hessian_trace"] = float(entry["hessian_trace"]["trace"])
            return out

        merged = metrics({**r["merged"], **({"hessian_trace": r["hessian_trace"]}
                                            if "hessian_trace" in r else {})})
        out = [({"model": "merged"}, merged), ({"model": "plain_average"}, metrics(r["plain_average"]))]
        if "merged_without_repair" in r:
            out.append(({"model": "merged_without_repair"}, metrics(r["merged_without_repair"])))
        out += [({"model": f"member{i}"}, metrics(m)) for i, m in enumerate(r["members"])]
        if self.barriers:
            pairs = [numbers(b) for b in self.barriers]
            out.append(({"model": "aligned_pairs"}, {
                k: sum(p[k] for p in pairs) / len(pairs) for k in pairs[0]}))
        return out

    def lines(self) -> list[str]:
        r = self.report
        m, p = r["merged"]["test"], r["plain_average"]["test"]
        k = score_of(m)
        scores = [member["test"][k] for member in r["members"]]
        out = [f"merged ({r['method']}, {r['normalisation']}): test {loss_and_score(m)} | "
               f"plain average: {loss_and_score(p)} | members {k} "
               f"{min(scores):.4f}–{max(scores):.4f}"]
        if "merged_without_repair" in r:
            w = r["merged_without_repair"]["test"]
            out.append(f"without REPAIR: test {loss_and_score(w)} "
                       f"(REPAIR {100 * (m[k] - w[k]):+.1f} points)")
        if "hessian_trace" in r:
            h = r["hessian_trace"]
            members = [member["hessian_trace"]["trace"] for member in r["members"]]
            out.append(f"Hessian trace (train, {h['probes']} probes × {h['batches']} batches): "
                       f"merged {h['trace']:.2f} ± {h['trace_se']:.2f} (SE) | members "
                       f"{min(members):.2f}–{max(members):.2f}")
        return out + super().lines()


def _ste_mm(models: Models, data: Prepared, spec: PermutationSpec, config: MergeManyConfig
            ) -> list[Permutation]:
    modules = [rebuild(c, data.train_x.device) for c in models.checkpoints]
    return ste_mm(modules, data.train_x, data.train_y, spec, epochs=config.epochs, lr=config.lr,
                  batch_size=config.batch_size, seed=config.seed, warm=config.warm,
                  loss_fn=data.task.loss, quiet=config.quiet).perms


# How the K models are aligned before averaging, by method: -> one Permutation per model.
MERGERS: dict[str, Callable[..., list[Permutation]]] = {
    "wm": lambda m, data, spec, c: merge_many(m.params, spec, seed=c.seed).perms,
    "ste-mm": _ste_mm,
    "avg": lambda m, data, spec, c: [Permutation.identity(spec) for _ in m.params],
}


@register("merge-many", MergeManyConfig, "align K models, average them, BN reset or REPAIR",
          Output("output directory", required=False, default="results/merge",
                 writes=artefacts.names(artefacts.CONFIG, artefacts.ENV, artefacts.MERGED,
                                        artefacts.MERGE, artefacts.PAIR_BARRIERS)))
def run_merge_many(config: MergeManyConfig, out: Path) -> MergeManyResult:
    """merged.safetensors, merge.json (merged, plain average, members; Hessian traces) and
    barriers.csv (test barriers between every aligned pair)."""
    models, data, spec = align_setup(config.models, config)
    out = output_dir(out, config.overwrite)
    model, ckpts, states = models.module, models.checkpoints, models.params
    perms = MERGERS[config.method](models, data, spec, config)
    aligned = [p.apply(s) for p, s in zip(perms, states, strict=True)]
    x = data.train_x
    final, repaired_by = normalise(model, aligned, average(aligned), x, config.repair)
    plain, _ = normalise(model, states, average(states), x, config.repair)
    ev = Evaluator(model, split_tensors(data), bn_data=x, bn_reset="off", task=data.task)
    results = ev.evaluate([final, plain, *states])
    names = [str(c.path) for c in ckpts]
    report = {"method": config.method, "normalisation": repaired_by, "merged": results[0],
              "plain_average": results[1],
              "plain_average_note": "the unaligned average, with the same normalisation "
                                    f"({repaired_by})",
              "members": [{"model": n, **r} for n, r in zip(names, results[2:], strict=True)]}
    if config.hessian_probes:  # flatness of the merged model beside its members', on train data
        traces = [hessian_trace(model, p, x, data.train_y, config.hessian_probes,
                                max_batches=config.hessian_batches, seed=config.seed,
                                task=data.task)
                  for p in [final, *states]]
        report["hessian_trace"] = traces[0]
        for member, tr in zip(report["members"], traces[1:], strict=True):
            member["hessian_trace"] = tr
    if repaired_by == "repair":  # what REPAIR bought: the aligned average without it
        report["merged_without_repair"] = ev.evaluate([average(aligned)])[0]
    rows = []
    test = split_tensors(data, ("test",))
    for i in range(len(aligned)):
        for j in range(i + 1, len(aligned)):
            _, summary = interpolate(model, aligned[i], aligned[j], test, bn_data=x,
                                     points=config.points, bn_reset="auto", task=data.task)
            rows.append({"a": names[i], "b": names[j], "test_loss_barrier": loss_barrier(summary),
                         "test_error_barrier": summary["test"]["error"]["linear"]["barrier"]})
    out.mkdir(parents=True, exist_ok=True)
    record(out, config, models.device)
    save_checkpoint(artefacts.MERGED.path(out), final,
                    **model_meta(ckpts[0], kind="model",
                                 merge={"method": config.method, "models": names,
                                        "normalisation": repaired_by}))
    artefacts.MERGE.write(out, report)
    artefacts.PAIR_BARRIERS.write(out, rows)
    return MergeManyResult(out, report, rows)

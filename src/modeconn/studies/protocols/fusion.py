"""fusion: the fusion protocol in one command — A and B on a heterogeneous split, a joint model,
every fusion method and the fair fine-tuned baselines — as a study, summarised in one table.

The study is the shipped examples/fusion.toml with the command's options applied."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from ... import artefacts
from ...data import require_classification
from ...io import write_text
from ...jobs import JobConfig, Output, Result, register
from ...jobs._inputs import HELP_SHIFT, Runtime
from ...merge import MPF_PRESETS
from ...options import option

HETEROGENEOUS = "label-skew:4=100,0-3=10,5-9=10"  # A: class 4 + 10% of the rest; B: the other 90%
EXAMPLE = "fusion.toml"  # in studies.EXAMPLES: the study this command runs

# The table's rows: (row, stage, filters on the result rows, accuracy metric, NLL metric).
ROWS = [
    ("Joint", "joint", {}, "test_acc", "test_loss"),
    ("A", "train", {"member": "a"}, "test_acc", "test_loss"),
    ("B", "train", {"member": "b"}, "test_acc", "test_loss"),
    ("ensemble(A, B)", "ensemble", {}, "acc", "nll"),
    ("AVG", "fuse", {"method": "avg", "model": "fused"}, "test_acc", "test_loss"),
    ("OT (weights)", "fuse", {"method": "ot", "model": "fused"}, "test_acc", "test_loss"),
    ("OT (activations)", "fuse_ot_activations", {"model": "fused"}, "test_acc", "test_loss"),
    ("OT, sidak/otfusion's defaults", "fuse_otfusion", {"model": "fused"}, "test_acc",
     "test_loss"),
    ("OT, sidak/otfusion's README", "fuse_otfusion_readme", {"model": "fused"}, "test_acc",
     "test_loss"),
    ("WM merge", "fuse", {"method": "wm", "model": "fused"}, "test_acc", "test_loss"),
    ("STE merge", "fuse", {"method": "ste", "model": "fused"}, "test_acc", "test_loss"),
    ("MPF", "fuse", {"method": "mpf", "model": "fused"}, "test_acc", "test_loss"),
    ("AVG fine-tuned (MPF's budget)", "finetuned", {"method": "avg", "model": "fused"},
     "test_acc", "test_loss"),
    ("OT fine-tuned (MPF's budget)", "finetuned", {"method": "ot", "model": "fused"},
     "test_acc", "test_loss"),
    ("MPF, reference procedure", "fuse_mpf_reference", {"model": "fused"}, "test_acc",
     "test_loss"),
    ("AVG fine-tuned (reference MPF's budget)", "finetuned_mpf_reference",
     {"method": "avg", "model": "fused"}, "test_acc", "test_loss"),
    ("OT fine-tuned (reference MPF's budget)", "finetuned_mpf_reference",
     {"method": "ot", "model": "fused"}, "test_acc", "test_loss"),
]
TRAINED = ("fuse", "fuse_ot_activations", "fuse_otfusion", "fuse_otfusion_readme", "finetuned",
           "fuse_mpf_reference", "finetuned_mpf_reference")  # the stages with per-subset accuracies
REFERENCE = "mpf-reference"  # the preset of the reference procedure's rows


@dataclass(frozen=True, kw_only=True)
class FusionConfig(Runtime, JobConfig):
    job = "fusion"
    dataset: str = option("digits", "the dataset (digits embedded; mnist, cifar10 … from "
                                     "--data-dir)")
    shift: str = option(HETEROGENEOUS, "how A's and B's data differ (default: A one class + 10% "
                                       "of the rest, B the other 90%); " + HELP_SHIFT)
    models: tuple[str, ...] = option(("mlpnet", "mlplarge", "mlphuge"),
                                     "architectures, comma-separated (the table's columns)",
                                     nonempty=True)
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds, comma-separated", low=0,
                                    nonempty=True)
    epochs: int = option(10, "training epochs of A, B and the joint model", low=1)
    lr: float = option(0.05, "their SGD learning rate", low=0, low_open=True)
    curve_epochs: int = option(5, "MPF's curve epochs — and the fine-tuning baselines' (one "
                                  "budget of gradient steps); the reference procedure's rows "
                                  f"keep its {MPF_PRESETS[REFERENCE]['epochs']}", low=1)
    jobs: int | None = option(None, "local worker processes (default: one per core)", low=1,
                              setting=False)
    quiet: bool = option(False, "no progress bars", setting=False)
    yes: bool = option(False, "start a study of more than 1,000 jobs", setting=False)

    def check(self) -> None:
        super().check()
        if len(set(self.seeds)) != len(self.seeds):
            raise self.invalid("seeds", "must not repeat a seed")

    def study(self) -> dict:
        """The study's tables: the shipped examples/fusion.toml with these settings (its values
        are the option defaults, so the defaults leave it as it is but for the description)."""
        from .. import EXAMPLES

        tables = tomllib.loads((EXAMPLES / EXAMPLE).read_text())
        tables["study"]["description"] = f"fusion on {self.dataset}, {self.shift}"
        for stage in ("train", "joint"):
            table = tables[stage]
            table.update(dataset=self.dataset, epochs=self.epochs, lr=self.lr)
            if self.data_dir:
                table["data_dir"] = self.data_dir
            table["sweep"]["seeds"] = list(self.seeds)
            table["sweep"]["grid"]["model"] = list(self.models)
        tables["train"]["shift"] = self.shift
        tables["fuse"]["epochs"] = self.curve_epochs
        tables["finetuned"]["finetune_epochs"] = self.curve_epochs
        # The reference procedure's rows keep its own budget, whatever --curve-epochs says.
        tables["finetuned_mpf_reference"]["finetune_epochs"] = MPF_PRESETS[REFERENCE]["epochs"]
        return tables


@dataclass
class FusionResult(Result):
    table: str = ""
    run: object = None
    cells: list[dict] = field(default_factory=list)

    def lines(self) -> list[str]:
        r = self.run
        return [self.table, *r.failed,
                f"study fusion: {len(r.study.jobs)} jobs; ran {r.ran}, found {r.reused} done, in "
                f"{r.seconds:.0f} s",
                f"wrote {self.out} (model_accuracies.csv, model_accuracies.md, per_subset.csv, "
                "the study's files)"]

    @property
    def exit_code(self) -> int:
        return 0 if self.run.complete else 1


def _cells(rows: list[dict], models: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """(one cell per table row × architecture and metric, per-subset accuracies)."""
    def arch(r: dict) -> str | None:
        return r.get("train.model", r.get("joint.model"))

    def ok(r: dict, stage: str, filters: dict) -> bool:
        return r["stage"] == stage and r["status"] == "complete" and all(
            str(r.get(k) if k != "method" else r.get("method")) == v for k, v in filters.items())

    cells, subsets = [], []
    for name, stage, filters, acc, nll in ROWS:
        for model in models:
            sel = [r for r in rows if ok(r, stage, filters) and arch(r) == model]
            for metric, key in (("test accuracy %", acc), ("test NLL", nll)):
                vals = [float(r["value"]) * (100 if "accuracy" in metric else 1)
                        for r in sel if r["metric"] == key]
                cells.append({"row": name, "model": model, "metric": metric,
                              "mean": statistics.fmean(vals) if vals else float("nan"),
                              "std": statistics.stdev(vals) if len(vals) > 1 else float("nan"),
                              "n": len(vals)})
            if stage in TRAINED:
                for key, what in (("own_a_train_acc", "A's subset"),
                                  ("own_b_train_acc", "B's subset")):
                    vals = [100 * float(r["value"]) for r in sel if r["metric"] == key]
                    if vals:
                        subsets.append({"row": name, "model": model, "on": what,
                                        "mean": statistics.fmean(vals),
                                        "std": statistics.stdev(vals) if len(vals) > 1 else "",
                                        "n": len(vals)})
    return cells, subsets


def markdown(cells: list[dict], models: tuple[str, ...], metric: str) -> str:
    """The table of one metric: a row per method, a column per architecture."""
    head = f"| {metric} | " + " | ".join(models) + " |"
    lines = [head, "|" + "---|" * (len(models) + 1)]
    for name, *_ in ROWS:
        out = []
        for model in models:
            c = next(c for c in cells if c["row"] == name and c["model"] == model
                     and c["metric"] == metric)
            out.append("n/a" if c["n"] == 0 else f"{c['mean']:.2f}" if c["n"] == 1
                       else f"{c['mean']:.2f} ± {c['std']:.2f}")
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    return "\n".join(lines)


@register("fusion", FusionConfig, "the fusion protocol: A and B on a heterogeneous split, joint "
                                  "training, AVG/OT/WM/STE/MPF and the fair fine-tuned baselines",
          Output("study directory", required=False, default="results/fusion"))
def run_fusion(config: FusionConfig, out: Path) -> FusionResult:
    """The fusion study in `out`, then model_accuracies.csv/.md (rows: methods, columns:
    architectures; mean ± std over seeds) and per_subset.csv (accuracy on A's and B's data)."""
    from .. import parse, run_study
    from .. import results as tables
    from ..spec import to_toml

    require_classification(config.dataset, "the fusion table's protocol")
    study = parse(to_toml(config.study()), EXAMPLE)
    run = run_study(study, out, workers=config.jobs, quiet=config.quiet,
                    overrides={"device": config.device}, yes=config.yes)
    rows, _ = tables.collect(run.out, study)
    cells, subsets = _cells(rows, config.models)
    artefacts.FUSION_ACCURACIES.write(run.out, cells, changed_only=True)
    artefacts.FUSION_PER_SUBSET.write(run.out, subsets, changed_only=True)
    held = (f"{config.dataset}, {config.shift}, {config.epochs} epochs (MPF and fine-tuning: "
            f"{config.curve_epochs}; the reference procedure's: "
            f"{MPF_PRESETS[REFERENCE]['epochs']}), {len(config.seeds)} seeds")
    text = "\n\n".join([f"Test accuracy and NLL, mean ± std over seeds — {held}",
                        markdown(cells, config.models, "test accuracy %"),
                        markdown(cells, config.models, "test NLL")])
    write_text(artefacts.FUSION_ACCURACIES_TEXT.path(run.out), text + "\n", changed_only=True)
    return FusionResult(run.out, table=text, run=run, cells=cells)

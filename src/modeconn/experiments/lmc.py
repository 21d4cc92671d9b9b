"""The LMC-under-data-shift study (Hepburn, Zielke, Raulf 2025) as one function.

For every configuration (model, shift, init, batch order, batch size, learning rate) and seed it
trains the members on disjoint subsets, interpolates the pair, scores an LMC ensemble (points on
the linear path) against an independent-seed ensemble of the same size, and aggregates mean ± std
over seeds into tidy tables and figures.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import artefacts, plots
from ..checkpoint import load_checkpoint, params_of
from ..data import DataSpec, eval_data, prepare_subsets
from ..ensemble import ensemble_metrics, member_scores, pairwise_similarity
from ..errors import UsageError
from ..evaluate import Evaluator
from ..io import output_dir
from ..models import build_model, model_config
from ..params import statistic_keys
from ..paths import check_tolerance, evaluate_path, grid, linear_path, summarize_path
from ..runtime import environment
from ..task import score_of
from ..train import (
    TrainConfig,
    check_trainable,
    init_model,
    noise_scale,
    plan_members,
    train_run,
)


@dataclass
class LMCStudy:
    """What to train and compare; every list is a grid axis. Each grid point trains with `train`
    at its own batch size and learning rate (`train.batch_size` and `train.lr` are not used);
    seed s splits the data with split seed `split_seed + s`."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    shift: str = "iid:50,50"
    num_subsets: int | None = None  # for shifts whose count is not in the string (dirichlet)
    split_seed: int = 0  # offset added to each seed's split seed
    normalise: str = "global"
    bands: str | None = None  # band sets per subset on top of the shift (multispectral data)
    on_bad_patch: str = "fail"
    inits: tuple[str, ...] = ("same",)
    batch_orders: tuple[str, ...] = ("same", "independent")
    batch_sizes: tuple[int, ...] = (32,)
    lrs: tuple[float, ...] = (0.05,)
    seeds: tuple[int, ...] = (0, 1, 2)
    train: TrainConfig = field(default_factory=TrainConfig)
    points: int = 25
    ensemble_size: int = 3
    bn_reset: str = "auto"
    tolerance: float = 0.01
    contrast: bool = False  # add one init-different configuration as a contrast row
    lr_scaling: str = "none"  # "linear": lr × batch size / first batch size (same epoch budget)

    @property
    def name(self) -> str:
        return self.label or self.model

    def configurations(self) -> list[dict[str, Any]]:
        """One dict per grid point (seeds excluded), with a directory-safe id."""
        out = []
        grid_ = list(itertools.product(self.inits, self.batch_orders, self.batch_sizes, self.lrs))
        if self.contrast and "different" not in self.inits:
            grid_.append(("different", self.batch_orders[0], self.batch_sizes[0], self.lrs[0]))
        for init, order, bs, lr in grid_:
            if self.lr_scaling == "linear":
                lr = lr * bs / self.batch_sizes[0]
            cfg = {"model": self.name, "shift": self.shift, "init": init, "batch_order": order,
                   "batch_size": bs, "lr": lr}
            cfg["id"] = (f"{self.name}_{self.shift.replace(':', '-').replace(',', '_')}"
                         f"_init-{init}_order-{order}_bs{bs}_lr{lr:g}").replace("|", "+")
            out.append(cfg)
        return out

    def validate(self) -> None:
        """Raise UsageError on an impossible study (naming the study's field)."""
        for v, what in ((self.seeds, "seeds"), (self.batch_sizes, "batch_sizes"),
                        (self.lrs, "lrs")):
            if not v:
                raise UsageError(f"'{what}' of the LMC study needs at least one value")
        if any(b <= 0 for b in self.batch_sizes):
            raise UsageError(f"'batch_sizes' of the LMC study must be positive, got "
                             f"{list(self.batch_sizes)}")
        if any(not 0 < lr < math.inf for lr in self.lrs):
            raise UsageError(f"'lrs' of the LMC study must be positive numbers, got "
                             f"{list(self.lrs)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"'seeds' of the LMC study has repeated values: {self.seeds}")
        if min(self.seeds) < 0 or self.split_seed < 0:
            raise UsageError(f"'seeds' and 'split_seed' of the LMC study must be >= 0, got "
                             f"{list(self.seeds)} and {self.split_seed}")
        check_tolerance(self.tolerance)
        if self.ensemble_size < 2:
            raise UsageError(f"'ensemble_size' of the LMC study must be at least 2, got "
                             f"{self.ensemble_size}")
        if self.lr_scaling not in ("none", "linear"):
            raise UsageError(f"'lr_scaling' of the LMC study must be none or linear, got "
                             f"{self.lr_scaling!r}")
        if self.shift == "none":
            raise UsageError("the LMC study needs a shift with at least two subsets, e.g. iid:50,50")
        grid(self.points)


def run_study(study: LMCStudy, out: Path, device: torch.device, resume: bool = False,
              quiet: bool = False, log: Callable[[str], None] | None = None
              ) -> list[dict[str, Any]]:
    """Run the study into `out`; return the summary rows (one per configuration).

    With `resume`, finished runs are reused as they are and a complete study is returned from
    its status.json without touching a file; `log` receives one progress line per configuration.
    """
    study.validate()
    out = output_dir(out, allowed=resume, way="resume")
    base = DataSpec(dataset=study.dataset, shift=study.shift, num_subsets=study.num_subsets,
                    split_seed=study.split_seed + study.seeds[0], norm=study.normalise,
                    bands=study.bands, on_bad_patch=study.on_bad_patch)
    subsets = {s: prepare_subsets(replace(base, split_seed=study.split_seed + s), study.data_dir)
               for s in study.seeds}
    if len(subsets[study.seeds[0]]) != 2:
        raise UsageError(f"the LMC study compares pairs, but shift {study.shift!r} makes "
                         f"{len(subsets[study.seeds[0]])} subsets; use a shift with 2 subsets "
                         "(e.g. iid:50,50, or 2 subsets)")
    first = subsets[study.seeds[0]][0]
    shapes = {tuple(p.input_shape) for subs in subsets.values() for p in subs}
    if len(shapes) > 1:
        raise UsageError(f"the LMC study interpolates each pair, but its subsets' inputs have "
                         f"{' and '.join(str(s[0]) for s in sorted(shapes))} channels; give "
                         "both subsets band sets of one size (e.g. bands:B04,B03,B02|B08,B11,B12)")
    model_cfg = model_config(study.model, first.input_shape, first.num_classes,
                             **study.model_options)
    smallest = min(len(p.train_y) for subs in subsets.values() for p in subs)
    check_trainable(init_model(model_cfg, 0), min(study.batch_sizes), smallest)
    full = eval_data(base, "full", study.data_dir).to(device)
    splits = {"train": (full.train_x, full.train_y), "test": (full.test_x, full.test_y)}
    record = asdict(study)
    for key in ("bands", "on_bad_patch"):  # added later: recorded where not the default
        if record[key] == LMCStudy.__dataclass_fields__[key].default:
            del record[key]
    record["train"].update(batch_size=None, lr=None)  # each configuration's: batch_sizes, lrs
    study_record = {**record, "model_config": model_cfg}
    if resume and artefacts.LMC_STUDY.path(out).is_file():
        if not artefacts.LMC_STUDY.holds(out, study_record):
            raise UsageError(f"{out}: resumed with different study settings than the original "
                             "run (study.json differs); repeat the original settings or use a "
                             "new output directory")
        if artefacts.LMC_STATUS.path(out).is_file():
            status = artefacts.LMC_STATUS.read(out)
            if status.get("status") == "complete":
                if log:
                    log("complete, reused as it is")
                return status["summary"]
    out.mkdir(parents=True, exist_ok=True)
    artefacts.LMC_STUDY.write(out, study_record, changed_only=True)
    if not (resume and artefacts.ENV.path(out).is_file()):  # a resumed study keeps its start's
        artefacts.ENV.write(out, environment(device))

    task = first.task
    evaluator = Evaluator(build_model(model_cfg).to(device), splits, bn_data=full.train_x,
                          bn_reset=study.bn_reset, task=task)
    ts = grid(study.points)
    k = study.ensemble_size
    tables: dict[str, list[dict]] = defaultdict(list)
    summary = []
    configurations = study.configurations()
    for index, cfg in enumerate(configurations, 1):
        t0 = time.perf_counter()
        train_cfg = replace(study.train, batch_size=cfg["batch_size"], lr=cfg["lr"])
        finals: dict[int, list[dict[str, torch.Tensor]]] = {}
        per_seed: list[dict] = []
        diverged = 0
        for seed in study.seeds:
            members = plan_members(replace(base, split_seed=study.split_seed + seed),
                                   subsets[seed], cfg["init"], [seed], cfg["batch_order"], seed)
            run_dir = out / "runs" / cfg["id"] / f"seed{seed}"
            results = train_run(model_cfg, members, train_cfg, run_dir, device, resume=resume,
                                quiet=quiet, run_info={"study_config": cfg}, task=task)
            for m in members:
                for row in artefacts.METRICS.read(run_dir / m.name):
                    tables["learning_curves"].append({
                        **_keys(cfg), "seed": seed, "member": m.name, "epoch": row["epoch"],
                        "split": row["split"], "loss": row["loss"],
                        task.score: row[task.score], "epoch_lr": row["lr"]})
            if any(r["status"] != "complete" for r in results):
                diverged += 1
                continue
            params = [params_of(load_checkpoint(artefacts.MODEL.path(run_dir / m.name)), device)
                      for m in members]
            finals[seed] = params
            path = linear_path(params[0], params[1])
            rows = evaluate_path(path, evaluator, ts)
            bar = summarize_path(rows, study.tolerance)
            tables["paths"].extend({**_keys(cfg), "seed": seed, **r} for r in rows)
            for split, s in bar.items():
                for metric in ("loss", "error"):
                    for definition, v in s[metric].items():
                        tables["barriers"].append({**_keys(cfg), "seed": seed, "split": split,
                                                   "metric": metric, "definition": definition,
                                                   "barrier": v["barrier"], "lambda": v["lambda"]})
            lmc_probs = evaluator.probabilities(path.points(grid(k)), "test")
            lmc = ensemble_metrics(lmc_probs, full.test_y, task=task)
            tables["ensembles"].append({**_keys(cfg), "seed": seed, "ensemble": f"lmc-{k}", **lmc})
            per_seed.append({"seed": seed, "bar": bar, "lmc": lmc})
        # Independent-seed ensembles: member a of k different seeds (distinct initialisations).
        ok = sorted(finals)
        # One rotation per seed; with exactly k seeds every rotation is the same ensemble.
        rotations = range(len(ok)) if len(ok) > k else range(1 if len(ok) == k else 0)
        for i in rotations:
            seed = ok[i]
            members = [finals[ok[(i + j) % len(ok)]][0] for j in range(k)]
            ind = ensemble_metrics(evaluator.probabilities(members, "test"), full.test_y,
                                   task=task)
            tables["ensembles"].append({**_keys(cfg), "seed": seed, "ensemble": f"independent-{k}",
                                        **ind})
            next(p for p in per_seed if p["seed"] == seed)["ind"] = ind
        if ok:
            _similarity(cfg, finals, ok, evaluator, full.test_y, tables, out)
        n = len(subsets[study.seeds[0]][0].train_y)
        summary.append(_aggregate(cfg, per_seed, diverged, len(study.seeds),
                                  noise_scale(cfg["lr"], n, cfg["batch_size"]), k))
        if log:
            log(f"[{index}/{len(configurations)}] init {cfg['init']}, order {cfg['batch_order']}, "
                f"bs {cfg['batch_size']}, lr {cfg['lr']:g}: {len(per_seed)}/{len(study.seeds)} "
                f"seeds trained and evaluated ({time.perf_counter() - t0:.1f} s)")
    _write(out, study, tables, summary)
    # Written last: a study with this file is complete, and a resume returns it as it is.
    artefacts.LMC_STATUS.write(out, {"status": "complete", "summary": summary})
    return summary


def _keys(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("id", "model", "shift", "init", "batch_order", "batch_size", "lr")}


def _similarity(cfg: dict, finals: dict, ok: list[int], evaluator: Evaluator, y: torch.Tensor,
                tables: dict, out: Path) -> None:
    """Pairwise similarity of the first seed's pair, its midpoint and another seed's member."""
    a, b = finals[ok[0]]
    mid = linear_path(a, b).point(0.5)
    names, points = ["a", "b", "midpoint"], [a, b, mid]
    if len(ok) > 1:
        names.append(f"independent(seed{ok[1]})")
        points.append(finals[ok[1]][0])
    probs = evaluator.probabilities(points, "test")
    feats = evaluator.features(points, "test")
    task = evaluator.task
    rows = pairwise_similarity(names, probs, y, points, feats, statistic_keys(evaluator.model),
                               task=task)
    tables["similarity"].extend({**_keys(cfg), "seed": ok[0], **r} for r in rows)
    ref = [r for r in rows if r["a"] == "a"]
    fig = plots.polar_similarity_figure(["a"] + [r["b"] for r in ref],
                                        [1.0] + [r["weight_cosine"] for r in ref],
                                        member_scores(probs, y, task), title=_title(cfg, ok[0]),
                                        rlabel=f"test {plots.SCORE_LABEL[task.score]}")
    plots.save(fig, out / "figures" / f"polar_{cfg['id']}.png")


def _title(cfg: dict, seed: int) -> str:
    """A configuration in words for a figure's title (its id is for file names)."""
    return (f"{cfg['model']}, {cfg['shift']}: init {cfg['init']}, batch order "
            f"{cfg['batch_order']}, batch size {cfg['batch_size']}, lr {cfg['lr']:g} (seed {seed})")


def _ms(values: list[float]) -> tuple[float, float]:
    """Mean and sample std; the std of one value is NaN (not measured), not 0."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def _aggregate(cfg: dict, per_seed: list[dict], diverged: int, seeds: int, g: float,
               k: int) -> dict:
    row: dict[str, Any] = {**_keys(cfg), "seeds_ok": len(per_seed), "diverged": diverged,
                           "noise_scale_g": g}
    for split in ("train", "test"):
        for metric in ("loss", "error"):
            m, s = _ms([p["bar"][split][metric]["linear"]["barrier"] for p in per_seed])
            row[f"{split}_{metric}_barrier"], row[f"{split}_{metric}_barrier_std"] = m, s
        score = per_seed[0]["bar"][split].get("score", "acc") if per_seed else "acc"
        m, s = _ms([p["bar"][split][f"delta_{score}"] for p in per_seed])
        row[f"{split}_delta_{score}"], row[f"{split}_delta_{score}_std"] = m, s
    row["connected"] = sum(p["bar"]["train"]["connected"] for p in per_seed)
    for kind in ("lmc", "ind"):
        vals = [p[kind] for p in per_seed if kind in p]
        for key in (score, "nll", f"gain_{score}"):
            m, s = _ms([v[key] for v in vals])
            row[f"{kind}_ens_{key}"], row[f"{kind}_ens_{key}_std"] = m, s
        row[f"{kind}_ens_n"] = len(vals)  # independent: 1 with exactly k seeds (one ensemble)
    row["ensemble_size"] = k
    return row


def summary_table(rows: list[dict]) -> str:
    """The study summary as a fixed-width text table."""
    k = summary_score(rows)
    w = max([26] + [len(r["shift"]) for r in rows])  # band shifts are long
    head = (f"{'model':<10} {'shift':<{w}} {'init':<9} {'order':<11} {'bs':>4} {'lr':>6} {'g':>7} "
            f"{'train barrier':>15} {'test barrier':>15} {f'test Δ{k} %':>13} "
            f"{'LMC ens gain %':>14} {'ind ens gain %':>14} {'ok':>4}")
    lines = [head, "-" * len(head)]
    for r in rows:
        def pm(key, scale=1.0):
            m, s = r[key] * scale, r[f"{key}_std"] * scale
            if m != m:
                return "n/a"
            return f"{m:.3f} (n=1)" if s != s else f"{m:.3f}±{s:.3f}"  # one value: no spread
        lines.append(
            f"{r['model']:<10} {r['shift']:<{w}} {r['init']:<9} {r['batch_order']:<11} "
            f"{r['batch_size']:>4} {r['lr']:>6g} {r['noise_scale_g']:>7.2f} "
            f"{pm('train_loss_barrier'):>15} {pm('test_loss_barrier'):>15} "
            f"{pm(f'test_delta_{k}', 100):>13} {pm(f'lmc_ens_gain_{k}', 100):>14} "
            f"{pm(f'ind_ens_gain_{k}', 100):>14} {r['seeds_ok']:>2}/{r['seeds_ok'] + r['diverged']}")
    return "\n".join(lines)


def summary_score(rows: list[dict]) -> str:
    """The score a study's summary rows measure ('acc', or 'f1' for a multi-label task)."""
    return "f1" if rows and "test_delta_f1" in rows[0] else "acc"


def write_summary(out: Path, summary: list[dict], changed_only: bool = False,
                  table: artefacts.Table = artefacts.LMC_SUMMARY) -> bool:
    """summary.csv in `out`, with an empty std where there was one value to average (n = 1: see
    `seeds_ok`, `lmc_ens_n`, `ind_ens_n`), so a spread that was never measured does not read 0."""
    return table.write(out, [{k: "" if k.endswith("_std") and v != v else v for k, v in r.items()}
                             for r in summary], changed_only=changed_only)


def _write(out: Path, study: LMCStudy, tables: dict, summary: list[dict]) -> None:
    score = score_of(tables["paths"][0]) if tables["paths"] else summary_score(summary)
    for name, rows in tables.items():
        artefacts.LMC_TABLES[name].write(out, rows)
    write_summary(out, summary)
    fig_dir = out / "figures"
    # Interpolation curves with std bands, one figure per configuration group.
    agg: dict[str, list[dict]] = {}
    groups: dict[tuple, dict[str, list]] = defaultdict(dict)
    for cfg_id in dict.fromkeys(r["id"] for r in tables["paths"]):
        sel = [r for r in tables["paths"] if r["id"] == cfg_id]
        rows = []
        for (t, split) in dict.fromkeys((r["t"], r["split"]) for r in sel):
            pts = [r for r in sel if r["t"] == t and r["split"] == split]
            lm, ls = _ms([r["loss"] for r in pts])
            am, as_ = _ms([r[score] for r in pts])
            rows.append({"t": t, "split": split, "loss": lm, "loss_std": ls, score: am,
                         f"{score}_std": as_})
        agg[cfg_id] = rows
        c = sel[0]
        groups[(c["model"], c["init"])][f"{c['batch_order']} bs{c['batch_size']} lr{c['lr']:g}"] = rows
    artefacts.LMC_PATHS_MEAN.write(out, [{"id": k, **r} for k, rows in agg.items() for r in rows])
    for (model, init), curves in groups.items():
        plots.save(plots.path_figure(curves, title=f"{model}, {study.shift}, init {init} "
                                     "(mean ± std over seeds)"),
                   fig_dir / f"interpolation_{model}_init-{init}.png")
    # Learning curves (mean over seeds and members) per configuration group.
    lc: dict[tuple, dict[str, list]] = defaultdict(dict)
    for cfg_id in dict.fromkeys(r["id"] for r in tables["learning_curves"]):
        sel = [r for r in tables["learning_curves"] if r["id"] == cfg_id]
        rows = []
        for ep, split in dict.fromkeys((r["epoch"], r["split"]) for r in sel):
            pts = [r for r in sel if r["epoch"] == ep and r["split"] == split]
            rows.append({"epoch": ep, "split": split,
                         "loss": _ms([float(r["loss"]) for r in pts])[0],
                         score: _ms([float(r[score]) for r in pts])[0]})
        c = sel[0]
        lc[(c["model"], c["init"])][f"{c['batch_order']} bs{c['batch_size']} lr{c['lr']:g}"] = rows
    for (model, init), runs in lc.items():
        plots.save(plots.learning_curves_figure(runs, title=f"{model}, {study.shift}, "
                                                f"init {init}"),
                   fig_dir / f"learning_curves_{model}_init-{init}.png")
    if summary:
        labels = [f"{r['model']} {r['init']} {r['batch_order']} bs{r['batch_size']} lr{r['lr']:g}"
                  for r in summary]
        held = f"{study.dataset}, {study.shift}, {study.train.epochs} epochs (mean ± std over seeds)"
        none_ok = "all runs diverged — nothing to plot"
        plots.save(plots.bar_figure(labels, {
            s: ([r[f"{s}_loss_barrier"] for r in summary],
                [r[f"{s}_loss_barrier_std"] for r in summary]) for s in ("train", "test")},
            f"loss barrier ({'binary ' if score == 'f1' else ''}cross-entropy)",
            f"loss barrier per configuration\n{held}",
            missing="diverged", empty=none_ok), fig_dir / "barriers.png")
        plots.save(plots.bar_figure(labels, {
            s: ([100 * r[f"{s}_delta_{score}"] for r in summary],
                [100 * r[f"{s}_delta_{score}_std"] for r in summary]) for s in ("train", "test")},
            f"Δ {plots.SCORE_LABEL[score]} at λ* (percentage points)",
            f"{plots.SCORE_LABEL[score]} drop along the path (−5 points reference)\n{held}",
            hline=-5.0,
            missing="diverged", empty=none_ok), fig_dir / "delta.png")

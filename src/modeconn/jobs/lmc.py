"""lmc: the LMC-under-data-shift measurement (Hepburn, Zielke & Raulf 2025) of one training
configuration over seeds.

For each seed it trains the two members on disjoint subsets, interpolates the pair, scores an LMC
ensemble (points on the linear path) against an independent-seed ensemble of the same size, and
aggregates mean ± std over seeds. The options describe a grid (inits × batch orders × batch sizes
× learning rates, plus a contrast row); a study runs one job per configuration of it
(`LMCConfig.expand`), and `modeconn lmc` runs that study (modeconn.studies.protocols.lmc).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import artefacts, plots
from ..checkpoint import load_checkpoint, params_of
from ..data import BAND_SHIFTS, DataSpec, eval_data, prepare_subsets
from ..ensemble import ensemble_metrics, member_scores, pairwise_similarity
from ..errors import UsageError
from ..evaluate import Evaluator
from ..io import output_dir
from ..models import build_model, model_config
from ..options import option
from ..params import statistic_keys
from ..paths import check_tolerance, evaluate_path, grid, linear_path, summarize_path
from ..runtime import environment, resolve_device
from ..task import score_of
from ..train import TrainConfig, check_trainable, init_model, noise_scale, plan_members, train_run
from ._inputs import (
    HELP_SHIFT,
    DataOptions,
    ModelOptions,
    Runtime,
    bn_reset_option,
    quiet_option,
)
from ._registry import JobConfig, Output, Record, Result, numbers, register

VIEWS = ("a", "both")  # through whose channels the paths are evaluated


@dataclass(frozen=True, kw_only=True)
class LMCConfig(Runtime, TrainConfig, ModelOptions, DataOptions, JobConfig):
    job = "lmc"
    hidden = ("save_epochs", "eval_batch_size")
    shift: str = option("iid:50,50", HELP_SHIFT)
    split_seed: int = option(0, "seed of the split into subsets and of dirichlet proportions "
                                "(added to each of --seeds)", low=0)
    # One value is a one-value grid: batch_size B is batch_sizes (B,), lr L is lrs (L,).
    batch_size: int | None = option(None, "examples per optimisation step (one value: "
                                          "--batch-sizes B)", low=1)
    lr: float | None = option(None, "peak learning rate (one value: --lrs L)", low=0,
                              low_open=True)
    init: tuple[str, ...] = option(("same",), "same, different, or same,different",
                                   choices=("same", "different"), nonempty=True)
    batch_order: tuple[str, ...] = option(("same", "independent"),
                                          "same, independent, or both comma-separated",
                                          choices=("same", "independent"), nonempty=True)
    batch_sizes: tuple[int, ...] | None = option(
        None, "grid of batch sizes, comma-separated (default 32; --batch-size B is "
              "--batch-sizes B)", low=1, nonempty=True)
    lrs: tuple[float, ...] | None = option(
        None, "grid of learning rates, comma-separated (default 0.05; --lr L is --lrs L)",
        low=0, low_open=True, nonempty=True)
    lr_scaling: str = option("none", "linear: scale each lr by batch size / first batch size",
                             choices=("none", "linear"))
    seeds: tuple[int, ...] = option((0, 1, 2), "one pair of models per seed and configuration",
                                    low=0, nonempty=True)
    points: int = option(25, "evenly spaced λ in [0, 1] per path", low=2)
    ensemble_size: int = option(3, "members of the LMC (points on the path) and independent "
                                   "ensembles", low=2)
    bn_reset: str = bn_reset_option(help="re-estimate BatchNorm statistics at every point "
                                         "(auto: when the model has BN)")
    tolerance: float = option(0.01, "largest train loss barrier counted as connected", low=0)
    contrast: bool = option(False, "add one init-different configuration (first batch order, "
                                   "batch size and lr) as a contrast row")
    label: str | None = option(None, "the model's name in tables and figures (default: --model)")
    views: str = option("a", "where the subsets see different channels (a band or sensor shift, "
                             "or --bands per subset): evaluate each path on the whole dataset "
                             "through subset a's channels, or through each subset's (both: "
                             "splits train@b, test@b beside train, test)", choices=VIEWS,
                        later=True)
    resume: bool = option(False, "continue an interrupted study in --out, reusing finished runs",
                          setting=False)
    quiet: bool = quiet_option()

    def check(self) -> None:
        super().check()
        for one, many in (("batch_size", "batch_sizes"), ("lr", "lrs")):
            if getattr(self, one) is not None and getattr(self, many) is not None:
                raise self.invalid(one, f"must not be given with '{many}' (one value or a grid, "
                                        "not both)")
        if len(set(self.seeds)) != len(self.seeds):
            raise self.invalid("seeds", "must not repeat a seed")
        if self.shift == "none":
            raise self.invalid("shift", "must split the data into two subsets, e.g. iid:50,50")
        if self.views == "both" and self.shift.partition(":")[0] not in BAND_SHIFTS \
                and "|" not in (self.bands or ""):
            raise self.invalid("views", "must be a unless the subsets see different channels: "
                                        "a band or sensor shift (bands:…, sensors:…) or --bands "
                                        "with a set per subset")
        check_tolerance(self.tolerance)
        grid(self.points)

    @property
    def batch_size_grid(self) -> tuple[int, ...]:
        """The batch sizes of the grid (one value when `batch_size` is given)."""
        return self.batch_sizes or ((self.batch_size,) if self.batch_size is not None else (32,))

    @property
    def lr_grid(self) -> tuple[float, ...]:
        """The learning rates of the grid (one value when `lr` is given)."""
        return self.lrs or ((self.lr,) if self.lr is not None else (0.05,))

    @property
    def name(self) -> str:
        """The model's name in tables and figures."""
        return self.label or self.model

    def configurations(self) -> list[dict[str, Any]]:
        """One dict per grid point (seeds excluded), with a directory-safe id."""
        out = []
        sizes, lrs = self.batch_size_grid, self.lr_grid
        points = list(itertools.product(self.init, self.batch_order, sizes, lrs))
        if self.contrast and "different" not in self.init:
            points.append(("different", self.batch_order[0], sizes[0], lrs[0]))
        for init, order, bs, lr in points:
            if self.lr_scaling == "linear":
                lr = lr * bs / sizes[0]
            cfg = {"model": self.name, "shift": self.shift, "init": init, "batch_order": order,
                   "batch_size": bs, "lr": lr}
            cfg["id"] = (f"{self.name}_{self.shift.replace(':', '-').replace(',', '_')}"
                         f"_init-{init}_order-{order}_bs{bs}_lr{lr:g}").replace("|", "+")
            out.append(cfg)
        return out

    def expand(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """One job per configuration: its grid of one point (the learning rate as scaled)."""
        return [({k: cfg[k] for k in ("init", "batch_order", "batch_size", "lr")},
                 {"init": [cfg["init"]], "batch_order": [cfg["batch_order"]], "batch_size": None,
                  "lr": None, "batch_sizes": [cfg["batch_size"]], "lrs": [cfg["lr"]],
                  "lr_scaling": "none", "contrast": False})
                for cfg in self.configurations()]

    def train_config(self, cfg: dict[str, Any]) -> TrainConfig:
        """How each member of configuration `cfg` trains."""
        train = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**train, "batch_size": cfg["batch_size"], "lr": cfg["lr"],
                              "save_epochs": ()})

    def seed_spec(self, seed: int) -> DataSpec:
        """The split of seed `seed` (split seed `split_seed + seed`)."""
        return self.data_spec(self.split_seed + seed)

    def adopt(self, out: Path, earlier: Iterable[Path]) -> bool:
        """Move this configuration's training runs out of a directory modeconn 0.1 wrote with
        the same settings (a `modeconn lmc` output, or an lmc job's of a study, which then held
        the whole grid) into `out`, recorded so that this job continues them. Whether it did."""
        (cfg,) = self.configurations()
        found = [d for d in earlier if (d / "runs" / cfg["id"]).is_dir()
                 and artefacts.LMC_STUDY.path(d).is_file()]
        if not found:
            return False
        model_cfg = prepare(self, cfg["batch_size"])[1]
        want = _without_grid(earlier_record(self, model_cfg))
        for d in found:
            if _without_grid(artefacts.LMC_STUDY.read(d)) != want:
                continue
            (out / "runs").mkdir(parents=True, exist_ok=True)
            # The record first: a job found with runs but no record would start again.
            artefacts.CONFIG.write(out, {"job": self.job, "config": self.to_dict(),
                                         "model_config": model_cfg}, changed_only=True)
            artefacts.ENV.write(out, artefacts.ENV.read(d), changed_only=True)
            os.replace(d / "runs" / cfg["id"], out / "runs" / cfg["id"])
            return True
        return False


@dataclass
class LMCResult(Result):
    summary: list[dict] = field(default_factory=list)
    headline = ("test_loss_barrier", "test_delta_acc", "lmc_ens_gain_acc", "ind_ens_gain_acc")

    def records(self) -> list[Record]:
        keys = ("init", "batch_order", "batch_size", "lr")
        return [({k: r[k] for k in keys}, numbers({k: v for k, v in r.items()
                                                    if k not in keys and not k.endswith("_std")}))
                for r in self.summary]

    def lines(self) -> list[str]:
        return [summary_table(self.summary)] + super().lines()


@register("lmc", LMCConfig, "one configuration of the LMC-under-data-shift study over its seeds: "
                            "train pairs, interpolate, ensembles (a grid: one job each)",
          Output("output directory", writes=(
              *artefacts.names(artefacts.CONFIG, artefacts.ENV, artefacts.LMC_STATUS), "*.csv",
              "figures/*", "runs/*")))
def run_lmc(config: LMCConfig, out: Path) -> LMCResult:
    """One configuration over its seeds in `out`: the runs, the tables and the pair's similarity
    figure; config.json is its record, checked on resume, and status.json (written last) marks
    it complete. A grid of several configurations runs as a study (`modeconn lmc`)."""
    configurations = config.configurations()
    if len(configurations) != 1:
        raise UsageError(f"an lmc job measures one configuration, these options describe "
                         f"{len(configurations)}; run the grid as a study (modeconn lmc, or an "
                         "lmc stage of a study file: one job per configuration)")
    (cfg,) = configurations
    device = resolve_device(config.device)
    out = output_dir(out, allowed=config.resume, way="resume")
    subsets, model_cfg = prepare(config, cfg["batch_size"])
    first_seed = config.seeds[0]
    first = subsets[first_seed][0]
    if config.resume and artefacts.CONFIG.path(out).is_file():
        _check_record(out, config)
        if artefacts.LMC_STATUS.path(out).is_file():
            status = artefacts.LMC_STATUS.read(out)
            if status.get("status") == "complete":
                return LMCResult(out, status["summary"])
    out.mkdir(parents=True, exist_ok=True)
    if not artefacts.CONFIG.path(out).is_file():  # a resumed job keeps its start's records
        artefacts.CONFIG.write(out, {"job": config.job, "config": config.to_dict(),
                                     "model_config": model_cfg})
        artefacts.ENV.write(out, environment(device))
    base = config.seed_spec(first_seed)
    full = eval_data(base, "full", config.data_dir).to(device)
    task = first.task

    def evaluator_of(data) -> Evaluator:
        return Evaluator(build_model(model_cfg).to(device),
                         {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)},
                         bn_data=data.train_x, bn_reset=config.bn_reset, task=task)

    evaluator = evaluator_of(full)
    # Subset b's view: the whole dataset through b's channels (its own BN statistics too).
    views = {"@b": evaluator_of(eval_data(dataclasses.replace(base, subset=1), "full",
                                          config.data_dir).to(device))} \
        if config.views == "both" else {}
    tables, row = _measure(config, cfg, out, device, subsets, model_cfg, evaluator, full.test_y,
                           views)
    write_tables(out, tables, [row])
    # Written last: a job with this file is complete, and a resume returns it as it is.
    artefacts.LMC_STATUS.write(out, {"status": "complete", "summary": [row]})
    return LMCResult(out, [row])


def prepare(config: LMCConfig, batch_size: int) -> tuple[dict[int, list], dict[str, Any]]:
    """(each seed's two subsets, the model config), refused in one line where the study cannot
    run: a shift that does not make two subsets, subsets of different input shapes, a batch
    size the smallest subset or the model cannot train with."""
    subsets = {s: prepare_subsets(config.seed_spec(s), config.data_dir) for s in config.seeds}
    made = len(subsets[config.seeds[0]])
    if made != 2:
        raise UsageError(f"the LMC study compares pairs, but shift {config.shift!r} makes "
                         f"{made} subsets; use a shift with 2 subsets (e.g. iid:50,50, or 2 "
                         "subsets)")
    shapes = {tuple(p.input_shape) for subs in subsets.values() for p in subs}
    if len(shapes) > 1:
        raise UsageError(f"the LMC study interpolates each pair, but its subsets' inputs have "
                         f"{' and '.join(str(s[0]) for s in sorted(shapes))} channels; give "
                         "both subsets band sets of one size (e.g. bands:B04,B03,B02|B08,B11,B12)")
    first = subsets[config.seeds[0]][0]
    model_cfg = model_config(config.model, first.input_shape, first.num_classes,
                             **config.overrides())
    smallest = min(len(p.train_y) for subs in subsets.values() for p in subs)
    check_trainable(init_model(model_cfg, 0), batch_size, smallest)
    return subsets, model_cfg


def _check_record(out: Path, config: LMCConfig) -> None:
    """Refuse to resume `out` with settings other than those it was started with."""
    recorded = artefacts.CONFIG.read(out)
    try:
        same = (recorded.get("job") == config.job and LMCConfig.from_dict(
            recorded["config"]).to_dict(settings_only=True) == config.to_dict(settings_only=True))
    except (KeyError, TypeError, ValueError, UsageError):
        same = False
    if not same:
        raise UsageError(f"{out}: resumed with different settings than the original run "
                         "(config.json differs); repeat the original settings or use a new "
                         "output directory")


def _measure(config: LMCConfig, cfg: dict, out: Path, device: torch.device, subsets: dict,
             model_cfg: dict, evaluator: Evaluator, test_y: torch.Tensor,
             views: dict[str, Evaluator] | None = None) -> tuple[dict[str, list[dict]], dict]:
    """Train, interpolate and ensemble the pair of every seed: (tables, summary row). `views`:
    more evaluators of the paths by split suffix (subset b's channels: '@b')."""
    t0 = time.perf_counter()
    task = evaluator.task
    ts = grid(config.points)
    k = config.ensemble_size
    tables: dict[str, list[dict]] = defaultdict(list)
    train_cfg = config.train_config(cfg)
    finals: dict[int, list[dict[str, torch.Tensor]]] = {}
    per_seed: list[dict] = []
    diverged = 0
    for seed in config.seeds:
        members = plan_members(config.seed_spec(seed), subsets[seed], cfg["init"], [seed],
                               cfg["batch_order"], seed)
        run_dir = out / "runs" / cfg["id"] / f"seed{seed}"
        results = train_run(model_cfg, members, train_cfg, run_dir, device, resume=config.resume,
                            quiet=config.quiet, run_info={"study_config": cfg}, task=task)
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
        for suffix, ev in (views or {}).items():
            rows += [{**r, "split": r["split"] + suffix} for r in evaluate_path(path, ev, ts)]
        bar = summarize_path(rows, config.tolerance)
        tables["paths"].extend({**_keys(cfg), "seed": seed, **r} for r in rows)
        for split, s in bar.items():
            for metric in ("loss", "error"):
                for definition, v in s[metric].items():
                    tables["barriers"].append({**_keys(cfg), "seed": seed, "split": split,
                                               "metric": metric, "definition": definition,
                                               "barrier": v["barrier"], "lambda": v["lambda"]})
        lmc_probs = evaluator.probabilities(path.points(grid(k)), "test")
        lmc = ensemble_metrics(lmc_probs, test_y, task=task)
        tables["ensembles"].append({**_keys(cfg), "seed": seed, "ensemble": f"lmc-{k}", **lmc})
        per_seed.append({"seed": seed, "bar": bar, "lmc": lmc})
    # Independent-seed ensembles: member a of k different seeds (distinct initialisations).
    ok = sorted(finals)
    # One rotation per seed; with exactly k seeds every rotation is the same ensemble.
    rotations = range(len(ok)) if len(ok) > k else range(1 if len(ok) == k else 0)
    for i in rotations:
        seed = ok[i]
        members = [finals[ok[(i + j) % len(ok)]][0] for j in range(k)]
        ind = ensemble_metrics(evaluator.probabilities(members, "test"), test_y, task=task)
        tables["ensembles"].append({**_keys(cfg), "seed": seed, "ensemble": f"independent-{k}",
                                    **ind})
        next(p for p in per_seed if p["seed"] == seed)["ind"] = ind
    if ok:
        _similarity(cfg, finals, ok, evaluator, test_y, tables, out)
    n = len(subsets[config.seeds[0]][0].train_y)
    row = _aggregate(cfg, per_seed, diverged, len(config.seeds),
                     noise_scale(cfg["lr"], n, cfg["batch_size"]), k)
    if not config.quiet:
        print(f"init {cfg['init']}, order {cfg['batch_order']}, bs {cfg['batch_size']}, lr "
              f"{cfg['lr']:g}: {len(per_seed)}/{len(config.seeds)} seeds trained and evaluated "
              f"({time.perf_counter() - t0:.1f} s)")
    return tables, row


def write_tables(out: Path, tables: dict[str, list[dict]], summary: list[dict],
                 changed_only: bool = False) -> dict[str, list[dict]]:
    """The tidy tables of these configurations in `out` (learning curves, paths, barriers,
    ensembles, similarity, the paths' mean ± std over seeds, the summary); returns the mean
    paths by configuration id."""
    score = score_of(tables["paths"][0]) if tables.get("paths") else summary_score(summary)
    for name, table in artefacts.LMC_TABLES.items():
        table.write(out, tables.get(name, []), changed_only=changed_only)
    write_summary(out, summary, changed_only=changed_only)
    agg: dict[str, list[dict]] = {}
    for cfg_id in dict.fromkeys(r["id"] for r in tables.get("paths", [])):
        sel = [r for r in tables["paths"] if r["id"] == cfg_id]
        rows = []
        for (t, split) in dict.fromkeys((r["t"], r["split"]) for r in sel):
            pts = [r for r in sel if r["t"] == t and r["split"] == split]
            lm, ls = _ms([r["loss"] for r in pts])
            am, as_ = _ms([r[score] for r in pts])
            rows.append({"t": t, "split": split, "loss": lm, "loss_std": ls, score: am,
                         f"{score}_std": as_})
        agg[cfg_id] = rows
    artefacts.LMC_PATHS_MEAN.write(out, [{"id": k, **r} for k, rows in agg.items() for r in rows],
                                   changed_only=changed_only)
    return agg


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


# The grid's settings in modeconn 0.1's study.json (one job held the whole grid then), and where
# the data was read from (not what it is).
GRID = ("inits", "batch_orders", "batch_sizes", "lrs", "contrast", "lr_scaling", "data_dir")


def _without_grid(record: dict[str, Any]) -> dict[str, Any]:
    """A study.json record as JSON values, less the grid's settings and the data's folder."""
    return {k: v for k, v in json.loads(json.dumps(record)).items() if k not in GRID}


def earlier_record(config: LMCConfig, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The study.json modeconn 0.1 wrote for these options (its settings, field by field)."""
    train = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    train.update(batch_size=config.batch_size_grid[0], lr=config.lr_grid[0], save_epochs=())
    train = {**dataclasses.asdict(TrainConfig(**train)), "batch_size": None, "lr": None}
    record: dict[str, Any] = {
        "dataset": config.dataset, "data_dir": config.data_dir, "model": config.model,
        "model_options": config.overrides(), "label": config.label, "shift": config.shift,
        "num_subsets": config.subsets, "split_seed": config.split_seed,
        "normalise": config.normalise}
    if config.bands is not None:
        record["bands"] = config.bands
    if config.on_bad_patch != "fail":
        record["on_bad_patch"] = config.on_bad_patch
    record.update({
        "inits": config.init, "batch_orders": config.batch_order,
        "batch_sizes": config.batch_size_grid, "lrs": config.lr_grid, "seeds": config.seeds,
        "train": train, "points": config.points,
        "ensemble_size": config.ensemble_size, "bn_reset": config.bn_reset,
        "tolerance": config.tolerance, "contrast": config.contrast,
        "lr_scaling": config.lr_scaling, "model_config": model_cfg})
    return record

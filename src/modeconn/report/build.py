"""The HTML report of a study (or of one job's output): tables and figures in one file.

What is in it follows what the study produced: each job kind has a section builder (a registry,
SECTIONS) that reads its jobs' files through the file contract and returns blocks — tables and
figures — for the page. Figures are rendered from the data (PNG, or SVG on request) and embedded,
so the file needs nothing else to be read: open it offline, mail it, attach it.
"""

from __future__ import annotations

import base64
import json
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import artefacts, plots
from .._version import __version__
from ..errors import UsageError
from ..jobs.lmc import summary_score
from ..task import score_of

FORMATS = ("png", "svg")
OWN_SUMMARY = {"lmc"}  # kinds whose section tabulates their own seeds (the results hold means)


@dataclass
class Item:
    """One job of the report: its stage, kind, sweep values, output directory and outcome."""

    id: str
    stage: str
    job: str
    labels: dict[str, Any]
    out: Path
    result: dict[str, Any] | None
    options: dict[str, Any] = field(default_factory=dict)
    deps: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result["status"] == "complete"


@dataclass
class Figure:
    title: str
    src: str  # a data: URI
    caption: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]  # cells: numbers (sorted as numbers), text, or (mean, std, n) triples
    caption: str = ""


@dataclass
class Context:
    """What every section builder may need: the figure format and the study's jobs by id."""

    fmt: str
    by_id: dict[str, Item]

    def figure(self, fig, title: str, caption: str = "") -> Figure:
        data = plots.render(fig, self.fmt)
        mime = "image/svg+xml" if self.fmt == "svg" else "image/png"
        return Figure(title, f"data:{mime};base64,{base64.b64encode(data).decode()}", caption)

    def embed(self, png: Path, title: str, caption: str = "") -> Figure:
        """A figure a job drew itself (PNG, whatever the report's format)."""
        data = base64.b64encode(png.read_bytes()).decode()
        return Figure(title, f"data:image/png;base64,{data}", caption)


Block = Figure | Table
SECTIONS: dict[str, Callable[[list[Item], Context], list[Block]]] = {}


def section(kind: str):
    """Register the section builder of a job kind."""
    def deco(fn):
        SECTIONS[kind] = fn
        return fn
    return deco


# ------------------------------------------------------------------------ grouping over seeds

def _is_seed(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == "seed"


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def varying(items: list[Item]) -> list[str]:
    """The sweep axes (but the seeds) whose values differ between these jobs."""
    keys = list(dict.fromkeys(k for it in items for k in it.labels))
    return [k for k in keys if not _is_seed(k)
            and len({json.dumps(it.labels.get(k)) for it in items}) > 1]


def seeds_of(items: list[Item]) -> int:
    return len({json.dumps({k: v for k, v in it.labels.items() if _is_seed(k)}) for it in items})


def describe(labels: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{_short(k)} {labels.get(k)}" for k in keys) or "all jobs"


def panels(items: list[Item], series_axis: str | None = None
           ) -> list[tuple[dict[str, Any], dict[str, list[Item]]]]:
    """Figures of a stage: one per combination of the varying axes but one (the last, or
    `series_axis`), whose values are the series of the figure; each series holds its seeds."""
    axes = varying(items)
    if series_axis is None:
        series_axis = axes[-1] if axes else None
    fixed = [k for k in axes if k != series_axis]
    out: dict[str, tuple[dict[str, Any], dict[str, list[Item]]]] = {}
    for it in items:
        key = {k: it.labels.get(k) for k in fixed}
        panel = out.setdefault(json.dumps(key, sort_keys=True), (key, {}))
        name = f"{_short(series_axis)} {it.labels.get(series_axis)}" if series_axis else "mean"
        panel[1].setdefault(name, []).append(it)
    return list(out.values())


def mean_rows(tables: list[list[dict[str, Any]]], keys: tuple[str, ...],
              values: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows averaged over several tables of the same shape (matched on `keys`), with *_std
    (values: the loss and the task's score, accuracy or micro-F1, unless given)."""
    if values is None:
        first = next((rows[0] for rows in tables if rows), {})
        values = ("loss", score_of(first))
    acc: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rows in tables:
        for r in rows:
            for v in values:
                if r.get(v) is not None:
                    acc[tuple(r[k] for k in keys)][v].append(float(r[v]))
    out = []
    for key, vals in acc.items():
        row = dict(zip(keys, key))
        for v in values:
            xs = vals.get(v, [])
            row[v] = statistics.fmean(xs) if xs else math.nan
            row[f"{v}_std"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
        out.append(row)
    return out


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    """The sample std; NaN (not measured, not 0) for fewer than two values."""
    return statistics.stdev(xs) if len(xs) > 1 else math.nan


def barrier_lambda(barrier: float, lam: float) -> float | None:
    """λ* of a path's linear-definition loss barrier, where a barrier exists, else None.

    A barrier exists where the loss rises above the straight line between its ends somewhere
    inside the path: a positive height reached at 0 < λ* < 1 (modeconn.barrier: the excess is 0
    at both ends, so a path whose loss never rises above the line has height 0 at λ* = 0 — its
    `interior` is False and its Δ is 0). Such a path has no λ* to mark."""
    return lam if barrier > 0 and 0 < lam < 1 else None


def mean_lambda(pairs: list[tuple[float, float]]) -> float:
    """The mean λ* over the seeds whose (barrier, λ*) has a barrier; NaN (nothing drawn) when
    none has."""
    return _mean([lam for b, lam in pairs if barrier_lambda(b, lam) is not None])


LAMBDA_CAPTION = ("dotted: λ* of the test loss barrier, the mean over the seeds that have one "
                  "(a positive barrier reached inside the path); no line where none has")


def held(study_fixed: str, key: dict[str, Any], seeds: int) -> str:
    """A title's statement of what was held fixed."""
    parts = [describe(key, list(key))] if key else []
    parts.append(f"mean ± std over {seeds} seed{'s' if seeds != 1 else ''}")
    return (study_fixed + "; " if study_fixed else "") + ", ".join(parts)


def _fixed_text(items: list[Item], keys=("dataset", "model", "epochs")) -> str:
    """The settings shared by the upstream training of these jobs, for titles."""
    return ", ".join(f"{k} {items[0].options[k]}" for k in keys if k in items[0].options
                     and len({str(i.options.get(k)) for i in items}) == 1)


# ------------------------------------------------------------------------------ sections

def _upstream(item: Item, ctx: Context, kind: str = "train") -> Item | None:
    for d in item.deps:
        up = ctx.by_id.get(d)
        if up is not None and up.job == kind:
            return up
    return None


def upstream_text(item: Item, items: list[Item]) -> str:
    """The text " — dataset digits, patch 4" of a job whose title names its own settings: the
    sweep values it inherits from the jobs it read, where they differ within its stage (so that
    the figures of two datasets do not carry the same title)."""
    keys = [k for k in varying(items) if not k.startswith(f"{item.stage}.")]
    return f" — {describe(item.labels, keys)}" if keys else ""


def model_names(paths: list[str], item: Item, ctx: Context) -> list[str]:
    """Readable names of checkpoints a job read: the sweep values of the jobs that wrote them
    (e.g. "seed 0", "seed 1"), else the files' short names."""
    writers = []
    for p in paths:
        if p.startswith("@"):  # a study's reference: "@<job id>/<file>"
            up = ctx.by_id.get(p[1:].split("/", 1)[0])
        else:
            up = next((ctx.by_id[d] for d in item.deps if d in ctx.by_id
                       and Path(p).is_relative_to(ctx.by_id[d].out)), None)
        writers.append(up)
    if all(w is not None for w in writers):
        keys = [k for k in dict.fromkeys(k for w in writers for k in w.labels)
                if len({json.dumps(w.labels.get(k)) for w in writers}) > 1]
        names = [describe(w.labels, keys) if keys else w.id for w in writers]
        if len(set(names)) == len(names):
            return names
    return plots.display_names(paths)


@section("train")
def train_section(items: list[Item], ctx: Context) -> list[Block]:
    done = [it for it in items if it.ok]
    if not done:
        return []
    blocks: list[Block] = []
    fixed = _fixed_text(done)
    for key, series in panels(done):
        runs = {}
        for name, its in series.items():
            tables = []
            for it in its:
                members = [r["member"] for r in artefacts.RUN_SUMMARY.read(it.out)]
                tables += [artefacts.METRICS.read(it.out / m) for m in members]
            runs[name] = sorted(mean_rows(tables, ("epoch", "split")), key=lambda r: r["epoch"])
        title = f"learning curves — {held(fixed, key, seeds_of(done))}, members pooled"
        blocks.append(ctx.figure(plots.learning_curves_figure(runs, title), title))
    return blocks


def _paths(it: Item) -> list[dict[str, Any]]:
    return artefacts.PATH.read(it.out)


@section("interpolate")
def interpolate_section(items: list[Item], ctx: Context) -> list[Block]:
    done = [it for it in items if it.ok]
    if not done:
        return []
    blocks: list[Block] = []
    ups = [u for it in done if (u := _upstream(it, ctx)) is not None]
    fixed = _fixed_text(ups) if ups else ""
    for key, series in panels(done):
        curves, marks = {}, {}
        for name, its in series.items():
            curves[name] = mean_rows([_paths(i) for i in its], ("t", "split"))
            bars = [artefacts.BARRIER.read(i.out) for i in its]
            marks[name] = mean_lambda([(b["test"]["loss"]["linear"]["barrier"],
                                        b["test"]["lambda_star"]) for b in bars if "test" in b])
        title = f"linear interpolation — {held(fixed, key, seeds_of(done))}"
        blocks.append(ctx.figure(plots.path_figure(curves, title=title, marks=marks), title,
                                 LAMBDA_CAPTION))
    blocks += _heatmaps(items, ctx, fixed)
    return blocks


def _grid_axes(items: list[Item]) -> tuple[str, str] | None:
    """The batch-size and learning-rate axes, when both are swept."""
    axes = varying(items)
    bs = next((k for k in axes if _short(k) == "batch_size"), None)
    lr = next((k for k in axes if _short(k) == "lr"), None)
    return (bs, lr) if bs and lr else None


def _subset_size(train: Item) -> int | None:
    """Examples in a member's training subset (the N of the SGD noise scale)."""
    try:
        rows = artefacts.SUBSETS.read(train.out)
    except OSError:
        return None
    first = rows[0]["subset"] if rows else None
    return sum(int(r["count"]) for r in rows if r["subset"] == first) or None


CELL_CAPTION = "each cell: the mean over seeds and, below it, ± their std (none for one seed)"


def _heatmaps(items: list[Item], ctx: Context, fixed: str) -> list[Block]:
    """Barrier and Δacc over batch size × learning rate, one pair per combination of the other
    axes, with the SGD noise scale g = ε(N/B − 1) in each cell and the −5% Δ reference."""
    grid = _grid_axes(items)
    if grid is None:
        return []
    bs_key, lr_key = grid
    rest = [k for k in varying(items) if k not in grid]
    groups: dict[str, tuple[dict, list[Item]]] = {}
    for it in items:
        key = {k: it.labels.get(k) for k in rest}
        groups.setdefault(json.dumps(key, sort_keys=True), (key, []))[1].append(it)
    blocks: list[Block] = []
    score = "acc"
    for key, its in groups.values():
        bss = sorted({it.labels[bs_key] for it in its})
        lrs = sorted({it.labels[lr_key] for it in its}, reverse=True)
        barrier = np.full((len(lrs), len(bss)), math.nan)
        delta = np.full((len(lrs), len(bss)), math.nan)
        barrier_sd, delta_sd = np.full_like(barrier, math.nan), np.full_like(delta, math.nan)
        notes = np.full((len(lrs), len(bss)), "", dtype=object)
        for i, lr in enumerate(lrs):
            for j, bs in enumerate(bss):
                cell = [it for it in its if it.labels[bs_key] == bs and it.labels[lr_key] == lr]
                done = [c for c in cell if c.ok]
                bars = [artefacts.BARRIER.read(c.out)["test"] for c in done]
                heights = [b["loss"]["linear"]["barrier"] for b in bars]
                deltas = [100 * b[f"delta_{b.get('score', 'acc')}"] for b in bars]
                barrier[i, j], barrier_sd[i, j] = _mean(heights), _std(heights)
                delta[i, j], delta_sd[i, j] = _mean(deltas), _std(deltas)
                score = bars[0].get("score", "acc") if bars else score
                up = _upstream(cell[0], ctx) if cell else None
                n = _subset_size(up) if up is not None and up.ok else None
                if not cell:
                    notes[i, j] = "not in the sweep"
                elif not done:
                    notes[i, j] = "diverged"
                elif n:
                    notes[i, j] = f"g={lr * (n / bs - 1):.3g}"
        what = held(fixed, key, seeds_of(its))
        blocks.append(ctx.figure(plots.heatmap_figure(
            barrier, lrs, bss, f"test loss barrier over batch size × learning rate\n{what}",
            "test loss barrier (cross-entropy)", "learning rate", "batch size", notes,
            errors=barrier_sd),
            f"loss barrier heatmap — {describe(key, list(key))}",
            f"{CELL_CAPTION}; g = ε(N/B − 1), the SGD noise scale"))
        name = plots.SCORE_LABEL[score]
        blocks.append(ctx.figure(plots.heatmap_figure(
            delta, lrs, bss, f"test {name} drop Δ at λ* (percentage points)\n{what}",
            f"Δ {name} (points)", "learning rate", "batch size", notes, flag=delta < -5,
            flag_label="Δ below the −5 points reference", cmap="RdBu", center=0.0,
            min_span=5.0, errors=delta_sd),
            f"Δ {name} heatmap — {describe(key, list(key))}",
            f"{CELL_CAPTION}; cells outlined in red lose more than 5 points on average (the "
            "paper's reference)"))
    return blocks


@section("lmc")
def lmc_section(items: list[Item], ctx: Context) -> list[Block]:
    done = [i for i in items if i.ok]
    summaries = [artefacts.STATUS.read(it.out)["summary"] for it in done]
    k = summary_score([r for summary in summaries for r in summary])
    blocks: list[Block] = [Table("barriers and ensembles per configuration", [
        "model", "shift", "init", "order", "bs", "lr", "g", "train barrier", "test barrier",
        f"test Δ{k}", "LMC ens. gain", "ind. ens. gain", "ok", "diverged"], [
        [r["model"], r["shift"], r["init"], r["batch_order"], r["batch_size"], r["lr"],
         r["noise_scale_g"], *((_ms(r, key, scale)) for key, scale in (
             ("train_loss_barrier", 1), ("test_loss_barrier", 1), (f"test_delta_{k}", 100),
             (f"lmc_ens_gain_{k}", 100), (f"ind_ens_gain_{k}", 100))),
         r["seeds_ok"], r["diverged"]] for summary in summaries for r in summary],
        f"mean ± std over seeds: linear-definition loss barriers; Δ{k} (points) at the loss "
        f"barrier's λ*; ensemble gains (points): {plots.SCORE_LABEL[k]} over the mean member, "
        "LMC = points on "
        "the path, independent = members of different seeds; g = ε(N/B − 1), the SGD noise "
        "scale; ok = seeds trained and evaluated")]
    # One group per model and shift: a study's lmc jobs (one configuration each, since 0.2)
    # are drawn together, as one job of modeconn 0.1 held them.
    groups: dict[tuple, list[Item]] = defaultdict(list)
    for it, summary in zip(done, summaries):
        head = summary[0] if summary else {"model": it.id, "shift": ""}
        groups[(head["model"], head["shift"], it.options.get("dataset", ""),
                it.options.get("epochs", "?"))].append(it)
    for (name, shift, dataset, epochs), its in groups.items():
        summary = [r for it in its for r in artefacts.STATUS.read(it.out)["summary"]]
        shift += f" ({dataset}, {epochs} epochs)"
        paths = [r for it in its for r in artefacts.LMC_PATHS_MEAN.read(it.out)]
        by_cfg: dict[str, list] = defaultdict(list)
        for r in paths:
            by_cfg[r["id"]].append(r)
        labels = {r["id"]: f"{r['init']} init, {r['batch_order']} order, bs {r['batch_size']}, "
                            f"lr {r['lr']:g}" for r in summary}
        marks = {}
        bars = [r for it in its for r in artefacts.LMC_BARRIERS.read(it.out)]
        for cfg in by_cfg:
            marks[labels.get(cfg, cfg)] = mean_lambda([
                (b["barrier"], b["lambda"]) for b in bars if b["id"] == cfg
                and b["split"] == "test" and b["metric"] == "loss" and b["definition"] == "linear"])
        seeds = its[0].options.get("seeds", [])
        title = (f"{name}, {shift}: linear interpolation (mean ± std over {len(seeds)} seeds)")
        blocks.append(ctx.figure(plots.path_figure(
            {labels.get(k, k): v for k, v in by_cfg.items()}, title=title, marks=marks), title,
            LAMBDA_CAPTION))
        lc = [r for it in its for r in artefacts.LMC_LEARNING_CURVES.read(it.out)]
        runs: dict[str, list] = defaultdict(list)
        for r in lc:
            runs[r["id"]].append(r)
        curves = {labels.get(k, k): sorted(mean_rows([v], ("epoch", "split")),
                                           key=lambda r: r["epoch"]) for k, v in runs.items()}
        title = f"{name}, {shift}: learning curves (mean ± std over seeds and members)"
        blocks.append(ctx.figure(plots.learning_curves_figure(curves, title), title))
        ens = [r for it in its for r in artefacts.LMC_ENSEMBLES.read(it.out)]
        rows = []
        for cfg in dict.fromkeys(r["id"] for r in ens):
            for kind in dict.fromkeys(r["ensemble"] for r in ens if r["id"] == cfg):
                sel = [r for r in ens if r["id"] == cfg and r["ensemble"] == kind]
                rows.append([labels.get(cfg, cfg), kind,
                             *(_triple([100 * r[m] if m in (k, f"gain_{k}") else r[m]
                                        for r in sel]) for m in (k, "nll", "ece",
                                                                 f"gain_{k}"))])
        blocks.append(Table(f"{name}, {shift}: LMC vs independent ensembles (test set)",
                            ["configuration", "ensemble", f"{plots.SCORE_LABEL[k]} %", "NLL",
                             "ECE",
                             "gain over mean member (points)"], rows,
                            "LMC: points on the linear path; independent: members of different "
                            "seeds; mean ± std over seeds"))
        if _grid_axes_rows(summary):
            blocks += _lmc_heatmaps(summary, name, shift, ctx)
        polar = sorted(p for it in its for p in (it.out / "figures").glob("polar_*.png"))
        if polar:  # drawn by the job from its probabilities: embedded as it is (PNG)
            title = f"{name}, {shift}: similarity of the pair, its midpoint and another seed"
            blocks.append(ctx.embed(polar[0], title, "angle: cosine similarity of the "
                                    "parameters to model a; radius: test accuracy (micro-F1 "
                                    "for a multi-label task)"))
    return blocks


def _grid_axes_rows(summary: list[dict]) -> bool:
    """Whether the configurations cover a full grid of ≥ 2 batch sizes × ≥ 2 learning rates
    (with --lr-scaling linear they lie on a diagonal: no heatmap)."""
    cells = {(r["batch_size"], r["lr"]) for r in summary if r["init"] == summary[0]["init"]}
    bss, lrs = {c[0] for c in cells}, {c[1] for c in cells}
    return len(bss) > 1 and len(lrs) > 1 and len(cells) == len(bss) * len(lrs)


def _lmc_heatmaps(summary, name, shift, ctx) -> list[Block]:
    blocks = []
    for init, order in dict.fromkeys((r["init"], r["batch_order"]) for r in summary):
        sel = [r for r in summary if r["init"] == init and r["batch_order"] == order]
        bss = sorted({r["batch_size"] for r in sel})
        lrs = sorted({r["lr"] for r in sel}, reverse=True)
        v = np.full((len(lrs), len(bss)), math.nan)
        sd = np.full(v.shape, math.nan)
        notes = np.full(v.shape, "", dtype=object)
        for r in sel:
            i, j = lrs.index(r["lr"]), bss.index(r["batch_size"])
            v[i, j], sd[i, j] = _ms(r, "test_loss_barrier", 1)[:2]
            notes[i, j] = f"g={r['noise_scale_g']:.3g}"
        seeds = max((int(r.get("seeds_ok", 0)) for r in sel), default=0)
        title = (f"{name}, {shift}, init {init}, order {order}: test loss barrier, mean ± std "
                 f"over {seeds} seed{'s' if seeds != 1 else ''}")
        blocks.append(ctx.figure(plots.heatmap_figure(
            v, lrs, bss, title, "test loss barrier", "learning rate", "batch size", notes,
            errors=sd), title, CELL_CAPTION))
    return blocks


def _ms(row: dict, key: str, scale: float) -> tuple[float, float, int]:
    """(mean, std, n) of a summary row's mean and *_std columns."""
    m, sd = row.get(key), row.get(f"{key}_std")
    m = math.nan if m is None else scale * float(m)
    sd = math.nan if sd is None or sd != sd else scale * float(sd)
    return (m, sd, int(row.get("seeds_ok", 0)))


def _triple(xs: list[float]) -> tuple[float, float, int]:
    xs = [x for x in xs if x is not None and x == x]
    return (_mean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan, len(xs))


@section("curve")
def curve_section(items: list[Item], ctx: Context) -> list[Block]:
    blocks: list[Block] = []
    for it in (i for i in items if i.ok):
        rows = artefacts.CURVE_PATH.read(it.out)
        curves = {p: [r for r in rows if r["path"] == p] for p in dict.fromkeys(r["path"]
                                                                                for r in rows)}
        kind = it.options.get("kind", "curve")
        a, b = model_names([it.options.get("a", "A"), it.options.get("b", "B")], it, ctx)
        title = (f"{kind} curve ({it.options.get('bends', 3)} bends, {it.options.get('epochs')} "
                 f"epochs) vs the straight line, from {a} (t = 0) to {b} (t = 1)")
        blocks.append(ctx.figure(plots.path_figure(curves, title=title, xlabel="t"), title))
    return blocks


@section("align")
def align_section(items: list[Item], ctx: Context) -> list[Block]:
    blocks: list[Block] = []
    for it in (i for i in items if i.ok):
        before = artefacts.aligned_path("before").read(it.out)
        after = artefacts.aligned_path("after").read(it.out)
        a, b = model_names([it.options.get("a", "A"), it.options.get("b", "B")], it, ctx)
        title = (f"linear path from {a} to {b}, before and after aligning {b} to {a} "
                 f"({it.options.get('method', '')}){upstream_text(it, items)}")
        blocks.append(ctx.figure(plots.path_figure({f"{a} → {b}": before,
                                                    f"{a} → aligned {b}": after},
                                                   title=title), title))
    return blocks


# What merge-many did to the models before averaging them, by method (the pairs it scores).
MERGE_PAIRS = {"wm": "after aligning them by MergeMany weight matching (wm)",
               "ste-mm": "after aligning them by STE-MM (ste-mm)",
               "avg": "as trained: plain averaging (avg) aligns nothing"}


@section("merge-many")
def merge_section(items: list[Item], ctx: Context) -> list[Block]:
    blocks: list[Block] = []
    for it in (i for i in items if i.ok):
        pairs = artefacts.PAIR_BARRIERS.read(it.out)
        names = list(dict.fromkeys([p["a"] for p in pairs] + [p["b"] for p in pairs]))
        if len(names) < 2:
            continue
        short = model_names(names, it, ctx)
        m = np.zeros((len(names), len(names)))
        for p in pairs:
            i, j = names.index(p["a"]), names.index(p["b"])
            m[i, j] = m[j, i] = p["test_loss_barrier"]
        method = it.options.get("method", "wm")
        title = (f"test loss barrier between every pair of models "
                 f"{MERGE_PAIRS.get(method, method)}{upstream_text(it, items)}")
        blocks.append(ctx.figure(plots.matrix_figure(short, m, title, "test loss barrier"),
                                 title, "the linear path between two models as the merge "
                                 "averaged them; REPAIR, when asked, applies to the merged "
                                 "model only, not to these paths"))
    return blocks


@section("ensemble")
def ensemble_section(items: list[Item], ctx: Context) -> list[Block]:
    blocks: list[Block] = []
    for it in [i for i in items if i.ok][:12]:  # a polar plot per ensemble, at most 12
        if (it.out / "polar_similarity.png").is_file():
            title = f"ensemble members — {describe(it.labels, varying(items)) or it.id}"
            blocks.append(ctx.embed(it.out / "polar_similarity.png", title,
                                    "angle: cosine similarity of the parameters to the first "
                                    "member; radius: test accuracy (micro-F1 for a "
                                    "multi-label task)"))
    return blocks


@section("landscape")
def landscape_section(items: list[Item], ctx: Context) -> list[Block]:
    blocks: list[Block] = []
    for it in (i for i in items if i.ok):
        rows = artefacts.PLANE.read(it.out)
        info = artefacts.PLANE_INFO.read(it.out)
        for split in dict.fromkeys(r["split"] for r in rows):
            sel = [r for r in rows if r["split"] == split]
            xs = sorted({r["x"] for r in sel})
            ys = sorted({r["y"] for r in sel})
            v = np.full((len(ys), len(xs)), math.nan)
            for r in sel:
                v[ys.index(r["y"]), xs.index(r["x"])] = r["loss"]
            marks = {k: tuple(p) for k, p in info.get("points", {}).items()}
            paths = {k: (p["x"], p["y"]) for k, p in info.get("paths", {}).items()}
            title = (f"{split} loss on the plane through {', '.join(marks) or 'three points'} "
                     f"({info.get('grid', len(xs))}×{info.get('grid', len(ys))} points, BN "
                     f"re-estimation {info.get('bn_reset', 'auto')})")
            blocks.append(ctx.figure(plots.plane_figure(xs, ys, v, paths, marks, title,
                                                        f"{split} loss"), title))
    return blocks


# ------------------------------------------------------------------------------ the page

@dataclass
class Section:
    stage: str
    job: str
    jobs: int
    status: dict[str, int]
    blocks: list[Block]


def _items_of_study(root: Path) -> tuple[dict[str, Any], list[Item], list[dict], list[dict]]:
    from ..studies import load_study
    from ..studies import results as tables
    from ..studies.worker import read_result

    study = load_study(root)
    rows, jobs = tables.collect(root, study)
    items = [Item(j.id, j.stage, j.job, j.labels, root / "jobs" / j.id / "out",
                  read_result(root / "jobs" / j.id), j.options, j.deps) for j in study.jobs]
    head = {"name": study.name, "description": study.description, "config": study.text,
            "config_name": artefacts.STUDY_FILE.name, "headline": tables.headlines(root, study)}
    return head, items, rows, jobs


def _item_of_job(root: Path) -> Item:
    """A single job's output directory, as `modeconn <job> --out DIR` wrote it."""
    if artefacts.CONFIG.path(root).is_file():
        config = artefacts.CONFIG.read(root)
        if "job" in config:
            return Item(root.name, config["job"], config["job"], {}, root,
                        {"status": "complete"}, config.get("config", {}))
        if "members" in config:
            return Item(root.name, "train", "train", {}, root, {"status": "complete"},
                        config.get("options", {}))
    if artefacts.LMC_STUDY.path(root).is_file() and artefacts.STATUS.path(root).is_file():
        study = artefacts.LMC_STUDY.read(root)  # the job's own record
        return Item(root.name, "lmc", "lmc", {}, root, {"status": "complete"},
                    {**study, "epochs": study.get("train", {}).get("epochs", "?")})
    raise UsageError(f"{root} is neither a study directory (study.toml) nor a job's output "
                     "(config.json); name what modeconn run or a modeconn command wrote")


def build(root: str | Path, fmt: str = "png") -> tuple[str, dict[str, Any]]:
    """The report's HTML text and a summary of what it holds (for tests and the CLI)."""
    from ..studies import results as tables

    root = Path(root)
    if fmt not in FORMATS:
        raise UsageError(f"format must be png or svg, got {fmt!r}")
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; name a study directory or a job's output")
    if artefacts.STUDY_FILE.path(root).is_file():
        head, items, rows, jobs = _items_of_study(root)
    else:
        item = _item_of_job(root)
        head = {"name": root.name, "description": f"the output of one {item.job} job",
                "config": json.dumps(item.options, indent=2), "config_name": "config",
                "headline": {}}
        items, rows, jobs = [item], [], []
    ctx = Context(fmt, {it.id: it for it in items})
    stages: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        stages[it.stage].append(it)
    summaries = {s.stage: s for s in tables.summarise(rows, metrics=head["headline"])} \
        if rows else {}
    sections = []
    for stage, its in stages.items():
        blocks: list[Block] = []
        if stage in summaries and its[0].job not in OWN_SUMMARY:
            blocks.append(_summary_table(summaries[stage]))
        elif not rows and its[0].job not in OWN_SUMMARY and (t := _job_table(its[0])):
            blocks.append(t)  # one job's report: the numbers in its files
        builder = SECTIONS.get(its[0].job)
        if builder is not None:
            blocks += builder(its, ctx)
        status: dict[str, int] = defaultdict(int)
        for it in its:
            status["pending" if it.result is None else it.result["status"]] += 1
        sections.append(Section(stage, its[0].job, len(its), dict(status), blocks))
    failed = [j for j in jobs if j["status"] in ("failed", "diverged", "skipped")]
    # "as of" the newest result, not the clock: the same results give the same file
    stamps = [p.stat().st_mtime for it in items for p in (artefacts.RESULT.path(it.out.parent),
                                                         artefacts.CONFIG.path(it.out)) if p.is_file()]
    head["as_of"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(stamps))) \
        if stamps else "unknown"
    text = render_page(head, sections, failed, fmt)
    info = {"sections": sections, "figures": sum(isinstance(b, Figure) for s in sections
                                                 for b in s.blocks), "summaries": summaries}
    return text, info


SKIP_DOCUMENTS = set(artefacts.names(artefacts.CONFIG, artefacts.ENV, artefacts.PLANE_INFO,
                                     artefacts.STATUS, artefacts.LMC_STUDY, artefacts.PERMUTATION,
                                     artefacts.OLD_DEMO))


def _job_table(item: Item) -> Table | None:
    """The numbers of one job's output: its JSON documents (barrier summaries as their
    barriers, others flattened), one row per number."""
    from ..jobs._registry import numbers, path_metrics

    rows = []
    for doc in sorted(item.out.glob("*.json")):
        if doc.name in SKIP_DOCUMENTS:
            continue
        data = artefacts.Document(doc.name).read(doc.parent)  # any other document it wrote
        if not isinstance(data, dict):
            continue
        splits = [k for k, v in data.items() if isinstance(v, dict) and "loss" in v
                  and isinstance(v["loss"], dict) and "linear" in v["loss"]]
        flat = path_metrics(data, splits) if splits else _flatten(data, numbers)
        rows += [[doc.stem, k, v] for k, v in flat.items()]
    if artefacts.RUN_SUMMARY.path(item.out).is_file():  # a training run: each member's end
        for r in artefacts.RUN_SUMMARY.read(item.out):
            rows += [[f"summary ({r['member']})", k, v] for k, v in numbers(r).items()]
    return Table(f"{item.job}: the numbers it wrote", ["file", "metric", "value"], rows,
                 "barrier summaries as their linear-definition barriers, Δacc and λ*; other "
                 "documents flattened") if rows else None


def _flatten(data: dict, numbers, prefix: str = "") -> dict[str, float]:
    out = dict(numbers(data, prefix))
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flatten(v, numbers, f"{prefix}{k}."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(_flatten(x, numbers, f"{prefix}{k}[{i}]."))
    return out


def _summary_table(st) -> Table:
    rows = []
    for key, values, diverged in st.groups:
        n = max((len(v) for v in values.values()), default=0)
        rows.append([*(_cell(k) for k in key), *(_triple(values.get(m, [])) for m in st.metrics),
                     n, diverged])
    return Table(f"{st.stage}: summary", st.header(), rows,
                 "mean ± std over seeds (n values); diverged jobs are counted, never averaged")


def _cell(v: Any) -> Any:
    return v if isinstance(v, (int, float)) else ("" if v is None else str(v))


# ------------------------------------------------------------------------------ rendering

def _fmt_cell(v: Any) -> tuple[str, str]:
    """(text, sort key) of a table cell."""
    if isinstance(v, tuple):
        m, s, n = v
        if m != m:
            return "n/a", ""
        text = f"{m:.3g}" if s != s else f"{m:.3g} ± {s:.2g}"
        return text, repr(float(m))
    if isinstance(v, bool):
        return ("yes" if v else "no"), str(int(v))
    if isinstance(v, (int, float)):
        return (f"{v:.4g}" if isinstance(v, float) else str(v)), repr(float(v))
    return str(v), str(v)


def render_page(head: dict[str, Any], sections: list[Section], failed: list[dict],
                fmt: str) -> str:
    """The page, from the jinja2 template."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("modeconn.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["cell"] = lambda v: _fmt_cell(v)
    return env.get_template("report.html.j2").render(
        head=head, sections=sections, failed=failed, fmt=fmt, version=__version__,
        Figure=Figure, Table=Table,
        is_figure=lambda b: isinstance(b, Figure))

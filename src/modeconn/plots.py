"""Figures from tidy rows: paths, learning curves, barriers, similarity. PNG (and PDF on request)."""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import write_bytes  # noqa: E402
from .task import score_of  # noqa: E402

SPLIT_STYLE = {"train": "-", "test": "--", "train@b": "-.", "test@b": ":"}  # @b: subset b's view


def save(fig, path: str | os.PathLike, pdf: bool = False, changed_only: bool = False) -> Path:
    """Write a figure atomically as PNG (and PDF when asked), then close it; with
    `changed_only`, a file that already holds the same image is left untouched."""
    path = Path(path)
    formats = [("png", path, {"dpi": 120})] + ([("pdf", path.with_suffix(".pdf"), {})] if pdf else [])
    for fmt, target, kw in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight", **kw)
        write_bytes(target, buf.getvalue(), changed_only)
    plt.close(fig)
    return path


def display_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short readable names of checkpoint files for titles and legends: the file stems
    (a.safetensors, b.safetensors → a, b), or, for files all of one name or named `model` (as
    `modeconn train` writes them), the run and member directories (runs/iid/a/model.safetensors
    → iid/a); longer when needed to tell them apart. The `out` directory of a study's job
    (jobs/<id>/out/all/model.safetensors → <id>/all) names nothing and is left out."""
    def shown(path: str | os.PathLike) -> tuple[str, ...]:
        q = Path(path).with_suffix("").parts
        return tuple(c for i, c in enumerate(q)
                     if not (c == "out" and i >= 2 and q[i - 2] == "jobs")) or ("?",)

    parts = [shown(p) for p in paths]
    same = len(parts) > 1 and len({q[-1] for q in parts}) == 1
    bases = []
    for q in parts:
        by_dir = (same or q[-1] == "model") and len(q) > 1
        bases.append((q[:-1], 2) if by_dir else (q, 1))
    names = []
    for k in range(1, max((len(b) for b, _ in bases), default=0) + 1):
        names = ["/".join(b[-max(k, least):]) for b, least in bases]
        if len(set(names)) == len(names):
            break
    return names


LOSS_LABEL = {"acc": "cross-entropy loss", "f1": "binary cross-entropy loss"}
SCORE_LABEL = {"acc": "accuracy", "f1": "micro-F1"}


def path_figure(curves: dict[str, Sequence[dict]], title: str = "", xlabel: str = "λ",
                marks: dict[str, float] | None = None):
    """Loss and accuracy against t for one or more paths; rows may carry *_std for bands;
    `marks` draws a dotted line at a path's λ* (where its loss barrier is). A λ* that is NaN or
    not strictly inside (0, 1) is not drawn: an endpoint is never where a barrier is (the excess
    over the line between the ends is 0 there), and the legend names λ* only if one is drawn."""
    if not any(curves.values()):
        return message_figure("nothing to plot: no path was evaluated", title)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    score = score_of(next(rows[0] for rows in curves.values() if rows))
    drawn = False
    for (label, rows), color in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for split in dict.fromkeys(r["split"] for r in rows):
            sel = [r for r in rows if r["split"] == split]
            t = np.array([float(r["t"]) for r in sel])
            for ax, key in zip(axes, ("loss", score)):
                y = np.array([float(r[key]) for r in sel])
                ax.plot(t, y, SPLIT_STYLE.get(split, ":"), color=color, label=f"{label} {split}")
                if f"{key}_std" in sel[0]:
                    s = np.array([float(r[f"{key}_std"]) for r in sel])
                    ax.fill_between(t, y - s, y + s, color=color, alpha=0.15)
        lam = (marks or {}).get(label, math.nan)
        if 0 < lam < 1:  # False for NaN
            drawn = True
            for ax in axes:
                ax.axvline(lam, color=color, linestyle=":", linewidth=1)
    if drawn:
        axes[1].plot([], [], "k:", linewidth=1, label="λ* (test loss barrier)")
    axes[0].set_ylabel(LOSS_LABEL[score])
    axes[1].set_ylabel(SCORE_LABEL[score])
    for ax in axes:
        ax.set_xlabel(wrap(xlabel, 50))  # the two panels' labels must not run into each other
        ax.grid(alpha=0.3)
    legend(axes[1])
    fig.suptitle(wrap(title), fontsize=10)
    return fig


def learning_curves_figure(runs: dict[str, Sequence[dict]], title: str = ""):
    """Train/test loss and accuracy per epoch for several runs; rows may carry *_std for
    bands."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    first = next((rows[0] for rows in runs.values() if rows), {})
    score = score_of(first)
    for i, (label, rows) in enumerate(runs.items()):
        for split in ("train", "test"):
            sel = [r for r in rows if r["split"] == split]
            ep = [int(r["epoch"]) for r in sel]
            for ax, key in zip(axes, ("loss", score)):
                y = np.array([float(r[key]) for r in sel])
                ax.plot(ep, y, SPLIT_STYLE[split], color=colors[i % len(colors)],
                        label=f"{label} {split}")
                if sel and f"{key}_std" in sel[0]:
                    sd = np.nan_to_num(np.array([float(r[f"{key}_std"]) for r in sel]))
                    ax.fill_between(ep, y - sd, y + sd, color=colors[i % len(colors)], alpha=0.15)
    axes[0].set_ylabel("binary cross-entropy loss" if score == "f1" else "loss")
    axes[1].set_ylabel(SCORE_LABEL[score])
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    legend(axes[1])
    fig.suptitle(wrap(title), fontsize=10)
    return fig


def legend(ax, inside: int = 4) -> None:
    """The legend of a two-panel figure: inside `ax` for a few entries, else below both panels
    (in columns) where it hides no data."""
    n = len(ax.get_legend_handles_labels()[1])
    if n <= inside:
        ax.legend(fontsize=7)
    else:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(-0.12, -0.16),
                  ncol=2 if n <= 12 else 3, frameon=False)


def message_figure(message: str, title: str = ""):
    """A figure that says why there is nothing to plot, instead of empty axes."""
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_title(title, fontsize=10)
    return fig


# Above this many configurations bars run horizontally, one labelled row per configuration.
MAX_VERTICAL_BARS = 16


def bar_figure(labels: Sequence[str], series: dict[str, tuple[Sequence[float], Sequence[float]]],
               ylabel: str, title: str = "", hline: float | None = None, missing: str = "no data",
               empty: str = "nothing to plot: every value is missing"):
    """Grouped bars (mean ± std) per configuration, optionally with a reference line; a missing
    (NaN) value is marked `missing`, and a chart with no value at all says `empty`. With more
    than MAX_VERTICAL_BARS configurations the bars are horizontal so every label stays legible."""
    means = {k: np.asarray(m, dtype=float) for k, (m, _) in series.items()}
    if not len(labels) or all(np.isnan(m).all() for m in means.values()):
        return message_figure(empty, title)
    n, k = len(labels), max(1, len(series))
    horizontal = n > MAX_VERTICAL_BARS
    if horizontal:
        fig, ax = plt.subplots(figsize=(8, 1.5 + n * max(0.25, 0.12 * k)))
    else:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * n + 2), 4))
    x = np.arange(n)
    width = 0.8 / k
    for i, (name, (_, std)) in enumerate(series.items()):
        ok = ~np.isnan(means[name])
        pos = (x + (i - (k - 1) / 2) * width)[ok]
        mean, err = means[name][ok], np.nan_to_num(np.asarray(std, dtype=float)[ok])
        if horizontal:
            ax.barh(pos, mean, width, xerr=err, capsize=2, label=name)
        else:
            ax.bar(pos, mean, width, yerr=err, capsize=2, label=name)
    # One mark per configuration without any value, across the middle of the axes.
    if horizontal:
        at = matplotlib.transforms.blended_transform_factory(ax.transAxes, ax.transData)
    else:
        at = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for j in np.flatnonzero(np.all([np.isnan(m) for m in means.values()], axis=0)):
        ax.text(*((0.5, j) if horizontal else (j, 0.5)), missing, transform=at, fontsize=8,
                color="gray", ha="center", va="center")
    if horizontal:
        if hline is not None:
            ax.axvline(hline, color="red", linestyle="--", linewidth=1)
        ax.set_yticks(x, labels, fontsize=8)
        ax.set_ylim(n - 0.5, -0.5)  # first configuration on top
        ax.set_xlabel(ylabel)
        ax.grid(axis="x", alpha=0.3)
    else:
        if hline is not None:
            ax.axhline(hline, color="red", linestyle="--", linewidth=1)
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return fig


def polar_similarity_figure(names: Sequence[str], similarity: Sequence[float],
                            radius: Sequence[float], title: str = "", rlabel: str = "accuracy",
                            similarity_label: str = "cosine similarity of the parameter vectors"):
    """Each model at angle arccos(its similarity to the first model) and a radius (e.g. its
    accuracy); the angular range (30°, 60°, 90° or 180°) is the smallest that holds them all.
    Models drawn on top of each other (within CLOSE_POINTS) share one label naming them all,
    and their markers shrink one inside the other so every colour shows."""
    fig = plt.figure(figsize=(7.5, 5.5))
    ax = fig.add_subplot(projection="polar")
    ang = np.arccos(np.clip(np.asarray(similarity, dtype=float), -1, 1))
    deg = np.degrees(ang)
    widest = float(np.nanmax(deg)) if len(deg) else 0.0
    top = 180 if widest > 90 else next(t for t in (30, 60, 90) if t >= min(1.1 * widest, 90))
    ax.set_thetamin(0)
    ax.set_thetamax(top)
    ax.set_thetagrids(np.linspace(0, top, 7))
    rmax = 1.1 * max(max(radius, default=0.0), 1e-3)
    ax.set_rlim(0, rmax)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = _overlapping(ax, ang, radius)
    under = {i: len(g) - 1 - g.index(i) for g in groups for i in g}  # markers drawn above it
    for i, (a, r, d, n) in enumerate(zip(ang, radius, deg, names)):  # the legend in input order
        ax.scatter([a], [r], color=colors[i % len(colors)], zorder=3 + len(names) - under[i],
                   s=36 * (1 + 1.2 * under[i]), label=f"{n}: {d:.1f}°, {r:.3f}")
    for group in groups:
        ax.annotate(", ".join(names[i] for i in group), (ang[group[0]], radius[group[0]]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"radius: {rlabel}", fontsize=9)  # also found by ax.get_xlabel()
    ax.xaxis.label.set_visible(False)  # drawn below the radial axis instead, not under the circle
    ax.annotate(f"radius: {rlabel}", xy=(0, rmax / 2), xytext=(0, -30), textcoords="offset points",
                ha="center", fontsize=9, annotation_clip=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.05, 1.0), fontsize=7,
              title="model: angle, radius", title_fontsize=7)
    first = f" to {names[0]}" if len(names) else ""
    ax.set_title(f"{title}\nangle{first} = arccos({similarity_label})".lstrip("\n"), fontsize=9)
    return fig


# Points closer than this on the page (in points, 1/72 in) are drawn as one labelled spot.
CLOSE_POINTS = 8.0


def _overlapping(ax, ang: np.ndarray, radius: Sequence[float]) -> list[list[int]]:
    """The models' indices in groups of points that lie on top of each other on `ax` (its
    limits set): each joins the first group with a point within CLOSE_POINTS of it."""
    xy = ax.transData.transform(np.column_stack([ang, np.asarray(radius, dtype=float)]))
    close = CLOSE_POINTS * ax.figure.dpi / 72
    groups: list[list[int]] = []
    for i, p in enumerate(xy):
        near = next((g for g in groups if any(np.hypot(*(p - xy[j])) < close for j in g)), None)
        if near is None:
            groups.append([i])
        else:
            near.append(i)
    return groups


def plane_figure(xs: Sequence[float], ys: Sequence[float], values: np.ndarray,
                 paths: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
                 marks: dict[str, tuple[float, float]] | None = None, title: str = "",
                 label: str = "train loss"):
    """Contour plot of values[j, i] at (xs[i], ys[j]) with log-spaced levels, paths and marked points."""
    fig, ax = plt.subplots(figsize=(6, 5))
    v = np.asarray(values, dtype=float)
    lo, hi = max(np.nanmin(v), 1e-8), max(np.nanmax(v), 1e-7)
    if hi <= lo * 1.0001:
        hi = lo * 10
    levels = np.geomspace(lo, hi, 20)
    cs = ax.contourf(xs, ys, np.clip(v, lo, hi), levels=levels,
                     norm=matplotlib.colors.LogNorm(lo, hi), cmap="viridis")
    ax.contour(xs, ys, np.clip(v, lo, hi), levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs, ax=ax, label=f"{label} (log levels)", format="%.3g")
    for (name, (px, py)), style in zip((paths or {}).items(), ("w-", "w--", "r-", "r--")):
        ax.plot(px, py, style, linewidth=2, label=name)
    for name, (mx, my) in (marks or {}).items():
        ax.plot([mx], [my], "o", color="white", markeredgecolor="k")
        ax.annotate(name, (mx, my), color="white", fontsize=9, xytext=(4, 4),
                    textcoords="offset points")
    if paths:
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("e1 (along w1 − w0)")
    ax.set_ylabel("e2")
    ax.set_title(title, fontsize=10)
    return fig


def render(fig, fmt: str = "png") -> bytes:
    """The figure as PNG or SVG bytes (then closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, bbox_inches="tight", **({"dpi": 110} if fmt == "png" else {}))
    plt.close(fig)
    return buf.getvalue()


def heatmap_figure(values: np.ndarray, rows: Sequence, cols: Sequence, title: str,
                   label: str, row_label: str, col_label: str,
                   notes: np.ndarray | None = None, flag: np.ndarray | None = None,
                   flag_label: str = "", cmap: str = "viridis", center: float | None = None,
                   min_span: float = 0.1, errors: np.ndarray | None = None):
    """values[i, j] as coloured cells (rows × cols) with the value (and a note) written in each
    cell (NaN: "—" and the note, e.g. why); with `errors` (e.g. the std over seeds) a cell
    reads "value\n±error" (a NaN error, e.g. the std of one seed, is left out); cells where
    `flag` is true are outlined in red (explained by `flag_label`)."""
    v = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.25 * max(len(cols), 2), 1.2 + 0.9 * max(len(rows), 2)))
    finite = v[np.isfinite(v)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if center is not None:  # symmetric about the centre, at least ±min_span wide
        span = max(abs(lo - center), abs(hi - center), min_span)
        lo, hi = center - span, center + span
    elif hi - lo < min_span:  # all (nearly) equal: a readable scale, not one of 1e-12
        hi = lo + min_span
    im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xticks(range(len(cols)), [f"{c:g}" if isinstance(c, float) else str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [f"{r:g}" if isinstance(r, float) else str(r) for r in rows])
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            text = "—" if not np.isfinite(v[i, j]) else f"{v[i, j]:.3g}"
            if errors is not None and np.isfinite(v[i, j]) and np.isfinite(errors[i, j]):
                text += f"\n±{errors[i, j]:.2g}"
            if notes is not None and notes[i, j]:
                text += f"\n{notes[i, j]}"
            shade = (v[i, j] - lo) / (hi - lo) if np.isfinite(v[i, j]) else math.nan
            # False for NaN: a missing cell is left white, its "—" and note written in black
            dark = shade < 0.45 if center is None else abs(shade - 0.5) > 0.3
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
            if flag is not None and flag[i, j]:
                ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                                          edgecolor="red", linewidth=2.5))
    if flag is not None and flag.any():
        ax.plot([], [], "s", markerfacecolor="none", markeredgecolor="red", label=flag_label)
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.18), fontsize=8, frameon=False)
    ax.set_title(wrap(title, 70), fontsize=9)
    return fig


def wrap(title: str, width: int = 110) -> str:
    """A long title broken into lines (existing line breaks kept)."""
    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def matrix_figure(names: Sequence[str], values: np.ndarray, title: str, label: str):
    """A symmetric pairwise matrix (e.g. barriers between every pair of models)."""
    fig = heatmap_figure(values, names, names, title, label, "model", "model", cmap="magma")
    return fig


def continual_figure(rows: Sequence[dict], tasks: Sequence[str], title: str = ""):
    """Accuracy on each task (one panel each) after every step, one line per method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    steps = sorted({int(r["step"]) for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1.5, 3.4), sharey=True,
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks):
        for i, m in enumerate(methods):
            sel = sorted((int(r["step"]), 100 * float(r["acc"])) for r in rows
                         if r["method"] == m and r["task"] == task)
            ax.plot([s for s, _ in sel], [a for _, a in sel], "o-", color=colors[i % len(colors)],
                    label=m, markersize=4)
        ax.set_title(f"accuracy on {task}", fontsize=9)
        ax.set_xlabel("step (tasks seen)")
        ax.set_xticks(steps)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(wrap(title), fontsize=10)
    return fig

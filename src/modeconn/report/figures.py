"""Figures from tidy rows: paths, learning curves, barriers, similarity. PNG (and PDF on request)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import write_bytes  # noqa: E402

SPLIT_STYLE = {"train": "-", "test": "--"}


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


def path_figure(curves: dict[str, Sequence[dict]], title: str = "", xlabel: str = "λ"):
    """Loss and accuracy against t for one or more paths; rows may carry *_std for bands."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (label, rows), color in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for split in dict.fromkeys(r["split"] for r in rows):
            sel = [r for r in rows if r["split"] == split]
            t = np.array([float(r["t"]) for r in sel])
            for ax, key in zip(axes, ("loss", "acc")):
                y = np.array([float(r[key]) for r in sel])
                ax.plot(t, y, SPLIT_STYLE.get(split, ":"), color=color, label=f"{label} {split}")
                if f"{key}_std" in sel[0]:
                    s = np.array([float(r[f"{key}_std"]) for r in sel])
                    ax.fill_between(t, y - s, y + s, color=color, alpha=0.15)
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def learning_curves_figure(runs: dict[str, Sequence[dict]], title: str = ""):
    """Train/test loss and accuracy per epoch for several runs."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(runs.items()):
        for split in ("train", "test"):
            sel = [r for r in rows if r["split"] == split]
            ep = [int(r["epoch"]) for r in sel]
            for ax, key in zip(axes, ("loss", "acc")):
                ax.plot(ep, [float(r[key]) for r in sel], SPLIT_STYLE[split],
                        color=colors[i % len(colors)], label=f"{label} {split}")
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return fig


def bar_figure(labels: Sequence[str], series: dict[str, tuple[Sequence[float], Sequence[float]]],
               ylabel: str, title: str = "", hline: float | None = None):
    """Grouped bars (mean ± std) per configuration, optionally with a reference line."""
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 2), 4))
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, (mean, std)) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, mean, width, yerr=std, capsize=2, label=name)
    if hline is not None:
        ax.axhline(hline, color="red", linestyle="--", linewidth=1)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return fig


def polar_similarity_figure(names: Sequence[str], similarity: Sequence[float],
                            radius: Sequence[float], title: str = "", rlabel: str = "accuracy"):
    """Each model at angle arccos(similarity to the reference) and a radius (e.g. accuracy)."""
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="polar")
    ang = np.arccos(np.clip(np.asarray(similarity, dtype=float), -1, 1))
    ax.scatter(ang, radius)
    for a, r, n in zip(ang, radius, names):
        ax.annotate(n, (a, r), fontsize=7)
    ax.set_thetamin(0)
    ax.set_thetamax(90)
    ax.set_title(f"{title}\nangle = arccos(similarity), radius = {rlabel}", fontsize=9)
    return fig


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

"""Figures a newcomer can read: they name the runs, say what their axes are, stay legible with many
configurations, and say so when there is nothing to plot. Asserted on the matplotlib objects."""

from __future__ import annotations

import math

import matplotlib
import pytest

from modeconn import jobs, plots
from modeconn.cli import main
from modeconn.plots import bar_figure, display_names, path_figure

TINY = ["--width", "16", "--depth", "1", "--quiet", "--device", "cpu"]
# One tiny LMC configuration (its lr given by each test).
LMC = dict(dataset="digits", model="mlp", width=16, depth=1, shift="iid:50,50", init=["same"],
           batch_order=["same"], batch_sizes=[32], seeds=[0, 1], points=3, ensemble_size=2,
           epochs=1, quiet=True, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two MLPs, runs/iid/a and runs/iid/b, trained 1 epoch on disjoint halves of digits."""
    out = tmp_path_factory.mktemp("figs") / "runs" / "iid"
    assert main(["train", *TINY, "--epochs", "1", "--shift", "iid:50,50", "--out", str(out)]) == 0
    return out


@pytest.fixture
def saved(monkeypatch):
    """The figures the code under test saves, by file name."""
    got = {}
    save = plots.save

    def keep(fig, path, *args, **kw):
        got[str(path).rsplit("/", 1)[-1]] = fig
        return save(fig, path, *args, **kw)

    monkeypatch.setattr(plots, "save", keep)
    return got


def _texts(fig) -> list[str]:
    """Every text of a figure: titles, labels, annotations, tick and legend texts."""
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")) if t.get_text()]


@pytest.mark.parametrize("paths, names", [
    (["runs/iid/a/model.safetensors", "runs/iid/b/model.safetensors"], ["iid/a", "iid/b"]),
    (["/x/runs/iid/a/model.safetensors", "/x/runs/skew/a/model.safetensors"], ["iid/a", "skew/a"]),
    (["a.safetensors", "b.safetensors"], ["a", "b"]),
    (["r/a/model.safetensors", "r/align/aligned_b.safetensors"], ["r/a", "aligned_b"]),
    (["u/snap.safetensors", "v/snap.safetensors"], ["u", "v"]),
    (["s/jobs/train-17e8/out/all/model.safetensors", "s/jobs/train-93b7/out/all/model.safetensors"],
     ["train-17e8/all", "train-93b7/all"]),  # a study's jobs: out/ names nothing
    (["runs/out/a/model.safetensors", "runs/out/b/model.safetensors"], ["out/a", "out/b"]),
])
def test_display_names(paths, names):
    assert display_names(paths) == names


def test_ensemble_polar_plot_names_members_and_axes(run, tmp_path, saved):
    a, b = run / "a" / "model.safetensors", run / "b" / "model.safetensors"
    jobs.run("ensemble", checkpoints=[str(a), str(b)], device="cpu", out=tmp_path / "e")
    fig = saved["polar_similarity.png"]
    (ax,) = fig.axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.split(":")[0] for t in legend] == ["iid/a", "iid/b"]
    assert not any(t.startswith("model") for t in legend)
    assert "arccos(cosine similarity of the parameter vectors)" in ax.get_title()
    assert "iid/a" in ax.get_title()
    assert "radius: test accuracy" in _texts(fig)


def test_interpolate_title_names_the_runs(run, tmp_path, saved):
    a, b = run / "a" / "model.safetensors", run / "b" / "model.safetensors"
    assert main(["interpolate", str(a), str(b), "--device", "cpu", "--points", "3",
                 "--out", str(tmp_path / "i")]) == 0
    fig = saved["path.png"]
    title = fig._suptitle.get_text()
    assert "iid/a → iid/b" in title and "model.safetensors" not in title
    assert "digits" in title
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_ylabel() == "cross-entropy loss" and acc_ax.get_ylabel() == "accuracy"
    assert acc_ax.get_xlabel() == "λ (0: iid/a, 1: iid/b)"
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["linear train", "linear test"]


def test_align_title_and_legend_say_before_and_after(run, tmp_path, saved):
    a, b = run / "a" / "model.safetensors", run / "b" / "model.safetensors"
    assert main(["align", str(a), str(b), "--device", "cpu", "--points", "3",
                 "--out", str(tmp_path / "al")]) == 0
    fig = saved["path.png"]
    assert "iid/a → iid/b" in fig._suptitle.get_text() and "(wm)" in fig._suptitle.get_text()
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["iid/b before train", "iid/b before test", "iid/b aligned train",
                      "iid/b aligned test"]


def test_bar_chart_of_50_configurations_stays_legible():
    labels = [f"mlp same independent bs{16 * (i + 1)} lr0.05" for i in range(50)]
    series = {s: ([0.01 * i for i in range(50)], [0.001] * 50) for s in ("train", "test")}
    fig = bar_figure(labels, series, "loss barrier", "many")
    (ax,) = fig.axes
    ticks = ax.get_yticklabels()  # one horizontal row per configuration
    assert [t.get_text() for t in ticks] == labels
    assert all(t.get_rotation() == 0 and t.get_fontsize() >= 7 for t in ticks)
    row_inches = fig.get_figheight() * ax.get_position().height / len(labels)
    assert row_inches >= 8 / 72 * 1.5, row_inches  # a row is taller than its 8 pt label
    assert ax.get_xlabel() == "loss barrier"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "test"]


def test_bar_chart_of_few_configurations_is_vertical_and_marks_missing_values():
    fig = bar_figure(["x", "y", "z"], {"train": ([0.1, math.nan, 0.3], [0.0, math.nan, 0.0])},
                     "loss barrier", missing="diverged")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "z"]
    assert ax.get_ylabel() == "loss barrier"
    assert _texts(fig).count("diverged") == 1


def test_path_figure_without_rows_says_so():
    fig = path_figure({"linear": []}, title="t")
    assert any("nothing to plot" in t for t in _texts(fig))
    assert not [ax for ax in fig.axes if ax.lines]


def test_study_in_which_every_run_diverged_says_so(tmp_path, saved):
    summary = jobs.run("lmc", out=tmp_path / "s", **LMC, lrs=[1e5], jobs=1).summary
    assert all(r["seeds_ok"] == 0 for r in summary)
    for name in ("barriers.png", "delta.png"):
        fig = saved[name]
        assert "all runs diverged — nothing to plot" in _texts(fig), name
        assert not [p for ax in fig.axes for p in ax.patches], name  # no empty bars
        assert (tmp_path / "s" / "figures" / name).is_file()


@pytest.mark.parametrize("angles, top", [([0, 2.2], 30), ([0, 15, 87], 90), ([0, 40], 60),
                                         ([0, 100], 180)])
def test_polar_range_is_the_smallest_that_holds_every_model(angles, top):
    sims = [math.cos(math.radians(a)) for a in angles]
    fig = plots.polar_similarity_figure([f"m{i}" for i in range(len(sims))], sims,
                                        [0.9] * len(sims))
    assert fig.axes[0].get_thetamax() == pytest.approx(top)  # degrees


def _vlines(ax) -> list[float]:
    """The x of each vertical line drawn across `ax` (axvline)."""
    return [float(ln.get_xdata()[0]) for ln in ax.get_lines()
            if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]]


def _path_rows(peak: float) -> list[dict]:
    return [{"t": t, "split": s, "loss": 0.1 + peak * t * (1 - t), "acc": 0.9}
            for s in ("train", "test") for t in (0.0, 0.25, 0.5, 0.75, 1.0)]


def test_path_figure_marks_lambda_star_only_inside_the_path():
    """A λ* of 0, 1 or NaN (no barrier) draws no line and no legend entry; 0.5 draws both."""
    curves = {"flat": _path_rows(0.0), "none": _path_rows(0.0), "bump": _path_rows(1.0)}
    fig = path_figure(curves, marks={"flat": 0.0, "none": math.nan, "bump": 0.5})
    for ax in fig.axes:
        assert _vlines(ax) == [0.5]
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend.count("λ* (test loss barrier)") == 1
    fig = path_figure({"flat": _path_rows(0.0)}, marks={"flat": 0.0})
    assert not any(_vlines(ax) for ax in fig.axes)
    assert "λ* (test loss barrier)" not in [t.get_text() for t in fig.axes[1].get_legend().get_texts()]


@pytest.mark.parametrize("pairs, lam", [
    ([(0.0, 0.0), (0.0, 0.0)], None),        # no seed's loss rises above the line: no λ*
    ([(0.0, 0.0), (0.2, 0.5), (0.4, 0.7)], 0.6),  # the mean over the seeds with a barrier
    ([(0.1, 1.0)], None),                    # a height at an end is not a barrier's λ*
])
def test_lambda_star_is_the_mean_over_the_seeds_with_a_barrier(pairs, lam):
    from modeconn.report.build import mean_lambda

    got = mean_lambda(pairs)
    assert math.isnan(got) if lam is None else got == pytest.approx(lam)


def test_a_path_without_a_barrier_has_its_lambda_at_an_end():
    """The rule above matches modeconn.barrier: a convex path has height 0 at λ* = 0."""
    from modeconn.paths.barrier import path_summary
    from modeconn.report.build import barrier_lambda

    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    flat = path_summary(ts, [0.3, 0.2, 0.15, 0.2, 0.3], [0.9] * 5)
    assert not flat["interior"]
    assert barrier_lambda(flat["loss"]["linear"]["barrier"], flat["lambda_star"]) is None
    bump = path_summary(ts, [0.1, 0.3, 0.6, 0.3, 0.1], [0.9] * 5)
    assert bump["interior"]
    assert barrier_lambda(bump["loss"]["linear"]["barrier"], bump["lambda_star"]) == 0.5


def test_heatmap_cells_show_the_mean_and_the_std():
    import numpy as np

    v = np.array([[0.12, math.nan], [0.5, 0.0]])
    sd = np.array([[0.03, math.nan], [math.nan, 0.0]])
    notes = np.array([["g=1.08", "diverged"], ["", ""]], dtype=object)
    fig = plots.heatmap_figure(v, [0.05, 0.02], [32, 64], "t", "barrier", "lr", "bs", notes,
                               errors=sd)
    cells = [t for t in fig.axes[0].texts]
    assert [t.get_text() for t in cells] == ["0.12\n±0.03\ng=1.08", "—\ndiverged", "0.5", "0\n±0"]
    missing = cells[1]  # on the white of a masked cell: written in black, not white
    assert matplotlib.colors.to_hex(missing.get_color()) == "#000000"


def test_polar_points_on_top_of_each_other_share_one_label():
    fig = plots.polar_similarity_figure(["a", "b", "c"], [1.0, 1.0, 0.9], [0.95, 0.95, 0.9])
    (ax,) = fig.axes
    labels = [t for t in ax.texts if not t.get_text().startswith("radius")]
    assert sorted(t.get_text() for t in labels) == ["a, b", "c"]
    assert len({tuple(t.xy) for t in labels}) == len(labels)  # no two labels on one spot
    sizes = [float(c.get_sizes()[0]) for c in ax.collections]
    assert sizes[0] > sizes[1]  # the first marker rings the one drawn on top of it
    legend = [t.get_text().split(":")[0] for t in ax.get_legend().get_texts()]
    assert legend == ["a", "b", "c"]


def test_lmc_polar_title_is_words_not_the_run_id(tmp_path, saved):
    job = jobs.get("lmc")  # the job draws it (run here, not in a study's worker)
    job.run(job.config.from_dict({**LMC, "lrs": [0.05]}), tmp_path / "s")
    (name,) = [n for n in saved if n.startswith("polar_")]
    title = saved[name].axes[0].get_title()
    assert title.split("\n")[0] == ("mlp, iid:50,50: init same, batch order same, batch size 32, "
                                    "lr 0.05 (seed 0)")
    assert name.removeprefix("polar_").removesuffix(".png") not in title


def test_the_merge_matrix_says_plain_averaging_aligned_nothing(run, tmp_path, monkeypatch):
    from modeconn.report import build

    a, b = run / "a" / "model.safetensors", run / "b" / "model.safetensors"
    out = tmp_path / "m"
    jobs.run("merge-many", models=[str(a), str(b)], method="avg", hessian_probes=0, points=3,
             device="cpu", out=out)
    drawn = []
    monkeypatch.setattr(build.plots, "matrix_figure",
                        lambda names, values, title, label: drawn.append(title)
                        or plots.message_figure(title))
    build.build(out)
    (title,) = drawn
    assert "plain averaging (avg) aligns nothing" in title and "after align" not in title

"""modeconn report: one self-contained HTML file of a study or of one job, checked in Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import pytest
from conftest import digits_study

from modeconn import jobs
from modeconn.errors import UsageError
from modeconn.report.build import build
from modeconn.studies import parse, run_study
from modeconn.studies import results as tables

STUDY = digits_study("report-test").replace(
    'grid = { batch_order = ["same", "independent"] }',
    "grid = { batch_size = [32, 64], lr = [0.05, 0.02] }")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "study"
    run = run_study(parse(STUDY, "report-test.toml"), out, workers=2, quiet=True)
    assert run.complete
    return out


def images(text: str) -> list[str]:
    return re.findall(r'<img src="(data:[^"]+)"', text)


def test_the_report_is_one_file_with_every_figure_embedded(study, tmp_path):
    r = jobs.run("report", source=study, out=tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert r.figures >= 5 and len(images(text)) == r.figures
    assert all(src.startswith("data:image/png;base64,") for src in images(text))
    # nothing to fetch: no external scripts, styles or images
    assert not re.search(r'(src|href)="(https?:)?//', text)
    for title in ("learning curves", "linear interpolation", "loss barrier heatmap",
                  "Δ accuracy heatmap"):
        assert title in text, title
    assert "g=" in text  # the SGD noise scale in the heatmap cells (as alt text says below)
    # the same numbers as the results summary
    rows, _ = tables.collect(study, parse(STUDY, "report-test.toml"))
    st = next(s for s in tables.summarise(rows) if s.stage == "interpolate")
    key, values, _ = st.groups[0]
    m = sum(values["test_loss_barrier"]) / len(values["test_loss_barrier"])
    assert f">{m:.3g}" in text or f">{m:.3g} ± " in text


def test_the_same_results_give_the_same_file(study, tmp_path):
    jobs.run("report", source=study, out=tmp_path / "a.html")
    first = (tmp_path / "a.html").stat().st_mtime_ns
    jobs.run("report", source=study, out=tmp_path / "a.html")
    assert (tmp_path / "a.html").stat().st_mtime_ns == first  # unchanged: not rewritten


def test_svg_figures_on_request(study):
    text, info = build(study, "svg")
    srcs = images(text)
    assert srcs and all(s.startswith("data:image/svg+xml;base64,") for s in srcs)


def test_a_single_jobs_output_has_a_report(study, tmp_path):
    job = next(p.parent for p in study.glob("jobs/interpolate-*/job.json"))
    single = tmp_path / "interp"
    shutil.copytree(job / "out", single)
    r = jobs.run("report", source=single)
    text = (single / "report.html").read_text()
    assert r.out == single / "report.html" and "linear interpolation" in text
    assert "test_loss_barrier" in text


def test_bad_sources_are_refused(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither a study directory"):
        build(tmp_path / "empty")
    rc, _, err = cli("report", tmp_path / "missing")
    assert rc == 2 and "is not a directory" in err
    rc, _, err = cli("report", tmp_path / "empty", "--out", tmp_path / "r.txt")
    assert rc == 2 and "must end in .html" in err


def test_figures_mark_lambda_star_only_where_a_barrier_is_and_cells_show_the_std(study,
                                                                                monkeypatch):
    """λ* lines: one per configuration that has a test loss barrier in some seed, at the mean
    λ* of those seeds (none at λ = 0 for a path without one); heatmap cells: mean and ± std."""
    from modeconn import plots

    drawn, render = [], plots.render
    monkeypatch.setattr(plots, "render", lambda fig, fmt="png": drawn.append(fig)
                        or render(fig, fmt))
    build(study)
    seeds: dict[str, list[float]] = {}
    for job in study.glob("jobs/interpolate-*"):
        labels = json.loads((job / "job.json").read_text())["labels"]
        test = json.loads((job / "out" / "barrier.json").read_text())["test"]
        key = json.dumps({k: v for k, v in labels.items() if not k.endswith("seed")},
                         sort_keys=True)
        height, lam = test["loss"]["linear"]["barrier"], test["lambda_star"]
        seeds.setdefault(key, []).extend([lam] if height > 0 and 0 < lam < 1 else [])
    expected = sorted(sum(v) / len(v) for v in seeds.values() if v)
    paths = [f for f in drawn if f._suptitle and "linear interpolation" in f._suptitle.get_text()]
    assert paths
    lines = sorted(float(ln.get_xdata()[0]) for f in paths for ln in f.axes[0].get_lines()
                   if len(set(ln.get_xdata())) == 1)
    assert lines == pytest.approx(expected)
    assert all(0 < x < 1 for x in lines)
    heatmaps = [f for f in drawn if f.axes[0].get_title().startswith("test loss barrier over")]
    assert heatmaps and all("mean ± std over 2 seeds" in f.axes[0].get_title() for f in heatmaps)
    cells = [t.get_text().split("\n") for f in heatmaps for t in f.axes[0].texts]
    assert cells and all(c[1].startswith("±") for c in cells if c[0] != "—"), cells


def browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_report_opens_cleanly_in_chromium(study, tmp_path):
    """Headless Chromium loads the file from file://: no console errors, every image loaded
    with a non-zero natural size, the summary table holds the study's numbers; a screenshot."""
    exe = browser()
    why = None if exe else "Chromium is not installed (scripts/browser.sh installs it)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "playwright is not installed (pip install -e '.[dev]')"
    if why:
        if os.environ.get("MODECONN_REQUIRE_BROWSER"):
            pytest.fail(why)
        pytest.skip(why)
    report = tmp_path / "report.html"
    jobs.run("report", source=study, out=report)
    rows, _ = tables.collect(study, parse(STUDY, "report-test.toml"))
    st = next(s for s in tables.summarise(rows) if s.stage == "train")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = b.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        sizes = page.evaluate("Array.from(document.images).map("
                              "i => [i.complete, i.naturalWidth, i.naturalHeight])")
        table = page.evaluate("Array.from(document.querySelectorAll('table')[0].rows)"
                              ".map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
        # sorting by a numeric column puts its values in order
        page.click("table >> nth=0 >> th >> nth=3")
        sorted_col = page.evaluate("Array.from(document.querySelectorAll('table')[0].tBodies[0]"
                                   ".rows).map(r => parseFloat(r.cells[3].dataset.sort))")
        page.screenshot(path=str(tmp_path / "report.png"))
        b.close()
    assert errors == []
    assert sizes and all(done and w > 0 and h > 0 for done, w, h in sizes)
    assert all(u.startswith("file://") or u.startswith("data:") for u in requests)
    assert table[0][:2] == ["batch_size", "lr"]
    key, values, _ = st.groups[0]
    acc = sum(values["test_acc"]) / len(values["test_acc"])
    assert any(f"{acc:.3g} ± " in " ".join(row) for row in table[1:])  # as the page shows it
    assert sorted_col == sorted(sorted_col)
    assert (tmp_path / "report.png").stat().st_size > 10_000


def _lmc_like_rows(n: int) -> list[list]:
    """Rows as wide as the demo's lmc table (its longest labels and numbers)."""
    return [["mlp3-bn", "label-skew:0-4=80,5-9=20", "different", "independent", 128, 0.2, 0.9281,
             (0.00339, 0.0059, 3), (0.0782, 0.023, 3), (-15.7, 15.1, 3), (0.0926, 0.16, 3),
             (-0.0926, math.nan, 1), 3, 0] for _ in range(n)]


def test_wide_tables_stay_inside_the_page_in_chromium(tmp_path):
    """At 1400 px the demo's 14-column lmc table fits the page; a table wider still scrolls in
    its own box, no taller than the window, so its horizontal scroll bar is in view."""
    from modeconn.report.build import Section, Table, render_page

    exe = browser()
    if not exe:
        if os.environ.get("MODECONN_REQUIRE_BROWSER"):
            pytest.fail("Chromium is not installed (scripts/browser.sh installs it)")
        pytest.skip("Chromium is not installed (scripts/browser.sh installs it)")
    from playwright.sync_api import sync_playwright

    lmc = Table("barriers and ensembles per configuration", [
        "model", "shift", "init", "order", "bs", "lr", "g", "train barrier", "test barrier",
        "test Δacc", "LMC ens. gain", "ind. ens. gain", "ok", "diverged"], _lmc_like_rows(50))
    wide = Table("wide", [f"metric number {i}" for i in range(30)],
                 [[(0.123, 0.045, 3)] * 30 for _ in range(60)])
    head = {"name": "wide", "description": "", "config": "", "config_name": "study.toml",
            "as_of": "unknown"}
    page = tmp_path / "wide.html"
    page.write_text(render_page(head, [Section("mlp", "lmc", 8, {"complete": 8}, [lmc, wide])],
                                [], "png"))
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        tab = b.new_page(viewport={"width": 1400, "height": 900})
        tab.goto(page.as_uri())
        boxes = tab.evaluate("""Array.from(document.querySelectorAll('div.scroll')).map(d => ({
            table: d.querySelector('table').getBoundingClientRect().width,
            inner: d.clientWidth, scroll: d.scrollWidth, height: d.getBoundingClientRect().height,
            window: [window.innerWidth, window.innerHeight],
            page: document.documentElement.scrollWidth}))""")
        tab.screenshot(path=str(tmp_path / "wide.png"))
        b.close()
    first, second = boxes
    assert first["page"] <= first["window"][0]  # the page itself never scrolls sideways
    assert first["table"] <= first["inner"], first  # the lmc table: every column in view
    assert second["scroll"] > second["inner"] and second["height"] <= second["window"][1], second


def test_align_and_merge_titles_name_what_their_inputs_were_trained_on(tmp_path):
    """Align and merge-many figures of one stage over two datasets do not share titles: each
    names the upstream sweep values that differ (dataset, patch), not its own (method, a, b)."""
    from modeconn.report.build import Item, upstream_text

    def item(i: int, dataset: str, patch: int, method: str) -> Item:
        return Item(f"align-{i}", "align", "align",
                    {"train.dataset": dataset, "train.patch": patch, "align.method": method,
                     "align.a": "@train[seed=0]/all/model.safetensors"}, tmp_path, None)

    items = [item(i, d, p, m) for i, (d, p) in enumerate([("digits", 4), ("mnist-5k", 7)])
             for m in ("wm", "am")]
    assert upstream_text(items[0], items) == " — dataset digits, patch 4"
    assert upstream_text(items[3], items) == " — dataset mnist-5k, patch 7"
    assert upstream_text(items[0], items[:2]) == ""  # one dataset: nothing to tell apart

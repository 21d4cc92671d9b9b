"""modeconn report: one self-contained HTML file of a study or of one job, checked in Chromium."""

from __future__ import annotations

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

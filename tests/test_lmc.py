"""The LMC-under-shift study (`modeconn lmc`: one lmc job per configuration, run as a study):
outputs, consistency between its tables, reproducibility by seed, diverged configurations,
resume, and directories written by modeconn 0.1."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from modeconn import artefacts, jobs
from modeconn.data import DataSpec, prepare_subsets
from modeconn.errors import UsageError
from modeconn.io import read_csv
from modeconn.options import ConfigError
from modeconn.paths.barrier import barrier
from modeconn.studies.protocols import lmc as protocol

CPU = torch.device("cpu")
OK_LR, BAD_LR = 0.05, 1e5
TABLES = ("summary.csv", "paths.csv", "barriers.csv", "ensembles.csv", "similarity.csv",
          "learning_curves.csv", "paths_mean.csv")
FIXTURE = Path(__file__).parent / "data" / "lmc-0.1"
# The options modeconn 0.1 wrote tests/data/lmc-0.1 with (its study.json records them).
FIXTURE_OPTIONS = dict(model="mlp", width=8, depth=1, shift="label-skew:0-4=80,5-9=20",
                       batch_order=["same", "independent"], batch_sizes=[64], lrs=[0.05],
                       seeds=[0, 1], epochs=1, points=3, ensemble_size=2, contrast=True)


def _options(**kw) -> dict:
    base = dict(dataset="digits", model="mlp", width=16, depth=1, shift="iid:50,50",
                init=["same"], batch_order=["same"], batch_sizes=[32], lrs=[OK_LR],
                seeds=[0, 1], points=5, ensemble_size=2, epochs=2, quiet=True, device="cpu",
                jobs=1)
    base.update(kw)
    return base


def _job_options(**kw) -> dict:
    """Options of the lmc job itself (the command's, less its worker count)."""
    return {k: v for k, v in _options(**kw).items() if k != "jobs"}


def _run(out: Path, **kw):
    return jobs.run("lmc", out=out, **_options(**kw))


@pytest.fixture(scope="module")
def study_dirs(tmp_path_factory):
    """The tiny study (plus a diverging lr=1e5 configuration) run twice into two directories."""
    root = tmp_path_factory.mktemp("lmc")
    summaries = []
    for name in ("first", "second"):
        result = _run(root / name, lrs=[OK_LR, BAD_LR], jobs=2)
        assert result.exit_code == 0
        summaries.append(result.summary)
    return root / "first", root / "second", summaries


def _ok(rows):
    return [r for r in rows if float(r["lr"]) == OK_LR]


def test_study_writes_tables_and_figures(study_dirs):
    out, _, (summary, _) = study_dirs
    for name in TABLES + ("study.toml", "results.csv"):
        assert (out / name).is_file(), name
    figs = out / "figures"
    for name in ("barriers.png", "delta.png", "interpolation_mlp_init-same.png",
                 "learning_curves_mlp_init-same.png"):
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert len(list(figs.glob("polar_*.png"))) == 1  # one for the configuration that trained
    records = [json.loads(p.read_text()) for p in sorted(out.glob("jobs/*/out/config.json"))]
    assert len(records) == 2  # one job per configuration, each with its record
    for r in records:
        assert r["config"]["seeds"] == [0, 1] and r["model_config"]["widths"] == [16]
    assert sorted(r["config"]["lrs"][0] for r in records) == [OK_LR, BAD_LR]
    assert len(summary) == 2
    assert len(read_csv(out / "summary.csv")) == 2


def test_study_tables_are_consistent(study_dirs):
    out, _, (summary, _) = study_dirs
    paths = _ok(read_csv(out / "paths.csv"))
    barriers = _ok(read_csv(out / "barriers.csv"))
    ensembles = _ok(read_csv(out / "ensembles.csv"))
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    # 2 seeds × 5 points × 2 splits; 2 seeds × 2 splits × 2 metrics × 3 definitions.
    assert len(paths) == 20 and len(barriers) == 24
    row = _ok(summary)[0]
    assert row["seeds_ok"] == 2 and row["diverged"] == 0
    for seed in ("0", "1"):
        for split in ("train", "test"):
            sel = [r for r in paths if r["seed"] == seed and r["split"] == split]
            assert [float(r["t"]) for r in sel] == ts
            loss = [float(r["loss"]) for r in sel]
            acc = [float(r["acc"]) for r in sel]
            for metric, curve in (("loss", loss), ("error", [1 - a for a in acc])):
                for d in ("linear", "midpoint", "local-min"):
                    (b,) = [r for r in barriers if r["seed"] == seed and r["split"] == split
                            and r["metric"] == metric and r["definition"] == d]
                    assert float(b["barrier"]) == pytest.approx(barrier(ts, curve, d)[0],
                                                                abs=1e-12)
        # LMC ensemble of size 2 = the two endpoints: its mean member is their mean accuracy.
        test = [r for r in paths if r["seed"] == seed and r["split"] == "test"]
        (lmc,) = [r for r in ensembles if r["seed"] == seed and r["ensemble"] == "lmc-2"]
        assert float(lmc["member_acc"]) == pytest.approx(
            (float(test[0]["acc"]) + float(test[-1]["acc"])) / 2, abs=1e-12)
        assert float(lmc["size"]) == 2
    # Different seeds are different runs (different initialisation and split).
    assert [r["loss"] for r in paths if r["seed"] == "0"] != \
        [r["loss"] for r in paths if r["seed"] == "1"]
    # Independent ensemble: member a of seed 0 and of seed 1.
    a_acc = [float(r["acc"]) for r in paths if r["split"] == "test" and float(r["t"]) == 0.0]
    for ind in [r for r in ensembles if r["ensemble"] == "independent-2"]:
        assert float(ind["member_acc"]) == pytest.approx(sum(a_acc) / 2, abs=1e-12)
    # The summary is mean ± std over seeds of the per-seed barriers.
    for split in ("train", "test"):
        vals = [float(r["barrier"]) for r in barriers if r["split"] == split
                and r["metric"] == "loss" and r["definition"] == "linear"]
        assert row[f"{split}_loss_barrier"] == pytest.approx(statistics.fmean(vals), abs=1e-12)
        assert row[f"{split}_loss_barrier_std"] == pytest.approx(statistics.stdev(vals), abs=1e-12)
    train_vals = [float(r["barrier"]) for r in barriers if r["split"] == "train"
                  and r["metric"] == "loss" and r["definition"] == "linear"]
    assert row["connected"] == sum(v <= 0.01 for v in train_vals)
    lmc_accs = [float(r["acc"]) for r in ensembles if r["ensemble"] == "lmc-2"]
    assert row["lmc_ens_acc"] == pytest.approx(statistics.fmean(lmc_accs), abs=1e-12)
    # g = ε (N/B − 1) with N the size of a training subset.
    n = len(prepare_subsets(DataSpec("digits", shift="iid:50,50"))[0].train_y)
    assert row["noise_scale_g"] == pytest.approx(OK_LR * (n / 32 - 1))
    # Similarity of the first seed's pair, its midpoint and another seed's member.
    sims = _ok(read_csv(out / "similarity.csv"))
    assert {(r["a"], r["b"]) for r in sims} == {
        ("a", "b"), ("a", "midpoint"), ("a", "independent(seed1)"), ("b", "midpoint"),
        ("b", "independent(seed1)"), ("midpoint", "independent(seed1)")}


def test_one_independent_ensemble_reports_n_1_not_a_zero_spread(study_dirs):
    # Two seeds and ensembles of two: one independent ensemble, but two LMC ensembles.
    out, _, (summary, _) = study_dirs
    row = _ok(summary)[0]
    assert row["ind_ens_n"] == 1 and row["lmc_ens_n"] == 2
    for key in ("acc", "nll", "gain_acc"):
        assert row[f"ind_ens_{key}"] == row[f"ind_ens_{key}"]  # measured
        assert row[f"ind_ens_{key}_std"] != row[f"ind_ens_{key}_std"], key  # NaN: not measured
        assert row[f"lmc_ens_{key}_std"] >= 0
    (csv_row,) = _ok(read_csv(out / "summary.csv"))
    assert csv_row["ind_ens_n"] == "1" and csv_row["lmc_ens_n"] == "2"
    assert csv_row["ind_ens_acc_std"] == "" and csv_row["ind_ens_gain_acc_std"] == ""
    assert float(csv_row["ind_ens_acc"]) == pytest.approx(row["ind_ens_acc"], abs=1e-12)
    assert float(csv_row["lmc_ens_acc_std"]) == pytest.approx(row["lmc_ens_acc_std"], abs=1e-12)
    (bad,) = [r for r in summary if r["lr"] == BAD_LR]
    assert bad["ind_ens_n"] == 0 and bad["lmc_ens_n"] == 0


def test_summary_table_prints_n_1_for_a_single_value():
    from modeconn.jobs.lmc import summary_table

    nan = float("nan")
    row = {"model": "mlp", "shift": "iid:50,50", "init": "same", "batch_order": "same",
           "batch_size": 32, "lr": 0.05, "noise_scale_g": 1.0, "seeds_ok": 2, "diverged": 0,
           "train_loss_barrier": 0.02, "train_loss_barrier_std": 0.005,
           "test_loss_barrier": 0.03, "test_loss_barrier_std": 0.001,
           "test_delta_acc": -0.01, "test_delta_acc_std": 0.002,
           "lmc_ens_gain_acc": 0.004, "lmc_ens_gain_acc_std": 0.001,
           "ind_ens_gain_acc": 0.00912, "ind_ens_gain_acc_std": nan}
    line = summary_table([row]).splitlines()[2]
    assert "0.912 (n=1)" in line and "±0.000" not in line
    assert "0.020±0.005" in line
    assert "n/a" in summary_table([{**row, "ind_ens_gain_acc": nan}]).splitlines()[2]


def test_study_is_reproducible_by_seed(study_dirs):
    first, second, (s1, s2) = study_dirs
    for name in TABLES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert json.dumps(s1, default=str) == json.dumps(s2, default=str)


def test_diverged_configuration_is_counted_not_averaged(study_dirs):
    out, _, (summary, _) = study_dirs
    (bad,) = [r for r in summary if r["lr"] == BAD_LR]
    assert bad["seeds_ok"] == 0 and bad["diverged"] == 2
    for key in ("train_loss_barrier", "test_loss_barrier", "test_delta_acc", "lmc_ens_acc",
                "ind_ens_acc"):
        assert bad[key] != bad[key], key  # NaN
    assert bad["connected"] == 0
    # Nothing of the diverged configuration was interpolated or ensembled.
    for name in ("paths.csv", "barriers.csv", "ensembles.csv", "similarity.csv"):
        assert not [r for r in read_csv(out / name) if float(r["lr"]) == BAD_LR], name
    statuses = [json.loads(p.read_text())["status"]
                for p in out.glob("jobs/*/out/runs/*lr100000/seed*/*/status.json")]
    assert statuses and set(statuses) == {"diverged"}
    # The good configuration next to it is unaffected.
    (good,) = [r for r in summary if r["lr"] == OK_LR]
    assert good["seeds_ok"] == 2 and good["train_loss_barrier"] == good["train_loss_barrier"]


def test_study_refuses_a_non_empty_output_directory(study_dirs):
    out, _, _ = study_dirs
    with pytest.raises(UsageError, match="--resume"):
        _run(out)


@pytest.mark.parametrize("kw", [
    {"seeds": []}, {"seeds": [1, 1]}, {"lrs": [0.0]}, {"batch_sizes": [0]},
    {"ensemble_size": 1}, {"shift": "none"}, {"points": 1},
])
def test_impossible_studies_raise_usage_error(kw, tmp_path):
    with pytest.raises(UsageError):
        _run(tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- `modeconn lmc`


def _assert_one_line_error(rc, out, err):
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modeconn: error: ")
    assert "Traceback" not in err + out


@pytest.mark.parametrize("args, word", [
    (["--init", "sometimes"], "--init"),
    (["--init", "same,random"], "--init"),
    (["--batch-order", "shuffled"], "--batch-order"),
    (["--seeds", "0,0"], "--seeds"),
    (["--points", "1"], "points"),
    (["--ensemble-size", "1"], "--ensemble-size"),
])
def test_lmc_bad_options_exit_2_with_one_line(cli, tmp_path, args, word):
    out = tmp_path / "lmc"
    rc, stdout, err = cli("lmc", "--width", "16", "--depth", "1", "--epochs", "1", "--quiet",
                          "--device", "cpu", *args, "--out", out)
    _assert_one_line_error(rc, stdout, err)
    assert word in err
    assert not out.exists()


def _study_of(**given):
    return protocol.study(protocol.LMCCommand.from_dict(given))


def test_the_grid_is_one_job_per_configuration_with_its_options():
    study = _study_of(width=16, depth=1, init=["same", "different"], batch_order=["same"],
                      batch_sizes=[16, 64], lrs=[0.1], seeds=[3, 4, 5], points=7,
                      ensemble_size=2, shift="label-skew:0-4=80,5-9=20", epochs=4)
    assert len(study.jobs) == 4 and {j.stage for j in study.jobs} == {"lmc"}
    points = [(j.options["init"], j.options["batch_sizes"], j.options["lrs"]) for j in study.jobs]
    assert points == [(["same"], [16], [0.1]), (["same"], [64], [0.1]),
                      (["different"], [16], [0.1]), (["different"], [64], [0.1])]
    for j in study.jobs:
        o = j.options
        assert o["seeds"] == [3, 4, 5] and o["points"] == 7 and o["ensemble_size"] == 2
        assert o["width"] == 16 and o["epochs"] == 4 and o["batch_order"] == ["same"]
        assert o["shift"] == "label-skew:0-4=80,5-9=20"
        assert j.labels["lmc.batch_size"] == o["batch_sizes"][0]
        config = jobs.get("lmc").config.from_dict(o)
        assert len(config.configurations()) == 1


def test_linear_lr_scaling_and_the_contrast_row_become_jobs_of_their_own():
    study = _study_of(batch_order=["same", "independent"], batch_sizes=[32, 128], lrs=[0.05],
                      lr_scaling="linear", contrast=True)
    got = [(j.options["init"][0], j.options["batch_order"][0], j.options["batch_sizes"][0],
            j.options["lrs"][0], j.options["lr_scaling"], j.options["contrast"])
           for j in study.jobs]
    assert got == [("same", "same", 32, 0.05, "none", False),
                   ("same", "same", 128, 0.2, "none", False),
                   ("same", "independent", 32, 0.05, "none", False),
                   ("same", "independent", 128, 0.2, "none", False),
                   ("different", "same", 32, 0.05, "none", False)]
    # The ids of the configurations, as modeconn 0.1 named their run folders.
    ids = [jobs.get("lmc").config.from_dict(j.options).configurations()[0]["id"]
           for j in study.jobs]
    assert ids[1] == "mlp_iid-50_50_init-same_order-same_bs128_lr0.2"


@pytest.mark.parametrize("given, sizes, lrs", [({}, [32], [0.05]),
                                               ({"batch_size": 64, "lr": 0.03}, [64], [0.03])])
def test_lmc_one_value_options_are_a_one_value_grid(given, sizes, lrs):
    (job,) = _study_of(batch_order=["same"], **given).jobs
    assert job.options["batch_sizes"] == sizes and job.options["lrs"] == lrs


@pytest.mark.parametrize("given, field", [({"batch_size": 16, "batch_sizes": [32]}, "batch_size"),
                                          ({"lr": 0.1, "lrs": [0.2]}, "lr"),
                                          ({"seeds": [0, 0]}, "seeds"),
                                          ({"shift": "none"}, "shift")])
def test_lmc_config_refuses_by_field(given, field):
    with pytest.raises(ConfigError) as e:
        jobs.get("lmc").config.from_dict(given)
    assert e.value.name == field and str(e.value).startswith(f"'{field}' of lmc ")


def test_an_lmc_job_given_a_grid_says_how_to_run_it(tmp_path):
    job = jobs.get("lmc")
    config = job.config.from_dict(_job_options(batch_sizes=[32, 64]))
    with pytest.raises(UsageError, match="one configuration.*modeconn lmc"):
        job.run(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lmc_command_prints_the_summary_table(cli, tmp_path):
    out = tmp_path / "lmc"
    rc, stdout, err = cli("lmc", "--width", "8", "--depth", "1", "--init", "same,different",
                          "--batch-order", "same", "--batch-size", "64", "--seeds", "3,4",
                          "--epochs", "1", "--points", "3", "--ensemble-size", "2", "--quiet",
                          "--device", "cpu", "--jobs", "2", "--out", out)
    assert rc == 0, err
    lines = stdout.splitlines()
    assert "train barrier" in lines[0]
    body = [ln for ln in lines[2:] if ln.startswith("mlp")]
    assert len(body) == 2 and all("2/2" in ln for ln in body)
    assert lines[-2].startswith("study lmc: 2 jobs, one per configuration; ran 2, found 0 done")
    assert lines[-1] == f"wrote {out}"


# ---------------------------------------------------------------- resume


def _files(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and modification time of every file under `root`."""
    import hashlib
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _models(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file
    return {str(p.relative_to(root)): load_file(p) for p in sorted(root.rglob("model.safetensors"))}


def _same(a, b) -> bool:
    """Equal summaries, NaN (a spread of one value) equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_a_job_resumed_after_a_kill_at_a_final_state_write_matches_the_uninterrupted_one(
        tmp_path, monkeypatch):
    """Killed the moment the first pair's last resume state is written, the resumed job keeps
    that pair's trained models (not the initialisation) and reports the same summary."""
    import modeconn.train.runs as train

    job = jobs.get("lmc")
    config = job.config.from_dict(_job_options())
    full = job.run(config, tmp_path / "A").summary
    real, calls = train._save_state, []

    def kill_after_first_final_state(path, model, opt, epoch, *args, **kw):
        real(path, model, opt, epoch, *args, **kw)
        calls.append(epoch)
        if epoch == config.epochs and calls.count(epoch) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "_save_state", kill_after_first_final_state)
    with pytest.raises(KeyboardInterrupt):
        job.run(config, tmp_path / "B")
    monkeypatch.setattr(train, "_save_state", real)
    resumed = job.config.from_dict({**_job_options(), "resume": True})
    assert _same(job.run(resumed, tmp_path / "B").summary, full)
    a, b = _models(tmp_path / "A"), _models(tmp_path / "B")
    assert len(a) == 4 and list(a) == list(b)
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}/{k}"
    for name in ("summary.csv", "paths.csv", "barriers.csv", "ensembles.csv"):
        assert (tmp_path / "A" / name).read_bytes() == (tmp_path / "B" / name).read_bytes(), name


def test_a_job_resumed_with_other_settings_is_refused(tmp_path):
    job = jobs.get("lmc")
    job.run(job.config.from_dict(_job_options()), tmp_path / "s")
    before = _files(tmp_path / "s")
    with pytest.raises(UsageError, match="different settings"):
        job.run(job.config.from_dict({**_job_options(points=7), "resume": True}), tmp_path / "s")
    assert _files(tmp_path / "s") == before


def test_resuming_a_complete_study_changes_no_file(tmp_path):
    first = _run(tmp_path / "s")
    before = _files(tmp_path / "s")
    again = _run(tmp_path / "s", resume=True)
    assert again.run.ran == 0 and _same(again.summary, first.summary)
    assert _files(tmp_path / "s") == before  # same bytes, not even rewritten


def test_resuming_a_study_with_other_settings_is_refused(tmp_path):
    _run(tmp_path / "s")
    before = _files(tmp_path / "s")
    with pytest.raises(UsageError, match="different study settings"):
        _run(tmp_path / "s", points=7, resume=True)
    assert _files(tmp_path / "s") == before


# ---------------------------------------------------------------- written by modeconn 0.1


def _rows(folder: Path, name: str) -> list[dict]:
    return artefacts.Table(name).read(folder)


def _close(a: list[dict], b: list[dict]) -> bool:
    """Equal tables, numbers to 1e-6 (the same weights evaluated on another CPU)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.keys() != y.keys():
            return False
        for k in x:
            u, v = x[k], y[k]
            if isinstance(u, float) or isinstance(v, float):
                if not (u == pytest.approx(v, abs=1e-6, nan_ok=True)):
                    return False
            elif u != v:
                return False
    return True


def test_a_complete_directory_of_modeconn_0_1_resumes_unchanged(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    before = _files(old)
    result = _run(old, **FIXTURE_OPTIONS, resume=True)
    assert result.exit_code == 0 and len(result.summary) == 3
    assert result.summary == artefacts.LMC_STATUS.read(old)["summary"]
    assert "written by modeconn 0.1" in "\n".join(result.lines())
    assert _files(old) == before


def test_a_directory_of_modeconn_0_1_is_refused_with_other_settings_or_without_resume(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    before = _files(old)
    with pytest.raises(UsageError, match="different study settings.*study.json"):
        _run(old, **{**FIXTURE_OPTIONS, "points": 5}, resume=True)
    with pytest.raises(UsageError, match="--resume"):
        _run(old, **FIXTURE_OPTIONS)
    assert _files(old) == before


def test_an_unfinished_directory_of_modeconn_0_1_goes_on_from_its_runs(tmp_path):
    """Killed before its last configuration trained: the finished runs move into the jobs
    that continue them (not trained again), the rest trains, and the tables are the ones the
    uninterrupted run of 0.1 wrote."""
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    for name in ("status.json", *TABLES):
        (old / name).unlink()
    last = "mlp_label-skew-0-4=80_5-9=20_init-different_order-same_bs64_lr0.05"
    shutil.rmtree(old / "runs" / last)
    kept = {p.relative_to(old / "runs"): p.read_bytes()
            for p in (old / "runs").rglob("model.safetensors")}
    assert len(kept) == 8
    result = _run(old, **FIXTURE_OPTIONS, resume=True)
    assert result.exit_code == 0 and result.run.ran == 3
    moved = {p.relative_to(p.parents[3]): p.read_bytes()
             for p in old.glob("jobs/*/out/runs/*/seed*/*/model.safetensors")}
    assert len(moved) == 12 and all(moved[k] == v for k, v in kept.items())
    assert not (old / "runs").exists() or not any((old / "runs").iterdir())
    for name in TABLES:
        assert _close(_rows(old, name), _rows(FIXTURE, name)), name
    again = _run(old, **FIXTURE_OPTIONS, resume=True)
    assert again.run.ran == 0 and _same(again.summary, result.summary)


def test_a_study_of_modeconn_0_1_with_lmc_stages_goes_on_from_its_runs(tmp_path):
    """Its lmc jobs held a grid each (one per model and shift); run again, each configuration's
    job takes that configuration's runs over (not trained again) and measures them as 0.1 did."""
    from modeconn.studies import load_study, run_study

    old = tmp_path / "study"
    shutil.copytree(FIXTURE.parent / "study-0.1", old)
    before = {r["id"]: r for p in old.glob("jobs/*/out/status.json")
              for r in artefacts.LMC_STATUS.read(p.parent)["summary"]}
    kept = {p.relative_to(p.parents[3]): p.stat().st_mtime_ns
            for p in old.glob("jobs/*/out/runs/*/seed*/*/model.safetensors")}
    assert len(before) == 4 and len(kept) == 16
    run = run_study(load_study(old), old, workers=2, quiet=True)
    assert run.complete and run.ran == 4 and len(run.study.jobs) == 4
    moved = {p.relative_to(p.parents[3]): p.stat().st_mtime_ns
             for spec in run.study.jobs
             for p in (old / "jobs" / spec.id).glob("out/runs/*/seed*/*/model.safetensors")}
    assert moved == kept  # every model where its configuration's job reads it, untouched
    after = {r["id"]: r for spec in run.study.jobs
             for r in artefacts.LMC_STATUS.read(old / "jobs" / spec.id / "out")["summary"]}
    assert after.keys() == before.keys()
    for cfg_id, row in after.items():
        assert _close([row], [before[cfg_id]]), cfg_id
    again = run_study(load_study(old), old, workers=2, quiet=True)
    assert again.ran == 0 and again.reused == 4

"""The LMC-under-shift study (`run_study`, `modeconn lmc`): outputs, consistency between its
tables, reproducibility by seed, and diverged configurations."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from modeconn import jobs
from modeconn.data import DataSpec, prepare_subsets
from modeconn.errors import UsageError
from modeconn.experiments.lmc import LMCStudy, run_study
from modeconn.io import read_csv
from modeconn.options import ConfigError
from modeconn.paths.barrier import barrier
from modeconn.train import TrainConfig

CPU = torch.device("cpu")
OK_LR, BAD_LR = 0.05, 1e5
TABLES = ("summary.csv", "paths.csv", "barriers.csv", "ensembles.csv", "similarity.csv",
          "learning_curves.csv", "paths_mean.csv")


def _study(**kw) -> LMCStudy:
    base = dict(dataset="digits", model="mlp", model_options={"width": 16, "depth": 1},
                shift="iid:50,50", inits=("same",), batch_orders=("same",), batch_sizes=(32,),
                lrs=(OK_LR,), seeds=(0, 1), points=5, ensemble_size=2,
                train=TrainConfig(epochs=2, batch_size=32, lr=OK_LR))
    base.update(kw)
    return LMCStudy(**base)


@pytest.fixture(scope="module")
def study_dirs(tmp_path_factory):
    """The tiny study (plus a diverging lr=1e5 configuration) run twice into two directories."""
    root = tmp_path_factory.mktemp("lmc")
    summaries = []
    for name in ("first", "second"):
        summaries.append(run_study(_study(lrs=(OK_LR, BAD_LR)), root / name, CPU, quiet=True))
    return root / "first", root / "second", summaries


def _ok(rows):
    return [r for r in rows if float(r["lr"]) == OK_LR]


def test_study_writes_tables_and_figures(study_dirs):
    out, _, (summary, _) = study_dirs
    for name in TABLES + ("study.json", "env.json"):
        assert (out / name).is_file(), name
    figs = out / "figures"
    for name in ("barriers.png", "delta.png", "interpolation_mlp_init-same.png",
                 "learning_curves_mlp_init-same.png"):
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert len(list(figs.glob("polar_*.png"))) == 1  # one for the configuration that trained
    study = json.loads((out / "study.json").read_text())
    assert study["seeds"] == [0, 1] and study["model_config"]["widths"] == [16]
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
    from modeconn.experiments.lmc import summary_table

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
                for p in (out / "runs").glob("*lr100000/seed*/*/status.json")]
    assert statuses and set(statuses) == {"diverged"}
    # The good configuration next to it is unaffected.
    (good,) = [r for r in summary if r["lr"] == OK_LR]
    assert good["seeds_ok"] == 2 and good["train_loss_barrier"] == good["train_loss_barrier"]


def test_study_refuses_a_non_empty_output_directory(study_dirs):
    out, _, _ = study_dirs
    with pytest.raises(UsageError, match="--resume"):
        run_study(_study(), out, CPU, quiet=True)


@pytest.mark.parametrize("kw", [
    {"seeds": ()}, {"seeds": (1, 1)}, {"lrs": (0.0,)}, {"batch_sizes": (0,)},
    {"ensemble_size": 1}, {"shift": "none"}, {"points": 1},
])
def test_impossible_studies_raise_usage_error(kw, tmp_path):
    with pytest.raises(UsageError):
        run_study(_study(**kw), tmp_path / "out", CPU, quiet=True)
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


def _fake_summary(study):
    return [{"model": study.name, "shift": study.shift, "init": i, "batch_order": "same",
             "batch_size": 16, "lr": 0.1, "noise_scale_g": 2.5, "seeds_ok": 3, "diverged": 0,
             **{f"{k}{s}": v for k in ("train_loss_barrier", "test_loss_barrier",
                                       "test_delta_acc", "lmc_ens_gain_acc", "ind_ens_gain_acc")
                for s, v in (("", 0.0123), ("_std", 0.001))}}
            for i in study.inits]


@pytest.fixture
def fake_study(monkeypatch):
    """run_study replaced (it is tested above): records the study it is given."""
    seen = {}

    def fake_run_study(study, out, device, resume, quiet):
        seen.update(study=study, out=Path(out), resume=resume, quiet=quiet)
        return _fake_summary(study)

    import modeconn.experiments.lmc as lmc
    monkeypatch.setattr(lmc, "run_study", fake_run_study)
    return seen


def test_lmc_job_wires_its_options_into_the_study(tmp_path, fake_study):
    out = tmp_path / "lmc"
    result = jobs.run("lmc", width=16, depth=1, init=["same", "different"], batch_order=["same"],
                      batch_sizes=[16, 64], lrs=[0.1], seeds=[3, 4, 5], points=7,
                      ensemble_size=2, shift="label-skew:0-4=80,5-9=20", quiet=True,
                      device="cpu", epochs=4, out=out)
    st = fake_study["study"]
    assert st.inits == ("same", "different") and st.batch_orders == ("same",)
    assert st.batch_sizes == (16, 64) and st.lrs == (0.1,) and st.seeds == (3, 4, 5)
    assert st.points == 7 and st.ensemble_size == 2 and st.shift == "label-skew:0-4=80,5-9=20"
    assert st.model_options == {"depth": 1, "width": 16, "norm": None, "bias": None,
                                "dropout": None}
    assert st.train.epochs == 4 and st.train.batch_size == 16 and st.train.lr == 0.1
    assert fake_study["out"] == out and fake_study["quiet"] and not fake_study["resume"]
    assert result.out == out and result.summary == _fake_summary(st) and result.exit_code == 0


@pytest.mark.parametrize("given, sizes, lrs", [({}, (32,), (0.05,)),
                                               ({"batch_size": 64, "lr": 0.03}, (64,), (0.03,))])
def test_lmc_one_value_options_are_a_one_value_grid(tmp_path, fake_study, given, sizes, lrs):
    jobs.run("lmc", **given, device="cpu", out=tmp_path / "lmc")
    st = fake_study["study"]
    assert st.batch_sizes == sizes and st.lrs == lrs


@pytest.mark.parametrize("given, field", [({"batch_size": 16, "batch_sizes": [32]}, "batch_size"),
                                          ({"lr": 0.1, "lrs": [0.2]}, "lr"),
                                          ({"seeds": [0, 0]}, "seeds")])
def test_lmc_config_refuses_by_field(given, field):
    with pytest.raises(ConfigError) as e:
        jobs.get("lmc").config.from_dict(given)
    assert e.value.name == field and str(e.value).startswith(f"'{field}' of lmc ")


def test_lmc_command_prints_the_summary_table(cli, tmp_path, fake_study):
    out = tmp_path / "lmc"
    rc, stdout, err = cli("lmc", "--width", "16", "--depth", "1", "--init", "same,different",
                          "--batch-order", "same", "--batch-sizes", "16,64", "--lrs", "0.1",
                          "--seeds", "3,4,5", "--quiet", "--device", "cpu", "--out", out)
    assert rc == 0, err
    assert fake_study["study"].batch_sizes == (16, 64)
    lines = stdout.splitlines()
    assert "train barrier" in lines[0]
    body = [ln for ln in lines[2:] if ln.startswith("mlp")]
    assert len(body) == 2
    assert "0.012±0.001" in body[0] and "3/3" in body[0]
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


def test_study_resumed_after_a_kill_at_a_final_state_write_matches_the_uninterrupted_one(
        tmp_path, monkeypatch):
    """Killed the moment the first pair's last resume state is written, the resumed study keeps
    that pair's trained models (not the initialisation) and reports the same summary."""
    import modeconn.train.runs as train

    study = _study(batch_orders=("same", "independent"))
    full = run_study(study, tmp_path / "A", CPU, quiet=True)
    real, calls = train._save_state, []

    def kill_after_first_final_state(path, model, opt, epoch, *args, **kw):
        real(path, model, opt, epoch, *args, **kw)
        calls.append(epoch)
        if epoch == study.train.epochs and calls.count(epoch) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "_save_state", kill_after_first_final_state)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, tmp_path / "B", CPU, quiet=True)
    monkeypatch.setattr(train, "_save_state", real)
    assert _same(run_study(study, tmp_path / "B", CPU, resume=True, quiet=True), full)
    a, b = _models(tmp_path / "A"), _models(tmp_path / "B")
    assert len(a) == 8 and list(a) == list(b)
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}/{k}"
    for name in ("summary.csv", "paths.csv", "barriers.csv", "ensembles.csv"):
        assert (tmp_path / "A" / name).read_bytes() == (tmp_path / "B" / name).read_bytes(), name


def test_resuming_a_complete_study_changes_no_file(tmp_path):
    study = _study()
    summary = run_study(study, tmp_path / "s", CPU, quiet=True)
    before = _files(tmp_path / "s")
    lines: list[str] = []
    assert _same(run_study(study, tmp_path / "s", CPU, resume=True, quiet=True,
                           log=lines.append), summary)
    assert _files(tmp_path / "s") == before  # same bytes, not even rewritten
    assert lines and "complete" in lines[0]


def test_resuming_a_study_with_other_settings_is_refused(tmp_path):
    run_study(_study(), tmp_path / "s", CPU, quiet=True)
    before = _files(tmp_path / "s")
    with pytest.raises(UsageError, match="different study settings"):
        run_study(_study(points=7), tmp_path / "s", CPU, resume=True, quiet=True)
    assert _files(tmp_path / "s") == before


def test_study_reports_progress_per_configuration(tmp_path):
    lines: list[str] = []
    run_study(_study(batch_orders=("same", "independent")), tmp_path / "s", CPU, quiet=True,
              log=lines.append)
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] ") and "order same" in lines[0] and "2/2 seeds" in lines[0]
    assert lines[1].startswith("[2/2] ") and "order independent" in lines[1]

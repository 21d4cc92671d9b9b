"""Bad input is refused with one line and exit status 2, and nothing is written (issue 10, items 5
and 6): output paths of the wrong kind, divergence, NaN/inf/negative/zero numbers, checkpoints of
different datasets, damaged metadata, options a command ignored."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST_TRAIN
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modeconn.align import auto_spec, weight_matching
from modeconn.checkpoint import load_checkpoint, save_model
from modeconn.data import DataSpec, parse_shift
from modeconn.errors import UsageError
from modeconn.models import build_model, model_config, rebuild
from modeconn.paths import ParamPath, check_tolerance
from modeconn.paths.curves import save_curve
from modeconn.paths.landscape import hessian_trace
from modeconn.train import TrainConfig, init_model
from modeconn.train.schedules import parse_schedule

DIGITS = DataSpec().to_dict()
OTHER = DataSpec(dataset="synthetic:shape=1x8x8,classes=10").to_dict()


def _save(path, cfg, seed, data):
    model = init_model(cfg, seed)
    save_model(path, model, cfg, data=data, seed=seed)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Untrained checkpoints (no training needed to be refused): two digits MLPs, one of the
    same architecture on another dataset, one without input normalisation, BatchNorm MLPs, a
    curve, an old checkpoint without data metadata, and a run directory."""
    root = tmp_path_factory.mktemp("ckpts")
    cfg = model_config("mlp", (1, 8, 8), 10, width=32)
    bn = model_config("mlp", (1, 8, 8), 10, width=32, norm="bn")
    c = {"a": _save(root / "a.safetensors", cfg, 0, DIGITS),
         "b": _save(root / "b.safetensors", cfg, 1, DIGITS),
         "c": _save(root / "c.safetensors", cfg, 2, DIGITS),
         "other": _save(root / "other.safetensors", cfg, 3, OTHER),
         "raw": _save(root / "raw.safetensors", cfg, 4, {**DIGITS, "norm": "none"}),
         "bn_a": _save(root / "bn_a.safetensors", bn, 0, DIGITS),
         "bn_b": _save(root / "bn_b.safetensors", bn, 1, DIGITS)}
    ends = [load_file(c[k]) for k in ("a", "b")]
    mid = {k: (ends[0][k] + ends[1][k]) / 2 for k in ends[0]}
    c["curve"] = save_curve(root / "curve.safetensors", ParamPath([ends[0], mid, ends[1]]), cfg,
                            data=DIGITS)
    with safe_open(str(c["a"]), framework="pt") as f:
        meta = f.metadata()
    c["old"] = root / "old.safetensors"
    save_file(ends[0], str(c["old"]), metadata={k: v for k, v in meta.items() if k != "data"})
    for name, key, value in (("list_arch", "architecture", "[1, 2]"),
                             ("str_arch", "architecture", '"mlp"'),
                             ("partial_arch", "architecture",
                              '{"arch": "mlp", "input_shape": [1, 8, 8], "num_classes": 10}'),
                             ("list_data", "data", "[1]")):
        c[name] = root / f"{name}.safetensors"
        save_file(ends[0], str(c[name]), metadata={**meta, key: value})
    run = root / "run"
    (run / "a").mkdir(parents=True)
    (run / "a" / "model.safetensors").write_bytes(c["a"].read_bytes())
    c["run"] = run
    return c


def _snapshot(path):
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.is_dir())
            for p in sorted(path.rglob("*"))}


def _refused(rc, out, err, phrase):
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modeconn: error: "), err
    assert "Traceback" not in err + out
    assert phrase in lines[0], lines[0]


# (argv with {a}, {b}, {c}, {other}, ... checkpoint names, {file}/{dir} existing paths,
#  {out} a fresh path; the key phrase of the message)
BAD = {
    # item 5: tracebacks before
    "train --out file": (["train", *FAST_TRAIN, "--epochs", "1", "--out", "{file}"],
                         "is an existing file, not a directory"),
    "interpolate --out file": (["interpolate", "{a}", "{b}", "--out", "{file}"],
                               "is an existing file, not a directory"),
    "ensemble --out file": (["ensemble", "{a}", "{b}", "--out", "{file}"],
                            "is an existing file, not a directory"),
    "curve-point --out dir": (["curve-point", "{curve}", "--device", "cpu", "--out", "{dir}",
                               "--overwrite"], "is a directory; name the file to write"),
    "sharpness --out dir": (["sharpness", "{a}", "--device", "cpu", "--out", "{dir}"],
                            "is a directory; name the file to write"),
    "curve diverges": (["curve", "{a}", "{b}", "--lr", "1e6", "--epochs", "1", "--quiet",
                        "--device", "cpu", "--out", "{out}"], "training diverged"),
    "fge diverges": (["fge", "{a}", "--lr", "1e6", "--cycles", "1", "--cycle-epochs", "1",
                      "--quiet", "--device", "cpu", "--out", "{out}"], "training diverged"),
    "sharpness --max-batches 0": (["sharpness", "{a}", "--device", "cpu", "--max-batches", "0"],
                                  "--max-batches must be an integer ≥ 1 (or none), got 0"),
    "sharpness --max-batches -1": (["sharpness", "{a}", "--device", "cpu", "--max-batches", "-1"],
                                   "--max-batches must be an integer ≥ 1 (or none), got -1"),
    "align am --batch-size 0": (["align", "{a}", "{b}", "--method", "am", "--batch-size", "0",
                                 "--device", "cpu", "--out", "{out}"],
                                "--batch-size must be an integer ≥ 1, got 0"),
    "train --split-seed -1": (["train", *FAST_TRAIN, "--epochs", "1", "--shift", "iid:50,50",
                               "--split-seed", "-1", "--out", "{out}"], "must be an integer ≥ 0, got -1"),
    "architecture is a list": (["interpolate", "{list_arch}", "{a}", "--out", "{out}"],
                               "metadata 'architecture' is list JSON, not an object"),
    "architecture is a string": (["info", "{str_arch}"],
                                 "metadata 'architecture' is str JSON, not an object"),
    # item 6: silently wrong before
    **{f"{cmd} of two datasets": (argv, "on synthetic:shape=1x8x8,classes=10")
       for cmd, argv in {
           "interpolate": ["interpolate", "{a}", "{other}", "--out", "{out}"],
           "ensemble": ["ensemble", "{a}", "{other}", "--out", "{out}"],
           "merge-many": ["merge-many", "{a}", "{b}", "{other}", "--out", "{out}"],
           "align": ["align", "{a}", "{other}", "--out", "{out}"],
           "curve": ["curve", "{a}", "{other}", "--epochs", "1", "--out", "{out}"],
           "landscape": ["landscape", "{a}", "{b}", "{other}", "--out", "{out}"],
       }.items()},
    "label-skew nan share": (["train", *FAST_TRAIN, "--shift", "label-skew:0-4=nan,5-9=20",
                              "--out", "{out}"], "shares of group 0-4 must be between 0 and 100"),
    "--subsets 0": (["train", *FAST_TRAIN, "--shift", "dirichlet:0.5", "--subsets", "0",
                     "--out", "{out}"], "--subsets must be an integer ≥ 2 (or none), got 0"),
    "--warmup inf": (["train", *FAST_TRAIN, "--warmup", "inf", "--out", "{out}"], "--warmup"),
    "--warmup nan": (["train", *FAST_TRAIN, "--warmup", "nan", "--out", "{out}"], "--warmup"),
    "--weight-decay nan": (["train", *FAST_TRAIN, "--weight-decay", "nan", "--out", "{out}"],
                           "--weight-decay must be a finite number ≥ 0"),
    "step gamma nan": (["train", *FAST_TRAIN, "--epochs", "2", "--schedule", "step:1@nan",
                        "--out", "{out}"], "bad schedule 'step:1@nan'"),
    "BatchNorm --batch-size 1": (["train", *FAST_TRAIN, "--norm", "bn", "--batch-size", "1",
                                  "--out", "{out}"], "BatchNorm cannot train on one sample"),
    "--tolerance nan": (["interpolate", "{a}", "{b}", "--tolerance", "nan", "--out", "{out}"],
                        "--tolerance must be a finite number ≥ 0"),
    "--tolerance negative": (["interpolate", "{a}", "{b}", "--tolerance", "-1", "--out", "{out}"],
                             "--tolerance must be a finite number ≥ 0"),
    "fge --epochs": (["fge", "{a}", "--epochs", "3", "--out", "{out}"],
                     "unrecognized arguments: --epochs"),
    "sharpness --out existing file": (["sharpness", "{a}", "--out", "{file}"],
                                      "already exists; choose another or allow overwriting it"),
    "directory as checkpoint": (["info", "{run}"], "is a directory, not a file; pass one of"),
    # the same families, found by probing
    "train --out under a file": (["train", *FAST_TRAIN, "--out", "{file}/run"],
                                 "is a file, not a directory"),
    "lmc --out file": (["lmc", *FAST_TRAIN, "--out", "{file}"], "is an existing file"),
    "demo --out file": (["demo", "--quick", "--out", "{file}"], "is an existing file"),
    "demo --jobs 0": (["demo", "--quick", "--jobs", "0", "--out", "{out}"],
                      "--jobs must be an integer ≥ 1 (or none), got 0"),
    "run missing study file": (["run", "{out}/nope.toml"], "study file"),
    "run a file that is not TOML": (["run", "{file}", "--out", "{out}"], "not valid TOML"),
    "run a directory that is not a study": (["run", "{dir}"], "is a directory; name a study"),
    "run --jobs 0": (["run", "{file}", "--jobs", "0"],
                     "--jobs must be an integer ≥ 1 (or none), got 0"),
    "run --executor": (["run", "{file}", "--executor", "pbs"], "--executor must be one of"),
    "run --mem nan": (["run", "{file}", "--mem", "nan"], "--mem must be"),
    "results of no study": (["results", "{dir}"], "is not a study directory (no study.toml)"),
    "--subsets against the shift": (["train", *FAST_TRAIN, "--shift", "iid:50,50", "--subsets",
                                     "3", "--out", "{out}"], "but shift 'iid:50,50' makes 2"),
    "--subsets without a shift": (["train", *FAST_TRAIN, "--subsets", "3", "--out", "{out}"],
                                  "need a shift"),
    "iid nan share": (["train", *FAST_TRAIN, "--shift", "iid:nan,50", "--out", "{out}"],
                      "shares must be finite"),
    "domain noise nan": (["train", *FAST_TRAIN, "--shift", "domain:none|noise=nan",
                          "--out", "{out}"], "value must be a finite number"),
    "domain rotate inf": (["train", *FAST_TRAIN, "--shift", "domain:none|rotate=inf",
                           "--out", "{out}"], "value must be a finite number"),
    "step milestone 0": (["train", *FAST_TRAIN, "--schedule", "step:0", "--out", "{out}"],
                         "bad schedule"),
    "step milestone past the end": (["train", *FAST_TRAIN, "--epochs", "2", "--schedule",
                                     "step:5", "--out", "{out}"], "never take effect"),
    "cyclic low nan": (["train", *FAST_TRAIN, "--schedule", "cyclic:2@nan", "--out", "{out}"],
                       "bad schedule"),
    "--weight-decay inf": (["train", *FAST_TRAIN, "--weight-decay", "inf", "--out", "{out}"],
                           "--weight-decay"),
    "MLP --width nan": (["train", "--quiet", "--width", "nan", "--out", "{out}"],
                        "--width must be a finite number > 0 (or none), got nan"),
    "convnet --width inf": (["train", "--quiet", "--model", "convnet", "--width", "inf",
                             "--out", "{out}"],
                            "--width must be a finite number > 0 (or none), got inf"),
    "lmc --lrs nan": (["lmc", *FAST_TRAIN, "--lrs", "nan", "--out", "{out}"],
                      "--lrs must be a non-empty list of finite numbers > 0 (or none), got nan"),
    "lmc empty --batch-sizes": (["lmc", *FAST_TRAIN, "--batch-sizes", "", "--out", "{out}"],
                                "--batch-sizes must be a non-empty list of integers ≥ 1 (or none), "
                                "got ''"),
    "lmc --batch-size and --batch-sizes": (["lmc", *FAST_TRAIN, "--batch-size", "16",
                                            "--batch-sizes", "32", "--out", "{out}"],
                                           "not both"),
    "lmc --seeds -1": (["lmc", *FAST_TRAIN, "--seeds", "-1", "--out", "{out}"],
                       "--seeds must be a non-empty list of integers ≥ 0, got -1"),
    "lmc --subsets 3": (["lmc", *FAST_TRAIN, "--shift", "dirichlet:1", "--subsets", "3",
                         "--out", "{out}"], "the LMC study compares pairs"),
    "lmc --tolerance -1": (["lmc", *FAST_TRAIN, "--tolerance", "-1", "--out", "{out}"],
                           "tolerance must be"),
    "lmc BatchNorm --batch-sizes 1": (["lmc", *FAST_TRAIN, "--norm", "bn", "--batch-sizes", "1",
                                       "--out", "{out}"], "BatchNorm cannot train"),
    "curve --tolerance nan": (["curve", "{a}", "{b}", "--tolerance", "nan", "--out", "{out}"],
                              "--tolerance"),
    "fge --schedule": (["fge", "{a}", "--schedule", "cosine", "--out", "{out}"],
                       "unrecognized arguments: --schedule"),
    "align --seed -1": (["align", "{a}", "{b}", "--seed", "-1", "--device", "cpu",
                         "--out", "{out}"], "--seed must be an integer ≥ 0, got -1"),
    "align ste --lr nan": (["align", "{a}", "{b}", "--method", "ste", "--lr", "nan",
                            "--device", "cpu", "--out", "{out}"],
                           "--lr must be a finite number > 0, got nan"),
    "merge-many ste-mm --batch-size 0": (["merge-many", "{a}", "{b}", "--method", "ste-mm",
                                          "--batch-size", "0", "--device", "cpu",
                                          "--out", "{out}"],
                                         "--batch-size must be an integer ≥ 1, got 0"),
    "landscape --range inf": (["landscape", "{a}", "{b}", "{c}", "--grid", "3", "--range=0,inf",
                               "--device", "cpu", "--out", "{out}"],
                              "--range must be a list of finite numbers, got 0,inf"),
    "sharpness --batch-size 0": (["sharpness", "{a}", "--batch-size", "0"],
                                 "--batch-size must be an integer ≥ 1, got 0"),
    "architecture incomplete": (["ensemble", "{partial_arch}", "{partial_arch}", "--out", "{out}"],
                                "metadata architecture is incomplete or damaged"),
    "data metadata is a list": (["info", "{list_data}"], "metadata 'data' is list JSON"),
    "normalised and raw inputs": (["interpolate", "{a}", "{raw}", "--out", "{out}"],
                                  "normalised inputs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, ckpts, case):
    argv, phrase = BAD[case]
    work = tmp_path / "work"
    (work / "dir").mkdir(parents=True)
    (work / "file").write_text("mine")
    names = {k: str(v) for k, v in ckpts.items()}
    names.update(file=str(work / "file"), dir=str(work / "dir"), out=str(work / "out"))
    before = _snapshot(work)
    _refused(*cli(*[a.format(**names) for a in argv]), phrase)
    assert _snapshot(work) == before  # no --out, no partial directory, no temporary files
    assert (work / "file").read_text() == "mine"


def test_two_datasets_name_both(cli, tmp_path, ckpts):
    rc, out, err = cli("interpolate", ckpts["a"], ckpts["other"], "--out", tmp_path / "p")
    _refused(rc, out, err, "--allow-dataset-mismatch")
    assert "was trained on digits" in err and "synthetic" in err


def test_allow_dataset_mismatch_and_old_checkpoints(cli, tmp_path, ckpts):
    rc, _, err = cli("interpolate", ckpts["a"], ckpts["other"], "--points", "3", "--device", "cpu",
                     "--allow-dataset-mismatch", "--out", tmp_path / "allowed")
    assert rc == 0, err
    # A checkpoint written before the data metadata existed still loads beside any other.
    rc, _, err = cli("interpolate", ckpts["old"], ckpts["other"], "--points", "3", "--device",
                     "cpu", "--out", tmp_path / "old")
    assert rc == 0, err


def test_curve_fits_with_batchnorm_and_a_last_batch_of_one(cli, tmp_path, ckpts):
    """1437 digits training images in batches of 359: the last batch holds one sample, which
    BatchNorm cannot train on; it is skipped (a traceback before)."""
    rc, _, err = cli("curve", ckpts["bn_a"], ckpts["bn_b"], "--batch-size", "359", "--epochs", "1",
                     "--points", "3", "--quiet", "--device", "cpu", "--out", tmp_path / "c")
    assert rc == 0, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging dir gone


def test_sharpness_overwrite(cli, tmp_path, ckpts):
    out = tmp_path / "s.json"
    out.write_text("old")
    rc, _, err = cli("sharpness", ckpts["a"], "--probes", "1", "--max-batches", "1",
                     "--device", "cpu", "--out", out, "--overwrite")
    assert rc == 0, err
    assert "trace" in json.loads(out.read_text())


def test_lmc_single_value_options_take_effect(cli, tmp_path):
    """--batch-size, --lr, --subsets and --split-seed reach every run (ignored before)."""
    out = tmp_path / "study"
    rc, _, err = cli("lmc", "--width", "16", "--depth", "1", "--epochs", "1", "--quiet",
                     "--device", "cpu", "--shift", "dirichlet:1", "--subsets", "2",
                     "--split-seed", "5", "--seeds", "0", "--batch-size", "64", "--lr", "0.03",
                     "--batch-order", "same", "--points", "3", "--ensemble-size", "2",
                     "--out", out)
    assert rc == 0, err
    (job,) = out.glob("jobs/*/out")
    study = json.loads((job / "config.json").read_text())["config"]
    assert study["batch_sizes"] == [64] and study["lrs"] == [0.03]
    assert study["subsets"] == 2 and study["split_seed"] == 5
    (run,) = (job / "runs").iterdir()
    config = json.loads((run / "seed0" / "config.json").read_text())
    assert config["train"]["batch_size"] == 64 and config["train"]["lr"] == 0.03
    assert config["data"]["split_seed"] == 5 and config["data"]["num_subsets"] == 2


# ---------------------------------------------------------------- the library refuses too

def test_weight_matching_refuses_a_tensor_as_spec(ckpts):
    a, b = (load_checkpoint(ckpts[k]).tensors for k in ("a", "b"))
    with pytest.raises(TypeError, match="spec must be a PermutationSpec.*example_input="):
        weight_matching(a, b, torch.zeros(2, 1, 8, 8))
    spec = auto_spec(rebuild(load_checkpoint(ckpts["a"])), torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match="parameter dicts"):
        weight_matching(torch.zeros(3), b, spec)


@pytest.mark.parametrize("kw,match", [
    ({"batch_size": 0}, "needs batch_size ≥ 1, got 0"),
    ({"max_batches": 0}, r"needs max_batches ≥ 1 \(or None for the whole split\), got 0"),
    ({"max_batches": -1}, "needs max_batches ≥ 1")])
def test_hessian_trace_refuses(ckpts, kw, match):
    ckpt = load_checkpoint(ckpts["a"])
    with pytest.raises(UsageError, match=match):
        hessian_trace(rebuild(ckpt), ckpt.tensors, torch.zeros(4, 1, 8, 8),
                      torch.zeros(4, dtype=torch.long), **kw)


@pytest.mark.parametrize("text", ["iid:nan,50", "iid:50,inf", "label-skew:0-4=nan,5-9=20",
                                  "domain:none|noise=nan", "domain:none|blur=inf"])
def test_non_finite_shift_numbers(text):
    with pytest.raises(UsageError, match="finite|between 0 and 100"):
        parse_shift(text, 10)


@pytest.mark.parametrize("text,warmup", [("constant", float("inf")), ("constant", float("nan")),
                                         ("step:1@nan", 0.0), ("step:1@0", 0.0),
                                         ("step:0", 0.0), ("cyclic:2@nan", 0.0),
                                         ("cyclic:2@0", 0.0)])
def test_bad_schedules(text, warmup):
    with pytest.raises(UsageError):
        parse_schedule(text, warmup)


@pytest.mark.parametrize("kw", [{"weight_decay": float("nan")}, {"weight_decay": float("inf")},
                                {"warmup": float("nan")}, {"epochs": 2, "schedule": "step:2"}])
def test_bad_train_configs(kw):
    with pytest.raises(UsageError):
        TrainConfig(**kw)


@pytest.mark.parametrize("tol", [float("nan"), -0.1, float("inf")])
def test_bad_tolerance(tol):
    with pytest.raises(UsageError, match="tolerance must be a loss barrier"):
        check_tolerance(tol)


def test_resnet_of_any_6n_plus_2_depth():
    cfg = model_config("resnet26", (1, 8, 8), 10, width=0.25)
    assert cfg["depth"] == 26
    assert build_model(cfg)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(UsageError, match="6n"):
        model_config("resnet24", (1, 8, 8), 10)

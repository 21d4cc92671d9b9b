"""Non-finite weights are refused and every JSON file is strict (issue 22, item 4).

A checkpoint holding one NaN or inf weight went through interpolate, ensemble, merge and
sharpness with exit 0 (barrier.json then held a bare NaN, which is not JSON), inf passed as
"connected", and align died with a traceback. Every command that reads checkpoints now refuses
them in one line naming the file and the tensor; every JSON file the project writes parses with
a strict parser, a number that is not finite written as null (with the reason, for barriers)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import FAST_TRAIN

from modeconn import artefacts, jobs
from modeconn.checkpoint import load_checkpoint, non_finite, save_model
from modeconn.data import DataSpec
from modeconn.errors import UsageError
from modeconn.io import json_text, read_json, write_json
from modeconn.models import model_config
from modeconn.options import config_fields
from modeconn.paths import ParamPath
from modeconn.paths.curves import save_curve
from modeconn.train import init_model

DIGITS = DataSpec().to_dict()
CFG = model_config("mlp", (1, 8, 8), 10, width=32)
POKED = "3.weight"  # the second hidden layer's weights


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def strict(text: str):
    """JSON as a strict parser reads it: NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=_refuse_constant)


def _params(seed: int) -> dict[str, torch.Tensor]:
    return dict(init_model(CFG, seed).state_dict())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Three finite digits MLPs, one with a NaN and one with an inf weight, the same for curves,
    and a finite model whose last layer is so large that its loss overflows."""
    root = tmp_path_factory.mktemp("ckpts")
    c = {}
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        c[name] = save_model(root / f"{name}.safetensors", init_model(CFG, seed), CFG, data=DIGITS,
                             seed=seed)
    ends = [_params(0), _params(1)]
    mid = {k: (ends[0][k] + ends[1][k]) / 2 for k in ends[0]}
    c["curve"] = save_curve(root / "curve.safetensors", ParamPath([ends[0], mid, ends[1]]), CFG,
                            data=DIGITS)
    for name, value in (("nan", math.nan), ("inf", math.inf)):
        model = init_model(CFG, 3)
        with torch.no_grad():
            model.state_dict()[POKED].view(-1)[5] = value
        c[name] = save_model(root / f"{name}.safetensors", model, CFG, data=DIGITS, seed=3)
        bent = {k: v.clone() for k, v in mid.items()}
        bent[POKED].view(-1)[5] = value
        c[f"{name}_curve"] = save_curve(root / f"{name}_curve.safetensors",
                                        ParamPath([ends[0], bent, ends[1]]), CFG, data=DIGITS)
    huge = init_model(CFG, 4)
    with torch.no_grad():
        huge.state_dict()["7.weight"].fill_(3e38)  # finite, but the logits overflow
    c["huge"] = save_model(root / "huge.safetensors", huge, CFG, data=DIGITS, seed=4)
    return c


# Every command that reads a checkpoint, the bad one ({bad}: a model, {bad_curve}: a curve) in
# the place a user would pass it.
READERS = {
    "interpolate": ["interpolate", "{a}", "{bad}", "--points", "3"],
    "ensemble": ["ensemble", "{a}", "{b}", "{bad}"],
    "merge": ["merge", "{bad}", "{b}"],
    "merge-many": ["merge-many", "{a}", "{b}", "{bad}"],
    "align": ["align", "{a}", "{bad}"],
    "sharpness": ["sharpness", "{bad}", "--probes", "1", "--max-batches", "1"],
    "curve": ["curve", "{a}", "{bad}", "--epochs", "1", "--quiet"],
    "fge": ["fge", "{bad}", "--cycles", "1", "--cycle-epochs", "1", "--quiet"],
    "landscape": ["landscape", "{a}", "{b}", "{bad}", "--grid", "3"],
    "landscape --curve": ["landscape", "--curve", "{bad_curve}", "--grid", "3"],
    "curve-ensemble": ["curve-ensemble", "{bad_curve}", "--k", "2"],
    "curve-point": ["curve-point", "{bad_curve}", "--t", "0.5"],
}
OUT = {"sharpness": "s.json", "curve-point": "p.safetensors"}  # jobs that write one file


def test_every_job_that_reads_checkpoints_is_covered():
    """A job with a checkpoint option (a, b, checkpoint(s), curve; models of landscape and
    merge-many) is in READERS, so a new one cannot skip the check unnoticed."""
    reading = {"a", "b", "checkpoint", "checkpoints", "curve"}
    readers = {n for n in jobs.names() if reading & {f.name for f in config_fields(jobs.get(n).config)}}
    readers |= {"landscape", "merge-many"}
    readers.discard("info")  # lists what is not finite instead (test below)
    assert readers == {argv[0] for argv in READERS.values()}


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("case", list(READERS))
def test_non_finite_checkpoint_is_refused_in_one_line(cli, tmp_path, ckpts, case, value):
    argv = READERS[case]
    job = argv[0]
    bad = ckpts[f"{value}_curve" if "{bad_curve}" in argv else value]
    names = {k: str(v) for k, v in ckpts.items()} | {"bad": str(bad), "bad_curve": str(bad)}
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out" / OUT[job] if job in OUT else work / "out"
    rc, stdout, err = cli(*[a.format(**names) for a in argv], "--device", "cpu", "--out", out)
    assert rc == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stdout + err, err
    tensor = f"bend1/{POKED}" if "curve" in bad.name else POKED
    what = "1 NaN value" if value == "nan" else "1 inf value"
    assert lines[0] == (f"modeconn: error: {bad}: tensor {tensor!r} holds {what}: results "
                        "computed from it would be NaN or meaningless; retrain (e.g. with a "
                        "lower --lr) or pick an earlier checkpoint")
    assert list(work.iterdir()) == []  # nothing written


def test_a_diverged_runs_checkpoint_says_so(tmp_path, ckpts):
    """An epoch snapshot of a run whose status.json says diverged: the refusal points there."""
    run = tmp_path / "run" / "a"
    run.mkdir(parents=True)
    (run / "epoch_2.safetensors").write_bytes(ckpts["nan"].read_bytes())
    write_json(run / "status.json", {"member": "a", "status": "diverged", "epoch": 3})
    with pytest.raises(UsageError, match=r"\(its training diverged: see .*status.json\)"):
        load_checkpoint(run / "epoch_2.safetensors", kind="model")


def test_info_and_train_states_read_non_finite_files(cli, ckpts):
    """`info` shows what is not finite instead of refusing; a file read without a kind (and a
    train-state, which resuming replays as it was) is not checked."""
    rc, out, err = cli("info", ckpts["nan"], ckpts["inf_curve"])
    assert rc == 0, err
    assert f"not finite    {POKED}: 1 NaN value" in out
    assert f"not finite    bend1/{POKED}: 1 inf value" in out
    assert load_checkpoint(ckpts["nan"]).tensors[POKED].isnan().sum() == 1


def test_non_finite_names_every_bad_tensor_and_counts_values():
    t = {"w": torch.tensor([1.0, math.nan, math.inf, -math.inf, math.nan]),
         "ok": torch.ones(3), "steps": torch.tensor([7]), "h": torch.tensor([math.inf]).half()}
    assert non_finite(t) == {"w": "2 NaN values and 2 inf values", "h": "1 inf value"}


# ---------------------------------------------------------------- strict JSON

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_writer_is_strict(tmp_path, value):
    import numpy as np

    obj = {"x": value, "l": [1.0, value, np.float32(value)], "a": np.array([0.5, value]),
           "t": torch.tensor([value]), "ok": 2.5, "n": None, "s": "NaN"}
    write_json(tmp_path / "d.json", obj)
    assert strict((tmp_path / "d.json").read_text()) == {
        "x": None, "l": [1.0, None, None], "a": [0.5, None], "t": [None], "ok": 2.5, "n": None,
        "s": "NaN"}
    assert json_text({"y": 0.1, "p": np.float64(1 / 3)}) == json.dumps({"y": 0.1, "p": 1 / 3},
                                                                         indent=2) + "\n"
    assert math.isnan(read_json(tmp_path / "d.json", nulls_as_nan=True)["x"])


def _strict_files(root):
    files = sorted(root.rglob("*.json"))
    for f in files:
        try:
            strict(f.read_text())
        except ValueError as e:
            raise AssertionError(f"{f}: {e}") from None
    return [f.relative_to(root) for f in files]


def test_every_json_of_a_normal_run_is_strict(cli, tmp_path, ckpts):
    """The commands' JSON files parse strictly, including where a value is not finite: the
    spread of one seed (lmc's status.json) and a barrier over a loss that overflows."""
    a, b, c, curve = (str(ckpts[k]) for k in ("a", "b", "c", "curve"))
    o = tmp_path
    runs = [["train", *FAST_TRAIN, "--epochs", "1", "--shift", "iid:50,50", "--out", o / "train"],
            ["interpolate", a, b, "--points", "3", "--out", o / "interpolate"],
            ["ensemble", a, b, c, "--out", o / "ensemble"],
            ["merge", a, b, "--out", o / "merge"],
            ["merge-many", a, b, c, "--out", o / "merge-many"],
            ["align", a, b, "--out", o / "align"],
            ["sharpness", a, "--probes", "1", "--max-batches", "1", "--out", o / "s.json"],
            ["landscape", a, b, c, "--grid", "3", "--out", o / "landscape"],
            ["curve-ensemble", curve, "--k", "2", "--out", o / "curve-ensemble"],
            ["lmc", *FAST_TRAIN, "--depth", "1", "--width", "16", "--epochs", "1", "--seeds", "0",
             "--batch-order", "same", "--points", "3", "--ensemble-size", "2", "--out", o / "lmc"],
            ["interpolate", a, ckpts["huge"], "--points", "5", "--out", o / "overflow"]]
    for argv in runs:
        rc, out, err = cli(*argv, "--device", "cpu")
        assert rc == 0, (argv, err)
    written = _strict_files(tmp_path)
    for name in ("train/config.json", "train/a/status.json", "interpolate/barrier.json",
                 "ensemble/ensemble.json", "merge/merge.json", "merge-many/merge.json",
                 "align/barrier_after.json", "s.json", "landscape/plane.json",
                 "lmc/jobs/*/out/status.json", "lmc/jobs/*/result.json", "overflow/barrier.json"):
        assert any(f.match(name) for f in written), (name, written)
    (status,) = (tmp_path / "lmc").glob("jobs/*/out/status.json")
    lmc = strict(status.read_text())
    assert lmc["summary"][0]["test_loss_barrier_std"] is None  # one seed: no spread
    # The overflowing path: its loss barriers are null, with the reason; its error barriers are
    # numbers; the reader gives NaN back, as the command had it.
    bar = strict((tmp_path / "overflow" / "barrier.json").read_text())["test"]
    assert bar["loss"]["linear"]["barrier"] is None and bar["connected"] is False
    assert bar["undefined"].startswith("the loss is not finite at t = ")
    assert isinstance(bar["error"]["linear"]["barrier"], float)
    assert math.isnan(artefacts.BARRIER.read(tmp_path / "overflow")["test"]["loss"]["linear"]
                      ["barrier"])


def test_a_report_reads_null_barriers(cli, tmp_path, ckpts):
    """A job directory whose barrier.json holds nulls still makes a report."""
    out = tmp_path / "overflow"
    rc, _, err = cli("interpolate", ckpts["a"], ckpts["huge"], "--points", "3", "--device", "cpu",
                     "--out", out)
    assert rc == 0, err
    assert "null" in (out / "barrier.json").read_text()
    rc, _, err = cli("report", out)
    assert rc == 0, err
    assert (out / "report.html").is_file()

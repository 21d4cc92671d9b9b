"""The application layer: typed job configs, the registry, and the CLI generated from it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from conftest import FAST_TRAIN

from modeconn import artefacts, jobs
from modeconn.cli import build_parser, main
from modeconn.errors import UsageError
from modeconn.options import ConfigError, Options, config_fields, option

# Jobs whose fields have rules between them that the required fields alone do not meet.
VALID = {"landscape": {"models": ["m0.safetensors", "m1.safetensors", "m2.safetensors"]}}


def _required(job) -> dict:
    """Values for a job's required fields, as a study file would give them."""
    out = {}
    for info in config_fields(job.config):
        if info.required:
            out[info.name] = ["m0.safetensors", "m1.safetensors"] if info.many else "m.safetensors"
    return {**out, **VALID.get(job.name, {})}


@pytest.mark.parametrize("name", jobs.names())
def test_every_job_config_round_trips_through_config_json(name):
    job = jobs.get(name)
    config = job.config.from_dict(_required(job))
    again = job.config.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert set(config.to_dict(settings_only=True)) <= set(config.to_dict())


def test_every_registered_job_is_a_subcommand_with_every_field_as_an_argument():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name in jobs.names():
        job = jobs.get(name)
        p = sub.choices[name]
        dests = {a.dest for a in p._actions}
        assert {i.name for i in config_fields(job.config)} <= dests, name
        assert all(i.meta.help for i in config_fields(job.config)), name


@dataclass(frozen=True, kw_only=True)
class Toy(Options):
    job = "toy"
    points: int = option(25, "points", low=2)
    tol: float = option(0.01, "tolerance", low=0)
    splits: tuple[str, ...] = option(("train", "test"), "splits", choices=("train", "test"),
                                     nonempty=True)
    seeds: tuple[int, ...] = option((0,), "seeds", low=0)
    width: float | None = option(None, "width", low=0, low_open=True)
    quiet: bool = option(False, "quiet", setting=False)


def test_every_job_that_trains_from_a_dataset_takes_the_common_options():
    """Jobs that train networks from a dataset run long and show progress bars; whatever most of
    them take to say where they run and how they report (--device, --data-dir, --quiet), all
    take, so one command line's habits work on the others."""
    def runtime(name):  # options that are not settings of what the job computes
        return {i.name for i in config_fields(jobs.get(name).config) if not i.meta.setting}
    trainers = [n for n in jobs.names()
                if "dataset" in {i.name for i in config_fields(jobs.get(n).config)}]
    assert {"train", "lmc", "continual"} <= set(trainers)
    common = {o for o in set().union(*map(runtime, trainers))
              if 2 * sum(o in runtime(n) for n in trainers) > len(trainers)}
    assert {"device", "data_dir", "quiet"} <= common
    for name in trainers:
        assert common <= runtime(name), (name, common - runtime(name))


def test_every_job_that_trains_for_epochs_can_be_quiet():
    """A job with an `epochs` option runs the epoch driver, whose progress bar `--quiet`
    silences (STE and STE-MM in align, merge and merge-many included)."""
    trains = [n for n in jobs.names()
              if "epochs" in {i.name for i in config_fields(jobs.get(n).config)}]
    assert {"train", "align", "merge", "merge-many", "curve", "continual"} <= set(trains)
    loud = [n for n in trains
            if "quiet" not in {i.name for i in config_fields(jobs.get(n).config)}]
    assert not loud, loud


@pytest.mark.parametrize("kw,message", [
    ({"points": 1}, "'points' of toy must be an integer ≥ 2, got 1"),
    ({"points": "x"}, "'points' of toy must be an integer ≥ 2, got 'x'"),
    ({"points": True}, "'points' of toy must be an integer ≥ 2, got True"),
    ({"tol": float("nan")}, "'tol' of toy must be a finite number ≥ 0, got nan"),
    ({"tol": float("inf")}, "'tol' of toy must be a finite number ≥ 0, got inf"),
    ({"splits": []}, "'splits' of toy must be a non-empty list of values from train, test, got []"),
    ({"splits": ["val"]}, "'splits' of toy must be a non-empty list of values from train, test, "
                          "got ['val']"),
    ({"seeds": "0,-1"}, "'seeds' of toy must be a list of integers ≥ 0, got '0,-1'"),
    ({"width": 0}, "'width' of toy must be a finite number > 0 (or none), got 0"),
    ({"quiet": 1}, "'quiet' of toy must be true or false, got 1"),
])
def test_a_bad_value_is_refused_when_the_config_is_built_naming_field_and_job(kw, message):
    with pytest.raises(ConfigError) as e:
        Toy.from_dict(kw)
    assert str(e.value) == message


def test_config_from_a_dict_converts_typed_text_and_refuses_unknown_names():
    toy = Toy.from_dict({"points": "4", "seeds": "1,2", "width": "0.5"})
    assert (toy.points, toy.seeds, toy.width) == (4, (1, 2), 0.5)
    with pytest.raises(UsageError, match="toy has no option 'nope'; it takes points, quiet"):
        Toy.from_dict({"nope": 1})
    assert Toy().to_dict(settings_only=True) == {"points": 25, "tol": 0.01,
                                                 "splits": ["train", "test"], "seeds": [0],
                                                 "width": None}


def test_unknown_job_is_one_line():
    with pytest.raises(UsageError, match="unknown job 'nope'; choose from .*interpolate"):
        jobs.run("nope")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair") / "run"
    assert main(["train", "--shift", "iid:50,50", "--epochs", "1", *FAST_TRAIN,
                 "--out", str(out)]) == 0
    return out


def test_interpolate_from_python_does_what_the_command_does(pair, tmp_path, capsys):
    a, b = pair / "a" / "model.safetensors", pair / "b" / "model.safetensors"
    result = jobs.run("interpolate", a=a, b=b, points=3, device="cpu",
                      out=tmp_path / "py")
    assert main(["interpolate", str(a), str(b), "--points", "3", "--device", "cpu",
                 "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:-1] == result.lines()[:-1]
    for name in ("path.csv", "barrier.json"):
        assert (tmp_path / "py" / name).read_text() == (tmp_path / "cli" / name).read_text()
    config = artefacts.CONFIG.read(tmp_path / "py")
    assert config["job"] == "interpolate" and config["config"]["points"] == 3
    rows = artefacts.PATH.read(tmp_path / "py")
    assert len(rows) == 3 * 2 and rows[0]["t"] == 0.0 and rows[-1]["t"] == 1.0
    assert artefacts.BARRIER.read(tmp_path / "py")["test"] == result.summary["test"]
    assert (tmp_path / "py" / "env.json").exists()


def test_cli_names_the_flag_of_a_bad_field(cli, pair, tmp_path):
    a = pair / "a" / "model.safetensors"
    rc, out, err = cli("interpolate", a, a, "--points", "1", "--out", tmp_path / "x")
    assert rc == 2 and err.strip() == "modeconn: error: --points must be an integer ≥ 2, got 1"
    assert not (tmp_path / "x").exists()

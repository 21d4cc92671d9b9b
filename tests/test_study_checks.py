"""A study is checked whole before anything runs (issue 22, items 5–7): every value a job would
refuse, every reference to a file its stage never writes, names that would become paths outside
the study directory, sweeps too large to start unasked, a SLURM cluster that does not answer —
each refused in one line with exit status 2 and nothing written. `results` refuses a metric the
study lacks and names the jobs it leaves out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from modeconn.cli import main
from modeconn.jobs import config_fields, get, names
from modeconn.studies import EXAMPLES, StudyError, load, parse
from modeconn.studies.spec import NOT_IN_STUDIES
from modeconn.studies.worker import OUT, RESULT, job_dir

ROOT = Path(__file__).resolve().parents[1]

BASE = """
[study]
name = "s"

[train]
dataset = "digits"
shift = "iid:50,50"
width = 8
depth = 1
epochs = 1
"""
PAIR = """
[interpolate]
a = "@train/a/model.safetensors"
b = "@train/b/model.safetensors"
"""


def refuse(tmp_path: Path, capsys, text: str, *args: str, name: str = "s.toml") -> str:
    """Run the study file `text` from an empty directory: exit 2, one line, nothing written
    (beside the file itself, nothing anywhere under tmp_path); the line."""
    work = tmp_path / "work"
    work.mkdir(parents=True)
    (work / name).write_text(text)
    before = sorted(p for p in tmp_path.rglob("*"))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        rc = main(["run", name, *args])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # no study directory, no file
    assert not (tmp_path / "etc").exists()
    return err.strip()


BAD = {
    "shares over 100%": (BASE.replace("iid:50,50", "iid:60,60"),
                         "s.toml: [train] shift: shift 'iid:60,60': shares add up to 120% > 100%"),
    "a class twice": (BASE.replace("iid:50,50", "label-skew:0-4=80,4-9=20"),
                      "[train] shift: shift 'label-skew:0-4=80,4-9=20': class 4 appears in two "
                      "groups"),
    "more classes than the data": (BASE.replace("iid:50,50", "label-skew:0-9=80,10-11=20"),
                                   "[train] shift: shift 'label-skew:0-9=80,10-11=20': class "
                                   "range 10-11 outside 0-9"),
    "bad dataset option": (BASE.replace('"digits"', '"synthetic:colour=red"'),
                           "[train] dataset: synthetic: unknown option 'colour'"),
    "unknown model": (BASE + 'model = "nope"\n', "[train] model: unknown model 'nope'"),
    "model in a sweep": (BASE + '\n[train.sweep]\ngrid = { model = ["mlp", "vgg12"] }\n',
                         "[train] model: unknown model 'vgg12'"),
    "bad model option": (BASE + 'model = "resnet20"\n',
                         "[train] model: ResNet depth must be 6n+2"),
    "file never written": (BASE + PAIR.replace("@train/a/", "@train/zz/"),
                           "[interpolate] a: @train/zz/model.safetensors: [train] (train, job "
                           "train-"),
    "subset not made": (BASE + PAIR.replace("@train/a/", "@train/c/"),
                        "never writes 'c/model.safetensors'"),
    "member not trained": (BASE + 'only = "a"\n' + PAIR,
                           "[interpolate] b: @train/b/model.safetensors"),
    "reference above its output": (BASE + PAIR.replace("@train/a/model.safetensors",
                                                       "@train/../../x"),
                                   "[interpolate] a: '@train/../../x' must name a path inside "
                                   "the stage's output"),
    "absolute reference": (BASE + PAIR.replace("@train/a/model.safetensors", "@train//etc/x"),
                           "must name a path inside the stage's output"),
    "name outside results": (BASE.replace('name = "s"', 'name = "../../etc/evil"'),
                             "s.toml: [study] name '../../etc/evil' becomes a directory name"),
    "name over lines": (BASE.replace('name = "s"', 'name = "a\\nb"'),
                        "becomes a directory name"),
    "name a dot": (BASE.replace('name = "s"', 'name = ".."'), "becomes a directory name"),
    "bad max_jobs": (BASE.replace('name = "s"', 'name = "s"\nmax_jobs = 0'),
                     "[study] max_jobs must be an integer ≥ 1, got 0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_value_a_job_would_refuse_is_refused_before_anything_runs(case, tmp_path, capsys):
    text, message = BAD[case]
    assert message in refuse(tmp_path, capsys, text)


def test_errors_name_the_job_and_its_sweep_values(tmp_path, capsys):
    text = BASE + '\n[train.sweep]\nseeds = [0, 1]\ngrid = { model = ["mlp", "nope"] }\n'
    line = refuse(tmp_path, capsys, text)
    assert line.endswith("(job " + line.split("(job ")[1])
    assert "seed=0, model=nope)" in line and "job train-" in line


def test_a_name_from_the_file_name_must_be_safe_too(tmp_path, capsys):
    text = BASE.replace('name = "s"\n', "")
    line = refuse(tmp_path, capsys, text, name="my study.toml")
    assert "the study's name (from its file name) 'my study'" in line
    assert "set [study] name" in line


@pytest.mark.parametrize("available,count,device,message", [
    (False, 0, "cuda:3", "device cuda:3 asked for but no CUDA device is available"),
    (True, 1, "cuda:3", "device cuda:3 asked for but this machine has 1 CUDA device(s)"),
    (False, 0, "cuda:x", "unknown device 'cuda:x'"),
])
def test_a_device_that_is_not_here_is_refused_for_the_local_executor(
        tmp_path, capsys, monkeypatch, available, count, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    line = refuse(tmp_path, capsys, BASE + f'device = "{device}"\n')
    assert f"[train] device: {message}" in line and "(job train-" in line
    # the same given on the command line for every job
    line = refuse(tmp_path / "cli", capsys, BASE, "--device", device)
    assert f"[train] device: {message}" in line


def test_fusion_with_an_unknown_model_is_refused_before_it_starts(tmp_path, capsys):
    rc = main(["fusion", "--models", "nope", "--out", str(tmp_path / "f"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "fusion.toml: [train] model: unknown model 'nope'" in err
    assert not (tmp_path / "f").exists()


def test_fusion_over_1000_jobs_needs_yes(tmp_path, capsys, monkeypatch):
    seeds = ",".join(map(str, range(100)))
    rc = main(["fusion", "--seeds", seeds, "--out", str(tmp_path / "f"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "more than 1000; start it with --yes" in err and not (tmp_path / "f").exists()
    import modeconn.studies

    asked = {}

    def run_study(*args, **kwargs):  # what --yes hands the runner (no 3,000 jobs here)
        asked.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(modeconn.studies, "run_study", run_study)
    assert main(["fusion", "--seeds", seeds, "--out", str(tmp_path / "f"), "--yes"]) == 130
    assert asked["yes"] is True


def fake_slurm(tmp_path: Path, monkeypatch, script: str | None) -> None:
    """PATH with only a fake scontrol (or none): a cluster whose controller does not answer."""
    bin_ = tmp_path / "fakebin"
    bin_.mkdir()
    if script is not None:
        (bin_ / "scontrol").write_text("#!/bin/sh\n" + script)
        (bin_ / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_))


@pytest.mark.parametrize("script,message", [
    (None, "SLURM's commands are not installed here (no scontrol on PATH); run on a SLURM "
           "login node, or use --executor local"),
    ('echo "Slurmctld(primary) at nohost is DOWN"; exit 1',
     "no SLURM controller answers (scontrol ping: Slurmctld(primary) at nohost is DOWN); start "
     "it (a local test cluster: scripts/slurm.sh start) or use --executor local"),
])
def test_slurm_without_a_controller_is_refused_before_the_study_directory_is_written(
        tmp_path, capsys, monkeypatch, script, message):
    pytest.importorskip("submitit")
    fake_slurm(tmp_path, monkeypatch, script)
    line = refuse(tmp_path, capsys, BASE, "--executor", "slurm")
    assert line == f"modeconn: error: --executor slurm: {message}"


@pytest.mark.parametrize("device,gpus,needed", [("cuda", 0, 1), ("cuda:3", 0, 4),
                                                  ("cuda:3", 2, 4)])
def test_a_cuda_device_on_slurm_needs_the_gpus_asked_for(tmp_path, capsys, monkeypatch, device,
                                                         gpus, needed):
    """The nodes' GPUs cannot be seen from the login node, but a task that asks for fewer GPUs
    than its device needs can never run: refused before the cluster is even asked."""
    pytest.importorskip("submitit")
    fake_slurm(tmp_path, monkeypatch, None)
    line = refuse(tmp_path, capsys, BASE + f'device = "{device}"\n', "--executor", "slurm",
                  "--gpus", str(gpus))
    assert line.startswith(f"modeconn: error: s.toml: [train] device {device} needs {needed} "
                           f"GPU(s) but each SLURM task asks for {gpus}; give --gpus {needed} "
                           "or more, or device auto or cpu (job train-")


def test_a_sweep_over_1000_jobs_needs_yes_or_max_jobs(tmp_path, capsys, monkeypatch):
    big = BASE + f"\n[train.sweep]\nseeds = {list(range(1001))}\n"
    line = refuse(tmp_path, capsys, big)
    assert line == ("modeconn: error: study s expands to 1001 jobs, more than 1000; start it "
                    "with --yes (or set max_jobs = 1001 in its [study] table)")
    small = BASE.replace('name = "s"', 'name = "s"\nmax_jobs = 1') + PAIR
    assert "study s expands to 2 jobs, more than 1;" in refuse(tmp_path / "b", capsys, small)
    # --yes (or a max_jobs that allows them) lets the study start: it goes on to the next check
    fake_slurm(tmp_path, monkeypatch, None)
    allowed = big.replace('name = "s"', 'name = "s"\nmax_jobs = 2000')
    for i, (text, args) in enumerate(((big, ["--yes"]), (allowed, []))):
        line = refuse(tmp_path / f"c{i}", capsys, text, "--executor", "slurm", *args)
        assert "no scontrol on PATH" in line


def test_every_studiable_job_declares_what_it_writes():
    for name in names():
        job = get(name)
        if name in NOT_IN_STUDIES or job.output is None or job.output.kind == "file":
            continue
        given = {i.name: ["x.safetensors", "y.safetensors"] if i.many
                 else "x.safetensors" if i.base is str else 2
                 for i in config_fields(job.config) if i.required}
        config = job.config.from_dict({**given, **({"curve": "c.safetensors"}
                                                   if name == "landscape" else {})})
        assert job.output.files(config), f"{name} declares no files"


def test_train_declares_its_members_files():
    job = get("train")
    files = job.output.files(job.config.from_dict({"shift": "iid:30,30,40",
                                                   "save_epochs": [1], "epochs": 2}))
    assert {"a/model.safetensors", "c/model.safetensors", "b/epoch_1.safetensors"} <= set(files)
    assert not job.output.holds(job.config.from_dict({}), "a/model.safetensors")
    assert job.output.holds(job.config.from_dict({}), "all/model.safetensors")
    assert job.output.holds(job.config.from_dict({}), "all")


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_example_study_expands_and_is_the_packaged_one(path):
    s = load(path)
    assert s.jobs and s.name == path.stem
    assert (EXAMPLES / path.name).read_text() == path.read_text()


def test_parse_checks_a_study_whole_not_only_its_first_job():
    text = BASE + '\n[train.sweep]\ngrid = { shift = ["iid:50,50", "iid:70,70"] }\n'
    with pytest.raises(StudyError, match=r"\[train\] shift: shift 'iid:70,70'"):
        parse(text.replace('shift = "iid:50,50"\n', ""))


# ------------------------------------------------------------------------- results


def fake_study(root: Path) -> list[str]:
    """A study directory whose jobs are: complete, complete, damaged (unreadable result.json),
    damaged (complete, out/ gone), pending — written as the runner and workers would."""
    text = BASE + "\n[train.sweep]\nseeds = [0, 1, 2, 3, 4]\n"
    study = parse(text, "s.toml")
    root.mkdir()
    (root / "study.toml").write_text(text)
    ids = [j.id for j in study.jobs]
    for i, job_id in enumerate(ids):
        d = job_dir(root, job_id)
        d.mkdir(parents=True)
        if i < 4:
            (d / OUT).mkdir()
            (d / RESULT).write_text(json.dumps({
                "status": "complete", "headline": ["test_acc"],
                "records": [{"labels": {"member": "a"},
                             "metrics": {"test_acc": 0.5 + i / 100, "test_loss": 1.0}}]}))
    (job_dir(root, ids[2]) / RESULT).write_text('{"status": "comp')
    (job_dir(root, ids[3]) / OUT).rmdir()
    return ids


def test_results_refuses_a_metric_the_study_does_not_have(tmp_path, capsys):
    fake_study(tmp_path / "s")
    rc = main(["results", str(tmp_path / "s"), "--metrics", "test_accuracy"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err == ("modeconn: error: --metrics test_accuracy: the study has no metric "
                   "'test_accuracy' (did you mean 'test_acc'?); its metrics: test_acc, test_loss")
    assert main(["results", str(tmp_path / "s"), "--metrics", "test_loss"]) == 0
    out = capsys.readouterr().out
    assert "test_loss" in out and "test_acc" not in out


def test_results_names_the_jobs_it_leaves_out(tmp_path, capsys):
    ids = fake_study(tmp_path / "s")
    assert main(["results", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    damaged = next(x for x in lines if x.startswith("left out 2 damaged job(s)"))
    assert f"{ids[2]} (result.json unreadable)" in damaged
    assert f"{ids[3]} (its output (out/) is missing)" in damaged
    pending = next(x for x in lines if x.startswith("left out 1 pending job(s)"))
    assert ids[4] in pending and f"--out {tmp_path / 's'}" in pending
    assert "0.5050±0.0071" in out  # the mean of the two complete jobs only

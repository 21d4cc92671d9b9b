"""Study files: validation with one-line errors naming file, table and key; expansion; stable ids."""

from __future__ import annotations

import pytest

from modeconn.studies import EXAMPLES, StudyError, load, parse

TRAIN = """
[study]
name = "s"

[train]
dataset = "digits"
shift = "iid:50,50"
width = 16
depth = 1
epochs = 2

[train.sweep]
seeds = [0, 1]
grid = { batch_order = ["same", "independent"] }
"""

INTERP = TRAIN + """
[interpolate]
a = "@train/a/model.safetensors"
b = "@train/b/model.safetensors"
points = 5
"""


def test_grid_zip_and_seeds_multiply_and_readers_run_once_per_job_they_read():
    s = parse(INTERP.replace("points = 5\n", "") + """
[interpolate.sweep]
zip = { points = [5, 9], tolerance = [0.01, 0.02] }
""")
    train = [j for j in s.jobs if j.stage == "train"]
    interp = [j for j in s.jobs if j.stage == "interpolate"]
    assert len(train) == 4 and len(interp) == 8
    # seed s sets every seed option of train
    j = next(j for j in train if j.labels["train.seed"] == 1)
    assert j.options["split_seed"] == 1 and j.options["order_seed"] == 1
    assert j.options["init_seed"] == [1]
    # each interpolation reads the a and b of one train job, and inherits its sweep values
    for i in interp:
        (dep,) = i.deps
        up = s.by_id[dep]
        assert i.options["a"] == f"@{dep}/a/model.safetensors"
        assert i.options["b"] == f"@{dep}/b/model.safetensors"
        assert {k: v for k, v in i.labels.items() if k.startswith("train.")} == up.labels
    assert {(i.options["points"], i.options["tolerance"]) for i in interp} == {(5, 0.01), (9, 0.02)}


def test_ids_are_stable_and_follow_every_setting_including_what_a_job_reads():
    first, again = parse(INTERP), parse(INTERP)
    assert [j.id for j in first.jobs] == [j.id for j in again.jobs]
    assert len({j.id for j in first.jobs}) == len(first.jobs)
    changed = parse(INTERP.replace("epochs = 2", "epochs = 3"))
    # every train id changes, and so does every interpolation reading them
    assert not {j.id for j in changed.jobs} & {j.id for j in first.jobs}
    # a default written out is the same setting; where a job runs is not a setting
    same = parse(INTERP.replace("points = 5", "points = 5\ndevice = \"cpu\"")
                 .replace("epochs = 2", "epochs = 2\nlr = 0.05"))
    assert [j.id for j in same.jobs] == [j.id for j in first.jobs]


def test_gather_and_select_read_chosen_jobs_of_a_stage():
    s = parse(TRAIN.replace('shift = "iid:50,50"', 'shift = "none"') + """
[align]
a = "@train[seed=0]/all/model.safetensors"
b = "@train[seed=1]/all/model.safetensors"

[merge]
job = "merge-many"
models = "@train[seed]/all/model.safetensors"
""")
    by = {j.id: j for j in s.jobs}
    aligns = [j for j in s.jobs if j.stage == "align"]
    merges = [j for j in s.jobs if j.stage == "merge"]
    assert len(aligns) == 2 and len(merges) == 2  # one per batch order
    for a in aligns:
        ja, jb = (by[p[1:].split("/")[0]] for p in (a.options["a"], a.options["b"]))
        assert ja.labels["train.seed"] == 0 and jb.labels["train.seed"] == 1
        assert ja.labels["train.batch_order"] == jb.labels["train.batch_order"] \
            == a.labels["train.batch_order"]
    for m in merges:
        seeds = [by[p[1:].split("/")[0]].labels["train.seed"] for p in m.options["models"]]
        assert seeds == [0, 1]


BAD = {
    "unknown option": (TRAIN.replace("epochs = 2", "epoch = 2"),
                       "s.toml: [train] epoch: train has no option 'epoch' (did you mean 'epochs'?)"),
    "wrong type": (TRAIN.replace("epochs = 2", 'epochs = "two"'),
                   "s.toml: [train] epochs must be an integer ≥ 1, got 'two'"),
    "out of range": (TRAIN.replace("epochs = 2", "epochs = 0"), "[train] epochs must be"),
    "unknown job": ("[x]\njob = \"trian\"\n", "s.toml: [x] unknown job kind 'trian' (did you mean 'train'?)"),
    "stage without job": ("[foo]\nepochs = 2\n", "[foo] unknown job kind 'foo'; name its job kind"),
    "not a study job": ("[r]\njob = \"run\"\nstudy = \"x\"\n", "[r] job 'run' cannot be a stage"),
    "zip lengths": (TRAIN + "zip = { batch_size = [32, 64], lr = [0.1] }\n",
                    "[train] sweep.zip: lists of different lengths cannot be zipped "
                    "(batch_size: 2, lr: 1)"),
    "empty grid": (TRAIN.replace('grid = { batch_order = ["same", "independent"] }',
                                 "grid = { lr = [] }"),
                   "[train] sweep.grid.lr must be a non-empty list of values, got []"),
    "fixed and swept": (TRAIN.replace("epochs = 2", 'epochs = 2\nbatch_order = "same"'),
                        "[train] batch_order is both a fixed option and swept (sweep.grid.batch_order)"),
    "runner option": (TRAIN.replace("epochs = 2", "epochs = 2\nresume = true"),
                      "[train] resume: the runner sets resume for every job; remove it"),
    "out": (TRAIN.replace("epochs = 2", 'epochs = 2\nout = "x"'), "[train] out: the runner chooses"),
    "sweep key": (TRAIN.replace("seeds = [0, 1]", "seed = [0, 1]"),
                  "[train] sweep.seed: unknown sweep key (did you mean 'seeds'?)"),
    "repeated seed": (TRAIN.replace("seeds = [0, 1]", "seeds = [0, 0]"),
                      "[train] sweep.seeds repeats a seed: [0, 0]"),
    "duplicate jobs": (TRAIN.replace('["same", "independent"]', '["same", "same"]'),
                       "[train] two of its jobs have the same settings"),
    "missing stage": (TRAIN + '[interpolate]\na = "@trian/a/model.safetensors"\nb = "x"\n',
                      "s.toml: [interpolate] reads @trian, a stage the study does not define "
                      "(did you mean 'train'?)"),
    "cycle": ('[p]\njob = "interpolate"\na = "@q/x"\nb = "y"\n'
              '[q]\njob = "interpolate"\na = "@p/x"\nb = "y"\n', "read each other in a cycle"),
    "self": ('[p]\njob = "interpolate"\na = "@p/x"\nb = "y"\n', "stages [p] → [p] read each other"),
    "bad reference": (TRAIN + '[interpolate]\na = "@train/a"\nb = "@"\n',
                      "[interpolate] b: '@' is not a reference"),
    "select nothing": (TRAIN + '[interpolate]\na = "@train[seed=7]/a"\nb = "@train/b"\n',
                       "[interpolate] reads @train with seed=7: no job of [train] has these "
                       "sweep values"),
    "gather non-axis": (TRAIN + '[ens]\njob = "ensemble"\ncheckpoints = "@train[lr]/a"\n',
                        "[ens] reads @train[lr...]: 'lr' is not a sweep axis of [train]"),
    "required": (TRAIN + '[interpolate]\na = "@train/a/model.safetensors"\n',
                 "[interpolate] b is required by interpolate; set it"),
    "not toml": ("[train\n", "s.toml: not valid TOML"),
    "study key": ('[study]\nnmae = "x"\n' + TRAIN.split("[study]")[1].split("\n", 2)[2],
                  "[study] has no key 'nmae' (did you mean 'name'?)"),
    "no stages": ('[study]\nname = "x"\n', "s.toml: no stages"),
    "table value": (TRAIN.replace("epochs = 2", "epochs = { a = 1 }"),
                    "[train] epochs: an option value cannot be a table"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_study_file_is_refused_before_anything_runs_in_one_line(case):
    text, message = BAD[case]
    with pytest.raises(StudyError) as e:
        parse(text, "dir/s.toml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        load(tmp_path / "nope.toml")
    with pytest.raises(StudyError, match="is a directory"):
        load(tmp_path)


@pytest.mark.parametrize("name", ["demo", "demo-quick", "lmc", "lmc-mnist5k", "rebasin-mnist5k",
                                  "lmc-bigearthnet", "fusion", "curves", "ste-mm", "align-repair"])
def test_every_example_study_is_valid(name):
    s = load(EXAMPLES / f"{name}.toml")
    assert s.jobs and s.description
    assert s.name == name


def test_the_lmc_example_sweeps_the_papers_grid():
    s = load(EXAMPLES / "lmc.toml")
    train = [j for j in s.jobs if j.stage == "train"]
    axes = {k.split(".")[1] for j in train for k in j.labels}
    assert axes == {"shift", "init", "batch_order", "batch_size", "lr", "seed"}
    assert len(train) == 2 ** 6

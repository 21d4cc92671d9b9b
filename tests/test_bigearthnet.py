"""BigEarthNet-S2 v1.0: the reader against GeoTIFFs in the distributed layout, its splits, subsets,
bad-patch reports and memory-mapped cache."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from ben_fixture import (
    BAD_KINDS,
    band_array,
    count_reads,
    official_assignment,
    write_bigearthnet,
    write_splits,
)

from modeconn.data import bigearthnet as ben_mod
from modeconn.data.bigearthnet import (
    BAND_SIZE,
    BANDS,
    LABELS_19,
    LABELS_43,
    TO_19,
    BadPatch,
    band_stats,
    open_bigearthnet,
    resample_band,
)
from modeconn.errors import UsageError


def _open(root, **kw):
    kw.setdefault("workers", 1)
    return open_bigearthnet(root, quiet=True, **kw)


# --- the nomenclature ---------------------------------------------------------------------------


def test_the_constants_pin_the_official_bands_and_nomenclatures():
    assert BANDS == ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
                     "B12")
    assert [b for b in BANDS if BAND_SIZE[b] == 120] == ["B02", "B03", "B04", "B08"]
    assert [b for b in BANDS if BAND_SIZE[b] == 20] == ["B01", "B09"]
    assert len(LABELS_43) == len(set(LABELS_43)) == 43 and len(LABELS_19) == 19
    assert LABELS_43[0] == "Continuous urban fabric" and LABELS_43[42] == "Sea and ocean"
    assert LABELS_43[20].startswith("Land principally occupied by agriculture, with significant")
    assert TO_19.shape == (43, 19) and TO_19.sum(axis=1).max() == 1  # each class in at most one

    def gathers(new):
        return {LABELS_43[i] for i in np.flatnonzero(TO_19[:, LABELS_19.index(new)])}

    assert gathers("Urban fabric") == {"Continuous urban fabric", "Discontinuous urban fabric"}
    assert gathers("Arable land") == {"Non-irrigated arable land", "Permanently irrigated land",
                                      "Rice fields"}
    assert gathers("Permanent crops") == {"Vineyards", "Fruit trees and berry plantations",
                                          "Olive groves",
                                          "Annual crops associated with permanent crops"}
    assert gathers("Natural grassland and sparsely vegetated areas") == {
        "Natural grassland", "Sparsely vegetated areas"}
    assert gathers("Marine waters") == {"Coastal lagoons", "Estuaries", "Sea and ocean"}
    unmapped = {LABELS_43[i] for i in np.flatnonzero(TO_19.sum(axis=1) == 0)}
    assert unmapped == {"Road and rail networks and associated land", "Port areas", "Airports",
                        "Mineral extraction sites", "Dump sites", "Construction sites",
                        "Green urban areas", "Sport and leisure facilities", "Bare rock",
                        "Burnt areas", "Intertidal flats"}


# --- pixels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [120, 60, 20])
def test_bands_at_their_native_size_are_the_tiffs_exactly(tmp_path, size):
    names = write_bigearthnet(tmp_path / "ds", n=4, splits=False)
    ben = _open(tmp_path / "ds", size=size)
    assert ben.images.shape == (4, 12, size, size) and ben.images.dtype == np.uint16
    assert isinstance(ben.images, np.memmap) and not ben.images.flags.writeable
    assert ben.names == names
    for i, name in enumerate(names):
        for b, band in enumerate(BANDS):
            if BAND_SIZE[band] == size:
                tif = tifffile.imread(tmp_path / "ds" / name / f"{name}_{band}.tif")
                assert np.array_equal(ben.images[i, b], tif)
                assert np.array_equal(tif, band_array(i, band))


def test_nearest_replicates_pixels_and_bilinear_is_torchs_rounded(tmp_path):
    write_bigearthnet(tmp_path / "ds", n=3, splits=False)
    near = _open(tmp_path / "ds", resample="nearest")
    lin = _open(tmp_path / "ds")
    assert near.path != lin.path
    for i in range(3):
        for b, band in enumerate(BANDS):
            a = band_array(i, band)
            k = 120 // BAND_SIZE[band]
            assert np.array_equal(near.images[i, b], np.repeat(np.repeat(a, k, 0), k, 1))
            ref = F.interpolate(torch.from_numpy(a.astype(np.float64))[None, None], size=(120, 120),
                                mode="bilinear", align_corners=False)[0, 0].numpy()
            ours = lin.images[i, b].astype(np.float64)
            assert np.abs(ours - ref).max() <= 0.5 + 1e-9
            clear = np.abs(ref - np.floor(ref) - 0.5) > 1e-6  # not a tie
            assert np.array_equal(ours[clear], np.rint(ref[clear]))


@pytest.mark.parametrize("n,size", [(120, 60), (60, 45), (20, 7), (20, 33), (60, 120)])
def test_resample_band_matches_torch_both_ways(n, size):
    a = np.random.default_rng(n + size).integers(0, 65536, size=(n, n)).astype(np.uint16)
    t = torch.from_numpy(a.astype(np.float64))[None, None]
    ref = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=False)[0, 0].numpy()
    ours = resample_band(a, size, "bilinear")
    assert ours.dtype == np.uint16 and ours.shape == (size, size)
    assert np.abs(ours - ref).max() <= 0.5 + 1e-6
    near = F.interpolate(t, size=(size, size), mode="nearest-exact")[0, 0].numpy()
    assert np.array_equal(resample_band(a, size, "nearest"), near.astype(np.uint16))
    assert np.array_equal(resample_band(a, n), a)  # the identity at the native size
    assert resample_band(np.full((n, n), 65535, np.uint16), size).min() == 65535  # no overflow


def _exact_bilinear(a: np.ndarray, size: int, rows) -> np.ndarray:
    """The half-pixel-centre bilinear value of output rows `rows`, in exact fractions, rounded
    half to even (Python's round)."""
    n = a.shape[0]

    def taps(i):
        src = max(Fraction(2 * i + 1, 2 * size) * n - Fraction(1, 2), Fraction(0))
        lo = int(src)
        return lo, min(lo + 1, n - 1), src - lo

    out = np.zeros((len(rows), size), dtype=np.int64)
    for r, i in enumerate(rows):
        y0, y1, fy = taps(i)
        for j in range(size):
            x0, x1, fx = taps(j)
            v = ((1 - fy) * ((1 - fx) * int(a[y0, x0]) + fx * int(a[y0, x1]))
                 + fy * ((1 - fx) * int(a[y1, x0]) + fx * int(a[y1, x1])))
            out[r, j] = round(v)
    return out


@pytest.mark.parametrize("n,size,step", [(20, 120, 6), (60, 45, 1), (7, 13, 1), (7, 120, 12)])
def test_bilinear_is_the_exact_value_rounded_half_to_even(n, size, step):
    a = np.random.default_rng(n * size).integers(0, 65536, size=(n, n)).astype(np.uint16)
    a[0, :3] = 65535
    rows = list(range(0, size, step))
    assert np.array_equal(resample_band(a, size)[rows], _exact_bilinear(a, size, rows))


# --- labels and splits ------------------------------------------------------------------------


def test_labels_are_the_43_class_multi_hot_and_convert_to_19(tmp_path):
    labels = [["Continuous urban fabric", "Discontinuous urban fabric"], ["Airports"],
              ["Sea and ocean", "Estuaries", "Pastures"], ["Rice fields", "Bare rock"]]
    write_bigearthnet(tmp_path / "ds", n=4, splits=False, labels=labels)
    ben = _open(tmp_path / "ds")
    for row, names in zip(ben.labels, labels):
        assert {LABELS_43[i] for i in np.flatnonzero(row)} == set(names)
    nineteen = ben.labels_for(19)
    assert nineteen.shape == (4, 19) and nineteen.dtype == np.uint8
    got = [{LABELS_19[i] for i in np.flatnonzero(r)} for r in nineteen]
    assert got == [{"Urban fabric"}, set(), {"Marine waters", "Pastures"}, {"Arable land"}]
    assert ben.labels_for(43) is ben.labels
    with pytest.raises(UsageError, match="use 43 or 19"):
        ben.labels_for(10)


def test_official_split_files_are_honoured_and_unlisted_patches_left_out(tmp_path):
    names = write_bigearthnet(tmp_path / "ds", n=10)
    ben = _open(tmp_path / "ds")
    want = official_assignment(names)
    for code, split in enumerate(("train", "val", "test")):
        assert [ben.names[i] for i in ben.rows(split)] == want[split]
        assert [ben.names[i] for i in np.flatnonzero(ben.split == code)] == want[split]
    assert ben.unlisted == [] and ben.skipped == []
    # Two patches in no split file: present but left out, and named.
    write_splits(tmp_path / "ds", {"train": names[:5], "val": names[5:7], "test": names[9:]})
    ben = _open(tmp_path / "ds")
    assert ben.names == names[:7] + names[9:] and ben.unlisted == names[7:9]
    assert ben.split.tolist() == [0] * 5 + [1] * 2 + [2]
    write_splits(tmp_path / "ds", {"train": names[:5], "val": names[4:], "test": []})
    with pytest.raises(UsageError, match=f"{names[4]} is listed in both train.csv and val.csv"):
        _open(tmp_path / "ds")
    os.remove(tmp_path / "ds" / "test.csv")
    with pytest.raises(UsageError, match="but not test.csv"):
        _open(tmp_path / "ds")


def test_the_nested_layout_and_split_files_in_the_parent(tmp_path):
    names = write_bigearthnet(tmp_path / "BigEarthNet-v1.0", n=5, split_dir=tmp_path)
    ben = _open(tmp_path)
    assert ben.names == names and ben.split.tolist() == [0, 0, 0, 1, 2]
    assert ben.path.parent == tmp_path / "BigEarthNet-v1.0" / ".modeconn-cache"


def test_the_seeded_split_is_60_20_20_and_reproducible(tmp_path):
    write_bigearthnet(tmp_path / "ds", n=20, splits=False)
    a = _open(tmp_path / "ds", seed=3)
    assert np.bincount(a.split).tolist() == [12, 4, 4]
    b = _open(tmp_path / "ds", seed=3, cache_dir=tmp_path / "elsewhere")
    assert np.array_equal(a.split, b.split) and a.path != b.path
    c = _open(tmp_path / "ds", seed=4)
    assert not np.array_equal(a.split, c.split) and np.bincount(c.split).tolist() == [12, 4, 4]


def test_limit_takes_a_stratified_reproducible_subset_reading_only_its_tiffs(tmp_path, monkeypatch):
    # Even patches carry only Pastures; odd ones also the rarer Rice fields (their stratum).
    labels = [["Pastures"] if i % 2 == 0 else ["Pastures", "Rice fields"] for i in range(40)]
    names = write_bigearthnet(tmp_path / "ds", n=40, labels=labels)  # splits 24/8/8
    seen = count_reads(monkeypatch)
    ben = _open(tmp_path / "ds", limit=20, seed=1)
    assert len(ben) == 20 and seen == set(ben.names)
    assert np.bincount(ben.split).tolist() == [12, 4, 4]
    rice = ben.labels[:, LABELS_43.index("Rice fields")]
    for code in range(3):
        assert rice[ben.split == code].sum() * 2 == (ben.split == code).sum()
    index = [names.index(p) for p in ben.names]
    assert ben.names == sorted(ben.names)
    for row, i in enumerate(index):
        assert np.array_equal(ben.images[row, 1], band_array(i, "B02"))
    assert _open(tmp_path / "ds", limit=20, seed=1).names == ben.names  # the cache
    again = _open(tmp_path / "ds", limit=20, seed=1, cache_dir=tmp_path / "c")  # a rebuild
    assert again.names == ben.names
    other = _open(tmp_path / "ds", limit=20, seed=2)
    assert other.names != ben.names and np.bincount(other.split).tolist() == [12, 4, 4]
    assert len(_open(tmp_path / "ds", limit=100)) == 40


# --- bad patches --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_each_bad_patch_fails_with_its_name_and_writes_nothing(tmp_path, kind):
    names = write_bigearthnet(tmp_path / "ds", n=4, bad={2: kind})
    with pytest.raises(UsageError) as e:
        _open(tmp_path / "ds")
    msg = str(e.value)
    assert f"bad patch {names[2]}: " in msg and BAD_KINDS[kind] in msg
    assert "--on-bad-patch skip" in msg and "\n" not in msg
    assert not (tmp_path / "ds" / ".modeconn-cache").exists()


def test_skip_leaves_every_bad_patch_out_and_lists_it(tmp_path):
    kinds = sorted(BAD_KINDS)
    bad = {2 * k + 1: kind for k, kind in enumerate(kinds)}  # between good patches
    names = write_bigearthnet(tmp_path / "ds", n=2 * len(kinds) + 2, bad=bad)
    ben = _open(tmp_path / "ds", on_bad_patch="skip")
    assert [s.patch for s in ben.skipped] == sorted(names[i] for i in bad)
    for s in ben.skipped:
        kind = bad[names.index(s.patch)]
        assert isinstance(s, BadPatch) and BAD_KINDS[kind] in s.reason, (kind, s.reason)
    good = [i for i in range(len(names)) if i not in bad]
    assert ben.names == [names[i] for i in good]
    for row, i in enumerate(good):  # the rows were moved down over the bad ones
        assert np.array_equal(ben.images[row, 3], band_array(i, "B04"))
        assert np.array_equal(ben.images[row, 0], resample_band(band_array(i, "B01"), 120))
    with open(ben.path / "skipped.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["patch", "reason"] and [tuple(r) for r in rows[1:]] == ben.skipped
    assert ben.skipped == _open(tmp_path / "ds", on_bad_patch="skip").skipped  # reopened


def test_bad_options_and_missing_data_are_one_line_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="not found; download BigEarthNet-S2 v1.0"):
        _open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no patch folders in"):
        _open(tmp_path / "empty")
    write_bigearthnet(tmp_path / "ds", n=2, splits=False)
    for kw, text in [({"size": 0}, "positive integer"), ({"size": True}, "positive integer"),
                     ({"resample": "cubic"}, "bilinear or nearest"),
                     ({"on_bad_patch": "ignore"}, "fail or skip"), ({"workers": 0}, "workers"),
                     ({"limit": 0}, "limit"), ({"seed": -1}, "seed")]:
        with pytest.raises(UsageError, match=text) as e:
            _open(tmp_path / "ds", **kw)
        assert "\n" not in str(e.value)


# --- the cache ----------------------------------------------------------------------------------


def test_the_cache_reopens_fast_without_reading_a_tiff(tmp_path, monkeypatch):
    names = write_bigearthnet(tmp_path / "ds", n=8)
    first = _open(tmp_path / "ds")
    assert sorted(os.listdir(first.path)) == ["images.u16", "labels.npy", "meta.json", "names.txt",
                                              "skipped.csv", "split.npy", "unlisted.txt"]
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["shape"] == [8, 12, 120, 120] and meta["bands"] == list(BANDS)
    for name in names:
        for band in BANDS:
            os.remove(tmp_path / "ds" / name / f"{name}_{band}.tif")

    def no_tiffs(*a, **k):
        raise AssertionError("a TIFF was read")

    monkeypatch.setattr(tifffile, "TiffFile", no_tiffs)
    monkeypatch.setattr(tifffile, "imread", no_tiffs)
    t = time.perf_counter()
    again = _open(tmp_path / "ds")
    assert time.perf_counter() - t < 0.5
    assert again.path == first.path and again.names == first.names
    assert np.array_equal(again.images, first.images) and np.array_equal(again.labels, first.labels)


def test_an_incomplete_or_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    write_bigearthnet(tmp_path / "ds", n=6)
    first = _open(tmp_path / "ds")
    images = np.array(first.images)
    os.remove(first.path / "meta.json")  # as a build killed before its last step
    seen = count_reads(monkeypatch)
    again = _open(tmp_path / "ds")
    assert len(seen) == 6 and again.path == first.path and np.array_equal(again.images, images)
    with open(first.path / "images.u16", "r+b") as f:
        f.truncate(1000)
    seen.clear()
    with pytest.warns(UserWarning, match="damaged .*images.u16 holds 1000 bytes"):
        again = _open(tmp_path / "ds")
    assert len(seen) == 6 and np.array_equal(again.images, images)


def test_an_interrupted_build_leaves_nothing_and_stale_builds_are_cleared(tmp_path, monkeypatch):
    write_bigearthnet(tmp_path / "ds", n=6)
    cache = tmp_path / "ds" / ".modeconn-cache"
    real = ben_mod._read_chunk
    calls = []

    def interrupted(task):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(ben_mod, "_read_chunk", interrupted)
    monkeypatch.setattr(ben_mod, "_MAX_CHUNK", 2)
    with pytest.raises(KeyboardInterrupt):
        _open(tmp_path / "ds")
    assert not cache.exists()  # the build's folder removed, and the cache folder it created
    cache.mkdir()
    # A build whose process was killed (SIGKILL: no clean-up) leaves its temporary folder.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = cache / f".build-0123456789abcdef~{ben_mod.socket.gethostname()}~{dead}-00ff00ff"
    stale.mkdir()
    (stale / "images.u16").write_bytes(b"\0" * 100)
    monkeypatch.setattr(ben_mod, "_read_chunk", real)
    ben = _open(tmp_path / "ds")
    assert os.listdir(cache) == [ben.path.name]


_KILLED_BUILD = """
import sys, time
from modeconn.data import bigearthnet as ben
real = ben._read_chunk

def slow(task):  # the first chunk is written, then the build hangs until killed
    out = real(task)
    time.sleep(60)
    return out

ben._read_chunk = slow
ben._MAX_CHUNK = 2
ben.open_bigearthnet(sys.argv[1], workers=1, quiet=True)
"""


def test_a_build_killed_by_sigkill_leaves_no_valid_looking_cache(tmp_path):
    names = write_bigearthnet(tmp_path / "ds", n=6)
    cache = tmp_path / "ds" / ".modeconn-cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(tmp_path / "ds")], env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(cache.glob(".build-*/images.u16")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait()
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".build-")] == []
    assert not list(cache.glob("*/meta.json"))
    ben = _open(tmp_path / "ds")  # rebuilt, and the killed build's folder cleared
    assert os.listdir(cache) == [ben.path.name] and ben.names == names
    assert np.array_equal(ben.images[5, 7], band_array(5, "B08"))


def test_one_and_two_workers_build_identical_caches(tmp_path):
    write_bigearthnet(tmp_path / "ds", n=12, splits=False, bad={5: "wrong_size"})
    one = _open(tmp_path / "ds", on_bad_patch="skip", size=64, workers=1)
    two = _open(tmp_path / "ds", on_bad_patch="skip", size=64, workers=2,
                cache_dir=tmp_path / "two")
    assert one.path != two.path and one.names == two.names and one.skipped == two.skipped
    assert np.array_equal(one.images, two.images) and np.array_equal(one.labels, two.labels)
    assert np.array_equal(one.split, two.split)
    assert (one.path / "images.u16").read_bytes() == (two.path / "images.u16").read_bytes()


def test_cache_files_get_the_umask_permissions_and_a_fallback_folder(tmp_path, monkeypatch):
    write_bigearthnet(tmp_path / "ds", n=2, splits=False)
    (tmp_path / "ds" / ".modeconn-cache").write_text("not a folder")  # the dataset's is unusable
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    old = os.umask(0o027)
    try:
        ben = _open(tmp_path / "ds")
    finally:
        os.umask(old)
    assert ben.path.parent.parent == tmp_path / "home" / ".cache" / "modeconn" / "bigearthnet"
    assert ben.path.stat().st_mode & 0o777 == 0o750
    for f in os.listdir(ben.path):
        assert (ben.path / f).stat().st_mode & 0o777 == 0o640, f


def test_band_stats_stream_in_blocks_and_are_cached(tmp_path):
    write_bigearthnet(tmp_path / "ds", n=10, splits=False)
    ben = _open(tmp_path / "ds")
    rows = [7, 1, 3, 3, 8, 2]
    x = np.asarray(ben.images[sorted(set(rows))], dtype=np.float64)
    mean, std = band_stats(ben, rows, block_bytes=ben.images[0].nbytes * 2)  # 3 blocks
    assert mean.dtype == std.dtype == np.float64 and mean.shape == (12,)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-10)
    assert len(list(ben.path.glob("stats-*.json"))) == 1
    cached = band_stats(ben, [1, 2, 3, 7, 8])
    assert np.array_equal(cached[0], mean) and np.array_equal(cached[1], std)
    everything = band_stats(ben)
    np.testing.assert_allclose(everything[0], np.asarray(ben.images, np.float64).mean(axis=(0, 2, 3)))
    mask = np.zeros(10, bool)
    mask[[1, 2, 3, 7, 8]] = True
    assert np.array_equal(band_stats(ben, mask)[0], mean)
    with pytest.raises(UsageError, match="rows must lie in 0..9"):
        band_stats(ben, [10])


@pytest.mark.parametrize("compression", ["lzw", "lzw+predictor", "zstd", "lerc", "deflate",
                                         "packbits", "lzma"])
def test_compressed_bands_read_bit_identically(tmp_path, compression):
    """GeoTIFF bands compressed as GDAL and reBEN write them (LZW with or without the
    horizontal predictor, ZSTD, LERC, …) are decoded through imagecodecs, pixel for pixel."""
    n = ben_mod.BAND_SIZE["B02"]
    rng = np.random.default_rng(0)
    band = rng.integers(0, 10000, (n, n), dtype=np.uint16)
    name = "S2A_MSIL2A_0_0_0"
    (tmp_path / name).mkdir()
    codec, _, predictor = compression.partition("+")
    tifffile.imwrite(tmp_path / name / f"{name}_B02.tif", band, compression=codec,
                     predictor=bool(predictor))
    assert np.array_equal(ben_mod._read_band(str(tmp_path), name, "B02"), band)


def test_a_missing_codec_names_the_package_not_a_bad_patch(tmp_path, monkeypatch):
    n = ben_mod.BAND_SIZE["B02"]
    name = "S2A_MSIL2A_0_0_0"
    (tmp_path / name).mkdir()
    tifffile.imwrite(tmp_path / name / f"{name}_B02.tif", np.zeros((n, n), np.uint16),
                     compression="lzw")

    def no_codec(self, *args, **kwargs):  # what tifffile raises without imagecodecs
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codec)
    monkeypatch.setattr(ben_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"^BigEarthNet: S2A_MSIL2A_0_0_0_B02.tif is compressed "
                                         r"with LZW, which needs the imagecodecs package to "
                                         r"decode; install it: pip install imagecodecs"):
        ben_mod._read_band(str(tmp_path), name, "B02")

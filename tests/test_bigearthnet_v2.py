"""BigEarthNet v2.0 (reBEN) on real patches: configilm's 24 Sentinel-2 and 24 paired Sentinel-1
patches written into the distributed layout (`benv2_fixture`), read by the one BigEarthNet reader:
pixels bit-identical, the official split, the snow/cloud/shadow exclusion, limit, bad patches,
one-line errors, the cache, and the sensor shift."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ben_fixture import count_reads
from benv2_fixture import EXCLUDED, METADATA, s1_tile, s2_tile

from modeconn.cli import main
from modeconn.data import DataSpec, check_spec, parse_shift, prepare_subsets
from modeconn.data import bigearthnet as ben_mod
from modeconn.data.bigearthnet import (
    BANDS,
    LABELS_19,
    S1_BANDS,
    open_bigearthnet,
    resample_band,
)
from modeconn.errors import UsageError

SPLIT_CODE = {"train": 0, "validation": 1, "test": 2}


def _open(folder, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("version", 2)
    return open_bigearthnet(folder, quiet=True, **kw)


def _copy(benv2, tmp_path):
    """A private copy of the v2 folder, to damage."""
    return shutil.copytree(benv2[1], tmp_path / "v2", ignore=shutil.ignore_patterns(".modeconn*"))


def _rows(tables, name=METADATA):
    t = tables[name]
    return [dict(zip(t, values)) for values in zip(*t.values())]


def _write_table(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


# --- the pixels, labels, split and exclusion ---------------------------------------------------


@pytest.mark.parametrize("size", [120, 60, 20])
def test_real_patches_load_bit_identically_with_their_labels_and_official_split(benv2, size):
    _, folder, patches, tables = benv2
    ben = _open(folder, sensors="S2+S1", size=size, resample="nearest")
    rows = {r["patch_id"]: r for r in _rows(tables)}
    assert ben.names == sorted(rows) and len(ben) == 18  # the 6 snowy/cloudy ones left out
    assert ben.bands == BANDS + S1_BANDS and ben.images.dtype == np.float32
    assert ben.excluded == sorted(r["patch_id"] for r in _rows(tables, EXCLUDED))
    for i, name in enumerate(ben.names):
        row = rows[name]
        assert ben.split[i] == SPLIT_CODE[row["split"]]
        assert [LABELS_19[j] for j in np.flatnonzero(ben.labels[i])] == \
            [c for c in LABELS_19 if c in row["labels"]]
        s2, s1 = patches[name], patches[row["s1_name"]]
        for b, band in enumerate(ben.bands):
            stored = (s1 if band in S1_BANDS else s2)[band]
            if stored.shape[0] == size:  # at native size: the very pixels
                assert np.array_equal(ben.images[i, b], stored.astype(np.float32)), band
            else:  # nearest: the source pixel whose centre is nearest, exactly
                assert np.array_equal(ben.images[i, b], resample_band(stored, size, "nearest")
                                      if stored.dtype == np.uint16 else
                                      stored[np.ix_(*[np.minimum((2 * np.arange(size) + 1) * 120
                                                                 // (2 * size), 119)] * 2)])
    assert np.array_equal(ben.labels_for(19), ben.labels)
    with pytest.raises(UsageError, match="19-class nomenclature only"):
        ben.labels_for(43)


def test_sentinel2_alone_is_a_uint16_cache_and_bilinear_is_exact(benv2):
    _, folder, patches, _ = benv2
    ben = _open(folder, size=60)  # sensors=S2: as a v1.0 cache, uint16
    assert ben.bands == BANDS and ben.images.dtype == np.uint16
    assert (ben.path / "images.u16").is_file() and ben.path.name.startswith("v2-S2-60px-")
    for i, name in enumerate(ben.names):
        for b, band in enumerate(BANDS):
            assert np.array_equal(ben.images[i, b], resample_band(patches[name][band], 60)), band


def test_sentinel1_alone_and_its_bilinear_resampling(benv2, tmp_path):
    _, folder, patches, tables = benv2
    ben = _open(folder, sensors="S1", size=60, cache_dir=tmp_path / "c")
    assert ben.bands == ("VV", "VH") and ben.images.shape == (18, 2, 60, 60)
    s1 = {r["patch_id"]: r["s1_name"] for r in _rows(tables)}
    for i, name in enumerate(ben.names):
        want = F.interpolate(torch.from_numpy(np.stack([patches[s1[name]][b] for b in S1_BANDS])
                                              ).double()[None], size=(60, 60), mode="bilinear",
                             align_corners=False)[0].float().numpy()
        np.testing.assert_allclose(ben.images[i], want, rtol=1e-6, atol=1e-5)


def test_limit_takes_a_stratified_subset_reading_only_its_tiffs(benv2, monkeypatch):
    _, folder, _, _ = benv2
    seen = count_reads(monkeypatch)
    ben = _open(folder, limit=9, seed=1)
    assert len(ben) == 9 and np.bincount(ben.split).tolist() == [3, 3, 3]
    assert seen == set(ben.names)  # Sentinel-2 only: the patches' own names
    assert _open(folder, limit=9, seed=1).names == ben.names


# --- bad patches --------------------------------------------------------------------------------


def test_bad_patches_fail_with_their_name_or_are_skipped_and_listed(benv2, tmp_path):
    _, _, _, tables = benv2
    folder = _copy(benv2, tmp_path)
    rows = sorted(_rows(tables), key=lambda r: r["patch_id"])
    band_gone, s2_gone, s1_gone = rows[0], rows[5], rows[10]
    (folder / "BigEarthNet-S2" / s2_tile(band_gone["patch_id"]) / band_gone["patch_id"] /
     f"{band_gone['patch_id']}_B05.tif").unlink()
    shutil.rmtree(folder / "BigEarthNet-S2" / s2_tile(s2_gone["patch_id"]) / s2_gone["patch_id"])
    shutil.rmtree(folder / "BigEarthNet-S1" / s1_tile(s1_gone["s1_name"]) / s1_gone["s1_name"])
    stray = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99"  # a folder no row lists
    shutil.copytree(folder / "BigEarthNet-S2" / s2_tile(rows[1]["patch_id"]) / rows[1]["patch_id"],
                    folder / "BigEarthNet-S2" / s2_tile(stray) / stray)
    with pytest.raises(UsageError) as e:
        _open(folder, sensors="S2+S1")
    msg = str(e.value)
    assert "\n" not in msg and "--on-bad-patch skip" in msg
    assert f"bad patch {s2_gone['patch_id']}: listed in metadata.parquet but its folder" in msg
    assert not (folder / ".modeconn-cache").exists()
    ben = _open(folder, sensors="S2+S1", on_bad_patch="skip")
    reasons = dict(ben.skipped)
    assert set(reasons) == {band_gone["patch_id"], s2_gone["patch_id"], s1_gone["patch_id"], stray}
    assert "missing band file" in reasons[band_gone["patch_id"]]
    assert "Sentinel-1 patch folder" in reasons[s1_gone["patch_id"]]
    assert "listed in no row of metadata.parquet" in reasons[stray]
    assert len(ben) == 15 and not set(reasons) & set(ben.names)
    # Sentinel-2 alone does not need the S1 folder that is gone.
    assert s1_gone["patch_id"] in _open(folder, on_bad_patch="skip").names


def test_without_the_exclusion_file_snowy_folders_are_bad_and_it_is_named(benv2, tmp_path):
    folder = _copy(benv2, tmp_path)
    (folder / EXCLUDED).unlink()
    with pytest.raises(UsageError, match="is absent: download it from bigearth.net") as e:
        _open(folder)
    assert "\n" not in str(e.value)
    assert len(_open(folder, on_bad_patch="skip").skipped) == 6


def test_malformed_metadata_rows_are_bad_patches_and_duplicates_an_error(benv2, tmp_path):
    _, _, _, tables = benv2
    folder = _copy(benv2, tmp_path)
    rows = sorted(_rows(tables), key=lambda r: r["patch_id"])
    rows[0]["labels"] = ["Glaciers"]
    rows[1]["split"] = "val"
    rows[2]["labels"] = []
    _write_table(folder / METADATA, rows)
    ben = _open(folder, on_bad_patch="skip")
    reasons = dict(ben.skipped)
    assert "unknown label 'Glaciers'" in reasons[rows[0]["patch_id"]]
    assert "unknown split 'val'" in reasons[rows[1]["patch_id"]]
    assert "no labels" in reasons[rows[2]["patch_id"]]
    _write_table(folder / METADATA, rows + rows[:1])
    with pytest.raises(UsageError, match=f"patch {rows[0]['patch_id']} is listed twice"):
        _open(folder, on_bad_patch="skip")


def test_bad_input_is_a_one_line_usage_error(benv2, tmp_path, monkeypatch):
    _, good, _, _ = benv2
    folder = _copy(benv2, tmp_path)
    cases = [
        (lambda: _open(good, version=3), "unknown version 3; use 1"),
        (lambda: _open(good, version=1, sensors="S2+S1"), "Sentinel-2 bands only"),
        (lambda: _open(good, sensors="S3"), "unknown sensors 'S3'"),
        (lambda: _open(tmp_path / "nowhere"), "not found; download BigEarthNet v2.0"),
    ]
    for call, text in cases:
        with pytest.raises(UsageError, match=text) as e:
            call()
        assert "\n" not in str(e.value)
    shutil.rmtree(folder / "BigEarthNet-S1")
    with pytest.raises(UsageError, match="needs the folder BigEarthNet-S1 in .*extract "
                                         "BigEarthNet-S1.tar.zst .*or read Sentinel-2 alone"):
        _open(folder, sensors="S2+S1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UsageError, match="needs the pyarrow package; install it: pip install "
                                         "pyarrow"):
        _open(folder)
    monkeypatch.undo()
    (folder / METADATA).write_bytes(b"PAR1 not really")
    with pytest.raises(UsageError, match="is not a readable Parquet file"):
        _open(folder)
    (folder / METADATA).unlink()
    with pytest.raises(UsageError, match="no metadata.parquet in .*download it from bigearth.net"):
        _open(folder)


def test_the_cli_refuses_bad_v2_options_with_exit_2(benv2, tmp_path, capsys):
    data, _, _, _ = benv2
    for dataset, text in [("bigearthnet:version=3", "version must be 1"),
                          ("bigearthnet:version=2,labels=43", "19-class nomenclature only"),
                          ("bigearthnet:sensors=S2+S1", "add version=2"),
                          ("bigearthnet:version=2,sensors=S3", "sensors must be S2, S1 or S2+S1")]:
        code = main(["train", "--dataset", dataset, "--data-dir", str(data), "--epochs", "1",
                     "--out", str(tmp_path / "r"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and text in err and "Traceback" not in err, (dataset, err)
        assert not (tmp_path / "r").exists()
    code = main(["train", "--dataset", "bigearthnet:version=2", "--data-dir", str(tmp_path),
                 "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and "no BigEarthNet v2.0 (metadata.parquet)" in capsys.readouterr().err


# --- the cache ----------------------------------------------------------------------------------


def test_the_v2_cache_reopens_without_reading_and_v1_keys_are_unchanged(benv2, tmp_path,
                                                                         monkeypatch):
    from ben_fixture import write_bigearthnet

    _, folder, _, _ = benv2
    ben = _open(folder, sensors="S2+S1", size=20, cache_dir=tmp_path / "c")

    def no_reads(*a, **k):
        raise AssertionError("a cached dataset read a TIFF")

    monkeypatch.setattr(ben_mod, "_read_chunk", no_reads)
    again = _open(folder, sensors="S2+S1", size=20, cache_dir=tmp_path / "c")
    assert again.path == ben.path and again.excluded == ben.excluded and again.version == 2
    assert np.array_equal(again.images, ben.images)
    monkeypatch.undo()
    # The folder names (keys) of v1.0 caches as the reader before v2 computed them.
    write_bigearthnet(tmp_path / "ds", n=6)
    assert _open(tmp_path / "ds", version=1, size=20).path.name == "20px-bilinear-d9ba30fca63d9ce2"
    assert _open(tmp_path / "ds", version=1, size=20, limit=4, seed=3).path.name == \
        "20px-bilinear-n4-b1a9fbf8bf8e1f69"
    write_bigearthnet(tmp_path / "ds2", n=6, splits=False)
    assert _open(tmp_path / "ds2", version=1, size=20).path.name == \
        "20px-bilinear-d4dfdcf484a5a7af"


# --- the sensor shift ---------------------------------------------------------------------------


def test_the_sensor_shift_maps_each_sensor_to_the_same_channels():
    s = parse_shift("sensors:S2|S1", 19)
    assert s.kind == "sensors" and s.num_subsets == 2 and s.shares == (0.5, 0.5)
    assert s.domains == ("bands=B04/B08", "bands=VV/VH")
    assert parse_shift("sensors", 19).domains == s.domains
    assert parse_shift("sensors:S1|S2=B02,B03", 19).domains == ("bands=VV/VH", "bands=B02/B03")
    for text, msg in [("sensors:S2|S2", "two different sensors"),
                      ("sensors:S2", "two different sensors"),
                      ("sensors:S3|S1", "unknown sensor 'S3'"),
                      ("sensors:S2=B02,B03,B04|S1", "see 3/2 bands"),
                      ("sensors:S2=VV,B02|S1", "VV is not a band of S2"),
                      ("sensors:S2|S1=B02,B03", "B02 is not a band of S1")]:
        with pytest.raises(UsageError, match=msg) as e:
            parse_shift(text, 19)
        assert "\n" not in str(e.value)


def test_a_sensor_shift_is_checked_against_the_loaded_sensors_before_reading():
    shape, classes, names = check_spec(DataSpec("bigearthnet:version=2,sensors=S2+S1,size=20",
                                                shift="sensors:S2|S1"))
    assert shape == (14, 20, 20) and classes == 19 and names == ["a", "b"]
    with pytest.raises(UsageError, match="Sentinel-1 band VV is not among this dataset's "
                                         "channels; .*sensors=S2\\+S1"):
        check_spec(DataSpec("bigearthnet:version=2,size=20", shift="sensors:S2|S1"))
    with pytest.raises(UsageError, match="given twice, by the sensors: shift"):
        check_spec(DataSpec("bigearthnet:version=2,sensors=S2+S1", shift="sensors:S2|S1",
                            bands="B02"))


def test_sensor_shift_subsets_see_their_own_sensor_on_real_patches(benv2):
    data, _, _, _ = benv2
    spec = DataSpec("bigearthnet:version=2,sensors=S2+S1,size=20", shift="sensors:S2|S1")
    a, b = prepare_subsets(spec, data)
    assert a.channels == ("B04", "B08") and b.channels == ("VV", "VH")
    assert a.input_shape == b.input_shape == (2, 20, 20)
    # The 6 training patches, split on each one's dominant label: every stratum here holds one
    # patch, and a stratum's odd patch goes to the first subset (5/1).
    assert (len(a.train_y), len(b.train_y)) == (5, 1)
    assert a.task_name == "multilabel" and a.num_classes == 19
    # Globally normalised per band: S1 in dB and S2 reflectance both come out standardised.
    for p in (a, b):
        x = p.train_x if torch.is_tensor(p.train_x) else p.train_x.materialise()
        assert torch.isfinite(x).all() and x.abs().max() < 20


def test_sentinel2_is_read_as_reflectance_and_sentinel1_in_db_in_memory_or_streamed(
        benv2, monkeypatch):
    from modeconn.data import load_dataset

    data, folder, _, _ = benv2
    name = "bigearthnet:version=2,sensors=S2+S1,size=20"
    mem = load_dataset(name, data)
    assert torch.is_tensor(mem.train_x) and mem.channels == BANDS + S1_BANDS
    assert mem.name == "bigearthnet-v2-S2+S1-19" and mem.num_classes == 19
    ben = _open(folder, sensors="S2+S1", size=20)
    rows = np.flatnonzero(ben.split == 0)
    x = torch.from_numpy(np.asarray(ben.images[rows]))
    assert torch.equal(mem.train_x[:, :12], x[:, :12] * 1e-4)  # reflectance
    assert torch.equal(mem.train_x[:, 12:], x[:, 12:])  # dB as distributed
    monkeypatch.setenv("MODECONN_IN_MEMORY_BYTES", "0")  # read batch by batch from the cache
    streamed = load_dataset(name, data)
    assert not torch.is_tensor(streamed.train_x)
    assert torch.equal(streamed.train_x[0:len(rows)], mem.train_x)
    assert torch.equal(streamed.train_x.select_channels([3, 12]).materialise(),
                       mem.train_x[:, [3, 12]])


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("shift", ["bands:B04,B03,B02|B08,B11,B12", "sensors:S2|S1"])
def test_an_lmc_study_runs_end_to_end_on_real_patches(benv2, tmp_path, capsys, shift):
    """The band-shift and sensor-shift studies of examples/lmc-bigearthnet-v2.toml, shortened:
    they run and measure (their numbers, at full length, are in benchmarks/RESULTS.md)."""
    import csv
    import math

    data, _, _, _ = benv2
    out = tmp_path / "lmc"
    assert main(["lmc", "--dataset", "bigearthnet:version=2,sensors=S2+S1,size=20",
                 "--data-dir", str(data), "--model", "vgglike", "--width", "0.125", "--norm",
                 "none", "--shift", shift, "--optimizer", "adam", "--batch-sizes", "2", "--lrs",
                 "1e-3", "--epochs", "2", "--seeds", "0", "--points", "3", "--batch-order", "same",
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    (row,) = list(csv.DictReader((out / "summary.csv").open()))
    assert row["shift"] == shift and row["seeds_ok"] == "1"
    for key in ("test_loss_barrier", "test_error_barrier", "lmc_ens_f1"):
        assert math.isfinite(float(row[key])), key
    assert any((out / "figures").glob("interpolation_*.png"))


@pytest.mark.slow
def test_lmc_evaluates_a_sensor_shift_through_each_sensor_with_views_both(benv2, tmp_path):
    """`views=both`: each path also through subset b's channels (splits train@b, test@b), its
    end B scoring as `interpolate` scores B through its own sensor; refused without a band or
    sensor shift."""
    import csv

    from modeconn import jobs
    from modeconn.options import ConfigError

    data, _, _, _ = benv2
    common = dict(dataset="bigearthnet:version=2,sensors=S2+S1,size=20", data_dir=str(data),
                  model="vgglike", width=0.125, norm="none", optimizer="adam", batch_size=2,
                  lr=1e-3, epochs=1, seeds=[0], points=3, init=["same"], batch_order=["same"],
                  quiet=True)
    r = jobs.run("lmc", out=tmp_path / "lmc", shift="sensors:S2|S1", views="both", **common)
    paths = list(csv.DictReader((r.out / "paths.csv").open()))
    assert {p["split"] for p in paths} == {"train", "test", "train@b", "test@b"}
    bars = list(csv.DictReader((r.out / "barriers.csv").open()))
    assert {b["split"] for b in bars} == {"train", "test", "train@b", "test@b"}
    (run,) = (r.out / "jobs").glob("lmc-*/out/runs/*")
    a, b = (run / "seed0" / m / "model.safetensors" for m in ("a", "b"))
    through_b = jobs.run("interpolate", out=tmp_path / "ba", a=str(b), b=str(a), points=3,
                         data_dir=str(data))
    rows = list(csv.DictReader((through_b.out / "path.csv").open()))
    own = next(float(x["loss"]) for x in rows if x["split"] == "test" and float(x["t"]) == 0)
    end = next(float(p["loss"]) for p in paths if p["split"] == "test@b" and float(p["t"]) == 1)
    assert end == pytest.approx(own, rel=1e-5)
    with pytest.raises(ConfigError, match="'views' of lmc must be a unless the subsets see"):
        jobs.run("lmc", out=tmp_path / "iid", shift="iid:50,50", views="both", **common)

"""Benchmark: building the BigEarthNet cache (`open_bigearthnet`, 1 and 2 worker processes) against
a straightforward reader that loops over patches and bands (tifffile.imread, the same resampling,
json.load, stacking into a list), on a synthetic folder in the distributed layout; then the
cache's reopen time. Both read the same files from the page cache (just written).

    python benchmarks/bigearthnet_read.py [--patches 400] [--size 120] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ben_fixture import write_bigearthnet  # noqa: E402

from modeconn.data.bigearthnet import (  # noqa: E402
    BAND_SIZE,
    BANDS,
    LABELS_43,
    open_bigearthnet,
    resample_band,
)


def plain_reader(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One file at a time: the loop a first BigEarthNet reader is written as."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    images, labels = [], []
    for name in names:
        bands = []
        for band in BANDS:
            a = tifffile.imread(root / name / f"{name}_{band}.tif")
            bands.append(a if BAND_SIZE[band] == size else resample_band(a, size, "bilinear"))
        images.append(np.stack(bands))
        with open(root / name / f"{name}_labels_metadata.json") as f:
            meta = json.load(f)
        hot = np.zeros(len(LABELS_43), np.uint8)
        hot[[LABELS_43.index(x) for x in meta["labels"]]] = 1
        labels.append(hot)
    return np.stack(images), np.stack(labels), names


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=400)
    ap.add_argument("--size", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after the cold one")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ben-bench-"))
    try:
        root = tmp / "BigEarthNet-v1.0"
        t = time.perf_counter()
        write_bigearthnet(root, n=args.patches, splits=False)
        print(f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.2f}; "
              f"{args.patches} patches written in {time.perf_counter() - t:.1f} s; size {args.size}")

        def ours(workers: int, tag: str) -> float:
            t = time.perf_counter()
            ben = open_bigearthnet(root, size=args.size, workers=workers, quiet=True,
                                   cache_dir=tmp / f"cache-{workers}-{tag}")
            dt = time.perf_counter() - t
            assert np.array_equal(ben.images, ref_x) and np.array_equal(ben.labels, ref_y)
            return dt

        t = time.perf_counter()
        ref_x, ref_y, _ = plain_reader(root, args.size)
        cold_plain = time.perf_counter() - t
        cold = {w: ours(w, "cold") for w in (1, 2)}  # 2: the first pool starts the forkserver
        times: dict[str, list[float]] = {"plain": [], "w1": [], "w2": []}
        for r in range(args.rounds):  # interleaved
            t = time.perf_counter()
            plain_reader(root, args.size)
            times["plain"].append(time.perf_counter() - t)
            times["w1"].append(ours(1, str(r)))
            times["w2"].append(ours(2, str(r)))
        best = {k: min(v) for k, v in times.items()}
        rate = {k: args.patches / v for k, v in best.items()}
        print(f"cold (first call in the process): plain {args.patches / cold_plain:.0f} patches/s, "
              f"ours w1 {args.patches / cold[1]:.0f}, w2 {args.patches / cold[2]:.0f} "
              f"(w2 includes starting the forkserver: {cold[2]:.2f} s)")
        print(f"best of {args.rounds}: plain {rate['plain']:.0f} patches/s, ours w1 {rate['w1']:.0f} "
              f"({rate['w1'] / rate['plain']:.2f}×), w2 {rate['w2']:.0f} "
              f"({rate['w2'] / rate['plain']:.2f}×; {rate['w2'] / rate['w1']:.2f}× w1)")
        reopen = []
        for _ in range(20):
            t = time.perf_counter()
            open_bigearthnet(root, size=args.size, workers=1, quiet=True,
                             cache_dir=tmp / "cache-1-cold")
            reopen.append(time.perf_counter() - t)
        print(f"reopen: median {statistics.median(reopen) * 1e3:.1f} ms, max {max(reopen) * 1e3:.1f} ms"
              f" ({args.patches} patches, {ref_x.nbytes / 2**20:.0f} MiB of images)")
        print(f"load after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark: the loss plane through three models on a 21×21 grid with BatchNorm re-estimated at
every point, evaluated on train and test, through modeconn (`landscape.loss_plane` on the
`Evaluator`) against the reference research repositories' loop (per point: deepcopy,
load_state_dict, swa_utils.update_bn and evaluation through a DataLoader over the per-sample PIL
dataset, `reference.reference_point`). Both evaluate the same plane points; the results agree up
to BatchNorm statistics averaged over batches of 128 (reference) or fewer, larger batches.

The reference costs the same at every grid point, so by default it runs on `--ref-points` points
spread over the grid (half before modeconn's run, half after) and its full-grid time is that
per-point time × n²; `--ref-points 0` runs it on the whole grid.

    python benchmarks/landscape.py [--quick] [--only mlp|resnet] [--ref-points K]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference import matmul_peak, reference_point, synthetic_images, timed  # noqa: E402

from modeconn.evaluate import Evaluator, flops_per_sample  # noqa: E402
from modeconn.models import model_config  # noqa: E402
from modeconn.paths.landscape import loss_plane, plane  # noqa: E402
from modeconn.train import init_model  # noqa: E402

# (name, model options, training samples, test samples): sized so that the reference loop over the
# full grid takes minutes, not hours, on two CPU cores.
CASES = (("mlp", {"widths": [512, 512], "bn": True}, 1000, 500),
         ("resnet8", {"width": 0.5}, 250, 250))


def reference_plane(model, pl, grid, indices, train_loader, test_loader):
    """The reference loop over the grid points at `indices` (rows of y outermost, as `loss_plane`
    orders them): (seconds, rows)."""
    xs, ys = grid
    t0 = time.perf_counter()
    rows = [reference_point(model, pl.point(xs[i % len(xs)], ys[i // len(xs)]), train_loader,
                            test_loader) for i in indices]
    return time.perf_counter() - t0, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 5×5 grid (a smoke run)")
    ap.add_argument("--grid", type=int, default=None, help="points per axis (default 21)")
    ap.add_argument("--only", choices=["mlp", "resnet"], default=None)
    ap.add_argument("--ref-points", type=int, default=21,
                    help="grid points the reference runs on (0: all)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the reference's batches too)")
    args = ap.parse_args()
    n = args.grid or (5 if args.quick else 21)
    dev = torch.device(args.device)
    peak = matmul_peak(device=args.device)
    print(f"# matmul peak {peak:.0f} GFLOP/s on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; "
          f"{n}x{n} grid over [-0.2, 1.2]^2, "
          "BatchNorm re-estimated per point", flush=True)
    print(f"{'model':8s} {'params':>9s} {'train/test':>10s} {'ref points':>10s} {'reference s':>12s} "
          f"{'modeconn s':>11s} {'ratio':>6s} {'GFLOP/s':>8s} {'max |dloss|':>11s}")
    for name, opts, ntr, nte in CASES:
        if args.only and not name.startswith(args.only):
            continue
        cfg = model_config(name, (1, 28, 28), 10, **opts)
        model = init_model(cfg, 0).to(dev)
        w = [init_model(cfg, s).to(dev).state_dict() for s in range(3)]
        pl = plane(*w)
        data = synthetic_images(ntr, nte)
        splits = {"train": (data.train_x.to(dev), data.train_y.to(dev)),
                  "test": (data.test_x.to(dev), data.test_y.to(dev))}
        loaders = data.loaders(ntr)
        k = n * n if args.ref_points <= 0 else min(args.ref_points, n * n)
        indices = [round(i * (n * n - 1) / max(k - 1, 1)) for i in range(k)]
        rows: list[dict] = []

        def ours() -> None:
            rows[:] = loss_plane(pl, Evaluator(model, splits, bn_data=splits["train"][0]), n)

        t1, ref = reference_plane(model, pl, pl.grid(n), indices[::2], *loaders)
        t_ours = timed(ours)  # between the reference's two halves: interleaved in time
        t2, ref2 = reference_plane(model, pl, pl.grid(n), indices[1::2], *loaders)
        t_ref = (t1 + t2) / k * n * n
        by_index = dict(zip(indices[::2] + indices[1::2], ref + ref2))
        diff = max(abs(rows[2 * i + j]["loss"] - by_index[i][s][0]) / max(1.0, by_index[i][s][0])
                   for i in indices for j, s in enumerate(("train", "test")))
        # Per point: one BatchNorm pass over train, then evaluation of train and test.
        work = n * n * flops_per_sample(model, splits["train"][0][:2]) * (2 * ntr + nte)
        print(f"{name:8s} {sum(v.numel() for v in model.parameters()):9,d} {f'{ntr}/{nte}':>10s} "
              f"{k:10d} {t_ref:12.1f} {t_ours:11.1f} {t_ref / t_ours:5.1f}x {work / t_ours / 1e9:8.1f} "
              f"{diff:11.1e}", flush=True)
    print(f"reference s = its seconds per point over 'ref points' points x {n * n}; ratio = "
          f"reference / modeconn (target >= 3x);\nGFLOP/s of modeconn on the forward FLOPs both do; "
          f"max |dloss| relative, at the reference's points; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

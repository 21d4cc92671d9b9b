"""Benchmark: a 25-point linear interpolation with BatchNorm re-estimation, evaluated on train and
test, through modeconn's evaluation engine against the reference research repositories' loop
(per point: deepcopy, load_state_dict, swa_utils.update_bn and evaluation through a DataLoader
over the per-sample PIL dataset).

    python benchmarks/interpolation.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference import matmul_peak, reference_point, synthetic_images, timed  # noqa: E402

from modeconn.evaluate import flops_per_sample  # noqa: E402
from modeconn.models import build_model, model_config  # noqa: E402
from modeconn.paths import interpolate, linear_path  # noqa: E402


def reference_interpolation(model, a, b, train_loader, test_loader, points):
    """The reference loop: a deep copy per point, update_bn and DataLoader evaluation."""
    path = linear_path(a, b)
    return [reference_point(model, path.point(i / (points - 1)), train_loader, test_loader)
            for i in range(points)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the reference's batches too)")
    args = ap.parse_args()
    n_train, n_test = (2000, 500) if args.quick else (10000, 2000)
    points = 5 if args.quick else 25
    data = synthetic_images(n_train, n_test)
    dev = torch.device(args.device)
    xtr, xte, ytr, yte = (t.to(dev) for t in (data.train_x, data.test_x, data.train_y, data.test_y))
    peak = matmul_peak(device=args.device)
    print(f"matmul peak {peak:.0f} GFLOP/s on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, opts in (("mlp", {"widths": [512, 512], "bn": True}),
                       ("resnet20", {"width": 1.0}) if not args.quick else ("resnet8", {})):
        cfg = model_config(name, (1, 28, 28), 10, **opts)
        torch.manual_seed(0)
        model = build_model(cfg).to(dev)
        a = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(1)
        b = build_model(cfg).to(dev).state_dict()
        pts = points if name == "mlp" else max(3, points // 5)
        ntr = n_train if name == "mlp" else n_train // 5
        loaders = data.loaders(ntr)
        t_ref = timed(lambda: reference_interpolation(model, a, b, *loaders, pts))
        splits = {"train": (xtr[:ntr], ytr[:ntr]), "test": (xte, yte)}
        t_ours = timed(lambda: interpolate(model, a, b, splits, bn_data=xtr[:ntr], points=pts),
                       repeats=2)
        fl = flops_per_sample(model, xtr[:2])
        # Per point: one BN pass over train, then eval over train and test.
        work = pts * fl * (2 * ntr + len(yte))
        print(f"{name:<9} {pts} points, {ntr} train / {len(yte)} test: reference {t_ref:6.2f} s, "
              f"modeconn {t_ours:6.2f} s, ratio {t_ref / t_ours:4.1f}x, "
              f"{work / t_ours / 1e9:5.1f} GFLOP/s ({100 * work / t_ours / 1e9 / peak:.0f}% of peak)")


if __name__ == "__main__":
    main()

"""Where the evaluation engine's time goes on the MLP interpolation of `interpolation.py`
(784-512-512-10 + BatchNorm, 25 points, BN re-estimated on 10,000 training samples, then loss and
accuracy on those 10,000 and on 2,000 test samples), stage by stage, against the machine's matmul
peak and against the same GEMMs run bare (the lower bound of this work on this machine) —
before (points per chunk by the 1.5 GB memory budget alone, as the engine planned them until
the working set was measured) and after (`tuning`'s measured working set), in one process.

    python benchmarks/eval_breakdown.py [--points 25] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference import matmul_peak, synthetic_images, timed  # noqa: E402

from modeconn import tuning  # noqa: E402
from modeconn.evaluate import Evaluator, flops_per_sample  # noqa: E402
from modeconn.models import build_model, model_config  # noqa: E402
from modeconn.paths import grid, linear_path  # noqa: E402


def stages(ev: Evaluator, points: list) -> dict[str, float]:
    """Seconds per stage of one `ev.evaluate(points)`, chunk by chunk as the engine runs it."""
    out = dict.fromkeys(("stack", "bn pass", "forward", "metrics"), 0.0)
    with torch.no_grad():
        for chunk in ev._chunks(points):
            t = time.perf_counter()
            batched, shared = ev._split_state(ev.stack(chunk))
            use_vmap = ev.method == "vmap" or (ev.method == "auto" and ev._vmap_ok(batched, shared))
            out["stack"] += time.perf_counter() - t
            t = time.perf_counter()
            if ev.bn_reset:
                ev._reestimate_bn(batched, shared, use_vmap)
            out["bn pass"] += time.perf_counter() - t
            for x, y in ev.splits.values():
                totals = None
                for i in range(0, len(x), ev.batch_size):
                    t = time.perf_counter()
                    o = ev._forward(batched, shared, x[i:i + ev.batch_size], use_vmap)
                    out["forward"] += time.perf_counter() - t
                    t = time.perf_counter()
                    totals = ev.task.accumulate(totals, ev.task.stacked_totals(
                        o, y[i:i + ev.batch_size]))
                    out["metrics"] += time.perf_counter() - t
                t = time.perf_counter()
                for j in range(len(chunk)):
                    ev.task.metrics({k: v[j] for k, v in totals.items()}, len(x))
                out["metrics"] += time.perf_counter() - t
    return out


def bare_gemms(widths: list[int], n: int, points: int, batch: int) -> float:
    """The same matrix products as the forward passes, as plain `torch.mm` per point and batch."""
    xs = [torch.randn(batch, d) for d in widths[:-1]]
    ws = [torch.randn(o, d) for d, o in zip(widths[:-1], widths[1:])]
    t = time.perf_counter()
    for _ in range(points):
        for _ in range(0, n, batch):
            for x, w in zip(xs, ws):
                torch.mm(x, w.t())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=25)
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = synthetic_images(args.train, args.test)
    cfg = model_config("mlp", (1, 28, 28), 10, widths=[512, 512], bn=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    b = build_model(cfg).state_dict()
    points = linear_path(a, b).points(grid(args.points))
    points = [dict(p) for p in points]
    splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    peak = matmul_peak()
    fl = flops_per_sample(model, data.train_x[:2])
    work = args.points * fl * (2 * args.train + args.test)  # BN pass + train + test
    measured = tuning.choice("eval_working_set")
    plans = {}
    for label, ws in (("before", 1 << 62), ("after", measured)):
        tuning._SESSION["eval_working_set"] = ws
        plans[label] = Evaluator(model, splits, bn_data=data.train_x)
    tuning._SESSION["eval_working_set"] = measured
    print(f"matmul peak {peak:.0f} GFLOP/s, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; engine batch {plans['after'].batch_size}; points "
          f"per chunk {plans['before'].points_per_chunk} before, "
          f"{plans['after'].points_per_chunk} after (working set {measured / 2**20:.0f} MiB)")
    totals = {k: math.inf for k in plans}
    parts = {}
    for _ in range(args.repeats):  # interleaved rounds, best of each
        for label, ev in plans.items():
            totals[label] = min(totals[label], timed(lambda ev=ev: ev.evaluate(points)))
            p = stages(ev, points)
            if label not in parts or sum(p.values()) < sum(parts[label].values()):
                parts[label] = p
    bare = timed(lambda: bare_gemms([784, 512, 512, 10], 2 * args.train + args.test, args.points,
                                   plans["after"].batch_size), args.repeats)
    for label, total in totals.items():
        print(f"{label}: evaluate {total:.2f} s = {work / total / 1e9:.0f} GFLOP/s "
              f"({100 * work / total / 1e9 / peak:.0f}% of peak)")
        for k, v in parts[label].items():
            print(f"  {k:<8} {v:6.2f} s ({100 * v / sum(parts[label].values()):4.1f}%)")
    print(f"after / before: {totals['before'] / totals['after']:.2f}x faster")
    print(f"bare GEMMs of the same work: {bare:.2f} s = {work / bare / 1e9:.0f} GFLOP/s "
          f"({100 * work / bare / 1e9 / peak:.0f}% of peak)")


if __name__ == "__main__":
    main()

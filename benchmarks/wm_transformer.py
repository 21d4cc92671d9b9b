"""Weight matching of two Vision Transformers beside an MLP of the same parameter count.

Two independently initialised 6-block ViTs (width 192, 4 heads, patch 7, 1×28×28 inputs: the
residual stream, each attention layer's heads with their two within-head permutations, each MLP's
hidden units) and two MLPs with 6 hidden layers whose width is chosen so that the parameter
counts agree within 2%, each aligned by `modeconn.align.weight_matching`. The permutation spec
is derived once per architecture (its derivation, fx trace and random-permutation check, timed
and printed separately, best of --repeats) and passed in; the weight matching itself is the best
of --repeats runs, with its passes over all groups (WeightMatcher.passes) and the time per pass.

There is no reference implementation of weight matching for transformers (Git Re-Basin's code
and its ports handle MLPs and CNNs; Verma & Elbayad 2024 publish no standalone matcher), so the
baseline here is the MLP of equal size through the same code: the ratio says what the
transformer's structure (one residual permutation shared by every block, head-structured groups
solved in two levels) costs over plain layer-by-layer matching. A fraction of the machine's
peak is not meaningful here: the time is LAP solves and small matrix products.

Run: PYTHONPATH=src python benchmarks/wm_transformer.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
from threadpoolctl import threadpool_limits
from train_throughput import cpu_model

from modeconn.align import WeightMatcher, auto_spec, weight_matching
from modeconn.models import build_model, model_config

SHAPE = (1, 28, 28)


def pair(name: str, **overrides: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    cfg = model_config(name, SHAPE, 10, **overrides)
    torch.manual_seed(0)
    a = build_model(cfg).eval()
    torch.manual_seed(1)
    b = build_model(cfg).eval()
    return a, b


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mlp_width(target: int, depth: int) -> int:
    """The hidden width of a `depth`-layer MLP whose parameter count is nearest `target`."""
    def n(w: int) -> int:
        return count(build_model(model_config("mlp", SHAPE, 10, depth=depth, width=w)))
    lo, hi = 1, 4096
    while lo < hi:  # the count grows with the width
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if n(mid) < target else (lo, mid)
    return min((lo - 1, lo), key=lambda w: abs(n(w) - target))


def bench(label: str, a: torch.nn.Module, b: torch.nn.Module, repeats: int) -> float:
    t_spec = float("inf")
    for _ in range(repeats):  # the fx trace and the random-permutation check included
        t0 = time.perf_counter()
        spec = auto_spec(a, torch.randn(2, *SHAPE))
        t_spec = min(t_spec, time.perf_counter() - t0)
    sa, sb = a.state_dict(), b.state_dict()
    best, perm = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        perm = weight_matching(sa, sb, spec=spec)
        best = min(best, time.perf_counter() - t0)
    matcher = WeightMatcher(spec)  # the same call again, for its pass count
    again = matcher(sa, sb)
    assert all(torch.equal(again[p], perm[p]) for p in spec.sizes)
    first = spec.names[0]  # the ViT's residual stream, the MLP's first hidden layer
    moved = int((perm[first] != torch.arange(spec.sizes[first])).sum())
    print(f"{label:<30} {count(a) / 1e6:6.3f}M params  {len(spec.sizes):3d} permutations  "
          f"spec {t_spec:5.2f} s  WM {best:6.3f} s (best of {repeats}), {matcher.passes} passes, "
          f"{1e3 * best / matcher.passes:5.1f} ms/pass  ({moved}/{spec.sizes[first]} units of "
          f"{first} moved)")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/BLAS threads (1: stable timings on a shared machine)")
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    print(f"# {cpu_model()}, {os.cpu_count()} cores, {args.threads} thread(s), torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    print("# no reference implementation of transformer weight matching exists to compare with; "
          "the baseline is an MLP of the same parameter count through the same code")
    va, vb = pair("vit", width=args.width, depth=args.depth, heads=args.heads, patch=7)
    target = count(va)
    w = mlp_width(target, args.depth)
    ma, mb = pair("mlp", depth=args.depth, width=w)
    diff = 100 * (count(ma) - target) / target
    t_vit = bench(f"ViT w{args.width} d{args.depth} h{args.heads} p7", va, vb, args.repeats)
    t_mlp = bench(f"MLP {args.depth}×{w} ({diff:+.1f}% params)", ma, mb, args.repeats)
    print(f"ratio ViT / MLP weight matching: {t_vit / t_mlp:.2f}×")


if __name__ == "__main__":
    main()

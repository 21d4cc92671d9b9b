"""OT fusion of MLPHuge (784-1024-512-256-10, no biases): our fusion against POT's bare
`ot.emd` on the same cost matrices (the overhead of our wrapping), and against a
reference-style implementation (the otfusion way: a Python loop over the layers, NumPy cost
matrices by broadcasting, ot.emd, the correction and the average), in one process.

    python benchmarks/ot_fusion.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ot
import torch
from train_throughput import cpu_model

from modeconn.merge.ot import ot_fusion
from modeconn.models import build_model, model_config


def reference_style(wa: list[np.ndarray], wb: list[np.ndarray]) -> list[np.ndarray]:
    """The otfusion loop over layers (weights cost, uniform marginals, exact EMD, past
    correction), on NumPy arrays."""
    fused, t_prev = [], None
    for i, (a, b) in enumerate(zip(wa, wb)):
        aligned = a if t_prev is None else a @ t_prev
        if i == len(wa) - 1:  # the output layer is not transported
            fused.append((aligned + b) / 2)
            break
        cost = ((aligned[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        mu = np.full(a.shape[0], 1 / a.shape[0])
        nu = np.full(b.shape[0], 1 / b.shape[0])
        t = ot.emd(mu, nu, cost)
        t_var = t * b.shape[0]  # diag(1/β) with β uniform
        fused.append((t_var.T @ aligned + b) / 2)
        t_prev = t_var
    return fused


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = model_config("mlphuge", (1, 28, 28), 10)
    torch.manual_seed(0)
    ma = build_model(cfg)
    torch.manual_seed(1)
    mb = build_model(cfg)
    a, b = ma.state_dict(), mb.state_dict()
    x = torch.randn(2, 1, 28, 28)
    print(f"# {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"POT {ot.__version__}; MLPHuge 784-1024-512-256-10, no biases")

    emd_times: list[float] = []
    real_emd = ot.emd

    def timed_emd(*a_, **k):
        t0 = time.perf_counter()
        out = real_emd(*a_, **k)
        emd_times.append(time.perf_counter() - t0)
        return out

    ours, emds = [], []
    ot.emd = timed_emd
    try:
        for _ in range(args.repeats):
            emd_times.clear()
            t0 = time.perf_counter()
            res = ot_fusion(ma, a, mb, b, x)
            ours.append(time.perf_counter() - t0)
            emds.append(list(emd_times))
    finally:
        ot.emd = real_emd
    best = int(np.argmin(ours))
    total, layer_emd = ours[best], emds[best]
    # the bare solver again on the very cost matrices, outside our code
    wa = [a[k].double().numpy() for k in a if k.endswith("weight")]
    wb = [b[k].double().numpy() for k in b if k.endswith("weight")]
    print(f"ours: {total:.3f} s for {len(layer_emd)} transport plans; ot.emd inside it: "
          f"{sum(layer_emd):.3f} s ({', '.join(f'{t:.3f}' for t in layer_emd)} per layer); "
          f"our wrapping (costs, maps, average, checks): {total - sum(layer_emd):.3f} s = "
          f"{100 * (total - sum(layer_emd)) / sum(layer_emd):.1f}% over the bare solver")
    refs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fused_ref = reference_style(wa, wb)
        refs.append(time.perf_counter() - t0)
    ref = min(refs)
    ours_w = [res.params[k].double().numpy() for k in res.params if k.endswith("weight")]
    agree = max(float(np.abs(u - v).max()) for u, v in zip(ours_w, fused_ref))
    print(f"reference-style loop (NumPy broadcasting costs): {ref:.3f} s → ours is "
          f"{ref / total:.2f}× faster; largest difference of the fused weights {agree:.2e}")


if __name__ == "__main__":
    main()

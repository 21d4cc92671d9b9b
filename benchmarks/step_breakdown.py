"""Where one training step of the MLP 3×512 goes at small batches (the `train_throughput.py`
rows below their %-of-peak target): gathering the batch, forward + loss, backward, the optimizer's
update, and the same step's matrix products run bare (forward, input and weight gradients as
`torch.mm`: what the hardware allows at these shapes), against the fp32 matmul peak.

    python benchmarks/step_breakdown.py [--batches 32,512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from reference import matmul_peak  # noqa: E402

from modeconn.models import build_model, model_config  # noqa: E402
from modeconn.train import TrainConfig, make_optimizer  # noqa: E402

STEPS = 200


def per_step(fn) -> float:
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(STEPS):
            fn()
        best = min(best, (time.perf_counter() - t) / STEPS)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="32,512")
    args = ap.parse_args()
    peak = matmul_peak()
    print(f"matmul peak {peak:.0f} GFLOP/s, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ms per step")
    for shape in ((1, 28, 28), (3, 32, 32)):
        for batch in (int(b) for b in args.batches.split(",")):
            torch.manual_seed(0)
            model = build_model(model_config("mlp", shape, 10))
            opt = make_optimizer(model.parameters(), TrainConfig(lr=0.01))
            x = torch.randn(8192, *shape)
            y = torch.randint(0, 10, (8192,))
            idx = torch.randperm(8192)[:batch]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            dims = [x[0].numel(), 512, 512, 512, 10]
            flops = sum(3 * 2 * batch * a * b for a, b in zip(dims[:-1], dims[1:]))

            def forward():
                return F.cross_entropy(model(xb), yb)

            def fwd_bwd():
                opt.zero_grad(set_to_none=True)
                forward().backward()

            fwd_bwd()
            parts = {
                "gather": per_step(lambda: (x.index_select(0, idx), y.index_select(0, idx))),
                "forward+loss": per_step(lambda: forward().detach()),
                "backward": per_step(fwd_bwd) - per_step(lambda: forward().detach()),
                "optimizer": per_step(opt.step),
            }
            acts = [torch.randn(batch, d) for d in dims]
            ws = [torch.randn(b, a) for a, b in zip(dims[:-1], dims[1:])]

            def bare():
                for a, w, g in zip(acts[:-1], ws, acts[1:]):
                    torch.mm(a, w.t())  # forward
                    torch.mm(g, w)  # input gradient
                    torch.mm(g.t(), a)  # weight gradient

            t_bare = per_step(bare)
            total = sum(parts.values())
            print(f"{'x'.join(map(str, shape)):<8} batch {batch:3d}: "
                  + ", ".join(f"{k} {1e3 * v:.3f}" for k, v in parts.items())
                  + f" = {1e3 * total:.3f} ms ({flops / total / 1e9:.0f} GFLOP/s, "
                  f"{100 * flops / total / 1e9 / peak:.0f}% of peak); its matrix products "
                  f"alone {1e3 * t_bare:.3f} ms ({100 * flops / t_bare / 1e9 / peak:.0f}% of "
                  f"peak); the optimizer is {100 * parts['optimizer'] / total:.0f}% of the step")


if __name__ == "__main__":
    main()

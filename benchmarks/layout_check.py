"""Which fp32 convolution kernels are right: forward, weight gradient and input gradient of
single 2-D convolutions in NCHW and channels-last layout against float64, over a grid of layer
shapes, on the oneDNN kernels this process runs (choose them with ONEDNN_MAX_CPU_ISA, threads with
OMP_NUM_THREADS). The evidence behind `modeconn.evaluate.channels_last_gradients_safe`.

    ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2 python benchmarks/layout_check.py
    python benchmarks/layout_check.py --grid large

A kernel that corrupts memory may abort this process: run one configuration per process.
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch
import torch.nn.functional as F

GRIDS = {  # (cin, cout, kernel, stride, map size)
    "small": ((1, 2, 3, 4, 5, 8, 16), (4, 8, 16), (1, 3), (1, 2), (8, 4)),
    "large": ((3, 6, 7, 16, 32, 64), (16, 32, 64), (1, 3), (1, 2), (32, 16)),
    "tiny-maps": ((3, 8, 16, 32, 64), (16, 32, 64), (1, 3), (1, 2), (3, 2, 1)),
}


def run(x: torch.Tensor, w: torch.Tensor, stride: int, pad: int, seed: int = 1):
    """Output, weight gradient and input gradient of one convolution (inputs' layout kept)."""
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = F.conv2d(x, w, None, stride, pad)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out.backward(g.to(out.dtype).contiguous(memory_format=torch.channels_last)
                 if not x.is_contiguous() else g.to(out.dtype))
    return out.detach().double(), w.grad.double(), x.grad.double()


def check(grid: str, batch: int = 32, tol: float = 1e-4) -> list[tuple]:
    """(layout, quantity, cin, cout, k, stride, H, relative error) of every case off by > tol."""
    torch.manual_seed(0)
    bad = []
    for cin, cout, k, s, h in itertools.product(*GRIDS[grid]):
        x = torch.randn(batch, cin, h, h, dtype=torch.float64)
        w = torch.randn(cout, cin, k, k, dtype=torch.float64)
        ref = run(x, w, s, (k - 1) // 2)
        for layout in ("nchw", "channels-last"):
            xf, wf = x.float(), w.float()
            if layout == "channels-last":
                xf = xf.contiguous(memory_format=torch.channels_last)
                wf = wf.contiguous(memory_format=torch.channels_last)
            for name, got, want in zip(("forward", "weight grad", "input grad"),
                                       run(xf, wf, s, (k - 1) // 2), ref):
                err = float((got - want).abs().max() / (want.abs().max() + 1e-12))
                if err > tol:
                    bad.append((layout, name, cin, cout, k, s, h, err))
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), default="small")
    args = ap.parse_args()
    cases = len(list(itertools.product(*GRIDS[args.grid]))) * 2
    print(f"# oneDNN ISA limit {os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}, ATen "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"grid {args.grid}: {cases} layer/layout cases", flush=True)
    bad = check(args.grid)
    for layout, name, cin, cout, k, s, h, err in bad:
        print(f"  off: {layout} {name} cin={cin} cout={cout} k={k} stride={s} H={h}  "
              f"relative error {err:.3g}")
    print(f"{len(bad)} of {cases} cases off by more than 1e-4 of their size")


if __name__ == "__main__":
    main()

"""Curve-fitting step against a plain training step of the same model.

Both run in this one process, on the same model, data, batch and optimizer (SGD, momentum 0.9,
weight decay 5e-4):

* plain: `modeconn.train.Stepper.step`, the training loop's step: gather the batch, forward,
  cross-entropy, backward, fused SGD step (weight decay in the optimizer).
* curve: `modeconn.paths.curves.CurveTrainer.step`, the step `fit_curve` runs on a Bezier curve with
  3 bends: draw t, form θ(t) from the flat bends, forward through `functional_call`,
  cross-entropy, backward into the middle bend (with the L2 term on θ(t)), SGD step.

Seconds per step are the best of several interleaved rounds (alternating order); the load that
other processes put on the machine meanwhile is printed. Target: curve ≤ 1.3× plain at batch 128.

    python benchmarks/curve_step.py [--quick] [--only mlp,128]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import (  # noqa: E402
    LR,
    MOMENTUM,
    SHAPES,
    WEIGHT_DECAY,
    Case,
    OtherLoad,
    cpu_model,
    make_data,
    time_interleaved,
)

from modeconn.evaluate import prefers_channels_last  # noqa: E402
from modeconn.models import has_batchnorm, model_config  # noqa: E402
from modeconn.paths.curves import Curve, CurveTrainer  # noqa: E402
from modeconn.train import Stepper, TrainConfig, init_model, make_optimizer  # noqa: E402

CFG = TrainConfig(optimizer="sgd", lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def cases(quick: bool) -> list[Case]:
    """MLP 3×512 and ResNet-20 on MNIST-shaped data at batch 128 (the curve papers') and 32."""
    out = []
    for model in ("mlp", "resnet20"):
        for batch in (128, 32):
            warmup, steps = ((5, 40) if batch == 32 else (3, 20)) if model == "mlp" else (1, 3)
            if quick:
                warmup, steps = 1, max(1, steps // 5)
            out.append(Case(model, "mnist", batch, warmup, steps))
    return out


class Loop:
    """`steps` steps of `step_fn` over a random order of the in-memory data."""

    def __init__(self, step_fn, n: int, batch: int):
        self.step_fn, self.n, self.batch = step_fn, n, batch
        self.gen = torch.Generator().manual_seed(1)

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps, reading each loss back as the training loops do."""
        import time

        need = steps * self.batch
        order = torch.cat([torch.randperm(self.n, generator=self.gen)
                           for _ in range(math.ceil(need / self.n))])[:need]
        t = time.perf_counter()
        for s in range(steps):
            loss = float(self.step_fn(order[s * self.batch:(s + 1) * self.batch]))
            if not math.isfinite(loss):
                raise RuntimeError("diverged")
        return time.perf_counter() - t

    def close(self) -> None:
        """Nothing to release."""


def run_case(case: Case, rounds: int) -> dict:
    load = OtherLoad()
    shape = SHAPES[case.data]
    data = make_data(shape, max(4096, (case.warmup + case.steps) * case.batch))
    cfg = model_config(case.model, shape, 10)
    a, b = init_model(cfg, seed=0), init_model(cfg, seed=1)
    plain_model = copy.deepcopy(a).train()
    stepper = Stepper(plain_model, make_optimizer(plain_model.parameters(), CFG), data.x, data.y,
                      case.batch, drop_single=has_batchnorm(plain_model))
    curve_model = copy.deepcopy(a).train()
    curve = Curve(curve_model, a.state_dict(), b.state_dict(), "bezier", 3,
                  channels_last=prefers_channels_last(curve_model, data.x, gradients=True))
    trainer = CurveTrainer(curve_model, curve, data.x, data.y, CFG)
    n = len(data.y)
    best = time_interleaved({"plain": Loop(stepper.step, n, case.batch),
                             "curve": Loop(trainer.step, n, case.batch)}, case, rounds)
    per_step = {k: v / case.steps for k, v in best.items()}
    return {"model": case.model, "shape": "x".join(map(str, shape)), "batch": case.batch,
            "params": sum(p.numel() for p in a.parameters()), "ms": {k: 1e3 * v for k, v in
                                                                     per_step.items()},
            "ratio": per_step["curve"] / per_step["plain"], "other_load_cores": load.cores()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, one round")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7 MLP, 2 ResNet)")
    p.add_argument("--only", default=None, help="comma-separated filters on model or batch")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    todo = cases(args.quick)
    if args.only:
        keys = set(args.only.split(","))
        todo = [c for c in todo if all(k in (c.model, str(c.batch)) for k in keys
                                       if k in {"mlp", "resnet20"} or k.isdigit())]
    overall = OtherLoad()
    print(f"# {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'model':9s} {'data':8s} {'batch':>5s} {'params':>9s} {'plain ms':>9s} {'curve ms':>9s} "
          f"{'ratio':>6s} {'other cores':>11s}")
    for case in todo:
        rounds = args.rounds or (1 if args.quick else 7 if case.model == "mlp" else 2)
        r = run_case(case, rounds)
        print(f"{r['model']:9s} {r['shape']:8s} {r['batch']:5d} {r['params']:9,d} "
              f"{r['ms']['plain']:9.2f} {r['ms']['curve']:9.2f} {r['ratio']:5.2f}x "
              f"{r['other_load_cores']:11.2f}", flush=True)
    print(f"ratio = curve step / plain step (target <= 1.3x at batch 128); other processes kept "
          f"{overall.cores():.2f} of {os.cpu_count()} cores busy; load average "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

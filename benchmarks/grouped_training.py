"""Benchmark: members that share a batch order trained together in one grouped step
(`modeconn.train.grouped.GroupedMLP`, one batched matmul per layer) against training them one after the
other, on the same data, seeds and optimizer; also checks that both give the same parameters.

    python benchmarks/grouped_training.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from modeconn.data import synthetic
from modeconn.models import build_model, model_config
from modeconn.train import TrainConfig, make_optimizer
from modeconn.train.grouped import GroupedMLP, grouped_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--members", type=int, default=2)
    args = ap.parse_args()
    steps = 60 if args.quick else 400
    k = args.members
    data = synthetic(n_train=1437, n_test=10, shape=(1, 8, 8), seed=0)  # digits-sized
    xs = [data.train_x, data.train_x.flip(0)]
    ys = [data.train_y, data.train_y.flip(0)]
    xs, ys = (xs * k)[:k], (ys * k)[:k]
    cfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {k} members")
    for width, bs in ((512, 32), (512, 128), (128, 32)):
        mcfg = model_config("mlp", (1, 8, 8), 10, width=width, depth=3)
        torch.manual_seed(0)
        models = [build_model(mcfg) for _ in range(k)]
        separate = [copy.deepcopy(m) for m in models]
        grouped = GroupedMLP(models)
        g = torch.Generator().manual_seed(0)
        orders = [torch.randint(0, len(xs[0]), (bs,), generator=g) for _ in range(steps)]

        def run_grouped():
            opt = make_optimizer(grouped.parameters(), cfg)
            for idx in orders:
                logits = grouped(torch.stack([x[idx] for x in xs]))
                loss, _ = grouped_loss(logits, [y[idx] for y in ys])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        def run_separate():
            for m, x, y in zip(separate, xs, ys):
                opt = make_optimizer(m.parameters(), cfg)
                for idx in orders:
                    loss = F.cross_entropy(m(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

        t = time.perf_counter()
        run_separate()
        t_sep = time.perf_counter() - t
        t = time.perf_counter()
        run_grouped()
        t_grp = time.perf_counter() - t
        err = max((grouped.member_state(j)[n] - separate[j].state_dict()[n]).abs().max().item()
                  for j in range(k) for n in grouped.member_state(j))
        print(f"MLP 3x{width} batch {bs:>3}, {steps} steps: one after the other {t_sep:6.2f} s, "
              f"grouped {t_grp:6.2f} s, speed-up {t_sep / t_grp:4.2f}x, max |Δθ| {err:.1e}")


if __name__ == "__main__":
    main()

"""Training throughput: modeconn's training loop against the reference repositories' loop.

Both run in this one process, on the same model, data, optimizer (SGD, momentum 0.9, weight
decay 5e-4) and batch size:

* ours: `modeconn.train.Stepper.run_epoch`, the code `train_member` runs: the normalised
  training set is one in-memory tensor; each step gathers its batch, runs forward,
  cross-entropy, backward and the fused SGD step, and checks the loss.
* before: our loop as it was before the Stepper optimisations (commit fe38ab5), verbatim.
* reference: what the mode-connectivity research code does with torchvision datasets: a
  per-sample `Dataset` holding uint8 images that turns each into a PIL image, then a float
  tensor (as torchvision's ToTensor), then normalises it (as Normalize), batched by a
  `DataLoader` (shuffle=True, num_workers=0), and a plain `torch.optim.SGD` step per batch with
  the running loss read back by `loss.item()`. The same with num_workers=2 (persistent workers)
  is timed too, in its own phase after the others, since its workers keep working ahead.

Throughput is samples per second over a fixed number of steps after warm-up; the loops are
interleaved over several rounds (in alternating order) and the best round of each is kept.
GFLOP/s counts the multiply-adds of Linear and Conv2d layers (2 FLOPs each) found with forward
hooks on a real forward pass: "3x" is the usual forward + backward = 3 x forward; "exact"
leaves out the input gradient of the first layer, which autograd never computes. The peak is
the best of the 2048x2048 fp32 matmuls timed at the start and after every case. The load that
other processes put on the machine meanwhile is measured and printed.

    PYTHONPATH=src python benchmarks/train_throughput.py [--quick] [--only mlp,32] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modeconn.data import synthetic
from modeconn.models import has_batchnorm, model_config
from modeconn.train import Stepper, TrainConfig, init_model, make_optimizer
from modeconn.train.loop import check_finite as _check_finite

SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


@dataclass
class Case:
    model: str
    data: str
    batch: int
    warmup: int  # steps before timing
    steps: int  # timed steps per round


def cases(quick: bool) -> list[Case]:
    """Steps sized for ~0.2-1 s per timed round on a quiet 2-core CPU; --quick is a smoke run."""
    out = []
    for model in ("mlp", "resnet20"):
        for data in ("mnist", "cifar"):
            for batch in (32, 512):
                if model == "mlp":
                    warmup, steps = (10, 50) if batch == 32 else (2, 6)
                else:
                    warmup, steps = (2, 6) if batch == 32 else (1, 1)
                if quick:
                    warmup, steps = 1, max(1, steps // 5)
                out.append(Case(model, data, batch, warmup, steps))
    return out


# ------------------------------------------------------------------ machine


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of n x n matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


class OtherLoad:
    """CPU used by other processes while this one runs (the machine may be shared): busy time of
    all CPUs from /proc/stat minus this process's own (and its reaped workers') CPU time."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return math.nan
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        a, b = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def cores(self) -> float:
        """Average number of cores that other processes kept busy since construction."""
        dt = time.perf_counter() - self.t0
        return max(0.0, (self._busy() - self.busy0) - (self._own() - self.own0)) / dt


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def count_flops(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(forward, exact training) FLOPs per sample of Linear/Conv2d layers, from a real forward.

    Exact training FLOPs = forward + weight gradient (= forward) for every layer, + input
    gradient (= forward) only where the layer's input requires a gradient."""
    fwd = train = 0.0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal fwd, train
        if isinstance(mod, nn.Linear):
            f = 2.0 * mod.in_features * out.numel()
        else:
            k = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
            f = 2.0 * k * out.numel()
        fwd += f
        train += 2 * f + (f if inp[0].requires_grad else 0.0)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        model(x).sum().backward()  # a real training forward (BN in train mode), then discard
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return fwd / len(x), train / len(x)


# ------------------------------------------------------------------ data


@dataclass
class Data:
    images: np.ndarray  # uint8, (N, H, W) for one channel (MNIST) or (N, H, W, C) (CIFAR)
    labels: np.ndarray  # int64
    x: torch.Tensor  # the same images in memory, normalised, (N, C, H, W) float32
    y: torch.Tensor
    mean: list[float]
    std: list[float]


def make_data(shape: tuple[int, int, int], n: int) -> Data:
    """Seeded synthetic images quantised to uint8, as they are stored on disk."""
    d = synthetic(n_train=n, n_test=1, shape=shape, classes=10, seed=0)
    u8 = (d.train_x * 255).round_().to(torch.uint8)  # N, C, H, W
    xf = u8.float() / 255
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3))
    x = ((xf - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()
    hwc = u8.permute(0, 2, 3, 1).contiguous().numpy()
    images = hwc[..., 0] if shape[0] == 1 else hwc
    return Data(images, d.train_y.numpy(), x, d.train_y, mean.tolist(), std.tolist())


def to_tensor(pic: Image.Image) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for a uint8 PIL image."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], len(pic.getbands())).permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


def normalize(t: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """torchvision.transforms.functional.normalize (inplace=False)."""
    t = t.clone()
    m = torch.as_tensor(mean, dtype=t.dtype, device=t.device)
    s = torch.as_tensor(std, dtype=t.dtype, device=t.device)
    return t.sub_(m.view(-1, 1, 1)).div_(s.view(-1, 1, 1))


class PILDataset(Dataset):
    """The torchvision MNIST/CIFAR10 way: uint8 array -> PIL image -> ToTensor -> Normalize."""

    def __init__(self, data: Data):
        self.images, self.labels = data.images, data.labels
        self.mean, self.std = data.mean, data.std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i])
        return normalize(to_tensor(img), self.mean, self.std), int(self.labels[i])


def forever(loader: DataLoader):
    while True:
        yield from loader


# ------------------------------------------------------------------ the two loops


class Ours:
    """modeconn's loop: Stepper.run_epoch over a random order of the in-memory tensors."""

    def __init__(self, model: nn.Module, data: Data, batch: int):
        cfg = TrainConfig(batch_size=batch, optimizer="sgd", lr=LR, momentum=MOMENTUM,
                          weight_decay=WEIGHT_DECAY)
        self.model, self.opt = model, make_optimizer(model.parameters(), cfg)
        self.x, self.y = data.x, data.y
        model.train()
        self.stepper = Stepper(model, self.opt, data.x, data.y, batch,
                               drop_single=has_batchnorm(model))
        self.n, self.batch = len(data.y), batch
        self.gen = torch.Generator().manual_seed(1)

    def order(self, steps: int) -> torch.Tensor:
        need = steps * self.batch
        return torch.cat([torch.randperm(self.n, generator=self.gen)
                          for _ in range(math.ceil(need / self.n))])[:need]

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps (the order is drawn outside the timing, as per epoch)."""
        order = self.order(steps)
        t = time.perf_counter()
        self.stepper.run_epoch(order, lambda b: LR)
        return time.perf_counter() - t

    def close(self) -> None:
        """Nothing to release: the loop holds no hooks."""


class Before(Ours):
    """Our loop as it was before the Stepper optimisations (train_member at fe38ab5), verbatim:
    advanced indexing, optimizer step after backward, a finiteness check on a loss buffer."""

    def run(self, steps: int) -> float:
        order, bs, model, opt = self.order(steps), self.batch, self.model, self.opt
        t = time.perf_counter()
        losses = torch.empty(steps)
        done = checked = 0
        for b in range(steps):
            idx = order[b * bs:(b + 1) * bs]
            lr = LR
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(self.x[idx]), self.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[b] = loss.detach()
            done = b + 1
            _check_finite(losses, checked, done, 0)
            checked = done
        return time.perf_counter() - t


class Reference:
    """The reference loop: DataLoader over PILDataset, plain SGD, loss.item() per step."""

    def __init__(self, model: nn.Module, data: Data, batch: int, workers: int):
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                                   weight_decay=WEIGHT_DECAY)
        self.criterion = nn.CrossEntropyLoss()
        self.loader = DataLoader(PILDataset(data), batch_size=batch, shuffle=True,
                                 num_workers=workers, persistent_workers=workers > 0,
                                 drop_last=True, generator=torch.Generator().manual_seed(2))
        self.batches = forever(self.loader)
        model.train()

    def run(self, steps: int) -> float:
        loss_sum = 0.0
        t = time.perf_counter()
        for _ in range(steps):
            x, y = next(self.batches)
            loss = self.criterion(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            loss_sum += loss.item() * x.size(0)
        dt = time.perf_counter() - t
        if not math.isfinite(loss_sum):
            raise RuntimeError("reference loop diverged")
        return dt

    def close(self) -> None:
        self.batches.close()
        del self.loader


# ------------------------------------------------------------------ driver


def time_interleaved(loops: dict[str, Ours | Reference], case: Case, rounds: int
                     ) -> dict[str, float]:
    """Best seconds per loop for `case.steps` steps, over `rounds` interleaved rounds."""
    try:
        for loop in loops.values():
            loop.run(case.warmup)
        best = {k: math.inf for k in loops}
        for r in range(rounds):
            # Alternate the order, so that no loop is always timed right after the same other.
            for k, loop in list(loops.items())[::-1 if r % 2 else 1]:
                best[k] = min(best[k], loop.run(case.steps))
    finally:
        for loop in loops.values():
            loop.close()
    return best


def run_case(case: Case, rounds: int, workers: bool, before: bool) -> dict:
    load = OtherLoad()
    shape = SHAPES[case.data]
    n = max(4096, (case.warmup + case.steps) * case.batch)
    data = make_data(shape, n)
    cfg = model_config(case.model, shape, 10)
    base = init_model(cfg, seed=0)
    fwd, exact = count_flops(copy.deepcopy(base), data.x[:case.batch])
    loops: dict[str, Ours | Reference] = {"ours": Ours(copy.deepcopy(base), data, case.batch)}
    if before:
        loops["before"] = Before(copy.deepcopy(base), data, case.batch)
    loops["ref"] = Reference(copy.deepcopy(base), data, case.batch, workers=0)
    best = time_interleaved(loops, case, rounds)
    if workers:
        # On its own, after the others: its workers keep preparing batches ahead after each
        # round, which would take CPU from the loop timed next.
        best.update(time_interleaved(
            {"ref_w2": Reference(copy.deepcopy(base), data, case.batch, workers=2)}, case, rounds))
    sps = {k: case.steps * case.batch / v for k, v in best.items()}
    return {"model": case.model, "data": case.data, "shape": "x".join(map(str, shape)),
            "batch": case.batch, "steps": case.steps, "rounds": rounds,
            "samples_per_s": sps, "ratio": sps["ours"] / sps["ref"],
            "ratio_w2": sps["ours"] / sps["ref_w2"] if "ref_w2" in sps else None,
            "speedup_vs_before": sps["ours"] / sps["before"] if "before" in sps else None,
            "fwd_flops_per_sample": fwd, "exact_train_flops_per_sample": exact,
            "gflops_3x": 3 * fwd * sps["ours"] / 1e9, "gflops_exact": exact * sps["ours"] / 1e9,
            "gflops_3x_before": 3 * fwd * sps["before"] / 1e9 if "before" in sps else None,
            "other_load_cores": load.cores()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, one round")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed rounds per loop (default 5 for the MLP, 2 for ResNet-20)")
    p.add_argument("--no-workers", action="store_true", help="skip the num_workers=2 reference")
    p.add_argument("--before", choices=("mlp", "all", "none"), default="mlp",
                   help="where to also time our loop as it was before the Stepper "
                        "optimisations (default: the MLP cases)")
    p.add_argument("--only", default=None,
                   help="comma-separated filters on model, data or batch, e.g. mlp,32")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    todo = cases(args.quick)
    if args.only:
        keys = args.only.split(",")
        todo = [c for c in todo
                if all(any(k == v for v in (c.model, c.data, str(c.batch)))
                       for k in keys if k in {"mlp", "resnet20"})
                and all(any(k == v for v in (c.data, str(c.batch)))
                        for k in keys if k not in {"mlp", "resnet20"})]

    t0, load = time.perf_counter(), OtherLoad()
    peaks = [matmul_peak()]
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(),
               "date": datetime.datetime.now().isoformat(timespec="seconds")}
    print(f"# {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads, "
          f"torch {machine['torch']}; matmul peak at start {peaks[0]:.0f} GFLOP/s", flush=True)
    results = []
    for case in todo:
        rounds = args.rounds or (1 if args.quick else 5 if case.model == "mlp" else 2)
        r = run_case(case, rounds, workers=not (args.no_workers or args.quick),
                     before=args.before == "all" or args.before == case.model)
        peaks.append(matmul_peak())
        results.append(r)
        s = r["samples_per_s"]
        extra = "".join(f", {k} {s[k]:.0f}/s" for k in ("before", "ref_w2") if k in s)
        print(f"{case.model:8s} {r['shape']:7s} bs {case.batch:3d}: ours {s['ours']:.0f}/s, "
              f"ref {s['ref']:.0f}/s{extra}; x{r['ratio']:.2f}, {r['gflops_3x']:.0f} GFLOP/s; "
              f"other processes used {r['other_load_cores']:.1f} cores", flush=True)
    peak = max(peaks)
    print(f"\npeak = best 2048^2 fp32 matmul over the run: {peak:.0f} GFLOP/s "
          f"(per check: {', '.join(f'{v:.0f}' for v in peaks)}); "
          f"total {time.perf_counter() - t0:.0f} s")
    other = load.cores()
    print(f"other processes kept {other:.2f} of {os.cpu_count()} cores busy on average during the "
          "run" + (" -- the figures are depressed by contention" if other > 0.2 else ""))
    print("samples/s; ratio = ours / reference (PIL + DataLoader, num_workers=0); w2 = "
          "num_workers=2;\nbefore = our loop before the Stepper optimisations; GFLOP/s of ours, "
          "'3x' = 3 x forward FLOPs, 'ex' = exact")
    print(f"{'model':8s} {'data':7s} {'bs':>4s} {'ours':>7s} {'before':>7s} {'ref':>6s} "
          f"{'ref w2':>6s} {'ratio':>6s} {'vs w2':>6s} {'GF/s 3x':>8s} {'%peak':>6s} "
          f"{'GF/s ex':>8s} {'%peak':>6s}")

    def num(v: float | None, fmt: str, width: int) -> str:
        return f"{v:{width}{fmt}}" if v is not None else f"{'-':>{width}s}"

    for r in results:
        s = r["samples_per_s"]
        print(f"{r['model']:8s} {r['shape']:7s} {r['batch']:4d} {s['ours']:7.0f} "
              f"{num(s.get('before'), '.0f', 7)} {s['ref']:6.0f} {num(s.get('ref_w2'), '.0f', 6)} "
              f"{r['ratio']:6.2f} {num(r['ratio_w2'], '.2f', 6)} {r['gflops_3x']:8.1f} "
              f"{100 * r['gflops_3x'] / peak:5.1f}% {r['gflops_exact']:8.1f} "
              f"{100 * r['gflops_exact'] / peak:5.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "peak_gflops": peak, "peaks": peaks,
                       "other_load_cores": other, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

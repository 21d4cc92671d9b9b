"""Training: in-memory batching, controlled batch order and initialisation, learning curves,
checkpoints at chosen epochs, bit-identical resume, and divergence detection."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import tuning
from .checkpoint import load_checkpoint, save_checkpoint, save_model
from .data import DataSpec, Prepared, subset_name
from .epochs import Epoch, EpochDriver, LrAt, scheduled_lr, set_lr
from .epochs import check_finite as _check_finite  # noqa: F401  (benchmarks/train_throughput.py)
from .errors import DivergedError, UsageError
from .evaluate import evaluate, nhwc, prefers_channels_last, probabilities
from .grouped import GroupedMLP, groupable, grouped_loss
from .io import json_text, output_dir, read_json, remove_temporaries, write_csv, write_json
from .models import build_model, has_batchnorm
from .options import Options, option
from .runtime import environment
from .schedules import parse_schedule
from .task import CLASSIFICATION, Task

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Options):
    """Optimisation settings shared by every member of a run (checked when built)."""

    job = "training"
    epochs: int = option(20, "passes over the training data", low=1)
    batch_size: int = option(64, "examples per optimisation step", low=1)
    optimizer: str = option("sgd", "optimiser", choices=OPTIMIZERS)
    lr: float = option(0.05, "peak learning rate", low=0, low_open=True)
    momentum: float = option(0.9, "SGD momentum", low=0, high=1, high_open=True)
    nesterov: bool = option(False, "Nesterov momentum (SGD only)")
    weight_decay: float = option(5e-4, "L2 penalty (decoupled for adamw)", low=0)
    schedule: str = option("constant", "constant, cosine, curve, step:M1,M2[@GAMMA], "
                                       "cyclic:EPOCHS[@LOW]")
    warmup: float = option(0.0, "epochs of linear warm-up", low=0)
    save_epochs: tuple[int, ...] = option((), "also save these epochs", low=1)
    eval_batch_size: int = option(2048, "examples per evaluation batch", low=1)

    def check(self) -> None:
        super().check()
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise self.invalid("nesterov", "needs optimizer sgd with momentum > 0")
        if any(e > self.epochs for e in self.save_epochs):
            raise self.invalid("save_epochs", f"must lie in 1..{self.epochs} (the epochs)")
        if self.warmup > self.epochs:  # the learning rate would never reach its peak
            raise self.invalid("warmup", f"must be at most the {self.epochs} epoch"
                                         f"{'s' if self.epochs != 1 else ''} of training "
                                         "(lower it or raise the epochs)")
        sched = parse_schedule(self.schedule, self.warmup)
        late = [m for m in sched.milestones if m >= self.epochs]
        if late:
            raise self.invalid("schedule", f"has milestones {late} not below the {self.epochs} "
                                           "epochs, so they never take effect")

    def validate(self) -> None:
        """Kept for callers that built the settings before they were checked on construction."""


@dataclass
class Member:
    """One model to train: its data and seeds."""

    name: str
    data: Prepared
    init_seed: int
    order_seed: int
    order_size: int  # length of the per-epoch position permutation (shared for batch-order same)
    extra: dict[str, Any] = field(default_factory=dict)
    # The member's own model config where its inputs differ from the run's (a band shift to band
    # sets of different sizes); None: the run's.
    model_cfg: dict[str, Any] | None = None


def check_trainable(model: nn.Module, batch_size: int, n: int) -> None:
    """Refuse a BatchNorm model whose batches would all hold one sample: BatchNorm cannot train
    on one sample, so such a batch is skipped (`Stepper`) and no step would ever be taken. (A
    last batch of one sample in an epoch is skipped alike; the other batches train.)"""
    if has_batchnorm(model) and min(batch_size, n) < 2:
        what = f"batch size {batch_size}" if batch_size < 2 else f"a training set of {n} sample"
        raise UsageError(f"{what} with a BatchNorm model: BatchNorm cannot train on one sample, "
                         "so no step would be taken; use batches of 2 or more (or a model without "
                         "BatchNorm)")


def noise_scale(lr: float, n: int, batch_size: int) -> float:
    """SGD noise scale g = ε·(N/B − 1) (ALGORITHMS.md §3)."""
    return lr * (n / batch_size - 1)


def epoch_order(n: int, order_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The positions visited in `epoch`: one permutation of `order_size` from (seed, epoch),
    keeping those < n, so members with the same seed traverse their subsets in the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(order_size, generator=g)
    return perm[perm < n] if order_size > n else perm


def init_model(model_cfg: dict[str, Any], seed: int) -> nn.Module:
    """Build a model with parameters drawn from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model_cfg)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named in `cfg`, with fused kernels where this torch has them (a fixed
    policy, not a measured choice: fused and foreach kernels round differently, and a run's
    numbers must not depend on a measurement)."""
    params = list(params)
    kw: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        cls = torch.optim.SGD
        kw.update(momentum=cfg.momentum, nesterov=cfg.nesterov)
    else:
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, foreach=True, **kw)


# ---------------------------------------------------------------- resume state

def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim/{idx}/{key}"] = val
            else:
                scalars[f"{idx}/{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                    info: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = val
    for name, val in info["scalars"].items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def _save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int,
                history: list[dict], fingerprint: str, **extra: Any) -> None:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_info = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    device = next(model.parameters()).device
    if device.type == "cuda":  # dropout on a GPU draws from the CUDA generator
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    save_checkpoint(path, tensors, kind="train-state", architecture={}, epoch=epoch,
                    optimizer=opt_info, history=history, fingerprint=fingerprint, **extra)


# ---------------------------------------------------------------- the loop

class Stepper:
    """The inner training loop on in-memory tensors, shared by `train_member`, FGE and the
    benchmarks.

    `step(idx)` does one optimisation step on the samples at positions `idx`: gather the batch,
    forward, the task's loss (cross-entropy), backward, optimizer step. `run_epoch` runs the steps
    of one epoch through the epoch driver (`epochs.EpochDriver`: batches along `order`, the
    learning rate `lr_at(step)`, the divergence check). A model with 2-D convolutions on CPU
    trains in channels-last layout where that is proven right (`prefers_channels_last` with
    gradients): model, inputs and resumed optimizer state are moved in place, same values.
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor, batch_size: int, drop_single: bool = False,
                 gpu_check_every: int = 50, *, task: Task = CLASSIFICATION):
        if prefers_channels_last(model, x, gradients=True):
            model.to(memory_format=torch.channels_last)
            x = nhwc(x)
            # Resumed optimizer state in the layout of its parameter, as a fresh run makes it:
            # elementwise kernels round alike only over tensors of one layout.
            for param, state in opt.state.items():
                for key, value in state.items():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        state[key] = torch.empty_like(param).copy_(value)
        self.model, self.opt, self.x, self.y, self.task = model, opt, x, y, task
        self.batch_size = batch_size
        # index_select or indexing: the same rows, whichever this machine gathers faster.
        self._gather = tuning.choice("gather")
        self.driver = EpochDriver(self.step, opt, batch_size=batch_size, device=x.device,
                                  drop_single=drop_single, gpu_check_every=gpu_check_every)

    @property
    def drop_single(self) -> bool:
        """Whether a last batch of one sample is skipped (BatchNorm cannot train on one)."""
        return self.driver.drop_single

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group."""
        set_lr(self.opt, lr)

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        """One step on the samples at `idx`; return the batch loss (before the update)."""
        x = self.x.index_select(0, idx) if self._gather == "index_select" else self.x[idx]
        loss = self.task.loss(self.model(x), self.y.index_select(0, idx))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def run_epoch(self, order: torch.Tensor, lr_at: Callable[[int], float],
                  epoch: int = 0) -> float:
        """Train on `order` in batches; return the last learning rate used.

        Raises DivergedError (1-based epoch and step) at the first non-finite batch loss.
        """
        return self.driver.run_epoch(order, lr_at, epoch)


class MemberRecord:
    """A member's run directory: resolved config, learning curves, snapshots and final status."""

    def __init__(self, model_cfg: dict[str, Any], member: Member, cfg: TrainConfig,
                 data: Prepared, out_dir: Path, run_info: dict[str, Any] | None = None, *,
                 task: Task = CLASSIFICATION):
        self.model_cfg, self.member, self.cfg, self.data, self.out_dir = \
            model_cfg, member, cfg, data, out_dir
        self.task = task
        self.columns = ["epoch", "split", *task.metric_names, "lr", "seconds"]
        n = len(data.train_y)
        self.config = {
            "member": member.name, "model": model_cfg, "train": asdict(cfg),
            "data": {**data.spec.to_dict(), "domain": data.domain, "mean": data.mean,
                     "std": data.std, "train_size": n, "test_size": len(data.test_y)},
            "seeds": {"init": member.init_seed, "order": member.order_seed,
                      "order_size": member.order_size},
            "class_histogram": data.histogram,
            "noise_scale_g": noise_scale(cfg.lr, n, cfg.batch_size),
            **(run_info or {}), **member.extra,
        }
        self.fingerprint = json.dumps(self.config, sort_keys=True)
        self.history: list[dict[str, Any]] = []

    def start(self) -> None:
        """Create the directory and write config.json (left as it is when already the same)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / "config.json", self.config, changed_only=True)

    def finished(self) -> dict[str, Any] | None:
        """The status of this member when its directory holds a finished run (complete with its
        model, or diverged) of these settings; None when it still has to be trained."""
        status_path = self.out_dir / "status.json"
        if not status_path.is_file():
            return None
        # A metric that was not finite is recorded as null: read back as the NaN it was
        status = read_json(status_path, nulls_as_nan=True)
        if status.get("status") == "complete":
            if not (self.out_dir / "model.safetensors").is_file():
                return None
        elif status.get("status") != "diverged":
            return None
        config = self.out_dir / "config.json"
        if not config.is_file() or config.read_text() != json_text(self.config):
            raise UsageError(f"{self.out_dir}: resumed with different settings than the original "
                             "run; repeat the original settings or use a new output directory")
        return status

    def log_epoch(self, model: nn.Module, epoch: int, lr: float, seconds: float) -> None:
        """Evaluate train and test after `epoch` (1-based); write metrics and a snapshot if asked."""
        row = {"epoch": epoch, "lr": lr, "seconds": seconds}
        for split, x, y in (("train", self.data.train_x, self.data.train_y),
                            ("test", self.data.test_x, self.data.test_y)):
            values = evaluate(model, x, y, self.cfg.eval_batch_size, task=self.task)
            self.history.append({**row, "split": split,
                                 **dict(zip(self.task.metric_names, values))})
        write_csv(self.out_dir / "metrics.csv", self.history, self.columns)
        if epoch in self.cfg.save_epochs:
            save_model(self.out_dir / f"epoch_{epoch}.safetensors", model, self.model_cfg,
                       data=self.data.spec.to_dict(), seed=self.member.init_seed, epoch=epoch,
                       member=self.member.name)

    def _per_label(self, model: nn.Module) -> None:
        """per_label.csv of a multi-label task: each label's test AP and F1 (and positives)."""
        d = self.data
        if not self.task.labelwise:
            return
        probs = probabilities(model, d.test_x, self.cfg.eval_batch_size, task=self.task)
        rows = self.task.per_label(probs.cpu(), d.test_y.cpu())
        for r in rows:
            r["name"] = d.label_names[r["label"]] if d.label_names else str(r["label"])
        write_csv(self.out_dir / "per_label.csv", rows,
                  ["label", "name", "positives", "ap", "f1"])

    def diverged(self, e: DivergedError) -> dict[str, Any]:
        """Mark the run diverged (no final model is written)."""
        status = {"member": self.member.name, "status": "diverged", "epoch": e.epoch,
                  "step": e.step, "loss": str(e.loss)}
        write_csv(self.out_dir / "metrics.csv", self.history, self.columns)
        write_json(self.out_dir / "status.json", status)
        return status

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """Write model.safetensors and status.json; return the status."""
        d = self.data
        save_model(self.out_dir / "model.safetensors", model, self.model_cfg,
                   data=d.spec.to_dict(), seed=self.member.init_seed, epoch=self.cfg.epochs,
                   member=self.member.name,
                   normalisation={"mean": d.mean, "std": d.std, "domain": d.domain})
        self._per_label(model)
        final = {r["split"]: r for r in self.history[-2:]}
        status = {"member": self.member.name, "status": "complete", "epoch": self.cfg.epochs,
                  **{f"{split}_{m}": final[split][m] for split in ("train", "test")
                     for m in self.task.metric_names}}
        write_json(self.out_dir / "status.json", status)
        return status


def finetune(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
             y: torch.Tensor, cfg: TrainConfig, seed: int = 0, quiet: bool = True, *,
             task: Task = CLASSIFICATION) -> tuple[dict[str, torch.Tensor], int]:
    """`params` trained further on (x, y) with `cfg` (from step 0 of its schedule, a fresh
    optimizer); returns the parameters and the number of gradient steps taken (the budget a fair
    comparison gives every method that trains)."""
    cfg.validate()
    net = copy.deepcopy(model).to(x.device)
    net.load_state_dict(params)
    net.train()
    n = len(y)
    check_trainable(net, cfg.batch_size, n)
    opt = make_optimizer(net.parameters(), cfg)
    stepper = Stepper(net, opt, x, y, cfg.batch_size, drop_single=has_batchnorm(net), task=task)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    taken = 0

    def count(*_: Any) -> None:
        nonlocal taken
        taken += 1

    stepper.driver.run(cfg.epochs, lambda epoch: epoch_order(n, n, seed, epoch).to(x.device),
                       _schedule(cfg, steps_per_epoch), after_step=count, desc="fine-tune",
                       quiet=quiet)
    net.eval()
    out = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return {k: v.contiguous() for k, v in out.items()}, taken


def _lr_at(cfg: TrainConfig, epoch: int, steps: int) -> Callable[[int], float]:
    """The learning rate of each step of `epoch` (what `Stepper.run_epoch` takes)."""
    lr_at = _schedule(cfg, steps)
    return lambda b: lr_at(epoch, b)


def _schedule(cfg: TrainConfig, steps: int) -> LrAt:
    """The learning rate of every step of a run of `cfg` with `steps` steps per epoch."""
    return scheduled_lr(cfg.lr, parse_schedule(cfg.schedule, cfg.warmup), cfg.epochs, steps)


def train_member(model_cfg: dict[str, Any], member: Member, cfg: TrainConfig, out_dir: Path,
                 device: torch.device, resume: bool = False, quiet: bool = False,
                 run_info: dict[str, Any] | None = None, *,
                 task: Task = CLASSIFICATION) -> dict[str, Any]:
    """Train one member, writing its run directory; return its status and final metrics."""
    data = member.data.to(device)
    model_cfg = member.model_cfg or model_cfg
    rec = MemberRecord(model_cfg, member, cfg, data, out_dir, run_info, task=task)
    n = len(data.train_y)
    state_path = out_dir / "state.safetensors"
    model = init_model(model_cfg, member.init_seed).to(device)
    opt = make_optimizer(model.parameters(), cfg)
    torch.manual_seed(member.init_seed + 7_000_003)  # dropout stream
    start = 0
    if resume:
        done = rec.finished()
        if done is not None:  # nothing to do, nothing to rewrite
            return done
        if state_path.exists():
            start, rec.history, _ = _load_state(state_path, model, opt, rec.fingerprint, out_dir)
    rec.start()
    steps = math.ceil(n / cfg.batch_size)
    stepper = Stepper(model, opt, data.train_x, data.train_y, cfg.batch_size,
                      drop_single=has_batchnorm(model), task=task)

    def end_epoch(e: Epoch) -> None:
        rec.log_epoch(model, e.number, e.lr, e.seconds)
        model.train()
        _save_state(state_path, model, opt, e.number, rec.history, rec.fingerprint)

    model.train()
    try:
        stepper.driver.run(
            cfg.epochs, lambda epoch: epoch_order(n, member.order_size, member.order_seed,
                                                  epoch).to(device),
            _schedule(cfg, steps), start=start, end_epoch=end_epoch,
            desc=f"train {member.name}", quiet=quiet)
    except DivergedError as e:
        return rec.diverged(e)
    return rec.finish(model)


def _load_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, fingerprint: str,
                out_dir: Path) -> tuple[int, Any, dict[str, Any]]:
    """Restore model, optimizer and RNG from a train-state file; return (epoch, history,
    metadata)."""
    st = load_checkpoint(path, kind="train-state")
    if st.meta["fingerprint"] != fingerprint:
        raise UsageError(f"{out_dir}: resumed with different settings than the original run; "
                         "repeat the original settings or use a new output directory")
    model.load_state_dict({k[6:]: v for k, v in st.tensors.items() if k.startswith("model/")})
    _load_optimizer(opt, st.tensors, st.meta["optimizer"])
    torch.set_rng_state(st.tensors["rng/torch"])
    device = next(model.parameters()).device
    if device.type == "cuda" and "rng/cuda" in st.tensors:
        torch.cuda.set_rng_state(st.tensors["rng/cuda"], device)
    return st.meta["epoch"], st.meta["history"], st.meta


def train_group(model_cfg: dict[str, Any], members: list[Member], cfg: TrainConfig, out: Path,
                device: torch.device, resume: bool = False, quiet: bool = False,
                run_info: dict[str, Any] | None = None, *,
                task: Task = CLASSIFICATION) -> list[dict[str, Any]]:
    """Train members of a groupable MLP together (`grouped.GroupedMLP`, one batched step for
    all), each with its own data, batch order and seed; outputs as `train_member` writes them.
    A member whose loss turns non-finite is marked diverged while the others go on unaffected."""
    datas = [m.data.to(device) for m in members]
    recs = [MemberRecord(model_cfg, m, cfg, d, out / m.name, run_info, task=task)
            for m, d in zip(members, datas)]
    models = [init_model(model_cfg, m.init_seed).to(device) for m in members]
    group = GroupedMLP(models).to(device)
    opt = make_optimizer(group.parameters(), cfg)
    state_path = out / "group_state.safetensors"
    fingerprint = json.dumps([r.fingerprint for r in recs])
    # Nothing here draws from the global generator, but its state is saved for resume: seeded,
    # so that every run of these settings writes the same resume state.
    torch.manual_seed(members[0].init_seed + 7_000_003)
    start, histories = 0, [[] for _ in members]
    # Members that diverged stop there; the others go on. Recorded in the resume state, so a
    # resumed run neither retrains nor re-detects them.
    statuses: list[dict[str, Any] | None] = [None] * len(members)
    if resume:
        done = [rec.finished() for rec in recs]
        if all(d is not None for d in done):  # nothing to do, nothing to rewrite
            return done
        if state_path.exists():
            start, histories, meta = _load_state(state_path, group, opt, fingerprint, out)
            statuses = meta.get("statuses", statuses)
    for rec, hist in zip(recs, histories):
        rec.history = hist
        rec.start()
    sizes = [len(d.train_y) for d in datas]
    steps = math.ceil(sizes[0] / cfg.batch_size)

    def step(idx: list[torch.Tensor]) -> torch.Tensor:
        width = max(len(i) for i in idx)
        # Shorter last batches are padded with their first sample; those rows carry no loss.
        padded = [torch.cat([i, i[:1].expand(width - len(i))]) for i in idx]
        x = torch.stack([d.train_x.index_select(0, i) for d, i in zip(datas, padded)])
        loss, per = grouped_loss(group(x), [d.train_y.index_select(0, i)
                                            for d, i in zip(datas, idx)], task=task)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return per

    def diverged(k: int, e: DivergedError) -> None:
        if statuses[k] is None:
            statuses[k] = recs[k].diverged(e)

    def end_epoch(e: Epoch) -> bool:
        if all(s is not None for s in statuses):
            return True
        for k, (rec, model) in enumerate(zip(recs, models)):
            if statuses[k] is None:
                model.load_state_dict(group.member_state(k))
                rec.log_epoch(model, e.number, e.lr, e.seconds)
        _save_state(state_path, group, opt, e.number, [r.history for r in recs], fingerprint,
                    statuses=statuses)
        return False

    driver = EpochDriver(step, opt, batch_size=cfg.batch_size, device=device, diverged=diverged)
    driver.run(cfg.epochs, lambda epoch: [epoch_order(n, m.order_size, m.order_seed, epoch)
                                          .to(device) for n, m in zip(sizes, members)],
               _schedule(cfg, steps), start=start, end_epoch=end_epoch,
               desc="train " + ",".join(m.name for m in members), quiet=quiet)
    for k, model in enumerate(models):  # the trained weights, also when no epoch was left to run
        if statuses[k] is None:
            model.load_state_dict(group.member_state(k))
    return [s if s is not None else rec.finish(model)
            for s, rec, model in zip(statuses, recs, models)]


def can_group(model_cfg: dict[str, Any], members: list[Member], cfg: TrainConfig) -> bool:
    """Whether the members can be trained in one grouped step: an MLP without BatchNorm or
    dropout, at least two members, and the same number of steps per epoch for each."""
    if len(members) < 2 or any(m.model_cfg is not None for m in members) \
            or not groupable(build_model(model_cfg)):
        return False
    steps = {math.ceil(len(m.data.train_y) / cfg.batch_size) for m in members}
    return len(steps) == 1


def plan_members(spec: DataSpec, subsets: list[Prepared], init: str, init_seeds: list[int],
                 batch_order: str, order_seed: int, only: list[int] | None = None) -> list[Member]:
    """Members for each subset under the init (same|different) and batch-order
    (same|independent) policies; seeds are explicit and recorded."""
    k = len(subsets)
    if init not in ("same", "different"):
        raise UsageError(f"init must be same or different, got {init!r}")
    if batch_order not in ("same", "independent"):
        raise UsageError(f"batch order must be same or independent, got {batch_order!r}")
    if len(init_seeds) == 1:
        seeds = [init_seeds[0] + (i if init == "different" else 0) for i in range(k)]
    elif len(init_seeds) == k:
        seeds = list(init_seeds)
        if init == "same" and len(set(seeds)) > 1:
            raise UsageError("init same with different init seeds; give one seed or use init "
                             "different")
    else:
        raise UsageError(f"init seeds: one seed or one per subset ({k}), got {len(init_seeds)}")
    longest = max(len(s.train_y) for s in subsets)
    members = []
    for i, sub in enumerate(subsets):
        if only is not None and i not in only:
            continue
        same = batch_order == "same"
        members.append(Member(
            name=subset_name(i) if spec.shift != "none" else "all", data=sub,
            init_seed=seeds[i], order_seed=order_seed if same else order_seed + 1000 * (i + 1),
            order_size=longest if same else len(sub.train_y),
            extra={"init": init, "batch_order": batch_order}))
    return members


def train_run(model_cfg: dict[str, Any], members: list[Member], cfg: TrainConfig, out: Path,
              device: torch.device, resume: bool = False, quiet: bool = False,
              run_info: dict[str, Any] | None = None, group: bool = True, *,
              task: Task = CLASSIFICATION) -> list[dict[str, Any]]:
    """Train members into `out/<member>/`; write the run's config, class histograms and summary.

    With `group`, members that `can_group` are trained together in one batched step; `task`
    gives the loss and metrics (classification by default)."""
    cfg.validate()
    out = output_dir(out, allowed=resume, way="resume")
    check_trainable(init_model(model_cfg, 0), cfg.batch_size,
                    min(len(m.data.train_y) for m in members))
    run_config = json.loads(json.dumps({
        "model": model_cfg, "train": asdict(cfg), "data": members[0].data.spec.to_dict(),
        "members": [m.name for m in members], **(run_info or {})}))
    if resume and (out / "config.json").exists() \
            and json.loads((out / "config.json").read_text()) != run_config:
        raise UsageError(f"{out}: resumed with different settings than the original run; "
                         "repeat the original settings or use a new output directory")
    out.mkdir(parents=True, exist_ok=True)
    if resume:  # what a run killed mid-write left beside its files
        for d in (out, *(out / m.name for m in members)):
            remove_temporaries(d)
    # A resumed run keeps the env.json of its start; files that would not change are not
    # rewritten, so resuming a complete run touches nothing.
    if not (resume and (out / "env.json").is_file()):
        write_json(out / "env.json", environment(device))
    write_json(out / "config.json", run_config, changed_only=True)
    skipped = members[0].data.skipped
    if skipped:  # what the reader left out, never silently
        write_csv(out / "skipped.csv", [{"file": f, "reason": r} for f, r in skipped],
                  changed_only=True)
    write_csv(out / "subsets.csv", [
        {"subset": m.name, "class": c, "count": cnt, "domain": m.data.domain}
        for m in members for c, cnt in enumerate(m.data.histogram)], changed_only=True)
    if group and can_group(model_cfg, members, cfg):
        results = train_group(model_cfg, members, cfg, out, device, resume, quiet, run_info,
                              task=task)
    else:
        results = [train_member(model_cfg, m, cfg, out / m.name, device, resume, quiet, run_info,
                                task=task) for m in members]
    write_csv(out / "summary.csv", results, changed_only=True)
    return results


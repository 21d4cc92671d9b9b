"""Training runs: in-memory batching, controlled batch order and initialisation, learning curves,
checkpoints at chosen epochs, bit-identical resume, and divergence detection."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import artefacts
from ..checkpoint import load_checkpoint, save_checkpoint, save_model
from ..data import DataSpec, Prepared, subset_name
from ..errors import DivergedError, UsageError
from ..evaluate import evaluate, probabilities
from ..io import output_dir, remove_temporaries
from ..models import build_model, has_batchnorm
from ..runtime import environment
from ..task import CLASSIFICATION, Task
from .config import (
    TrainConfig,
    _schedule,
    check_trainable,
    epoch_order,
    init_model,
    make_optimizer,
    noise_scale,
)
from .grouped import GroupedMLP, groupable, grouped_loss
from .loop import Epoch, EpochDriver, Stepper


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


class MemberRecord:
    """A member's run directory: resolved config, learning curves, snapshots and final status."""

    def __init__(self, model_cfg: dict[str, Any], member: Member, cfg: TrainConfig,
                 data: Prepared, out_dir: Path, run_info: dict[str, Any] | None = None, *,
                 task: Task = CLASSIFICATION):
        self.model_cfg, self.member, self.cfg, self.data, self.out_dir = \
            model_cfg, member, cfg, data, out_dir
        self.task = task
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
        artefacts.CONFIG.write(self.out_dir, self.config, changed_only=True)

    def finished(self) -> dict[str, Any] | None:
        """The status of this member when its directory holds a finished run (complete with its
        model, or diverged) of these settings; None when it still has to be trained."""
        if not artefacts.MEMBER_STATUS.path(self.out_dir).is_file():
            return None
        # A metric that was not finite is recorded as null: read back as the NaN it was
        status = artefacts.MEMBER_STATUS.read(self.out_dir)
        if status.get("status") == "complete":
            if not artefacts.MODEL.path(self.out_dir).is_file():
                return None
        elif status.get("status") != "diverged":
            return None
        if not artefacts.CONFIG.holds(self.out_dir, self.config):
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
        artefacts.METRICS.write(self.out_dir, self.history, task=self.task)
        if epoch in self.cfg.save_epochs:
            save_model(artefacts.snapshot(epoch).path(self.out_dir), model, self.model_cfg,
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
        artefacts.PER_LABEL.write(self.out_dir, rows)

    def diverged(self, e: DivergedError) -> dict[str, Any]:
        """Mark the run diverged (no final model is written)."""
        status = {"member": self.member.name, "status": "diverged", "epoch": e.epoch,
                  "step": e.step, "loss": str(e.loss)}
        artefacts.METRICS.write(self.out_dir, self.history, task=self.task)
        artefacts.MEMBER_STATUS.write(self.out_dir, status)
        return status

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """Write model.safetensors and status.json; return the status."""
        d = self.data
        save_model(artefacts.MODEL.path(self.out_dir), model, self.model_cfg,
                   data=d.spec.to_dict(), seed=self.member.init_seed, epoch=self.cfg.epochs,
                   member=self.member.name,
                   normalisation={"mean": d.mean, "std": d.std, "domain": d.domain})
        self._per_label(model)
        final = {r["split"]: r for r in self.history[-2:]}
        status = {"member": self.member.name, "status": "complete", "epoch": self.cfg.epochs,
                  **{f"{split}_{m}": final[split][m] for split in ("train", "test")
                     for m in self.task.metric_names}}
        artefacts.MEMBER_STATUS.write(self.out_dir, status)
        return status


def train_member(model_cfg: dict[str, Any], member: Member, cfg: TrainConfig, out_dir: Path,
                 device: torch.device, resume: bool = False, quiet: bool = False,
                 run_info: dict[str, Any] | None = None, *,
                 task: Task = CLASSIFICATION) -> dict[str, Any]:
    """Train one member, writing its run directory; return its status and final metrics."""
    data = member.data.to(device)
    model_cfg = member.model_cfg or model_cfg
    rec = MemberRecord(model_cfg, member, cfg, data, out_dir, run_info, task=task)
    n = len(data.train_y)
    state_path = artefacts.TRAIN_STATE.path(out_dir)
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
    state_path = artefacts.GROUP_STATE.path(out)
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
    out = output_dir(out, allowed=resume, way="resume")
    check_trainable(init_model(model_cfg, 0), cfg.batch_size,
                    min(len(m.data.train_y) for m in members))
    run_config = json.loads(json.dumps({
        "model": model_cfg, "train": asdict(cfg), "data": members[0].data.spec.to_dict(),
        "members": [m.name for m in members], **(run_info or {})}))
    if resume and artefacts.CONFIG.path(out).exists() and artefacts.CONFIG.read(out) != run_config:
        raise UsageError(f"{out}: resumed with different settings than the original run; "
                         "repeat the original settings or use a new output directory")
    out.mkdir(parents=True, exist_ok=True)
    if resume:  # what a run killed mid-write left beside its files
        for d in (out, *(out / m.name for m in members)):
            remove_temporaries(d)
    # A resumed run keeps the env.json of its start; files that would not change are not
    # rewritten, so resuming a complete run touches nothing.
    if not (resume and artefacts.ENV.path(out).is_file()):
        artefacts.ENV.write(out, environment(device))
    artefacts.CONFIG.write(out, run_config, changed_only=True)
    skipped = members[0].data.skipped
    if skipped:  # what the reader left out, never silently
        artefacts.SKIPPED.write(out, [{"file": f, "reason": r} for f, r in skipped],
                                changed_only=True)
    artefacts.SUBSETS.write(out, [
        {"subset": m.name, "class": c, "count": cnt, "domain": m.data.domain}
        for m in members for c, cnt in enumerate(m.data.histogram)], changed_only=True)
    if group and can_group(model_cfg, members, cfg):
        results = train_group(model_cfg, members, cfg, out, device, resume, quiet, run_info,
                              task=task)
    else:
        results = [train_member(model_cfg, m, cfg, out / m.name, device, resume, quiet, run_info,
                                task=task) for m in members]
    artefacts.RUN_SUMMARY.write(out, results, changed_only=True)
    return results

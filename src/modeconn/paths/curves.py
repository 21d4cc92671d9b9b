"""Curve fitting between two parameter points of any nn.Module (ALGORITHMS.md §1, Garipov et al.).

The bends of a curve are kept flat over the module's trainable parameters: the frozen endpoints,
and the middle bends as one trainable (n−2, P) leaf of offsets from the straight segment, so a
curve point θ(t) = Σ_k c_k(t)·w_k is the chord's point plus a few scaled offsets and the model
runs through ``torch.func.functional_call`` on views of θ(t). Buffers (BatchNorm statistics) of a curve point
are the endpoints' interpolation; BatchNorm uses batch statistics while fitting, and evaluation
re-estimates running statistics per point (`Evaluator`, bn_reset).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..checkpoint import load_checkpoint, save_checkpoint
from ..ensemble import ensemble_metrics
from ..errors import UsageError
from ..evaluate import Evaluator, nhwc, prefers_channels_last
from ..models import build_model, has_batchnorm
from ..params import check_module
from ..task import CLASSIFICATION, Task
from ..train import TrainConfig, check_trainable, epoch_order, make_optimizer
from ..train.loop import Epoch, EpochDriver, scheduled_lr, set_lr
from ..train.schedules import parse_schedule
from .path import (
    ParamPath,
    bezier_coefficients,
    check_compatible,
    check_tolerance,
    evaluate_path,
    grid,
    linear_path,
    polychain_coefficients,
    summarize_path,
)

CURVE_KINDS = ("bezier", "polychain")
# Tags the random bends' stream apart from every member's init_model(cfg, seed) (torch's CPU
# generator keeps 32 bits of a seed, so an offset would wrap), so that a bend drawn with the
# members' seed is not member A's starting point.
_BEND_STREAM = 0xBE4D


def layer_inits(model: nn.Module, like: Mapping[str, Tensor], seed: int, count: int
                ) -> list[dict[str, Tensor]]:
    """`count` parameter dicts shaped like `like`, each drawn by the model's layers' own
    `reset_parameters()` (torch's default initialisation of Linear, Conv, norms …: what the
    reference's curve layers draw for a bend) from `seed`, on the CPU (the same on any device).
    A parameter no layer's `reset_parameters()` draws (e.g. a ViT's position embedding) is
    refused by name."""
    fresh = copy.deepcopy(model).cpu()
    resets = [(prefix, m) for prefix, m in fresh.named_modules()
              if callable(getattr(m, "reset_parameters", None))]
    drawn = {f"{prefix}.{k}" if prefix else k for prefix, m in resets
             for k, _ in m.named_parameters(recurse=False)}
    names = dict(fresh.named_parameters())
    missed = [k for k in like if k in names and k not in drawn]
    if missed:
        raise UsageError(f"a random bend is drawn by the layers' reset_parameters(), and no layer "
                         f"draws {', '.join(missed[:3])}{' …' if len(missed) > 3 else ''}; "
                         "start the bends on the segment (bend init segment)")
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(
            int(np.random.SeedSequence([seed, _BEND_STREAM]).generate_state(1)[0]))
        for _ in range(count):
            with torch.no_grad():
                for _, m in resets:
                    m.reset_parameters()
            state = fresh.state_dict()
            out.append({k: state[k].detach().clone().to(v.device, v.dtype) if k in names
                        else v for k, v in like.items()})
    return out


# Where a curve's middle bends start (None: on the straight segment, offsets zero).
BEND_INITS: dict[str, Callable[[nn.Module, Mapping[str, Tensor], int, int],
                               list[dict[str, Tensor]] | None]] = {
    "segment": lambda model, a, seed, count: None,  # Garipov et al.'s init_linear
    "random": layer_inits,  # the MPF reference: the curve layers' own random initialisation
}


def _check_kind(kind: str) -> None:
    if kind not in CURVE_KINDS:
        raise UsageError(f"unknown curve kind {kind!r}; use {' or '.join(CURVE_KINDS)}")


def min_bends(kind: str) -> int:
    """The fewest bends a fitted curve of `kind` can have: its endpoints and one middle bend to
    train (with two bends either kind is the linear path)."""
    _check_kind(kind)
    return 3


class Curve:
    """A Bezier or polychain curve between two parameter dicts of `model`, with trainable bends.

    Over the trainable parameters (flattened: P values) the frozen endpoints are the rows of
    `ends` (2, P) and the middle bends are kept as offsets from the straight segment, the
    trainable leaf `offsets` (n−2, P): w_k = (1 − s_k)·w_0 + s_k·w_{n−1} + δ_k with s_k = k/(n−1).
    Bernstein and hat weights both reproduce straight lines (Σ_k c_k = 1, Σ_k c_k·s_k = t), so
    θ(t) = (1 − t)·w_0 + t·w_{n−1} + Σ_k c_k(t)·δ_k. Offsets start at zero (the middle bends on the
    straight segment, as in Garipov et al.'s reference) unless `middle` gives the bends. With
    `channels_last` the 4-D (convolution) kernels are flattened in channels-last order, so that
    their views are channels-last tensors (`fit_curve` asks for it where `Stepper` trains in that
    layout: `prefers_channels_last` with gradients).
    """

    def __init__(self, model: nn.Module, a: Mapping[str, Tensor], b: Mapping[str, Tensor],
                 kind: str = "bezier", num_bends: int = 3,
                 middle: list[Mapping[str, Tensor]] | None = None, channels_last: bool = False):
        _check_kind(kind)
        if num_bends < 2:
            raise UsageError(f"a curve needs at least 2 bends (its endpoints), got {num_bends}")
        check_module(model)
        check_compatible([a, b])
        self.kind, self.num_bends = kind, num_bends
        self.a = {k: v.detach() for k, v in a.items()}
        self.b = {k: v.detach() for k, v in b.items()}
        names = dict(model.named_parameters())
        self.param_keys = [k for k in a if k in names and a[k].is_floating_point()]
        if not self.param_keys:
            raise UsageError("the parameter dicts hold none of the model's parameters")
        self.buffer_keys = [k for k in a if k not in self.param_keys]
        self.shapes = [a[k].shape for k in self.param_keys]
        self.sizes = [a[k].numel() for k in self.param_keys]
        self.channels_last = channels_last
        self._nhwc = [channels_last and len(s) == 4 for s in self.shapes]
        self.ends = torch.stack([self._flat(self.a), self._flat(self.b)])
        self.offsets = self.ends.new_zeros(num_bends - 2, self.ends.shape[1])
        if middle is not None:
            if len(middle) != num_bends - 2:
                raise UsageError(f"{len(middle)} middle bends given for a {num_bends}-bend curve")
            check_compatible([a, *middle])
            for k, m in enumerate(middle, 1):
                self.offsets[k - 1] = self._flat(m).to(self.ends) - self._chord(k / (num_bends - 1))
        self.offsets.requires_grad_()

    def _flat(self, d: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([(d[k].permute(0, 2, 3, 1) if cl else d[k]).detach().reshape(-1)
                          for k, cl in zip(self.param_keys, self._nhwc, strict=True)])

    def _chord(self, t: float) -> Tensor:
        return torch.lerp(self.ends[0], self.ends[1], t)  # exact at t = 0 and t = 1

    def coefficients(self, t: float | Tensor) -> Tensor:
        """Weights of the bends at t."""
        coef = bezier_coefficients if self.kind == "bezier" else polychain_coefficients
        return coef(t, self.num_bends)

    def flat_point(self, t: float | Tensor) -> Tensor:
        """θ(t) over the trainable parameters as one flat vector, differentiable in the offsets
        (`CurveTrainer` forms the same point in place)."""
        c = self.coefficients(t).to(self.ends)
        return self._chord(float(t)) + c[1:-1] @ self.offsets

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Named views of a flat parameter vector (channels-last views where `_flat` put them)."""
        return {k: v.view(s[0], s[2], s[3], s[1]).permute(0, 3, 1, 2) if cl else v.view(s)
                for k, v, s, cl in zip(self.param_keys, torch.split(flat, self.sizes), self.shapes,
                                       self._nhwc, strict=True)}

    def buffers(self, t: float) -> dict[str, Tensor]:
        """Buffers at t: the endpoints' interpolation (integer buffers copied from the first)."""
        return {k: torch.lerp(self.a[k], self.b[k], float(t)) if self.a[k].is_floating_point()
                else self.a[k].clone() for k in self.buffer_keys}

    def bend_dicts(self) -> list[dict[str, Tensor]]:
        """Every bend as a full parameter dict (middle bends' buffers on the straight segment)."""
        n = self.num_bends
        out = [dict(self.a)]  # the endpoints exactly as given
        with torch.no_grad():
            for k in range(1, n - 1):
                s = k / (n - 1)
                flat = self._chord(s) + self.offsets[k - 1]
                d = {key: v.clone() for key, v in self.unflatten(flat).items()}  # own storage each
                d.update(self.buffers(s))
                out.append({key: d[key] for key in self.a})
        return out + [dict(self.b)]

    def path(self) -> ParamPath:
        """The curve as a ParamPath (for evaluation, ensembles and planes)."""
        return ParamPath(self.bend_dicts(), kind=self.kind)


class CurveTrainer:
    """One curve-fitting step at a time: t ~ U(0, 1), loss CE(θ(t)) + ½·wd·‖θ(t)‖², optimizer step
    (CE: the task's loss, cross-entropy by default).

    The gradient of the offset δ_k is c_k(t)·(∂CE/∂θ + wd·θ(t)). A step allocates nothing of the
    parameters' size beyond what a plain training step does (on CPU a fresh allocation of that
    size costs more than the arithmetic on it): θ(t) is written into one flat buffer whose
    per-parameter views are the leaves the model runs on, and the offsets' gradient is written in
    place into `curve.offsets.grad`. With one middle bend its factor c_1(t) rides on the loss's
    gradient seed, so the L2 term is added in the same pass that writes the gradient.
    """

    def __init__(self, model: nn.Module, curve: Curve, x: Tensor, y: Tensor, cfg: TrainConfig,
                 seed: int = 0, *, task: Task = CLASSIFICATION):
        if curve.num_bends < min_bends(curve.kind):
            raise UsageError(f"a {curve.num_bends}-bend {curve.kind} curve has no middle bend to "
                             f"fit; use at least {min_bends(curve.kind)} bends")
        self.model = model.train()
        self.x = nhwc(x) if curve.channels_last else x
        self.curve, self.y, self.cfg, self.task = curve, y, cfg, task
        self.opt = make_optimizer([curve.offsets], dataclasses.replace(cfg, weight_decay=0.0))
        self.gen = torch.Generator().manual_seed(seed)
        offsets = curve.offsets
        with torch.no_grad():
            self.theta = torch.empty_like(curve.ends[0])
            self._theta = list(curve.unflatten(self.theta).values())
            self.leaves = {k: v.detach().requires_grad_() for k, v in
                           curve.unflatten(self.theta).items()}
            offsets.grad = torch.zeros_like(offsets)
            # With several middle bends ∂CE/∂θ + wd·θ(t) goes to a scratch buffer first.
            self._sum = offsets.grad[0] if len(offsets) == 1 else torch.empty_like(self.theta)
            self._sum_views = list(curve.unflatten(self._sum).values())

    def set_lr(self, lr: float) -> None:
        """Set the learning rate."""
        set_lr(self.opt, lr)

    def step(self, idx: Tensor, t: float | None = None) -> Tensor:
        """One step on the samples at `idx` at curve position `t` (drawn from U(0, 1) when None);
        return the batch loss of the task before the update (the L2 term is left out of the
        value, as a plain training step leaves out its weight decay)."""
        if t is None:
            t = float(torch.rand((), generator=self.gen))
        curve, wd = self.curve, self.cfg.weight_decay
        mid = curve.coefficients(t)[1:-1].tolist()
        with torch.no_grad():
            torch.lerp(curve.ends[0], curve.ends[1], t, out=self.theta)
            for ck, dk in zip(mid, curve.offsets):
                if ck:
                    self.theta.add_(dk, alpha=ck)
        state = {**self.leaves, **curve.buffers(t)}
        out = functional_call(self.model, state, (self.x.index_select(0, idx),),
                              tie_weights=False)
        loss = self.task.loss(out, self.y.index_select(0, idx))
        scale = mid[0] if len(mid) == 1 else 1.0
        loss.backward(torch.tensor(scale, dtype=loss.dtype, device=loss.device))
        with torch.no_grad():
            for leaf, theta, dst in zip(self.leaves.values(), self._theta, self._sum_views):
                if leaf.grad is None:  # a parameter the loss does not reach
                    torch.mul(theta, scale * wd, out=dst)
                else:
                    torch.add(leaf.grad, theta, alpha=scale * wd, out=dst)
                    leaf.grad = None
            if len(mid) > 1:
                for ck, grad in zip(mid, curve.offsets.grad):
                    torch.mul(self._sum, ck, out=grad)
            self.opt.step()
        return loss.detach()


def fit_curve(model: nn.Module, a: Mapping[str, Tensor], b: Mapping[str, Tensor], x: Tensor,
              y: Tensor, cfg: TrainConfig, kind: str = "bezier", num_bends: int = 3,
              seed: int = 0, quiet: bool = True,
              on_epoch: Callable[[int, float, float], None] | None = None, *,
              task: Task = CLASSIFICATION, bend_init: str = "segment") -> Curve:
    """Fit the middle bends of a curve between `a` and `b` on (x, y); endpoints stay fixed.

    The middle bends start where `bend_init` (a key of BEND_INITS) puts them: on the straight
    segment, or drawn at random by the layers' own initialisation (from `seed`).
    `on_epoch(epoch, mean loss of the task (cross-entropy), lr)` is called after each epoch
    (1-based); a non-finite batch loss raises DivergedError."""
    if bend_init not in BEND_INITS:
        raise UsageError(f"unknown bend init {bend_init!r}; use {' or '.join(BEND_INITS)}")
    _check_kind(kind)
    middle = BEND_INITS[bend_init](model, a, seed, max(num_bends - 2, 0))
    curve = Curve(model, a, b, kind, num_bends, middle=middle,
                  channels_last=prefers_channels_last(model, x, gradients=True))
    net = _private(model, x.device)
    trainer = CurveTrainer(net, curve, x, y, cfg, seed, task=task)
    n = len(y)
    drop_single = has_batchnorm(model)  # BatchNorm cannot train on a last batch of one sample
    check_trainable(model, cfg.batch_size, n)
    steps = math.ceil(n / cfg.batch_size)
    taken = steps - int(drop_single and n % cfg.batch_size == 1)
    total = torch.zeros((), device=x.device)

    def step(idx: Tensor) -> Tensor:
        nonlocal total
        loss = trainer.step(idx)
        total += loss
        return loss

    def end_epoch(e: Epoch) -> None:
        nonlocal total
        mean = float(total) / taken
        total = torch.zeros((), device=x.device)
        if on_epoch is not None:
            on_epoch(e.number, mean, e.lr)

    driver = EpochDriver(step, trainer.opt, batch_size=cfg.batch_size, device=x.device,
                         drop_single=drop_single)
    try:
        driver.run(cfg.epochs, lambda epoch: epoch_order(n, n, seed, epoch).to(x.device),
                   scheduled_lr(cfg.lr, parse_schedule(cfg.schedule, cfg.warmup), cfg.epochs,
                                steps), end_epoch=end_epoch, desc=f"fit {kind} curve", quiet=quiet)
    finally:
        curve.offsets.grad = None
    curve.offsets.requires_grad_(False)
    return curve


def _private(model: nn.Module, device: torch.device) -> nn.Module:
    """The module itself on `device`, in train mode; its own tensors are never read."""
    return copy.deepcopy(model).to(device).train()  # once per fit, not per point


# ---------------------------------------------------------------- checkpoints

def save_curve(path: str | os.PathLike, path_obj: ParamPath, architecture: dict[str, Any],
               **meta: Any) -> Path:
    """Write all bends of a curve into one safetensors file (tensors `bend{k}/{name}`)."""
    tensors = {f"bend{k}/{name}": v for k, bend in enumerate(path_obj.bends)
               for name, v in bend.items()}
    return save_checkpoint(path, tensors, kind="curve", architecture=architecture,
                           curve_kind=path_obj.kind, bends=path_obj.num_bends, **meta)


def load_curve(path: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[nn.Module, ParamPath, Any]:
    """Load a curve checkpoint: (module, ParamPath through its bends, the Checkpoint)."""
    ckpt = load_checkpoint(path, kind="curve")
    n = int(ckpt.meta.get("bends", 0))
    bends: list[dict[str, Tensor]] = [{} for _ in range(n)]
    for name, v in ckpt.tensors.items():
        head, _, key = name.partition("/")
        if not head.startswith("bend") or not head[4:].isdigit() or int(head[4:]) >= n:
            raise UsageError(f"{path}: unexpected tensor {name!r} in a {n}-bend curve checkpoint")
        bends[int(head[4:])][key] = v.to(device)
    model = build_model(ckpt.architecture).to(device)
    try:
        for bend in bends:
            model.load_state_dict(bend, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{path}: bends do not match the architecture "
                         f"({str(e).splitlines()[0]})") from None
    return model, ParamPath(bends, kind=ckpt.meta.get("curve_kind", "bezier")), ckpt


# ---------------------------------------------------------------- evaluation

def compare_with_linear(model: nn.Module, curve: ParamPath, splits: Mapping[str, tuple[Tensor, Tensor]],
                        bn_data: Tensor | None = None, points: int = 61, bn_reset: str = "auto",
                        tolerance: float = 0.01, *, task: Task = CLASSIFICATION
                        ) -> tuple[list[dict], dict]:
    """Evaluate a curve and the linear path between its endpoints on one grid:
    (rows with a `path` column, {'curve': barrier summary, 'linear': barrier summary})."""
    check_tolerance(tolerance)
    ev = Evaluator(model, splits, bn_data=bn_data, bn_reset=bn_reset, task=task)
    ts = grid(points)
    rows, summary = [], {}
    for name, p in (("curve", curve), ("linear", linear_path(curve.bends[0], curve.bends[-1]))):
        r = evaluate_path(p, ev, ts)
        summary[name] = summarize_path(r, tolerance)
        rows.extend({"path": name, **row} for row in r)
    return rows, summary


def path_ensemble(path: ParamPath, evaluator: Any, k: int, split: str = "test",
                  ends: bool = True) -> dict[str, float]:
    """ensemble_metrics of K points evenly spaced along a path (endpoints included unless
    `ends` is False, then the K interior points of a K+2 grid), BatchNorm as `evaluator` does it."""
    if k < 1:
        raise UsageError(f"path_ensemble: k must be at least 1, got {k}")
    ts = [i / (k - 1) for i in range(k)] if ends and k > 1 else \
        [(i + 1) / (k + 1) for i in range(k)]
    probs = evaluator.probabilities(path.points(ts), split)
    return {**ensemble_metrics(probs, evaluator.splits[split][1], task=evaluator.task), "t": ts}

"""Curve fitting between two parameter points of any nn.Module (ALGORITHMS.md §1, Garipov et al.).

The bends of a curve are kept in one flat (n, P) buffer over the module's trainable parameters;
the endpoint rows are frozen and the middle rows are one trainable leaf (a view of that buffer),
so a curve point θ(t) = Σ_k c_k(t)·w_k is one matrix-vector product and the model runs through
``torch.func.functional_call`` on views of θ(t). Buffers (BatchNorm statistics) of a curve point
are the endpoints' interpolation; BatchNorm uses batch statistics while fitting, and evaluation
re-estimates running statistics per point (`Evaluator`, bn_reset).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import DivergedError, UsageError
from .models import build_model
from .paths import ParamPath, bezier_coefficients, check_compatible, polychain_coefficients
from .train import TrainConfig, epoch_order, make_optimizer
from .utils import progress

CURVE_KINDS = ("bezier", "polychain")


def min_bends(kind: str) -> int:
    """The fewest bends a fitted curve of `kind` can have (a Bezier curve needs a control point)."""
    if kind not in CURVE_KINDS:
        raise UsageError(f"unknown curve kind {kind!r}; use {' or '.join(CURVE_KINDS)}")
    return 3 if kind == "bezier" else 2


class _CurvePoint(torch.autograd.Function):
    """θ = c @ W with the gradient sent to the middle rows only, plus wd·θ (the L2 term's gradient)."""

    @staticmethod
    def forward(ctx, c: Tensor, middle: Tensor, bends: Tensor, wd: float) -> Tensor:
        theta = c @ bends
        ctx.wd = wd
        ctx.save_for_backward(c, theta if wd else None)
        return theta

    @staticmethod
    def backward(ctx, grad: Tensor):
        c, theta = ctx.saved_tensors
        if ctx.wd:
            grad = grad.add(theta, alpha=ctx.wd)
        mid = c[1:-1]
        g = grad.unsqueeze(0) * mid[0] if len(mid) == 1 else torch.outer(mid, grad)
        return None, g, None, None


class Curve:
    """A Bezier or polychain curve between two parameter dicts of `model`, with trainable bends."""

    def __init__(self, model: nn.Module, a: Mapping[str, Tensor], b: Mapping[str, Tensor],
                 kind: str = "bezier", num_bends: int = 3,
                 middle: list[Mapping[str, Tensor]] | None = None):
        if num_bends < min_bends(kind):
            raise UsageError(f"a {kind} curve needs at least {min_bends(kind)} bends, got {num_bends}")
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
        fa, fb = self._flat(self.a), self._flat(self.b)
        n = num_bends
        rows = [torch.lerp(fa, fb, k / (n - 1)) for k in range(n)]  # on the straight segment
        rows[0], rows[-1] = fa, fb
        self.bends = torch.stack(rows)  # (n, P): rows 0 and n-1 are the frozen endpoints
        if middle is not None:
            if len(middle) != n - 2:
                raise UsageError(f"{len(middle)} middle bends given for a {n}-bend curve")
            check_compatible([a, *middle])
            for i, m in enumerate(middle, 1):
                self.bends[i] = self._flat(m).to(self.bends)
        self.middle = self.bends[1:-1].requires_grad_()  # a leaf viewing the buffer's middle rows

    def _flat(self, d: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([d[k].detach().reshape(-1) for k in self.param_keys])

    def coefficients(self, t: float | Tensor) -> Tensor:
        """Weights of the bends at t."""
        coef = bezier_coefficients if self.kind == "bezier" else polychain_coefficients
        return coef(t, self.num_bends)

    def flat_point(self, t: float | Tensor, weight_decay: float = 0.0) -> Tensor:
        """θ(t) over the trainable parameters as one flat vector (differentiable in the bends)."""
        c = self.coefficients(t).to(self.bends)
        return _CurvePoint.apply(c, self.middle, self.bends.detach(), weight_decay)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Named views of a flat parameter vector."""
        return {k: v.view(s) for k, v, s in
                zip(self.param_keys, torch.split(flat, self.sizes), self.shapes)}

    def buffers(self, t: float) -> dict[str, Tensor]:
        """Buffers at t: the endpoints' interpolation (integer buffers copied from the first)."""
        return {k: torch.lerp(self.a[k], self.b[k], float(t)) if self.a[k].is_floating_point()
                else self.a[k].clone() for k in self.buffer_keys}

    def bend_dicts(self) -> list[dict[str, Tensor]]:
        """Every bend as a full parameter dict (middle bends' buffers on the straight segment)."""
        n = self.num_bends
        out = []
        with torch.no_grad():
            for k in range(n):
                if k in (0, n - 1):  # the endpoints exactly as given
                    out.append(dict(self.a if k == 0 else self.b))
                    continue
                d = {key: v.clone() for key, v in self.unflatten(self.bends[k]).items()}
                d.update(self.buffers(k / (n - 1)))
                out.append({key: d[key] for key in self.a})
        return out

    def path(self) -> ParamPath:
        """The curve as a ParamPath (for evaluation, ensembles and planes)."""
        return ParamPath(self.bend_dicts(), kind=self.kind)


class CurveTrainer:
    """One curve-fitting step at a time: t ~ U(0, 1), loss CE(θ(t)) + ½·wd·‖θ(t)‖², optimizer step."""

    def __init__(self, model: nn.Module, curve: Curve, x: Tensor, y: Tensor, cfg: TrainConfig,
                 seed: int = 0):
        self.model = model.train()
        self.curve, self.x, self.y, self.cfg = curve, x, y, cfg
        self.opt = make_optimizer([curve.middle], dataclasses.replace(cfg, weight_decay=0.0))
        self.gen = torch.Generator().manual_seed(seed)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate."""
        for g in self.opt.param_groups:
            g["lr"] = lr

    def step(self, idx: Tensor) -> Tensor:
        """One step on the samples at `idx`; return the batch loss (cross-entropy plus L2)."""
        t = float(torch.rand((), generator=self.gen))
        wd = self.cfg.weight_decay
        theta = self.curve.flat_point(t, wd)
        state = self.curve.unflatten(theta)
        state.update(self.curve.buffers(t))
        out = functional_call(self.model, state, (self.x.index_select(0, idx),))
        loss = F.cross_entropy(out, self.y.index_select(0, idx))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # the L2 term's gradient is added inside _CurvePoint.backward
        self.opt.step()
        loss = loss.detach()
        if wd:
            loss = loss + 0.5 * wd * theta.detach().square().sum()
        return loss


def fit_curve(model: nn.Module, a: Mapping[str, Tensor], b: Mapping[str, Tensor], x: Tensor,
              y: Tensor, cfg: TrainConfig, kind: str = "bezier", num_bends: int = 3,
              seed: int = 0, quiet: bool = True,
              on_epoch: Callable[[int, float, float], None] | None = None) -> Curve:
    """Fit the middle bends of a curve between `a` and `b` on (x, y); endpoints stay fixed.

    `on_epoch(epoch, mean loss, lr)` is called after each epoch (1-based)."""
    cfg.validate()
    from .schedules import parse_schedule

    curve = Curve(model, a, b, kind, num_bends)
    net = _private(model, x.device)
    trainer = CurveTrainer(net, curve, x, y, cfg, seed)
    sched = parse_schedule(cfg.schedule, cfg.warmup)
    n = len(y)
    steps = math.ceil(n / cfg.batch_size)
    bar = progress(total=cfg.epochs, desc=f"fit {kind} curve", quiet=quiet)
    try:
        for epoch in range(cfg.epochs):
            order = epoch_order(n, n, seed, epoch).to(x.device)
            total = torch.zeros((), device=x.device)
            lr = cfg.lr
            for s in range(steps):
                lr = cfg.lr * sched.factor(epoch, s / steps, cfg.epochs)
                trainer.set_lr(lr)
                loss = trainer.step(order[s * cfg.batch_size:(s + 1) * cfg.batch_size])
                total += loss
            mean = float(total) / steps
            if not math.isfinite(mean):
                raise DivergedError(epoch + 1, steps, mean)
            if on_epoch is not None:
                on_epoch(epoch + 1, mean, lr)
            bar.update(1)
    finally:
        bar.close()
    curve.middle.requires_grad_(False)
    return curve


def _private(model: nn.Module, device: torch.device) -> nn.Module:
    """The module itself on `device`, in train mode; its own tensors are never read."""
    import copy

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
                        tolerance: float = 0.01) -> tuple[list[dict], dict]:
    """Evaluate a curve and the linear path between its endpoints on one grid:
    (rows with a `path` column, {'curve': barrier summary, 'linear': barrier summary})."""
    from .evaluate import Evaluator
    from .paths import evaluate_path, grid, linear_path, summarize_path

    ev = Evaluator(model, splits, bn_data=bn_data, bn_reset=bn_reset)
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
    from .ensemble import ensemble_metrics

    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    ts = [i / (k - 1) for i in range(k)] if ends and k > 1 else \
        [(i + 1) / (k + 1) for i in range(k)]
    probs = evaluator.probabilities(path.points(ts), split)
    return {**ensemble_metrics(probs, evaluator.splits[split][1]), "t": ts}

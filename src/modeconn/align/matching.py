"""Pairwise and multi-model permutation matching (ALGORITHMS.md §4).

All methods act on parameter dicts (``state_dict()`` keys, buffers included). Methods that need
forward passes take modules and evaluate other parameters with ``torch.func.functional_call``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import UsageError
from ..params import distance, is_float
from ..params import mean as mean_params
from ..task import CLASSIFICATION
from ..train.loop import Epoch, EpochDriver
from .activations import Moments, batches, collector, units
from .lap import WarmLAP, head_assignment, linear_assignment
from .spec import (
    Permutation,
    PermutationSpec,
    check_spec,
    segment,
    slots_index,
    units_first,
)
from .trace import auto_spec, trace

Params = Mapping[str, Tensor]
ModelOrParams = nn.Module | Params
LossFn = Callable[[Tensor, Tensor], Tensor]


class Merged(NamedTuple):
    """Per-model permutations (the first model's is the identity) and the averaged parameters."""

    perms: list[Permutation]
    params: dict[str, Tensor]


def state_of(obj: ModelOrParams) -> dict[str, Tensor]:
    """The parameter dict of a module (detached state_dict) or a copy of a given dict."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise TypeError(f"models must be nn.Modules or parameter dicts (name -> tensor), "
                        f"got {type(obj).__name__}")
    return {k: v.detach() for k, v in obj.items()}


def _check_options(batch_size: int | None = None, lr: float | None = None,
                   seed: int | None = None) -> None:
    """Refuse impossible batch sizes, learning rates and seeds, naming the argument."""
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"'batch_size' must be an integer ≥ 1, got {batch_size}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"'lr' must be a finite number > 0, got {lr}")
    if seed is not None and seed < 0:
        raise UsageError(f"'seed' must be an integer ≥ 0, got {seed}")


def resolve_spec(model: ModelOrParams, spec: PermutationSpec | None,
                 example_input: Any | None) -> PermutationSpec:
    """The given spec (checked when a module and input allow), else one derived from the model."""
    if spec is not None and not isinstance(spec, PermutationSpec):
        hint = " (an example input goes in example_input=)" if isinstance(spec, Tensor) else ""
        raise TypeError(f"spec must be a PermutationSpec or None, got {type(spec).__name__}{hint}")
    if spec is None:
        if not isinstance(model, nn.Module) or example_input is None:
            raise UsageError("without a spec, alignment needs the model as an nn.Module and an "
                             "example input to trace it with (example_input=)")
        return auto_spec(model, example_input)
    if isinstance(model, nn.Module) and example_input is not None:
        check_spec(model, spec, example_input, trials=2)
    return spec


# --- weight matching ------------------------------------------------------------------------


class _Seen:
    """What a tensor was when a cached value was computed from it.

    The tensor is kept alive, so its memory cannot be reused by another one; its version counter
    is recorded, not just compared later: views made by `detach()` share the counter, so an
    in-place update (an optimizer step on the STE proxy) is visible to every view, old ones too.
    """

    def __init__(self, t: Tensor):
        self.ref = t
        self.key = (t.data_ptr(), t._version, t.shape, t.stride(), t.dtype, t.device)

    def matches(self, t: Tensor) -> bool:
        return self.key == (t.data_ptr(), t._version, t.shape, t.stride(), t.dtype, t.device)


def _same(seen: _Seen | None, t: Tensor) -> bool:
    """Whether `t` is the very tensor `seen` recorded, unmodified since."""
    return seen is not None and seen.matches(t)


class _Term:
    """One (tensor, axis) contribution to a group's cost, with what it was computed from."""

    def __init__(self) -> None:
        self.b_ref: Tensor | None = None     # B's tensor and its units-first copy
        self.b_front: Tensor | None = None
        self.b_pos: list[int | None] = []
        self.rows_perms: list[Tensor] | None = None  # other axes' permutations in b_rows
        self.b_rows: Tensor | None = None
        self.a_ref: Tensor | None = None     # A's tensor and its units-first rows
        self.a_rows: Tensor | None = None
        self.value_perms: list[Tensor] | None = None
        self.value: np.ndarray | None = None


def _equal(xs: list[Tensor] | None, ys: list[Tensor]) -> bool:
    return xs is not None and all(x is y or torch.equal(x, y) for x, y in zip(xs, ys, strict=True))


class WeightMatcher:
    """Weight matching that keeps its permutation and LAP state between calls (accelerated WM).

    Each cost term is cached with the permutations it was computed from and recomputed only
    when one of them (or a tensor) changes, so a group whose cost did not change is not solved
    again. With `warm`, the previous result is the next call's starting point, B's permuted
    weights are reused, and each group's LAP is warm-started (lap.WarmLAP); without it every
    call starts cold from the identity. The reference STE and STE-MM loops start each call from
    the previous permutation too (STE-MM's fast variant also keeps the LAP duals).
    """

    def __init__(self, spec: PermutationSpec, max_iter: int = 100, seed: int = 0,
                 warm: bool = True):
        if not isinstance(spec, PermutationSpec):
            raise TypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
        _check_options(seed=seed)
        if max_iter < 1:
            raise UsageError(f"max_iter must be at least 1, got {max_iter}")
        self.spec = spec
        self.max_iter = max_iter
        self.warm = warm
        self.lap = WarmLAP() if warm else None
        self.perm: Permutation | None = None
        self.passes = 0
        self._rng = np.random.default_rng(seed)
        self._keys: dict[str, list[tuple[str, int, int]]] = {
            p: [(name, axis, k) for name, axis in spec.perm_to_axes[p]
                for k, slot in enumerate(spec.slots[name][axis]) if slot.perm == p]
            for p in spec.sizes}
        self._terms = {key: _Term() for keys in self._keys.values() for key in keys}

    def _solve(self, name: str, cost: np.ndarray, first: bool) -> np.ndarray:
        # Only a group's first solve in a call can expect the last call's answer to hold; later
        # ones follow a change of a neighbouring group, and certificates rarely succeed there.
        if self.lap is None:
            return linear_assignment(cost)
        return self.lap.solve(name, cost, certify_first=first)

    def _term(self, key: tuple[str, int, int], ta: Tensor, tb: Tensor,
              perms: dict[str, Tensor]) -> np.ndarray:
        """Σ over the other axes of A·B (B permuted by `perms`) for the units of one slot."""
        spec = self.spec
        name, axis, k = key
        slot = spec.slots[name][axis][k]
        n = spec.sizes[slot.perm]
        others = [(ax, slots) for ax, slots in spec.slots[name].items() if ax != axis]
        used = [perms[s.perm] for _, slots in others for s in slots]
        t = self._terms[key]
        if not _same(t.a_ref, ta):
            t.a_ref, t.value = _Seen(ta), None
            t.a_rows = units_first(segment(ta, axis, slot, n), axis, n, slot.layout, slot.repeat,
                                   slot.block)[0].reshape(n, -1)
        if not _same(t.b_ref, tb):
            t.b_ref, t.b_rows, t.value = _Seen(tb), None, None
            t.b_front, t.b_pos = units_first(segment(tb, axis, slot, n), axis, n, slot.layout,
                                             slot.repeat, slot.block)
        if t.value is not None and _equal(t.value_perms, used):
            return t.value
        if t.b_rows is None or not _equal(t.rows_perms, used):
            rows = t.b_front
            for ax, slots in others:
                dim = t.b_pos[ax]
                rows = rows.index_select(dim, slots_index(slots, perms, rows.shape[dim],
                                                          rows.device))
            t.b_rows, t.rows_perms = rows.reshape(n, -1), used
        t.value = (t.a_rows @ t.b_rows.T).cpu().numpy()
        t.value_perms = used
        return t.value

    def _cost(self, p: str, pa: Params, pb: Params, perms: dict[str, Tensor]) -> np.ndarray:
        n = self.spec.sizes[p]
        cost = np.zeros((n, n))
        for key in self._keys[p]:
            cost += self._term(key, pa[key[0]], pb[key[0]], perms)
        return cost

    def __call__(self, a: ModelOrParams, b: ModelOrParams,
                 init: Permutation | None = None) -> Permutation:
        """The permutation of `b` that best aligns its weights with `a`'s."""
        spec = self.spec
        pa, pb = state_of(a), state_of(b)
        spec.validate(pa)
        spec.validate(pb)
        if not self.warm:
            self._terms = {key: _Term() for key in self._terms}
        start = init if init is not None else (self.perm if self.warm else None)
        perms = dict(start if start is not None else Permutation.identity(spec))
        solved_with: dict[str, list[Tensor]] = {}
        # A head permutation is solved together with its members (two-level assignment).
        groups = [[p, *spec.members(p)] for p in spec.names if p not in spec.heads]
        self.passes = 0
        for _ in range(self.max_iter):
            self.passes += 1
            progress = False
            for idx in self._rng.permutation(len(groups)):
                group = groups[idx]
                p = group[0]
                used = [perms[s.perm] for q in group for name, axis in spec.perm_to_axes[q]
                        for ax, slots in spec.slots[name].items() if ax != axis for s in slots]
                if _equal(solved_with.get(p), used):
                    continue  # same cost as when last solved: same answer
                costs = [self._cost(q, pa, pb, perms) for q in group]
                current = [perms[q].numpy() for q in group]
                if len(group) == 1:
                    new = [self._solve(p, costs[0], first=p not in solved_with)]
                else:
                    sigma, flat, _ = head_assignment(costs[0], costs[1:], spec.sizes[p])
                    new = [sigma, *flat]
                solved_with[p] = used
                old_score = sum(c[np.arange(len(c)), cur].sum() for c, cur in zip(
                    costs, current, strict=True))
                new_score = sum(c[np.arange(len(c)), nw].sum() for c, nw in zip(
                    costs, new, strict=True))
                if new_score > old_score + 1e-12 * max(abs(old_score), 1.0):
                    for q, nw in zip(group, new, strict=True):
                        perms[q] = torch.from_numpy(np.asarray(nw, dtype=np.int64))
                    progress = True
            if not progress:
                break
        result = Permutation(spec, perms)
        if self.warm:
            self.perm = result
        return result


def weight_matching(a: ModelOrParams, b: ModelOrParams, spec: PermutationSpec | None = None,
                    example_input: Any | None = None, max_iter: int = 100, seed: int = 0,
                    init: Permutation | None = None) -> Permutation:
    """Permutation of `b` whose weights best match `a`'s (Git Re-Basin weight matching)."""
    spec = resolve_spec(a, spec, example_input)
    return WeightMatcher(spec, max_iter=max_iter, seed=seed)(a, b, init=init)


# --- activation matching --------------------------------------------------------------------


def _as_module(obj: ModelOrParams, model: nn.Module | None) -> nn.Module:
    if isinstance(obj, nn.Module):
        return obj
    if model is None:
        raise UsageError("this method runs the models: pass modules, or parameter dicts "
                         "together with model= (a module of the same architecture)")
    out = copy.deepcopy(model)
    out.load_state_dict(dict(obj))
    return out


@torch.no_grad()
def activation_matching(a: ModelOrParams, b: ModelOrParams, x: Tensor,
                        spec: PermutationSpec | None = None, *, model: nn.Module | None = None,
                        batch_size: int = 256, statistic: str = "pearson") -> Permutation:
    """Permutation of `b` whose units' activations on `x` best correlate with `a`'s.

    Units are read where the reference code reads them: after the non-linearity and before any
    pooling, every spatial position a sample."""
    if statistic not in ("pearson", "cross"):
        raise UsageError(f"statistic must be 'pearson' or 'cross', not {statistic!r}")
    _check_options(batch_size=batch_size)
    ma, mb = _as_module(a, model), _as_module(b, model)
    traced = trace(ma, x[:2], allow_partial=spec is not None)  # a given spec is the user's
    spec = resolve_spec(ma, traced.spec if spec is None else spec, x[:2])
    # Map the traced groups onto the spec's names through the tensors they act on.
    names: dict[str, str] = {}
    for p in traced.spec.sizes:
        for tensor, axis, slot in traced.spec.slots_of(p):
            q = next((s.perm for s in spec.slots.get(tensor, {}).get(axis, ())
                      if s.start == slot.start), None)
            if q is not None:
                names[p] = q
                break
    missing = [q for q in spec.sizes if q not in names.values() and not spec.members(q)]
    if missing:
        raise UsageError(f"activation matching found no activations for {missing}: the traced "
                         "graph and the given spec disagree")
    points = [(names[p], pt) for p, pts in traced.points.items() if p in names for pt in pts]
    nodes = sorted({pt.node for _, pt in points})
    runs = []
    for m in (ma, mb):
        was = m.training
        m.eval()
        runs.append((m, was, collector(traced.graph_module, m, nodes)))
    moments = {i: Moments() for i in range(len(points))}
    try:
        for idx in batches(len(x), batch_size):
            outs = [dict(zip(nodes, coll(x[idx]), strict=True)) for _, _, coll in runs]
            for i, (name, pt) in enumerate(points):
                n = spec.sizes[name]
                moments[i].add(units(outs[0][pt.node], pt, n), units(outs[1][pt.node], pt, n))
    finally:
        for m, was, _ in runs:
            m.train(was)
    scores = {}
    for name, n in spec.sizes.items():
        scores[name] = sum((moments[i].score(statistic).cpu() for i, (q, _) in enumerate(points)
                            if q == name),
                           torch.zeros(n, n, dtype=torch.float64)).numpy()
    return assign(spec, scores)


def assign(spec: PermutationSpec, scores: Mapping[str, np.ndarray]) -> Permutation:
    """The permutation maximising each group's score (n × n, A's units by B's): one LAP per
    permutation, the two-level assignment for a head permutation and its members."""
    perms: dict[str, np.ndarray] = {}
    for name in spec.names:
        if name in spec.heads:
            continue
        members = spec.members(name)
        if not members:
            perms[name] = linear_assignment(scores[name])
            continue
        sigma, flat, _ = head_assignment(scores[name], [scores[m] for m in members],
                                         spec.sizes[name])
        perms[name] = sigma
        perms.update(zip(members, flat, strict=True))
    return Permutation(spec, {k: torch.from_numpy(np.asarray(v, dtype=np.int64))
                              for k, v in perms.items()})


# --- straight-through estimator -------------------------------------------------------------


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode, except that normalisation layers use the batch's statistics."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


def _forward(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    # Buffers are cloned: BatchNorm's in-place running-stat updates must not reach the caller.
    buffers = {k for k, _ in model.named_buffers()}
    return functional_call(model, {k: v.clone() if k in buffers else v
                                   for k, v in params.items()}, (x,), tie_weights=False)


@torch.no_grad()
def _mean_loss(model: nn.Module, params: Params, x: Tensor, y: Tensor, loss_fn: LossFn,
               batch_size: int) -> float:
    """Mean of `loss_fn` over x in batches, with the caller's normalisation mode.

    Not the evaluation engine: STE scores candidates under `batch_statistics` (BatchNorm on each
    batch's own statistics, which the engine does not offer: it evaluates running or re-estimated
    statistics), with the caller's loss function rather than a Task, and sums in Python floats;
    the engine would change which epoch's permutation is kept."""
    total = 0.0
    for idx in batches(len(x), batch_size):
        total += float(loss_fn(_forward(model, params, x[idx]), y[idx])) * len(idx)
    return total / len(x)


# The reference runs STE for 10 epochs of CIFAR-10 (about 2,000 steps of 256). The permutations
# move only as fast as the proxies do, so on small datasets the epochs are raised to reach at
# least this many steps (digits: 6 steps per epoch; 10 epochs left STE-MM worse than MergeMany).
STE_MIN_STEPS = 250


def ste_epochs(n: int, batch_size: int, epochs: int | None = None) -> int:
    """The given epochs, or the default: 10, or enough for STE_MIN_STEPS steps on small data."""
    _check_options(batch_size=batch_size)
    if epochs is not None:
        if epochs < 1:
            raise UsageError(f"STE epochs must be at least 1, got {epochs}")
        return epochs
    return max(10, math.ceil(STE_MIN_STEPS / math.ceil(n / batch_size)))


def _straight_through(value: Tensor, proxy: Tensor) -> Tensor:
    """`value` in the forward pass; gradients flow to `proxy`."""
    return value + (proxy - proxy.detach())


def _run_epochs(loss_of: Callable[[Tensor], Tensor], opt: torch.optim.Optimizer, x: Tensor,
                batch_size: int, epochs: int, lr: float, gen: torch.Generator,
                end_epoch: Callable[[Epoch], None], desc: str, quiet: bool) -> None:
    """STE's epochs on the epoch driver: one optimizer step on `loss_of(batch indices)` per
    batch, a fresh order of x from `gen` each epoch, the constant learning rate, the divergence
    policy (DivergedError at the first non-finite batch loss) and a progress bar."""
    def step(idx: Tensor) -> Tensor:
        loss = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    EpochDriver(step, opt, batch_size=batch_size, device=x.device).run(
        epochs, lambda _: torch.randperm(len(x), generator=gen), lambda _e, _b: lr,
        end_epoch=end_epoch, desc=desc, quiet=quiet)


def ste_matching(a: nn.Module, b: ModelOrParams, x: Tensor, y: Tensor,
                 spec: PermutationSpec | None = None, *, batch_size: int = 256,
                 epochs: int | None = None, lr: float = 1e-3, seed: int = 0,
                 loss_fn: LossFn = CLASSIFICATION.loss, max_iter: int = 100,
                 eval_size: int | None = 4096, warm: bool = True, quiet: bool = False
                 ) -> Permutation:
    """Permutation of `b` found by the straight-through estimator (best midpoint loss on x, y).

    The weight matching of the start is the first candidate, so the result's midpoint loss on
    the evaluation samples is never above weight matching's. `epochs=None`: see `ste_epochs`.
    """
    _check_options(batch_size, lr, seed)
    spec = resolve_spec(a, spec, x[:2])
    epochs = ste_epochs(len(x), batch_size, epochs)
    pa, pb = state_of(a), state_of(b)
    trainable = {k for k, _ in a.named_parameters() if k in pa and is_float(pa[k])}
    theta = {k: pa[k].clone().requires_grad_(True) for k in trainable}
    opt = torch.optim.Adam(theta.values(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    matcher = WeightMatcher(spec, max_iter=max_iter, seed=seed, warm=warm)
    ex, ey = (x, y) if eval_size is None else (x[:eval_size], y[:eval_size])

    def midpoint_loss(perm: Permutation) -> float:
        return _mean_loss(a, mean_params([pa, perm.apply(pb)]), ex, ey, loss_fn, batch_size)

    perm = best = matcher(pa, pb)

    def loss_of(idx: Tensor) -> Tensor:
        nonlocal perm
        current = {k: theta[k].detach() if k in theta else v for k, v in pa.items()}
        perm = matcher(current, pb)
        aligned = perm.apply(pb)
        mid = {k: 0.5 * (v + (_straight_through(aligned[k], theta[k])
                              if k in theta else aligned[k])) if is_float(v) else v
               for k, v in pa.items()}
        return loss_fn(_forward(a, mid, x[idx]), y[idx])

    def end_epoch(_: Epoch) -> None:
        nonlocal best, best_loss
        loss_now = midpoint_loss(perm)
        if loss_now < best_loss:
            best, best_loss = perm, loss_now

    with batch_statistics(a):
        best_loss = midpoint_loss(best)
        _run_epochs(loss_of, opt, x, batch_size, epochs, lr, gen, end_epoch, "STE", quiet)
    return best


# --- several models -------------------------------------------------------------------------


def _canonical(perms: list[Permutation], params: dict[str, Tensor]) -> Merged:
    """Re-express everything in the first model's basis (its permutation becomes the identity)."""
    undo = perms[0].inverse()
    return Merged([undo.compose(p) for p in perms], undo.apply(params))


def merge_many(models: Sequence[ModelOrParams], spec: PermutationSpec | None = None,
               example_input: Any | None = None, max_iter: int = 100,
               seed: int = 0) -> Merged:
    """Align K models to their common average (MergeMany) and average them."""
    if len(models) < 2:
        raise UsageError(f"merging needs at least 2 models, got {len(models)}")
    spec = resolve_spec(models[0], spec, example_input)
    states = [state_of(m) for m in models]
    k = len(states)
    matchers = [WeightMatcher(spec, max_iter=max_iter, seed=seed + i) for i in range(k)]
    perms = [Permutation.identity(spec) for _ in range(k)]
    aligned = list(states)
    rng = np.random.default_rng(seed)
    best_dist, best = float("inf"), list(perms)
    for _ in range(max_iter):
        changed = False
        for l in rng.permutation(k):
            others = mean_params([aligned[i] for i in range(k) if i != l])
            new = matchers[l](others, states[l], init=perms[l])
            if new != perms[l]:
                changed = True
                perms[l] = new
                aligned[l] = new.apply(states[l])
        avg = mean_params(aligned)
        dist = sum(distance(s, avg) for s in aligned)
        if dist >= best_dist * (1 - 1e-12):
            break  # the summed distance to the average stopped decreasing
        best_dist, best = dist, list(perms)
        if not changed:
            break
    perms = best
    return _canonical(perms, mean_params([p.apply(s) for p, s in zip(perms, states, strict=True)]))


def ste_mm(models: Sequence[nn.Module], x: Tensor, y: Tensor,
           spec: PermutationSpec | None = None, *, batch_size: int = 256,
           epochs: int | None = None, lr: float = 1e-3, seed: int = 0, simplex: bool = True,
           loss_fn: LossFn = CLASSIFICATION.loss, max_iter: int = 100, warm: bool = True,
           eval_size: int | None = 4096, quiet: bool = False) -> Merged:
    """Align K models to the first with the multi-model straight-through estimator (STE-MM).

    As in STE, the permutations are kept from the epoch (or the start: each model weight-matched
    to the first) whose merged model has the lowest loss on the first `eval_size` samples of x.
    `epochs=None`: see `ste_epochs`.
    """
    if len(models) < 2:
        raise UsageError(f"merging needs at least 2 models, got {len(models)}")
    _check_options(batch_size, lr, seed)
    ref = models[0]
    spec = resolve_spec(ref, spec, x[:2])
    epochs = ste_epochs(len(x), batch_size, epochs)
    states = [state_of(m) for m in models]
    k = len(states)
    trainable = {n for n, _ in ref.named_parameters() if n in states[0]
                 and is_float(states[0][n])}
    proxies = [{n: states[0][n].clone().requires_grad_(True) for n in trainable}
               for _ in range(k - 1)]
    opt = torch.optim.Adam([t for p in proxies for t in p.values()], lr=lr)
    matchers = [WeightMatcher(spec, max_iter=max_iter, seed=seed + i, warm=warm)
                for i in range(k - 1)]
    gen = torch.Generator().manual_seed(seed)
    ex, ey = (x, y) if eval_size is None else (x[:eval_size], y[:eval_size])

    def proxy_state(i: int) -> dict[str, Tensor]:
        return {n: proxies[i][n].detach() if n in trainable else v for n, v in states[0].items()}

    def matched() -> tuple[list[Permutation], float]:
        perms = [Permutation.identity(spec)] + [
            matchers[i](proxy_state(i), states[i + 1]) for i in range(k - 1)]
        merged = mean_params([p.apply(s) for p, s in zip(perms, states, strict=True)])
        return perms, _mean_loss(ref, merged, ex, ey, loss_fn, batch_size)

    def loss_of(idx: Tensor) -> Tensor:
        points = [states[0]]
        for i in range(k - 1):
            aligned = matchers[i](proxy_state(i), states[i + 1]).apply(states[i + 1])
            points.append({n: _straight_through(v, proxies[i][n]) if n in trainable
                           else v for n, v in aligned.items()})
        if simplex:  # uniform on the simplex: normalised exponentials
            lam = -torch.rand(k, generator=gen, dtype=torch.float64).log()
            lam /= lam.sum()
        else:
            lam = torch.full((k,), 1.0 / k)
        return loss_fn(_forward(ref, mean_params(points, lam), x[idx]), y[idx])

    def end_epoch(_: Epoch) -> None:
        nonlocal best, best_loss
        perms, loss_now = matched()
        if loss_now < best_loss:
            best, best_loss = perms, loss_now

    with batch_statistics(ref):
        best, best_loss = matched()
        _run_epochs(loss_of, opt, x, batch_size, epochs, lr, gen, end_epoch, "STE-MM", quiet)
    perms = best
    return Merged(perms, mean_params([p.apply(s) for p, s in zip(perms, states, strict=True)]))

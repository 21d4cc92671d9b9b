"""Permutation specs (which permutation acts on each axis of each tensor) and permutations.

A spec maps every tensor of a parameter dict (``model.state_dict()`` keys, buffers included) to
one entry per axis: the name of the permutation acting on it, or None. A permuted axis normally
has one entry per unit; after a flatten it holds ``outer × n × inner`` entries in row-major order
(its *layout*), and the permutation moves the blocks of ``inner`` consecutive entries, e.g. the
``c·S + s`` inputs of a linear layer that follows a flattened C×S feature map.

Convention: applying permutation p to an axis selects ``tensor.index_select(axis, p)``, so unit
i of the result is unit ``p[i]`` of the input.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_leaves

from ..errors import UsageError

Layout = tuple[int, int]
M = TypeVar("M", bound=nn.Module)


class PermutationSpec:
    """Which permutation acts on each axis of each tensor of a parameter dict."""

    def __init__(self, axes: Mapping[str, Sequence[str | None]], sizes: Mapping[str, int],
                 layouts: Mapping[tuple[str, int], Layout] | None = None):
        self.axes: dict[str, tuple[str | None, ...]] = {k: tuple(v) for k, v in axes.items()}
        self.sizes: dict[str, int] = {k: int(v) for k, v in sizes.items()}
        self.layouts: dict[tuple[str, int], Layout] = {
            (k, int(a)): (int(o), int(i)) for (k, a), (o, i) in (layouts or {}).items()
            if (int(o), int(i)) != (1, 1)}
        self.perm_to_axes: dict[str, list[tuple[str, int]]] = {p: [] for p in self.sizes}
        for name, perms in self.axes.items():
            for axis, p in enumerate(perms):
                if p is None:
                    continue
                if p not in self.perm_to_axes:
                    raise UsageError(f"spec: {name!r} axis {axis} uses permutation {p!r}, "
                                     "which has no size")
                self.perm_to_axes[p].append((name, axis))
        for (name, axis) in self.layouts:
            entry = self.axes.get(name, ())
            if axis >= len(entry) or entry[axis] is None:
                raise UsageError(f"spec: layout given for {name!r} axis {axis}, "
                                 "which no permutation acts on")

    @classmethod
    def from_axes(cls, axes: Mapping[str, Sequence[str | None]], state: Mapping[str, Tensor],
                  layouts: Mapping[tuple[str, int], Layout] | None = None) -> PermutationSpec:
        """A spec whose permutation sizes are read off the tensors they act on."""
        sizes: dict[str, int] = {}
        layouts = dict(layouts or {})
        for name, perms in axes.items():
            if name not in state:
                raise UsageError(f"spec names {name!r}, which the parameter dict does not have")
            for axis, p in enumerate(perms):
                if p is not None and p not in sizes:
                    outer, inner = layouts.get((name, axis), (1, 1))
                    sizes[p] = state[name].shape[axis] // (outer * inner)
        spec = cls(axes, sizes, layouts)
        spec.validate(state)
        return spec

    @property
    def names(self) -> list[str]:
        """Permutation names, in the order they were declared."""
        return list(self.sizes)

    def layout(self, name: str, axis: int) -> Layout:
        """(outer, inner) block layout of a permuted axis; (1, 1) for one entry per unit."""
        return self.layouts.get((name, axis), (1, 1))

    def validate(self, state: Mapping[str, Tensor]) -> None:
        """Raise UsageError unless every tensor the spec names exists with matching sizes."""
        for name, perms in self.axes.items():
            if name not in state:
                raise UsageError(f"spec names {name!r}, which the parameter dict does not have")
            shape = tuple(state[name].shape)
            if len(perms) != len(shape):
                raise UsageError(f"spec gives {len(perms)} axes for {name!r}, "
                                 f"which has shape {shape}")
            for axis, p in enumerate(perms):
                if p is None:
                    continue
                outer, inner = self.layout(name, axis)
                if shape[axis] != outer * self.sizes[p] * inner:
                    raise UsageError(f"permutation {p!r} has size {self.sizes[p]} but acts on "
                                     f"{name!r} axis {axis} of length {shape[axis]}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {"sizes": self.sizes,
                "axes": {k: list(v) for k, v in self.axes.items() if any(p for p in v)},
                "layouts": [[k, a, o, i] for (k, a), (o, i) in self.layouts.items()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PermutationSpec:
        """Inverse of to_dict."""
        layouts = {(k, a): (o, i) for k, a, o, i in data.get("layouts", [])}
        return cls(data["axes"], data["sizes"], layouts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PermutationSpec) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        perms = ", ".join(f"{p}[{n}]×{len(self.perm_to_axes[p])}" for p, n in self.sizes.items())
        return f"PermutationSpec({perms})"


def axis_index(perm: Tensor, layout: Layout = (1, 1)) -> Tensor:
    """Indices along a whole axis with the given layout that realise a permutation of its units."""
    outer, inner = layout
    if layout == (1, 1):
        return perm
    n = perm.numel()
    idx = (torch.arange(outer, device=perm.device)[:, None, None] * (n * inner)
           + perm[None, :, None] * inner + torch.arange(inner, device=perm.device)[None, None, :])
    return idx.reshape(-1)


def units_first(t: Tensor, axis: int, n: int,
                layout: Layout = (1, 1)) -> tuple[Tensor, list[int | None]]:
    """`t` made contiguous with the units of `axis` as dim 0, and where each other axis went."""
    outer, inner = layout
    t = t.movedim(axis, 0)
    extra = 0
    if layout != (1, 1):
        t = t.reshape(outer, n, inner, *t.shape[1:]).movedim(1, 0)
        extra = 2
    pos = [None if ax == axis else 1 + extra + (ax if ax < axis else ax - 1)
           for ax in range(t.dim() - extra)]
    return t.contiguous(), pos


def permute_tensor(t: Tensor, spec: PermutationSpec, name: str, perms: Mapping[str, Tensor],
                   skip_axis: int | None = None) -> Tensor:
    """One tensor of a parameter dict with every permuted axis (but `skip_axis`) permuted."""
    for axis, p in enumerate(spec.axes.get(name, ())):
        if p is None or axis == skip_axis:
            continue
        idx = axis_index(perms[p].to(t.device), spec.layout(name, axis))
        t = t.index_select(axis, idx)
    return t


class Permutation(Mapping[str, Tensor]):
    """One permutation (a LongTensor) per name of a spec; apply it to a model or parameter dict."""

    def __init__(self, spec: PermutationSpec, perms: Mapping[str, Tensor | Sequence[int]]):
        missing = set(spec.sizes) - set(perms)
        extra = set(perms) - set(spec.sizes)
        if missing or extra:
            raise UsageError(f"permutation does not match its spec (missing {sorted(missing)}, "
                             f"unknown {sorted(extra)})")
        self.spec = spec
        self._perms: dict[str, Tensor] = {}
        for name in spec.sizes:
            p = torch.as_tensor(perms[name], dtype=torch.long).detach().cpu()
            n = spec.sizes[name]
            if p.shape != (n,) or not torch.equal(torch.sort(p).values, torch.arange(n)):
                raise UsageError(f"{name!r} is not a permutation of {n} units")
            self._perms[name] = p

    @classmethod
    def identity(cls, spec: PermutationSpec) -> Permutation:
        """The permutation that changes nothing."""
        return cls(spec, {p: torch.arange(n) for p, n in spec.sizes.items()})

    @classmethod
    def random(cls, spec: PermutationSpec,
               generator: torch.Generator | None = None) -> Permutation:
        """A uniformly random permutation of every group."""
        return cls(spec, {p: torch.randperm(n, generator=generator)
                          for p, n in spec.sizes.items()})

    def __getitem__(self, name: str) -> Tensor:
        return self._perms[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._perms)

    def __len__(self) -> int:
        return len(self._perms)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Permutation) and self.keys() == other.keys()
                and all(torch.equal(self[k], other[k]) for k in self))

    def __repr__(self) -> str:
        moved = sum(int((p != torch.arange(len(p))).any()) for p in self._perms.values())
        return f"Permutation({len(self)} groups, {moved} not identity)"

    def is_identity(self) -> bool:
        """Whether every group is the identity."""
        return all(torch.equal(p, torch.arange(len(p))) for p in self._perms.values())

    def inverse(self) -> Permutation:
        """The permutation that undoes this one."""
        return Permutation(self.spec, {k: torch.argsort(p) for k, p in self._perms.items()})

    def compose(self, first: Permutation) -> Permutation:
        """The permutation that applies `first`, then this one."""
        return Permutation(self.spec, {k: first[k][p] for k, p in self._perms.items()})

    @overload
    def apply(self, obj: M) -> M: ...

    @overload
    def apply(self, obj: Mapping[str, Tensor]) -> dict[str, Tensor]: ...

    def apply(self, obj: nn.Module | Mapping[str, Tensor]) -> nn.Module | dict[str, Tensor]:
        """Permuted copy: a new module for a module, a new dict for a dict."""
        if isinstance(obj, nn.Module):
            out = copy.deepcopy(obj)
            out.load_state_dict(self.apply(obj.state_dict()))
            return out
        return {k: permute_tensor(v, self.spec, k, self._perms) for k, v in obj.items()}

    def to_json(self) -> str:
        """JSON text holding the permutations and their spec."""
        return json.dumps({"permutation": {k: p.tolist() for k, p in self._perms.items()},
                           "spec": self.spec.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> Permutation:
        """Inverse of to_json."""
        data = json.loads(text)
        return cls(PermutationSpec.from_dict(data["spec"]), data["permutation"])


def _outputs(model: nn.Module, state: Mapping[str, Tensor], example_input: Any) -> list[Tensor]:
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    out = functional_call(model, dict(state), args)
    return [t for t in tree_leaves(out) if isinstance(t, Tensor)]


def _max_change(ref: list[Tensor], out: list[Tensor]) -> float:
    """Largest output change relative to the output scale."""
    worst = 0.0
    for r, o in zip(ref, out, strict=True):
        scale = float(r.abs().max()) if r.numel() else 0.0
        diff = float((r.double() - o.double()).abs().max()) if r.numel() else 0.0
        worst = max(worst, diff / max(scale, 1e-12))
    return worst


@torch.no_grad()
def check_spec(model: nn.Module, spec: PermutationSpec, example_input: Any, trials: int = 3,
               rtol: float = 1e-4, seed: int = 0) -> None:
    """Raise UsageError unless random permutations from `spec` leave the outputs unchanged."""
    state = model.state_dict()
    spec.validate(state)
    was_training = model.training
    model.eval()
    try:
        ref = _outputs(model, state, example_input)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(trials):
            perm = Permutation.random(spec, gen)
            if _max_change(ref, _outputs(model, perm.apply(state), example_input)) <= rtol:
                continue
            culprits = []
            for name in spec.sizes:
                single = dict(Permutation.identity(spec))
                single[name] = perm[name]
                one = Permutation(spec, single).apply(state)
                change = _max_change(ref, _outputs(model, one, example_input))
                if change > rtol:
                    where = ", ".join(f"{k}[{a}]" for k, a in spec.perm_to_axes[name][:4])
                    culprits.append(f"{name!r} (on {where}) changes them by {change:.2g}")
            detail = "; ".join(culprits) or "only permuting several groups together does"
            raise UsageError(f"the permutation spec does not fit {type(model).__name__}: "
                             f"permuting changes the outputs: {detail}")
    finally:
        model.train(was_training)

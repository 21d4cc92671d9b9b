"""Permutation specs (which permutation acts on each axis of each tensor) and permutations.

A spec maps every tensor of a parameter dict (``model.state_dict()`` keys, buffers included) to
one entry per axis: the name of the permutation acting on it, or None. A permuted axis normally
has one entry per unit; after a flatten it holds ``outer × n × inner`` entries in row-major order
(its *layout*), and the permutation moves the blocks of ``inner`` consecutive entries, e.g. the
``c·S + s`` inputs of a linear layer that follows a flattened C×S feature map.

An axis may also be a concatenation of *segments*, each permuted by its own permutation (the
input axis of a layer after ``torch.cat``, the output axis of a fused q/k/v projection): a
:class:`Slot` says where one permutation acts, ``[start, start + outer·n·inner)`` in the
``(outer, n, inner)`` layout. Entries no slot covers stay where they are.

Attention heads form a structured group: a *head* permutation σ of H heads, and *member*
permutations of H·b units each (the rows shared by Q and K, those shared by V and O's columns)
that move whole head blocks as σ does and permute within each head freely:
``member[h·b + i] = σ[h]·b + τ_h(i)``. ``heads`` maps each member to its head permutation.

Convention: applying permutation p to an axis selects ``tensor.index_select(axis, p)``, so unit
i of the result is unit ``p[i]`` of the input.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_leaves

from ..errors import UsageError

Layout = tuple[int, int]
M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class Slot:
    """Where one permutation acts on one axis: the entries ``[start, start + outer·n·inner)``,
    read in the ``(outer, n, inner)`` row-major layout, whose ``n`` units it moves.

    ``repeat`` > 1: every block of ``block`` consecutive units appears ``repeat`` times in a row
    (``(outer, n/block, repeat, block, inner)``), each copy moved alike — the query heads that
    share one key/value head in grouped-query attention."""

    perm: str
    start: int = 0
    outer: int = 1
    inner: int = 1
    repeat: int = 1
    block: int = 1

    @property
    def layout(self) -> Layout:
        return self.outer, self.inner

    def length(self, n: int) -> int:
        return self.outer * n * self.repeat * self.inner


class PermutationSpec:
    """Which permutation acts on each axis (or each segment of an axis) of each tensor of a
    parameter dict, and which permutations are attention heads' members."""

    def __init__(self, axes: Mapping[str, Sequence[str | None]], sizes: Mapping[str, int],
                 layouts: Mapping[tuple[str, int], Layout] | None = None, *,
                 segments: Mapping[tuple[str, int], Sequence[Sequence[Any]]] | None = None,
                 heads: Mapping[str, str] | None = None):
        self.axes: dict[str, tuple[str | None, ...]] = {k: tuple(v) for k, v in axes.items()}
        self.sizes: dict[str, int] = {k: int(v) for k, v in sizes.items()}
        self.layouts: dict[tuple[str, int], Layout] = {
            (k, int(a)): (int(o), int(i)) for (k, a), (o, i) in (layouts or {}).items()
            if (int(o), int(i)) != (1, 1)}
        self.segments: dict[tuple[str, int], tuple[Slot, ...]] = {
            (k, int(a)): tuple(sorted((Slot(str(p), *map(int, rest)) for p, *rest in v),
                                      key=lambda slot: slot.start))
            for (k, a), v in (segments or {}).items() if v}
        self.heads: dict[str, str] = dict(heads or {})
        self.slots: dict[str, dict[int, tuple[Slot, ...]]] = {}
        self.perm_to_axes: dict[str, list[tuple[str, int]]] = {p: [] for p in self.sizes}
        for name, perms in self.axes.items():
            for axis, p in enumerate(perms):
                if p is None:
                    continue
                self._place(name, axis, (Slot(p, 0, *self.layout(name, axis)),))
        for (name, axis), slots in self.segments.items():
            if axis < len(self.axes.get(name, ())) and self.axes[name][axis] is not None:
                raise UsageError(f"spec: {name!r} axis {axis} has both a permutation and "
                                 "segments; give one of them")
            self._place(name, axis, slots)
        for (name, axis) in self.layouts:
            entry = self.axes.get(name, ())
            if axis >= len(entry) or entry[axis] is None:
                raise UsageError(f"spec: layout given for {name!r} axis {axis}, "
                                 "which no permutation acts on")
        for member, head in self.heads.items():
            if member not in self.sizes or head not in self.sizes:
                raise UsageError(f"spec: heads pairs {member!r} with {head!r}, which are not both "
                                 "permutations of the spec")
            if head in self.heads or member == head:
                raise UsageError(f"spec: {head!r} is a head permutation and cannot be a member")
            if self.sizes[member] % self.sizes[head]:
                raise UsageError(f"spec: {member!r} has {self.sizes[member]} units, not a whole "
                                 f"number per head of {head!r} ({self.sizes[head]} heads)")

    def _place(self, name: str, axis: int, slots: Sequence[Slot]) -> None:
        for slot in slots:
            if slot.perm not in self.perm_to_axes:
                raise UsageError(f"spec: {name!r} axis {axis} uses permutation {slot.perm!r}, "
                                 "which has no size")
            if (name, axis) not in self.perm_to_axes[slot.perm]:
                self.perm_to_axes[slot.perm].append((name, axis))
        self.slots.setdefault(name, {})[axis] = tuple(slots)

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

    def members(self, head: str) -> list[str]:
        """The member permutations of a head permutation (none for other permutations)."""
        return [m for m, h in self.heads.items() if h == head]

    def layout(self, name: str, axis: int) -> Layout:
        """(outer, inner) block layout of a permuted axis; (1, 1) for one entry per unit."""
        return self.layouts.get((name, axis), (1, 1))

    def slots_of(self, perm: str) -> list[tuple[str, int, Slot]]:
        """Every (tensor, axis, slot) a permutation acts on."""
        return [(name, axis, slot) for name, axis in self.perm_to_axes[perm]
                for slot in self.slots[name][axis] if slot.perm == perm]

    def validate(self, state: Mapping[str, Tensor]) -> None:
        """Raise UsageError unless every tensor the spec names exists with matching sizes."""
        for name in set(self.axes) | set(self.slots):
            if name not in state:
                raise UsageError(f"spec names {name!r}, which the parameter dict does not have")
            shape = tuple(state[name].shape)
            if name in self.axes and len(self.axes[name]) != len(shape):
                raise UsageError(f"spec gives {len(self.axes[name])} axes for {name!r}, "
                                 f"which has shape {shape}")
            for axis, slots in self.slots.get(name, {}).items():
                if axis >= len(shape):
                    raise UsageError(f"spec permutes axis {axis} of {name!r}, which has shape "
                                     f"{shape}")
                end = 0
                for slot in slots:
                    n = self.sizes[slot.perm]
                    whole = (name, axis) not in self.segments
                    if whole and shape[axis] != slot.length(n):
                        raise UsageError(f"permutation {slot.perm!r} has size {n} but acts on "
                                         f"{name!r} axis {axis} of length {shape[axis]}")
                    if slot.start < end or slot.start + slot.length(n) > shape[axis]:
                        raise UsageError(f"permutation {slot.perm!r} acts on entries "
                                         f"{slot.start}..{slot.start + slot.length(n) - 1} of "
                                         f"{name!r} axis {axis}, which overlap another segment "
                                         f"or pass its length {shape[axis]}")
                    end = slot.start + slot.length(n)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        out: dict[str, Any] = {
            "sizes": self.sizes,
            "axes": {k: list(v) for k, v in self.axes.items() if any(p for p in v)},
            "layouts": [[k, a, o, i] for (k, a), (o, i) in self.layouts.items()]}
        if self.segments:
            out["segments"] = [[k, a, [[s.perm, s.start, s.outer, s.inner]
                                       + ([s.repeat, s.block] if s.repeat > 1 else [])
                                       for s in slots]]
                               for (k, a), slots in self.segments.items()]
        if self.heads:
            out["heads"] = self.heads
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PermutationSpec:
        """Inverse of to_dict."""
        layouts = {(k, a): (o, i) for k, a, o, i in data.get("layouts", [])}
        segments = {(k, a): slots for k, a, slots in data.get("segments", [])}
        return cls(data["axes"], data["sizes"], layouts, segments=segments,
                   heads=data.get("heads"))

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


def slot_index(perm: Tensor, slot: Slot) -> Tensor:
    """Indices along a slot's entries (from its start) that realise a permutation of its units."""
    if slot.repeat == 1:
        return axis_index(perm, slot.layout)
    n, b, r, inner = perm.numel(), slot.block, slot.repeat, slot.inner
    src = perm.view(n // b, 1, b)
    heads, within = src // b, src % b
    dev = perm.device
    o = torch.arange(slot.outer, device=dev)[:, None, None, None, None]
    rr = torch.arange(r, device=dev)[None, None, :, None, None]
    i = torch.arange(inner, device=dev)[None, None, None, None, :]
    idx = (o * (n * r * inner) + heads[None, :, :, :, None] * (r * b * inner)
           + rr * (b * inner) + within[None, :, :, :, None] * inner + i)
    return idx.reshape(-1)


def slots_index(slots: Sequence[Slot], perms: Mapping[str, Tensor], length: int,
                device: torch.device | None = None) -> Tensor:
    """Indices along a whole axis of `length` entries that realise each slot's permutation."""
    first = perms[slots[0].perm].to(device)
    if len(slots) == 1 and slots[0].start == 0 and slots[0].length(len(first)) == length:
        return slot_index(first, slots[0])
    idx = torch.arange(length, device=device)
    for slot in slots:
        p = perms[slot.perm].to(device)
        idx[slot.start:slot.start + slot.length(len(p))] = slot.start + slot_index(p, slot)
    return idx


def segment(t: Tensor, axis: int, slot: Slot, n: int) -> Tensor:
    """The entries of `t` along `axis` that `slot` covers."""
    if slot.start == 0 and slot.length(n) == t.shape[axis]:
        return t
    return t.narrow(axis, slot.start, slot.length(n))


def units_first(t: Tensor, axis: int, n: int, layout: Layout = (1, 1), repeat: int = 1,
                block: int = 1) -> tuple[Tensor, list[int | None]]:
    """`t` made contiguous with the units of `axis` as dim 0, and where each other axis went
    (a slot's repeated copies of a unit become more entries of its row)."""
    outer, inner = layout
    t = t.movedim(axis, 0)
    extra = 0
    if repeat > 1:
        rest = t.shape[1:]
        t = t.reshape(outer, n // block, repeat, block, inner, *rest)
        t = t.permute(1, 3, 0, 2, 4, *range(5, t.dim())).reshape(n, outer, repeat, inner, *rest)
        extra = 3
    elif layout != (1, 1):
        t = t.reshape(outer, n, inner, *t.shape[1:]).movedim(1, 0)
        extra = 2
    pos = [None if ax == axis else 1 + extra + (ax if ax < axis else ax - 1)
           for ax in range(t.dim() - extra)]
    return t.contiguous(), pos


def permute_tensor(t: Tensor, spec: PermutationSpec, name: str, perms: Mapping[str, Tensor],
                   skip_axis: int | None = None) -> Tensor:
    """One tensor of a parameter dict with every permuted axis (but `skip_axis`) permuted."""
    for axis, slots in spec.slots.get(name, {}).items():
        if axis == skip_axis:
            continue
        t = t.index_select(axis, slots_index(slots, perms, t.shape[axis], t.device))
    return t


def head_blocks(member: Tensor, heads: int) -> Tensor | None:
    """The head permutation a member permutation moves whole blocks by (None: it does not)."""
    b = len(member) // heads
    blocks = member.view(heads, b) // b
    if not bool((blocks == blocks[:, :1]).all()):
        return None
    return blocks[:, 0]


def structured(head: Tensor, b: int, within: Sequence[Tensor] | None = None) -> Tensor:
    """The member permutation that moves head h's block to where `head` says, permuting each
    head's b units by `within[h]` (identity when None): member[h·b + i] = head[h]·b + within[h][i]."""
    rows = [head[h] * b + (within[h] if within is not None else torch.arange(b))
            for h in range(len(head))]
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)


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
        for member, head in spec.heads.items():
            moved = head_blocks(self._perms[member], spec.sizes[head])
            if moved is None or not torch.equal(moved, self._perms[head]):
                raise UsageError(f"{member!r} does not move whole heads as {head!r} does (an "
                                 "attention member permutes within heads and moves head blocks "
                                 "with its head permutation)")

    @classmethod
    def identity(cls, spec: PermutationSpec) -> Permutation:
        """The permutation that changes nothing."""
        return cls(spec, {p: torch.arange(n) for p, n in spec.sizes.items()})

    @classmethod
    def random(cls, spec: PermutationSpec,
               generator: torch.Generator | None = None) -> Permutation:
        """A uniformly random permutation of every group (members: random within each head)."""
        perms = {p: torch.randperm(n, generator=generator) for p, n in spec.sizes.items()
                 if p not in spec.heads}
        for member, head in spec.heads.items():
            b = spec.sizes[member] // spec.sizes[head]
            perms[member] = structured(perms[head], b, [torch.randperm(b, generator=generator)
                                                        for _ in range(spec.sizes[head])])
        return cls(spec, perms)

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
    out = functional_call(model, dict(state), args, tie_weights=False)
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
                if name in spec.heads:
                    continue  # moves with its head permutation
                single = dict(Permutation.identity(spec))
                for q in [name, *spec.members(name)]:
                    single[q] = perm[q]
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

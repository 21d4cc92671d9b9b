"""Derive a permutation spec from a model's graph: the channel groups the graph reader finds.

The graph reader (:mod:`modeconn.graph`) follows channels through the traced graph; every
channel group that is not fixed becomes one permutation of the spec, named after the layer that
first makes it, acting on the state-tensor axes it indexes. Where activation matching reads a
permutation's units comes from the same pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, fx, nn

from ..errors import UsageError
from ..graph import HINT, Point, Propagation, read
from .spec import PermutationSpec, check_spec

__all__ = ["Point", "Traced", "auto_spec", "trace"]


@dataclass
class Traced:
    """A traced model, its spec, and where each permutation's units can be observed."""

    graph_module: fx.GraphModule
    spec: PermutationSpec
    points: dict[str, list[Point]]


def trace(model: nn.Module, example_input: Any, allow_partial: bool = False) -> Traced:
    """Trace a model with an example input and derive its permutation spec.

    A layer whose channels the spec must leave in place for a reason other than the model's own
    constraints (its output, grouped layers) is refused in one line naming it and why, unless
    `allow_partial`: nothing is left unaligned silently."""
    graph = read(model, example_input, who="auto_spec")
    prop = graph.propagation
    if not allow_partial:
        refuse_partial(type(model).__name__, prop.uncovered())
    return _build(graph.graph_module, prop, dict(model.state_dict()))


def refuse_partial(model_name: str, uncovered: list[tuple[str, list[str], str]]) -> None:
    """One line naming the groups a spec cannot cover, why, and how to go on without them."""
    if not uncovered:
        return
    parts = []
    for label, tensors, why in uncovered[:3]:
        shown = ", ".join(tensors[:3]) + (", …" if len(tensors) > 3 else "")
        parts.append(f"{label!r} ({shown}) {why}")
    more = f"; and {len(uncovered) - 3} more" if len(uncovered) > 3 else ""
    raise UsageError(f"auto_spec cannot align all of {model_name}: {'; '.join(parts)}{more}; "
                     "pass allow_partial=True (--allow-partial) to align the rest and leave "
                     f"these in place, or {HINT}")


def _build(gm: fx.GraphModule, prop: Propagation, state: dict[str, Tensor]) -> Traced:
    uf = prop.uf
    resolved = {key: prop.slots(b.perm, 0, b.outer, b.inner, b.part, b.repeat)
                for key, b in prop.binds.items() if key[0] in state}
    names: dict[tuple[str, int], str] = {}
    sizes: dict[str, int] = {}
    groups = sorted({(kind, g) for slots in resolved.values() for kind, g, *_ in slots},
                    key=lambda kg: (kg[0] == "head", kg[1]))
    for kind, g in groups:  # the permutations, oldest group first, heads last
        label = uf.label[g] if kind == "perm" else uf.hu.label[g]
        while label in sizes:
            label += "'"
        names[(kind, g)] = label
        sizes[label] = uf.size[g] if kind == "perm" else uf.hu.size[g]
    heads: dict[str, str] = {}
    for kind, g in groups:
        h = uf.head_of(g) if kind == "perm" else None
        if h is not None:
            if ("head", h) not in names:
                label = uf.hu.label[h]
                while label in sizes:
                    label += "'"
                names[("head", h)] = label
                sizes[label] = uf.hu.size[h]
            heads[names[(kind, g)]] = names[("head", h)]
    axes: dict[str, list[str | None]] = {k: [None] * v.dim() for k, v in state.items()}
    layouts: dict[tuple[str, int], tuple[int, int]] = {}
    segments: dict[tuple[str, int], list[tuple[str, int, int, int, int, int]]] = {}
    for (tensor, axis), slots in resolved.items():
        named = [(names[(kind, g)], start, o, i, r, blk) for kind, g, start, o, i, r, blk in slots]
        if len(named) == 1 and named[0][1] == 0 and named[0][4] == 1 and \
                named[0][2] * sizes[named[0][0]] * named[0][3] == state[tensor].shape[axis]:
            axes[tensor][axis] = named[0][0]
            layouts[(tensor, axis)] = (named[0][2], named[0][3])
        elif named:
            segments[(tensor, axis)] = named
    spec = PermutationSpec(axes, sizes, layouts, segments=segments, heads=heads)
    # Where a layer takes a permutation's units in (after the non-linearity, and before any
    # pooling on the way, as the references read them) is preferred; where a layer creates
    # them serves for the rest.
    found: tuple[dict[str, list[Point]], dict[str, list[Point]]] = ({}, {})
    for collection, into in zip((prop.inputs, prop.outputs), found, strict=True):
        for point, perm in collection:
            for kind, g, start, o, i, r, blk in prop.slots(perm, point.start, point.outer,
                                                             point.inner, None, point.repeat):
                name = names.get((kind, g))
                seen = Point(point.node, point.dim, o, i, start, r, blk)
                if name is not None and seen not in into.setdefault(name, []):
                    into[name].append(seen)
    points = {name: found[0].get(name) or found[1].get(name, []) for name in sizes}
    return Traced(gm, spec, points)


def auto_spec(model: nn.Module, example_input: Any, check: bool = True,
              allow_partial: bool = False) -> PermutationSpec:
    """The permutation spec of any traceable model, derived from its graph (and checked).

    `allow_partial`: leave in place the layers the graph reader cannot let a permutation move
    (otherwise they are refused in one line naming them)."""
    spec = trace(model, example_input, allow_partial).spec
    if check:
        check_spec(model, spec, example_input, trials=2)
    return spec

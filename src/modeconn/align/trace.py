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

from ..graph import Point, Propagation, read
from .spec import PermutationSpec, check_spec

__all__ = ["Point", "Traced", "auto_spec", "trace"]


@dataclass
class Traced:
    """A traced model, its spec, and where each permutation's units can be observed."""

    graph_module: fx.GraphModule
    spec: PermutationSpec
    points: dict[str, list[Point]]


def trace(model: nn.Module, example_input: Any) -> Traced:
    """Trace a model with an example input and derive its permutation spec."""
    graph = read(model, example_input, who="auto_spec")
    return _build(graph.graph_module, graph.propagation, dict(model.state_dict()))


def _build(gm: fx.GraphModule, prop: Propagation, state: dict[str, Tensor]) -> Traced:
    uf = prop.uf
    names: dict[int, str] = {}
    sizes: dict[str, int] = {}
    for (_, _), b in sorted(prop.binds.items(), key=lambda kv: uf.find(kv[1].perm)):
        root = uf.find(b.perm)
        if uf.fixed[root] or root in names:
            continue
        name = uf.label[root]
        while name in sizes:
            name += "'"
        names[root] = name
        sizes[name] = uf.size[root]
    axes = {k: [None] * v.dim() for k, v in state.items()}
    layouts = {}
    for (tensor, axis), b in prop.binds.items():
        root = uf.find(b.perm)
        if root in names:
            axes[tensor][axis] = names[root]
            layouts[(tensor, axis)] = b.layout
    spec = PermutationSpec(axes, sizes, layouts)
    # Where a layer takes a permutation's units in (after the non-linearity, and before any
    # pooling on the way, as the references read them) is preferred; where a layer creates
    # them serves for the rest.
    found: tuple[dict[str, list[Point]], dict[str, list[Point]]] = ({}, {})
    for collection, into in zip((prop.inputs, prop.outputs), found, strict=True):
        for point, perm in collection:
            name = names.get(uf.find(perm))
            if name is not None and point not in into.setdefault(name, []):
                into[name].append(point)
    points = {name: found[0].get(name) or found[1].get(name, []) for name in sizes}
    return Traced(gm, spec, points)


def auto_spec(model: nn.Module, example_input: Any, check: bool = True) -> PermutationSpec:
    """The permutation spec of any traceable model, derived from its graph (and checked)."""
    spec = trace(model, example_input).spec
    if check:
        check_spec(model, spec, example_input, trials=2)
    return spec

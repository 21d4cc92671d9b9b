"""What activation matching and OT fusion's activation cost share: the hidden units' values of
two models at traced points, batch by batch, reduced to running moments of their correlation."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, fx, nn

from .trace import Point


def batches(n: int, batch_size: int, generator: torch.Generator | None = None
            ) -> Iterator[Tensor]:
    """Indices of x in batches: in order, or shuffled by `generator`."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def units(value: Tensor, point: Point, n: int) -> Tensor:
    """A value's entries at a point as (samples, units)."""
    length = point.outer * n * point.repeat * point.inner
    t = value.narrow(point.dim, point.start, length).movedim(point.dim, -1)
    if point.repeat > 1:  # head blocks repeated: each copy is one more sample of its units
        b = point.block
        t = t.reshape(*t.shape[:-1], point.outer, n // b, point.repeat, b, point.inner)
        t = t.movedim(-4, -1).movedim(-3, -1)  # (..., outer, repeat, inner, heads, block)
        return t.reshape(-1, n)
    t = t.reshape(*t.shape[:-1], point.outer, n, point.inner).movedim(-2, -1)
    return t.reshape(-1, n)


class Moments:
    """Running sums for the correlation of two sets of units."""

    def __init__(self) -> None:
        self.count = 0
        self.sa: Tensor | float = 0.0
        self.sb: Tensor | float = 0.0
        self.saa: Tensor | float = 0.0
        self.sbb: Tensor | float = 0.0
        self.sab: Tensor | float = 0.0

    def add(self, xa: Tensor, xb: Tensor) -> None:
        xa, xb = xa.double(), xb.double()
        self.count += xa.shape[0]
        self.sa = self.sa + xa.sum(0)
        self.sb = self.sb + xb.sum(0)
        self.saa = self.saa + (xa * xa).sum(0)
        self.sbb = self.sbb + (xb * xb).sum(0)
        self.sab = self.sab + xa.T @ xb

    def score(self, statistic: str) -> Tensor:
        m = self.count
        if statistic == "cross":
            return self.sab / m
        ma, mb = self.sa / m, self.sb / m
        cov = self.sab / m - ma[:, None] * mb[None, :]
        sa = (self.saa / m - ma ** 2).clamp_min(0).sqrt()
        sb = (self.sbb / m - mb ** 2).clamp_min(0).sqrt()
        return torch.nan_to_num(cov / (sa[:, None] * sb[None, :] + 1e-12))


def collector(gm: fx.GraphModule, root: nn.Module, nodes: list[str]) -> fx.GraphModule:
    """A copy of the traced graph, run on `root`, that returns the values of the named nodes."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.graph_copy(gm.graph, env)
    by_name = {n.name: env[n] for n in gm.graph.nodes if n in env}
    graph.output(tuple(by_name[n] for n in nodes))
    collector = fx.GraphModule(root, graph)
    collector.graph.eliminate_dead_code()
    collector.recompile()
    return collector

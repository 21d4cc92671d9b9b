"""How channels flow through a traced graph: the propagation behind permutation specs.

Every value in the traced graph carries, per dimension, the channel group acting on it (or none).
Layers with weights start a new group on their output units and bind the group of their input to
the weight's input axis; element-wise and pooling operations pass groups through; adding or
multiplying two grouped values ties their groups (union–find). A group that meets something it
cannot act on (the model's input or output, a constant, a GroupNorm with several groups, a
grouped convolution's input) is *fixed*: no permutation may act on it. An operation the
propagation does not know raises UsageError when a grouped value reaches it. What each operation
is comes from the roles of ``_ops`` (and the user's registrations).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..errors import UsageError
from ._ops import CONV_FUNCTIONS, LINEAR, Layer, Role


@dataclass(frozen=True)
class Bind:
    """A permutation acting on one dimension of a value, in an (outer, inner) block layout.

    ``part``: None for the whole permutation; after a reshape splits a group's units into
    (heads, per-head units), ``"heads"`` on the dim of heads (the group's head permutation) and
    ``"within"`` on the dim of each head's units (the within-head permutations). After a reshape
    splits a fused projection into (pieces, heads, per-head units) — timm's
    ``qkv.reshape(B, N, 3, H, d)`` — ``"pieces"``, ``"pieces.heads"`` and ``"pieces.within"``:
    selecting a piece (``unbind``, ``[k]``) gives that part's ``"heads"`` and ``"within"``."""

    perm: int
    outer: int = 1
    inner: int = 1
    part: str | None = None
    repeat: int = 1  # each head block repeated (grouped-query attention's shared heads)

    @property
    def layout(self) -> tuple[int, int]:
        return self.outer, self.inner

    def moved(self, outer: int, inner: int) -> Bind:
        return Bind(self.perm, outer, inner, self.part, self.repeat)


@dataclass(frozen=True)
class Point:
    """A place where a permutation's units can be observed: one dimension of a node's value."""

    node: str
    dim: int
    outer: int
    inner: int
    start: int = 0
    repeat: int = 1
    block: int = 1


@dataclass
class Value:
    """What the propagation knows about one tensor of the graph."""

    shape: tuple[int, ...]
    dims: dict[int, Bind] = field(default_factory=dict)
    # When the tensor is a state tensor seen through size-1 reshapes: its name and, per
    # dimension, the tensor axis it shows (None for inserted size-1 dimensions).
    param: tuple[str, tuple[int | None, ...]] | None = None
    # Per permuted dimension: where its units were seen before the spatial operations (pooling,
    # padding, resizing) and reshapes that led here, the place activation matching reads them.
    seen: dict[int, Point] = field(default_factory=dict)


class _UnionFind:
    """Channel groups and their structure: a group may be split into consecutive parts (a
    concatenation, a fused projection split in pieces) or into heads (``heads[root]`` heads of
    equal size, whose head permutation is a group of the head union-find ``hu``; with
    ``within_fixed`` the units inside each head may not move)."""

    def __init__(self, heads: bool = True) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.label: list[str] = []
        self.heads: list[int | None] = []
        self.hid: list[int | None] = []
        self.within_fixed: list[bool] = []
        # (offset, entries, group, inner): a part's units, `inner` entries each
        self.parts: list[list[tuple[int, int, int, int]] | None] = []
        # Why each fixed group is fixed: (kind, text) pairs; LEGITIMATE kinds are the model's
        # own constraints (its output, grouped layers), the others leave a layer unaligned.
        self.why: list[list[tuple[str, str]]] = []
        # A group that is another's with each head repeated (grouped-query attention's queries
        # follow their key/value head): (that group, repeats).
        self.alias: list[tuple[int, int] | None] = []
        self.hu = _UnionFind(heads=False) if heads else None

    def new(self, size: int, label: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.fixed.append(size <= 1)
        self.label.append(label)
        self.heads.append(None)
        self.hid.append(None)
        self.within_fixed.append(False)
        self.parts.append(None)
        self.why.append([("structure", "has a single unit")] if size <= 1 else [])
        self.alias.append(None)
        return len(self.parent) - 1

    def resolve(self, perm: int, repeat: int = 1) -> tuple[int, int]:
        """The group a group stands for, and how often each head block repeats there."""
        r = self.find(perm)
        while self.alias[r] is not None:
            target, g = self.alias[r]
            r, repeat = self.find(target), repeat * g
        return r, repeat

    def split(self, i: int, sizes: Sequence[int]) -> list[int] | None:
        """The groups of consecutive parts of `sizes` units each (None: the group cannot split
        so, and is fixed)."""
        r = self.find(i)
        parts = self.parts[r]
        if parts is not None:
            if [(s, i) for _, s, _, i in parts] == [(s, 1) for s in sizes]:
                return [c for _, _, c, _ in parts]
            self.fix(r, ("split", "is split in two different ways"))
            return None
        if self.heads[r] is not None:
            self.fix(r, ("split", "is split into pieces after being split into heads"))
            return None
        out = []
        for k, s in enumerate(sizes):
            c = self.new(s, f"{self.label[r]}[{k}]")
            if self.fixed[r]:
                for why in self.why[r] or [None]:
                    self.fix(c, why)
            out.append(c)
        self.parts[r] = [(sum(sizes[:k]), s, c, 1) for k, (s, c) in enumerate(zip(sizes, out))]
        return out

    def composite(self, children: Sequence[tuple[int, int, int]], label: str) -> int:
        """A new group made of the given (entries, group, inner) parts, in order."""
        r = self.new(sum(s for s, _, _ in children), label)
        off = 0
        self.parts[r] = []
        for s, c, inner in children:
            self.parts[r].append((off, s, c, inner))
            off += s
        return r

    def set_heads(self, i: int, heads: int) -> bool:
        """Give the group a head structure of `heads` heads (False: it cannot have one)."""
        r = self.find(i)
        if self.parts[r] is not None:
            self.fix(r, ("split", "is split into heads after being split into pieces"))
            return False
        if self.size[r] % heads:
            self.fix(r, ("split", f"cannot be split into {heads} heads of equal size"))
            return False
        if self.heads[r] is None:
            self.heads[r] = heads
            h = self.hid[r] = self.hu.new(heads, f"{self.label[r]}.heads")
            self.hu.fixed[h], self.hu.why[h] = False, []  # one head: its units still move
        elif self.heads[r] != heads:
            self.fix(r, ("split", f"is split into {heads} and into {self.heads[r]} heads"))
            return False
        return True

    def head_of(self, i: int) -> int | None:
        r = self.find(i)
        return None if self.hid[r] is None else self.hu.find(self.hid[r])

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> int:
        i, j = self.find(i), self.find(j)
        if i == j:
            return i
        if i > j:
            i, j = j, i  # the older group names the union
        self.parent[j] = i
        self.fixed[i] = self.fixed[i] or self.fixed[j] or self.size[i] != self.size[j]
        self.why[i] = (self.why[i] + [w for w in self.why[j] if w not in self.why[i]])[:8]
        if self.size[i] != self.size[j]:
            self.why[i].append(("size", f"is tied to a group of {self.size[j]} units, not "
                                        f"{self.size[i]}"))
        if self.hu is None:
            return i
        if self.alias[i] is not None or self.alias[j] is not None:
            self.fix(i, ("split", "is tied to query heads that follow another head"))
        self.within_fixed[i] = self.within_fixed[i] or self.within_fixed[j]
        if self.heads[i] is None:
            self.heads[i], self.hid[i] = self.heads[j], self.hid[j]
        elif self.heads[j] is not None:
            if self.heads[i] != self.heads[j]:
                self.fix(i, ("split", "is split into different numbers of heads"))
            else:
                self.hu.union(self.hid[i], self.hid[j])
        pi, pj = self.parts[i], self.parts[j]
        if pi is None:
            self.parts[i] = pj
        elif pj is not None:
            if [(s, n) for _, s, _, n in pi] == [(s, n) for _, s, _, n in pj]:
                for (_, _, a, _), (_, _, b, _) in zip(pi, pj, strict=True):
                    self.union(a, b)
            else:
                self.fix(i, ("split", "is tied to a group split into other pieces"))
        if self.parts[i] is not None and self.heads[i] is not None:
            self.fix(i, ("split", "is split both into pieces and into heads"))
        return i

    def fix(self, i: int, why: tuple[str, str] | None = None) -> None:
        r = self.find(i)
        self.fixed[r] = True
        if why is not None and len(self.why[r]) < 8 and why not in self.why[r]:
            self.why[r].append(why)

    def settle(self) -> None:
        """Spread fixedness until it is consistent: a fixed group's parts are fixed; a group
        whose heads are fixed is fixed; a fixed member fixes its heads (they move its blocks)."""
        changed = True
        while changed:
            changed = False
            for r in range(len(self.parent)):
                if self.find(r) != r:
                    continue
                h = self.head_of(r)
                if h is not None and self.hu.fixed[h] and not self.fixed[r]:
                    for why in self.hu.why[h]:
                        self.fix(r, why)
                    self.fix(r)
                    changed = True
                if self.fixed[r] and h is not None and not self.hu.fixed[h]:
                    for why in self.why[r]:
                        self.hu.fix(h, why)
                    self.hu.fix(h)
                    changed = True
                if self.fixed[r] and self.parts[r]:
                    for _, _, c, _ in self.parts[r]:
                        if not self.fixed[self.find(c)]:
                            for why in self.why[r]:
                                self.fix(c, why)
                            self.fix(c)
                            changed = True


def _op_name(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        mod = root.get_submodule(str(node.target))
        return f"module {node.target!r} ({type(mod).__name__})"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    fn = node.target
    mod = getattr(fn, "__module__", None) or "builtins"
    mod = {"_operator": "operator", "torch._C._nn": "torch.nn.functional",
           "torch._C._VariableFunctions": "torch"}.get(mod, mod)
    return f"{mod}.{getattr(fn, '__name__', fn)}"


def _where(node: fx.Node, model_name: str) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        return f" in {cls.__name__}.forward ({path!r})"
    return f" in {model_name}.forward"


def _reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of input dims with runs of output dims of equal size (row-major reshape)."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        ins: list[int] = []
        outs: list[int] = []
        pa = pb = 1
        if i < len(a):
            pa *= a[i]
            ins.append(i)
            i += 1
        if j < len(b):
            pb *= b[j]
            outs.append(j)
            j += 1
        while pa != pb:
            if (pa < pb and i < len(a)) or j >= len(b):
                pa *= a[i]
                ins.append(i)
                i += 1
            else:
                pb *= b[j]
                outs.append(j)
                j += 1
        groups.append((ins, outs))
    return groups


class Propagation:
    """One pass over a traced graph that collects the channel bindings of all state tensors."""

    def __init__(self, gm: fx.GraphModule, state: dict[str, Tensor], model_name: str,
                 roles: dict[fx.Node, Role | None], who: str, hint: str):
        self.gm = gm
        self.model_name = model_name
        self.state = state
        self.roles = roles
        self.who, self.hint = who, hint
        self.uf = _UnionFind()
        self.binds: dict[tuple[str, int], Bind] = {}
        self.opaque: set[str] = set()
        self.values: dict[fx.Node, Any] = {}
        self.node: fx.Node | None = None  # the node being followed
        self.inputs: list[tuple[Point, int]] = []   # values entering a layer that contracts them
        self.outputs: list[tuple[Point, int]] = []  # values a layer creates

    # -- bookkeeping --------------------------------------------------------------------------

    def new_perm(self, size: int, label: str, node: fx.Node, dim: int) -> Bind:
        b = Bind(self.uf.new(size, label))
        self.outputs.append((Point(node.name, dim, 1, 1), b.perm))
        return b

    def seen_at(self, arg: Any, x: Value, dim: int) -> Point | None:
        """Where the units on `dim` of `x` (node `arg`'s value) were seen before any pooling."""
        point = x.seen.get(dim)
        if point is None and isinstance(arg, fx.Node):
            point = Point(arg.name, dim, *x.dims[dim].layout, repeat=x.dims[dim].repeat)
        return point

    def observe(self, arg: Any, x: Value, dim: int) -> None:
        """Record that a layer takes in the units on `dim` of `x` (node `arg`'s value)."""
        if x.dims[dim].part is not None:
            return  # a head's units are read where their projection makes them
        point = self.seen_at(arg, x, dim)
        if point is not None:
            self.inputs.append((point, x.dims[dim].perm))

    def bind(self, name: str | None, axis: int, b: Bind | None) -> None:
        """Record that permutation `b` acts on `axis` of state tensor `name`."""
        if name is None or b is None or name not in self.state:
            return
        if b.part is not None and b.part != "heads":
            self.pin(b)  # one tensor axis cannot follow a different order per head or piece
            return
        b = self.resolved(b)
        prev = self.binds.get((name, axis))
        if prev is None:
            self.binds[(name, axis)] = b
        else:
            self.tie(prev, b)

    def tie(self, a: Bind | None, b: Bind | None) -> Bind | None:
        """Make two permutations one; different layouts cannot be tied, so both stay fixed."""
        if a is None or b is None:
            return a or b
        a, b = self.resolved(a), self.resolved(b)
        if a.part == b.part == "heads" and self.alias_heads(a, b):
            return a if a.repeat > 1 else b
        if a.part == b.part == "within":
            ra, rb = self.uf.find(a.perm), self.uf.find(b.perm)
            if ra != rb or a.layout != b.layout:
                if self.uf.size[ra] == self.uf.size[rb] and a.layout == b.layout:
                    self.uf.union(ra, rb)
                else:
                    self.pin(a)
                    self.pin(b)
            return a
        if a.layout != b.layout or a.part != b.part or a.repeat != b.repeat:
            self.pin(a)
            self.pin(b)
            return a
        if a.part == "heads":
            ha, hb = self.uf.head_of(a.perm), self.uf.head_of(b.perm)
            if ha is None or hb is None:
                self.pin(a)
                self.pin(b)
            else:
                self.uf.hu.union(ha, hb)
            return a
        self.uf.union(a.perm, b.perm)
        return a

    def resolved(self, b: Bind) -> Bind:
        """`b` on the group it stands for (an alias's target, with its repeats)."""
        r, repeat = self.uf.resolve(b.perm, b.repeat)
        if b.part == "heads" and b.inner > 1:  # each head's entries side by side: a repeat
            return Bind(r, b.outer, 1, "heads", repeat * b.inner)
        return b if r == b.perm and repeat == b.repeat else Bind(r, b.outer, b.inner, b.part,
                                                                  repeat)

    def alias_heads(self, a: Bind, b: Bind) -> bool:
        """Heads seen once tied to heads repeated g times (each key/value head shared by g query
        heads): the once-seen group becomes the other's, repeated. False: not that case."""
        ga, gb = a.repeat * a.inner, b.repeat * b.inner
        if a.outer != 1 or b.outer != 1 or ga == gb or min(ga, gb) != 1:
            return False
        one, many, g = (a, b, gb) if ga == 1 else (b, a, ga)
        uf = self.uf
        r, target = uf.find(one.perm), uf.find(many.perm)
        h = uf.head_of(r)
        alone = h is not None and all(uf.head_of(i) != h for i in range(len(uf.parent))
                                      if uf.find(i) == i and i != r)
        if r == target or uf.parts[r] is not None or uf.fixed[r] or not alone \
                or uf.heads[target] is None or uf.heads[r] != uf.heads[target] * g \
                or uf.size[r] != uf.size[target] * g:
            self.pin(a)
            self.pin(b)
            return True
        uf.alias[r] = (target, g)
        uf.within_fixed[target] = uf.within_fixed[target] or uf.within_fixed[r]
        return True

    def repeat_interleave(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """Key/value heads repeated for the query heads that share them (grouped-query
        attention): the heads dim and its within-head dim now stand for the repeated group."""
        x = args[0]
        g = args[1] if len(args) > 1 else kwargs.get("repeats")
        dim = args[2] if len(args) > 2 else kwargs.get("dim")
        if not isinstance(g, int) or dim is None:
            return self.pinned(node, [x])
        return self.repeated(x, dim, g, self.out_shape(node))

    def repeated(self, x: Value, dim: int, g: int, shape: tuple[int, ...]) -> Value:
        """`x` with each entry of `dim` repeated g times in a row."""
        dim %= len(x.shape)
        out = Value(shape)
        b = x.dims.get(dim)
        for d, bd in x.dims.items():
            if d != dim:
                out.dims[d] = bd
        if b is None and x.shape[dim] == 1:
            # A single key/value head (multi-query attention): its units, on a later dim, are
            # that one head's, shared by all g query heads.
            found = [d for d, bd in x.dims.items() if d > dim and bd.part is None
                     and bd.layout == (1, 1) and bd.repeat == 1]
            if len(found) == 1 and self.uf.set_heads(x.dims[found[0]].perm, 1):
                p = x.dims[found[0]].perm
                out.dims[found[0]] = Bind(p, part="within")
                out.dims[dim] = Bind(p, part="heads", repeat=g)
            return out
        if b is None:
            return out
        if b.part != "heads" or b.layout != (1, 1):
            self.pin(b)
            return out
        out.dims[dim] = Bind(b.perm, part="heads", repeat=b.repeat * g)
        return out

    def here(self, text: str) -> str:
        """`text` and where the pass is: the operation and the module that runs it."""
        node = self.node
        if node is None:
            return text
        return f"{text} at {_op_name(node, self.gm)}{_where(node, self.model_name)}"

    def pin(self, b: Bind, why: tuple[str, str] | None = None) -> None:
        """No permutation may act on what `b` binds (for a head split: on that part of it)."""
        why = why or ("op", self.here("is pinned"))
        b = self.resolved(b)
        if b.part is not None and b.part.startswith("pieces"):
            self.uf.fix(b.perm, why)
        elif b.part == "within":
            self.uf.within_fixed[self.uf.find(b.perm)] = True
        elif b.part == "heads" and self.uf.head_of(b.perm) is not None:
            self.uf.hu.fix(self.uf.head_of(b.perm), why)
        else:
            self.uf.fix(b.perm, why)

    def fix_value(self, v: Any, why: tuple[str, str] | None = None) -> None:
        for leaf in self.leaves(v):
            for b in leaf.dims.values():
                self.pin(b, why)

    def leaves(self, v: Any) -> list[Value]:
        if isinstance(v, Value):
            return [v]
        if isinstance(v, (list, tuple)):
            return [x for item in v for x in self.leaves(item)]
        if isinstance(v, dict):
            return [x for item in v.values() for x in self.leaves(item)]
        return []

    def val(self, arg: Any) -> Any:
        """What is known about an argument: a Value, a structure of them, or a plain constant."""
        if isinstance(arg, fx.Node):
            return self.values.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.val(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.val(a) for k, a in arg.items()}
        if isinstance(arg, Tensor):
            return Value(tuple(arg.shape))
        return arg

    def out_shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()

    def param_of(self, v: Any) -> str | None:
        """The state tensor a value is exactly (not reshaped), if any."""
        if isinstance(v, Value) and v.param is not None:
            name, dmap = v.param
            if dmap == tuple(range(self.state[name].dim())):
                return name
        return None

    def unsupported(self, node: fx.Node, why: str = "") -> UsageError:
        what = _op_name(node, self.gm)
        why = f" ({why})" if why else ""
        return UsageError(f"{self.who} cannot follow permuted channels through {what}{why}"
                          f"{_where(node, self.model_name)}; {self.hint}")

    # -- what the pass found -------------------------------------------------------------------

    def slots(self, perm: int, start: int = 0, outer: int = 1, inner: int = 1,
              part: str | None = None, repeat: int = 1
              ) -> list[tuple[str, int, int, int, int, int, int]]:
        """Where a group acts, resolved through its structure: ("perm", group, start, outer,
        inner, repeat, block) for a permutation, ("head", head group, …) for a head permutation
        moving blocks; nothing for fixed groups."""
        uf = self.uf
        r, repeat = uf.resolve(perm, repeat)
        h = uf.head_of(r)
        if part == "heads":
            return [] if h is None or uf.hu.fixed[h] else [
                ("head", h, start, outer, inner, repeat, 1)]
        if part is not None or uf.fixed[r]:
            return []
        b = uf.size[r] // uf.heads[r] if uf.heads[r] else 1
        if uf.parts[r] is not None:
            if outer != 1 or repeat != 1:
                return []
            return [s for off, _, c, n in uf.parts[r]
                    for s in self.slots(c, start + off * inner, 1, inner * n)]
        if h is not None and uf.within_fixed[r]:
            return [("head", h, start, outer, inner * b, repeat, 1)]
        if repeat > 1 and h is None:
            return []
        return [("perm", r, start, outer, inner, repeat, b)]

    # -- the pass ------------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = self.out_shape(node)
                self.values[node] = Value(shape) if "tensor_meta" in node.meta else None
            elif node.op == "get_attr":
                self.values[node] = self.get_attr(node)
            elif node.op == "output":
                self.node = node
                self.fix_value(self.val(node.args), ("output", "reaches the model's output"))
            else:
                self.node = node
                self.values[node] = self.call(node)
        self.node = None
        for (name, _axis), b in self.binds.items():
            if name in self.opaque:  # also used in a way the propagation does not model
                self.pin(b, ("opaque", f"indexes {name!r}, which an operation the reader does "
                                       "not follow also uses"))
            elif b.outer != 1 and self.uf.parts[self.uf.find(b.perm)] is not None:
                # a split group's parts are not contiguous in this layout
                self.pin(b, ("layout", f"is split into pieces but indexes {name!r} in blocks"))
        self.uf.settle()
        # A binding no slot can express (a repeated or block-laid-out composite) pins its group,
        # so that no permutation acts on some of its tensors and not on this one.
        for (name, _axis), b in self.binds.items():
            if name in self.state and b.part in (None, "heads") \
                    and not self.slots(b.perm, 0, b.outer, b.inner, b.part, b.repeat) \
                    and not self.dropped(b.perm, b.part):
                self.pin(b, ("layout", f"indexes {name!r} in a layout a spec cannot express"))
                self.uf.settle()

    LEGITIMATE = ("output", "structure")

    def uncovered(self) -> list[tuple[str, list[str], str]]:
        """The groups no permutation may move for a reason other than the model's own
        constraints (its output, grouped layers): (group, the tensor axes it indexes, why)."""
        found: dict[tuple[str, int], tuple[str, list[str], str]] = {}
        for (name, axis), b in self.binds.items():
            if name not in self.state:
                continue
            for kind, g in self.dropped(b.perm, b.part):
                uf = self.uf if kind == "perm" else self.uf.hu
                if any(k in self.LEGITIMATE for k, _ in uf.why[g]):
                    continue
                why = next((t for _, t in uf.why[g]), "is pinned")
                entry = found.setdefault((kind, g), (uf.label[g], [], why))
                entry[1].append(f"{name}[{axis}]")
        return list(found.values())

    def dropped(self, perm: int, part: str | None) -> list[tuple[str, int]]:
        """The fixed groups (or head groups) behind a binding."""
        uf = self.uf
        r, _ = uf.resolve(perm)
        h = uf.head_of(r)
        if part is not None and part.startswith("pieces"):
            return [("perm", r)] if uf.fixed[r] else []
        if part == "within":
            return []
        if part == "heads":
            return [("head", h)] if h is not None and uf.hu.fixed[h] else []
        if uf.fixed[r]:
            return [("perm", r)]
        if uf.parts[r] is not None:
            return [d for _, _, c, _ in uf.parts[r] for d in self.dropped(c, None)]
        return []

    def get_attr(self, node: fx.Node) -> Value | None:
        target = str(node.target)
        shape = self.out_shape(node)
        if target in self.state:
            return Value(shape, param=(target, tuple(range(len(shape)))))
        return Value(shape) if "tensor_meta" in node.meta else None

    def call(self, node: fx.Node) -> Any:
        args = [self.val(a) for a in node.args]
        kwargs = {k: self.val(a) for k, a in node.kwargs.items()}
        handler = self.handler(node)
        first = args[0] if args else kwargs.get("input")
        if handler is not None and (isinstance(first, Value) or handler in self.any_args):
            return handler(node, args, kwargs)
        inputs = self.leaves(args) + self.leaves(kwargs)
        if any(v.dims for v in inputs):
            raise self.unsupported(node)
        for v in inputs:
            if v.param is not None:
                self.opaque.add(v.param[0])
        if node.op == "call_module":
            self.opaque.update(f"{node.target}.{k}" for k in
                               self.gm.get_submodule(str(node.target)).state_dict())
        return self.opaque_result(node)

    def opaque_result(self, node: fx.Node) -> Any:
        meta = node.meta.get("tensor_meta")
        if meta is None:
            return None
        if hasattr(meta, "shape"):
            return Value(tuple(meta.shape))
        return [Value(tuple(m.shape)) if hasattr(m, "shape") else None for m in meta]

    def handler(self, node: fx.Node) -> Callable[[fx.Node, list, dict], Any] | None:
        role = self.roles.get(node)
        return None if role is None else getattr(self, role.form)

    # -- handlers ------------------------------------------------------------------------------

    def shape_query(self, node: fx.Node, args: list, kwargs: dict) -> Any:
        return self.opaque_result(node) if node.target is getattr else None

    def equivariant(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """Operations that commute with permuting channels (softmax over them, normalize)."""
        x = args[0]
        return Value(self.out_shape(node), dict(x.dims), x.param)

    @property
    def any_args(self) -> tuple[Callable[..., Any], ...]:
        """Handlers that do not need a tensor as the first argument."""
        return (self.elementwise, self.shape_query, self.getitem, self.cat, self.stack,
                self.einsum, self.sdpa)

    def elementwise(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """Broadcasting element-wise ops: permutations on the same output dim are tied."""
        out = self.broadcast(self.leaves(args) + self.leaves(kwargs), self.out_shape(node))
        x = args[0] if args else None
        if isinstance(x, Value) and x.seen and self.is_identity(node):
            out.seen = {d: p for d, p in x.seen.items() if out.dims.get(d) == x.dims.get(d)}
        return out

    def is_identity(self, node: fx.Node) -> bool:
        """Whether an element-wise op leaves values as they are at evaluation (dropout, identity)."""
        role = self.roles.get(node)
        return role is not None and role.kind == "passthrough"

    def broadcast(self, operands: list[Value], shape: tuple[int, ...]) -> Value:
        """Tie the permutations that broadcasting lines up; bind parameters; pin constants."""
        rank = len(shape)
        out = Value(shape)
        for d in range(rank):
            bound: list[Bind] = []
            free: list[tuple[Value, int]] = []
            for v in operands:
                dv = d - (rank - len(v.shape))
                if dv < 0 or v.shape[dv] == 1:
                    continue
                if dv in v.dims:
                    bound.append(v.dims[dv])
                else:
                    free.append((v, dv))
            b: Bind | None = None
            for other in bound:
                b = self.tie(b, other)
            if b is None:
                continue
            for v, dv in free:
                axis = v.param[1][dv] if v.param is not None else None
                if axis is None:  # meets an unpermuted tensor: this permutation is pinned
                    self.pin(b, ("constant", self.here("meets a tensor that is not in the state "
                                                       "dict (a constant or unsaved buffer)")))
                else:
                    self.bind(v.param[0], axis, b)
            out.dims[d] = b
        if len(operands) == 1 and operands[0].param is not None and len(operands[0].shape) == rank:
            # one operand (a parameter expanded, negated, cast): its axes stay where they were,
            # but for dims broadcast from size 1
            name, dmap = operands[0].param
            out.param = (name, tuple(a if operands[0].shape[d] == shape[d] else None
                                     for d, a in enumerate(dmap)))
        return out

    def linear_module(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """Linear, and any registered producer: its weight and bias as its role says."""
        prefix = str(node.target)
        layer = self.roles[node].layer
        bias = f"{prefix}.{layer.bias}" if layer.bias is not None else None
        return self.linear(node, args[0], f"{prefix}.{layer.weight}",
                           bias if bias in self.state else None, prefix, layer)

    def linear_function(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        x, w = args[0], args[1] if len(args) > 1 else kwargs.get("weight")
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        wname, bname = self.param_of(w), self.param_of(b)
        if wname is None or (b is not None and bname is None):
            return self.pinned(node, [x, w, b])
        return self.linear(node, x, wname, bname, wname.rsplit(".", 1)[0], LINEAR)

    def linear(self, node: fx.Node, x: Value, weight: str, bias: str | None, label: str,
               layer: Layer) -> Value:
        """A weight that takes the channels on one dim in and makes new ones there."""
        shape = self.out_shape(node)
        ch_in, ch_out = layer.channel_dim % len(x.shape), layer.channel_dim % len(shape)
        if ch_in in x.dims:
            self.bind(weight, layer.in_axis, x.dims[ch_in])
            self.observe(node.args[0], x, ch_in)
        out = Value(shape, {d: b for d, b in x.dims.items() if d != ch_in})
        q = self.new_perm(shape[ch_out], label, node, ch_out)
        self.bind(weight, layer.out_axis, q)
        self.bind(bias, 0, q)
        out.dims[ch_out] = q
        return out

    def conv_module(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        prefix = str(node.target)
        mod = self.gm.get_submodule(prefix)
        transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
        return self.conv(node, args[0], f"{prefix}.weight",
                         f"{prefix}.bias" if mod.bias is not None else None,
                         transposed, mod.groups, prefix)

    def conv_function(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        x, w = args[0], args[1] if len(args) > 1 else kwargs.get("weight")
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        groups = kwargs.get("groups", args[-1] if len(args) >= 7 else 1)
        wname, bname = self.param_of(w), self.param_of(b)
        if wname is None or (b is not None and bname is None) or not isinstance(groups, int):
            return self.pinned(node, [x, w, b])
        return self.conv(node, x, wname, bname, CONV_FUNCTIONS[node.target], groups,
                         wname.rsplit(".", 1)[0])

    def conv(self, node: fx.Node, x: Value, weight: str, bias: str | None, transposed: bool,
             groups: int, label: str) -> Value:
        shape = self.out_shape(node)
        nsp = self.state[weight].dim() - 2
        ch = len(x.shape) - nsp - 1
        ax_in, ax_out = (0, 1) if transposed else (1, 0)
        out = Value(shape)
        for d, b in x.dims.items():
            if d != ch:
                self.pin(b)
        b_in = x.dims.get(ch)
        if b_in is not None and b_in.layout != (1, 1):
            self.pin(b_in)
            b_in = None
        cin, cout = x.shape[ch], shape[ch]
        if groups == 1:
            if b_in is not None:
                self.bind(weight, ax_in, b_in)
                self.observe(node.args[0], x, ch)
            q = self.new_perm(cout, label, node, ch)
        elif groups == cin == cout and not transposed:  # depthwise: channels stay where they are
            q = b_in if b_in is not None else self.new_perm(cout, label, node, ch)
        else:  # grouped: inputs may only move within groups, so they stay fixed
            if b_in is not None:
                self.pin(b_in, ("structure", self.here("enters a grouped convolution")))
            q = self.new_perm(cout, label, node, ch)
        self.bind(weight, ax_out, q)
        self.bind(bias, 0, q)
        out.dims[ch] = q
        return out

    def pinned(self, node: fx.Node, operands: list) -> Any:
        """A known operation used in a way the propagation does not model: pin what reaches it."""
        self.fix_value(operands, ("op", self.here("reaches an operation used in a way the reader "
                                                  "does not follow")))
        for v in self.leaves(operands):
            if v.param is not None:
                self.opaque.add(v.param[0])
        return self.opaque_result(node)

    def channel_params(self, prefix: str, names: Sequence[str], b: Bind | None) -> None:
        for n in names:
            self.bind(f"{prefix}.{n}", 0, b)

    def per_channel(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """A registered norm or activation: per-channel parameters on its channel dim."""
        layer = self.roles[node].layer
        x = args[0]
        shape = self.out_shape(node)
        if len(shape) != len(x.shape):
            raise self.unsupported(node, f"registered as {layer.kind} but changes the rank")
        ch = layer.channel_dim % len(x.shape)
        b = x.dims.get(ch)
        if b is not None and b.layout != (1, 1):
            self.pin(b)
        prefix = str(node.target)
        names = layer.params
        if names is None:
            state = self.gm.get_submodule(prefix).state_dict()
            names = tuple(k for k, v in state.items() if v.dim() == 1 and len(v) == x.shape[ch])
        self.channel_params(prefix, names, b)
        return Value(shape, dict(x.dims))

    def channel_norm(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """BatchNorm / InstanceNorm: per-channel statistics and affine parameters on dim 1."""
        x = args[0]
        ch = 1 if len(x.shape) > 1 else 0
        b = x.dims.get(ch)
        if b is not None and b.layout != (1, 1):
            self.pin(b)
        self.channel_params(str(node.target), ("weight", "bias", "running_mean", "running_var"),
                            b)
        return Value(self.out_shape(node), dict(x.dims))

    def group_norm(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """GroupNorm is permutation-equivariant with one group or one channel per group only."""
        mod = self.gm.get_submodule(str(node.target))
        x = args[0]
        b = x.dims.get(1)
        if b is not None and mod.num_groups not in (1, mod.num_channels):
            self.pin(b, ("structure", self.here("enters a GroupNorm with several groups")))
        elif b is not None and b.layout != (1, 1):
            self.pin(b)
        self.channel_params(str(node.target), ("weight", "bias"), b)
        return Value(self.out_shape(node), dict(x.dims))

    def layer_norm(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """LayerNorm / RMSNorm: statistics over the last dims, affine parameters over them too."""
        mod = self.gm.get_submodule(str(node.target))
        x = args[0]
        k = len(mod.normalized_shape)
        first = len(x.shape) - k
        for d, b in x.dims.items():
            if d >= first:
                for n in ("weight", "bias"):
                    self.bind(f"{node.target}.{n}", d - first, b)
        return Value(self.out_shape(node), dict(x.dims))

    def prelu(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        mod = self.gm.get_submodule(str(node.target))
        x = args[0]
        if mod.num_parameters > 1:
            b = x.dims.get(1)
            if b is not None and b.layout != (1, 1):
                self.pin(b)
            self.bind(f"{node.target}.weight", 0, b)
        return Value(self.out_shape(node), dict(x.dims))

    def embedding(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        shape = self.out_shape(node)
        self.fix_value(args[0])
        q = self.new_perm(shape[-1], str(node.target), node, len(shape) - 1)
        self.bind(f"{node.target}.weight", 1, q)
        return Value(shape, {len(shape) - 1: q})

    def pool(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """Spatial operations (pooling, padding, resizing): channels pass, spatial dims pin."""
        x = args[0]
        role = self.roles[node]
        if role.spatial is not None:
            nsp = role.spatial
        elif node.target is F.pad:
            pad = args[1] if len(args) > 1 else kwargs["pad"]
            nsp = len(pad) // 2
        else:
            nsp = len(x.shape) - 2
        shape = self.out_shape(node)
        if len(shape) != len(x.shape):
            return self.pinned(node, [x])
        out = Value(shape)
        for d, b in x.dims.items():
            if d >= len(x.shape) - nsp:
                self.pin(b)
            else:
                out.dims[d] = b
                seen = self.seen_at(node.args[0], x, d)
                if seen is not None:
                    out.seen[d] = seen
        return out

    def reshape(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """Row-major reshapes (flatten, view, squeeze, ...) carry permutations as block layouts."""
        x = args[0]
        shape = self.out_shape(node)
        out = Value(shape)
        big_in = [d for d in range(len(x.shape)) if x.shape[d] > 1]
        big_out = [d for d in range(len(shape)) if shape[d] > 1]
        if x.param is not None and [x.shape[d] for d in big_in] == [shape[d] for d in big_out]:
            dmap: list[int | None] = [None] * len(shape)  # only size-1 dims come or go
            for di, do in zip(big_in, big_out, strict=True):
                dmap[do] = x.param[1][di]
            out.param = (x.param[0], tuple(dmap))
        for ins, outs in _reshape_groups(x.shape, shape):
            bound = [d for d in ins if d in x.dims]
            if not bound:
                continue
            big_outs = [k for k in outs if shape[k] > 1]
            if len(bound) == 2 and self.merge_heads(x, ins, outs, shape, out):
                continue
            if len(bound) > 1:
                for d in bound:
                    self.pin(x.dims[d])
                continue
            d = bound[0]
            b = x.dims[d]
            n = x.shape[d] // (b.outer * b.inner)
            if (len(big_outs) == 2 and b.part is None and b.layout == (1, 1)
                    and [x.shape[e] for e in ins if x.shape[e] > 1] == [n]
                    and shape[big_outs[0]] * shape[big_outs[1]] == n):
                # (…, H·b) → (…, H, b): the group's units split into heads
                if self.uf.set_heads(b.perm, shape[big_outs[0]]):
                    out.dims[big_outs[0]] = Bind(b.perm, part="heads")
                    out.dims[big_outs[1]] = Bind(b.perm, part="within")
                continue
            if (len(big_outs) == 3 and b.part is None and b.layout == (1, 1)
                    and [x.shape[e] for e in ins if x.shape[e] > 1] == [n]
                    and math.prod(shape[k] for k in big_outs) == n):
                # (…, k·H·b) → (…, k, H, b): a fused projection's pieces, each split into heads
                k, h = shape[big_outs[0]], shape[big_outs[1]]
                children = self.uf.split(b.perm, [n // k] * k)
                if children is not None and all(self.uf.set_heads(c, h) for c in children):
                    for dim, part in zip(big_outs, ("pieces", "pieces.heads", "pieces.within"),
                                         strict=True):
                        out.dims[dim] = Bind(b.perm, part=part)
                else:
                    self.pin(b)
                continue
            outer = b.outer * math.prod(x.shape[e] for e in ins if e < d)
            inner = b.inner * math.prod(x.shape[e] for e in ins if e > d)
            if not self.place(b, n, outer, inner, outs, shape, out, x.seen.get(d)):
                self.pin(b)
        return out

    @staticmethod
    def place(b: Bind, n: int, outer: int, inner: int, outs: list[int], shape: tuple[int, ...],
              out: Value, seen: Point | None) -> bool:
        """Put `b`'s n units, in an (outer, inner) layout over the output dims `outs`, on the one
        output dim that holds them whole."""
        for k in outs:
            before = math.prod(shape[e] for e in outs if e < k)
            after = math.prod(shape[e] for e in outs if e > k)
            if outer % before or inner % after:
                continue
            o, i = outer // before, inner // after
            if shape[k] == o * n * i:
                out.dims[k] = b.moved(o, i)
                if seen is not None:
                    out.seen[k] = seen
                return True
        return False

    def merge_heads(self, x: Value, ins: list[int], outs: list[int], shape: tuple[int, ...],
                    out: Value) -> bool:
        """(…, H, b) → (…, H·b): a group's heads and within-head units merge back into it."""
        dh, dw = (d for d in ins if d in x.dims)
        bh, bw = x.dims[dh], x.dims[dw]
        # The heads may be another group's that were tied to these (attention weights @ v).
        bh, bw = self.resolved(bh), self.resolved(bw)
        if (bh.part, bw.part) != ("heads", "within") or dw != dh + 1 \
                or self.uf.head_of(bh.perm) != self.uf.head_of(bw.perm) or bh.inner != 1 \
                or bw.outer != 1:
            return False
        n = self.uf.size[self.uf.find(bw.perm)] * bh.repeat
        outer = bh.outer * math.prod(x.shape[e] for e in ins if e < dh)
        inner = bw.inner * math.prod(x.shape[e] for e in ins if e > dw)
        return self.place(Bind(bw.perm, repeat=bh.repeat), n, outer, inner, outs, shape, out,
                          None)

    def transpose(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        x = args[0]
        rank = len(x.shape)
        if node.target in ("t", torch.t):
            order = list(range(rank))[::-1]
        elif node.target in ("transpose", torch.transpose):
            a, b = (d % rank for d in args[1:3])
            order = list(range(rank))
            order[a], order[b] = order[b], order[a]
        else:
            dims = args[1:] if node.op == "call_method" else args[1]
            if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                dims = dims[0]
            order = [d % rank for d in dims]
        out = Value(self.out_shape(node),
                    {i: x.dims[d] for i, d in enumerate(order) if d in x.dims},
                    seen={i: x.seen[d] for i, d in enumerate(order) if d in x.seen})
        if x.param is not None:
            out.param = (x.param[0], tuple(x.param[1][d] for d in order))
        return out

    def reduction(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """Reducing over a permuted dim drops the permutation (the result does not depend on it)."""
        x = args[0]
        rank = len(x.shape)
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keep = len(self.out_shape(node)) == rank
        if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
            dims = set(range(rank))
        else:
            dims = {d % rank for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        out = Value(self.out_shape(node))
        kept = [d for d in range(rank) if d not in dims]
        for d, b in x.dims.items():
            if d in dims:
                continue
            k = d if keep else kept.index(d)
            out.dims[k] = b
            seen = self.seen_at(node.args[0], x, d)  # reducing other dims pools too (global mean)
            if seen is not None:
                out.seen[k] = seen
        return out

    def cat(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """Concatenation ties the other dims; along the concatenated dim the result's units are
        the direct sum of the parts' groups (a composite group; unpermuted parts stay put)."""
        parts = self.leaves(args[0])
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        shape = self.out_shape(node)
        dim %= len(shape)
        children = []
        for v in parts:
            b = v.dims.get(dim)
            if b is not None and (b.part is not None or b.outer != 1):
                self.pin(b)
                b = None
            if b is None:
                c = self.uf.new(v.shape[dim], f"{node.name}[{len(children)}]")
                self.uf.fix(c, ("structure", "is an unpermuted part of a concatenation"))
                children.append((v.shape[dim], c, 1))
            else:
                children.append((v.shape[dim], b.perm, b.inner))
        trimmed = [Value(v.shape[:dim] + (1,) + v.shape[dim + 1:],
                         {d: b for d, b in v.dims.items() if d != dim},
                         None if v.param is None else
                         (v.param[0], v.param[1][:dim] + (None,) + v.param[1][dim + 1:]))
                   for v in parts]
        out = Value(shape, self.broadcast(trimmed, shape[:dim] + (1,) + shape[dim + 1:]).dims)
        if any(not self.uf.fixed[self.uf.find(c)] for _, c, _ in children):
            out.dims[dim] = Bind(self.uf.composite(children, node.name))
        return out

    def split(self, node: fx.Node, args: list, kwargs: dict) -> Any:
        """chunk / split / unbind: the pieces of a permuted dim are the parts of its group."""
        x = args[0]
        meta = node.meta.get("tensor_meta")
        if not isinstance(meta, (list, tuple)):
            return self.pinned(node, [x])
        shapes = [tuple(m.shape) for m in meta]
        rank = len(x.shape)
        unbind = node.target in ("unbind", torch.unbind)
        default = 0
        dim = kwargs.get("dim", args[1] if unbind and len(args) > 1 else
                         args[2] if not unbind and len(args) > 2 else default) % rank
        b = x.dims.get(dim)
        if b is not None and unbind and b.part == "pieces" and len(shapes) == x.shape[dim]:
            pieces = []
            for k, s in enumerate(shapes):
                picked = self.piece(b, k)
                pieces.append(Value(s, {(d if d < dim else d - 1): picked(bd)
                                        for d, bd in x.dims.items() if d != dim}))
            return pieces
        if b is not None and (unbind or b.part is not None or b.outer != 1):
            self.pin(b)
            b = None
        children = None
        if b is not None:
            sizes = [s[dim] for s in shapes]
            if any(s % b.inner for s in sizes):
                self.pin(b)
            else:
                children = self.uf.split(b.perm, [s // b.inner for s in sizes])
        pieces = []
        for k, s in enumerate(shapes):
            dims = {}
            for d, bd in x.dims.items():
                if d == dim:
                    if children is not None:
                        dims[d] = Bind(children[k], 1, b.inner)
                elif unbind:
                    dims[d if d < dim else d - 1] = bd
                else:
                    dims[d] = bd
            pieces.append(Value(s, dims))
        return pieces

    def stack(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        parts = self.leaves(args[0])
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        shape = self.out_shape(node)
        dim %= len(shape)
        lifted = [Value(shape[:dim] + (1,) + shape[dim + 1:],
                        {(d if d < dim else d + 1): b for d, b in v.dims.items()}) for v in parts]
        return Value(shape, self.broadcast(lifted, shape[:dim] + (1,) + shape[dim + 1:]).dims)

    def getitem(self, node: fx.Node, args: list, kwargs: dict) -> Any:
        x, idx = args[0], args[1]
        if not isinstance(x, Value):
            return x[idx] if isinstance(x, (list, tuple)) and isinstance(idx, int) else None
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, Value) for i in idx):
            if x.dims:
                raise self.unsupported(node, "indexing with a tensor")
            return self.opaque_result(node)
        out = Value(self.out_shape(node))
        d_in = d_out = 0
        picked = None
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        for i in idx:
            if i is Ellipsis:
                skip = len(x.shape) - n_real
                for k in range(skip):
                    if d_in + k in x.dims:
                        out.dims[d_out + k] = x.dims[d_in + k]
                d_in += skip
                d_out += skip
            elif i is None:
                d_out += 1
            elif isinstance(i, slice):
                if d_in in x.dims:
                    if i != slice(None) and x.shape[d_in] != out.shape[d_out]:
                        raise self.unsupported(node, "slicing a permuted dimension")
                    out.dims[d_out] = x.dims[d_in]
                d_in += 1
                d_out += 1
            else:
                if d_in in x.dims and x.dims[d_in].part == "pieces" and isinstance(i, int):
                    picked = self.piece(x.dims[d_in], i % x.shape[d_in])
                elif d_in in x.dims:
                    raise self.unsupported(node, "indexing a permuted dimension")
                d_in += 1
        for k in range(len(x.shape) - d_in):
            if d_in + k in x.dims:
                out.dims[d_out + k] = x.dims[d_in + k]
        if picked is not None:
            out.dims = {d: picked(b) for d, b in out.dims.items()}
        return out

    def piece(self, b: Bind, k: int) -> Callable[[Bind], Bind]:
        """What the bindings of a value split into pieces become once piece `k` is selected."""
        parts = self.uf.parts[self.uf.find(b.perm)]
        child = parts[k][2] if parts is not None else None

        def picked(other: Bind) -> Bind:
            if other.part in ("pieces.heads", "pieces.within") and child is not None \
                    and self.uf.find(other.perm) == self.uf.find(b.perm):
                return Bind(child, other.outer, other.inner, other.part.removeprefix("pieces."))
            return other
        return picked

    @staticmethod
    def sub(v: Value, dims: Sequence[int]) -> Value:
        """The dims `dims` of `v` (in that order) as a value of their own."""
        rank = len(v.shape)
        dims = [d % rank for d in dims]
        return Value(tuple(v.shape[d] for d in dims),
                     {i: v.dims[d] for i, d in enumerate(dims) if d in v.dims},
                     (v.param[0], tuple(v.param[1][d] for d in dims)) if v.param else None)

    def sdpa(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """F.scaled_dot_product_attention(q, k, v, attn_mask, …): q·kᵀ over the last dim, the
        key dim of k and v, the batch (head) dims of all, and v's units in the result."""
        names = ("query", "key", "value", "attn_mask")
        q, k, v, mask = (args[i] if len(args) > i else kwargs.get(n)
                         for i, n in enumerate(names))
        shape = self.out_shape(node)
        if not all(isinstance(t, Value) for t in (q, k, v)):
            return self.pinned(node, [q, k, v, mask])
        if kwargs.get("enable_gqa") and len(q.shape) >= 3 and q.shape[-3] != k.shape[-3]:
            g = q.shape[-3] // k.shape[-3]  # each key/value head serves g query heads
            k, v = (self.repeated(t, -3, g, t.shape[:-3] + (q.shape[-3],) + t.shape[-2:])
                    for t in (k, v))
        rank = len(shape)
        lead = list(range(rank - 2))
        batch = [self.sub(t, [d - rank + len(t.shape) for d in lead if d - rank + len(t.shape)
                              >= 0]) for t in (q, k, v)]
        if isinstance(mask, Value):
            self.fix_value(self.sub(mask, list(range(len(mask.shape)))[-2:]))
            batch.append(self.sub(mask, list(range(len(mask.shape) - 2))))
        out = Value(shape, dict(self.broadcast(batch, tuple(shape[:-2])).dims))
        self.broadcast([self.sub(q, [-1]), self.sub(k, [-1])], (q.shape[-1],))
        self.broadcast([self.sub(k, [-2]), self.sub(v, [-2])], (k.shape[-2],))
        if len(q.shape) - 2 in q.dims:
            out.dims[rank - 2] = q.dims[len(q.shape) - 2]
        if len(v.shape) - 1 in v.dims:
            out.dims[rank - 1] = v.dims[len(v.shape) - 1]
        return out

    def einsum(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """torch.einsum: the dims sharing a letter are tied; a parameter's dim whose letter only
        it and the result have makes new units (as a linear layer's weight does)."""
        eq = args[0]
        listed = len(args) == 2 and isinstance(args[1], (list, tuple))
        ops = list(args[1]) if listed else args[1:]
        arg_nodes = list(node.args[1]) if listed else list(node.args[1:])
        shape = self.out_shape(node)
        if not isinstance(eq, str) or "..." in eq or \
                not all(isinstance(v, Value) for v in ops):
            return self.pinned(node, ops)
        lhs, _, rhs = eq.replace(" ", "").partition("->")
        terms = lhs.split(",")
        if not rhs and "->" not in eq:
            rhs = "".join(sorted(c for c in set(lhs) - {","} if lhs.count(c) == 1))
        if len(terms) != len(ops) or any(len(t) != len(v.shape) for t, v in zip(
                terms, ops, strict=False)):
            return self.pinned(node, ops)
        out = Value(shape)
        for letter in dict.fromkeys(c for t in terms for c in t):
            uses = [(v, t.index(letter)) for t, v in zip(terms, ops, strict=True)
                    if letter in t]
            size = max(v.shape[d] for v, d in uses)
            b = self.broadcast([self.sub(v, [d]) for v, d in uses], (size,)).dims.get(0)
            where = rhs.find(letter)
            if b is None and where >= 0 and size > 1:
                params = [(v, d) for v, d in uses if v.param is not None
                          and v.param[1][d] is not None and v.shape[d] > 1]
                if params and len(params) == len(uses):
                    b = self.new_perm(size, params[0][0].param[0], node, where)
                    for v, d in params:
                        self.bind(v.param[0], v.param[1][d], b)
            if b is not None and where >= 0:
                out.dims[where] = b
            elif b is not None and b.part is None:
                for (v, d) in uses:
                    if d in v.dims and v.param is None:
                        self.observe(arg_nodes[next(i for i, o in enumerate(ops) if o is v)], v, d)
                        break
        return out

    def matmul(self, node: fx.Node, args: list, kwargs: dict) -> Value:
        """a @ b: the contracted dims are tied; a parameter operand acts like a linear layer."""
        a, b = args[0], args[1]
        shape = self.out_shape(node)
        if len(a.shape) < 2 or len(b.shape) < 2:
            if a.dims or b.dims:
                raise self.unsupported(node, "matrix-vector product")
            return Value(shape)
        ra, rb = len(a.shape), len(b.shape)
        # The contraction behaves like an element-wise product over one shared dim.
        ka = Value((a.shape[-1],), {0: a.dims[ra - 1]} if ra - 1 in a.dims else {},
                   (a.param[0], (a.param[1][-1],)) if a.param else None)
        kb = Value((b.shape[-2],), {0: b.dims[rb - 2]} if rb - 2 in b.dims else {},
                   (b.param[0], (b.param[1][-2],)) if b.param else None)
        batch_a = Value(a.shape[:-2], {d: x for d, x in a.dims.items() if d < ra - 2},
                        (a.param[0], a.param[1][:-2]) if a.param else None)
        batch_b = Value(b.shape[:-2], {d: x for d, x in b.dims.items() if d < rb - 2},
                        (b.param[0], b.param[1][:-2]) if b.param else None)
        # The batch (head) dims first: tying query heads to repeated key heads decides what the
        # within-head dims are before they are contracted.
        batch = self.broadcast([batch_a, batch_b], tuple(shape[:-2]))
        self.broadcast([ka, kb], (a.shape[-1],))
        out = Value(shape, dict(batch.dims))
        for v, vd, od in ((a, ra - 2, len(shape) - 2), (b, rb - 1, len(shape) - 1)):
            if vd in v.dims:
                out.dims[od] = v.dims[vd]
                if v is a and ra - 1 in a.dims:
                    self.observe(node.args[0], a, ra - 1)
            elif v.param is not None and v.param[1][vd] is not None:
                q = self.new_perm(shape[od], v.param[0], node, od)
                self.bind(v.param[0], v.param[1][vd], q)
                out.dims[od] = q
        return out

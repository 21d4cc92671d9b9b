"""Reading a model's fx graph: tracing it, and the facts alignment and REPAIR need from it."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UsageError
from ._channels import Propagation
from ._hf import hf_graph, is_hf
from ._ops import Layer, Role, is_add, is_registered, producer_layer, role_of
from ._shadows import shadow_of

#: What to do about a graph the reader cannot follow (the end of its error messages).
HINT = ("register the layer it cannot follow (modeconn.graph.register_layer) or write the spec "
        "by hand (modeconn.align.PermutationSpec) and pass it as spec= (--spec)")


class _Tracer(fx.Tracer):
    """fx's tracer, with registered layer classes kept whole (not traced into), and torch's
    attention modules traced through their stand-ins (``_shadows``)."""

    # A buffer sliced by a traced length (a causal mask's [:t, :t]) must be a graph value.
    proxy_buffer_attributes = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if is_registered(m):
            return True
        return shadow_of(m) is None and super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        shadow = None if is_registered(m) else shadow_of(m)
        if shadow is not None:  # torch's attention modules, traced through their stand-ins
            forward = functools.partial(shadow, m)
        return super().call_module(m, forward, args, kwargs)


def _user_frame(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/torch/" not in f.filename.replace("\\", "/")]
    return f" at {frames[-1].filename}:{frames[-1].lineno} ({frames[-1].line})" if frames else ""


def _failing_module(model: nn.Module, exc: BaseException) -> str:
    """' in Class.forward ('path')' for the innermost submodule whose forward raised, if any."""
    names = {id(m): name for name, m in model.named_modules()}
    found = ""
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and owner is not model and id(owner) in names:
            found = f" in {type(owner).__name__}.forward ({names[id(owner)]!r})"
        tb = tb.tb_next
    return found


def trace_module(model: nn.Module, who: str = "the graph reader", hint: str = HINT
                 ) -> fx.GraphModule:
    """`model`'s fx graph; a model fx cannot trace is one line of UsageError naming the place."""
    try:
        graph = hf_graph(model) if is_hf(model) else _Tracer().trace(model)
    except Exception as e:  # fx raises many types; all mean "not traceable"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{who} cannot trace {type(model).__name__}: {msg}"
                         f"{_failing_module(model, e)}{_user_frame(e)}; {hint}") from e
    return fx.GraphModule(model, graph, type(model).__name__)


def _example_args(example_input: Any) -> tuple[Any, ...]:
    return example_input if isinstance(example_input, tuple) else (example_input,)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that one permutation must move together: the producers that make them (a
    residual stream ties several), the state tensor axes they index, and whether they are fixed
    (they meet the model's input or output, or an operation no permutation commutes with)."""

    name: str
    size: int
    producers: tuple[str, ...]
    fixed: bool


class ModelGraph:
    """The facts of one model's fx graph. Build it with :func:`read`."""

    def __init__(self, model: nn.Module, graph_module: fx.GraphModule, shaped: bool,
                 who: str, hint: str):
        self.model = model
        self.graph_module = graph_module
        self.shaped = shaped
        self.who, self.hint = who, hint
        self.roles: dict[fx.Node, Role | None] = {
            n: role_of(n, graph_module) for n in graph_module.graph.nodes
            if n.op in ("call_module", "call_function", "call_method")}

    # -- nodes -------------------------------------------------------------------------------

    @property
    def nodes(self) -> Iterator[fx.Node]:
        """The graph's nodes in forward (execution) order."""
        return iter(self.graph_module.graph.nodes)

    def role(self, node: fx.Node) -> Role | None:
        """What a node is (None: an operation the reader does not know, or not a call)."""
        return self.roles.get(node)

    def kind(self, node: fx.Node) -> str | None:
        role = self.roles.get(node)
        return None if role is None else role.kind

    @cached_property
    def calls(self) -> dict[str, int]:
        """How many times each called module is called."""
        out: dict[str, int] = {}
        for node in self.nodes:
            if node.op == "call_module":
                out[str(node.target)] = out.get(str(node.target), 0) + 1
        return out

    def layers(self, kind: str) -> list[str]:
        """Names of the modules of one kind, in the order the forward pass first calls them."""
        out: list[str] = []
        for node in self.nodes:
            if node.op == "call_module" and self.kind(node) == kind and node.target not in out:
                out.append(str(node.target))
        return out

    @property
    def producers(self) -> list[str]:
        """Channel-producing modules (Linear, Conv, Embedding, registered producers)."""
        return self.layers("producer")

    @property
    def activations(self) -> list[str]:
        return self.layers("activation")

    @property
    def norms(self) -> list[str]:
        return self.layers("norm")

    def producer(self, name: str) -> Layer:
        """How producer module `name` makes its channels (weight axes, channel dim, bias)."""
        layer = producer_layer(self.model.get_submodule(name))
        if layer is None:
            raise UsageError(f"{name!r} of {type(self.model).__name__} is not a channel producer")
        return layer

    @property
    def residual_adds(self) -> list[str]:
        """Nodes that add two computed tensors (residual connections)."""
        return [n.name for n in self.nodes if is_add(n)
                and sum(isinstance(a, fx.Node) and a.op not in ("get_attr", "placeholder")
                        for a in n.args) >= 2]

    def repair_layers(self) -> list[str]:
        """The producer modules whose output goes straight into activations only, in forward order.

        Producers feeding a norm are not listed (BN reset handles those); a module called more
        than once is skipped: one correction cannot fit several uses.
        """
        out = []
        for node in self.nodes:
            if node.op != "call_module" or self.kind(node) != "producer":
                continue
            users = list(node.users)
            if self.calls[str(node.target)] == 1 and users and all(
                    self.kind(u) == "activation" for u in users):
                out.append(str(node.target))
        return out

    # -- channels ----------------------------------------------------------------------------

    @cached_property
    def propagation(self) -> Propagation:
        """The channel propagation over the graph (needs the example input given to `read`)."""
        if not self.shaped:
            raise UsageError(f"following channels through {type(self.model).__name__} needs an "
                             "example input: read(model, example_input)")
        prop = Propagation(self.graph_module, dict(self.model.state_dict()),
                           type(self.model).__name__, self.roles, self.who, self.hint)
        prop.run()
        return prop

    def channel_groups(self) -> list[ChannelGroup]:
        """The channel groups the producers make, oldest first; tied producers share one."""
        uf = self.propagation.uf
        members: dict[int, list[str]] = {}
        for i, label in enumerate(uf.label):
            members.setdefault(uf.find(i), []).append(label)
        return [ChannelGroup(uf.label[root], uf.size[root], tuple(labels), uf.fixed[root])
                for root, labels in sorted(members.items())]

    @property
    def ties(self) -> list[tuple[str, ...]]:
        """The producers that residual connections tie to one channel group (free groups only)."""
        return [g.producers for g in self.channel_groups()
                if len(g.producers) > 1 and not g.fixed]


def read(model: nn.Module, example_input: Any = None, *, who: str = "the graph reader",
         hint: str = HINT) -> ModelGraph:
    """Trace `model` and read its graph. With an example input the graph is also run once (in
    eval mode, no gradients) to learn every value's shape, which following channels needs.

    `who` and `hint` begin and end the one-line UsageError raised where the graph cannot be
    traced or followed.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"the graph reader reads an nn.Module, not {type(model).__name__}")
    gm = trace_module(model, who, hint)
    if example_input is not None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(*_example_args(example_input))
        except Exception as e:
            raise UsageError(f"{who} could not run {type(model).__name__} on the example input "
                             f"({type(e).__name__}: {e}); check its shape and dtype") from e
        finally:
            model.train(was_training)
    return ModelGraph(model, gm, example_input is not None, who, hint)

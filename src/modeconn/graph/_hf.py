"""Tracing Hugging Face transformers models into fx graphs.

Plain fx fails on them: their forwards branch on shapes and dtypes (`if batch_size !=
position_ids.shape[0]`, `if pixel_values.dtype != expected_dtype`), unpack sizes and slice
buffers with them. transformers 5 no longer ships its fx tracer (`transformers.utils.fx`), so
this one does what it did: every proxy carries the value its node takes on an example input
(the model runs once, op by op, beside the trace), and Python control flow, `len`, iteration,
`.dtype`, `.device` and `.ndim` read that value. Shapes stay symbolic where they flow into
tensor operations (`view(batch, -1, heads, dim)` keeps `x.shape[0]` as a node), so the graph
runs on other batch sizes and sequence lengths; branches are fixed as the example took them.

The model is an `HFLogits` (modeconn.models.hf) or any module with the same two members: `hf`,
the transformers model whose children it adopts (so node targets are the HF state_dict
prefixes), and `example_input()`. Leaves are torch.nn's layers, layers registered with
`register_layer`, and transformers' `Conv1D` (GPT-2: a Linear whose weight is (in, out)).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate

from ._ops import is_registered


def _pretrained(obj: Any) -> bool:
    tf = sys.modules.get("transformers")
    return tf is not None and isinstance(obj, tf.PreTrainedModel)


def is_hf(model: nn.Module) -> bool:
    """Whether `model` is a transformers model or wraps one (as HFLogits does)."""
    return _pretrained(model) or _pretrained(model.__dict__.get("hf"))


class _Proxy(fx.Proxy):
    """A proxy that knows the value its node takes on the example input."""

    value: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Attribute(self, name)

    @property
    def dtype(self) -> torch.dtype:
        return self.value.dtype

    @property
    def device(self) -> torch.device:
        return self.value.device

    @property
    def ndim(self) -> int:
        return self.value.ndim

    def __len__(self) -> int:
        return len(self.value)

    def __contains__(self, key: Any) -> bool:
        return key in self.value


class _Attribute(fx.proxy.Attribute, _Proxy):
    """`proxy.name`: a node only once used (a method call creates a call_method node instead)."""

    @property
    def value(self) -> Any:
        return getattr(self.root.value, self.attr)


def _concrete(a: Any) -> Any:
    return map_aggregate(a, lambda x: x.value if isinstance(x, fx.Proxy) else x)


class HFTracer(fx.Tracer):
    """fx's tracer with proxies that carry example values (see the module's docstring)."""

    def __init__(self, hf: nn.Module, example: tuple[Any, ...]):
        super().__init__()
        self.proxy_buffer_attributes = True  # BERT slices its position_ids buffer by length
        self.hf, self.example = hf, list(example)
        self._running = False  # computing a value: modules and attributes are plain again
        tf = sys.modules["transformers"]
        self.leaves: tuple[type, ...] = (tf.pytorch_utils.Conv1D,)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, self.leaves) or is_registered(m)
                or super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self._running or m is self.hf:  # the HF model is not a submodule: trace into it
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._running:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if isinstance(proxy, _Proxy):
            self._running = True
            try:
                with torch.no_grad():
                    proxy.value = self._run(kind, target, _concrete(args), _concrete(kwargs))
            finally:
                self._running = False
        return proxy

    def _run(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        if kind == "placeholder":
            return self.example.pop(0) if self.example else None
        if kind == "get_attr":
            obj: Any = self.root
            for part in target.split("."):
                obj = getattr(obj, part)
            return obj
        if kind == "call_function":
            return target(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if kind == "call_module":
            return self.root.get_submodule(target)(*args, **kwargs)
        return None

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(obj.value)

    def iter(self, obj: fx.Proxy) -> Any:
        return iter([obj[i] for i in range(len(obj.value))])

    def keys(self, obj: fx.Proxy) -> Any:
        return obj.value.keys()


def _drop_unused(graph: fx.Graph) -> None:
    """Remove nodes nothing uses (shape and dtype reads made for branches), except in-place ops."""
    for node in reversed(list(graph.nodes)):
        if node.users or node.op not in ("call_function", "call_method", "get_attr"):
            continue
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            continue
        graph.erase_node(node)


def hf_graph(model: nn.Module) -> fx.Graph:
    """The fx graph of an HFLogits-like module (raises on a bare transformers model)."""
    hf = model.__dict__.get("hf")
    if not _pretrained(hf):
        raise TypeError(f"a bare {type(model).__name__} takes keyword inputs and returns a "
                        "ModelOutput; wrap it as modeconn.models.hf.HFLogits(model, kind)")
    example = model.example_input()
    was_training = model.training
    model.eval()
    try:
        graph = HFTracer(hf, example if isinstance(example, tuple) else (example,)).trace(model)
    finally:
        model.train(was_training)
    _drop_unused(graph)
    return graph


def trace_hf(model: nn.Module) -> fx.GraphModule:
    """The fx GraphModule of an HFLogits-like module: node targets are the HF state_dict
    prefixes; it computes what the model does, in eval mode, for any batch size and length."""
    gm = fx.GraphModule(model, hf_graph(model), type(model).__name__)
    gm.graph.lint()
    return gm

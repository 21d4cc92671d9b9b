"""The graph reader: the one place that reads a model's torch.fx graph.

``read(model, example_input)`` traces a model and tells what its nodes are — channel producers
(Linear, Conv, Embedding), activations, norms, passthroughs, pooling, reshapes, residual adds —
in forward order, and how channels flow through it: which producers a residual connection ties
to one channel group, and which state-tensor axes each group indexes. Alignment derives its
permutation specs from it, REPAIR finds the layers it corrects with it.

A layer the reader does not know (or that fx cannot trace) is taught with
``register_layer(MyLayer, kind="activation")`` (or ``"producer"``, ``"norm"``,
``"passthrough"``, with the dim that carries channels) instead of writing a whole spec by hand.
"""

from ._channels import Bind, Point, Propagation, Value
from ._ops import (
    LAYER_KINDS,
    Layer,
    Role,
    producer_layer,
    register_layer,
    registered_layer,
    unregister_layer,
)
from ._reader import HINT, ChannelGroup, ModelGraph, read, trace_module

__all__ = ["HINT", "LAYER_KINDS", "Bind", "ChannelGroup", "Layer", "ModelGraph", "Point",
           "Propagation", "Role", "Value", "producer_layer", "read", "register_layer",
           "registered_layer", "trace_module", "unregister_layer"]

"""What each operation of a traced graph is: the operation tables and the user's registrations.

Every node of a traced graph gets a :class:`Role`: its public ``kind`` (a channel producer, an
activation, a norm, a passthrough, a spatial pooling, a reshape, …) and the ``form`` that says
how channels flow through it (which the channel propagation follows). A layer class the tables
do not know can be registered with :func:`register_layer`; registered classes are also leaves of
the trace, so their own ``forward`` is never traced through.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import UsageError

#: The kinds a user can register a layer as.
LAYER_KINDS = ("producer", "activation", "norm", "passthrough")


@dataclass(frozen=True)
class Layer:
    """How a layer class acts on channels (built in, or registered with :func:`register_layer`).

    ``channel_dim``: the dimension of its input and output that carries channels. A producer
    creates new channels from ``weight`` (its axis ``in_axis`` takes the input channels, its axis
    ``out_axis`` makes the output channels) and ``bias`` (axis 0, when the module has one). A
    norm or activation acts per channel, with ``params`` (None: every 1-d parameter or buffer as
    long as the channels) indexed by channel on axis 0; a passthrough leaves channels as they are.
    """

    kind: str
    channel_dim: int = 1
    weight: str = "weight"
    bias: str | None = "bias"
    in_axis: int = 1
    out_axis: int = 0
    params: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Role:
    """What one node is: a public kind, the form the channel propagation follows, and details."""

    kind: str
    form: str
    spatial: int | None = None      # pooling: how many trailing dims are spatial (None: rank − 2)
    layer: Layer | None = None      # producers and registered layers: how they use channels


_REGISTRY: dict[type[nn.Module], Layer] = {}


def register_layer(cls: type[nn.Module], kind: str, *, channel_dim: int = 1,
                   weight: str = "weight", bias: str | None = "bias", in_axis: int = 1,
                   out_axis: int = 0, params: Iterable[str] | None = None) -> type[nn.Module]:
    """Teach the graph reader a custom layer class, so alignment and REPAIR can use models with it.

    ``kind`` is ``"producer"`` (makes new channels from a weight, like Linear/Conv),
    ``"activation"`` (a per-channel non-linearity), ``"norm"`` (per-channel normalisation) or
    ``"passthrough"`` (channels pass unchanged; at evaluation it is the identity, like Dropout).
    ``channel_dim`` is the dim of the layer's input and output that carries channels (1 for
    (N, C) and (N, C, H, W); -1 for channels-last). A producer names its ``weight`` with the
    ``in_axis`` / ``out_axis`` that take and make channels, and its ``bias`` (axis 0; missing is
    fine). A norm or activation names its per-channel ``params`` (default: every 1-d parameter or
    buffer as long as the channels). Registered classes (and their subclasses) are not traced
    into. Returns ``cls``, so it can be used as a class decorator via ``functools.partial``.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UsageError(f"register_layer takes an nn.Module class, not {cls!r}")
    if kind not in LAYER_KINDS:
        raise UsageError(f"a layer's kind must be one of {', '.join(LAYER_KINDS)}, not {kind!r}")
    if kind == "producer" and in_axis == out_axis:
        raise UsageError(f"a producer's weight takes and makes channels on different axes; "
                         f"{cls.__name__} has in_axis = out_axis = {in_axis}")
    _REGISTRY[cls] = Layer(kind, int(channel_dim), weight, bias, int(in_axis), int(out_axis),
                           None if params is None else tuple(params))
    return cls


def unregister_layer(cls: type[nn.Module]) -> None:
    """Forget a registration (built-in layers keep their built-in role)."""
    _REGISTRY.pop(cls, None)


def registered_layer(module: nn.Module) -> Layer | None:
    """The registration of a module's class or of its nearest registered base class."""
    for klass in type(module).__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass]
    return None


def is_registered(module: nn.Module) -> bool:
    return registered_layer(module) is not None


# --- operation tables -------------------------------------------------------------------------

ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink,
)
IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                    nn.AlphaDropout, nn.FeatureAlphaDropout)
EQUIVARIANT_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
POOL_MODULES: dict[type[nn.Module], int] = {
    **{cls: 1 for cls in (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d,
                          nn.AdaptiveMaxPool1d, nn.LPPool1d, nn.ConstantPad1d,
                          nn.ZeroPad1d, nn.ReflectionPad1d, nn.ReplicationPad1d)},
    **{cls: 2 for cls in (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                          nn.AdaptiveMaxPool2d, nn.LPPool2d, nn.ConstantPad2d,
                          nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
                          nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)},
    **{cls: 3 for cls in (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d,
                          nn.AdaptiveMaxPool3d, nn.ConstantPad3d, nn.ZeroPad3d,
                          nn.ReplicationPad3d)},
}
CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d,
                nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CHANNEL_NORM_MODULES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)

ACTIVATION_FUNCTIONS = {
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.tanh_,
    F.relu, F.relu_, F.relu6, F.elu, F.elu_, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.leaky_relu, F.leaky_relu_, F.hardtanh, F.hardtanh_, F.hardswish, F.hardsigmoid,
    F.softplus, F.softsign, F.logsigmoid, F.tanhshrink, F.sigmoid, F.tanh, F.threshold,
}
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
IDENTITY_METHODS = {"contiguous", "clone", "detach"}
ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, operator.neg, operator.pos,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
    torch.exp, torch.log, torch.abs, torch.neg,
    torch.sqrt, torch.rsqrt, torch.square, torch.erf, torch.sin, torch.cos, torch.clamp,
    torch.clip, torch.pow, torch.masked_fill,
}
ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_",
    "exp", "log", "abs", "neg", "sqrt", "rsqrt", "square", "clamp", "clamp_", "clip",
    "pow", "float", "double", "half", "bfloat16", "to", "type_as", "requires_grad_", "expand",
    "expand_as", "masked_fill", "masked_fill_",
}
ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}
EQUIVARIANT_FUNCTIONS = {F.softmax, F.log_softmax, F.softmin, torch.softmax,
                         torch.log_softmax, F.normalize}
EQUIVARIANT_METHODS = {"softmax", "log_softmax"}
REDUCTIONS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "prod"}
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
                   "view_as", "reshape_as"}
POOL_FUNCTIONS: dict[Callable[..., Any], int] = {
    F.max_pool1d: 1, F.avg_pool1d: 1, F.adaptive_avg_pool1d: 1, F.adaptive_max_pool1d: 1,
    F.max_pool2d: 2, F.avg_pool2d: 2, F.adaptive_avg_pool2d: 2, F.adaptive_max_pool2d: 2,
    F.max_pool3d: 3, F.avg_pool3d: 3, F.adaptive_avg_pool3d: 3, F.adaptive_max_pool3d: 3,
    F.lp_pool1d: 1, F.lp_pool2d: 2,
}
CONV_FUNCTIONS: dict[Callable[..., Any], bool] = {  # function -> transposed
    F.conv1d: False, F.conv2d: False, F.conv3d: False,
    F.conv_transpose1d: True, F.conv_transpose2d: True, F.conv_transpose3d: True,
}
MATMUL = {operator.matmul, torch.matmul, torch.mm, torch.bmm}

LINEAR = Layer("producer", channel_dim=-1)
CONV = Layer("producer", channel_dim=1)
CONV_TRANSPOSED = Layer("producer", channel_dim=1, in_axis=0, out_axis=1)
EMBEDDING = Layer("producer", channel_dim=-1, bias=None, in_axis=0, out_axis=1)


def producer_layer(module: nn.Module) -> Layer | None:
    """How a channel-producing module's weight makes its output channels (None: not one)."""
    reg = registered_layer(module)
    if reg is not None:
        return reg if reg.kind == "producer" else None
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return CONV_TRANSPOSED
    if isinstance(module, nn.modules.conv._ConvNd):
        return CONV
    if isinstance(module, nn.Embedding):
        return EMBEDDING
    return None


def _module_role(mod: nn.Module) -> Role | None:
    reg = registered_layer(mod)
    if reg is not None:
        form = {"producer": "linear_module", "passthrough": "elementwise"}.get(reg.kind,
                                                                           "per_channel")
        return Role(reg.kind, form, layer=reg)
    if isinstance(mod, nn.Linear):
        return Role("producer", "linear_module", layer=LINEAR)
    if isinstance(mod, CONV_MODULES):
        return Role("producer", "conv_module", layer=producer_layer(mod))
    if isinstance(mod, nn.Embedding):
        return Role("producer", "embedding", layer=EMBEDDING)
    if isinstance(mod, CHANNEL_NORM_MODULES):
        return Role("norm", "channel_norm")
    if isinstance(mod, nn.GroupNorm):
        return Role("norm", "group_norm")
    if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):
        return Role("norm", "layer_norm")
    if isinstance(mod, nn.PReLU):
        return Role("activation", "prelu")
    if isinstance(mod, ACTIVATION_MODULES):
        return Role("activation", "elementwise")
    if isinstance(mod, IDENTITY_MODULES):
        return Role("passthrough", "elementwise")
    if isinstance(mod, EQUIVARIANT_MODULES):
        return Role("equivariant", "equivariant")
    if type(mod) in POOL_MODULES and not getattr(mod, "return_indices", False):
        return Role("pool", "pool", POOL_MODULES[type(mod)])
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return Role("reshape", "reshape")
    if isinstance(mod, nn.Upsample):
        return Role("pool", "pool")
    return None


_METHOD_ROLES: list[tuple[set[str], Role]] = [
    (ACTIVATION_METHODS, Role("activation", "elementwise")),
    (IDENTITY_METHODS, Role("passthrough", "elementwise")),
    (ELEMENTWISE_METHODS, Role("elementwise", "elementwise")),
    (EQUIVARIANT_METHODS, Role("equivariant", "equivariant")),
    (RESHAPE_METHODS, Role("reshape", "reshape")),
    (REDUCTIONS, Role("reduction", "reduction")),
    ({"transpose", "permute", "t"}, Role("transpose", "transpose")),
    ({"size", "dim", "numel"}, Role("shape", "shape_query")),
    ({"matmul"}, Role("matmul", "matmul")),
    ({"chunk", "split", "unbind"}, Role("split", "split")),
    ({"repeat_interleave"}, Role("repeat", "repeat_interleave")),
]

_FUNCTION_ROLES: list[tuple[Any, Role]] = [
    (ACTIVATION_FUNCTIONS, Role("activation", "elementwise")),
    (IDENTITY_FUNCTIONS, Role("passthrough", "elementwise")),
    (ELEMENTWISE_FUNCTIONS, Role("elementwise", "elementwise")),
    (EQUIVARIANT_FUNCTIONS, Role("equivariant", "equivariant")),
    (RESHAPE_FUNCTIONS, Role("reshape", "reshape")),
    (CONV_FUNCTIONS, Role("producer", "conv_function")),
    (MATMUL, Role("matmul", "matmul")),
    ({F.linear}, Role("producer", "linear_function", layer=LINEAR)),
    ({F.scaled_dot_product_attention}, Role("attention", "sdpa")),
    ({torch.einsum}, Role("matmul", "einsum")),
    ({torch.chunk, torch.split, torch.unbind}, Role("split", "split")),
    ({torch.repeat_interleave}, Role("repeat", "repeat_interleave")),
    ({torch.cat, torch.concat}, Role("concat", "cat")),
    ({torch.stack}, Role("concat", "stack")),
    ({torch.transpose, torch.permute, torch.t}, Role("transpose", "transpose")),
    ({getattr, len}, Role("shape", "shape_query")),
    ({operator.getitem}, Role("index", "getitem")),
    ({F.interpolate, F.pad}, Role("pool", "pool")),
    ({getattr(torch, r) for r in REDUCTIONS}, Role("reduction", "reduction")),
]


def role_of(node: fx.Node, root: nn.Module) -> Role | None:
    """What a call node of a graph traced from `root` is; None for an operation not known."""
    if node.op == "call_module":
        return _module_role(root.get_submodule(str(node.target)))
    if node.op == "call_method":
        name = str(node.target)
        return next((role for names, role in _METHOD_ROLES if name in names), None)
    if node.op != "call_function":
        return None
    fn = node.target
    try:
        if fn in POOL_FUNCTIONS:
            return Role("pool", "pool", POOL_FUNCTIONS[fn])
        return next((role for fns, role in _FUNCTION_ROLES if fn in fns), None)
    except TypeError:  # unhashable target
        return None


def is_add(node: fx.Node) -> bool:
    """Whether a node adds tensors (operator, torch or Tensor method)."""
    if node.op not in ("call_function", "call_method"):
        return False
    try:
        return node.target in ADDS
    except TypeError:
        return False

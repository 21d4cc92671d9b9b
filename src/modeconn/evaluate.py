"""The evaluation engine: the task's metrics (loss and accuracy, or F1 and mAP) of one or many
parameter points of any nn.Module.

Points are parameter dicts (``state_dict`` keys, buffers included) evaluated with
``torch.func.functional_call`` on one private copy of the module — never a copy per point. Many
points are evaluated together with ``torch.func.vmap`` (stacked parameters) where the model allows
it, one after another otherwise. BatchNorm running statistics can be re-estimated per point with
``momentum=None`` semantics (the cumulative average over batches, as
``torch.optim.swa_utils.update_bn``); only BatchNorm layers are put in train mode for that pass,
so dropout stays off.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from . import tuning
from .errors import UsageError
from .params import batchnorm_modules, check_module, check_params
from .task import CLASSIFICATION, Task

BN_RESET = ("auto", "on", "off")
# Evaluation batch of 2-D convolutions on CPU: close to the best batch for the zoo's
# convolutional models on 32x32 inputs (benchmarks/RESULTS.md, "The figures behind choices in the
# code"); tiny models prefer larger batches but take milliseconds either way. It is also the
# reference code's batch for BatchNorm re-estimation.
CPU_CONV_BATCH = 128
CPU_TOKEN_BATCH = 128  # sequences of token ids per batch on CPU (see Evaluator._plan)
Point = Mapping[str, Tensor]
Data = tuple[Tensor, Tensor]


def resolve_bn_reset(model: nn.Module, bn_reset: str | bool) -> bool:
    """Whether to re-estimate BatchNorm statistics: 'auto' means when the model has BatchNorm."""
    if isinstance(bn_reset, bool):
        return bn_reset and bool(batchnorm_modules(model))
    if bn_reset not in BN_RESET:
        raise UsageError(f"bn_reset must be one of {', '.join(BN_RESET)}, got {bn_reset!r}")
    return bn_reset != "off" and bool(batchnorm_modules(model))


class Evaluator:
    """Evaluates parameter points of `model` on named data splits.

    `bn_data` (usually the training inputs) feeds BatchNorm re-estimation when it is on.
    `method` is 'vmap' (stack points, one batched forward), 'loop' (one point at a time through
    functional_call) or 'auto' (vmap, falling back to loop if the model cannot be vmapped).
    `task` scores the outputs (loss, metrics, probabilities); classification by default.
    """

    def __init__(self, model: nn.Module, splits: Mapping[str, Data], bn_data: Tensor | None = None,
                 bn_reset: str | bool = "auto", batch_size: int | None = None,
                 method: str = "auto", memory_budget: float = 1.5e9, *,
                 task: Task = CLASSIFICATION):
        check_module(model)
        if not isinstance(splits, Mapping):
            raise TypeError(f"splits must map split names to (inputs, labels), got "
                            f"{type(splits).__name__}; e.g. {{'test': (x, y)}}")
        self.model = copy.deepcopy(model).eval()  # one private copy for the engine's lifetime
        self.task = task
        self.splits = dict(splits)
        self.bn_reset = resolve_bn_reset(self.model, bn_reset)
        if self.bn_reset and bn_data is None:
            raise UsageError("BatchNorm re-estimation needs training inputs (bn_data)")
        self.bn_data = bn_data
        self._bns = batchnorm_modules(self.model)
        for _, m in self._bns:
            m.momentum = None  # cumulative average over the re-estimation batches
        self._nbt = {f"{n}.num_batches_tracked" for n, _ in self._bns}
        # Unsaved buffers (a causal mask, rotary tables) are no point's: every point uses the
        # model's own (functional_call with strict=True needs them too).
        saved = set(self.model.state_dict())
        self._unsaved = {k: b for k, b in self.model.named_buffers() if k not in saved}
        if method not in ("auto", "vmap", "loop"):
            raise UsageError(f"evaluation method must be auto, vmap or loop, got {method!r}")
        self.method = method
        self.keys = list(self.model.state_dict().keys())
        # 2-D convolutions on CPU run one point at a time (see _vmap_ok), in channels-last layout
        # at batches of about 128: the layout and batch they run fastest in (benchmarks/RESULTS.md).
        self._channels_last = method != "vmap" and prefers_channels_last(
            self.model, next(iter(self.splits.values()))[0])
        if self._channels_last:
            self.splits = {k: (nhwc(x), y) for k, (x, y) in self.splits.items()}
            self.bn_data = None if bn_data is None else nhwc(bn_data)
            batch_size = batch_size or CPU_CONV_BATCH
        self.batch_size, self.points_per_chunk = self._plan(batch_size, memory_budget)

    # ------------------------------------------------------------ planning

    def _plan(self, batch_size: int | None, budget: float) -> tuple[int, int]:
        """Data batch and points per chunk: activations within `budget` bytes, and on CPU one
        activation tensor of a chunk within this machine's measured working set
        (`tuning`: past it every elementwise op runs at memory speed). The chunking changes no
        result: each point's arithmetic is the same in any chunk."""
        x = next(iter(self.splits.values()))[0][:2]
        total = widest = 0

        def hook(_m, _i, out):
            nonlocal total, widest
            if torch.is_tensor(out):
                total += out.numel()
                widest = max(widest, out.numel())

        leaves = [m for m in self.model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        with torch.no_grad():
            self.model(x)
        for h in handles:
            h.remove()
        per_sample = max(1, total // len(x)) * x.element_size() * 2
        bs = batch_size or int(min(4096, max(64, budget // per_sample)))
        points = int(max(1, min(32, budget // (per_sample * bs))))
        if x.device.type == "cpu" and not x.is_floating_point() and batch_size is None:
            # Token ids (a language model): each sequence makes (T, vocab) logits per point, so
            # larger batches leave the CPU's cache.
            bs = min(bs, CPU_TOKEN_BATCH)
        if x.device.type == "cpu":  # a GPU wants its points batched: no CPU cache to fit
            row = max(1, widest // len(x)) * x.element_size()
            points = int(max(1, min(points, tuning.choice("eval_working_set") // (row * bs))))
        return bs, points

    # ------------------------------------------------------------ points

    def stack(self, points: Sequence[Point]) -> dict[str, Tensor]:
        """Stack points into one dict of (P, ...) tensors on the data's device."""
        device = next(iter(self.splits.values()))[0].device
        for i, point in enumerate(points):
            check_params(point, f"parameter point {i + 1}")
            missing = set(self.keys) - set(point)
            if missing:
                raise UsageError(f"parameter point {i + 1} lacks {sorted(missing)[:3]}...; it "
                                 "does not belong to this model")
        return {k: torch.stack([p[k].to(device) for p in points]) for k in self.keys}

    def _split_state(self, stacked: dict[str, Tensor]) -> tuple[dict, dict]:
        """(per-point tensors, shared tensors): num_batches_tracked is shared, not batched."""
        batched = {k: v for k, v in stacked.items() if k not in self._nbt}
        if self._channels_last:  # every point's 2-D convolution kernels in channels-last layout
            batched = {k: _stacked_nhwc(v) if v.dim() == 5 else v for k, v in batched.items()}
        shared = {k: stacked[k][0].clone() for k in self._nbt}
        device = next(iter(stacked.values())).device
        shared.update({k: b.to(device) for k, b in self._unsaved.items()})
        return batched, shared

    @torch.no_grad()
    def _reestimate_bn(self, batched: dict[str, Tensor], shared: dict[str, Tensor],
                       use_vmap: bool) -> None:
        for name, _ in self._bns:
            batched[f"{name}.running_mean"] = torch.zeros_like(batched[f"{name}.running_mean"])
            batched[f"{name}.running_var"] = torch.ones_like(batched[f"{name}.running_var"])
            shared[f"{name}.num_batches_tracked"].zero_()
        for _, m in self._bns:
            m.train()
        try:
            assert self.bn_data is not None
            for i in range(0, len(self.bn_data), self.batch_size):
                self._forward(batched, shared, self.bn_data[i:i + self.batch_size], use_vmap)
        finally:
            for _, m in self._bns:
                m.eval()

    def _forward(self, batched: dict[str, Tensor], shared: dict[str, Tensor], x: Tensor,
                 use_vmap: bool) -> Tensor:
        """Logits (P, N, C) of every point on x."""
        if use_vmap:
            def f(p):
                return functional_call(self.model, (p, shared), (x,), strict=True, tie_weights=False)
            with warnings.catch_warnings():  # ops without a batching rule still work, slower
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                return vmap(f, randomness="different")(batched)
        p_count = next(iter(batched.values())).shape[0]
        outs = []
        for j in range(p_count):
            # Each point writes its own BatchNorm statistics into its slice of `batched`.
            point = {k: v[j] for k, v in batched.items()}
            # Every point counts the same batches: BatchNorm's momentum=None average divides by
            # num_batches_tracked, so the points must not share (and advance) one counter.
            own = shared if j == p_count - 1 else {k: v.clone() for k, v in shared.items()}
            outs.append(functional_call(self.model, (point, own), (x,), strict=True, tie_weights=False))
        return torch.stack(outs)

    def _chunks(self, points: Sequence[Point] | Iterable[Point]) -> Iterable[list[Point]]:
        chunk: list[Point] = []
        for p in points:
            chunk.append(p)
            if len(chunk) == self.points_per_chunk:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _prepared(self, chunk: list[Point]) -> tuple[dict, dict, bool]:
        stacked = self.stack(chunk)
        batched, shared = self._split_state(stacked)
        use_vmap = self.method == "vmap"
        if self.method == "auto":
            use_vmap = self._vmap_ok(batched, shared)
        if self.bn_reset:
            self._reestimate_bn(batched, shared, use_vmap)
        return batched, shared, use_vmap

    def _vmap_ok(self, batched: dict, shared: dict) -> bool:
        if not hasattr(self, "_vmap_works"):
            x = next(iter(self.splits.values()))[0][:2]
            if x.device.type == "cpu" and any(isinstance(m, nn.modules.conv._ConvNd)
                                              for m in self.model.modules()):
                # On CPU, convolutions batched by vmap run slower than a loop of plain ones.
                self._vmap_works = False
                return False
            probe = {k: v[:1].clone() for k, v in batched.items()}
            try:
                with torch.no_grad():
                    self._forward(probe, {k: v.clone() for k, v in shared.items()}, x, True)
                self._vmap_works = True
            except Exception:  # any op without a batching rule: evaluate point by point
                self._vmap_works = False
        return self._vmap_works

    # ------------------------------------------------------------ public API

    @torch.no_grad()
    def evaluate(self, points: Iterable[Point]) -> list[dict[str, dict[str, float]]]:
        """For each point: {split: the task's metrics} ('loss' and 'acc' for classification;
        'loss', 'f1', 'macro_f1', 'map' for multi-label)."""
        results: list[dict[str, dict[str, float]]] = []
        for chunk in self._chunks(points):
            batched, shared, use_vmap = self._prepared(chunk)
            per_point: list[dict[str, dict[str, float]]] = [{} for _ in chunk]
            for split, (x, y) in self.splits.items():
                totals = None
                for i in range(0, len(x) or 1, self.batch_size):  # an empty split: one empty batch
                    out = self._forward(batched, shared, x[i:i + self.batch_size], use_vmap)
                    totals = self.task.accumulate(totals, self.task.stacked_totals(
                        out, y[i:i + self.batch_size]))
                for j in range(len(chunk)):
                    per_point[j][split] = self.task.metrics({k: v[j] for k, v in totals.items()},
                                                            len(x))
            results.extend(per_point)
        return results

    @torch.no_grad()
    def probabilities(self, points: Iterable[Point], split: str) -> Tensor:
        """The task's probabilities (P, N, C) of every point on a split (softmax outputs for
        classification; BatchNorm re-estimated if on)."""
        x, _ = self.splits[split]
        outs = []
        for chunk in self._chunks(points):
            batched, shared, use_vmap = self._prepared(chunk)
            outs.append(torch.cat([self.task.probabilities(
                self._forward(batched, shared, x[i:i + self.batch_size], use_vmap))
                for i in range(0, len(x), self.batch_size)], dim=1))
        return torch.cat(outs)

    @torch.no_grad()
    def features(self, points: Iterable[Point], split: str) -> list[Tensor]:
        """Penultimate representations (the input of the last Linear layer) per point on a split."""
        last = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        if not last:
            raise UsageError("the model has no Linear layer whose input could serve as features")
        x, _ = self.splits[split]
        captured: list[Tensor] = []
        handle = last[-1].register_forward_pre_hook(lambda _m, inp: captured.append(inp[0]))
        out = []
        try:
            for chunk in self._chunks(points):
                batched, shared, _ = self._prepared(chunk)
                for j in range(len(chunk)):
                    captured.clear()
                    single = {k: v[j:j + 1] for k, v in batched.items()}
                    for i in range(0, len(x), self.batch_size):
                        self._forward(single, shared, x[i:i + self.batch_size], False)
                    out.append(torch.cat(captured).flatten(1))
        finally:
            handle.remove()
        return out

    @torch.no_grad()
    def bn_reestimated(self, point: Point) -> dict[str, Tensor]:
        """The point with its BatchNorm statistics re-estimated on `bn_data` (unchanged if off)."""
        batched, shared, _ = self._prepared([point])
        out = {k: v[0] for k, v in batched.items()}
        out.update(shared)
        return {k: out[k] for k in self.keys}


def prefers_channels_last(model: nn.Module, x: Tensor, gradients: bool = False) -> bool:
    """Whether `model` should run on inputs like `x` in channels-last layout: 2-D convolutions
    on CPU, where oneDNN's convolution kernels run faster in it, forward and backward
    (benchmarks/RESULTS.md); on GPUs fp32 convolutions are left in the default layout.

    With `gradients` (training, curve fitting) only where oneDNN's channels-last weight
    gradients are proven right: its AVX-512 kernels (`channels_last_gradients_safe`).
    """
    return (x.device.type == "cpu" and x.dim() == 4
            and any(isinstance(m, nn.Conv2d) for m in model.modules())
            and (not gradients or channels_last_gradients_safe()))


_AVX512_ISAS = ("AVX512", "AVX10", "ALL")  # ONEDNN_MAX_CPU_ISA values that keep AVX-512 kernels


def channels_last_gradients_safe() -> bool:
    """Whether oneDNN runs its AVX-512 kernels here, whose channels-last convolution gradients
    match float64 in every case checked (benchmarks/layout_check.py's grids, recorded in
    benchmarks/RESULTS.md; tests/test_layout.py: the zoo's models). Its AVX2 kernels do
    not: the weight gradient of strided 1x1 convolutions with 2-7 input channels is wrong at two
    threads and corrupts the heap at one (ResNet-8 at width 0.25 on an AVX2-only CPU), so there
    gradients run in the default layout."""
    limit = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "")
    return (torch.backends.cpu.get_cpu_capability() == "AVX512"
            and (not limit or limit.upper().startswith(_AVX512_ISAS)))


def nhwc(x: Tensor) -> Tensor:
    """`x` in channels-last layout (same values)."""
    return x.contiguous(memory_format=torch.channels_last)


def _stacked_nhwc(v: Tensor) -> Tensor:
    """(P, O, I, kh, kw) kernels laid out so that every v[j] is channels-last contiguous."""
    return v.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024, *,
             task: Task = CLASSIFICATION) -> tuple[float, ...]:
    """The task's metrics (mean cross-entropy, accuracy) of `model` as it is (eval mode, its own
    statistics), in the order of `task.metric_names`."""
    if prefers_channels_last(model, x):  # see CPU_CONV_BATCH
        batch_size = min(batch_size, CPU_CONV_BATCH)
    was_training = model.training
    model.eval()
    totals = None
    with torch.no_grad():
        for i in range(0, len(x) or 1, batch_size):  # an empty set: one empty batch
            totals = task.accumulate(totals, task.totals(model(x[i:i + batch_size]),
                                                     y[i:i + batch_size]))
    model.train(was_training)
    metrics = task.metrics(totals, len(x))
    return tuple(metrics[k] for k in task.metric_names)


def probabilities(model: nn.Module, x: Tensor, batch_size: int = 1024, *,
                  task: Task = CLASSIFICATION) -> Tensor:
    """The task's probabilities (N, C) of `model` as it is (eval mode, its own statistics)."""
    if prefers_channels_last(model, x):  # see CPU_CONV_BATCH
        batch_size = min(batch_size, CPU_CONV_BATCH)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([task.probabilities(model(x[i:i + batch_size]))
                         for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def flops_per_sample(model: nn.Module, x: Tensor) -> int:
    """Forward multiply-add FLOPs (×2) of Linear and Conv layers per input sample."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features * (out.numel() // out.shape[-1])
        elif isinstance(m, nn.modules.conv._ConvNd):
            k = math.prod(m.kernel_size) * m.in_channels // m.groups
            total += 2 * k * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(x[:1])
    for h in handles:
        h.remove()
    return total

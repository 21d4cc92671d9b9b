"""Optimal-transport fusion (Singh & Jaggi 2020) on any model the graph reader can trace.

Layer by layer in forward order, A's units of each channel group are matched to B's by an
optimal transport plan T (n_A × n_B) between uniform (or importance) marginals, with the ground
cost between A's and B's units taken from their incoming weights (A's already carried into B's
basis by the earlier groups' plans) or from their activations on m samples. A's tensors are then
carried into B's basis along every grouped axis — new unit j = Σ_i T[i, j] · unit i / Σ_i T[i, j],
the barycentric map, a permutation when the widths are equal and the plan exact — and averaged with
B's. The fused model has B's widths. Groups come from the permutation spec (the graph reader):
residual connections tie their producers to one group and so to one plan, norms follow their
channels, a flatten after a convolution carries the plan over its spatial blocks, and a
concatenation carries each part by its own group's plan. Attention heads stay whole: a head
permutation and its members (the units Q and K share, those V and O share) get one exact plan
from the two-level assignment of Verma & Elbayad on the ground costs (a LAP per pair of heads,
then one over heads), so heads need exact plans between equal widths (EMD, uniform marginals).

The ground cost and the marginals follow sidak/otfusion (`ground_metric.py`,
`wasserstein_ensemble.py`) where it has options: the distance squared or not, then normalised
(divided by its max, median or mean, log(1 + cost), or none) before the plan is solved — Sinkhorn's
regularisation is relative to the normalised cost, as in the reference; EMD's plan does not change
under a positive scale — and importance marginals from the L1 (or L2) norm of each unit's incoming
weights as trained (`importance-l1`, `importance-l2`: not yet carried into B's basis, the
reference's active code; `importance`: the L1 norm after carrying, the variant the reference left
commented out, which modeconn 0.2 used and keeps under its name). `PRESETS` holds the
reference's settings by name.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..align.activations import Moments, batches, collector, units
from ..align.lap import head_assignment
from ..align.spec import PermutationSpec, Slot, slot_index, units_first
from ..align.trace import trace
from ..errors import UsageError
from ..options import Options, option, preset_option
from ..params import combine

COSTS = ("weights", "activations")
SOLVERS = ("emd", "sinkhorn")
MARGINALS = ("uniform", "importance", "importance-l1", "importance-l2")
# What importance marginals need (the requirement an options check names).
NEEDS_PROPER = ("other than uniform needs proper marginals (sidak/otfusion asserts "
                "--proper-marginals with --importance): add --proper-marginals")
# The ground cost's normalisation: the statistic it is divided by, or log(1 + cost), or none.
NORMALIZE = {"max": torch.amax, "median": torch.median, "mean": torch.mean, "log": torch.log1p,
             "none": None}
# sidak/otfusion's settings by name: "otfusion" its options' defaults (Sinkhorn with reg 0.01 on
# log(1 + squared distance), as `main.py` runs without --exact), "otfusion-readme" as its README's
# commands run it (--exact --not-squared --ground-metric-normalize none). Both with --correction
# --past-correction (which every command of its README passes and modeconn always does) and
# uniform marginals (its --importance is unset).
PRESETS = {
    "otfusion": {"solver": "sinkhorn", "reg": 0.01, "squared": True, "normalize_cost": "log",
                 "marginals": "uniform", "proper_marginals": False},
    "otfusion-readme": {"solver": "emd", "squared": False, "normalize_cost": "none",
                        "marginals": "uniform", "proper_marginals": False},
}


@dataclass
class OTFusion:
    """The fused parameters, A carried into B's basis, and each group's transport plan."""

    params: dict[str, Tensor]
    aligned: dict[str, Tensor]
    plans: dict[str, Tensor]  # group → T (n_A × n_B), rows summing to A's marginal


@dataclass
class _Map:
    """A group's barycentric map w (n_A × n_B, columns summing to 1), and, when w is a
    permutation, the index it moves units by (so that moving is exact and cheap)."""

    w: Tensor
    index: Tensor | None

    @classmethod
    def of(cls, plan: Tensor, proper: bool = True) -> _Map:
        """The plan's columns divided by their sums (the reference's --proper-marginals), or
        (`proper=False`, the reference without it) the plan times n_A: the same where the
        columns hold their marginal, as EMD's do; not where Sinkhorn stopped short of it."""
        w = plan / plan.sum(0, keepdim=True).clamp_min(1e-300) if proper else plan * plan.shape[0]
        square = w.shape[0] == w.shape[1]
        index = w.argmax(0) if square and bool((w.count_nonzero(0) == 1).all()) else None
        return cls(w, index)


def _along(t: Tensor, axis: int, m: _Map, layout: tuple[int, int]) -> Tensor:
    """`t` with the units of `axis` (n_A of them, in blocks `layout`) mapped to n_B by
    new_j = Σ_i w[i, j] · old_i."""
    n_a, n_b = m.w.shape
    outer, inner = layout
    moved, _ = units_first(t, axis, n_a, layout)  # (n_a, [outer, inner,] rest...)
    flat = moved.reshape(n_a, -1)
    if m.index is not None:  # a permutation: move, not mix
        out = flat.index_select(0, m.index.to(flat.device)).reshape(n_b, *moved.shape[1:])
    else:
        out = (m.w.T.to(flat.device, flat.dtype) @ flat).reshape(n_b, *moved.shape[1:])
    if layout != (1, 1):
        out = out.movedim(0, 1).reshape(outer * n_b * inner, *moved.shape[3:])
    return out.movedim(0, axis)


def _along_slot(t: Tensor, axis: int, s: Slot, maps: Mapping[str, _Map]) -> Tensor:
    """`t` (the slot's entries along `axis`) carried by the slot's group's map, if it has one."""
    if s.perm not in maps:
        return t
    m = maps[s.perm]
    if s.repeat > 1:  # repeated head blocks (grouped-query attention): exact plans only
        return t.index_select(axis, slot_index(m.index.to(t.device), s))
    return _along(t, axis, m, s.layout)


def _along_slots(t: Tensor, axis: int, slots: Sequence[Slot], maps: Mapping[str, _Map],
                 sizes: Mapping[str, int]) -> Tensor:
    """`t` with every slot of `axis` whose group has a map carried over by it; the entries
    between slots (unpermuted parts of a concatenation) stay as they are."""
    if len(slots) == 1 and slots[0].start == 0 \
            and slots[0].length(sizes[slots[0].perm]) == t.shape[axis]:
        return _along_slot(t, axis, slots[0], maps)
    pieces, pos = [], 0
    for s in slots:
        n = sizes[s.perm]
        pieces.append(t.narrow(axis, pos, s.start - pos))
        pieces.append(_along_slot(t.narrow(axis, s.start, s.length(n)), axis, s, maps))
        pos = s.start + s.length(n)
    pieces.append(t.narrow(axis, pos, t.shape[axis] - pos))
    return torch.cat(pieces, axis)


def _specs(model_a: nn.Module, model_b: nn.Module, example: Any, allow_partial: bool = False
           ) -> tuple[PermutationSpec, PermutationSpec, Any, Any]:
    ta = trace(model_a, example, allow_partial)
    same = type(model_a) is type(model_b) and {k: v.shape for k, v in model_a.state_dict().items()} \
        == {k: v.shape for k, v in model_b.state_dict().items()}
    tb = ta if same else trace(model_b, example, allow_partial)  # one architecture: one trace
    sa, sb = ta.spec, tb.spec
    shape = {k: [s.perm for s in v] for k, v in sa.segments.items()}
    if sa.axes != sb.axes or set(sa.sizes) != set(sb.sizes) \
            or shape != {k: [s.perm for s in v] for k, v in sb.segments.items()}:
        raise UsageError("OT fusion needs two models of one architecture (widths may differ): "
                         "their channel groups differ")
    for (name, axis), layout in sa.layouts.items():
        if sb.layout(name, axis)[0] != layout[0] or sb.layout(name, axis)[1] != layout[1]:
            raise UsageError(f"OT fusion: {name!r} axis {axis} flattens differently in A and B")
    return sa, sb, ta, tb


def _marginal(kind: str, feats: Tensor) -> np.ndarray:
    """A group's marginal from its units' incoming weights (rows of `feats`): uniform, or their
    L1 (L2) norms + 1e-9, normalised (the reference's `_get_neuron_importance_histogram`)."""
    n = feats.shape[0]
    if kind == "uniform":
        return np.full(n, 1.0 / n)
    if kind == "importance":  # modeconn 0.2's (of the carried weights), kept as it was
        w = feats.abs().sum(1).double().cpu().numpy() + 1e-12
    else:
        w = torch.linalg.vector_norm(feats.double(), 2 if kind == "importance-l2" else 1,
                                     dim=1).cpu().numpy() + 1e-9
    return w / w.sum()


def _normalized(cost: Tensor, how: str) -> Tensor:
    """The ground cost normalised as the reference's `--ground-metric-normalize` does (a
    statistic of 0, two identical models, leaves it as it is)."""
    f = NORMALIZE[how]
    if f is None:
        return cost
    if how == "log":
        return f(cost)
    scale = f(cost)
    return cost / scale if scale > 0 else cost


def _plan(cost: Tensor, a: np.ndarray, b: np.ndarray, solver: str, reg: float) -> Tensor:
    import ot

    c = cost.double().cpu().numpy()
    if solver == "emd":
        plan = ot.emd(a, b, c)
    else:
        plan = ot.sinkhorn(a, b, c, reg)
        if not np.isfinite(plan).all() or plan.sum() <= 0:
            raise UsageError(f"Sinkhorn with reg {reg} did not converge; raise --reg, normalise "
                             "the cost (--normalize-cost max) or use --solver emd")
    return torch.from_numpy(np.asarray(plan, dtype=np.float64))


def _sq_dist(fa: Tensor, fb: Tensor, squared: bool = True) -> Tensor:
    """Squared (or plain) Euclidean distances between rows, in the weights' precision."""
    d = ((fa * fa).sum(1)[:, None] + (fb * fb).sum(1)[None, :] - 2 * fa @ fb.T).clamp_min(0)
    return d if squared else d.sqrt()


@torch.no_grad()
def ot_fusion(model_a: nn.Module, a: Mapping[str, Tensor], model_b: nn.Module,
              b: Mapping[str, Tensor], example: Tensor, *, cost: str = "weights",
              x: Tensor | None = None, solver: str = "emd", reg: float = 0.01,
              marginals: str = "uniform", weight: float = 0.5, squared: bool = True,
              normalize_cost: str = "max", proper_marginals: bool = True, batch_size: int = 256,
              allow_partial: bool = False) -> OTFusion:
    """Fuse A into B: A's units transported onto B's group by group, then (1 − weight)·A +
    weight·B. `model_a`/`model_b` are the two architectures (their widths may differ; the
    result has B's); `example` a batch of inputs for tracing; `x` the samples of the
    activation cost. The ground cost is the squared (or, `squared=False`, plain) Euclidean
    distance, then normalised by `normalize_cost` (a key of NORMALIZE) before the plan."""
    if cost not in COSTS:
        raise UsageError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
    if solver not in SOLVERS:
        raise UsageError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if marginals not in MARGINALS:
        raise UsageError(f"marginals must be one of {', '.join(MARGINALS)}, got {marginals!r}")
    if normalize_cost not in NORMALIZE:
        raise UsageError(f"normalize_cost must be one of {', '.join(NORMALIZE)}, got "
                         f"{normalize_cost!r}")
    if not proper_marginals and marginals != "uniform":
        raise UsageError(f"marginals {marginals} {NEEDS_PROPER.removeprefix('other than uniform ')}")
    if not 0 <= weight <= 1:
        raise UsageError(f"weight must be in [0, 1], got {weight}")
    if solver == "sinkhorn" and not reg > 0:
        raise UsageError(f"reg must be positive for Sinkhorn, got {reg}")
    if cost == "activations" and (x is None or len(x) == 0):
        raise UsageError("the activation cost needs samples (x)")
    sa, sb, ta, tb = _specs(model_a, model_b, example, allow_partial)
    family = sorted(set(sa.heads) | set(sa.heads.values()))
    if family and (solver != "emd" or marginals != "uniform"
                   or any(sa.sizes[q] != sb.sizes[q] for q in family)):
        raise UsageError(f"OT fusion keeps attention heads ({family[0]}) whole only with exact "
                         "plans between equal widths: use --solver emd --marginals uniform and "
                         "models of one width, or fuse by weight or activation matching (methods "
                         "wm, am)")
    if not proper_marginals and sa.sizes != sb.sizes:
        raise UsageError("--no-proper-marginals scales each plan by A's width, which assumes the "
                         "widths of A and B agree (sidak/otfusion's correction); keep proper "
                         "marginals for models of different widths")
    a = {k: v.detach() for k, v in a.items()}
    b = {k: v.detach() for k, v in b.items()}
    acts = _activation_moments(_holding(model_a, a), _holding(model_b, b), ta, tb, sa, sb, x,
                               batch_size) if cost == "activations" else {}
    maps: dict[str, _Map] = {}  # group → T, columns divided by their sums: the barycentric map
    plans: dict[str, Tensor] = {}
    def incoming(group: str, carried: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """A's and B's incoming weights (and biases) of a group's units, one row per unit; A's
        carried by the plans so far, or (`carried=False`) as trained."""
        fa_parts, fb_parts = [], []
        for name, axis in sa.perm_to_axes[group]:
            if axis != 0 or a[name].dim() == 0:
                continue  # incoming weights only: the rows this group produces
            others = [(ax, slots) for ax, slots in sa.slots[name].items() if ax != 0]
            if any(s.perm not in maps and sa.sizes[s.perm] != sb.sizes[s.perm]
                   for _, slots in others for s in slots):
                continue  # a later group of another width (a residual cycle)
            ta_ = a[name]
            for ax, slots in others if carried else ():
                ta_ = _along_slots(ta_, ax, slots, maps, sa.sizes)
            for k, slot in enumerate(sa.slots[name][0]):
                if slot.perm != group:
                    continue
                rows_a = ta_.narrow(0, slot.start, slot.length(sa.sizes[group]))
                sb_slot = sb.slots[name][0][k]
                rows_b = b[name].narrow(0, sb_slot.start, sb_slot.length(sb.sizes[group]))
                fa_parts.append(units_first(rows_a, 0, sa.sizes[group], slot.layout, slot.repeat,
                                            slot.block)[0].reshape(sa.sizes[group], -1))
                fb_parts.append(units_first(rows_b, 0, sb.sizes[group], sb_slot.layout,
                                            sb_slot.repeat, sb_slot.block)[0]
                                .reshape(sb.sizes[group], -1).to(ta_.dtype))
        if not fa_parts:
            return None, None
        return torch.cat(fa_parts, 1), torch.cat(fb_parts, 1)

    def ground_cost(group: str, fa: Tensor | None, fb: Tensor | None) -> Tensor | None:
        """The reference's ground metric: distance (squared or not), then normalised."""
        if cost == "activations" and acts[group].count:
            m = acts[group]
            d = (m.saa[:, None] + m.sbb[None, :] - 2 * m.sab).clamp_min(0) / max(m.count, 1)
            d = d if squared else d.sqrt()
        elif fa is None:
            return None
        else:
            d = _sq_dist(fa, fb, squared)
        return _normalized(d, normalize_cost)

    for group in sa.names:
        if group in maps:
            continue
        head = sa.heads.get(group, group if sa.members(group) else None)
        if head is not None:  # a head permutation and its members: one structured plan
            family = [head, *sa.members(head)]
            costs = [ground_cost(q, *incoming(q)) for q in family]
            if any(c is None for c in costs[1:]):
                raise UsageError(f"OT fusion: no incoming weights of {family[1]!r} can be "
                                 "compared (use --cost activations)")
            scores = [None if c is None else -c.double().cpu().numpy() for c in costs]
            sigma, flat, _ = head_assignment(scores[0], scores[1:], sa.sizes[head])
            for q, cols in zip(family, [sigma, *flat], strict=True):
                n = sa.sizes[q]
                plan = torch.zeros(n, n, dtype=torch.float64)
                plan[torch.arange(n), torch.as_tensor(cols, dtype=torch.long)] = 1.0 / n
                plans[q] = plan
                maps[q] = _Map.of(plan)  # a permutation: exact either way
            continue
        fa, fb = incoming(group)
        c = ground_cost(group, fa, fb)
        if c is None:
            raise UsageError(f"OT fusion: no incoming weights of group {group!r} can be "
                             "compared (use --cost activations)")
        n_a, n_b = sa.sizes[group], sb.sizes[group]
        if marginals != "uniform" and fa is not None:  # importance: of A's weights as trained,
            raw = fa if marginals == "importance" else incoming(group, False)[0]
            mu, nu = _marginal(marginals, raw), _marginal(marginals, fb)  # or as carried
        else:
            mu, nu = np.full(n_a, 1.0 / n_a), np.full(n_b, 1.0 / n_b)
        plan = _plan(c, mu, nu, solver, reg)
        plans[group] = plan
        maps[group] = _Map.of(plan, proper_marginals)
    aligned = {}
    for name, t in a.items():
        if not t.is_floating_point():  # integer buffers (counters) follow B
            aligned[name] = b.get(name, t)
            continue
        out = t
        for ax, slots in sa.slots.get(name, {}).items():
            out = _along_slots(out, ax, slots, maps, sa.sizes)
        aligned[name] = out
    for name in aligned:
        if tuple(aligned[name].shape) != tuple(b[name].shape):
            raise UsageError(f"OT fusion: {name!r} came out {tuple(aligned[name].shape)}, B has "
                             f"{tuple(b[name].shape)}: a width not covered by the groups")
    fused = combine([aligned, b], [1.0 - weight, weight])
    return OTFusion(fused, aligned, plans)


def _holding(model: nn.Module, params: Mapping[str, Tensor]) -> nn.Module:
    """A copy of the module holding these parameters (the activations are theirs)."""
    m = copy.deepcopy(model)
    m.load_state_dict(dict(params))
    return m


def _activation_moments(model_a, model_b, ta, tb, sa, sb, x, batch_size) -> dict[str, Any]:
    """Per group, the sums for ‖act_A,i − act_B,j‖² over the samples (after the activation,
    every position a sample, as activation matching reads them)."""
    nodes_a = sorted({pt.node for pts in ta.points.values() for pt in pts})
    nodes_b = sorted({pt.node for pts in tb.points.values() for pt in pts})
    runs = []
    for m, traced, nodes in ((model_a, ta, nodes_a), (model_b, tb, nodes_b)):
        was = m.training
        m.eval()
        runs.append((m, was, collector(traced.graph_module, m, nodes), nodes))
    moments = {g: Moments() for g in sa.names}
    try:
        for idx in batches(len(x), batch_size):
            outs = [dict(zip(nodes, coll(x[idx]), strict=True)) for _, _, coll, nodes in runs]
            for g in sa.names:
                for pa, pb in zip(ta.points.get(g, []), tb.points.get(g, [])):
                    moments[g].add(units(outs[0][pa.node], pa, sa.sizes[g]),
                                   units(outs[1][pb.node], pb, sb.sizes[g]))
    finally:
        for m, was, _, _ in runs:
            m.train(was)
    for g, mo in moments.items():
        if mo.count == 0 and not sa.members(g):  # a head permutation: its members are read
            raise UsageError(f"OT fusion: no activations were read for group {g!r}; use "
                             "--cost weights")
    return moments


def reg_option():
    """Sinkhorn's regularisation, of the normalised cost."""
    return option(0.01, "Sinkhorn regularisation, of the normalised cost (with --normalize-cost "
                        "max, the default: relative to the largest cost)", low=0, low_open=True)


def marginals_option():
    """The plans' marginals."""
    return option("uniform", "uniform, or a unit's importance: importance-l1 (-l2) the L1 (L2) "
                             "norm of its incoming weights as trained, as sidak/otfusion's "
                             "--importance l1 (l2); importance the L1 norm after A's are carried "
                             "by the earlier plans (modeconn 0.2's)", choices=MARGINALS)


def squared_option():
    """Whether the ground metric is the squared distance."""
    return option(True, "ground metric: the squared Euclidean distance, or (--no-squared, "
                        "sidak/otfusion's --not-squared) the distance", later=True)


def normalize_cost_option():
    """How the ground cost is normalised before the plan."""
    return option("max", "normalise the ground cost before the plan: divide it by its max, "
                         "median or mean, take log(1 + cost), or none (sidak/otfusion's "
                         "--ground-metric-normalize); EMD's plan changes only with log",
                  choices=tuple(NORMALIZE), later=True)


def proper_marginals_option():
    """How a plan becomes the map that carries A's units."""
    return option(True, "carry A's units by the plan's columns divided by their sums (a "
                        "barycentric map; sidak/otfusion's --proper-marginals), or "
                        "(--no-proper-marginals, its default) by the plan times A's width: the "
                        "same with EMD, not where Sinkhorn stops short of its marginals",
                  later=True)


@dataclass(frozen=True, kw_only=True)
class OTOptions(Options):
    job = "OT fusion"
    cost: str = option("weights", "ground cost: the distance of incoming weights, or of "
                                  "activations on `samples` training examples", choices=COSTS)
    solver: str = option("emd", "transport plan: exact EMD or Sinkhorn", choices=SOLVERS)
    reg: float = reg_option()
    marginals: str = marginals_option()
    samples: int = option(512, "training examples of the activation cost", low=1)
    allow_partial: bool = option(False, "fuse what the traced groups cover and leave in place "
                                        "the layers the graph reader names as not coverable",
                                 later=True)
    squared: bool = squared_option()
    normalize_cost: str = normalize_cost_option()
    proper_marginals: bool = proper_marginals_option()
    preset: str | None = preset_option(PRESETS, "sidak/otfusion's: otfusion (its options' "
                                                "defaults) or otfusion-readme (its README's "
                                                "commands)")
    presets = PRESETS

    def check(self) -> None:
        if not self.proper_marginals and self.marginals != "uniform":
            raise self.invalid("marginals", NEEDS_PROPER)

"""How much weight matching of trained ViTs depends on where its coordinate descent starts.

Weight matching (Git Re-Basin) is a coordinate descent: each permutation group is solved by a
LAP given the others, in a random order (`seed`), from the identity. In a transformer one
permutation — the residual stream — is shared by the embeddings, every LayerNorm and every
block's input and output; the other groups (heads, within-head, MLP units) are each tied to it.
Solved before the residual moves, they fit B's unpermuted residual, which then makes the identity
the residual's best answer: a local optimum where WM permutes little of what matters.

For every pair of models that an align stage of a study aligned (examples/vit-alignment.toml),
this prints the WM objective Σ⟨θ_A, π(θ_B)⟩ and the linear path's test-loss barrier (11 points)
for: the identity, WM from the identity with layer orders 0..N-1 (seed 0 is what `align` does),
activation matching (the study's own `am` result), and WM started from AM's permutation.

Run: PYTHONPATH=src python benchmarks/wm_vit_orders.py STUDY_DIR [--orders 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from modeconn.align import Permutation, auto_spec
from modeconn.align.matching import WeightMatcher
from modeconn.checkpoint import params_of
from modeconn.data import DataSpec, eval_data
from modeconn.models import load_same_architecture
from modeconn.paths import interpolate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--orders", type=int, default=5, help="WM layer orders (seeds) to try")
    ap.add_argument("--points", type=int, default=11)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    jobs = {}
    for d in sorted((args.study / "jobs").iterdir()):
        if not (d / "result.json").exists() or not d.name.startswith("align-"):
            continue
        opts = json.loads((d / "job.json").read_text())["options"]
        jobs.setdefault((opts["a"], opts["b"]), {})[opts["method"]] = d / "out"
    print(f"{'pair':<32} {'start':<14} {'objective':>10} {'test loss barrier':>18}")
    for (a, b), methods in jobs.items():
        if "am" not in methods:
            continue
        def path(ref: str) -> Path:  # "@<job id>/<path in its out/>"
            job, _, inside = ref[1:].partition("/")
            return args.study / "jobs" / job / "out" / inside

        model, (ca, cb) = load_same_architecture([path(a), path(b)])
        pa, pb = params_of(ca), params_of(cb)
        data = eval_data(DataSpec.from_dict(ca.meta.get("data", {})))  # as align reads it
        spec = auto_spec(model, data.test_x[:2])

        def score(perm: Permutation) -> float:
            q = perm.apply(pb)
            return sum(float((pa[k].double() * q[k].double()).sum()) for k in spec.axes)

        def barrier(perm: Permutation) -> float:
            _, summary = interpolate(model, pa, perm.apply(pb), {"test": (data.test_x,
                                                                          data.test_y)},
                                     points=args.points)
            return summary["test"]["loss"]["linear"]["barrier"]

        am = json.loads((methods["am"] / "permutation.json").read_text())["permutation"]
        am = Permutation(spec, {k: torch.tensor(v) for k, v in am.items()})
        starts = [("identity", Permutation.identity(spec))]
        starts += [(f"WM order {s}", WeightMatcher(spec, seed=s)(pa, pb))
                   for s in range(args.orders)]
        starts += [("AM", am), ("WM from AM", WeightMatcher(spec)(pa, pb, init=am))]
        label = f"{a.split('/')[0][1:]}→{b.split('/')[0][1:]}"
        for name, perm in starts:
            moved = int((perm[spec.names[0]] != torch.arange(len(perm[spec.names[0]]))).sum())
            print(f"{label:<32} {name:<14} {score(perm):10.2f} {barrier(perm):18.4f}   "
                  f"({moved} of {len(perm[spec.names[0]])} units of {spec.names[0]} moved)")
            label = ""


if __name__ == "__main__":
    main()

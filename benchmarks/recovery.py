"""Evidence, not a timing: weight matching undoes a random permutation of a *trained* model.

For each checkpoint: the automatic permutation spec (checked), then `--trials` random permutations
of the model, each matched back to the original by weight matching (`WeightMatcher`, seed = trial).
A trial is recovered when the aligned copy equals the original tensor for tensor, bit for bit. The
linear path between the original and the aligned copy (BatchNorm re-estimated, 5 points, train and
test) is evaluated for the first recovered trial and for every trial that is not recovered; its
loss barrier is printed.

    PYTHONPATH=src python benchmarks/recovery.py CKPT [CKPT ...] [--trials 100]
"""

from __future__ import annotations

import argparse

import torch

from modeconn.align import Permutation, WeightMatcher, auto_spec
from modeconn.checkpoint import params_of
from modeconn.data import DataSpec, eval_data
from modeconn.models import load_model
from modeconn.paths import interpolate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--trials", type=int, default=100)
    args = ap.parse_args()
    print(f"{'checkpoint':48s} {'params':>9s} {'groups':>6s} {'recovered':>10s} "
          f"{'max train barrier':>18s} {'max test barrier':>17s}")
    for path in args.checkpoints:
        model, ckpt = load_model(path)
        data = eval_data(DataSpec.from_dict(ckpt.meta.get("data", {})), "full", None)
        spec = auto_spec(model, data.train_x[:2])
        state = params_of(ckpt)
        splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
        hits, barriers, checked_recovered = 0, {"train": 0.0, "test": 0.0}, False
        for trial in range(args.trials):
            permuted = Permutation.random(spec, torch.Generator().manual_seed(trial)).apply(state)
            aligned = WeightMatcher(spec, seed=trial)(state, permuted).apply(permuted)
            ok = all(torch.equal(aligned[k], state[k]) for k in state)
            hits += ok
            if ok and checked_recovered:
                continue
            checked_recovered |= ok
            _, summary = interpolate(model, state, aligned, splits, bn_data=data.train_x,
                                     points=5, bn_reset="auto")
            for split in barriers:
                barriers[split] = max(barriers[split], summary[split]["loss"]["linear"]["barrier"])
        n = sum(v.numel() for v in state.values())
        print(f"{path[-48:]:48s} {n:9,d} {len(spec.sizes):6d} {hits:>5d}/{args.trials:<4d} "
              f"{barriers['train']:18.2e} {barriers['test']:17.2e}", flush=True)


if __name__ == "__main__":
    main()

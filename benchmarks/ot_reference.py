"""OT fusion under sidak/otfusion's options: the reference's math (ported in
tests/otfusion_port.py) against modeconn's on two trained bias-free MLPs, per named setting.

Trains A and B (MLPNet 400-200-100, no biases, as the reference's mlpnet) on the fusion
protocol's heterogeneous split (A: class 4 and 10% of the rest; B: the other 90%; SGD lr 0.05, 10
epochs), then fuses them as the reference would (float32, as it runs) and as modeconn does, and
prints for each setting the largest difference of fused weights (with the reference's ε = 1e-7 in
its correction 1/(β + ε), which shrinks A's carried weights by n·ε relatively, and without it),
both fused models' test accuracy, and how far importance marginals of the carried weights
(modeconn 0.2's `importance`) are from the reference's (of the weights as trained), layer by
layer.

    PYTHONPATH=src python benchmarks/ot_reference.py [--dataset digits] [--out /tmp/otref]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from otfusion_port import reference_fusion  # noqa: E402
from train_throughput import cpu_model  # noqa: E402

from modeconn import jobs  # noqa: E402
from modeconn.checkpoint import params_of  # noqa: E402
from modeconn.data import DataSpec, eval_data  # noqa: E402
from modeconn.evaluate import Evaluator  # noqa: E402
from modeconn.jobs._inputs import split_tensors  # noqa: E402
from modeconn.merge.ot import PRESETS, ot_fusion  # noqa: E402
from modeconn.models import load_model  # noqa: E402

# name → modeconn's options; the reference's flags follow from them
SETTINGS = {
    "otfusion (its defaults: Sinkhorn 0.01 on log(1 + d²))": PRESETS["otfusion"],
    "otfusion-readme (its README: --exact --not-squared, normalize none)":
        PRESETS["otfusion-readme"],
    "--ground-metric-normalize max, Sinkhorn 0.05 (modeconn's --reg scale)":
        {"solver": "sinkhorn", "reg": 0.05, "normalize_cost": "max", "proper_marginals": False},
    "--importance l1 --proper-marginals, Sinkhorn 0.05, normalize max":
        {"solver": "sinkhorn", "reg": 0.05, "normalize_cost": "max",
         "marginals": "importance-l1"},
    "modeconn's defaults (EMD, d², proper marginals)": {},
}


def as_reference(kw: dict) -> dict:
    return {"exact": kw.get("solver", "emd") == "emd", "reg": kw.get("reg", 0.01),
            "squared": kw.get("squared", True), "normalize": kw.get("normalize_cost", "max"),
            "importance": {"uniform": None, "importance-l1": "l1", "importance-l2": "l2"}[
                kw.get("marginals", "uniform")],
            "proper_marginals": kw.get("proper_marginals", True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ot-reference"))
    args = ap.parse_args()
    run = args.out / args.dataset
    if not (run / "b" / "model.safetensors").exists():
        jobs.run("train", out=run, dataset=args.dataset, model="mlpnet", epochs=10,
                 optimizer="sgd", lr=0.05, shift="label-skew:4=100,0-3=10,5-9=10",
                 init="different", quiet=True)
    (model, ca), (_, cb) = (load_model(run / s / "model.safetensors") for s in ("a", "b"))
    model.eval()
    a, b = params_of(ca), params_of(cb)
    data = eval_data(DataSpec.from_dict(cb.meta["data"]), "full")
    ev = Evaluator(model, split_tensors(data), task=data.task)
    x = data.train_x[:2]

    def acc(params: dict) -> float:
        return ev.evaluate([params])[0]["test"]["acc"]

    torch.set_grad_enabled(False)
    print(f"# {cpu_model()}; torch {torch.__version__}; {args.dataset}; MLPNet; "
          f"A {acc(a):.4f}, B {acc(b):.4f} test accuracy")
    print("| setting | max abs Δ fused weight, reference (its ε 1e-7 / ε 0) vs modeconn | test "
          "acc: reference | modeconn |")
    print("|---|---|---|---|")
    for name, kw in SETTINGS.items():
        ours = ot_fusion(model, a, model, b, x, **kw).params
        diffs = []
        for eps in (1e-7, 0.0):  # its correction's 1/(β + ε), and without ε
            ref, _ = reference_fusion(list(a.values()), list(b.values()), eps=eps,
                                      **as_reference(kw))
            ref = dict(zip(a, ref))
            diffs.append(max(float((ours[k] - ref[k]).abs().max()) for k in ref))
        print(f"| {name} | {diffs[0]:.1e} / {diffs[1]:.1e} | {acc(ref):.4f} | "
              f"{acc(ours):.4f} |")

    kw = {"solver": "sinkhorn", "reg": 0.05}
    new = ot_fusion(model, a, model, b, x, marginals="importance-l1", **kw)
    old = ot_fusion(model, a, model, b, x, marginals="importance", **kw)
    print("\nimportance marginals (Sinkhorn 0.05, normalize max), per hidden layer: max |μ "
          "carried − μ as trained| / max μ, and the largest fused-weight difference")
    for (g, pn), po in zip(new.plans.items(), old.plans.values()):
        mu_new, mu_old = pn.sum(1), po.sum(1)
        rel = float((mu_new - mu_old).abs().max() / mu_new.max())
        print(f"  {g}: {rel:.3f}")
    diff = {k: float((new.params[k] - old.params[k]).abs().max()) for k in new.params}
    print("  fused weights:", ", ".join(f"{k} {v:.3f}" for k, v in diff.items()))
    print(f"  test acc: importance-l1 {acc(new.params):.4f}, importance "
          f"{acc(old.params):.4f}")


if __name__ == "__main__":
    main()

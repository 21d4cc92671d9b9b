#!/usr/bin/env bash
# Evidence for issue 4 on digits (CPU, a few minutes): a Bezier curve between two MLPs from
# different seeds, the loss plane through it, curve/LMC/independent/FGE ensembles, sharpness.
# Usage: benchmarks/curve_evidence.sh [OUT]   (default results/curve-evidence)
set -euo pipefail
OUT=${1:-results/curve-evidence}
M="python -m modeconn"
for s in 0 1; do  # 3x512 MLPs from different seeds
  $M train --out "$OUT/mlp$s" --width 512 --depth 3 --epochs 20 --init-seed $s --quiet --device cpu \
    --resume  # re-running the script reuses finished runs
done
A="$OUT/mlp0/all/model.safetensors"
B="$OUT/mlp1/all/model.safetensors"
$M curve "$A" "$B" --kind bezier --bends 3 --epochs 30 --out "$OUT/curve" --overwrite --quiet \
  --device cpu
$M landscape --curve "$OUT/curve/curve.safetensors" --grid 21 --out "$OUT/plane" --overwrite \
  --device cpu
# FGE from the converged endpoint: cycles whose top rate (0.2) is above the training rate (0.05),
# or the snapshots never leave the minimum and predict alike (at --lr 0.05 they gain nothing).
$M fge "$A" --cycles 4 --cycle-epochs 4 --lr 0.2 --out "$OUT/fge" --overwrite --quiet --device cpu
$M curve-ensemble "$OUT/curve/curve.safetensors" --k 5 --fge "$OUT/fge" --out "$OUT/ensembles" \
  --overwrite --device cpu
$M sharpness "$A" --probes 10 --out "$OUT/sharpness_mlp0.json" --device cpu
$M sharpness "$B" --probes 10 --out "$OUT/sharpness_mlp1.json" --device cpu

#!/usr/bin/env bash
# Evidence for issue 5 on digits (CPU, a few minutes): alignment barriers, K=4 merging, REPAIR.
# Usage: benchmarks/merge_evidence.sh [OUT]   (default results/merge-evidence)
set -euo pipefail
OUT=${1:-results/merge-evidence}
M="python -m modeconn"
for s in 0 1 2 3; do  # 3x512 MLPs from different seeds
  $M train --out "$OUT/mlp$s" --width 512 --depth 3 --epochs 10 --init-seed $s --quiet --device cpu
done
for m in wm am ste; do
  $M align "$OUT/mlp0/all/model.safetensors" "$OUT/mlp1/all/model.safetensors" --method $m \
    --out "$OUT/align-$m" --overwrite --device cpu
done
for m in wm ste-mm; do
  $M merge-many "$OUT"/mlp?/all/model.safetensors --method $m --out "$OUT/merge4-$m" \
    --overwrite --device cpu
done
for s in 0 1; do  # normalisation-free VGG11 (width 0.25; He init, Adam)
  $M train --out "$OUT/vgg$s" --model vgg11 --norm none --width 0.25 --epochs 20 --optimizer adam \
    --lr 0.001 --warmup 1 --init-seed $s --quiet --device cpu
done
$M merge-many "$OUT"/vgg?/all/model.safetensors --method wm --repair --out "$OUT/vgg-repair" \
  --overwrite --device cpu
for s in 0 1; do  # normalisation-free ConvNets
  $M train --out "$OUT/conv$s" --model convnet --width 0.5 --epochs 8 --init-seed $s --quiet \
    --device cpu
done
$M merge-many "$OUT"/conv?/all/model.safetensors --method wm --repair --out "$OUT/conv-repair" \
  --overwrite --device cpu

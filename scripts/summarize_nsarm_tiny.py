"""Tables, the fidelity trade-off plot and the side-by-side figures of the nsarm-tiny evaluation.

Called by scripts/evaluate_nsarm_tiny.sh. Reads WORK/<preset>/<method>-eval/scores.summary.json (from
`nsarm evaluate`) and WORK/robustness.json (from `nsarm robustness --json`); writes OUT/results.json,
OUT/results.md, OUT/fidelity_tradeoff.svg (FSIM and NIQE against w, per degradation preset, bicubic and the peer
as reference lines) and OUT/side_by_side.png (held-out crops: LR nearest x4 | bicubic | Real-ESRGAN | v1 | v2 |
HR, realesrgan set).

    python scripts/summarize_nsarm_tiny.py WORK OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from nsarm_core.data.io import atomic_open, atomic_write_text

PRESETS = ("realesrgan", "light", "bicubic")
FIDELITIES = ("0", "0.25", "0.5", "0.75", "1")
# v2-prev-default: the previously bundled v2 weights at their default w, scored when scripts/evaluate_nsarm_tiny.sh
# is given V2_PREV (for v2.2: v2.1, whose decoder v2.2's fast decoder was distilled from)
METHODS = (
    "bicubic",
    "realesrgan-x4plus",
    "v1",
    "v2-prev-default",
    *(f"v2-w{w}" for w in FIDELITIES),
    "v2-default",
    "v2-default-noguard",
)
METRICS = ("psnr", "ssim", "ms_ssim", "fsim", "gmsd", "nlpd", "niqe", "piqe")
LOWER_BETTER = {"gmsd", "nlpd", "niqe", "piqe"}
LABELS = {"psnr": "PSNR-Y", "ssim": "SSIM-Y", "ms_ssim": "MS-SSIM", "fsim": "FSIM", "gmsd": "GMSD"}
# (photo, crop box in HR pixels: x0, y0, size): texture and edges of two different scenes.
CROPS = (("lomiri-friends_by_Aitzol_Berasategi", 192, 160, 128), ("plasma-EveningGlow", 200, 260, 128))


def load_results(work: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{preset: {method: {metric: mean}}}`` for every evaluation present under ``work``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for preset in PRESETS:
        for method in METHODS:
            summary = work / preset / f"{method}-eval" / "scores.summary.json"
            if summary.is_file():
                data = json.loads(summary.read_text())
                out.setdefault(preset, {})[method] = {
                    m: data["metrics"][m]["mean"] for m in METRICS if m in data["metrics"]
                }
    return out


def markdown(results: dict, robustness: dict) -> str:
    """The results as Markdown tables (best value per column in bold)."""
    lines = []
    for preset, rows in results.items():
        metrics = [m for m in METRICS if all(m in r for r in rows.values())]
        lines += [
            f"**{preset}** (5 held-out photos, x4, seed 0; mean over images)",
            "",
            "| method | "
            + " | ".join(f"{LABELS.get(m, m.upper())} {'↓' if m in LOWER_BETTER else '↑'}" for m in metrics)
            + " |",
            "|---" * (len(metrics) + 1) + "|",
        ]
        best = {m: (min if m in LOWER_BETTER else max)(r[m] for r in rows.values()) for m in metrics}
        for method in METHODS:
            if method not in rows:
                continue
            cells = []
            for m in metrics:
                v = rows[method][m]
                txt = f"{v:.2f}" if m in ("psnr", "niqe", "piqe") else f"{v:.4f}"
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
        for method, r in methods.items():
            c = r["counts"]
            lines.append(
                f"| {method} | {r['composite_mean']:.4f} | {c['Deficient']} | {c['Poor']} | {c['Collapse']} |"
            )
        lines.append("")
    return "\n".join(lines)


def tradeoff_svg(results: dict, metrics: tuple[str, str] = ("fsim", "niqe")) -> str:
    """Two panels (one per metric) of the v2 sweep against w, one line per preset, references dashed."""
    colours = {"realesrgan": "#c0392b", "light": "#2471a3", "bicubic": "#229954"}
    width, height, pad = 360, 260, 48
    panels = []
    for p, metric in enumerate(metrics):
        ox = p * (width + 30)
        values = [
            rows[m][metric]
            for rows in results.values()
            for m in (*(f"v2-w{w}" for w in FIDELITIES), "bicubic", "realesrgan-x4plus")
            if m in rows and metric in rows[m]
        ]
        if not values:
            continue
        lo, hi = min(values), max(values)
        lo, hi = lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9)

        def xy(w: float, v: float, ox: int = ox, lo: float = lo, hi: float = hi) -> tuple[float, float]:
            x = ox + pad + w * (width - pad - 10)
            y = 10 + (1 - (v - lo) / (hi - lo)) * (height - pad - 10)
            return x, y

        parts = [
            f'<rect x="{ox + pad}" y="10" width="{width - pad - 10}" height="{height - pad - 10}" '
            'fill="none" stroke="#888"/>',
            f'<text x="{ox + width / 2}" y="{height - 8}" text-anchor="middle">fidelity w</text>',
            f'<text x="{ox + 12}" y="{height / 2}" transform="rotate(-90 {ox + 12} {height / 2})" '
            f'text-anchor="middle">{LABELS.get(metric, metric.upper())} '
            f"({'lower' if metric in LOWER_BETTER else 'higher'} is better)</text>",
        ]
        for w in (0.0, 0.5, 1.0):
            x, _ = xy(w, lo)
            parts.append(f'<text x="{x}" y="{height - pad + 16}" text-anchor="middle">{w:g}</text>')
        for v in (lo + 0.05 * (hi - lo), (lo + hi) / 2, hi - 0.05 * (hi - lo)):
            _, y = xy(0, v)
            parts.append(f'<text x="{ox + pad - 4}" y="{y + 4}" text-anchor="end">{v:.3g}</text>')
        for preset, rows in results.items():
            c = colours.get(preset, "#333")
            pts = [xy(float(w), rows[f"v2-w{w}"][metric]) for w in FIDELITIES if f"v2-w{w}" in rows]
            if pts:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
                parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"/>' for x, y in pts]
            for ref, dash in (("bicubic", "4,3"), ("realesrgan-x4plus", "1,3")):
                if ref in rows and metric in rows[ref]:
                    (x0, y), (x1, _) = xy(0, rows[ref][metric]), xy(1, rows[ref][metric])
                    parts.append(
                        f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="{c}" '
                        f'stroke-dasharray="{dash}"/>'
                    )
        panels += parts
    legend_y = height + 14
    legend = [
        f'<text x="{pad}" y="{legend_y}">solid: nsarm-tiny v2 at w; dashed: bicubic; dotted: Real-ESRGAN x4plus; '
        + "; ".join(f'<tspan fill="{c}">{p}</tspan>' for p, c in colours.items())
        + " degradation</text>"
    ]
    total_w = 2 * width + 30
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height + 24}" '
        'font-family="sans-serif" font-size="11">' + "".join(panels + legend) + "</svg>\n"
    )


def side_by_side(work: Path, out: Path, hr_dir: Path = Path("data/val")) -> Path:
    """LR (nearest x4) | bicubic | Real-ESRGAN | v1 | v2 | HR crops of the realesrgan set, 2x enlarged."""
    rows = []
    for key, x0, y0, size in CROPS:
        hr = Image.open(hr_dir / f"{key}.png").convert("RGB")
        lr = Image.open(work / "realesrgan" / "deg" / "lr" / f"{key}.png").convert("RGB")
        box = (x0, y0, x0 + size, y0 + size)
        lr_box = tuple(v // 4 for v in box)
        row = [lr.crop(lr_box).resize((size, size), Image.Resampling.NEAREST)]
        for method in ("bicubic", "realesrgan-x4plus", "v1", "v2-default"):
            path = work / "realesrgan" / method / f"{key}.png"
            if path.is_file():
                row.append(Image.open(path).convert("RGB").crop(box))
        row.append(hr.crop(box))
        rows.append(np.concatenate([np.asarray(t) for t in row], axis=1))
    grid = np.concatenate(rows, axis=0)
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
    payload = {
        "held_out": sorted(p.stem for p in Path("data/val").glob("*.png")),
        "scale": 4,
        "seed": 0,
        "metrics_mean": results,
        "robustness_realesrgan": {
            "composite": robustness.get("composite"),
            "global_mean": robustness.get("global_mean"),
            "counts": {m: r["counts"] for m, r in robustness.get("methods", {}).items()},
        },
    }
    tables = markdown(results, robustness)
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out / "results.md", tables)
    atomic_write_text(out / "fidelity_tradeoff.svg", tradeoff_svg(results))
    print(tables)
    print(f"side by side: {side_by_side(work, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

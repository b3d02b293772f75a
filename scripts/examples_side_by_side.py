"""Full-size side-by-sides of the four example photos: input (nearest x4) | bicubic | nsarm-tiny v1 | v2.

The examples are clean photos (scikit-image's bundled ones, never used in training or tuning), upscaled x4 at
seed 0 as `nsarm upscale examples/ --scale 4` does. One JPEG per photo (quality 92, full resolution, so faces,
eyes, text and thin structures can be judged at 1:1) in OUT, plus OUT/overview.png (half size, all four).

    python scripts/examples_side_by_side.py --v1 runs/nsarm-tiny-v1 --v2 nsarm-tiny -o docs/nsarm_tiny/examples
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nsarm_core.data.io import atomic_open, from_tensor, read_image, to_tensor
from nsarm_core.eval.metrics import to_8bit_levels
from nsarm_core.pipeline import load_pipeline

COLUMNS = ("input (nearest x4)", "bicubic", "nsarm-tiny v1", "nsarm-tiny v2.1")


def _label(img: Image.Image, text: str) -> Image.Image:
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 8 + 7 * len(text), 18), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return img


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--v1", required=True, help="nsarm-tiny v1 model (folder or name)")
    ap.add_argument(
        "--v2", required=True, help="nsarm-tiny v2 model (folder or name), at its default fidelity"
    )
    ap.add_argument("--photos", default="examples/photos", help="folder of the example photos")
    ap.add_argument("-o", "--out", default="docs/nsarm_tiny/examples", help="output folder")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # fp32 everywhere: the figures match the model card's fp32 measurements on any CPU (auto would pick bf16
    # on CPUs with native bf16)
    pipes = [load_pipeline(m, device="cpu", dtype="fp32") for m in (args.v1, args.v2)]
    rows = []
    for path in sorted(Path(args.photos).glob("*.png")):
        src = Image.open(path).convert("RGB")
        w, h = src.size
        lr = to_tensor(read_image(path).rgb)
        tiles = [
            src.resize((4 * w, 4 * h), Image.Resampling.NEAREST),
            src.resize((4 * w, 4 * h), Image.BICUBIC),
        ]
        for pipe in pipes:
            hr = to_8bit_levels(from_tensor(pipe.upscale(lr, seed=0).image))
            tiles.append(Image.fromarray(hr.astype(np.uint8)))
        row = Image.fromarray(
            np.concatenate([np.asarray(_label(t, c)) for t, c in zip(tiles, COLUMNS, strict=True)], axis=1)
        )
        with atomic_open(out / f"{path.stem}.jpg") as handle:
            row.save(handle, format="JPEG", quality=92)
        rows.append(row.resize((row.width // 2, row.height // 2), Image.Resampling.LANCZOS))
        print(f"{path.stem}: {out / (path.stem + '.jpg')}")
    width = max(r.width for r in rows)
    overview = Image.new("RGB", (width, sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        overview.paste(r, (0, y))
        y += r.height
    with atomic_open(out / "overview.png") as handle:
        overview.save(handle, format="PNG")
    print(f"overview: {out / 'overview.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

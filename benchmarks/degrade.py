"""Benchmark of the Real-ESRGAN degradation (nsarm_core.data.degrade): images per second.

For each HR size (default 512x512 and 1024x1024) and device (CPU, plus CUDA when available) it degrades
``--n`` images one at a time, each with its own sampled parameters (the same parameter list on every device),
after one warm-up image, and reports images/s of ``sample_params`` + ``apply`` (GT USM, both orders, noise,
DiffJPEG, final resize+sinc). ``--batch`` > 1 applies one parameter record to a batch, as Real-ESRGAN does
on GPU. The results are printed as a table and as one JSON line (and written to ``--json-out``).

Usage:
    python benchmarks/degrade.py
    python benchmarks/degrade.py --sizes 512 --n 20 --devices cpu --json-out degrade_bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from nsarm_core.data import degrade as D


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(preset: str, scale: int, size: int, device: str, n: int, batch: int, seed: int) -> dict:
    """Time ``n`` degradations of ``batch`` HR images of ``size``x``size`` on ``device``."""
    cfg = D.get_preset(preset)
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(batch, 3, size, size, generator=g).to(device)
    rng = np.random.default_rng(seed)
    D.apply(hr, D.sample_params(cfg, scale, rng))  # warm-up (allocations, cuDNN/oneDNN kernel choice)
    _sync(device)
    t_sample = t_apply = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        p = D.sample_params(cfg, scale, rng)
        t1 = time.perf_counter()
        D.apply(hr, p)
        _sync(device)
        t2 = time.perf_counter()
        t_sample += t1 - t0
        t_apply += t2 - t1
    total = t_sample + t_apply
    return {
        "preset": preset,
        "scale": scale,
        "size": size,
        "device": device,
        "batch": batch,
        "n": n,
        "images_per_s": n * batch / total,
        "ms_per_image": 1000 * total / (n * batch),
        "sample_ms": 1000 * t_sample / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="realesrgan")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    ap.add_argument("--n", type=int, default=8, help="timed images per (size, device)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = [
        bench(args.preset, args.scale, s, d, args.n, args.batch, args.seed)
        for d in devices
        for s in args.sizes
    ]
    env = {
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    print(f"degradation benchmark: preset {args.preset}, x{args.scale}, batch {args.batch}, torch {env['torch']}, "
          f"{env['cpu_threads']} CPU threads{', ' + env['cuda'] if env['cuda'] else ''}")  # fmt: skip
    print(f"{'device':<8}{'HR size':>10}{'images/s':>12}{'ms/image':>12}{'sample ms':>12}")
    for r in rows:
        print(
            f"{r['device']:<8}{r['size']:>7}^2 {r['images_per_s']:>11.2f}{r['ms_per_image']:>12.1f}{r['sample_ms']:>12.2f}"
        )
    result = {"benchmark": "degrade", "env": env, "results": rows}
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""bf16 against fp32 for nsarm-tiny on the CPU: how far apart the outputs are, how fast each is. One run.

Why: ``--dtype auto`` picks bf16 on CPUs with native bf16 (AVX512-BF16 or AMX, ``nsarm_core.cpu_features``).
nsarm-tiny samples its bits, so bf16's rounding does not give "fp32 plus a little noise": where it moves a logit
across a sampling threshold, a bit flips and the window becomes another sample of the same model. The yardstick
is therefore the model's own sampling noise, the same fp32 run with another seed: bf16 stays within "rounding
noise" when PSNR(fp32, bf16) at one seed is no lower than PSNR(fp32 seed 0, fp32 seed 1) and its fidelity to
the HR photo (PSNR / SSIM on Y) is the same as fp32's.

Inputs: the four example photos (``examples/photos``, not training photos, cropped to sides divisible by 4),
degraded x4 with the ``light`` preset at seed 0; each LR image (48x48 to 60x40) is one native window. Timings are process CPU seconds per window
(user + system, one thread), which count the work and not the waits on a shared machine.

Usage:
    python benchmarks/dtype.py --json-out docs/nsarm_tiny/dtype.json
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import ROOT, cpu_seconds, write_record


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default="nsarm-tiny", help="any --model of nsarm upscale, e.g. realesrgan-x4plus"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from nsarm_core.batch.upscale import load_upscaler
    from nsarm_core.cpu_features import has_native_bf16
    from nsarm_core.data.degrade import apply_pair, get_preset, sample_params
    from nsarm_core.data.io import from_tensor, read_image, to_tensor
    from nsarm_core.eval.metrics import psnr, ssim, to_8bit_levels

    def levels(x: torch.Tensor) -> np.ndarray:
        return to_8bit_levels(from_tensor(x))

    pipes = {dtype: load_upscaler(args.model, device="cpu", dtype=dtype) for dtype in ("fp32", "bf16")}
    rows: list[dict[str, Any]] = []
    for photo in sorted((ROOT / "examples" / "photos").glob("*.png")):
        hr = to_tensor(read_image(photo).rgb)
        hr = hr[..., : hr.shape[-2] // 4 * 4, : hr.shape[-1] // 4 * 4]  # x4 needs sides divisible by 4
        _, lr = apply_pair(hr, sample_params(get_preset("light"), 4, np.random.default_rng(0)))
        out, cpu = {}, {}
        for name, dtype, seed in (("fp32", "fp32", 0), ("fp32_seed1", "fp32", 1), ("bf16", "bf16", 0)):
            pipes[dtype].upscale(
                lr, seed=seed, prompt=None
            )  # warm-up (oneDNN primitives for this dtype and size)
            start = cpu_seconds()
            out[name] = levels(pipes[dtype].upscale(lr, seed=seed, prompt=None).image)
            cpu[name] = cpu_seconds() - start
        ref = levels(hr)
        row = {
            "photo": photo.name,
            "psnr_fp32_vs_bf16": psnr(out["bf16"], out["fp32"], test_y_channel=False),
            # a deterministic model (a peer) gives the same image for both seeds: PSNR inf, recorded as None
            "psnr_fp32_seed0_vs_seed1": _finite(psnr(out["fp32_seed1"], out["fp32"], test_y_channel=False)),
            "psnr_y_vs_hr": {k: psnr(v, ref) for k, v in out.items()},
            "ssim_y_vs_hr": {k: ssim(v, ref) for k, v in out.items()},
            "cpu_seconds": cpu,
        }
        rows.append(row)
        print(
            f"{photo.name:14} PSNR fp32 vs bf16 {row['psnr_fp32_vs_bf16']:6.2f} dB, fp32 seed 0 vs 1 "
            f"{row['psnr_fp32_seed0_vs_seed1']} dB; vs HR (PSNR-Y / SSIM-Y): fp32 "
            f"{row['psnr_y_vs_hr']['fp32']:.2f} / {row['ssim_y_vs_hr']['fp32']:.4f}, bf16 "
            f"{row['psnr_y_vs_hr']['bf16']:.2f} / {row['ssim_y_vs_hr']['bf16']:.4f}; CPU s fp32 "
            f"{cpu['fp32']:.2f}, bf16 {cpu['bf16']:.2f}",
            flush=True,
        )

    def mean(get: Any) -> float:
        return float(np.mean([get(r) for r in rows]))

    summary = {
        "psnr_fp32_vs_bf16": mean(lambda r: r["psnr_fp32_vs_bf16"]),
        "psnr_fp32_seed0_vs_seed1": None
        if any(r["psnr_fp32_seed0_vs_seed1"] is None for r in rows)
        else mean(lambda r: r["psnr_fp32_seed0_vs_seed1"]),
        "psnr_y_vs_hr": {
            k: mean(lambda r, k=k: r["psnr_y_vs_hr"][k]) for k in ("fp32", "fp32_seed1", "bf16")
        },
        "ssim_y_vs_hr": {
            k: mean(lambda r, k=k: r["ssim_y_vs_hr"][k]) for k in ("fp32", "fp32_seed1", "bf16")
        },
        "cpu_seconds_fp32_over_bf16": mean(lambda r: r["cpu_seconds"]["fp32"])
        / mean(lambda r: r["cpu_seconds"]["bf16"]),
    }
    print(
        f"mean over {len(rows)} photos: PSNR fp32 vs bf16 {summary['psnr_fp32_vs_bf16']:.2f} dB, fp32 seed 0 vs "
        f"seed 1 {summary['psnr_fp32_seed0_vs_seed1']} dB; vs HR PSNR-Y fp32 "
        f"{summary['psnr_y_vs_hr']['fp32']:.2f}, bf16 {summary['psnr_y_vs_hr']['bf16']:.2f}; SSIM-Y fp32 "
        f"{summary['ssim_y_vs_hr']['fp32']:.4f}, bf16 {summary['ssim_y_vs_hr']['bf16']:.4f}; fp32 / bf16 CPU "
        f"time {summary['cpu_seconds_fp32_over_bf16']:.2f}x"
    )
    record = {
        "meta": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "native_bf16": has_native_bf16(),
            "threads": args.threads,
            "model": args.model,
            "degradation": "light, seed 0, x4",
            "runs": 1,
        },
        "rows": rows,
        "summary": summary,
    }
    write_record(record, args.json_out)


if __name__ == "__main__":
    main()

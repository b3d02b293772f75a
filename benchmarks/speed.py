"""Speed of ``nsarm upscale`` with nsarm-tiny's defaults: per output megapixel against Real-ESRGAN x4plus, scaling
with the image size, and the effect of batched windows and of the channels-last decoder. One run of each.

Parts (each measurement in a fresh subprocess, so its peak RSS is its own):

1. **Peer ratio**: seconds per output megapixel of nsarm-tiny with its default settings (``--dtype auto``,
   automatic window batch, w = 0.75; then again with ``--dtype fp32``) and of Real-ESRGAN x4plus at the same dtype, on the same LR image
   (``--peer-size``, default 256 px -> a 1024x1024 output), plus the bicubic baseline. Real-ESRGAN's time does
   not depend on its weights: without its converted weight file (``nsarm models fetch realesrgan-x4plus``) the
   script times the same RRDBNet x4plus architecture with seeded random weights, and says so.
2. **Scaling**: nsarm-tiny's defaults at outputs of 0.25, 1, 4 and 16 megapixels (LR 128, 256, 512, 1024 px;
   ``--scaling-sizes``): seconds, seconds per megapixel, peak RSS, and the least-squares line of seconds against
   output pixels.
3. **Batched windows**: the 1-megapixel output with one window per batch against the automatic batch.
4. **Decoder layout**: nsarm-tiny's decoder + CFW on one window in fp32, contiguous (NCHW) against channels-last
   weights and inputs: seconds (best of ``--layout-repeats`` interleaved runs) and the largest difference.
5. **Stitch**: nsarm-tiny at ``--peer-size`` with ``--stitch pixel`` against ``--stitch latent`` (the windows'
   latents blended and the image decoded in large tiles, :mod:`nsarm_core.latent_stitch`), per stage, the ratio of
   Real-ESRGAN x4plus (part 1's auto row, else timed here) over each, and latent stitching at the largest scaling
   size (its peak RSS against part 2's).
6. **Allocator** (``malloc``): nsarm-tiny's defaults and Real-ESRGAN x4plus at ``--peer-size`` in each peer dtype,
   with glibc's allocator defaults (``NSARM_MALLOC=system``) and with freed memory kept for reuse (what ``nsarm
   upscale`` sets, :mod:`nsarm_core.allocator`), in alternating processes: both speed-ups and both ratios.
7. **Arithmetic** (``flops``): the floating-point operations of one upscale at ``--peer-size`` (fp32, counted by
   ``torch.utils.flop_counter``: convolutions, matrix products and attention; elementwise passes are not counted)
   of nsarm-tiny with pixel and with latent stitching and of Real-ESRGAN x4plus, per output megapixel; their ratio
   is the speed ratio the two would have at the same operations per second, and with part 1's times, the
   operations per second each reached.
8. **Before** (only with ``--parts before --before-code DIR``): nsarm-tiny at ``--peer-size`` in fp32 and bf16 with
   the code in DIR (an earlier version) and with this one, in alternating processes.

Every part but 6 and 7 runs as ``nsarm upscale`` does, with freed memory kept (:mod:`nsarm_core.allocator`). All
with ``--threads`` torch threads (default 1) and one timed run after one warm-up window. Each run records its
wall time and its process CPU time (user + system): with one thread on a shared machine the CPU time counts the
work without the waits for a free core, so the ratios are given for both. The LR image is the
astronaut photo (``examples/photos``) downscaled x4 and mirrored to the size asked for. Prints a table per part
and the whole record as JSON (``--json-out`` also writes it).

Usage:
    python benchmarks/speed.py --json-out docs/nsarm_tiny/speed.json
    python benchmarks/speed.py --scaling-sizes 128,256,512      # skip the 16-megapixel output
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import cpu_seconds, lr_image, write_record

STAGES = ("encode", "transform_net", "ar_scales", "decode", "color_fix")


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def _load(model: str, dtype: str, batch_windows: int | None, stitch: str | None) -> tuple[Any, str]:
    """The upscaler ``nsarm upscale --model MODEL`` builds, and a note on its weights."""
    from nsarm_core.batch.upscale import load_upscaler
    from nsarm_core.peers import PEER_MODELS, PeerUpscaler
    from nsarm_core.pipeline import resolve_dtype
    from nsarm_core.weights import find_local, get_model_spec

    if model in PEER_MODELS and find_local(get_model_spec(model))["checkpoint"] is None:
        from nsarm_core.models.rrdbnet import PRESETS, RRDBNet
        from nsarm_core.pipeline import DTYPES

        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = RRDBNet(PRESETS[PEER_MODELS[model].preset])
        note = "weights absent: the same RRDBNet x4plus architecture with seeded random weights (time only)"
        return PeerUpscaler(net, name=model, dtype=DTYPES[resolve_dtype(dtype, "cpu")]), note
    kwargs: dict[str, Any] = {"batch_windows": batch_windows} if batch_windows is not None else {}
    if stitch is not None:
        kwargs["stitch"] = stitch
    return load_upscaler(model, device="cpu", dtype=dtype, **kwargs), "registered weights"


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One timed upscale in this (fresh) process; returns the record printed as JSON."""
    from nsarm_core.allocator import keep_freed_memory

    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as `nsarm upscale` does; NSARM_MALLOC=system (part 7) keeps glibc's defaults
    rss_start = _rss_mb()
    upscaler, note = _load(args.model, args.dtype, args.batch_windows, args.stitch)
    upscaler.upscale(lr_image(64), seed=1, prompt=None)  # warm-up: oneDNN primitives, allocator caches
    rss_warm = _rss_mb()
    lr = lr_image(args.size)
    cpu_start, start = cpu_seconds(), time.perf_counter()
    result = upscaler.upscale(lr, seed=1, prompt=None)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    out_mp = result.image.shape[-1] * result.image.shape[-2] / 1e6
    return {
        "model": args.model,
        "weights": note,
        "lr_size": args.size,
        "out_mp": out_mp,
        "seconds": seconds,
        "s_per_mp": seconds / out_mp,
        "cpu_seconds": cpu,
        "cpu_s_per_mp": cpu / out_mp,
        "dtype": result.settings.get("dtype"),
        "windows": result.settings.get("tiles"),
        "batch_windows": result.settings.get("batch_windows"),
        "stitch": result.settings.get("stitch"),
        "stage_seconds": {k: result.timings[k] for k in STAGES if k in result.timings},
        "malloc": "kept" if kept else "system",
        "rss_start_mb": rss_start,
        "rss_after_warmup_mb": rss_warm,
        "rss_peak_mb": _rss_mb(),
    }


def count_flops(args: argparse.Namespace) -> dict[str, Any]:
    """Operations of one upscale of ``--size`` px by ``--model`` (``--stitch``), fp32, in this (fresh) process."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    upscaler, _note = _load(args.model, "fp32", None, args.stitch)
    with FlopCounterMode(display=False) as counter:
        result = upscaler.upscale(lr_image(args.size), seed=1, prompt=None)
    out_mp = result.image.shape[-1] * result.image.shape[-2] / 1e6
    flops = counter.get_total_flops()
    return {
        "model": args.model,
        "stitch": args.stitch,
        "gflop": flops / 1e9,
        "gflop_per_mp": flops / 1e9 / out_mp,
    }


def _subprocess(
    args: argparse.Namespace,
    mode: str,
    model: str,
    size: int,
    extra: list[str],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run this script with ``mode`` (``--_child`` or ``--_flops``) in a fresh process; its last stdout line as JSON."""
    cmd = [sys.executable, __file__, mode, "--model", model, "--size", str(size), "--threads", str(args.threads),
           *extra]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_flops(args: argparse.Namespace, model: str, stitch: str | None = None) -> dict[str, Any]:
    return _subprocess(
        args, "--_flops", model, args.peer_size, ["--stitch", stitch] if stitch is not None else []
    )


def _run_child(
    args: argparse.Namespace,
    model: str,
    size: int,
    batch_windows: int | None = None,
    dtype: str | None = None,
    code: Path | None = None,
    stitch: str | None = None,
    malloc: str | None = None,
) -> dict[str, Any]:
    extra = ["--dtype", dtype or args.dtype]
    if batch_windows is not None:
        extra += ["--batch-windows", str(batch_windows)]
    if stitch is not None:
        extra += ["--stitch", stitch]
    env = {**os.environ, "PYTHONPATH": str(code)} if code is not None else dict(os.environ)
    if malloc is not None:
        env["NSARM_MALLOC"] = malloc
    rec = _subprocess(args, "--_child", model, size, extra, env)
    print(
        f"  {model:18} LR {size:5d}  out {rec['out_mp']:6.3f} MP  {rec['seconds']:8.2f} s  {rec['s_per_mp']:7.2f} s/MP"
        f"  {rec['dtype']}  batch {rec['batch_windows']}  malloc {rec.get('malloc')}"
        f"  peak RSS {rec['rss_peak_mb']:.0f} MiB",
        file=sys.stderr,
        flush=True,
    )
    return rec


def _fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares ``y = a x + b`` with R^2 (NaN with fewer than two distinct x)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "r2": float("nan")}
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    b = my - a * mx
    ss_res = sum((y - a * x - b) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1.0
    return {"slope": a, "intercept": b, "r2": 1 - ss_res / ss_tot}


def decoder_layout(threads: int, repeats: int) -> dict[str, Any]:
    """nsarm-tiny's decoder + CFW on one window, fp32: NCHW against channels-last, interleaved runs."""
    from nsarm_core.models.nsarm import NSARM
    from nsarm_core.weights import get_model_spec, resolve_file

    torch.set_num_threads(threads)
    folder = resolve_file(get_model_spec("nsarm-tiny"), "checkpoint").parent
    model = NSARM.from_pretrained(folder).eval()
    cl = torch.channels_last
    nets = {"nchw": (model.vae, model.cfw), "channels_last": copy.deepcopy((model.vae, model.cfw))}
    nets["channels_last"][0].decoder.to(memory_format=cl)
    nets["channels_last"][1].to(memory_format=cl)
    g = torch.Generator().manual_seed(0)
    z, lr = torch.randn(1, 14, 32, 32, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    inputs = {
        "nchw": (z, lr),
        "channels_last": (z.contiguous(memory_format=cl), lr.contiguous(memory_format=cl)),
    }
    times: dict[str, list[float]] = {k: [] for k in nets}
    outs = {}
    with torch.no_grad():
        for k, (vae, cfw) in nets.items():  # warm-up
            outs[k] = vae.decode(inputs[k][0], cfw.wrap(inputs[k][1], 0.75))
        for _ in range(repeats):
            for k, (vae, cfw) in nets.items():
                start = time.perf_counter()
                vae.decode(inputs[k][0], cfw.wrap(inputs[k][1], 0.75))
                times[k].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {
        "seconds_best": best,
        "seconds_median": median,
        "speedup_best": best["nchw"] / best["channels_last"],
        "speedup_median": median["nchw"] / median["channels_last"],
        "max_abs_diff": (outs["nchw"] - outs["channels_last"]).abs().max().item(),
        "repeats": repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-size", type=int, default=256, help="LR side of the peer comparison (output 4x)")
    p.add_argument("--scaling-sizes", default="128,256,512,1024", help="LR sides (outputs 0.25, 1, 4, 16 MP)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="auto", help="dtype of the scaling and batch parts (auto: the default)")
    p.add_argument("--peer-dtypes", default="auto,fp32", help="dtypes of the peer comparison")
    p.add_argument(
        "--also-models",
        default="",
        help="part 1: more NSARM models (registered names or folders, comma-separated) timed in the same run, "
        "each with its Real-ESRGAN ratio (e.g. a trained fast decoder, runs/cfw_tiny_fast_r2/final/model)",
    )
    p.add_argument("--layout-repeats", type=int, default=5)
    p.add_argument(
        "--parts",
        default="peer,scaling,batch,layout,stitch,malloc,flops",
        help="any of peer,scaling,batch,layout,stitch,malloc,flops,before",
    )
    p.add_argument(
        "--before-code",
        type=Path,
        default=None,
        help="part 'before': a checkout of an earlier version (e.g. `git archive REV | tar -x -C DIR`) to time "
        "against this one, nsarm-tiny at --peer-size in fp32 and bf16",
    )
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="nsarm-tiny", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--batch-windows", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--stitch", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_flops", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._flops:
        print(json.dumps(count_flops(args)))
        return
    if args._child:
        print(json.dumps(child(args)))
        return

    from nsarm_core.cpu_features import has_native_bf16
    from nsarm_core.pipeline import resolve_dtype

    parts = set(args.parts.split(","))
    record: dict[str, Any] = {
        "meta": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "native_bf16": has_native_bf16(),
            "dtype_asked": args.dtype,
            "dtype_resolved": resolve_dtype(args.dtype, "cpu"),
            "threads": args.threads,
            "runs": 1,
            "load_average_at_start": list(_load_average()),
        }
    }
    if "peer" in parts:
        record["peer"] = []
        for dtype in args.peer_dtypes.split(","):
            resolved = resolve_dtype(dtype, "cpu")
            print(f"1. per output megapixel, LR {args.peer_size} px, --dtype {dtype} (= {resolved}):")
            also = [m for m in args.also_models.split(",") if m]
            rows = [
                _run_child(args, m, args.peer_size, dtype=dtype)
                for m in ("nsarm-tiny", "realesrgan-x4plus", "bicubic", *also)
            ]
            tiny, peer = rows[0], rows[1]
            entry = {
                "dtype": dtype,
                "resolved": resolved,
                "rows": rows,
                "realesrgan_over_nsarm_tiny_wall": peer["s_per_mp"] / tiny["s_per_mp"],
                "realesrgan_over_nsarm_tiny_cpu": peer["cpu_s_per_mp"] / tiny["cpu_s_per_mp"],
                "realesrgan_over_also_models_wall": {
                    r["model"]: peer["s_per_mp"] / r["s_per_mp"] for r in rows[3:]
                },
            }
            record["peer"].append(entry)
            print(f"{'model':18} {'wall s/MP':>9} {'CPU s/MP':>9}  weights")
            for r in rows:
                print(f"{r['model']:18} {r['s_per_mp']:9.2f} {r['cpu_s_per_mp']:9.2f}  {r['weights']}")
            print(
                f"Real-ESRGAN x4plus / nsarm-tiny per output MP ({resolved}): wall "
                f"{entry['realesrgan_over_nsarm_tiny_wall']:.2f}x, CPU {entry['realesrgan_over_nsarm_tiny_cpu']:.2f}x"
            )
            for name, ratio in entry["realesrgan_over_also_models_wall"].items():
                print(f"Real-ESRGAN x4plus / {name} per output MP ({resolved}): wall {ratio:.2f}x")
    if "scaling" in parts:
        print(f"2. scaling, nsarm-tiny defaults (--dtype {args.dtype}):")
        rows = [_run_child(args, "nsarm-tiny", int(s)) for s in args.scaling_sizes.split(",")]
        fit = _fit([r["out_mp"] for r in rows], [r["seconds"] for r in rows])
        cpu_fit = _fit([r["out_mp"] for r in rows], [r["cpu_seconds"] for r in rows])
        record["scaling"] = {"rows": rows, "fit_seconds_vs_out_mp": fit, "fit_cpu_seconds_vs_out_mp": cpu_fit}
        print(
            f"{'out MP':>7} {'windows':>7} {'batch':>5} {'wall s':>8} {'CPU s':>8} {'wall s/MP':>9} "
            f"{'CPU s/MP':>8} {'peak RSS MiB':>12}"
        )
        for r in rows:
            print(
                f"{r['out_mp']:7.3f} {r['windows']:7d} {r['batch_windows']:5d} {r['seconds']:8.2f} "
                f"{r['cpu_seconds']:8.2f} {r['s_per_mp']:9.2f} {r['cpu_s_per_mp']:8.2f} {r['rss_peak_mb']:12.0f}"
            )
        print(f"wall seconds = {fit['slope']:.2f} * out_MP {fit['intercept']:+.2f} (R^2 {fit['r2']:.4f})")
        print(
            f"CPU seconds = {cpu_fit['slope']:.2f} * out_MP {cpu_fit['intercept']:+.2f} (R^2 {cpu_fit['r2']:.4f})"
        )
    if "batch" in parts:
        print(f"3. batched windows, LR {args.peer_size} px:")
        one = _run_child(args, "nsarm-tiny", args.peer_size, batch_windows=1)
        auto = next(
            (r for r in record.get("scaling", {}).get("rows", []) if r["lr_size"] == args.peer_size), None
        )
        auto = auto or _run_child(args, "nsarm-tiny", args.peer_size)
        record["batch"] = {
            "one": one,
            "auto": auto,
            "speedup_wall": one["seconds"] / auto["seconds"],
            "speedup_cpu": one["cpu_seconds"] / auto["cpu_seconds"],
        }
        print(
            f"batch 1: {one['seconds']:.2f} s wall / {one['cpu_seconds']:.2f} s CPU, batch {auto['batch_windows']}: "
            f"{auto['seconds']:.2f} s / {auto['cpu_seconds']:.2f} s ({record['batch']['speedup_wall']:.2f}x wall, "
            f"{record['batch']['speedup_cpu']:.2f}x CPU)\n  stages batch 1: {_stages(one)}\n  stages auto: "
            f"{_stages(auto)}"
        )
    if "layout" in parts:
        layout = decoder_layout(args.threads, args.layout_repeats)
        record["decoder_layout"] = layout
        print(
            f"4. decoder + CFW, one window, fp32: NCHW {layout['seconds_best']['nchw']:.3f} s, channels-last "
            f"{layout['seconds_best']['channels_last']:.3f} s (best of {layout['repeats']}: "
            f"{layout['speedup_best']:.2f}x; median {layout['speedup_median']:.2f}x), max |diff| "
            f"{layout['max_abs_diff']:.2e}"
        )
    if "stitch" in parts:
        print(f"5. stitch modes, nsarm-tiny, LR {args.peer_size} px (--dtype {args.dtype}):")
        rows = {m: _run_child(args, "nsarm-tiny", args.peer_size, stitch=m) for m in ("pixel", "latent")}
        auto_peer = next((e for e in record.get("peer", []) if e["dtype"] == args.dtype), None)
        peer = auto_peer["rows"][1] if auto_peer else _run_child(args, "realesrgan-x4plus", args.peer_size)
        largest = max(int(s) for s in args.scaling_sizes.split(","))
        big = _run_child(args, "nsarm-tiny", largest, stitch="latent")
        record["stitch"] = {
            "pixel": rows["pixel"],
            "latent": rows["latent"],
            "realesrgan": peer,
            "latent_largest": big,
            "latent_speedup_wall": rows["pixel"]["seconds"] / rows["latent"]["seconds"],
            "latent_speedup_cpu": rows["pixel"]["cpu_seconds"] / rows["latent"]["cpu_seconds"],
            "realesrgan_over_pixel_cpu": peer["cpu_s_per_mp"] / rows["pixel"]["cpu_s_per_mp"],
            "realesrgan_over_latent_cpu": peer["cpu_s_per_mp"] / rows["latent"]["cpu_s_per_mp"],
            "realesrgan_over_latent_wall": peer["s_per_mp"] / rows["latent"]["s_per_mp"],
        }
        st = record["stitch"]
        for m in ("pixel", "latent"):
            print(
                f"  {m}: {rows[m]['seconds']:.2f} s wall / {rows[m]['cpu_seconds']:.2f} s CPU; {_stages(rows[m])}"
            )
        print(
            f"latent / pixel: {st['latent_speedup_wall']:.2f}x wall, {st['latent_speedup_cpu']:.2f}x CPU; "
            f"Real-ESRGAN x4plus / nsarm-tiny per MP (CPU): pixel {st['realesrgan_over_pixel_cpu']:.2f}x, latent "
            f"{st['realesrgan_over_latent_cpu']:.2f}x; latent at LR {largest}: {big['out_mp']:.2f} MP, "
            f"{big['s_per_mp']:.2f} s/MP, peak RSS {big['rss_peak_mb']:.0f} MiB"
        )
    if "malloc" in parts:
        print(
            f"6. allocator, LR {args.peer_size} px: glibc's defaults (NSARM_MALLOC=system) against freed memory kept:"
        )
        record["malloc"] = []
        for dtype in args.peer_dtypes.split(","):
            runs: dict[str, dict[str, Any]] = {}
            for malloc in ("system", "keep"):  # alternating, so a change in the machine's load hits both
                for model in ("nsarm-tiny", "realesrgan-x4plus"):
                    runs[f"{model}/{malloc}"] = _run_child(
                        args, model, args.peer_size, dtype=dtype, malloc=malloc
                    )
            entry = {
                "dtype": dtype,
                "rows": runs,
                "speedup_cpu": {
                    m: runs[f"{m}/system"]["cpu_s_per_mp"] / runs[f"{m}/keep"]["cpu_s_per_mp"]
                    for m in ("nsarm-tiny", "realesrgan-x4plus")
                },
                "realesrgan_over_nsarm_tiny_cpu": {
                    a: runs[f"realesrgan-x4plus/{a}"]["cpu_s_per_mp"]
                    / runs[f"nsarm-tiny/{a}"]["cpu_s_per_mp"]
                    for a in ("system", "keep")
                },
            }
            record["malloc"].append(entry)
            for key, r in runs.items():
                print(
                    f"  {dtype:5} {key:28} CPU {r['cpu_s_per_mp']:6.2f} s/MP  peak RSS {r['rss_peak_mb']:5.0f} MiB"
                )
            print(
                f"  {dtype}: kept / system speed-up (CPU): nsarm-tiny {entry['speedup_cpu']['nsarm-tiny']:.2f}x, "
                f"Real-ESRGAN {entry['speedup_cpu']['realesrgan-x4plus']:.2f}x; Real-ESRGAN / nsarm-tiny: system "
                f"{entry['realesrgan_over_nsarm_tiny_cpu']['system']:.2f}x, kept "
                f"{entry['realesrgan_over_nsarm_tiny_cpu']['keep']:.2f}x"
            )
    if "flops" in parts:
        print(f"7. arithmetic of one upscale, LR {args.peer_size} px (fp32, torch.utils.flop_counter):")
        rows = {
            "nsarm-tiny/pixel": _run_flops(args, "nsarm-tiny", "pixel"),
            "nsarm-tiny/latent": _run_flops(args, "nsarm-tiny", "latent"),
            "realesrgan-x4plus": _run_flops(args, "realesrgan-x4plus"),
        }
        peer = rows["realesrgan-x4plus"]["gflop_per_mp"]
        flops: dict[str, Any] = {
            "rows": rows,
            "realesrgan_over_nsarm_tiny_pixel": peer / rows["nsarm-tiny/pixel"]["gflop_per_mp"],
            "realesrgan_over_nsarm_tiny_latent": peer / rows["nsarm-tiny/latent"]["gflop_per_mp"],
        }
        for key, r in rows.items():
            print(f"  {key:20} {r['gflop_per_mp']:8.1f} GFLOP per output MP")
        print(
            f"  Real-ESRGAN x4plus / nsarm-tiny in operations: pixel {flops['realesrgan_over_nsarm_tiny_pixel']:.2f}x, "
            f"latent {flops['realesrgan_over_nsarm_tiny_latent']:.2f}x"
        )
        for entry in record.get("peer", []):  # operations per second reached, from part 1's CPU times
            reached = {
                "nsarm-tiny/pixel": rows["nsarm-tiny/pixel"]["gflop_per_mp"]
                / entry["rows"][0]["cpu_s_per_mp"],
                "realesrgan-x4plus": peer / entry["rows"][1]["cpu_s_per_mp"],
            }
            flops[f"gflop_per_s_{entry['resolved']}"] = reached
            print(
                f"  reached ({entry['resolved']}, part 1): nsarm-tiny {reached['nsarm-tiny/pixel']:.0f} GFLOP/s, "
                f"Real-ESRGAN x4plus {reached['realesrgan-x4plus']:.0f} GFLOP/s"
            )
        record["flops"] = flops
    if "before" in parts:
        if args.before_code is None:
            raise SystemExit("part 'before' needs --before-code DIR")
        print(f"8. this code against {args.before_code}, nsarm-tiny, LR {args.peer_size} px:")
        record["before"] = {"code": str(args.before_code), "rows": []}
        for dtype in ("fp32", "bf16"):
            old = _run_child(args, "nsarm-tiny", args.peer_size, dtype=dtype, code=args.before_code)
            new = _run_child(args, "nsarm-tiny", args.peer_size, dtype=dtype)
            record["before"]["rows"].append({"dtype": dtype, "before": old, "now": new})
            print(
                f"{dtype}: before {old['seconds']:.2f} s wall / {old['cpu_seconds']:.2f} s CPU, now "
                f"{new['seconds']:.2f} s / {new['cpu_seconds']:.2f} s ({old['cpu_seconds'] / new['cpu_seconds']:.2f}x CPU)"
            )
    record["meta"]["load_average_at_end"] = list(_load_average())
    write_record(record, args.json_out)


def _stages(rec: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in rec["stage_seconds"].items())


def _load_average() -> tuple[float, float, float]:
    return os.getloadavg()


if __name__ == "__main__":
    main()

"""Benchmark of the tiled SR pipeline (``nsarm upscale``): seconds per output megapixel, stage shares, memory.

For four LR sizes that need 1, 4, 9 and 16 native windows (with the default overlap of a quarter window:
``L = t + (n - 1) * (t - o)``, i.e. 64, 112, 160, 208 px for the tiny model's 64 px window) it runs the whole
pipeline (``load_pipeline`` -> ``SRPipeline.upscale``: tiling, encoder, transformation net, AR scales, decoder,
colour fix, blending) and reports

* seconds, seconds per output megapixel and seconds per window (cost is linear in the number of windows, and the
  number of windows grows linearly with the pixels, so s/MP tends to a constant; overlapping windows make small
  multi-window images cost up to ``(t / (t - o))**2 = 1.78x`` more per pixel than one exact window);
* the share of each stage (encode, transform_net, ar_scales, decode, color_fix) in the time spent in windows;
* the peak RSS of each run, measured in a **fresh subprocess** per (dtype, size) so that one run's allocations
  cannot hide another's (``resource.getrusage(RUSAGE_SELF).ru_maxrss``): after loading the model, after a warm-up
  window, and at the end. Memory is bounded by one window: the only part that grows with the image is the output
  canvas and weight sum, ``(3 + 1) * 4 bytes * (4 Hp) * (4 Wp)`` (plus the returned image), listed as "canvas".

Dtypes: ``fp32`` and ``bf16`` (transformer blocks, transformation net and decoder in bf16 under autocast; the VAE
encoder stays fp32, as in the official code). The model is the ``tiny`` preset with random weights (seeded) unless
``--model FOLDER`` names a model written by ``NSARM.save_pretrained``.

``--memory`` instead checks the memory formulas of ``docs/memory.md``:

* with the tiny model on the CPU (real computation): the KV-cache bytes after sampling one window against
  ``depth * 2 * B * L * C * bytes``, and the decoder's peak activation bytes at three output sizes against
  ``4 * C1 * P * bytes`` (``C1`` = width of the decoder's last-but-one level, which the first full-resolution
  block takes in; ``P`` output pixels);
* for nsarm-8b on the ``meta`` device (shapes only, no memory, no computation): the same two quantities at
  1024x1024, and the peak of the whole autoregressive phase (KV cache + activations of the largest scale).
  Live bytes are counted by a ``TorchDispatchMode`` that sees every tensor an op creates and every storage freed.
  Attention is counted as a fused kernel (output + log-sum-exp, as FlashAttention on CUDA); ``--math-attention``
  counts the unfused score matrix instead.

Usage:
    python benchmarks/upscale.py                         # tiny random model, fp32 + bf16, 1/4/9/16 windows
    python benchmarks/upscale.py --threads 2 --repeats 2 --json-out upscale.json
    python benchmarks/upscale.py --memory --json-out memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

STAGES = ("encode", "transform_net", "ar_scales", "decode", "color_fix")


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def _image(size: int) -> Any:
    """Deterministic smooth-noise RGB test image ``[1, 3, size, size]`` in [0, 1]."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(size)
    coarse = torch.rand(1, 3, max(size // 4, 2), max(size // 4, 2), generator=g)
    fine = torch.rand(1, 3, size, size, generator=g)
    return (0.8 * F.interpolate(coarse, size=(size, size), mode="bilinear") + 0.2 * fine).clamp(0, 1)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One (dtype, size) measurement in this (fresh) process; returns the record printed as JSON."""
    from nsarm_core.pipeline import load_pipeline
    from nsarm_core.tiling import plan_tiles

    torch.set_num_threads(args.threads)
    rss_start = _rss_mb()
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    window = pipe.config.lr_size[0]
    scale = pipe.native_scale
    overlap = args.overlap if args.overlap is not None else window // 4
    settings = replace(pipe.settings, tile_overlap=overlap)
    rss_loaded = _rss_mb()
    for _ in range(2):  # warm-up on one window: first-call allocations, allocator caches
        pipe.upscale(_image(window), seed=0, settings=settings)
    rss_warm = _rss_mb()
    lr = _image(args.size)
    best: Any = None
    for r in range(args.repeats):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        res = pipe.upscale(lr, seed=1 + r, settings=settings)
        if best is None or res.timings["total"] < best.timings["total"]:
            best = res
    rss_peak = _rss_mb()
    plan = plan_tiles(args.size, args.size, window, overlap)
    out_mp = (scale * args.size) ** 2 / 1e6
    in_windows = sum(best.timings[k] for k in STAGES)
    canvas = 4 * 4 * (scale * plan.padded_height) * (scale * plan.padded_width) + 4 * 3 * out_mp * 1e6
    return {
        "dtype": args.dtype,
        "lr_size": args.size,
        "tiles": plan.num_tiles,
        "overlap": overlap,
        "out_mp": out_mp,
        "seconds": best.timings["total"],
        "s_per_mp": best.timings["total"] / out_mp,
        "s_per_tile": best.timings["total"] / plan.num_tiles,
        "stage_seconds": {k: best.timings[k] for k in STAGES},
        "stage_share": {k: best.timings[k] / in_windows for k in STAGES},
        "outside_windows_share": 1 - in_windows / best.timings["total"],
        "rss_start_mb": rss_start,
        "rss_loaded_mb": rss_loaded,
        "rss_after_warmup_mb": rss_warm,
        "rss_peak_mb": rss_peak,
        "rss_growth_mb": rss_peak - rss_warm,
        "canvas_mb": canvas / 2**20,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None,
    }


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares line ``y = a x + b``; returns ``(a, b, R^2)``.

    With a single size (or all x equal) there is no line to fit: the slope is the mean ``y / x`` through the
    origin, the intercept 0 and R^2 NaN.
    """
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return sum(y / x for x, y in zip(xs, ys, strict=True)) / n, 0.0, float("nan")
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    b = my - a * mx
    ss_res = sum((y - a * x - b) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1.0
    return a, b, 1 - ss_res / ss_tot


def _save_random_tiny(folder: Path) -> Path:
    from nsarm_core.models.nsarm import NSARM, get_preset

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = NSARM(get_preset("tiny"))
    return model.save_pretrained(folder)


# --------------------------------------------------------------------------------------------- memory check

BYTES = {"fp32": 4, "bf16": 2}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class LiveBytes(TorchDispatchMode):
    """Current and peak bytes of the tensor storages that ops create inside the context.

    Storages that exist before (``known``: weights, inputs) are not counted; views share their base's storage and
    are counted once. A storage stops counting when it is freed (weak reference callback).
    """

    def __init__(self, known: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for t in known:
            self.seen[t.untyped_storage()] = None
        self.current = 0
        self.peak = 0

    def _freed(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st not in self.seen:
                    n = st.nbytes()
                    self.seen[st] = weakref.ref(st, lambda _r, n=n: self._freed(n))
                    self.current += n
        self.peak = max(self.peak, self.current)
        return out


def decoder_peak_formula(vae_cfg: Any, out_pixels: int, nbytes: int) -> int:
    """Peak activation bytes of the VAE decoder: ``4 * C1 * P * bytes``.

    The first ResnetBlock at full resolution takes ``C1 = base_ch * ch_mult[1]`` channels (from the upsample) and
    holds its input, the GroupNorm output, the sigmoid and the product of ``swish = x * sigmoid(x)`` at once; every
    other point of the decoder holds less (``C_in + 4 C_out`` with ``C_out = C1 / 2``, or ``2.25 C`` around an
    upsample).
    """
    return 4 * vae_cfg.base_ch * vae_cfg.ch_mult[1] * out_pixels * nbytes


def kv_formula(tcfg: Any, tokens: int, batch: int, nbytes: int) -> int:
    """Self-attention KV cache after the last scale: ``depth * 2 (K, V) * B * L * C * bytes``."""
    return tcfg.depth * 2 * batch * tokens * tcfg.embed_dim * nbytes


def _capture_kv() -> tuple[list[Any], Any]:
    """Record every LayerKVCache that gets appended to (to read its final K/V sizes)."""
    from nsarm_core.models import layers

    caches: list[Any] = []
    original = layers.LayerKVCache.append

    def append(self: Any, k: torch.Tensor, v: torch.Tensor) -> Any:
        if not any(c is self for c in caches):
            caches.append(self)
        return original(self, k, v)

    layers.LayerKVCache.append = append  # type: ignore[method-assign]
    return caches, lambda: setattr(layers.LayerKVCache, "append", original)


def memory_tiny(model_dir: str) -> list[dict[str, Any]]:
    """Real CPU runs of the tiny model: KV-cache bytes of one window and decoder peaks at three sizes."""
    from nsarm_core.pipeline import load_pipeline

    rows = []
    for dtype in ("fp32", "bf16"):
        pipe = load_pipeline(model_dir, device="cpu", dtype=dtype)
        cfg = pipe.config
        caches, restore = _capture_kv()
        try:
            pipe.upscale_window(_image(cfg.lr_size[0]), seed=1)
        finally:
            restore()
        kv = sum(c.k.untyped_storage().nbytes() + c.v.untyped_storage().nbytes() for c in caches)
        tokens = sum(h * w for h, w in cfg.schedule.grids)
        rows.append(
            {"what": "KV cache, one window", "model": "tiny", "dtype": dtype, "tokens": tokens,
             "measured": kv, "formula": kv_formula(cfg.transformer, tokens, 1, BYTES[dtype])}
        )  # fmt: skip
        dec = pipe.model.vae.decoder
        for lat in (8, 16, 32):
            z = torch.randn(1, cfg.vae.codebook_dim, lat, lat, generator=torch.Generator().manual_seed(0))
            z = z.to(TORCH_DTYPES[dtype])
            with torch.no_grad(), LiveBytes([z, *dec.parameters()]) as live:
                dec(z)
            side = lat * cfg.vae.patch_size
            rows.append(
                {"what": f"decoder peak, {side}x{side}", "model": "tiny", "dtype": dtype, "measured": live.peak,
                 "formula": decoder_peak_formula(cfg.vae, side * side, BYTES[dtype])}
            )  # fmt: skip
    return rows


def _meta_autocast() -> Any:
    """autocast knows no "meta" device; meta tensors are never autocast, so map it to a no-op CPU context."""
    original = torch.autocast

    class MetaAutocast(original):  # type: ignore[misc, valid-type]
        def __init__(self, device_type: str, *a: Any, **k: Any) -> None:
            super().__init__("cpu" if device_type == "meta" else device_type, *a, **k)

    torch.autocast = MetaAutocast  # type: ignore[misc]
    return lambda: setattr(torch, "autocast", original)


def _fused_attention() -> Any:
    """Count attention as a fused kernel (output + log-sum-exp), as FlashAttention on CUDA does."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None, scale: Any = None,
              **_: Any) -> torch.Tensor:  # fmt: skip
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        return op(q, k, v, attn_mask=attn_mask, scale=scale)[0]

    F.scaled_dot_product_attention = fused  # type: ignore[assignment]
    return lambda: setattr(F, "scaled_dot_product_attention", original)


def memory_8b(math_attention: bool, text_tokens: int = 16) -> list[dict[str, Any]]:
    """nsarm-8b on the meta device: AR-phase peak, KV cache and decoder/encoder peaks (shapes only)."""
    from nsarm_core.models.nsarm import NSARM, get_preset
    from nsarm_core.models.transformer import TextCondition

    cfg = get_preset("nsarm-8b")
    tokens = sum(h * w for h, w in cfg.schedule.grids)
    rows = []
    undo = [_meta_autocast()] + ([] if math_attention else [_fused_attention()])
    try:
        for dtype in ("fp32", "bf16"):
            with torch.device("meta"):
                model = NSARM(cfg, init=False).eval()
            if dtype == "bf16":  # as SRPipeline: blocks, transformation net and decoder in bf16
                model.transformer.cast_blocks(torch.bfloat16)
                model.vae.decoder.to(torch.bfloat16)
            weights = [*model.parameters(), *model.buffers()]
            tr = model.transformer
            for batch in (1, 2):  # 2: classifier-free guidance doubles the batch
                text = object.__new__(TextCondition)  # its value checks call .item(), impossible on meta
                object.__setattr__(text, "features", torch.empty(batch, text_tokens, 2048, device="meta"))
                object.__setattr__(text, "lengths", torch.full((batch,), text_tokens, device="meta"))
                with torch.no_grad(), LiveBytes(weights) as live:
                    state = tr.start_inference(text, cfg.schedule)
                    for k, n in enumerate(cfg.schedule.scale_lengths):
                        x = None if k == 0 else torch.empty(batch, n, cfg.transformer.d_vae, device="meta")
                        tr.forward_scale(state, x)
                    kv = sum(
                        c.k.untyped_storage().nbytes() + c.v.untyped_storage().nbytes() for c in state.caches
                    )
                    del state
                formula = kv_formula(cfg.transformer, tokens, batch, BYTES[dtype])
                rows.append({"what": f"KV cache, B={batch}", "model": "nsarm-8b", "dtype": dtype,
                             "tokens": tokens, "measured": kv, "formula": formula})  # fmt: skip
                rows.append({"what": f"AR phase peak (KV + activations), B={batch}", "model": "nsarm-8b",
                             "dtype": dtype, "measured": live.peak, "formula": None,
                             "activations_beyond_kv": live.peak - kv})  # fmt: skip
            z = torch.empty(1, cfg.vae.codebook_dim, 128, 128, device="meta", dtype=TORCH_DTYPES[dtype])
            with torch.no_grad(), LiveBytes([*weights, z]) as live:
                model.vae.decoder(z)
            rows.append({"what": "decoder peak, 1024x1024", "model": "nsarm-8b", "dtype": dtype,
                         "measured": live.peak,
                         "formula": decoder_peak_formula(cfg.vae, 1024 * 1024, BYTES[dtype])})  # fmt: skip
            lr = torch.empty(1, 3, 256, 256, device="meta")
            with torch.no_grad(), LiveBytes([*weights, lr]) as live:
                latent = model.vae.encoder(lr)
                model.transform_net(latent.to(next(model.transform_net.parameters()).dtype))
            rows.append({"what": "encoder (fp32) + transformation net peak, 256x256 LR", "model": "nsarm-8b",
                         "dtype": dtype, "measured": live.peak, "formula": None})  # fmt: skip
    finally:
        for u in undo:
            u()
    return rows


def memory_check(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(_save_random_tiny(Path(tmp) / "tiny"))
        rows = memory_tiny(model)
    rows += memory_8b(args.math_attention)
    print(f"{'model':9} {'dtype':5} {'what':52} {'measured MB':>12} {'formula MB':>11} {'ratio':>6}")
    for r in rows:
        f = r["formula"]
        ratio = f"{r['measured'] / f:6.3f}" if f else "     -"
        fs = f"{f / 1e6:11.1f}" if f else "          -"
        print(f"{r['model']:9} {r['dtype']:5} {r['what']:52} {r['measured'] / 1e6:12.1f} {fs} {ratio}")
    if args.json_out:
        attention = "math (score matrix)" if args.math_attention else "fused (output + log-sum-exp)"
        args.json_out.write_text(json.dumps({"attention": attention, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json_out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default=None,
        help="model folder, or several as NAME=FOLDER,NAME=FOLDER measured in one run (e.g. v1=runs/nsarm-tiny-v1,"
        "v2=nsarm_core/assets/nsarm-tiny); default: the tiny preset, random weights",
    )
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--windows", default="1,2,3,4", help="windows per side; sizes t + (n-1)(t-o)")
    p.add_argument("--sizes", default=None, help="explicit LR sizes (square), overrides --windows")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in LR px (default: window // 4)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 keeps a shared CPU's timings stable)"
    )
    p.add_argument("--repeats", type=int, default=1, help="timed runs per size (best is kept)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--memory", action="store_true", help="check the memory formulas (docs/memory.md) instead")
    p.add_argument("--math-attention", action="store_true", help="--memory: count unfused attention scores")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print(json.dumps(child(args)))
        return
    if args.memory:
        memory_check(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        models = (
            _parse_models(args.model) if args.model else {"tiny": str(_save_random_tiny(Path(tmp) / "tiny"))}
        )
        from nsarm_core.models.nsarm import NSARMConfig

        rows = []
        for name, model in models.items():
            window = NSARMConfig.from_dict(json.loads((Path(model) / "config.json").read_text())).lr_size[0]
            overlap = args.overlap if args.overlap is not None else window // 4
            if args.sizes:
                sizes = [int(s) for s in args.sizes.split(",")]
            else:
                sizes = [window + (int(n) - 1) * (window - overlap) for n in args.windows.split(",")]
            for dtype in args.dtypes.split(","):
                for size in sizes:
                    cmd = [
                        sys.executable, __file__, "--_child", "--model", model, "--dtype", dtype,
                        "--size", str(size), "--overlap", str(overlap), "--threads", str(args.threads),
                        "--repeats", str(args.repeats), "--device", args.device,
                    ]  # fmt: skip
                    t0 = time.perf_counter()
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
                    rec = json.loads(out.stdout.strip().splitlines()[-1])
                    rec["process_seconds"] = time.perf_counter() - t0
                    rec["model"] = name
                    rows.append(rec)
                    _print_row(rec, header=len(rows) == 1)
    fits = {}
    for name, dtype in ((n, d) for n in models for d in args.dtypes.split(",")):
        sub = [r for r in rows if r["dtype"] == dtype and r["model"] == name]
        key = dtype if len(models) == 1 else f"{name}/{dtype}"
        a, b, r2 = _fit([r["tiles"] for r in sub], [r["seconds"] for r in sub])
        am, bm, r2m = _fit([r["out_mp"] for r in sub], [r["seconds"] for r in sub])
        growth = [r["rss_growth_mb"] for r in sub]
        fits[key] = {
            "seconds_per_tile_slope": a, "intercept_s": b, "r2_tiles": r2,
            "seconds_per_mp_slope": am, "r2_mp": r2m,
            "rss_peak_range_mb": [min(r["rss_peak_mb"] for r in sub), max(r["rss_peak_mb"] for r in sub)],
            "rss_growth_range_mb": [min(growth), max(growth)],
        }  # fmt: skip
        print(
            f"{key}: seconds = {a:.3f} * tiles + {b:+.3f} (R^2 {r2:.4f}); seconds = {am:.2f} * out_MP "
            f"{bm:+.3f} (R^2 {r2m:.4f}); peak RSS {fits[key]['rss_peak_range_mb'][0]:.0f}.."
            f"{fits[key]['rss_peak_range_mb'][1]:.0f} MiB, growth beyond one window "
            f"{min(growth):.1f}..{max(growth):.1f} MiB"
        )
    if args.json_out:
        meta = {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "threads": args.threads,
            "repeats": args.repeats,
            "device": args.device,
            "model": args.model or "tiny (random weights, seed 0)",
        }
        args.json_out.write_text(json.dumps({"meta": meta, "rows": rows, "fits": fits}, indent=2) + "\n")
        print(f"wrote {args.json_out}")


def _parse_models(text: str) -> dict[str, str]:
    """``FOLDER`` or ``NAME=FOLDER,NAME=FOLDER`` -> ``{name: folder}`` (a bare folder is named by itself)."""
    models = {}
    for item in text.split(","):
        name, _, folder = item.rpartition("=")
        models[name or folder] = folder
    return models


def _print_row(r: dict[str, Any], header: bool) -> None:
    if header:
        print(
            f"{'model':8} {'dtype':5} {'LR':>5} {'tiles':>5} {'outMP':>6} {'sec':>7} {'s/MP':>7} {'s/tile':>7} "
            + " ".join(f"{k[:6]:>6}" for k in STAGES)
            + f" {'blend':>6} {'RSSpk':>7} {'grow':>6} {'canvas':>6}"
        )
    shares = " ".join(f"{100 * r['stage_share'][k]:5.1f}%" for k in STAGES)
    print(
        f"{r.get('model', '')[:8]:8} {r['dtype']:5} {r['lr_size']:5d} {r['tiles']:5d} {r['out_mp']:6.3f} {r['seconds']:7.2f} "
        f"{r['s_per_mp']:7.2f} {r['s_per_tile']:7.3f} {shares} {100 * r['outside_windows_share']:5.1f}% "
        f"{r['rss_peak_mb']:7.0f} {r['rss_growth_mb']:6.1f} {r['canvas_mb']:6.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()

"""Benchmark of the Infinity transformer's KV-cached sampler (nsarm_core.models.sampler).

For Infinity-2B- and 8B-shaped blocks (width, heads, MLP and text path of the real models, depth reduced so it
fits a CPU) it measures, on one schedule (default 1:1 0.06M = 7 scales, 521 tokens):

* the wall time of every scale of ``sample_scales`` (batch 1, no CFG, text of 64 tokens);
* the achieved FLOP/s of the whole run as a fraction of the dense matmul rate measured in the same run
  (``torch.mm`` of [1024, C] x [C, C] in the same dtype);
* the speed-up of the KV cache over full recomputation (a teacher-forced forward over scales 0..k for every k).

Timings are the best of ``--repeats`` runs; the default of one thread keeps them stable on a CPU shared with other
work (with 2 threads on 2 busy cores, straggling threads made the timings vary by 5x).

Dtypes: ``fp32``, and ``bf16`` = the official inference set-up (blocks cast to bf16, text path and head fp32).

Usage:
    python benchmarks/transformer.py                       # 2B and 8B shapes, depth 2, fp32 + bf16, 0.06M
    python benchmarks/transformer.py --models 2b --depth 4 --pn 0.25M --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace

import torch

from nsarm_core.models.sampler import sample_scales
from nsarm_core.models.transformer import TextCondition, build_transformer, get_preset
from nsarm_core.scales import get_schedule

MODELS = {"2b": "infinity-2b", "8b": "infinity-8b"}
TEXT_LEN = 64


def scale_flops(C: int, mlp: int, V: int, Lt: int, depth: int, n: int, seen: int, first: bool) -> float:
    """Matmul FLOPs of one KV-cached scale with n new tokens attending to ``seen`` tokens (incl. themselves)."""
    per_block = 2 * n * C * (3 * C + C + C + C)  # qkv, sa.proj, ca.mat_q, ca.proj
    per_block += 2 * n * C * mlp * 2  # fc1, fc2
    per_block += 4 * n * seen * C + 4 * n * Lt * C  # self- and cross-attention scores + weighted sums
    if first:
        per_block += 2 * Lt * C * 2 * C  # cross-attention keys/values of the text, once per run
    return depth * per_block + 2 * n * C * V


def matmul_rate(C: int, dtype: torch.dtype, device: str, seconds: float = 1.0) -> float:
    """Measured FLOP/s of a [1024, C] x [C, C] matmul."""
    a = torch.randn(1024, C, device=device).to(dtype)
    b = torch.randn(C, C, device=device).to(dtype)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    _sync(device)
    return 2 * 1024 * C * C * n / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def bench_model(key: str, depth: int, pn: str, dtype_name: str, device: str, repeats: int = 2) -> dict:
    base = get_preset(MODELS[key])
    cfg = replace(base, depth=depth, block_chunks=1)
    model = build_transformer(cfg, device="meta")
    model = model.to_empty(device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    with (
        torch.no_grad()
    ):  # small random weights (init_weights' trunc-normal is slow for 10^8+ elements on CPU)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g).mul_(0.02))
        for buf in model.buffers():
            buf.zero_()
    model.eval()
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    if dtype_name == "bf16":
        model.cast_blocks(torch.bfloat16)
    sched = get_schedule(1.0, pn, patchify=cfg.patchify)
    text = TextCondition.from_list([torch.randn(TEXT_LEN, cfg.text_channels, generator=g).to(device)])
    gen = torch.Generator(device=device).manual_seed(0)

    # Warm-up: one full run (allocator, first touch of the weights, kernels).
    sample_scales(model, text, sched, generator=gen, return_logits=False)

    def kv_run() -> tuple[float, list[float], object]:
        stamps: list[float] = []

        def stamp(k: int, bits: torch.Tensor) -> torch.Tensor:  # called once per scale, after the head
            _sync(device)
            stamps.append(time.perf_counter())
            return bits

        _sync(device)
        t0 = time.perf_counter()
        out = sample_scales(model, text, sched, generator=gen, force_bits=stamp, return_logits=False)
        _sync(device)
        total = time.perf_counter() - t0
        return total, [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)], out

    def recompute_run(inputs: torch.Tensor) -> float:
        """Full recompute: a teacher-forced forward over scales 0..k for every k (no cache)."""
        total = 0.0
        with torch.no_grad():
            for k in range(sched.num_scales):
                prefix = sched.prefix(k + 1)
                dt, _ = _timed(lambda p=prefix: model(text, inputs[:, : p.seq_len - 1], p), device)
                total += dt
        return total

    rate_before = matmul_rate(cfg.embed_dim, dtype, device, 0.5)
    # Best of `repeats` (other processes share the CPU); the per-scale times come from the best KV run.
    kv_runs = [kv_run() for _ in range(repeats)]
    kv_total, per_scale, out = min(kv_runs, key=lambda r: r[0])
    inputs = torch.cat(out.next_inputs, dim=1)
    rate_mid = matmul_rate(cfg.embed_dim, dtype, device, 0.5)
    recompute_total = min(recompute_run(inputs) for _ in range(repeats))

    C, mlp, V = cfg.embed_dim, cfg.mlp_hidden, cfg.vocab
    flops, seen = [], 0
    for k, n in enumerate(sched.scale_lengths):
        seen += n
        flops.append(scale_flops(C, mlp, V, TEXT_LEN, depth, n, seen, k == 0))
    # Best of three short measurements spread over the run (the CPU may be shared).
    rate = max(rate_before, matmul_rate(C, dtype, device, 0.5), rate_mid)
    achieved = sum(flops) / kv_total
    return {
        "model": key,
        "preset": MODELS[key],
        "depth": depth,
        "width": C,
        "heads": cfg.num_heads,
        "dtype": dtype_name,
        "schedule": f"1.0-{pn}",
        "tokens": sched.seq_len,
        "per_scale_s": [round(t, 5) for t in per_scale],
        "per_scale_tokens": list(sched.scale_lengths),
        "kv_total_s": round(kv_total, 4),
        "recompute_total_s": round(recompute_total, 4),
        "kv_speedup": round(recompute_total / kv_total, 3),
        "gflop": round(sum(flops) / 1e9, 2),
        "achieved_gflops": round(achieved / 1e9, 2),
        "matmul_gflops": round(rate / 1e9, 2),
        "fraction_of_matmul": round(achieved / rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="2b,8b", help="comma list of 2b, 8b")
    parser.add_argument("--depth", type=int, default=2, help="blocks per model (real: 32 / 40)")
    parser.add_argument("--pn", default="0.06M", choices=["0.06M", "0.25M", "0.60M", "1M"])
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0 = torch default); 1 is stable on a shared CPU",
    )
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False

    rows = []
    for key in args.models.split(","):
        for dt in args.dtypes.split(","):
            rows.append(bench_model(key.strip(), args.depth, args.pn, dt.strip(), args.device, args.repeats))
            r = rows[-1]
            print(
                f"{r['model']:>3} d{r['depth']} {r['dtype']:>4}  kv {r['kv_total_s']:7.3f}s  recompute "
                f"{r['recompute_total_s']:7.3f}s  x{r['kv_speedup']:<5}  {r['achieved_gflops']:8.1f} GFLOP/s = "
                f"{100 * r['fraction_of_matmul']:5.1f}% of matmul ({r['matmul_gflops']:.1f})",
                flush=True,
            )

    print("\nper-scale sampling time (ms), tokens per scale:", rows[0]["per_scale_tokens"])
    header = "model  dtype | " + " ".join(f"{'s' + str(k):>8}" for k in range(len(rows[0]["per_scale_s"])))
    print(header)
    for r in rows:
        print(f"{r['model']:>5}  {r['dtype']:>5} | " + " ".join(f"{1e3 * t:8.1f}" for t in r["per_scale_s"]))
    meta = {
        "torch": torch.__version__,
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "text_len": TEXT_LEN,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

"""nsarm-8b end to end at its real shapes and dtypes, with synthetic weights (nothing is downloaded).

It builds the official ``nsarm-8b`` geometry (Infinity-8B transformer: width 3584, 28 heads, MLP 14336; the d56
patchify VAE; the transformation network; spec E.1) with seeded random weights in the dtypes ``SRPipeline``
gives each part, and turns one 256x256 LR window into a 1024x1024 output through the whole pipeline
(``SRPipeline.upscale_window``: VAE encoder, transformation network, the next-scale sampler with its KV cache over
all 13 scales / 10,521 tokens, VAE decoder, colour fix). It reports the seconds of every stage (the pipeline's
own wall clocks, and this process's CPU time between the modules that end the stages) and the peak memory of the
two phases: sampling (encode, transformation net, AR scales: weights + KV cache + activations) and
decoding (decoder + colour fix: weights + the 1024x1024 decoder activations; the KV cache is freed by then).

* **Text.** Flan-T5-XL is not loaded. A synthetic text embedding of its output contract stands in for it
  (``TextFeatures``: ``[tokens, 2048]`` float32 per prompt, as ``TextEncoder.encode`` returns; 16 tokens by
  default, about the length of the default prompt). The T5 encoder's time and its 2.45 GB are therefore not in
  the figures.
* **Weights.** The model is built on the ``meta`` device, each part is cast there to its run dtype (bf16: the
  transformer blocks, the transformation net and the decoder; the VAE encoder, the transformer's embeddings,
  text path and head stay fp32, as in ``SRPipeline``), and then each module gets its memory on the device and is
  filled from one seeded ``torch.Generator``: fan-in-scaled uniform weights (variance 1 / fan-in, so activations
  stay of order one), zero biases, unit norm gains. The values carry no meaning; shapes, dtypes and the code
  path are the real ones, so time and memory are too.
* **CPU** (default when no GPU is visible): fp32, because bf16 matmuls are emulated on CPUs without native bf16
  (much slower, not representative). The 40 blocks need about 48 GB there (docs/memory.md), so the run keeps the
  full width and reduces the number of blocks (``--blocks 2,4``), one fresh process per block count (a clean
  peak RSS), and fits every stage's seconds and both phases' peaks linearly in the number of blocks to
  extrapolate to the preset's depth (40). The table shows the stages in CPU seconds: on a shared machine the
  wall clock also counts other processes' turns, while one thread's CPU time is what the window costs alone
  (the wall total is printed beside it). Peak memory is the process's peak RSS (``VmHWM``), reset between the
  phases through ``/proc/self/clear_refs`` (Linux).
* **CUDA** (default when a GPU is visible): all 40 blocks in bf16, attention through PyTorch's
  ``scaled_dot_product_attention`` (as the model always calls it: fused kernels on CUDA), ``offload`` as
  ``load_pipeline`` sets it on CUDA (the VAE visits the GPU only to encode and decode). One warm-up window, then
  ``--repeats`` timed windows (the median is reported). Peak memory is ``torch.cuda.max_memory_allocated``
  (the CUDA context is not in it). The report puts the seconds per 1024x1024 output next to the paper's 1.2 s
  (Table 2, an A800) and the peak next to docs/memory.md's prediction. CUDA runs asynchronously, so the
  benchmark synchronises after the module that ends each stage; the pipeline's own per-stage clocks then
  measure the GPU's work.

Usage:
    python benchmarks/nsarm8b_synthetic.py --json-out docs/nsarm8b_synthetic_cpu.json   # CPU: 2 and 4 blocks
    python benchmarks/nsarm8b_synthetic.py --json-out nsarm8b_gpu.json                   # GPU: 40 blocks, bf16
    python benchmarks/nsarm8b_synthetic.py --preset tiny --blocks 1,2                    # seconds, for a check
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nsarm_core.models.layers import RMSNorm
from nsarm_core.models.nsarm import NSARM, NSARMConfig, get_preset
from nsarm_core.models.text_encoder import TextFeatures
from nsarm_core.pipeline import DTYPES, SRPipeline

STAGES = ("encode", "transform_net", "ar_scales", "decode", "color_fix")
BLOCK_STAGES = ("ar_scales",)  # the stages that run the transformer's blocks
CLOCKS = ("seconds", "cpu_seconds")  # the pipeline's wall clocks; this process's CPU time per stage
MEMORY_KEYS = ("weights_gb", "peak_sampling_gb", "peak_decoding_gb")
GB = 1e9  # docs/memory.md's unit
PAPER_SECONDS_A800 = 1.2  # NSARM paper, Table 2: seconds per 1024x1024 output on an A800
# docs/memory.md, table "Peak" (cfg = 1), for nsarm-8b at 40 blocks, by (dtype, offload). Without offload that
# table keeps the T5 encoder (2.447 GB) resident; this benchmark loads no T5, so it is taken out here.
MEMORY_MD_PEAK_GB = {
    ("bf16", True): 24.32,
    ("bf16", False): 26.99 - 2.447,
    ("fp32", True): 47.84,
    ("fp32", False): 50.61 - 2.447,
}


# --------------------------------------------------------------------------------------------- the model


def reduced_config(config: NSARMConfig, blocks: int) -> NSARMConfig:
    """``config`` with ``blocks`` transformer blocks, everything else (width, heads, VAE, net) unchanged."""
    t = config.transformer
    if not 1 <= blocks <= t.depth:
        raise SystemExit(
            f"nsarm8b_synthetic.py: --blocks {blocks} is outside 1..{t.depth} for preset {config.name!r}"
        )
    # block_chunks only names the state-dict keys; the official 8 chunks stay where they divide the depth.
    transformer = replace(t, depth=blocks, block_chunks=math.gcd(blocks, t.block_chunks))
    return replace(config, transformer=transformer)


@torch.no_grad()
def fill_synthetic(module: nn.Module, generator: torch.Generator) -> None:
    """Seeded values for ``module``'s own parameters and buffers (not its children's), in place.

    Weights (2-D and more): uniform with variance ``1 / fan_in`` (``fan_in`` = elements per output row), so that
    every layer's output stays of order one; uniform because it draws twice as fast as normal on a CPU. Norm
    gains 1, norm shifts and biases 0. The only buffers, the zero key biases, are 0.
    """
    for name, p in module.named_parameters(recurse=False):
        if isinstance(module, nn.LayerNorm | nn.GroupNorm | RMSNorm):
            p.fill_(1.0 if name == "weight" else 0.0)
        elif p.dim() == 1:
            p.zero_()
        else:
            bound = math.sqrt(3.0 / p[0].numel())
            p.uniform_(-bound, bound, generator=generator)
    for name, b in module.named_buffers(recurse=False):
        if name != "zero_k_bias":
            raise RuntimeError(
                f"benchmarks/nsarm8b_synthetic.py has no synthetic value for the buffer {name!r} of "
                f"{type(module).__name__}; add one to fill_synthetic"
            )
        b.zero_()


@torch.no_grad()
def build_synthetic(config: NSARMConfig, *, device: torch.device, dtype: torch.dtype, seed: int) -> NSARM:
    """The NSARM networks of ``config`` with seeded synthetic weights, each part in its run dtype, on ``device``.

    Built on ``meta`` and cast there, so no part ever exists in another dtype; memory is then allocated one
    module at a time, directly on the device, and filled from one generator on that device.
    """
    with torch.device("meta"):
        model = NSARM(config, init=False)
    if dtype != torch.float32:  # the dtypes SRPipeline.__init__ sets (it casts again: a no-op)
        model.transform_net.to(dtype)
        model.transformer.cast_blocks(dtype)
        model.vae.decoder.to(dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        module.to_empty(device=device, recurse=False)
        fill_synthetic(module, generator)
    return model.eval()


class SyntheticTextEncoder:
    """Stands in for Flan-T5-XL: every prompt becomes ``tokens`` seeded random rows of width ``channels``.

    The output has the contract of ``TextEncoder.encode`` (``TextFeatures``, float32 ``[sum L_i, C]``), so the
    transformer's text path (RMSNorm, attention pool, cross-attention memory) runs at its real shapes.
    """

    def __init__(self, channels: int, tokens: int, seed: int) -> None:
        self.channels, self.tokens, self.seed = channels, tokens, seed

    def encode(self, prompts: str | Sequence[str]) -> TextFeatures:
        n = 1 if isinstance(prompts, str) else len(prompts)
        g = torch.Generator().manual_seed(self.seed)
        return TextFeatures(torch.randn(n * self.tokens, self.channels, generator=g), [self.tokens] * n)


# --------------------------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory of this process on ``device`` since the last :meth:`reset`, in bytes.

    CPU: the peak resident set size ``VmHWM`` (Linux; writing 5 to ``/proc/self/clear_refs`` resets it to the
    current RSS). CUDA: the caching allocator's peak of allocated bytes (no CUDA context, no cached free blocks).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type != "cuda" and not Path("/proc/self/clear_refs").exists():
            raise SystemExit("nsarm8b_synthetic.py: peak RSS per phase needs Linux (/proc/self/clear_refs)")

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return _proc_status_kib("VmHWM") * 1024

    def current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _proc_status_kib("VmRSS") * 1024


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(width: int, dtype: torch.dtype, device: torch.device, seconds: float = 0.5) -> float:
    """Measured rate of a ``[1024, C] x [C, C]`` matmul (how fast this machine is right now)."""
    a, b = (
        torch.randn(1024, width, device=device, dtype=dtype),
        torch.randn(width, width, device=device, dtype=dtype),
    )
    torch.mm(a, b)
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    _sync(device)
    return 2 * 1024 * width * width * n / (time.perf_counter() - t0) / 1e9


def lr_window(size: int, seed: int = 0) -> torch.Tensor:
    """Deterministic smooth-noise RGB window ``[1, 3, size, size]`` in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 4, size // 4, generator=g)
    fine = torch.rand(1, 3, size, size, generator=g)
    smooth = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return (0.8 * smooth + 0.2 * fine).clamp(0, 1)


def measure(
    config: NSARMConfig,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    offload: bool = False,
    text_tokens: int = 16,
    warmup: int = 0,
    repeats: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Build ``config`` with synthetic weights and time ``repeats`` windows (after ``warmup``) in this process."""
    dev, torch_dtype = torch.device(device), DTYPES[dtype]
    mem = PeakMemory(dev)
    t0 = time.perf_counter()
    model = build_synthetic(config, device=dev, dtype=torch_dtype, seed=seed)
    _sync(dev)
    build_s = time.perf_counter() - t0
    weights = sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
    text = None
    if config.transformer.use_text:
        text = SyntheticTextEncoder(config.transformer.text_channels, text_tokens, seed)
    pipe = SRPipeline(model, text, device=dev, dtype=torch_dtype, offload=offload)
    after_build = mem.current()

    # Hooks at the modules that end each stage: the decoder's pre-hook closes the sampling phase (read its peak,
    # start the decoding phase's); every boundary stamps this process's CPU time; on CUDA each first synchronises,
    # so the pipeline's own wall clocks see finished GPU work (the transformer's head ends each of the 13 scales).
    phase: dict[str, int] = {}
    cpu: dict[str, float] = {}

    def boundary(stage: str, closes_sampling: bool = False) -> Any:
        def hook(*_: Any) -> None:
            _sync(dev)
            cpu[stage] = time.process_time()
            if closes_sampling:
                phase["sampling"] = mem.peak()
                mem.reset()

        return hook

    m = pipe.model
    hooks = [
        m.vae.encoder.register_forward_hook(boundary("encode")),
        m.transform_net.register_forward_hook(boundary("transform_net")),
        m.transformer.head.register_forward_hook(boundary("scale")),
        m.vae.decoder.register_forward_pre_hook(boundary("ar_scales", closes_sampling=True)),
        m.vae.decoder.register_forward_hook(boundary("decode")),
    ]
    rate = matmul_gflops(config.transformer.embed_dim, torch_dtype, dev)
    lr = lr_window(config.lr_size[0])
    runs = []
    try:
        for i in range(warmup + repeats):
            wall: dict[str, float] = {}
            _sync(dev)
            mem.reset()
            cpu["start"], start = time.process_time(), time.perf_counter()
            hr = pipe.upscale_window(lr, seed=1, timings=wall)  # NSARM's default seed; ends on the CPU
            total, cpu["color_fix"] = time.perf_counter() - start, time.process_time()
            if not bool(torch.isfinite(hr).all()):
                raise RuntimeError(
                    "the synthetic model produced non-finite pixels; the timing would not count"
                )
            ends = [cpu[k] for k in ("start", *STAGES)]
            cpu_seconds = {k: b - a for k, a, b in zip(STAGES, ends[:-1], ends[1:], strict=True)}
            if i >= warmup:
                runs.append(
                    {
                        "seconds": {**{k: wall[k] for k in STAGES}, "total": total},
                        "cpu_seconds": {**cpu_seconds, "total": cpu["color_fix"] - cpu["start"]},
                        "sampling": phase["sampling"],
                        "decoding": mem.peak(),
                    }
                )
    finally:
        for h in hooks:
            h.remove()
    run = sorted(runs, key=lambda r: r["seconds"]["total"])[len(runs) // 2]  # the median run
    t = config.transformer
    record = {
        "preset": config.name,
        "blocks": t.depth,
        "width": t.embed_dim,
        "heads": t.num_heads,
        "mlp": t.mlp_hidden,
        "tokens": config.schedule.seq_len,
        "lr_size": list(config.lr_size),
        "hr_size": list(hr.shape[-2:]),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "dtype": dtype,
        "offload": offload,
        "text_tokens": text_tokens if text is not None else None,
        "threads": torch.get_num_threads(),
        "matmul_gflops": rate,
        "parameters": {k: v for k, v in model.parameter_counts().items() if k != "total"},
        "build_s": build_s,
        "seconds": run["seconds"],
        "cpu_seconds": run["cpu_seconds"],
        "runs_total_s": [r["seconds"]["total"] for r in runs],
        "weights_gb": weights / GB,
        "memory_after_build_gb": after_build / GB,
        "peak_sampling_gb": run["sampling"] / GB,
        "peak_decoding_gb": run["decoding"] / GB,
        "memory_kind": "peak allocated (torch.cuda)" if dev.type == "cuda" else "peak RSS (VmHWM)",
    }
    if dev.type == "cuda":
        record["peak_reserved_gb"] = torch.cuda.max_memory_reserved(dev) / GB
    return record


# --------------------------------------------------------------------------------------------- the report


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = slope * x + intercept`` (needs two distinct x)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def extrapolate(rows: Sequence[dict[str, Any]], depth: int) -> dict[str, Any] | None:
    """Per stage, its wall and CPU seconds as a line in the number of blocks and the line's value at ``depth``;
    the same for each memory figure. None with fewer than two block counts.

    Only ``ar_scales`` runs the transformer's blocks, so only it is fitted; the other stages do not depend on the
    number of blocks and take their mean (a line through two noisy points would multiply their noise by ten at
    40 blocks). The total is the sum of the stages plus the mean time outside them. The weights, the KV cache and
    so both phases' peaks are linear in the blocks; the peak at ``depth`` is the larger of the two phases' (at
    few blocks the decoder's activations dominate, at 40 the KV cache and the blocks' weights do).
    """
    blocks = [r["blocks"] for r in rows]
    if len(set(blocks)) < 2:
        return None

    def line(ys: Sequence[float]) -> dict[str, float]:
        slope, intercept = linear_fit(blocks, ys)
        return {"per_block": slope, "intercept": intercept, "at_depth": slope * depth + intercept}

    def constant(ys: Sequence[float]) -> dict[str, float]:
        mean = sum(ys) / len(ys)
        return {"per_block": 0.0, "intercept": mean, "at_depth": mean}

    ext: dict[str, Any] = {"depth": depth, "from_blocks": blocks, "fitted_stages": list(BLOCK_STAGES)}
    for clock in CLOCKS:
        fits = {k: (line if k in BLOCK_STAGES else constant)([r[clock][k] for r in rows]) for k in STAGES}
        outside = constant([r[clock]["total"] - sum(r[clock][k] for k in STAGES) for r in rows])
        fits["total"] = {key: sum(f[key] for f in fits.values()) + outside[key] for key in outside}
        ext[clock] = fits
    ext["memory"] = {k: line([r[k] for r in rows]) for k in MEMORY_KEYS}
    ext["peak_gb"] = max(ext["memory"][k]["at_depth"] for k in ("peak_sampling_gb", "peak_decoding_gb"))
    return ext


def reference_figures(
    rows: Sequence[dict[str, Any]], ext: dict[str, Any] | None, dtype: str, offload: bool, clock: str
) -> dict[str, Any] | None:
    """nsarm-8b's ``clock`` seconds per 1024x1024 output and its peak memory at 40 blocks (measured when a row has
    all 40 blocks, else extrapolated), next to the paper's time and docs/memory.md's peak; None without either."""
    depth = get_preset("nsarm-8b").transformer.depth
    full = next((r for r in rows if r["blocks"] == depth), None)
    if full is not None:
        how, seconds, peak = (
            "measured",
            full[clock]["total"],
            max(full["peak_sampling_gb"], full["peak_decoding_gb"]),
        )
    elif ext is not None:
        how, seconds, peak = "extrapolated", ext[clock]["total"]["at_depth"], ext["peak_gb"]
    else:
        return None
    return {
        "how": how,
        "clock": clock,
        "seconds_per_1024_output": seconds,
        "peak_gb": peak,
        "paper_seconds_a800": PAPER_SECONDS_A800,
        "memory_md_peak_gb": MEMORY_MD_PEAK_GB[(dtype, offload)],
    }


def print_table(rows: Sequence[dict[str, Any]], ext: dict[str, Any] | None, clock: str) -> None:
    """One line per block count, then the slope per block and the extrapolation; stages in ``clock`` seconds."""
    names = (*STAGES, "total")
    print(
        f"{'blocks':>8} " + " ".join(f"{k:>13}" for k in names) + f" {'wall total':>10} {'weights GB':>10} "
        f"{'peak sampling GB':>16} {'peak decoding GB':>16}"
    )

    def line(label: str, seconds: dict[str, float], wall: float | None, mem: Sequence[float]) -> None:
        walls = f"{wall:10.2f}" if wall is not None else f"{'-':>10}"
        print(
            f"{label:>8} " + " ".join(f"{seconds[k]:13.2f}" for k in names) + f" {walls} {mem[0]:10.2f} "
            f"{mem[1]:16.2f} {mem[2]:16.2f}"
        )

    for r in rows:
        line(str(r["blocks"]), r[clock], r["seconds"]["total"], [r[k] for k in MEMORY_KEYS])
    if ext is not None:
        for label, key in (("/block", "per_block"), (f"{ext['depth']} (fit)", "at_depth")):
            seconds = {k: ext[clock][k][key] for k in names}
            # A shared CPU's wall clock is not fitted: its runs differ by other processes' load, not by blocks.
            wall = ext["seconds"]["total"][key] if clock == "seconds" else None
            line(label, seconds, wall, [ext["memory"][k][key] for k in MEMORY_KEYS])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="nsarm-8b", help="NSARM preset (nsarm_core/models/nsarm.py)")
    p.add_argument(
        "--blocks", default=None, help="comma list of block counts (default: 2,4 on CPU, all on CUDA)"
    )
    p.add_argument("--device", default="auto", help="auto (cuda if visible, else cpu), cpu, cuda, cuda:N")
    p.add_argument(
        "--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 on CUDA, fp32 on CPU"
    )
    p.add_argument(
        "--offload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="VAE on the CPU between uses (default: on CUDA, as load_pipeline)",
    )
    p.add_argument("--text-tokens", type=int, default=16, help="rows of the synthetic T5 embedding")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed windows first (default: 1 on CUDA, 0 on CPU)"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed windows, median kept (default: 3 CUDA, 1 CPU)"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 keeps a shared CPU's timings stable)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights and text")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="no run: the table and fits of the rows of an earlier --json-out",
    )
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if cuda else "fp32")
    offload = args.offload if args.offload is not None else cuda
    warmup = args.warmup if args.warmup is not None else (1 if cuda else 0)
    repeats = args.repeats if args.repeats is not None else (3 if cuda else 1)
    base = get_preset(args.preset)
    blocks = (
        [int(b) for b in args.blocks.split(",")]
        if args.blocks
        else ([base.transformer.depth] if cuda else [2, 4])
    )
    if base.transformer.use_text and not 1 <= args.text_tokens <= base.transformer.text_maxlen:
        raise SystemExit(f"nsarm8b_synthetic.py: --text-tokens must be in 1..{base.transformer.text_maxlen}")

    if args._child:  # one block count, in this fresh process; the parent reads the last line
        torch.set_num_threads(args.threads)
        record = measure(
            reduced_config(base, blocks[0]),
            device=device,
            dtype=dtype,
            offload=offload,
            text_tokens=args.text_tokens,
            warmup=warmup,
            repeats=repeats,
            seed=args.seed,
        )
        print(json.dumps(record))
        return 0

    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        return report(payload["rows"], payload["meta"], args.json_out)
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "preset": args.preset,
        "device": device,
        "dtype": dtype,
        "offload": offload,
        "warmup": warmup,
        "repeats": repeats,
        "threads": args.threads,
        "seed": args.seed,
        "text": "synthetic (no T5)",
    }
    rows = []
    for n in blocks:  # a fresh process per block count: one run's peak cannot hide in another's
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            "--preset",
            args.preset,
            "--blocks",
            str(n),
            "--device",
            device,
            "--dtype",
            dtype,
            "--offload" if offload else "--no-offload",
            "--text-tokens",
            str(args.text_tokens),
            "--warmup",
            str(warmup),
            "--repeats",
            str(repeats),
            "--threads",
            str(args.threads),
            "--seed",
            str(args.seed),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"nsarm8b_synthetic.py: the run with {n} blocks failed:\n{out.stderr[-4000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{n} blocks done in {rows[-1]['seconds']['total']:.1f} s", flush=True)
    return report(rows, meta, args.json_out)


def report(rows: Sequence[dict[str, Any]], meta: dict[str, Any], json_out: Path | None) -> int:
    """Print the table, the fits and the comparison with the paper and docs/memory.md; write the JSON."""
    cuda, dtype, offload = meta["device"].startswith("cuda"), meta["dtype"], meta["offload"]
    depth = get_preset(meta["preset"]).transformer.depth
    ext = extrapolate(rows, depth)
    # On a CPU the stages are shown in CPU seconds: the wall clock of a shared machine also counts other
    # processes' turns, while one thread's CPU time is what the window costs alone. On CUDA: wall seconds.
    clock = "seconds" if cuda else "cpu_seconds"
    r0 = rows[0]
    print(
        f"\n{meta['preset']}, synthetic weights: {r0['device_name']}, {dtype}, {r0['threads']} thread(s), width "
        f"{r0['width']}, {r0['tokens']} tokens, LR {r0['lr_size'][0]} -> HR {r0['hr_size'][0]}; stages in "
        f"{'wall' if cuda else 'CPU'} seconds; memory: {r0['memory_kind']}, GB = 10^9 B"
    )
    print_table(rows, ext, clock)
    reference = reference_figures(rows, ext, dtype, offload, clock) if meta["preset"] == "nsarm-8b" else None
    if reference is not None:
        print(
            f"\n{depth} blocks, {reference['how']}: {reference['seconds_per_1024_output']:.2f} "
            f"{'wall' if cuda else 'CPU'} s per 1024x1024 output (paper: {PAPER_SECONDS_A800} s on an A800); peak "
            f"{reference['peak_gb']:.2f} GB (docs/memory.md: {reference['memory_md_peak_gb']:.2f} GB for {dtype}, "
            f"offload={offload}, cfg 1, without T5)"
        )
    if json_out is not None:
        payload = {"meta": meta, "rows": list(rows), "extrapolation": ext, "reference": reference}
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How many native windows the SR pipeline runs at once: a batch size from a memory budget.

``SRPipeline.upscale`` plans all windows of an image and runs the encoder, the transformation network and the
sampler (with its KV cache) on a batch of them, then the decoder on chunks of that batch. Batching pays where
every operation is tiny (nsarm-tiny's 64 px windows: the autoregressive stage runs 2.4x faster per window at 8
windows than at 1 on one CPU thread); the decoder is the exception on a CPU: its full-resolution activations
(16 MiB per nsarm-tiny window) measured 1.5x slower per window at 4 windows than at 1 with glibc's default
allocator (page faults on every allocation above its mmap threshold, nsarm_core/allocator.py), and with freed
memory kept, 2 windows per call gained nothing over 1 in the whole pipeline (bf16 and fp32, two runs each), so on
a CPU it decodes one window at a time (:func:`decode_chunk`).

Memory per window (bytes; formulas of docs/memory.md, ``s`` = bytes per value of the run's dtype, ``P`` output
pixels of one window, ``p`` LR pixels, ``L`` tokens of the schedule):

* batched stages: VAE encoder activations ``4 * C0 * p * 4`` (fp32), the self-attention KV cache
  ``depth * 2 * L * C * s``, and the window's colour-fixed output with the colour fix's intermediates
  (``16 * 3 * P * 4``);
* the decoder, per window in a decode chunk: ``4 * C1 * P * s`` (its measured peak), doubled for the CFW module
  (the LR feature pyramid and the concatenated fusion input at full resolution). The stages run one after the
  other, so on a GPU (the whole batch decodes at once) a batch needs the larger of the two per window; on a CPU
  one decoder's worth plus the batched stages.

The budget is a quarter of the memory available on a CPU (at most 2 GiB) and half of the free memory on a GPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from nsarm_core.latent_stitch import DECODE_OVERLAP
from nsarm_core.models.nsarm import NSARMConfig

# Re-exported: the rule lives with the other run-option rules, which load without torch.
from nsarm_core.upscaler import check_batch_windows as check_batch_windows

logger = logging.getLogger(__name__)

MAX_AUTO_BATCH = 16  # the autoregressive stage gains little beyond this (nsarm-tiny: 8 windows -> 2.4x)
CPU_BUDGET_CAP = 2 * 2**30


def window_bytes(config: NSARMConfig, dtype: torch.dtype) -> tuple[int, int]:
    """Estimated bytes of one window: ``(in the batched stages, in the decoder)`` (see the module docstring)."""
    s = torch.finfo(dtype).bits // 8
    vae, tr = config.vae, config.transformer
    lr_px = config.lr_size[0] * config.lr_size[1]
    hr_px = config.hr_size[0] * config.hr_size[1]
    tokens = sum(h * w for h, w in config.schedule.token_grids)
    encoder = 4 * vae.base_ch * vae.ch_mult[0] * lr_px * 4
    kv_cache = tr.depth * 2 * tokens * tr.embed_dim * s
    output = 16 * 3 * hr_px * 4
    decoder = 4 * vae.base_ch * vae.ch_mult[1] * hr_px * s * (2 if config.cfw is not None else 1)
    return encoder + kv_cache + output, decoder


def decode_chunk(device: torch.device, batch: int) -> int:
    """Windows per decoder call: 1 on a CPU (cache-bound, see the module docstring), the whole batch elsewhere."""
    return 1 if device.type == "cpu" else batch


#: The largest decode tile on a CPU, output pixels per side: past it the decoder's time per pixel on one thread
#: grows, first read as cache effects (nsarm-tiny, bf16 + CFW, decode + colour fix: 2.2-2.4 s/MP for 256-384 px
#: tiles, 3.2 at 512 px, 6.0 at 1024 px). Most of it is page faults: activations above glibc's 32 MiB mmap
#: threshold are mapped fresh for every allocation (nsarm_core/allocator.py). With freed memory kept (what the
#: ``nsarm`` commands set), decoder + CFW alone, one thread: bf16 1.72 / 1.63 / 1.75 / 2.40 s/MP at 256 / 384 /
#: 512 / 768 px, fp32 3.07 / 3.34 / 4.36 / 6.01; 384 px stays the cap.
CPU_DECODE_TILE_PX = 384


def decode_tile_side(
    config: NSARMConfig, dtype: torch.dtype, device: torch.device, budget: int | None = None
) -> int:
    """The side of the largest decode tile of latent stitching (:mod:`nsarm_core.latent_stitch`), latent pixels:
    what ``budget`` bytes (default :func:`memory_budget`) hold at the decoder's bytes per output pixel (module
    docstring, plus the colour fix), and on a CPU at most :data:`CPU_DECODE_TILE_PX` output pixels."""
    budget = memory_budget(device) if budget is None else budget
    _, decoder = window_bytes(config, dtype)
    hr_px = config.hr_size[0] * config.hr_size[1]
    per_px = decoder / hr_px + 16 * 3 * 4
    side_px = int((budget / per_px) ** 0.5)
    if device.type == "cpu":
        side_px = min(side_px, CPU_DECODE_TILE_PX)
    return max(side_px // config.vae.patch_size, 2 * DECODE_OVERLAP + 1)


def memory_budget(device: torch.device) -> int:
    """Bytes the batched windows may take: a quarter of the available RAM (<= 2 GiB) on a CPU, half the free GPU
    memory on CUDA, 2 GiB on other devices."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    if device.type == "cpu":
        available = _available_ram()
        return min(CPU_BUDGET_CAP, available // 4) if available is not None else CPU_BUDGET_CAP
    return CPU_BUDGET_CAP


def _available_ram(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` of Linux in bytes, else the physical memory from ``sysconf``; None when neither is known."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def auto_batch_windows(
    config: NSARMConfig, dtype: torch.dtype, device: torch.device, budget: int | None = None
) -> int:
    """The number of windows per batch that fits ``budget`` bytes (default :func:`memory_budget`), in
    ``[1, MAX_AUTO_BATCH]``."""
    budget = memory_budget(device) if budget is None else budget
    batched, decoder = window_bytes(config, dtype)
    if decode_chunk(device, MAX_AUTO_BATCH) == 1:
        n = (budget - decoder) // batched
    else:  # the KV cache is freed before the decoder runs on the same batch: the larger of the two counts
        n = budget // max(batched, decoder)
    n = int(max(1, min(MAX_AUTO_BATCH, n)))
    logger.debug(
        "batch of %d windows: %.0f MiB per window batched + %.0f MiB decoder, budget %.0f MiB",
        n, batched / 2**20, decoder / 2**20, budget / 2**20,
    )  # fmt: skip
    return n

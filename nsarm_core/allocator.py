"""Keep freed memory mapped for reuse: glibc's ``malloc`` tuned for a process that runs convolution networks.

Not a paper component. A decoder forward on a CPU allocates and frees hundreds of activation tensors of 1-64 MiB.
With glibc's defaults, blocks above its (adaptive) mmap threshold are mapped fresh on every allocation and
unmapped on every free, and the heap's free top is handed back to the system (trimmed) past twice that threshold;
either way the next allocation of that size touches new pages, and the kernel zero-fills each 4 KiB page on first
touch. Measured on this project's CPU machine (one thread, bf16, nsarm-tiny's decoder + CFW on a 1024x1024 tile):
2.7 M page faults and 1.5 s of system time per decode, about half of its 3.2 s; the same tile at 384-512 px
faulted 10x less, which is what an earlier reading of the timings took for cache effects.

:func:`keep_freed_memory` sets two ``mallopt`` parameters of glibc:

* ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's largest allowed value on 64-bit systems): blocks below it come from the
  heap and are reused after a free instead of being unmapped; larger blocks are still mapped and unmapped, so one
  huge tensor does not stay in the heap after it is freed;
* ``M_TRIM_THRESHOLD`` = 128 MiB: up to that much free memory at the heap's top is kept instead of being handed
  back. A larger value (1 GiB was tried) let Real-ESRGAN's heap fragment to about twice its peak RSS at a 1 MP
  output; 128 MiB kept most of that off and all of nsarm-tiny's gain.

Measured on a 256 -> 1024 px upscale, one thread, CPU seconds per output megapixel, glibc's defaults -> kept (one
run each): nsarm-tiny fp32 7.5 -> 6.2 (pixel stitching) and 6.3 -> 4.7 (latent stitching), bf16 3.8 -> 3.8 and
3.3 -> 2.8; Real-ESRGAN x4plus fp32 13.9 -> 10.8, bf16 6.3 -> 6.1. The benchmark of record is
``benchmarks/speed.py --parts malloc`` (docs/model_card.md, "Inference time"): nsarm-tiny 1.12x (bf16) and 1.24x
(fp32) faster with its peak RSS unchanged, Real-ESRGAN 1.04x and 1.15x with its peak RSS 10-29 % higher (its
1024 px activations are above 32 MiB, so they are still mapped fresh; the smaller ones now stay in the heap).

Setting either parameter also turns off glibc's adaptive threshold, so the effect does not depend on what the
process allocated before. It is process-wide: the ``nsarm`` commands that run models call it once before loading
one; a Python program calls it itself if it wants it. Nothing is done (and ``False`` returned) on a C library other
than glibc (macOS, Windows, musl), when another allocator such as jemalloc is preloaded (it has its own policy;
glibc's parameters would not reach it), or when ``NSARM_MALLOC=system`` is set.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["MALLOC_ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

logger = logging.getLogger(__name__)

#: Environment variable: ``system`` keeps the C library's own allocator settings.
MALLOC_ENV = "NSARM_MALLOC"
#: Blocks below this come from the heap (glibc's ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit: larger values are refused).
MMAP_THRESHOLD = 32 * 2**20
#: The heap's free top kept before glibc hands memory back to the system (see the module docstring for why not more).
TRIM_THRESHOLD = 128 * 2**20

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None  # the outcome of the first call: the setting is process-wide, one call decides


def keep_freed_memory() -> bool:
    """Tune glibc's ``malloc`` to keep freed blocks below 32 MiB for reuse (module docstring). Idempotent.

    Returns:
        True when the parameters were set (now or by an earlier call), False when nothing was changed: not glibc,
        another allocator preloaded, ``NSARM_MALLOC=system``, or ``mallopt`` refused a value.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = _apply()
    return _applied


def _apply() -> bool:
    choice = os.environ.get(MALLOC_ENV, "").strip().lower()
    if choice == "system":
        logger.debug("%s=system: the C library's allocator settings are kept", MALLOC_ENV)
        return False
    if choice not in ("", "keep"):
        logger.warning(
            "%s=%s is not a known value (system or keep); keeping freed memory", MALLOC_ENV, choice
        )
    if not sys.platform.startswith("linux"):
        return False
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        logger.debug("allocator preloaded (%s): glibc's malloc settings left alone", preload)
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl and others lack it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if ok:
        logger.debug("glibc malloc: blocks below %d MiB kept for reuse after a free", MMAP_THRESHOLD // 2**20)
    else:
        logger.warning("glibc's mallopt refused the allocator settings; running with its defaults")
    return ok

"""Does this CPU compute bf16 natively? Read from the CPU's own feature flags, never guessed from its name.

Why it matters: ``--dtype auto`` picks bf16 on a CPU only where bf16 arithmetic is native. With AVX512-BF16
(``avx512_bf16``: dot products of bf16 pairs) or AMX (``amx_bf16``: bf16 tile multiplies) oneDNN runs nsarm-tiny's
decoder convolutions in bf16 about 3x faster than in fp32; without them (e.g. an AVX2-only CPU) bf16 is
emulated and was measured 75-80x slower than fp32 (docs/model_card.md), so fp32 is the default there.

``torch.backends.cpu.get_cpu_capability()`` only says ``AVX512`` or ``AVX2``, which does not tell whether bf16
is native (AVX-512 without the BF16 extension exists), so the flags come from Linux's ``/proc/cpuinfo``.
Elsewhere (macOS, Windows) the answer is "not known", and fp32 is used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str] | None:
    """The feature flags of the first CPU listed in ``cpuinfo`` (default :data:`CPUINFO`, Linux's), or None when
    there is no such file."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """True when ``flags`` (default: this CPU's, :func:`cpu_flags`) include AVX512-BF16 or AMX-BF16."""
    if flags is None:
        flags = cpu_flags()
        if flags is None:
            logger.debug("no %s: native bf16 unknown, taken as absent", CPUINFO)
            return False
    return not NATIVE_BF16_FLAGS.isdisjoint(flags)

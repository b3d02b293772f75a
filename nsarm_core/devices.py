"""Device names and thread counts: one check shared by every command that runs torch.

Not a paper component. ``--device`` reads the same in ``upscale``, ``degrade``, ``evaluate`` and ``caption``
(``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), and a device that this machine does not have is refused
with one line before any work, instead of deep inside torch after the model was loaded.
"""

from __future__ import annotations

import os
import sys

from nsarm_core.errors import ConfigError
from nsarm_core.upscaler import check_device_name

__all__ = ["check_device", "available_cores", "set_torch_threads"]


def check_device(device: str) -> str:
    """``device`` unchanged if this machine can run on it; ``auto`` always passes (it picks what exists).

    Raises:
        ConfigError: an unknown name, a CUDA device on a machine without CUDA, a CUDA index past the last GPU,
            or MPS where it is not available. The message is one line and names the fix.
    """
    check_device_name(device)  # the name rule, shared with the pipeline's resolve_device
    if device in ("auto", "cpu"):
        return device
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: CUDA is not available on this machine (no NVIDIA GPU or a CPU-only torch "
                "build); use --device cpu or auto"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return device
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise ConfigError("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return device


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under ``taskset`` or a container quota)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def set_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count; returns the count set.

    ``None`` means: ``$OMP_NUM_THREADS`` when the user set it, else :func:`available_cores`. When torch is not
    imported yet, the count goes to ``$OMP_NUM_THREADS``, which torch reads when (and if) it is imported: a run
    that never needs torch (the interpolation baselines) does not import it for this.

    Raises:
        ConfigError: ``threads < 1``.
    """
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        threads = int(env) if env.isdigit() and int(env) > 0 else available_cores()
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        torch.set_num_threads(threads)
    return threads

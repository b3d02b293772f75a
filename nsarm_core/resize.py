"""Resizing: every resampling filter of the project in one place, so "bicubic" means one thing per use.

Not a paper component. Three filters with three reasons (docs/architecture.md E.7 for the colour fix):

* :func:`interpolate` - the interpolation baselines (``--model bicubic``, ``nsarm evaluate --model bicubic`` and
  the robustness sweep's ``--sweep-method bicubic``): torch ``F.interpolate`` (bicubic ``a = -0.75``,
  ``align_corners=False``) on float images, clamped; Lanczos-3 through Pillow (torch has none).
* :func:`pil_bicubic` - the colour-fix reference: NSARM's ``color_adjust`` upsamples the LR with Pillow's bicubic
  (``a = -0.5``), so ours does too, on float channels (no 8-bit rounding between Pillow's two passes).
* :func:`resize_to_scale` - a model output made at its native factor resized to any other factor: bicubic,
  antialiased when shrinking.

torch is imported inside the functions that use it, so the mode names (``nsarm models`` lists them) load
without it.

Shape legend: ``x`` / ``img`` ``[B, C, h, w]`` float (``B = 1`` for the Pillow paths); ``alpha`` ``[H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from nsarm_core.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "INTERPOLATION_MODES",
    "BASELINE_DESCRIPTIONS",
    "interpolate",
    "pil_resize",
    "pil_bicubic",
    "resize_to_scale",
    "resize_alpha",
]

#: The interpolation baselines (``nsarm upscale --model bicubic`` and friends).
INTERPOLATION_MODES: tuple[str, ...] = ("bicubic", "bilinear", "nearest", "lanczos")

#: One line per baseline, for ``nsarm models``.
BASELINE_DESCRIPTIONS: dict[str, str] = {
    "bicubic": "Bicubic interpolation (a = -0.75, as torch and OpenCV), clamped to [0, 1].",
    "bilinear": "Bilinear interpolation, as torch's F.interpolate(align_corners=False).",
    "nearest": "Nearest-neighbour pixel replication.",
    "lanczos": "Lanczos-3 interpolation (Pillow's), on float channels, clamped to [0, 1].",
}


def interpolate(x: Tensor, size: Sequence[int], mode: str = "bicubic") -> Tensor:
    """Resize ``x`` ``[1, C, h, w]`` in [0, 1] to ``size = (H, W)`` with an interpolation baseline, clamped.

    bicubic / bilinear: ``F.interpolate(align_corners=False)``; nearest: ``F.interpolate``; lanczos: Pillow's
    Lanczos-3 on float channels. Clamped to [0, 1] because cubic kernels overshoot at edges.

    Raises:
        ConfigError: ``mode`` is not one of :data:`INTERPOLATION_MODES`.
    """
    import torch.nn.functional as F

    if mode not in INTERPOLATION_MODES:
        raise ConfigError(f"unknown interpolation baseline {mode!r}; valid: {list(INTERPOLATION_MODES)}")
    size = (int(size[0]), int(size[1]))
    if mode == "lanczos":
        out = pil_resize(x, size, "lanczos")
    elif mode == "nearest":
        out = F.interpolate(x.float(), size=size, mode="nearest")
    else:
        out = F.interpolate(x.float(), size=size, mode=mode, align_corners=False)
    return out.clamp_(0.0, 1.0)


def pil_resize(x: torch.Tensor, size: Sequence[int], resample: str = "bicubic") -> torch.Tensor:
    """Resize ``[1, C, h, w]`` float to ``size = (H, W)`` with Pillow's filter on float ("F") channels.

    Pillow's kernels differ from torch's (bicubic a = -0.5 vs -0.75; torch has no Lanczos); float channels avoid
    the uint8 rounding and clipping between Pillow's two passes. The result is not clamped.
    """
    import torch
    from PIL import Image as PILImage

    filt = {"bicubic": PILImage.Resampling.BICUBIC, "lanczos": PILImage.Resampling.LANCZOS}[resample]
    h, w = int(size[0]), int(size[1])
    channels = [
        np.asarray(PILImage.fromarray(c, mode="F").resize((w, h), filt), dtype=np.float32)
        for c in x[0].detach().float().cpu().numpy()
    ]
    return torch.from_numpy(np.stack(channels))[None]


def pil_bicubic(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resize ``[1, C, h, w]`` in [0, 1] to ``size`` with Pillow's bicubic (as NSARM's color_adjust), clamped."""
    return pil_resize(x, size, "bicubic").clamp_(0, 1)


def resize_to_scale(
    img: Tensor,
    target_scale: float,
    native_scale: int,
    *,
    clamp: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """Resize a model output made at ``native_scale`` to the requested ``target_scale``.

    The model always upscales by its native factor (4). Other factors resize its output: downscaling
    (``target < native``) uses bicubic with antialiasing (a low-pass filter first, so fine detail does not alias);
    upscaling (``target > native``) uses plain bicubic. Both use ``align_corners=False``. The result is clamped
    because bicubic overshoots at edges.

    Args:
        img: ``[B, C, h, w]`` output of the model at ``native_scale`` (``h = H * native_scale``).
        target_scale: requested factor relative to the LR input, > 0 (e.g. 2, 3, 4, 2.5).
        native_scale: the model's factor.
        clamp: ``(low, high)`` range to clamp to (the pipeline's ``[0, 1]``), or None.

    Returns:
        ``[B, C, round(h * target / native), round(w * target / native)]``; ``img`` itself when the factors match.
    """
    if target_scale <= 0 or native_scale <= 0:
        raise ConfigError(f"scales must be positive, got target {target_scale}, native {native_scale}")
    if img.ndim != 4:
        raise InputError(f"resize_to_scale expects [B, C, h, w], got shape {tuple(img.shape)}")
    import torch.nn.functional as F

    if math.isclose(target_scale, native_scale):
        return img
    h, w = img.shape[-2:]
    size = (max(round(h * target_scale / native_scale), 1), max(round(w * target_scale / native_scale), 1))
    downscale = target_scale < native_scale
    src = img if img.is_floating_point() else img.float()
    out = F.interpolate(src, size=size, mode="bicubic", align_corners=False, antialias=downscale)
    if clamp is not None:
        out = out.clamp(*clamp)
    return out.to(img.dtype) if img.is_floating_point() else out


def resize_alpha(alpha: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of an alpha plane [H, W] to ``size_hw`` (antialiased when shrinking), clamped to [0, 1]."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    shrink = size_hw[0] < alpha.shape[0] or size_hw[1] < alpha.shape[1]
    out = F.interpolate(t, size=size_hw, mode="bicubic", align_corners=False, antialias=shrink)
    return np.ascontiguousarray(out[0, 0].clamp_(0.0, 1.0).numpy())

"""Resizing: every resampling filter of the project in one place, so "bicubic" means one thing per use.

Not a paper component. Three filters with three reasons (docs/architecture.md E.7 for the colour fix):

* :func:`interpolate` - the interpolation baselines (``--model bicubic``, ``nsarm evaluate --model bicubic`` and
  the robustness sweep's ``--sweep-method bicubic``): torch ``F.interpolate`` (bicubic ``a = -0.75``,
  ``align_corners=False``) on float images, clamped; Lanczos-3 through Pillow (torch has none).
  :func:`interpolate_array` is the same filter on numpy arrays, without torch, for whole-number factors (the
  baselines' case), so ``nsarm upscale --model bicubic`` never imports torch. Its bicubic replays torch's float32
  CPU kernel step by step (the source position ``scale * (i + 0.5) - 0.5``, the cubic weights and the tap sums,
  with the fused multiply-adds where torch's compiled AVX2/AVX-512 kernel has them), so the floats are the
  same bit for bit (tests/test_resize.py checks factors 1-8 against torch); nearest is the same pixel copy and
  lanczos is Pillow's either way. bilinear keeps torch: its float kernel rounds in an order not replayed here.
* :func:`pil_bicubic` - the colour-fix reference: NSARM's ``color_adjust`` upsamples the LR with Pillow's bicubic
  (``a = -0.5``), so ours does too, on float channels (no 8-bit rounding between Pillow's two passes).
* :func:`resize_to_scale` - a model output made at its native factor resized to any other factor: bicubic,
  antialiased when shrinking.

torch is imported inside the functions that use it, so the numpy paths and the mode names load without it.

Shape legend: ``x`` / ``img`` ``[B, C, h, w]`` float (``B = 1`` for the Pillow paths); ``alpha`` ``[H, W]``;
``rgb`` ``[h, w, C]`` float32 (the numpy paths).
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
    "ARRAY_MODES",
    "interpolate",
    "interpolate_array",
    "pil_resize",
    "pil_bicubic",
    "resize_to_scale",
    "resize_alpha",
]

#: The interpolation baselines (``nsarm upscale --model bicubic`` and friends).
INTERPOLATION_MODES: tuple[str, ...] = ("bicubic", "bilinear", "nearest", "lanczos")

#: The baselines :func:`interpolate_array` computes without torch (bit-identical to :func:`interpolate`).
ARRAY_MODES: tuple[str, ...] = ("bicubic", "nearest", "lanczos")

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
    """Bicubic resize of an alpha plane [H, W] to ``size_hw`` (antialiased when shrinking), clamped to [0, 1].

    An enlargement by whole-number factors (a baseline's output size) runs in numpy (:func:`interpolate_array`,
    the same floats as torch), so a baseline keeps images with alpha torch-free too.
    """
    if _whole_factors(alpha.shape, size_hw):
        plane = np.ascontiguousarray(alpha, dtype=np.float32)[:, :, None]
        return np.ascontiguousarray(interpolate_array(plane, size_hw, "bicubic")[:, :, 0])
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    shrink = size_hw[0] < alpha.shape[0] or size_hw[1] < alpha.shape[1]
    out = F.interpolate(t, size=size_hw, mode="bicubic", align_corners=False, antialias=shrink)
    return np.ascontiguousarray(out[0, 0].clamp_(0.0, 1.0).numpy())


# ------------------------------------------------------------------------------------------------------------
# The baselines without torch (numpy): torch's float32 CPU kernels replayed, for whole-number factors
# ------------------------------------------------------------------------------------------------------------

_F32 = np.float32


def _whole_factors(src_hw: Sequence[int], size_hw: Sequence[int]) -> bool:
    """True when ``size_hw`` is ``src_hw`` times a whole number >= 1 on each axis."""
    return all(o >= i >= 1 and o % i == 0 for i, o in zip(src_hw, size_hw, strict=True))


def _fma(a: np.ndarray, b: np.ndarray | np.float32, c: np.ndarray | np.float32) -> np.ndarray:
    """``a * b + c`` rounded once to float32, as a fused multiply-add of torch's compiled kernel: the product of
    two float32 is exact in float64, so one float64 add and one rounding give the fused result."""
    out = np.multiply(a, b, dtype=np.float64)
    out += c
    return out.astype(_F32)


def _cubic_taps(n_in: int, n_out: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Indices (clamped to the edge) and float32 weights of the 4 cubic taps (a = -0.75) of each output position,
    computed as torch's ``compute_indices_weights`` for bicubic (``area_pixel_compute_source_index``,
    ``guard_index_and_lambda``, ``get_cubic_upsample_coefficients``)."""
    a = _F32(-0.75)
    src = _fma(np.arange(n_out, dtype=_F32) + _F32(0.5), _F32(n_in) / _F32(n_out), _F32(-0.5))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    t = np.clip(src - i0.astype(_F32), _F32(0), _F32(1)).astype(_F32)

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1: ((a + 2) x - (a + 3)) x x + 1, its first step fused
        return (_fma(x, a + _F32(2), -(a + _F32(3))) * x * x + _F32(1)).astype(_F32)

    def far(
        x: np.ndarray,
    ) -> np.ndarray:  # 1 < |x| < 2: ((a x - 5a) x + 8a) x - 4a, its first two steps fused
        return (_fma(_fma(x, a, -_F32(5) * a), x, _F32(8) * a) * x - _F32(4) * a).astype(_F32)

    u = (_F32(1) - t).astype(_F32)
    weights = [far((t + _F32(1)).astype(_F32)), near(t), near(u), far((u + _F32(1)).astype(_F32))]
    return [np.clip(i0 + k - 1, 0, n_in - 1) for k in range(4)], weights


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """torch's ``nearest_idx``: ``min(floor(i * (n_in / n_out)), n_in - 1)`` in float32."""
    if n_out == n_in:
        return np.arange(n_out)
    if n_out == 2 * n_in:
        return np.arange(n_out) >> 1
    src = np.floor(np.arange(n_out, dtype=_F32) * (_F32(n_in) / _F32(n_out))).astype(np.int64)
    return np.minimum(src, n_in - 1)


def _tap_sum(taps: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    """``sum_k taps[k] * weights[k]`` in torch's order: ``fma(t0, w0, t1 * w1)``, then ``fma(tk, wk, sum)``."""
    acc = _fma(taps[0], weights[0], (taps[1] * weights[1]).astype(_F32))
    for tap, weight in zip(taps[2:], weights[2:], strict=True):
        acc = _fma(tap, weight, acc)
    return acc


def interpolate_array(rgb: np.ndarray, size: Sequence[int], mode: str = "bicubic") -> np.ndarray:
    """:func:`interpolate` on an ``[h, w, C]`` float32 array, without torch: ``size = (H, W)``, clamped to [0, 1].

    bicubic and nearest take whole-number factors (``H = k h``, ``W = m w``: the baselines' native factors), for
    which they give :func:`interpolate`'s floats bit for bit; lanczos (Pillow's) takes any size.

    Raises:
        ConfigError: ``mode`` is not one of :data:`ARRAY_MODES`, or bicubic / nearest was asked for a size that
            is not a whole-number multiple (:func:`interpolate` does those).
        InputError: ``rgb`` is not ``[h, w, C]``.
    """
    if mode not in ARRAY_MODES:
        raise ConfigError(f"interpolate_array does {', '.join(ARRAY_MODES)}, not {mode!r} (use interpolate)")
    if rgb.ndim != 3:
        raise InputError(f"interpolate_array expects an array [h, w, C]; got shape {tuple(rgb.shape)}")
    x = np.ascontiguousarray(rgb, dtype=_F32)
    (h, w), (oh, ow) = x.shape[:2], (int(size[0]), int(size[1]))
    if mode == "lanczos":
        from PIL import Image as PILImage

        planes = [
            np.asarray(
                PILImage.fromarray(np.ascontiguousarray(c), mode="F").resize(
                    (ow, oh), PILImage.Resampling.LANCZOS
                )
            )
            for c in x.transpose(2, 0, 1)
        ]
        return np.ascontiguousarray(np.stack(planes, axis=-1).astype(_F32).clip(0.0, 1.0))
    if not _whole_factors((h, w), (oh, ow)):
        raise ConfigError(
            f"interpolate_array does {mode} by whole-number factors only; {w}x{h} -> {ow}x{oh} is not one "
            "(use nsarm_core.resize.interpolate)"
        )
    if mode == "nearest":
        return np.ascontiguousarray(x[_nearest_index(h, oh)][:, _nearest_index(w, ow)].clip(0.0, 1.0))
    (iy, wy), (ix, wx) = _cubic_taps(h, oh), _cubic_taps(w, ow)
    # torch sums the 4 taps along W for each of the 4 rows, then the rows. The row sums for an input row and an
    # output column are the same for every output row, so they are made once per input row (the same floats).
    across = _tap_sum([x[:, j] for j in ix], [wk[None, :, None] for wk in wx])  # [h, oW, C]
    out = _tap_sum([across[i] for i in iy], [wk[:, None, None] for wk in wy])  # [oH, oW, C]
    return np.ascontiguousarray(out.clip(0.0, 1.0))

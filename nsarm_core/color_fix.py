"""Colour correction of the SR output against the (upsampled) LR image: AdaIN and wavelet (spec E.7).

NSARM post-processes every output with ``infinity/utils/color_adjust.py::color_adjust`` (inherited from
StableSR's ``colorfix``): the LR is resized to the SR size with Pillow's default resample (bicubic), then
1. **AdaIN**: per channel, ``(SR - mean_SR) / std_SR * std_LR + mean_LR`` with std = sqrt(unbiased var + 1e-5),
   clamped to [0, 1];
2. **wavelet**: a 5-level a-trous decomposition (3x3 kernel [[1,2,1],[2,4,2],[1,2,1]]/16, dilation 2^i,
   replicate padding); output = high-frequency bands of SR + lowest band of LR, clamped to [0, 1].
NSARM applies both (AdaIN, then wavelet) by default. Each official step is a PIL round trip, which truncates
(does not round) to uint8; the functions here stay float (the uint8 replica used to check parity lives in
``tests/parity.py``).

Three rewrites compute the official fix with fewer operations; each is equal to it in exact arithmetic, so
only float rounding differs (``tests/test_color_fix.py`` keeps the official formulation and measures the
difference: at most ~2e-7 in fp32, no farther from the exact value than the official chain in bf16):
- AdaIN's variance is the two-pass sum of squared deviations / (N - 1) instead of ``torch.var`` (Welford),
  whose deviations AdaIN reuses (4x faster on a 256x256 window, one thread);
- the 3x3 kernel is the outer product of [1, 2, 1]/4 with itself, and replicate padding of a 2-D image is
  replicate padding of its rows, then of its columns; so one a-trous step is a horizontal 3-tap pass and a
  vertical 3-tap pass on shifted slices of the padded image (no depthwise convolution, which oneDNN runs slowly
  with a dilation; with the next point the wavelet fix is 7x faster on a 256x256 window, 18x on 1024x1024);
- every band is linear in the image and the bands sum to the image, so ``high(SR) + low(LR)`` equals
  ``SR + low(LR - SR)``: one decomposition of the difference instead of two.

Shape legend: B batch, C channels (3), H x W image size. Images are float tensors in [0, 1].
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from nsarm_core.errors import ConfigError, InputError
from nsarm_core.upscaler import COLOR_FIX_MODES  # the mode names, checked without torch by the batch layer

ColorFixMode = Literal["none", "adain", "wavelet", "both"]
WAVELET_LEVELS = 5
ADAIN_EPS = 1e-5


def _check_pair(sr: Tensor, lr: Tensor) -> None:
    if sr.ndim != 4 or lr.ndim != 4:
        raise InputError(
            f"colour fix expects [B, C, H, W] tensors, got sr {tuple(sr.shape)}, lr {tuple(lr.shape)}"
        )
    if sr.shape[:2] != lr.shape[:2]:
        raise InputError(f"colour fix: batch/channels differ, sr {tuple(sr.shape)} vs lr {tuple(lr.shape)}")


def _centred(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(x - mean, mean, std)`` per sample and channel of ``x`` ``[B, C, H, W]``; mean and std ``[B, C, 1, 1]``.

    The variance is the two-pass one, sum((x - mean)^2) / (N - 1): the official ``torch.var`` (Welford) up to
    float rounding, 3x faster on one thread, and its deviations are the ones AdaIN needs anyway.
    """
    b, c, h, w = x.shape
    mean = x.mean(dim=(2, 3), keepdim=True)
    centred = x - mean
    # unbiased (N - 1), as the official torch.var default
    var = centred.square().sum(dim=(2, 3), keepdim=True) / (h * w - 1) + eps
    return centred, mean, var.sqrt()


def calc_mean_std(x: Tensor, eps: float = ADAIN_EPS) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and std over H x W; std = sqrt(unbiased variance + eps).

    Args:
        x: ``[B, C, H, W]``.

    Returns:
        ``(mean [B, C, 1, 1], std [B, C, 1, 1])``.
    """
    _, mean, std = _centred(x, eps)
    return mean, std


def adaptive_instance_normalization(content: Tensor, style: Tensor) -> Tensor:
    """AdaIN without clamping: give ``content`` the per-channel mean/std of ``style``.

    Args:
        content: ``[B, C, H, W]`` (the SR image).
        style: ``[B, C, H', W']`` (the LR image; its size may differ, only its statistics are used).

    Returns:
        ``[B, C, H, W]``.
    """
    _check_pair(content, style)
    style_mean, style_std = calc_mean_std(style)
    content_centred, _, content_std = _centred(content, ADAIN_EPS)
    return content_centred / content_std * style_std + style_mean  # official: (content - mean) / std * ...


def _binomial_pass(x: Tensor, radius: int, dim: int) -> Tensor:
    """``([1, 2, 1] / 4)`` along ``dim`` (2 = rows, 3 = columns) with taps ``radius`` apart, replicate padding."""
    n = x.shape[dim]
    xp = F.pad(x, (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius), mode="replicate")
    before, centre, after = xp.narrow(dim, 0, n), xp.narrow(dim, radius, n), xp.narrow(dim, 2 * radius, n)
    return (before + after).add_(centre, alpha=2).mul_(0.25)  # x2 and /4 are exact in binary floats


def wavelet_blur(x: Tensor, radius: int) -> Tensor:
    """One a-trous smoothing step: 3x3 binomial kernel with dilation ``radius``, replicate padding.

    The official step is a depthwise ``conv2d`` with the kernel [[1,2,1],[2,4,2],[1,2,1]]/16 on the image padded by
    ``radius`` (replicate); the kernel is separable, so it runs here as a pass along the columns, then one along
    the rows, which gives the same image up to float rounding (see the module docstring).

    Args:
        x: ``[B, C, H, W]`` (any size; padding wider than the image repeats its edge, as the official one).
        radius: dilation (2^level).

    Returns:
        ``[B, C, H, W]``.
    """
    return _binomial_pass(_binomial_pass(x, radius, 3), radius, 2)


def wavelet_lowpass(x: Tensor, levels: int = WAVELET_LEVELS) -> Tensor:
    """The lowest-frequency band of :func:`wavelet_decomposition` alone: ``levels`` blurs, dilation 2^i.

    Args:
        x: ``[B, C, H, W]``.
        levels: number of levels (official 5).

    Returns:
        ``[B, C, H, W]``.
    """
    for i in range(levels):
        x = wavelet_blur(x, 2**i)
    return x


def wavelet_decomposition(x: Tensor, levels: int = WAVELET_LEVELS) -> tuple[Tensor, Tensor]:
    """A-trous wavelet decomposition: ``(sum of the high-frequency bands, lowest-frequency band)``.

    ``high + low == x`` up to rounding. Level i blurs with dilation 2^i.

    Args:
        x: ``[B, C, H, W]``.
        levels: number of levels (official 5).

    Returns:
        ``(high [B, C, H, W], low [B, C, H, W])``.
    """
    high = torch.zeros_like(x)
    low = x
    for i in range(levels):
        low = wavelet_blur(x, 2**i)
        high = high + (x - low)
        x = low
    return high, low


def wavelet_reconstruction(content: Tensor, style: Tensor) -> Tensor:
    """High-frequency bands of ``content`` + lowest band of ``style`` (no clamping), as one decomposition.

    Args:
        content: ``[B, C, H, W]`` (SR).
        style: ``[B, C, H, W]`` (LR upsampled to the SR size).

    Returns:
        ``[B, C, H, W]``.
    """
    _check_pair(content, style)
    if content.shape != style.shape:
        raise InputError(
            f"wavelet colour fix needs the LR upsampled to the SR size: sr {tuple(content.shape)} vs lr "
            f"{tuple(style.shape)}"
        )
    # Official: wavelet_decomposition(content)[0] + wavelet_decomposition(style)[1]. The decomposition is linear
    # and high(x) = x - low(x), so that is content + low(style) - low(content) = content + low(style - content).
    return content + wavelet_lowpass(style - content)


def adain_color_fix(sr: Tensor, lr: Tensor) -> Tensor:
    """AdaIN colour fix, clamped to [0, 1]. sr ``[B, 3, H, W]``, lr ``[B, 3, H', W']`` -> ``[B, 3, H, W]``."""
    return adaptive_instance_normalization(sr, lr).clamp(0.0, 1.0)


def wavelet_color_fix(sr: Tensor, lr_upsampled: Tensor) -> Tensor:
    """Wavelet colour fix, clamped to [0, 1]. Both ``[B, 3, H, W]`` in [0, 1]."""
    return wavelet_reconstruction(sr, lr_upsampled).clamp(0.0, 1.0)


def color_fix(sr: Tensor, lr_upsampled: Tensor, mode: ColorFixMode = "both") -> Tensor:
    """Colour-correct an SR image against the LR image upsampled to the same size (float, no uint8 steps).

    Args:
        sr: ``[B, 3, H, W]`` in [0, 1].
        lr_upsampled: ``[B, 3, H, W]`` in [0, 1] (NSARM uses Pillow's bicubic resize of the LR).
        mode: ``"none"``, ``"adain"``, ``"wavelet"`` or ``"both"`` (AdaIN then wavelet; NSARM's default).

    Returns:
        ``[B, 3, H, W]`` in [0, 1] (``sr`` itself for ``"none"``).
    """
    if mode not in COLOR_FIX_MODES:
        raise ConfigError(f"unknown colour-fix mode {mode!r}; valid: {list(COLOR_FIX_MODES)}")
    _check_pair(sr, lr_upsampled)
    if sr.shape != lr_upsampled.shape:
        raise InputError(
            f"color_fix needs the LR upsampled to the SR size: sr {tuple(sr.shape)} vs lr {tuple(lr_upsampled.shape)}"
        )
    out = sr
    if mode in ("adain", "both"):
        out = adain_color_fix(out, lr_upsampled)
    if mode in ("wavelet", "both"):
        out = wavelet_color_fix(out, lr_upsampled)
    return out


__all__ = [
    "COLOR_FIX_MODES",
    "ColorFixMode",
    "adain_color_fix",
    "adaptive_instance_normalization",
    "calc_mean_std",
    "color_fix",
    "wavelet_blur",
    "wavelet_color_fix",
    "wavelet_decomposition",
    "wavelet_lowpass",
    "wavelet_reconstruction",
]

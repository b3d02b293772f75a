"""Multi-scale Binary Spherical Quantisation (BSQ) of a VAE latent: the residual scales NSARM works on.

Paper: NSARM (arXiv 2510.00820) Eq. 2 and Alg. 1 (decomposition of the HR latent into per-scale residual
bits), Alg. 2 (the "modified GT" labels of stage 2); Infinity's ``MultiScaleBSQ`` and
``BitwiseSelfCorrection`` (spec: docs/architecture.md A.6, C.9, E.3, E.4).

Shape legend (4-D everywhere; the official code carries a T=1 axis that we drop):
    B  batch                      d  latent channels of the VAE (14 or 32; never the patchified 56)
    H, W  full latent grid        h_k, w_k  grid of scale k (VAE grid; the transformer's grid is half of it
                                  when the VAE latent is 2x2-patchified)
    codes  [B, d, h, w]  float, every position a unit vector with entries +-1/sqrt(d)
    bits   [B, h, w, d]  uint8 channels-last, 1 <-> +1/sqrt(d), 0 <-> -1/sqrt(d)

Why 4-D bilinear equals the official "trilinear": the official latents are ``[B, d, 1, h, w]`` and
trilinear interpolation to ``(1, H, W)`` with ``align_corners=False`` leaves the T axis alone, which is
exactly bilinear on the last two axes. "area" is adaptive average pooling (for non-integer ratios the
windows ``[floor(i*in/out), ceil((i+1)*in/out))`` overlap, which ``adaptive_avg_pool2d`` reproduces).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ResizeMode = Literal["area", "bilinear"]
Grid = tuple[int, int]


# ----------------------------------------------------------------------------------------------------------
# Per-position quantiser
# ----------------------------------------------------------------------------------------------------------


def bsq_quantize(x: Tensor, straight_through: bool = False) -> tuple[Tensor, Tensor]:
    """Binary spherical quantisation of every position of a latent map (spec A.6, "per-position BSQ step").

    The ``d`` channels at each position are l2-normalised and replaced by ``sign(.)/sqrt(d)``, so every code
    vector lies on the unit sphere. A component ``<= 0`` gives bit 0 (the official ``x > 0 ? +1 : -1``).

    Args:
        x: continuous latent ``[B, d, h, w]``.
        straight_through: return ``xn + (q - xn).detach()`` so gradients reach ``x`` (training, stage 2).

    Returns:
        ``(codes [B, d, h, w] float32, bits [B, h, w, d] uint8)``.
    """
    if x.dim() != 4:
        raise ValueError(f"bsq_quantize expects a [B, d, h, w] latent, got shape {tuple(x.shape)}")
    d = x.shape[1]
    xn = F.normalize(x.float(), dim=1, eps=1e-12)
    positive = xn > 0
    q = torch.where(positive, 1.0, -1.0).to(xn.dtype) * (1.0 / math.sqrt(d))
    codes = xn + (q - xn).detach() if straight_through else q
    bits = positive.permute(0, 2, 3, 1).to(torch.uint8)
    return codes, bits


def bits_to_codes(bits: Tensor) -> Tensor:
    """Bits ``[B, h, w, d]`` (0/1) to codes ``[B, d, h, w]`` with entries ``+-1/sqrt(d)`` (float32)."""
    if bits.dim() != 4:
        raise ValueError(f"bits_to_codes expects [B, h, w, d] bits, got shape {tuple(bits.shape)}")
    d = bits.shape[-1]
    codes = (bits.float() * 2.0 - 1.0) * (1.0 / math.sqrt(d))
    return codes.permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------------------
# Resampling and layout helpers
# ----------------------------------------------------------------------------------------------------------


def resize_latent(x: Tensor, size: Sequence[int], mode: ResizeMode) -> Tensor:
    """Resize a latent map ``[B, C, h, w]`` to ``size``; the identity when the size already matches.

    ``"area"`` is adaptive average pooling (the BSQ's ``z_interplote_down``); ``"bilinear"`` is
    ``align_corners=False`` without antialias (the official ``trilinear`` on a T=1 axis).
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "area":
        return F.adaptive_avg_pool2d(x, size)
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"unknown resize mode {mode!r}; expected 'area' or 'bilinear'")


def patchify(x: Tensor) -> Tensor:
    """``[B, d, 2h, 2w] -> [B, 4d, h, w]`` by 2x2 pixel-unshuffle; channel ``c*4 + dy*2 + dx`` (spec C.8)."""
    return F.pixel_unshuffle(x, 2)


def unpatchify(x: Tensor) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, 4d, h, w] -> [B, d, 2h, 2w]``."""
    return F.pixel_shuffle(x, 2)


def map_to_tokens(x: Tensor) -> Tensor:
    """``[B, C, h, w] -> [B, h*w, C]`` in row-major token order (the transformer's sequence layout)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(x: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`map_to_tokens`: ``[B, h*w, C] -> [B, C, h, w]``."""
    if x.shape[1] != h * w:
        raise ValueError(f"tokens_to_map: {x.shape[1]} tokens do not fill a {h}x{w} grid")
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


# ----------------------------------------------------------------------------------------------------------
# Bitwise self-correction (training only)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BitFlipConfig:
    """Infinity's bitwise self-correction (spec C.9): corrupt the history the transformer sees.

    For each scale ``k < layers`` a flip probability ``p`` is drawn uniformly from
    ``{0, 0.01, ..., strength}`` and every bit is flipped independently with probability ``p``. The labels
    stay the correct bits given the corrupted history.
    """

    layers: int = 13
    strength: float = 0.3

    def __post_init__(self) -> None:
        if self.layers < 0:
            raise ValueError(f"BitFlipConfig.layers must be >= 0, got {self.layers}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"BitFlipConfig.strength must be in [0, 1], got {self.strength}")


def flip_bits(bits: Tensor, flip: BitFlipConfig, generator: torch.Generator | None) -> Tensor:
    """Flip each bit with one probability drawn per call from ``{0, 0.01, ..., strength}``."""
    steps = int(round(flip.strength * 100))
    p_index = torch.randint(0, steps + 1, (1,), generator=generator, device="cpu").item()
    p = p_index / 100.0
    if p == 0.0:
        return bits
    mask = torch.rand(bits.shape, generator=generator, device="cpu").to(bits.device) < p
    return torch.where(mask, 1 - bits, bits)


# ----------------------------------------------------------------------------------------------------------
# Multi-scale decomposition (Alg. 1) and the modified GT labels (Alg. 2)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ResidualScales:
    """The per-scale decomposition of one latent.

    Attributes:
        bits: per scale ``[B, h_k, w_k, d]`` uint8, the bit labels of the transformer (cross-entropy targets).
        codes: per scale ``[B, d, h_k, w_k]``, the codes that were accumulated (after flips, if any).
        residuals: per scale ``[B, d, h_k, w_k]``, the continuous residual ``r_k`` before quantisation
            (the stage-1 regression targets, paper Eq. 4).
        f_hat: ``[B, d, H, W]``, the accumulated latent ``sum_k up(codes_k)`` that the decoder consumes.
    """

    bits: list[Tensor]
    codes: list[Tensor]
    residuals: list[Tensor]
    f_hat: Tensor


def _check_grids(latent: Tensor, grids: Sequence[Sequence[int]]) -> tuple[list[Grid], Grid]:
    if latent.dim() != 4:
        raise ValueError(f"expected a [B, d, H, W] latent, got shape {tuple(latent.shape)}")
    grids_t = [(int(g[0]), int(g[1])) for g in grids]
    if not grids_t:
        raise ValueError("the scale schedule is empty")
    full = (int(latent.shape[-2]), int(latent.shape[-1]))
    if grids_t[-1] != full:
        raise ValueError(f"the last scale {grids_t[-1]} must equal the latent grid {full}")
    return grids_t, full


def _decompose(
    latent: Tensor,
    grids: Sequence[Sequence[int]],
    predicted: Sequence[Tensor],
    flip: BitFlipConfig | None,
    generator: torch.Generator | None,
    straight_through: bool,
) -> ResidualScales:
    grids_t, full = _check_grids(latent, grids)
    if len(predicted) > len(grids_t):
        raise ValueError(f"{len(predicted)} predicted scales but the schedule has only {len(grids_t)}")
    residual = latent.float()
    f_hat = torch.zeros_like(residual)
    bits_all: list[Tensor] = []
    codes_all: list[Tensor] = []
    residuals_all: list[Tensor] = []
    for k, grid in enumerate(grids_t):
        if k < len(predicted):
            # Alg. 2: the first K_t residuals come from the transformation network, not from the HR latent.
            r_k = predicted[k].float()
            if tuple(r_k.shape[-2:]) != grid:
                raise ValueError(f"predicted scale {k} has grid {tuple(r_k.shape[-2:])}, expected {grid}")
        else:
            # Alg. 1: what the coarser scales have not explained yet, pooled to this scale's grid.
            r_k = resize_latent(residual, grid, "area")
        codes, bits = bsq_quantize(r_k, straight_through=straight_through)
        if flip is not None and k < flip.layers:
            flipped = flip_bits(bits, flip, generator)
            if flipped is not bits:
                codes = bits_to_codes(flipped).to(codes.dtype)
        up = resize_latent(codes, full, "bilinear")
        residual = residual - up
        f_hat = f_hat + up
        bits_all.append(bits)
        codes_all.append(codes)
        residuals_all.append(r_k)
    return ResidualScales(bits=bits_all, codes=codes_all, residuals=residuals_all, f_hat=f_hat)


def decompose_into_residual_scales(
    latent: Tensor,
    grids: Sequence[Sequence[int]],
    *,
    flip: BitFlipConfig | None = None,
    generator: torch.Generator | None = None,
    straight_through: bool = False,
) -> ResidualScales:
    """Decompose a continuous latent into per-scale residual bits (paper Eq. 2, Alg. 1; spec A.6).

    ``residual = F``; for each scale: ``r_k = area(residual, grid_k)``, ``q_k = BSQ(r_k)``,
    ``residual -= up(q_k)``, ``f_hat += up(q_k)``. Each scale adds a unit-norm vector field, so residual
    magnitudes are not preserved (that is the official behaviour).

    Args:
        latent: raw encoder latent ``[B, d, H, W]``.
        grids: VAE-grid sizes per scale, the last equal to ``(H, W)``.
        flip: optional bitwise self-correction (training only).
        generator: randomness for the flips.
        straight_through: keep gradients through the quantiser.
    """
    return _decompose(latent, grids, (), flip, generator, straight_through)


def modified_gt_labels(
    hr_latent: Tensor,
    predicted: Sequence[Tensor],
    grids: Sequence[Sequence[int]],
    *,
    flip: BitFlipConfig | None = None,
    generator: torch.Generator | None = None,
    straight_through: bool = False,
) -> ResidualScales:
    """The "modified GT" labels of stage 2 (paper Alg. 2; spec E.4).

    The first ``K_t = len(predicted)`` scales are the quantised transformation-network outputs (continuous
    maps ``[B, d, h_k, w_k]``, already raw-reshaped); every later label is computed from the part of the HR
    latent that those LR-derived codes leave unexplained. With ``predicted = []`` this equals
    :func:`decompose_into_residual_scales`.
    """
    return _decompose(hr_latent, grids, predicted, flip, generator, straight_through)


def accumulate_codes(codes: Sequence[Tensor], size: Sequence[int]) -> Tensor:
    """Sum of the bilinearly upsampled codes of the given scales: the accumulated latent ``[B, d, H, W]``."""
    if not codes:
        raise ValueError("accumulate_codes needs at least one scale")
    total = torch.zeros(
        codes[0].shape[0],
        codes[0].shape[1],
        int(size[0]),
        int(size[1]),
        dtype=codes[0].dtype,
        device=codes[0].device,
    )
    for c in codes:
        total = total + resize_latent(c, size, "bilinear")
    return total


def next_scale_input(f_hat_so_far: Tensor, grid: Sequence[int], mode: ResizeMode) -> Tensor:
    """The transformer input of the next scale: the accumulated latent resized to that scale's grid.

    Infinity (training and sampling) uses ``"bilinear"``; NSARM's released sampler uses ``"area"``
    (spec E.3, Open question 6), which is why this is an explicit argument.
    """
    return resize_latent(f_hat_so_far, grid, mode)


def teacher_forcing_inputs(
    codes: Sequence[Tensor], grids: Sequence[Sequence[int]], size: Sequence[int], mode: ResizeMode
) -> list[Tensor]:
    """Inputs of scales ``1..K-1`` given the codes of all scales (teacher forcing; spec C.9 step 3).

    Returns ``[next_scale_input(sum_{j<k} up(codes_j), grids[k], mode) for k in 1..K-1]``.
    """
    if len(codes) != len(grids):
        raise ValueError(f"{len(codes)} code maps for {len(grids)} scales")
    out: list[Tensor] = []
    acc = None
    for k in range(1, len(grids)):
        up = resize_latent(codes[k - 1], size, "bilinear")
        acc = up if acc is None else acc + up
        out.append(next_scale_input(acc, grids[k], mode))
    return out

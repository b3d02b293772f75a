"""Speck guard: find isolated specks the LR image does not explain and paint them over with the LR's bicubic.

WHY (our extension; not in the paper). nsarm-tiny's decoder draws isolated dark or rainbow-ringed dots,
5-15 output pixels wide, in flat areas (sky, skin, a leaf): a response of the small decoder to some local
constellations of the sampled fine-scale codes (docs/model_card.md, "Specks"). Decoding the latent after each
scale shows dots at every stage, in different places, and filtering isolated bits of the sampled scales only
moves them, so they are not single wrong bits that a latent-side rule could spot. They are, however, plain to
see against the input: an output averaged back down to the LR grid should match the LR up to rounding and noise,
and a speck leaves one sharp, isolated peak in that difference, often 10-40x the image's typical residual, while
the detail the model adds (texture, sharpened edges) averages out or leaves lines, not points.

The guard, on an output ``y`` (``[B, 3, s*h, s*w]``) and its LR ``x`` (``[B, 3, h, w]``):
1. residual ``e = max_c |area_s(y) - x|`` on the LR grid (area_s: the mean of each s x s block);
2. a **speck centre** is an LR pixel whose ``e`` is (a) above ``max(threshold, noise_factor * sigma)``, sigma
   the image's robust residual spread (1.4826 x the median absolute deviation, so noisy inputs need larger
   peaks), (b) a 3x3 local maximum, and (c) more than ``1 / ring_ratio`` times every residual on the square ring
   ``ring`` LR pixels away (isolated: a line or an edge continues through the ring, a dot does not). Near the
   image's border only the ring's pixels inside the image count, and at least half of the ring must be inside
   (:data:`MIN_RING_INSIDE`): a centre on an edge keeps 13 of the 24 pixels of ring 3, one within ``ring`` pixels
   of a corner 7-11, too few to tell a dot from noise;
3. the mask is each centre grown by ``grow`` LR pixels, upsampled to the output grid and feathered over
   ``2s + 1`` output pixels; inside it the output is replaced by the LR's bicubic upsampling (Pillow's kernel,
   as the colour fix uses), which is right for the flat areas specks sit in.

Everything outside the masks is returned unchanged, so an image without specks comes back bit for bit. Step 3
runs in bands of rows (:data:`BAND_ROWS`), only where there are specks, so the guard's memory stays that of one
band however large the image; the result is the whole-image computation's to the bit. The
defaults were chosen on training photos only (``scripts/tune_speck_guard.sh``), never on the held-out set.

Shape legend: B batch, h x w LR size, s the integer scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nsarm_core.errors import ConfigError, InputError, check_known_keys
from nsarm_core.resize import pil_bicubic

MAD_TO_SIGMA = 1.4826  # sigma of a normal distribution = 1.4826 x its median absolute deviation


@dataclass(frozen=True)
class SpeckGuardConfig:
    """When an LR pixel counts as a speck centre, and how much is painted over (module docstring, steps 2-3).

    Attributes:
        threshold: least residual (in [0, 1] intensity, worst channel) of a speck centre.
        noise_factor: a centre's residual must also exceed this many robust standard deviations of the image's
            residual (noisy inputs: only peaks well above their noise count).
        ring: distance, in LR pixels, of the square ring that must be quiet around a centre.
        ring_ratio: every residual on the ring must be below ``ring_ratio`` x the centre's.
        grow: LR pixels added around each centre before upsampling (a speck spans up to 4 LR pixels at x4).
    """

    threshold: float = 0.06
    noise_factor: float = 4.0
    ring: int = 3
    ring_ratio: float = 0.5
    grow: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"speck_guard.threshold must be in (0, 1), got {self.threshold}")
        if not self.noise_factor >= 0.0:
            raise ConfigError(f"speck_guard.noise_factor must be >= 0, got {self.noise_factor}")
        if not isinstance(self.ring, int) or self.ring < 1:
            raise ConfigError(f"speck_guard.ring must be a positive integer, got {self.ring!r}")
        if not 0.0 < self.ring_ratio <= 1.0:
            raise ConfigError(f"speck_guard.ring_ratio must be in (0, 1], got {self.ring_ratio}")
        if not isinstance(self.grow, int) or self.grow < 0:
            raise ConfigError(f"speck_guard.grow must be an integer >= 0, got {self.grow!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeckGuardConfig:
        check_known_keys(data, cls.__dataclass_fields__, "speck_guard config keys")
        return cls(**dict(data))


@dataclass(frozen=True)
class SpeckGuardResult:
    """The guarded image ``[B, 3, s*h, s*w]``, its blend mask ``[B, 1, s*h, s*w]`` in [0, 1] (1 = bicubic; None
    unless asked for with ``keep_mask``) and the number of speck centres found in each image."""

    image: Tensor
    mask: Tensor | None
    specks: list[int]


def lr_residual(hr: Tensor, lr: Tensor, scale: int) -> Tensor:
    """Step 1: ``max_c |area_s(hr) - lr|`` ``[B, 1, h, w]``, how far the output strays from its input."""
    return (F.avg_pool2d(hr, scale) - lr).abs().amax(dim=1, keepdim=True)


#: Share of the ring that must lie inside the image for a pixel near the border to count as isolated.
MIN_RING_INSIDE = 0.5


def _ring_max(e: Tensor, ring: int) -> tuple[Tensor, Tensor]:
    """Largest value on the square ring at Chebyshev distance ``ring`` around every pixel, over the ring's pixels
    inside the image, and the share of the ring inside the image (both ``[..., h, w]``).

    Pixels outside the image are left out rather than replicated: a replicated border would put the centre (or
    its neighbour) on its own ring, and no speck within ``ring`` pixels of the border would ever look isolated.
    """
    padded = F.pad(e, (ring,) * 4, mode="constant", value=float("-inf"))
    inside = F.pad(torch.ones_like(e[..., :1, :, :]), (ring,) * 4, mode="constant", value=0.0)
    h, w = e.shape[-2:]
    out = torch.full_like(e, float("-inf"))
    count = torch.zeros_like(e[..., :1, :, :])
    for dy in range(-ring, ring + 1):
        for dx in range(-ring, ring + 1):
            if max(abs(dy), abs(dx)) == ring:
                rows, cols = slice(ring + dy, ring + dy + h), slice(ring + dx, ring + dx + w)
                out = torch.maximum(out, padded[..., rows, cols])
                count = count + inside[..., rows, cols]
    return out, count / (8 * ring)


def find_specks(residual: Tensor, config: SpeckGuardConfig) -> Tensor:
    """Step 2: boolean speck centres ``[B, 1, h, w]`` of an LR-grid residual ``[B, 1, h, w]``."""
    flat = residual.flatten(1)
    median = flat.median(dim=1, keepdim=True).values
    sigma = MAD_TO_SIGMA * (flat - median).abs().median(dim=1).values  # [B], per image
    floor = torch.clamp(config.noise_factor * sigma, min=config.threshold).view(-1, 1, 1, 1)
    local_max = residual >= F.max_pool2d(residual, 3, stride=1, padding=1)
    ring_max, ring_inside = _ring_max(residual, config.ring)
    isolated = (ring_max < config.ring_ratio * residual) & (ring_inside >= MIN_RING_INSIDE)
    return (residual > floor) & local_max & isolated


# LR rows painted at a time: bounds the full-width temporaries (mask, bicubic, blend) to this many rows times s,
# so the guard's memory does not grow with the image (painting the whole image at once took 350 MiB at 16.8 MP).
BAND_ROWS = 32
# LR rows of context above and below a band for Pillow's bicubic (support 2 LR pixels when upscaling), so the
# band's rows come out exactly as in a resize of the whole image.
_BICUBIC_MARGIN = 3


def band_mask(grown: Tensor, r0: int, r1: int, scale: int) -> Tensor:
    """Step 3 for output rows ``[r0*s, r1*s)``: the feathered blend mask ``[1, 1, (r1-r0)*s, s*w]`` in [0, 1] of
    the grown centres ``grown`` ``[1, 1, h, w]`` (the full image's mask, cut to those rows, to the bit).

    Each grown centre is upsampled to the output grid and box-blurred over ``2s + 1`` pixels (about one LR pixel
    on each side, so the paint fades in) with replicate padding at the image's borders; the blur reaches one LR
    row beyond the band, which is read from ``grown``.
    """
    h = grown.shape[-2]
    a, z = max(r0 - 1, 0), min(r1 + 1, h)
    up = F.interpolate(grown[..., a:z, :], scale_factor=scale, mode="nearest")
    # replicate padding only where the band meets the image border; elsewhere the neighbouring rows are real
    pad = (scale, scale, scale if a == r0 else 0, scale if z == r1 else 0)
    k = 2 * scale + 1
    return F.avg_pool2d(F.pad(up, pad, mode="replicate"), k, stride=1).clamp(0, 1)


def guard_specks(
    hr: Tensor,
    lr: Tensor,
    scale: int,
    config: SpeckGuardConfig,
    *,
    keep_mask: bool = False,
    inplace: bool = False,
) -> SpeckGuardResult:
    """Replace the isolated specks of an upscaled image ``hr`` ``[B, 3, s*h, s*w]`` in [0, 1] by the bicubic
    upsampling of its LR ``lr`` ``[B, 3, h, w]`` (module docstring).

    The painting runs in bands of :data:`BAND_ROWS` LR rows and skips bands without specks, so it needs memory
    for one band beyond the image. ``keep_mask`` also returns the whole blend mask (tests, figures);
    ``inplace`` paints into ``hr`` itself (when it is float32) instead of a copy, for callers that own it.
    """
    if hr.dim() != 4 or lr.dim() != 4 or hr.shape[:2] != lr.shape[:2]:
        raise InputError(
            f"speck guard expects [B, C, H, W] images with the same B and C, got {tuple(hr.shape)} and "
            f"{tuple(lr.shape)}"
        )
    if scale < 1 or tuple(hr.shape[-2:]) != (scale * lr.shape[-2], scale * lr.shape[-1]):
        raise InputError(
            f"speck guard: the output {tuple(hr.shape[-2:])} is not the LR {tuple(lr.shape[-2:])} times {scale}; "
            "apply it before any final resize"
        )
    hr, lr = hr.float(), lr.float()
    centres = find_specks(lr_residual(hr, lr, scale), config)
    counts = [int(c) for c in centres.flatten(1).sum(dim=1)]
    mask = torch.zeros_like(hr[:, :1]) if keep_mask else None
    if not any(counts):
        return SpeckGuardResult(hr, mask, counts)
    out = hr if inplace else hr.clone()
    grown = F.max_pool2d(centres.float(), 2 * config.grow + 1, stride=1, padding=config.grow)
    h, width = lr.shape[-2], hr.shape[-1]
    for b in range(hr.shape[0]):
        rows_hit = grown[b, 0].amax(dim=1) > 0  # [h]
        for r0 in range(0, h, BAND_ROWS):
            r1 = min(r0 + BAND_ROWS, h)
            if not rows_hit[max(r0 - 1, 0) : r1 + 1].any():  # the feathering reaches one LR row further
                continue
            band = band_mask(grown[b : b + 1], r0, r1, scale)
            c0, c1 = max(r0 - _BICUBIC_MARGIN, 0), min(r1 + _BICUBIC_MARGIN, h)
            bicubic = pil_bicubic(lr[b : b + 1, :, c0:c1], ((c1 - c0) * scale, width))
            bicubic = bicubic[..., (r0 - c0) * scale : (r1 - c0) * scale, :].clamp(0, 1)
            rows = slice(r0 * scale, r1 * scale)
            out[b : b + 1, :, rows] = torch.lerp(out[b : b + 1, :, rows], bicubic, band)
            if mask is not None:
                mask[b : b + 1, :, rows] = band
    return SpeckGuardResult(out, mask, counts)

"""Latent stitching: blend the windows' sampled latents into one image latent, then decode it in large tiles.

Not a paper component (the official NSARM runs one 256x256 window). Pixel stitching (:func:`nsarm_core.tiling.
run_tiled`) runs the whole chain per window and blends the decoded windows, so the decoder, the CFW LR encoder and
the colour fix see every overlapped pixel twice or more (25 windows of 64 px with a 16 px overlap cover a 256 px LR
image 1.56 times). Only the encoder -> transformation network -> sampler is tied to a window (the transformer's
token grid); the rest is convolutional. Latent stitching therefore:

1. places the windows so that each starts on a whole latent pixel (:func:`plan_latent_windows`: window corners
   and the padded LR size are multiples of ``step`` = LR pixels per latent pixel);
2. blends the windows' sampled latents (the summed codes, ``[d, t/step, t/step]``) on a latent canvas with the
   same Hann weights :mod:`nsarm_core.tiling` uses for pixels, ramping over the overlap in latent pixels
   (:class:`LatentCanvas`);
3. decodes the image latent in decode tiles as large as :func:`decode_tile_boxes` allows, overlapping by a few
   latent pixels, each with the CFW features and the colour fix of its own LR region, and feathers the decoded
   tiles in pixel space (:func:`decode_tiled`).

An image of one window has one window weight of 1 and one decode tile, so it decodes exactly what pixel stitching
decodes. Memory: the latent canvas (``d`` values per latent pixel, 1/64 of the output pixels at stride 8), the
output canvas and one decode tile.

Shape legend: ``H, W`` LR size; ``Hp, Wp`` padded LR size; ``step`` LR pixels per latent pixel; ``Hl = Hp / step``,
``Wl = Wp / step`` latent canvas; ``f`` output pixels per latent pixel (the VAE stride); ``d`` latent channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from nsarm_core.errors import ConfigError, InputError
from nsarm_core.tiling import TilePlan, check_tile_request, rect_blend_weights, tile_positions, tile_weight

__all__ = [
    "DECODE_OVERLAP",
    "LatentCanvas",
    "axis_tiles",
    "decode_tile_boxes",
    "decode_tiled",
    "plan_latent_windows",
]

#: Overlap of neighbouring decode tiles, latent pixels (32 output pixels at stride 8). The decoder sees zero
#: padding at a tile's edge instead of the neighbouring latent; the difference it makes fades over a few latent
#: pixels (tests/test_latent_stitch.py bounds it), and the Hann ramp over the overlap hides the rest.
DECODE_OVERLAP = 4


def _axis(length: int, tile: int, step: int) -> tuple[int, int, int]:
    """``(padded length, pad before, pad after)`` of one LR axis: at least one tile, a multiple of ``step``.

    The pad is split as :func:`nsarm_core.tiling.plan_tiles` splits it (``pad // 2`` before), so an image of at
    most one window gets the same padding in both stitching modes.
    """
    padded = max(tile, math.ceil(length / step) * step)
    pad = padded - length
    return padded, pad // 2, pad - pad // 2


def plan_latent_windows(
    height: int, width: int, tile: int, overlap: int, step: int
) -> tuple[TilePlan, TilePlan]:
    """The window plan of an ``H x W`` LR image for latent stitching, in LR pixels and in latent pixels.

    Args:
        height: LR height ``H >= 1``.
        width: LR width ``W >= 1``.
        tile: the native LR window ``t`` (a multiple of ``step``).
        overlap: minimum overlap between windows in LR pixels, ``0 <= overlap <= t // 2``; rounded up to whole
            latent pixels.
        step: LR pixels per latent pixel (``t / latent window side``; 2 for nsarm-tiny and nsarm-8b).

    Returns:
        ``(lr_plan, latent_plan)``: the same windows, the first in padded LR coordinates (what the sampler's crops
        come from; every corner a multiple of ``step``), the second on the unpadded latent canvas ``Hl x Wl``
        (what the latent weights use).

    Raises:
        ConfigError: a tile that is not a multiple of ``step``, or a size or overlap
            :func:`nsarm_core.tiling.check_tile_request` refuses.
    """
    if step < 1 or tile % step:
        raise ConfigError(f"the window {tile} must be a multiple of the LR pixels per latent pixel {step}")
    check_tile_request(height, width, tile, overlap)
    hp, top, bottom = _axis(height, tile, step)
    wp, left, right = _axis(width, tile, step)
    t_l, o_l = tile // step, min(math.ceil(overlap / step), tile // step // 2)
    ys = tile_positions(hp // step, t_l, o_l)
    xs = tile_positions(wp // step, t_l, o_l)
    latent = TilePlan(hp // step, wp // step, t_l, o_l, 0, 0, 0, 0, ys, xs)
    lr = TilePlan(
        height, width, tile, o_l * step, top, bottom, left, right,
        tuple(y * step for y in ys), tuple(x * step for x in xs),
    )  # fmt: skip
    return lr, latent


class LatentCanvas:
    """Accumulates window latents ``[b, d, t_l, t_l]`` with their Hann weights; :meth:`result` divides.

    Args:
        plan: the latent plan of :func:`plan_latent_windows`.
        channels: latent channels ``d``.
    """

    def __init__(self, plan: TilePlan, channels: int) -> None:
        self.plan = plan
        self.acc = torch.zeros(1, channels, plan.height, plan.width, dtype=torch.float32)
        self.wsum = torch.zeros(plan.height, plan.width, dtype=torch.float32)

    def add(self, latents: Tensor, index: int) -> None:
        """Add windows ``index .. index + b - 1`` (row-major window order)."""
        t, nx, boxes = self.plan.tile, len(self.plan.xs), self.plan.boxes()
        if latents.dim() != 4 or tuple(latents.shape[-2:]) != (t, t) or latents.shape[1] != self.acc.shape[1]:
            raise InputError(
                f"window latents must be [b, {self.acc.shape[1]}, {t}, {t}], got {tuple(latents.shape)}"
            )
        for k in range(int(latents.shape[0])):
            i = index + k
            y, x = boxes[i]
            w = tile_weight(self.plan, i // nx, i % nx, 1)
            self.acc[0, :, y : y + t, x : x + t] += latents[k].float().cpu() * w
            self.wsum[y : y + t, x : x + t] += w

    def result(self) -> Tensor:
        """The blended image latent ``[1, d, Hl, Wl]`` (float32)."""
        return self.acc / self.wsum  # every latent pixel is covered by a window with weight > 0


def axis_tiles(length: int, max_side: int, overlap: int) -> tuple[int, tuple[int, ...]]:
    """``(side, starts)`` of the decode tiles along one latent axis.

    As few tiles as ``max_side`` allows, all of one side ``<= max_side``, overlapping by at least ``overlap``
    (evenly spread as :func:`nsarm_core.tiling.tile_positions` spreads windows); one tile when the axis fits.
    """
    if length <= max_side:
        return length, (0,)
    n = math.ceil((length - overlap) / (max_side - overlap))
    side = math.ceil((length + (n - 1) * overlap) / n)
    return side, tile_positions(length, side, overlap)


def decode_tile_boxes(
    height: int, width: int, max_side: int, overlap: int
) -> list[tuple[int, int, int, int]]:
    """Decode tiles ``(y, x, h, w)`` covering an ``height x width`` latent, row-major.

    Raises:
        ConfigError: ``max_side`` not more than twice ``overlap`` (a tile would be all ramp).
    """
    if max_side <= 2 * overlap or overlap < 0:
        raise ConfigError(
            f"decode tiles of {max_side} latent px need an overlap in [0, {max_side // 2}), got {overlap}"
        )
    th, ys = axis_tiles(height, max_side, overlap)
    tw, xs = axis_tiles(width, max_side, overlap)
    return [(y, x, th, tw) for y in ys for x in xs]


def decode_tiled(
    latent: Tensor,
    lr: Tensor,
    decode: Callable[[Tensor, Tensor], Tensor],
    *,
    factor: int,
    step: int,
    max_side: int,
    overlap: int,
) -> Tensor:
    """Decode an image latent tile by tile and feather the decoded tiles in pixel space.

    Args:
        latent: the image latent ``[1, d, Hl, Wl]``.
        lr: the padded LR image ``[1, 3, Hl * step, Wl * step]`` (each tile's CFW features and colour fix come
            from its own region).
        decode: ``decode(latent_tile [1, d, h, w], lr_tile [1, 3, h * step, w * step]) -> [1, C, h * f, w * f]``.
        factor: output pixels per latent pixel ``f``.
        step: LR pixels per latent pixel.
        max_side: the largest decode tile side, latent pixels.
        overlap: decode-tile overlap, latent pixels; the Hann ramps span ``overlap * f`` output pixels on sides
            shared with another tile.

    Returns:
        ``[1, C, Hl * f, Wl * f]`` float32.
    """
    hl, wl = int(latent.shape[-2]), int(latent.shape[-1])
    if tuple(lr.shape[-2:]) != (hl * step, wl * step):
        raise InputError(f"the LR image {tuple(lr.shape[-2:])} must be the latent {(hl, wl)} times {step}")
    boxes = decode_tile_boxes(hl, wl, max_side, overlap)
    if len(boxes) == 1:  # one tile: its pixels as they are (weight 1), as pixel stitching gives them
        return decode(latent, lr).float()
    out: Tensor | None = None
    wsum = torch.zeros(hl * factor, wl * factor, dtype=torch.float32)
    for y, x, h, w in boxes:
        tile = decode(
            latent[:, :, y : y + h, x : x + w], lr[:, :, y * step : (y + h) * step, x * step : (x + w) * step]
        )
        if out is None:
            out = torch.zeros(1, tile.shape[1], hl * factor, wl * factor, dtype=torch.float32)
        weight = rect_blend_weights(
            h * factor, w * factor, overlap * factor,
            top=y > 0, bottom=y + h < hl, left=x > 0, right=x + w < wl,
        )  # fmt: skip
        oy, ox = y * factor, x * factor
        out[0, :, oy : oy + h * factor, ox : ox + w * factor] += tile[0].float() * weight
        wsum[oy : oy + h * factor, ox : ox + w * factor] += weight
    assert out is not None
    out /= wsum  # in place: a second output-sized tensor would be 12 bytes per output pixel more at the peak
    return out

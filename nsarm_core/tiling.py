"""Tiled super-resolution: run a fixed-window upscaler over an image of any size and blend the tiles.

The official NSARM only accepts a 256x256 LR input (docs/architecture.md E.7: the transformation network has a fixed
32x32 latent, and there is no tiling). This module lets the pipeline accept any size and aspect ratio. It cuts the
LR image into fixed ``tile x tile`` windows that overlap, calls the model on each window, and blends the upscaled
windows with smooth weights, so the tile borders leave no seams. The module is pure torch and knows nothing
about the model: the model is an ``fn(tile, index) -> upscaled tile`` callable.

Why the weights are smooth: every tile is sampled independently (a stochastic autoregressive model), so two
neighbouring tiles disagree a little, even on the pixels they share. A hard crop turns that disagreement into a
step along the border, which is a visible seam. Here each tile's weight rises from almost 0 to 1 over the
overlap with a raised-cosine (Hann) ramp, and the accumulated output is divided by the summed weights, so the
disagreement fades in smoothly over the whole overlap. The ramps are only applied on sides that touch another
tile. On the image border a tile keeps weight 1, so a pixel covered by one tile is that tile's value exactly.

Placement: along each axis, ``n = ceil((L - overlap) / (tile - overlap))`` tiles are spread evenly from 0 to
``L - tile``. The first tile is flush with the top or left border, the last with the bottom or right border, and
every actual overlap is at least ``overlap``. An axis shorter than one tile is padded (reflect, or replicate
where reflection is impossible, e.g. a 1-pixel image), centred, and the output is cropped back.

Memory: an output buffer ``[1, C, Hp*s, Wp*s]``, a weight buffer ``[Hp*s, Wp*s]`` and one tile (or one batch of
tiles) at a time, where ``Hp, Wp`` are the padded LR sizes (at least ``tile``).

Shape legend: ``H, W`` LR height and width; ``Hp, Wp`` padded LR sizes; ``t`` tile (LR pixels); ``o`` overlap
(LR pixels); ``s`` integer scale of ``fn``; ``C`` channels; ``b`` tiles per ``fn`` call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nsarm_core.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

__all__ = [
    "TilePlan",
    "check_tile_request",
    "plan_tiles",
    "tile_positions",
    "blend_weights",
    "rect_blend_weights",
    "tile_weight",
    "pad_to_plan",
    "weight_sum",
    "run_tiled",
]


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles go on one LR image (all numbers in LR pixels).

    Attributes:
        height: LR image height ``H``.
        width: LR image width ``W``.
        tile: side of the square tile window ``t``.
        overlap: requested minimum overlap ``o`` between neighbouring tiles.
        pad_top: rows added above the image, so that the padded height ``Hp >= t``.
        pad_bottom: rows added below.
        pad_left: columns added on the left.
        pad_right: columns added on the right.
        ys: top row of every tile row, in padded coordinates; ``ys[0] == 0``, ``ys[-1] == Hp - t``.
        xs: left column of every tile column, in padded coordinates; ``xs[0] == 0``, ``xs[-1] == Wp - t``.
    """

    height: int
    width: int
    tile: int
    overlap: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def padded_height(self) -> int:
        """``Hp = pad_top + H + pad_bottom``."""
        return self.pad_top + self.height + self.pad_bottom

    @property
    def padded_width(self) -> int:
        """``Wp = pad_left + W + pad_right``."""
        return self.pad_left + self.width + self.pad_right

    @property
    def num_tiles(self) -> int:
        """Number of tiles, ``len(ys) * len(xs)``."""
        return len(self.ys) * len(self.xs)

    def boxes(self) -> list[tuple[int, int]]:
        """Top-left corner ``(y, x)`` of each tile in padded LR coordinates, row-major (the tile index order)."""
        return [(y, x) for y in self.ys for x in self.xs]


def tile_positions(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Start offsets of the tiles along one axis of length ``length >= tile``.

    ``n = ceil((length - overlap) / (tile - overlap))`` tiles, spread evenly between 0 and ``length - tile``
    (rounded), so the first and last tiles are flush with the borders and every overlap is ``>= overlap``.

    Args:
        length: axis length (already padded to at least ``tile``).
        tile: tile side.
        overlap: minimum overlap, ``0 <= overlap < tile``.

    Returns:
        Strictly increasing start offsets.
    """
    assert length >= tile > overlap >= 0, (length, tile, overlap)
    if length == tile:
        return (0,)
    n = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    return tuple(round(i * span / (n - 1)) for i in range(n))


def check_tile_request(height: int, width: int, tile: int, overlap: int) -> None:
    """Refuse an image size, tile or overlap no tile plan can serve (:func:`plan_tiles`, and latent stitching's
    :func:`nsarm_core.latent_stitch.plan_latent_windows`).

    Raises:
        ConfigError: a non-positive size or tile, or an overlap outside ``[0, tile // 2]``.
    """
    if height < 1 or width < 1:
        raise ConfigError(f"image size must be at least 1x1 pixels, got {height}x{width}")
    if tile < 1:
        raise ConfigError(f"tile must be a positive number of LR pixels, got {tile}")
    if not 0 <= overlap <= tile // 2:
        raise ConfigError(
            f"tile overlap must be between 0 and tile // 2 = {tile // 2} LR pixels, got {overlap}; "
            f"pick e.g. --tile-overlap {max(tile // 8, 0)}"
        )


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> TilePlan:
    """Plan the tiles for an ``H x W`` LR image.

    Args:
        height: LR height ``H >= 1``.
        width: LR width ``W >= 1``.
        tile: tile side in LR pixels (the model's native LR window, e.g. 64 for the tiny model, 256 for nsarm-8b).
        overlap: minimum overlap between neighbouring tiles in LR pixels, ``0 <= overlap <= tile // 2``. Larger
            overlaps blend more smoothly but need more tiles; ``tile // 8`` is a good default.

    Returns:
        The frozen ``TilePlan``. Axes shorter than ``tile`` are padded symmetrically up to ``tile``.

    Raises:
        ConfigError: a non-positive size or tile, or an overlap outside ``[0, tile // 2]``.
    """
    check_tile_request(height, width, tile, overlap)
    pad_h = max(tile - height, 0)
    pad_w = max(tile - width, 0)
    pad_top, pad_left = pad_h // 2, pad_w // 2
    plan = TilePlan(
        height=height,
        width=width,
        tile=tile,
        overlap=overlap,
        pad_top=pad_top,
        pad_bottom=pad_h - pad_top,
        pad_left=pad_left,
        pad_right=pad_w - pad_left,
        ys=tile_positions(height + pad_h, tile, overlap),
        xs=tile_positions(width + pad_w, tile, overlap),
    )
    logger.debug(
        "tile plan for %dx%d: %d x %d tiles of %d px", height, width, len(plan.ys), len(plan.xs), tile
    )
    return plan


def _ramp_1d(length: int, ramp: int, start: bool, end: bool) -> Tensor:
    """1-D weight: Hann ramps of ``ramp`` samples at the start and/or end, 1 in between.

    The ramp is sampled at half-integer positions, ``w(i) = sin^2(pi (i + 0.5) / (2 ramp))``. The values are never
    0, and a rising and a falling ramp that cover the same ``ramp`` samples sum to exactly 1 (a partition of
    unity: ``sin^2 + cos^2``).
    """
    w = torch.ones(length, dtype=torch.float32)
    if ramp <= 0:
        return w
    i = torch.arange(ramp, dtype=torch.float64)
    rise = torch.sin(math.pi * (i + 0.5) / (2 * ramp)).pow(2).to(torch.float32)
    if start:
        w[:ramp] = torch.minimum(w[:ramp], rise)
    if end:
        w[length - ramp :] = torch.minimum(w[length - ramp :], rise.flip(0))
    return w


def blend_weights(
    tile_out: int,
    overlap_out: int,
    *,
    top: bool = True,
    bottom: bool = True,
    left: bool = True,
    right: bool = True,
) -> Tensor:
    """Blending weight of one upscaled tile: Hann (raised-cosine) ramps over the overlap, 1 in the interior.

    Args:
        tile_out: side of the upscaled tile, ``t * s``.
        overlap_out: ramp length in output pixels, ``o * s``, at most ``tile_out // 2``.
        top: ramp on the top side. Set it False when the side is on the image border, where no other tile
            covers: the weight there stays 1 instead of dropping towards 0.
        bottom: ramp on the bottom side.
        left: ramp on the left side.
        right: ramp on the right side.

    Returns:
        ``[tile_out, tile_out]`` float32 weights in ``(0, 1]``: the outer product of the row and column ramps.
    """
    if tile_out < 1 or not 0 <= overlap_out <= tile_out // 2:
        raise ConfigError(
            f"need tile_out >= 1 and 0 <= overlap_out <= tile_out // 2, got {tile_out}, {overlap_out}"
        )
    return rect_blend_weights(tile_out, tile_out, overlap_out, top=top, bottom=bottom, left=left, right=right)


def rect_blend_weights(
    height: int, width: int, ramp: int, *, top: bool, bottom: bool, left: bool, right: bool
) -> Tensor:
    """:func:`blend_weights` of a ``height x width`` rectangle: ``[height, width]`` float32 in ``(0, 1]``, Hann
    ramps of ``ramp`` samples (at most half the shorter side) on the sides marked True."""
    if min(height, width) < 1 or not 0 <= ramp <= min(height, width) // 2:
        raise ConfigError(f"need sides >= 1 and 0 <= ramp <= shorter side // 2, got {height}x{width}, {ramp}")
    return _ramp_1d(height, ramp, top, bottom)[:, None] * _ramp_1d(width, ramp, left, right)[None, :]


def tile_weight(plan: TilePlan, iy: int, ix: int, scale: int) -> Tensor:
    """Weight ``[t*s, t*s]`` of tile ``(iy, ix)``: ramps only on sides shared with a neighbouring tile."""
    return blend_weights(
        plan.tile * scale,
        plan.overlap * scale,
        top=iy > 0,
        bottom=iy < len(plan.ys) - 1,
        left=ix > 0,
        right=ix < len(plan.xs) - 1,
    )


def weight_sum(plan: TilePlan, scale: int) -> Tensor:
    """Sum of all tile weights over the padded output canvas (what ``run_tiled`` divides by).

    Args:
        plan: the tile plan.
        scale: integer upscaling factor ``s`` of the tile function.

    Returns:
        ``[Hp*s, Wp*s]`` float32, strictly positive wherever a tile covers (everywhere, for a valid plan).
    """
    t = plan.tile * scale
    acc = torch.zeros(plan.padded_height * scale, plan.padded_width * scale, dtype=torch.float32)
    for iy, y in enumerate(plan.ys):
        for ix, x in enumerate(plan.xs):
            acc[y * scale : y * scale + t, x * scale : x * scale + t] += tile_weight(plan, iy, ix, scale)
    return acc


def _pad_axis_amounts(size: int, before: int, after: int) -> list[tuple[int, int, str]]:
    """Split a padding of ``before``/``after`` pixels into steps that ``F.pad`` accepts.

    Reflect padding needs ``pad < size``, so a large pad is done in several reflect steps as the axis grows.
    A 1-pixel axis cannot be reflected at all and is replicated.
    """
    steps: list[tuple[int, int, str]] = []
    while before > 0 or after > 0:
        if size < 2:
            steps.append((before, after, "replicate"))
            break
        b, a = min(before, size - 1), min(after, size - 1)
        steps.append((b, a, "reflect"))
        before, after, size = before - b, after - a, size + b + a
    return steps


def pad_to_plan(lr: Tensor, plan: TilePlan) -> Tensor:
    """Pad ``lr [B,C,H,W]`` to the plan's padded size ``[B,C,Hp,Wp]`` (reflect, or replicate for 1-pixel axes)."""
    x = lr
    for top, bottom, mode in _pad_axis_amounts(plan.height, plan.pad_top, plan.pad_bottom):
        x = F.pad(x, (0, 0, top, bottom), mode=mode)
    for left, right, mode in _pad_axis_amounts(plan.width, plan.pad_left, plan.pad_right):
        x = F.pad(x, (left, right, 0, 0), mode=mode)
    assert x.shape[-2:] == (plan.padded_height, plan.padded_width), (x.shape, plan)
    return x


def run_tiled(
    lr: Tensor,
    fn: Callable[[Tensor, int], Tensor],
    scale: int,
    plan: TilePlan,
    *,
    batch: int = 1,
    on_tile: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Upscale ``lr`` tile by tile with ``fn`` and blend the tiles into one image.

    Args:
        lr: LR image ``[1, C, H, W]`` with ``(H, W) == (plan.height, plan.width)``.
        fn: the tile upscaler. It is called as ``fn(tiles, index)`` with ``tiles [b, C, t, t]`` (padded-image
            crops, row-major order) and ``index`` the tile index of ``tiles[0]`` (tiles ``index .. index+b-1``),
            and returns ``[b, C', t*s, t*s]``. With ``batch=1`` (the default) ``b == 1``.
        scale: integer factor ``s`` of ``fn``.
        plan: from ``plan_tiles(H, W, tile, overlap)``.
        batch: tiles per ``fn`` call (the last call may get fewer). Memory grows with ``batch``.
        on_tile: optional progress callback ``on_tile(done, total)`` after each ``fn`` call.

    Returns:
        ``[1, C', H*s, W*s]``: the weighted average of the overlapping upscaled tiles, in ``fn``'s dtype
        (accumulated in float32, or float64 if ``fn`` returns float64).

    Raises:
        InputError: ``lr`` is not ``[1, C, H, W]`` of the planned size, or ``fn`` returns a wrong shape.
    """
    if lr.ndim != 4 or lr.shape[0] != 1 or tuple(lr.shape[-2:]) != (plan.height, plan.width):
        raise InputError(
            f"run_tiled expects an LR tensor [1, C, {plan.height}, {plan.width}] matching the tile plan, "
            f"got shape {tuple(lr.shape)}"
        )
    if scale < 1 or batch < 1:
        raise ConfigError(f"scale and batch must be positive integers, got scale={scale}, batch={batch}")
    t, ts = plan.tile, plan.tile * scale
    x = pad_to_plan(lr, plan)
    boxes = plan.boxes()
    nx = len(plan.xs)
    out: Tensor | None = None
    wsum = torch.zeros(
        plan.padded_height * scale, plan.padded_width * scale, dtype=torch.float32, device=lr.device
    )
    out_dtype = lr.dtype
    for start in range(0, len(boxes), batch):
        chunk = boxes[start : start + batch]
        tiles = torch.cat([x[:, :, y : y + t, xx : xx + t] for y, xx in chunk], dim=0)
        y_out = fn(tiles, start)
        if y_out.ndim != 4 or y_out.shape[0] != len(chunk) or tuple(y_out.shape[-2:]) != (ts, ts):
            raise InputError(
                f"the tile function must return [{len(chunk)}, C, {ts}, {ts}] for {len(chunk)} tile(s) of "
                f"{t}x{t} at scale {scale}, got shape {tuple(y_out.shape)}"
            )
        if out is None:
            out_dtype = y_out.dtype
            acc_dtype = torch.float64 if y_out.dtype == torch.float64 else torch.float32
            out = torch.zeros(
                1, y_out.shape[1], plan.padded_height * scale, plan.padded_width * scale,
                dtype=acc_dtype, device=y_out.device,
            )  # fmt: skip
            wsum = wsum.to(device=y_out.device, dtype=acc_dtype)
        for k, (y, xx) in enumerate(chunk):
            idx = start + k
            w = tile_weight(plan, idx // nx, idx % nx, scale).to(device=out.device, dtype=out.dtype)
            oy, ox = y * scale, xx * scale
            out[0, :, oy : oy + ts, ox : ox + ts] += y_out[k].to(out.dtype) * w
            wsum[oy : oy + ts, ox : ox + ts] += w
        del tiles, y_out
        if on_tile is not None:
            on_tile(min(start + batch, len(boxes)), len(boxes))
    assert out is not None  # a plan always has at least one tile
    out /= wsum  # every canvas pixel is covered by >= 1 tile with weight > 0 (plan invariant)
    top, left = plan.pad_top * scale, plan.pad_left * scale
    return out[:, :, top : top + plan.height * scale, left : left + plan.width * scale].to(out_dtype)

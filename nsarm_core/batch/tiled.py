"""``--tile N``: run an upscaler on an image in tiles of N input pixels, and count the windows of a run.

Not a paper component. Real-ESRGAN users know ``--tile`` as the knob that bounds how much of the image is in
flight at once. For a peer network (``realesrgan-x4plus``) ``--tile`` is exactly that: its window side
(:class:`nsarm_core.peers.PeerUpscaler`). NSARM needs no such knob: it always runs in native windows (64 LR
pixels for nsarm-tiny, 256 for nsarm-8b), so its device memory is one window whatever the image size, and the
blended result is assembled at full size in host memory either way. For NSARM models and the interpolation
baselines, ``--tile N`` therefore means: process the image as independent ``N x N`` tiles that overlap by
:func:`tile_overlap_for` pixels (:func:`nsarm_core.tiling.plan_tiles`); each tile goes through the wrapped
upscaler (which cuts it into its native windows as it does with a whole image), and the upscaled tiles are
blended with the same Hann ramps as windows (:func:`nsarm_core.tiling.run_tiled`). It does not lower NSARM's
peak memory; ``--tile 0`` (the default) adds no tiling.

Exact behaviour, compared with no tiling (``--tile 0``):

* each tile is upscaled with ``overlap`` pixels of real image context on each side (clipped at the image
  border), and that context is cropped away before blending, so a tile's own pixels are computed as inside
  the whole image;
* a deterministic, local upscaler whose support is at most ``overlap`` input pixels (the interpolation
  baselines: 1-3 pixels) therefore gives the untiled image up to the blend's float rounding: at most 2e-7
  apart in [0, 1] (measured and tested with bicubic, lanczos, bilinear, nearest on tiles of 8-40 pixels); in
  an 8-bit file a value that sits exactly on a rounding boundary can move one level (0-2 of 107,520 values
  measured). An axis shorter than the tile is reflect-padded like a window, which differs from the
  baselines' own edge handling on that axis;
* NSARM samples each tile as its own image: its windows are planned inside the tile plus context and tile
  ``k`` samples with seed ``seed + k * TILE_SEED_STRIDE`` (window ``i`` of it with that plus ``i``), so the
  output is a different, equally valid sample, not the untiled one; it also runs more windows (the context).
  Neighbouring tiles are blended over the overlap like windows, so no seam shows.
"""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any

from nsarm_core.errors import ConfigError, InputError
from nsarm_core.upscaler import Upscaler, UpscaleResult, is_sr_pipeline

if TYPE_CHECKING:
    from torch import Tensor

    from nsarm_core.tiling import TilePlan

__all__ = ["TILE_SEED_STRIDE", "TiledUpscaler", "tile_overlap_for", "count_windows", "accepts_on_tile"]

#: Seed offset between tiles: window seeds of one tile (``seed + k * stride + i``) never repeat another's.
TILE_SEED_STRIDE: int = 1_000_003


def tile_overlap_for(tile: int) -> int:
    """Input pixels that neighbouring tiles share and blend, and the context each tile is upscaled with: an
    eighth of the tile, at least 4 (more than the 2-3 pixel support of the interpolation baselines)."""
    return min(max(tile // 8, 4), tile // 2)


def accepts_on_tile(upscaler: Upscaler) -> bool:
    """Whether ``upscaler.upscale`` takes an ``on_tile(done, total)`` progress callback."""
    try:
        return "on_tile" in inspect.signature(upscaler.upscale).parameters
    except (TypeError, ValueError):
        return False


def native_window(upscaler: Upscaler) -> int | None:
    """The fixed LR window of an NSARM pipeline (through any tiling wrapper); None for other upscalers."""
    inner = upscaler.inner if isinstance(upscaler, TiledUpscaler) else upscaler
    return inner.config.lr_size[0] if is_sr_pipeline(inner) else None


def count_windows(upscaler: Upscaler, width: int, height: int) -> int:
    """How many model windows ``upscaler`` runs for a ``width x height`` image (its progress total).

    Uses the same plans as the upscalers themselves (:func:`nsarm_core.tiling.plan_tiles`); an upscaler that
    does not tile counts as one window.
    """
    if isinstance(upscaler, TiledUpscaler):
        return upscaler.num_windows(width, height)
    tile, overlap = getattr(upscaler, "tile", None), getattr(upscaler, "tile_overlap", None)
    if is_sr_pipeline(upscaler):
        side = upscaler.config.lr_size[0]
        overlap = upscaler.settings.tile_overlap
        overlap = side // 4 if overlap is None else overlap
    elif isinstance(tile, int) and isinstance(overlap, int) and (height > tile or width > tile):
        side = min(tile, height, width)  # as PeerUpscaler.upscale plans it
        overlap = min(overlap, side // 2)
    else:
        return 1
    # nsarm_core.tiling imports torch: only upscalers that tile (and so already run torch) get here, never a
    # baseline, whose run stays torch-free.
    from nsarm_core.tiling import plan_tiles

    return plan_tiles(height, width, side, overlap).num_tiles


class TiledUpscaler:
    """An :class:`~nsarm_core.pipeline.Upscaler` that runs ``inner`` on overlapping ``tile x tile`` tiles.

    Args:
        inner: the upscaler each tile goes through (any ``Upscaler``; NSARM cuts each tile into windows).
        tile: tile side in input pixels, at least 8 and at least ``inner``'s native window.

    Raises:
        ConfigError: ``tile`` below 8 or below the native window of an NSARM model.
    """

    def __init__(self, inner: Upscaler, tile: int) -> None:
        window = native_window(inner)
        if tile < max(8, window or 0):
            need = f"the native window {window} of {inner.name!r}" if window else "8"
            raise ConfigError(
                f"--tile {tile} is below {need}; use --tile 0 (no extra tiling) or a larger tile"
            )
        self.inner = inner
        self.tile = int(tile)
        self.overlap = tile_overlap_for(self.tile)
        self.native_scale: int = inner.native_scale
        self.name: str = inner.name

    def _plan(self, height: int, width: int) -> TilePlan | None:
        """None when the image fits in one tile (it then goes to ``inner`` whole); else the tile plan, which
        pads (reflects) an axis shorter than the tile, as window plans do."""
        if height <= self.tile and width <= self.tile:
            return None
        from nsarm_core.tiling import plan_tiles  # torch, which tiling the tensors needs anyway

        return plan_tiles(height, width, self.tile, self.overlap)

    def _regions(self, plan: TilePlan) -> list[tuple[int, int, int, int]]:
        """``(top, left, bottom, right)`` that each tile is upscaled from, in padded coordinates: the tile and
        ``overlap`` pixels of context on each side, clipped to the (padded) image. The context is cropped away
        after upscaling, so a tile's border pixels are computed as inside the whole image."""
        m, t = self.overlap, plan.tile
        hp, wp = plan.padded_height, plan.padded_width
        return [
            (max(y - m, 0), max(x - m, 0), min(y + t + m, hp), min(x + t + m, wp)) for y, x in plan.boxes()
        ]

    def num_windows(self, width: int, height: int) -> int:
        """The inner upscaler's windows summed over the tiles (the progress total of one image)."""
        plan = self._plan(height, width)
        if plan is None:
            return count_windows(self.inner, width, height)
        return sum(count_windows(self.inner, r - x, b - y) for y, x, b, r in self._regions(plan))

    def upscale(self, rgb: Tensor, *, seed: int, prompt: str | None, on_tile: Any = None) -> UpscaleResult:
        """Upscale ``rgb`` ``[1, 3, H, W]`` tile by tile; ``on_tile(done, total)`` counts inner windows."""
        if rgb.ndim != 4 or tuple(rgb.shape[:2]) != (1, 3):
            raise InputError(
                f"{self.name} expects an RGB image [1, 3, H, W] in [0, 1], got {list(rgb.shape)}"
            )
        from nsarm_core.tiling import pad_to_plan, run_tiled  # torch: rgb is a tensor already

        start = time.perf_counter()
        h, w = int(rgb.shape[-2]), int(rgb.shape[-1])
        plan = self._plan(h, w)
        forward = on_tile is not None and accepts_on_tile(self.inner)
        if plan is None:
            result = self.inner.upscale(
                rgb, seed=seed, prompt=prompt, **({"on_tile": on_tile} if forward else {})
            )
            if on_tile is not None and not forward:
                on_tile(1, 1)
            result.settings = {**result.settings, "outer_tiles": 1}
            return result
        regions = self._regions(plan)
        counts = [count_windows(self.inner, r - x, b - y) for y, x, b, r in regions]
        total = sum(counts)
        padded = pad_to_plan(rgb.float().cpu(), plan)
        s, last = self.native_scale, {}

        def one_tile(_tile: Tensor, index: int) -> Tensor:
            (y, x), (top, left, bottom, right) = plan.boxes()[index], regions[index]
            before = sum(counts[:index])
            kwargs: dict[str, Any] = {}
            if forward:
                kwargs["on_tile"] = lambda done, _n: on_tile(before + done, total)
            crop = padded[:, :, top:bottom, left:right]
            result = self.inner.upscale(crop, seed=seed + index * TILE_SEED_STRIDE, prompt=prompt, **kwargs)
            if on_tile is not None and not forward:
                on_tile(before + counts[index], total)
            last["settings"] = result.settings
            oy, ox, side = (y - top) * s, (x - left) * s, plan.tile * s
            return result.image.float().cpu()[:, :, oy : oy + side, ox : ox + side]

        hr = run_tiled(rgb.float().cpu(), one_tile, s, plan)
        settings = {**last.get("settings", {}), "outer_tile": plan.tile, "outer_tile_overlap": plan.overlap}
        settings["outer_tiles"] = plan.num_tiles
        return UpscaleResult(
            image=hr, seed=seed, settings=settings, timings={"total": time.perf_counter() - start}
        )

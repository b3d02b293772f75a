"""Tests of nsarm_core.tiling: tile placement, blending weights, exact reproduction, and the seam criterion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nsarm_core.errors import ConfigError, InputError
from nsarm_core.tiling import (
    TilePlan,
    blend_weights,
    pad_to_plan,
    plan_tiles,
    run_tiled,
    tile_positions,
    weight_sum,
)

SIZES = [(1, 1), (1, 9), (7, 13), (13, 7), (16, 16), (32, 48), (48, 32), (17, 16), (37, 100)]


def _nearest(x: Tensor, _index: int, scale: int = 4) -> Tensor:
    return F.interpolate(x, scale_factor=scale, mode="nearest")


# --------------------------------------------------------------------------- placement and weights


@pytest.mark.parametrize("length", [16, 17, 20, 28, 29, 52, 53, 100, 257])
@pytest.mark.parametrize(("tile", "overlap"), [(16, 0), (16, 4), (16, 8), (5, 2)])
def test_tile_positions_flush_and_overlapping(length: int, tile: int, overlap: int) -> None:
    pos = tile_positions(length, tile, overlap)
    assert pos[0] == 0 and pos[-1] == length - tile
    assert all(b > a for a, b in zip(pos, pos[1:], strict=False))
    # every neighbouring pair overlaps by at least `overlap`, so the union covers the whole axis
    assert all(a + tile - b >= overlap for a, b in zip(pos, pos[1:], strict=False))
    covered = torch.zeros(length, dtype=torch.bool)
    for p in pos:
        covered[p : p + tile] = True
    assert bool(covered.all())


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_plan_pads_small_axes_and_weights_cover_everything(h: int, w: int) -> None:
    plan = plan_tiles(h, w, tile=16, overlap=4)
    assert plan.padded_height == max(h, 16) and plan.padded_width == max(w, 16)
    assert plan.num_tiles == len(plan.boxes())
    ws = weight_sum(plan, scale=2)
    assert ws.shape == (plan.padded_height * 2, plan.padded_width * 2)
    assert float(ws.min()) > 0.05  # every output pixel covered with a usable weight


def test_weights_are_a_partition_of_unity_for_equal_overlaps() -> None:
    # 52 = 16 + 3 * 12: four tiles per axis at 0, 12, 24, 36, every overlap exactly 4 px
    plan = plan_tiles(52, 52, tile=16, overlap=4)
    assert plan.xs == (0, 12, 24, 36) and plan.ys == (0, 12, 24, 36)
    torch.testing.assert_close(weight_sum(plan, scale=4), torch.ones(208, 208), rtol=0, atol=1e-6)


def test_blend_weights_shape_range_and_border_flags() -> None:
    w = blend_weights(32, 8)
    assert w.shape == (32, 32)
    assert float(w.min()) > 0 and float(w.max()) == 1.0
    assert bool((w[8:24, 8:24] == 1).all())  # interior is 1
    torch.testing.assert_close(w, w.flip(0))
    torch.testing.assert_close(w, w.T)
    # the ramp rises monotonically over the overlap
    assert bool((w[0, 1:9] >= w[0, :8]).all())
    # sides on the image border keep weight 1 (only one tile covers there)
    wb = blend_weights(32, 8, top=False, left=False)
    assert bool((wb[0, :24] == 1).all()) and bool((wb[:24, 0] == 1).all())
    assert float(wb[-1, -1]) < 0.01
    assert bool((blend_weights(10, 0) == 1).all())


def test_bad_plan_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="overlap"):
        plan_tiles(64, 64, tile=16, overlap=9)
    with pytest.raises(ConfigError, match="1x1"):
        plan_tiles(0, 5, tile=16, overlap=2)
    with pytest.raises(ConfigError, match="tile"):
        plan_tiles(5, 5, tile=0, overlap=0)


def test_padding_reflects_and_falls_back_to_replicate() -> None:
    x = torch.arange(3, dtype=torch.float32).view(1, 1, 1, 3)
    plan = plan_tiles(1, 3, tile=8, overlap=2)
    p = pad_to_plan(x, plan)
    assert p.shape == (1, 1, 8, 8)
    assert bool((p == p[:, :, :1]).all())  # 1-pixel axis: replicated rows
    # width 3 -> 8 needs 5 extra columns, more than one reflection (2 < 3) allows: done in steps
    row = p[0, 0, 0].tolist()
    assert row[plan.pad_left : plan.pad_left + 3] == [0.0, 1.0, 2.0]
    assert row[plan.pad_left - 1] == 1.0 and row[plan.pad_left + 3] == 1.0  # reflect, not replicate


# --------------------------------------------------------------------------- exact reproduction


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_upscale_is_reproduced_exactly(h: int, w: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(h * 100 + w)
    lr = torch.rand(1, 3, h, w, generator=g, dtype=dtype)
    plan = plan_tiles(h, w, tile=16, overlap=4)
    out = run_tiled(lr, _nearest, 4, plan)
    assert out.shape == (1, 3, h * 4, w * 4) and out.dtype == dtype
    atol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, F.interpolate(lr, scale_factor=4, mode="nearest"), rtol=0, atol=atol)


def test_batching_and_tile_indices() -> None:
    g = torch.Generator().manual_seed(1)
    lr = torch.rand(1, 3, 40, 57, generator=g)
    plan = plan_tiles(40, 57, tile=16, overlap=5)
    padded = pad_to_plan(lr, plan)
    seen: list[tuple[int, int]] = []

    def fn(tiles: Tensor, index: int) -> Tensor:
        for k in range(tiles.shape[0]):  # each tile is the padded crop at its row-major box
            y, x = plan.boxes()[index + k]
            assert torch.equal(tiles[k], padded[0, :, y : y + 16, x : x + 16])
        seen.append((index, tiles.shape[0]))
        return F.interpolate(tiles, scale_factor=2, mode="bilinear", align_corners=False) + 0.01 * index

    calls: list[tuple[int, int]] = []
    one = run_tiled(lr, fn, 2, plan, on_tile=lambda d, n: calls.append((d, n)))
    assert [i for i, _ in seen] == list(range(plan.num_tiles))
    assert calls[-1] == (plan.num_tiles, plan.num_tiles)
    seen.clear()
    # batch=3: fn gets up to 3 tiles and the index of the first; per-tile offsets differ, so the result only
    # matches if the indices are right
    three = run_tiled(
        lr, lambda t, i: torch.cat([fn(t[k : k + 1], i + k) for k in range(t.shape[0])]), 2, plan
    )
    torch.testing.assert_close(one, three, rtol=0, atol=1e-6)


def test_wrong_shapes_raise_input_error() -> None:
    plan = plan_tiles(20, 20, tile=16, overlap=4)
    with pytest.raises(InputError, match=r"\[1, C, 20, 20\]"):
        run_tiled(torch.zeros(1, 3, 20, 21), _nearest, 4, plan)
    with pytest.raises(InputError, match="must return"):
        run_tiled(torch.zeros(1, 3, 20, 20), lambda t, i: t, 4, plan)


# --------------------------------------------------------------------------- the seam test


def _images(h: int, w: int) -> dict[str, Tensor]:
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    gradient = 0.2 + 0.6 * (0.5 * xx / w + 0.5 * yy / h)
    # a fine diagonal texture (period ~6 LR px) on a gentle slope; diagonal so that every column and row
    # averages over all phases and the "typical" gradient is the same everywhere
    texture = 0.5 + 0.05 * torch.sin(1.1 * (xx + 0.77 * yy)) + 0.2 * (xx / w - 0.5)
    return {
        "gradient": gradient.expand(1, 3, h, w).contiguous(),
        "texture": texture.expand(1, 3, h, w).contiguous(),
    }


def _tile_dependent_bicubic(plan: TilePlan, scale: int, seed: int):
    """A smooth upscaler whose output depends slightly on the tile (like a stochastic model): bicubic + offset."""
    g = torch.Generator().manual_seed(seed)
    offsets = (torch.rand(plan.num_tiles, generator=g) * 2 - 1) * 0.03

    def fn(tiles: Tensor, index: int) -> Tensor:
        up = F.interpolate(tiles, scale_factor=scale, mode="bicubic", align_corners=False)
        return up + offsets[index : index + tiles.shape[0]].view(-1, 1, 1, 1)

    return fn


def _hard_crop_stitch(lr: Tensor, fn, scale: int, plan: TilePlan) -> tuple[Tensor, list[int], list[int]]:
    """Stitch without blending: each pixel comes from one tile, overlaps split in the middle (the naive way)."""
    t = plan.tile
    x = pad_to_plan(lr, plan)

    def owned(starts: tuple[int, ...], length: int) -> list[tuple[int, int]]:
        lo = [0] + [(a + t + b) // 2 for a, b in zip(starts, starts[1:], strict=False)]
        return list(zip(lo, lo[1:] + [length], strict=True))

    by, bx = owned(plan.ys, plan.padded_height), owned(plan.xs, plan.padded_width)
    out = torch.zeros(1, lr.shape[1], plan.padded_height * scale, plan.padded_width * scale)
    for index, (y, x0) in enumerate(plan.boxes()):
        (y_lo, y_hi), (x_lo, x_hi) = by[index // len(plan.xs)], bx[index % len(plan.xs)]
        up = fn(x[:, :, y : y + t, x0 : x0 + t], index)
        out[:, :, y_lo * scale : y_hi * scale, x_lo * scale : x_hi * scale] = up[
            :, :, (y_lo - y) * scale : (y_hi - y) * scale, (x_lo - x0) * scale : (x_hi - x0) * scale
        ]
    top, left = plan.pad_top * scale, plan.pad_left * scale
    out = out[:, :, top : top + plan.height * scale, left : left + plan.width * scale]
    return out, [lo * scale for lo, _ in by[1:]], [lo * scale for lo, _ in bx[1:]]


def _seam_ratio(img: Tensor, rows: list[int], cols: list[int]) -> float:
    """Largest mean |jump| across the given border lines, divided by the median over all lines (both axes).

    Column ``c`` in ``cols`` is the first column of a new tile region: its jump is ``|img[..., c] - img[..., c-1]|``
    averaged over rows and channels. A value > 1 means the borders stand out from the typical jump.
    """
    ratios = []
    for grad_axis, lines in ((-1, cols), (-2, rows)):
        g = img.diff(dim=grad_axis).abs()
        per_line = g.mean(dim=(0, 1, 2)) if grad_axis == -1 else g.mean(dim=(0, 1, 3))
        border = torch.stack([per_line[c - 1] for c in lines])
        ratios.append(float(border.max() / per_line.median()))
    return max(ratios)


@pytest.mark.parametrize("kind", ["gradient", "texture"])
@pytest.mark.parametrize(("h", "w", "seed"), [(40, 72, 0), (52, 61, 1), (45, 45, 2)])
def test_no_seams_with_blending_but_seams_with_hard_crops(kind: str, h: int, w: int, seed: int) -> None:
    scale, tile, overlap = 4, 16, 4
    plan = plan_tiles(h, w, tile, overlap)
    assert len(plan.xs) >= 4 and len(plan.ys) >= 3  # many tiles, many borders
    lr = _images(h, w)[kind]
    fn = _tile_dependent_bicubic(plan, scale, seed)

    blended = run_tiled(lr, fn, scale, plan)
    # for the blended output, the set of contributing tiles changes where a tile starts or ends
    cols = sorted({x * scale for x in plan.xs[1:]} | {(x + tile) * scale for x in plan.xs[:-1]})
    rows = sorted({y * scale for y in plan.ys[1:]} | {(y + tile) * scale for y in plan.ys[:-1]})
    assert _seam_ratio(blended, rows, cols) <= 1.0  # measured 0.82-0.94

    # the criterion can fail: the same tiles hard-cropped and butted together show their seams
    hard, hard_rows, hard_cols = _hard_crop_stitch(lr, fn, scale, plan)
    assert _seam_ratio(hard, hard_rows, hard_cols) > 2.0  # measured 2.4-25

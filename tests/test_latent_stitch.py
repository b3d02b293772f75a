"""Latent stitching (``nsarm_core.latent_stitch``, ``UpscaleSettings.stitch="latent"``): the window plan on whole
latent pixels, the latent blend, the tiled decode, and the pipeline against pixel stitching.

The pipeline tests use the small random-weight model of ``conftest.tiny_dir`` (LR 64 -> HR 256, latent 32x32).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nsarm_core import pipeline as pipeline_module
from nsarm_core.errors import ConfigError
from nsarm_core.latent_stitch import (
    DECODE_OVERLAP,
    LatentCanvas,
    decode_tile_boxes,
    decode_tiled,
    plan_latent_windows,
)
from nsarm_core.models.nsarm import NSARMConfig, get_preset
from nsarm_core.pipeline import SRPipeline, load_pipeline
from nsarm_core.tiling import plan_tiles, run_tiled
from nsarm_core.upscaler import UpscaleSettings
from nsarm_core.window_batch import CPU_DECODE_TILE_PX, decode_tile_side

WINDOW, STEP, FACTOR = 64, 2, 8  # tiny preset: 64 px LR window, 2 LR px and 8 HR px per latent pixel
SEAM_BOUND = 1.5  # max |difference| across a tile border / mean |difference| (as in tests/test_pipeline.py)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(("h", "w"), [(256, 256), (64, 64), (37, 50), (64, 160), (112, 112)])
def test_plan_equals_the_pixel_plan_where_its_corners_are_even(h: int, w: int) -> None:
    pixel = plan_tiles(h, w, WINDOW, 16)
    assert all(v % STEP == 0 for v in pixel.ys + pixel.xs)  # the sizes above: even corners
    lr, _ = plan_latent_windows(h, w, WINDOW, 16, STEP)
    assert lr == pixel


@pytest.mark.parametrize(("h", "w", "overlap"), [(101, 203, 16), (150, 77, 16), (65, 999, 7), (1, 3, 0)])
def test_window_corners_fall_on_latent_pixels(h: int, w: int, overlap: int) -> None:
    lr, lat = plan_latent_windows(h, w, WINDOW, overlap, STEP)
    assert lr.padded_height % STEP == lr.padded_width % STEP == 0
    assert (lat.height, lat.width) == (lr.padded_height // STEP, lr.padded_width // STEP)
    for starts, length in ((lr.ys, lr.padded_height), (lr.xs, lr.padded_width)):
        assert all(s % STEP == 0 for s in starts) and starts[0] == 0 and starts[-1] == length - WINDOW
        assert all(b - a <= WINDOW - overlap for a, b in zip(starts[:-1], starts[1:], strict=True))
    assert lr.boxes() == [(STEP * y, STEP * x) for y, x in lat.boxes()]


def test_canvas_gives_back_the_field_its_windows_were_cut_from() -> None:
    """Windows cut from one latent field blend back into that field: the weights are normalised everywhere."""
    _, plan = plan_latent_windows(150, 220, WINDOW, 16, STEP)
    field = torch.randn(1, 5, plan.height, plan.width, generator=torch.Generator().manual_seed(0))
    canvas = LatentCanvas(plan, 5)
    crops = [field[:, :, y : y + plan.tile, x : x + plan.tile] for y, x in plan.boxes()]
    canvas.add(torch.cat(crops[:3]), 0)  # in two calls, as batches arrive
    canvas.add(torch.cat(crops[3:]), 3)
    assert (canvas.result() - field).abs().max() < 1e-5


@pytest.mark.parametrize(("length", "side"), [(32, 48), (128, 48), (100, 9), (513, 48)])
def test_decode_tiles_cover_the_latent_within_the_largest_side(length: int, side: int) -> None:
    boxes = decode_tile_boxes(length, 40, side, DECODE_OVERLAP)
    covered = torch.zeros(length, 40)
    for y, x, h, w in boxes:
        assert h <= side and w <= side
        covered[y : y + h, x : x + w] += 1
    assert covered.min() >= 1
    with pytest.raises(ConfigError, match="decode tiles of 8 latent px need an overlap"):
        decode_tile_boxes(length, 40, 8, DECODE_OVERLAP)


def test_tiled_decode_of_a_local_decoder_equals_the_whole() -> None:
    """With a decoder that looks at each latent pixel alone, tiles feathered together are the whole decode: the
    tiles land where they belong and the pixel weights are normalised."""
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 3, 70, 45, generator=g)
    lr = torch.rand(1, 3, 140, 90, generator=g)

    def local(z: torch.Tensor, lr_tile: torch.Tensor) -> torch.Tensor:
        lr_down = torch.nn.functional.avg_pool2d(lr_tile, STEP)  # the LR region must match the latent tile
        return torch.nn.functional.interpolate(z + lr_down, scale_factor=FACTOR, mode="nearest")

    whole = local(latent, lr)
    tiled = decode_tiled(latent, lr, local, factor=FACTOR, step=STEP, max_side=24, overlap=DECODE_OVERLAP)
    assert len(decode_tile_boxes(70, 45, 24, DECODE_OVERLAP)) == 12
    assert tiled.shape == whole.shape and (tiled - whole).abs().max() < 1e-5


def test_decode_tile_side_keeps_memory_flat() -> None:
    """The decode tile does not grow with the image: at most CPU_DECODE_TILE_PX on a CPU, and a smaller memory
    budget gives a smaller tile (the whole-image latent is 1/64 of the output pixels, 14 values each)."""
    config = get_preset("tiny")
    cpu = torch.device("cpu")
    big = decode_tile_side(config, torch.bfloat16, cpu, budget=2**40)
    small = decode_tile_side(config, torch.bfloat16, cpu, budget=2**26)
    assert big * config.vae.patch_size == CPU_DECODE_TILE_PX
    assert 2 * DECODE_OVERLAP < small < big


# --------------------------------------------------------------------------------------------- settings


def test_config_stitch_round_trips_and_the_paper_configs_stay_pixel() -> None:
    tiny = get_preset("tiny")
    assert tiny.stitch == "pixel" and "stitch" not in tiny.to_dict()  # saved configs keep their bytes
    assert get_preset("nsarm-8b").stitch == "pixel"
    latent = dataclasses.replace(tiny, stitch="latent")
    assert NSARMConfig.from_dict(latent.to_dict()).stitch == "latent"
    with pytest.raises(ConfigError, match="stitch must be one of pixel, latent, got 'tiles'"):
        dataclasses.replace(tiny, stitch="tiles")
    with pytest.raises(ConfigError, match="unknown stitch mode 'tiles'; valid: pixel, latent"):
        UpscaleSettings(stitch="tiles")


# --------------------------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def pipe(tiny_dir: Path) -> SRPipeline:
    return load_pipeline(tiny_dir, device="cpu", dtype="fp32")


def _noise(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(h // 4, 2), max(w // 4, 2), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


def _run(pipe: SRPipeline, lr: torch.Tensor, stitch: str, **changes: object) -> torch.Tensor:
    settings = dataclasses.replace(pipe.settings, stitch=stitch, **changes)  # type: ignore[arg-type]
    res = pipe.upscale(lr, seed=3, settings=settings)
    assert res.settings["stitch"] == stitch
    return res.image


@pytest.mark.parametrize(("h", "w"), [(64, 64), (37, 50)])
def test_one_window_latent_equals_pixel(pipe: SRPipeline, h: int, w: int) -> None:
    """One window: one window weight of 1 and one decode tile, so the same decode as pixel stitching, bit for bit."""
    lr = _noise(h, w)
    assert torch.equal(_run(pipe, lr, "latent"), _run(pipe, lr, "pixel"))


def test_pixel_stitch_is_run_tiled_over_upscale_windows(pipe: SRPipeline) -> None:
    """``stitch="pixel"`` is the path from before latent stitching existed: run_tiled over upscale_windows with
    seeds ``seed + i`` (both unchanged), to the bit."""
    lr = _noise(64, 112)
    plan = plan_tiles(64, 112, WINDOW, 16)

    def windows(tiles: torch.Tensor, index: int) -> torch.Tensor:
        return pipe.upscale_windows(tiles, seeds=[3 + index + k for k in range(len(tiles))])

    assert torch.equal(_run(pipe, lr, "pixel"), run_tiled(lr, windows, 4, plan, batch=2))


def test_latent_output_does_not_depend_on_the_batch_size(pipe: SRPipeline) -> None:
    lr = _noise(64, 160)  # 1 x 3 windows
    try:
        pipe.batch_windows = 1
        one = _run(pipe, lr, "latent")
        pipe.batch_windows = 2
        two = _run(pipe, lr, "latent")
    finally:
        pipe.batch_windows = None
    assert one.shape == (1, 3, 256, 640) and torch.equal(one, two)


def _gradient(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([xx, yy, 0.5 * (xx + yy)])[None]


def test_several_decode_tiles_leave_no_seam(pipe: SRPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 128 px LR image (latent 64x64) decoded in 3 x 3 tiles of 24 latent px. The tiles cannot equal one
    64 px tile within rounding: the decoder's GroupNorm takes its statistics over the tile it sees (as it does
    over each window in pixel stitching), and its zero padding sits at the tile's edge. What the feathering must
    give is an image without steps at the decode-tile borders: the column / row differences there stay within
    SEAM_BOUND of their mean over the image (the bound of tests/test_pipeline.py's window seams)."""
    lr = _gradient(128, 128)
    monkeypatch.setattr(pipeline_module, "decode_tile_side", lambda *args: 24)
    img = _run(pipe, lr, "latent")
    boxes = decode_tile_boxes(64, 64, 24, DECODE_OVERLAP)
    starts = sorted({y for y, _, _, _ in boxes})
    assert len(boxes) == 9 and starts == [0, 20, 40]
    borders = {FACTOR * s for s in starts[1:]} | {FACTOR * (s + 24) for s in starts[:-1]}
    for dim in (-1, -2):
        prof = img.diff(dim=dim).abs().mean(dim=(0, 1, 2) if dim == -1 else (0, 1, 3))
        ratio = max(prof[b - 1].item() for b in borders) / prof.mean().item()
        print(f"decode-tile seam ratio (dim {dim}): {ratio:.2f}")
        assert ratio <= SEAM_BOUND


def test_cli_stitch_option(tmp_path: Path) -> None:
    from PIL import Image

    from nsarm_cli.main import app

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    runner = CliRunner()
    bad = runner.invoke(app, ["upscale", str(tmp_path), "-o", str(tmp_path / "o"), "--stitch", "tiles"])
    assert bad.exit_code == 2 and "unknown stitch mode 'tiles'; valid: pixel, latent" in bad.output
    base = runner.invoke(
        app, ["upscale", str(tmp_path), "-o", str(tmp_path / "o"), "--model", "bicubic", "--stitch", "latent"]
    )
    assert base.exit_code == 2 and "--stitch applies to NSARM models, not to --model bicubic" in base.output

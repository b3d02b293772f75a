"""The tiled NSARM pipeline end to end with a small random-weight model (``tiny`` preset: LR 64 -> HR 256).

The model is saved with ``NSARM.save_pretrained`` to a temporary folder and loaded back the ways a user does:
``SRPipeline.from_pretrained("nsarm-tiny", weights=...)`` (registry entry + local path override, checksum logic)
and ``load_pipeline(folder)`` (what ``nsarm upscale --model FOLDER`` calls). Offline, CPU, about 20 window runs in
all (each a 64x64 LR window through encoder, transformation net, 4 AR scales, decoder and colour fix).

Shape legend: LR ``[1, 3, H, W]`` in [0, 1]; HR ``[1, 3, 4H, 4W]``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from nsarm_core import cpu_features
from nsarm_core import weights as W
from nsarm_core.errors import ChecksumError, WeightsNotFoundError
from nsarm_core.models.nsarm import NSARM
from nsarm_core.pipeline import SRPipeline, UpscaleResult, load_pipeline
from nsarm_core.tiling import TilePlan, plan_tiles

WINDOW = 64  # the tiny preset's native LR window
SCALE = 4
STAGES = {"encode", "transform_net", "ar_scales", "decode", "color_fix"}
SEAM_BOUND = 1.5  # max |difference| across a tile border / mean |difference| over the whole image


# --------------------------------------------------------------------------------------------- fixtures

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe(tiny_dir: Path) -> SRPipeline:
    """The pipeline as ``nsarm upscale --model FOLDER --device cpu`` builds it."""
    return load_pipeline(tiny_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def runs(pipe: SRPipeline) -> Any:
    """Memoised ``pipe.upscale`` of the 37x50 test image: (seed, colour fix) -> UpscaleResult."""
    cache: dict[tuple[int, str], UpscaleResult] = {}
    lr = _noise(37, 50)

    def run(seed: int, color_fix: str = "both") -> UpscaleResult:
        if (seed, color_fix) not in cache:
            settings = dataclasses.replace(pipe.settings, color_fix=color_fix)
            cache[(seed, color_fix)] = pipe.upscale(lr, seed=seed, settings=settings)
        return cache[(seed, color_fix)]

    return run


def _noise(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth-ish random RGB image ``[1, 3, h, w]`` in [0, 1] (noise upsampled from a coarse grid)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(h // 4, 2), max(w // 4, 2), generator=g)
    fine = torch.rand(1, 3, h, w, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * fine).clamp(0, 1)


# --------------------------------------------------------------------------------------------- loading


def _registry_with(monkeypatch: pytest.MonkeyPatch, **checkpoint_fields: Any) -> None:
    """Register ``nsarm-tiny`` with changed checkpoint fields (e.g. a sha256) for this test only.

    The registered size of the bundled file is dropped unless given: the test model is a different file.
    """
    spec = W.MODELS["nsarm-tiny"]
    ckpt = dataclasses.replace(spec.files["checkpoint"], **{"size": None, **checkpoint_fields})
    monkeypatch.setitem(
        W.MODELS, "nsarm-tiny", dataclasses.replace(spec, files={**spec.files, "checkpoint": ckpt})
    )


def _same_weights(a: NSARM, b: NSARM) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registry_path_verifies_the_checksum_and_loads_the_saved_weights(
    tiny_dir: Path, pipe: SRPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tiny_dir / "model.safetensors"
    sha = W.file_checksums(weights)["sha256"]
    _registry_with(monkeypatch, sha256=sha)
    hashed: list[Path] = []
    real = W.file_checksums
    monkeypatch.setattr(W, "file_checksums", lambda p, a=("sha256",): hashed.append(Path(p)) or real(p, a))

    via_registry = SRPipeline.from_pretrained("nsarm-tiny", weights=weights)

    assert hashed == [weights]  # the registered checksum was checked against the user's file
    db = json.loads((W.nsarm_home() / "verified.json").read_text())
    assert db[str(weights.resolve())]["sha256"] == sha  # ... and remembered, so it is hashed once
    SRPipeline.from_pretrained("nsarm-tiny", weights=weights)
    assert len(hashed) == 1
    assert via_registry.native_scale == SCALE and via_registry.config.lr_size == (WINDOW, WINDOW)
    assert _same_weights(via_registry.model, pipe.model)


def test_wrong_checksum_is_refused_and_the_file_is_kept(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tiny_dir / "model.safetensors"
    _registry_with(monkeypatch, sha256="0" * 64)
    with pytest.raises(ChecksumError) as err:
        SRPipeline.from_pretrained("nsarm-tiny", weights=weights)
    msg = str(err.value)
    assert str(weights) in msg and "expected sha256 " + "0" * 64 in msg
    assert weights.is_file()  # a user's own file is never deleted


def test_missing_weights_name_the_file_and_how_to_get_it(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nsarm-tiny without --weights: the bundled file is looked for inside the (here: empty) package folder.
    monkeypatch.setattr(W, "PACKAGE_DIR", tmp_path / "pkg")
    with pytest.raises(WeightsNotFoundError) as err:
        SRPipeline.from_pretrained("nsarm-tiny")
    msg = str(err.value)
    assert (
        "'model.safetensors'" in msg and "ships inside the nsarm package" in msg and "--weights PATH" in msg
    )

    with pytest.raises(WeightsNotFoundError, match=r"missing\.safetensors.*--weights"):
        SRPipeline.from_pretrained("nsarm-tiny", weights=tmp_path / "missing.safetensors")

    # the official model is not downloadable: the message says where it comes from and how to check it
    with pytest.raises(WeightsNotFoundError) as err8b:
        SRPipeline.from_pretrained("nsarm-8b")
    msg8b = str(err8b.value)
    assert (
        "'NSARM.pth'" in msg8b and "NSARM_part_*" in msg8b and W.NSARM_MD5 in msg8b and "--weights" in msg8b
    )

    # a model folder without its weights (load_pipeline / --model FOLDER)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(WeightsNotFoundError, match=r"model\.safetensors not found.*save_pretrained"):
        load_pipeline(folder, device="cpu")


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: str) -> None:
    """Make ``/proc/cpuinfo`` say ``flags`` for this test (``--dtype auto`` reads them)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(cpu_features, "CPUINFO", cpuinfo)


@pytest.mark.parametrize(
    ("flags", "dtype"), [("avx avx2 fma", torch.float32), ("avx2 avx512_bf16", torch.bfloat16)]
)
def test_load_pipeline_accepts_the_cli_default_dtype(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, dtype: torch.dtype
) -> None:
    """``nsarm upscale`` passes ``--dtype auto`` (its default) straight to load_pipeline: fp32 on a CPU without
    native bf16, bf16 on one with it."""
    _fake_cpu(monkeypatch, tmp_path, flags)
    assert load_pipeline(tiny_dir, device="cpu", dtype="auto").dtype == dtype


# --------------------------------------------------------------------------------------------- one image


@pytest.mark.parametrize(("h", "w"), [(37, 50), (64, 64), (33, 100)])
def test_output_is_four_times_the_input(pipe: SRPipeline, runs: Any, h: int, w: int) -> None:
    # 37x50: smaller than a window (padded); 64x64: exactly one window; 33x100: odd, non-square, two tiles.
    res = runs(1) if (h, w) == (37, 50) else pipe.upscale(_noise(h, w), seed=1)
    assert res.image.shape == (1, 3, SCALE * h, SCALE * w) and res.image.dtype == torch.float32
    assert torch.isfinite(res.image).all() and 0.0 <= res.image.min() and res.image.max() <= 1.0
    assert res.settings["tiles"] == plan_tiles(h, w, WINDOW, WINDOW // 4).num_tiles
    assert res.image.std() > 0.01  # not a constant image


def test_same_seed_same_bytes_other_seed_differs(pipe: SRPipeline, runs: Any) -> None:
    first = runs(1).image
    again = pipe.upscale(_noise(37, 50), seed=1).image
    other = runs(2).image
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert (first - other).abs().mean() > 1e-3


def test_result_record(runs: Any) -> None:
    res = runs(1)
    assert res.seed == 1
    s = res.settings
    assert {k: s[k] for k in ("tau", "top_p", "cfg", "color_fix", "window", "tile_overlap", "scale")} == {
        "tau": 0.5, "top_p": 0.97, "cfg": 1.0, "color_fix": "both", "window": WINDOW, "tile_overlap": 16,
        "scale": SCALE,
    }  # fmt: skip
    assert s["model"] == "tiny" and s["device"] == "cpu" and s["dtype"] == "float32" and s["tiles"] == 1
    json.dumps(s)  # JSON-serialisable: it goes into `nsarm upscale --json`
    assert set(res.timings) == STAGES | {"total"}
    assert all(v >= 0 for v in res.timings.values())
    assert sum(res.timings[k] for k in STAGES) <= res.timings["total"]


def test_colour_fix_modes_run_and_differ(runs: Any) -> None:
    out = {mode: runs(1, mode).image for mode in ("none", "adain", "wavelet", "both")}
    modes = list(out)
    for i, a in enumerate(modes):
        for b in modes[i + 1 :]:
            assert (out[a] - out[b]).abs().mean() > 1e-3, (a, b)
    # every fix pulls the colours towards the LR image (per-channel mean vs the bicubic upsample)
    lr_up = torch.nn.functional.interpolate(_noise(37, 50), scale_factor=SCALE, mode="bicubic").clamp(0, 1)
    err = {m: (x.mean(dim=(2, 3)) - lr_up.mean(dim=(2, 3))).abs().mean().item() for m, x in out.items()}
    assert max(err["adain"], err["wavelet"], err["both"]) < err["none"], err


# --------------------------------------------------------------------------------------------- seams


def _gradient(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([xx, yy, 0.5 * (xx + yy)])[None]


def _texture(h: int, w: int) -> torch.Tensor:
    """Fine texture: a 2-3 pixel period sine pattern plus noise."""
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    noise = torch.rand(h, w, generator=torch.Generator().manual_seed(3))
    t = (0.5 + 0.25 * torch.sin(2.1 * xx) * torch.cos(1.7 * yy) + 0.15 * noise).clamp(0, 1)
    return torch.stack([t, t.roll(3, 1), 1 - t])[None]


def _cuts(starts: tuple[int, ...], tile: int) -> list[int]:
    """Output rows/columns where a hard-crop stitch switches tiles: the middle of each overlap."""
    return [SCALE * ((a + tile + b) // 2) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _hard_stitch(tiles: list[torch.Tensor], plan: TilePlan) -> torch.Tensor:
    """The same tiles, stitched without blending: each output pixel from one tile, cut mid-overlap."""
    assert plan.pad_top == plan.pad_left == 0  # the seam images are at least one window in each axis
    cy = [0, *_cuts(plan.ys, plan.tile), SCALE * plan.padded_height]
    cx = [0, *_cuts(plan.xs, plan.tile), SCALE * plan.padded_width]
    out = torch.zeros(1, 3, SCALE * plan.height, SCALE * plan.width)
    for k, (y, x) in enumerate(plan.boxes()):
        iy, ix = k // len(plan.xs), k % len(plan.xs)
        y0, y1, x0, x1 = cy[iy], cy[iy + 1], cx[ix], cx[ix + 1]
        oy, ox = SCALE * y, SCALE * x
        out[..., y0:y1, x0:x1] = tiles[k][..., y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return out


def _seam_ratio(img: torch.Tensor, plan: TilePlan) -> tuple[float, float]:
    """Worst border / mean of the per-column |horizontal difference| and per-row |vertical difference|.

    Borders are every output column (row) where a tile starts or ends and the mid-overlap cut: wherever
    stitching could leave a step. Entry ``j`` of a profile is the difference between columns ``j`` and ``j+1``.
    """
    ratios = []
    for dim, starts in ((-1, plan.xs), (-2, plan.ys)):
        prof = img.diff(dim=dim).abs().mean(dim=(0, 1, 2) if dim == -1 else (0, 1, 3))
        borders = {SCALE * s for s in starts[1:]} | {SCALE * (s + plan.tile) for s in starts[:-1]}
        borders |= set(_cuts(starts, plan.tile))
        ratios.append(max(prof[b - 1].item() for b in borders) / prof.mean().item())
    return ratios[0], ratios[1]


def _seam_check(pipe: SRPipeline, lr: torch.Tensor, overlap: int, monkeypatch: pytest.MonkeyPatch) -> None:
    tiles: list[torch.Tensor] = []
    windows = pipe.upscale_windows

    def capture(batch: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = windows(batch, **kwargs)
        tiles.extend(out.split(1))
        return out

    monkeypatch.setattr(pipe, "upscale_windows", capture)
    settings = dataclasses.replace(pipe.settings, tile_overlap=overlap)
    res = pipe.upscale(lr, seed=5, settings=settings)
    h, w = lr.shape[-2:]
    plan = plan_tiles(h, w, WINDOW, overlap)
    assert len(tiles) == plan.num_tiles >= 4 and res.image.shape == (1, 3, SCALE * h, SCALE * w)
    blended = _seam_ratio(res.image, plan)
    hard = _seam_ratio(_hard_stitch(tiles, plan), plan)
    print(f"seam ratio (cols, rows): blended {blended}, hard crop {hard}")
    assert max(blended) <= SEAM_BOUND, (blended, hard)
    # the bound is tight enough to catch seams: the same tiles stitched without blending exceed it
    assert min(hard) > SEAM_BOUND, (blended, hard)


@pytest.mark.parametrize("image", [_gradient, _texture], ids=["gradient", "texture"])
def test_no_seams_across_tiles(pipe: SRPipeline, image: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _seam_check(pipe, image(112, 112), 16, monkeypatch)  # 2 x 2 tiles, one border each way


@pytest.mark.slow
@pytest.mark.parametrize("image", [_gradient, _texture], ids=["gradient", "texture"])
def test_no_seams_across_many_tiles(pipe: SRPipeline, image: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _seam_check(pipe, image(200, 200), 16, monkeypatch)  # 4 x 4 tiles


@pytest.mark.slow
def test_output_shape_many_tiles_non_square(pipe: SRPipeline) -> None:
    res = pipe.upscale(_noise(70, 130), seed=3)
    assert res.image.shape == (1, 3, 280, 520) and res.settings["tiles"] == 6


# --------------------------------------------------------------------------------------------- batched windows


def test_batched_windows_match_one_by_one(pipe: SRPipeline) -> None:
    """Windows run in batches (encoder, transformation net, sampler with a batched KV cache, decoder chunks)
    give the image that one window at a time gives, to the bit: each window keeps its own seeded generator."""
    lr = _noise(64, 160)  # 1 x 3 windows: batches of 2 leave a last batch of 1
    try:
        pipe.batch_windows = 1
        one = pipe.upscale(lr, seed=3)
        pipe.batch_windows = 2
        two = pipe.upscale(lr, seed=3)
    finally:
        pipe.batch_windows = None
    assert one.settings["batch_windows"] == 1 and two.settings["batch_windows"] == 2
    assert one.settings["tiles"] == 3
    # measured: identical on this CPU in fp32 and bf16 (nsarm-tiny, 8 windows per batch too)
    assert torch.equal(one.image, two.image)


def test_upscale_windows_checks_its_seeds(pipe: SRPipeline) -> None:
    from nsarm_core.errors import InputError

    with pytest.raises(InputError, match="1 seeds for 2 windows; pass one seed per window"):
        pipe.upscale_windows(torch.zeros(2, 3, WINDOW, WINDOW), seeds=[1])


def test_decoder_runs_channels_last_and_matches_nchw(pipe: SRPipeline) -> None:
    """On a CPU the decoder's convolutions run channels-last (faster: model card); the decoded image equals the
    contiguous-layout decoder's up to float rounding."""
    import copy

    cl = torch.channels_last
    assert pipe.model.vae.decoder.conv_in.conv.weight.is_contiguous(memory_format=cl)
    nchw = copy.deepcopy(pipe.model.vae).to(memory_format=torch.contiguous_format)
    assert nchw.decoder.conv_in.conv.weight.is_contiguous()
    z = torch.randn(1, pipe.config.vae.codebook_dim, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast, ref = pipe.model.vae.decode(z.contiguous(memory_format=cl)), nchw.decode(z)
    # measured: max 3e-6 here (random tiny model), 1e-4 for nsarm-tiny with CFW; 8-bit levels are 7.8e-3 apart
    assert (fast - ref).abs().max() < 1e-3


# --------------------------------------------------------------------------------------------- CLI


def test_cli_upscale_with_a_model_folder(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nsarm_cli.main import app

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)
    rgba = (rng.random((20, 24, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 24, dtype=np.uint8)[None, :]
    PILImage.fromarray(rgba, "RGBA").save(src / "rgba.png")
    gray16 = (np.linspace(0, 65535, 18 * 15).reshape(18, 15)).astype(np.uint16)
    PILImage.fromarray(gray16).save(src / "gray16.png")  # uint16 -> mode I;16
    PILImage.fromarray((rng.random((16, 21, 3)) * 255).astype(np.uint8), "RGB").save(src / "photo.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then garbage

    _fake_cpu(monkeypatch, tmp_path, "avx avx2 fma")  # no native bf16: --dtype auto is fp32
    res = CliRunner().invoke(
        app,
        ["upscale", str(src), "-o", str(out), "--model", str(tiny_dir), "--device", "cpu",
         "--seed", "7", "--batch-windows", "2", "--json"],
    )  # fmt: skip

    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    status = {Path(r["input"]).name: r["status"] for r in report["records"]}
    assert status == {"broken.png": "failed", "gray16.png": "done", "photo.jpg": "done", "rgba.png": "done"}
    done = [r for r in report["records"] if r["status"] == "done"]
    assert all(r["seed"] == 7 and set(r["timings"]) == STAGES | {"total"} for r in done)
    assert {r["settings"]["dtype"] for r in done} == {
        "float32"
    }  # --dtype auto (the default): fp32 on a CPU without native bf16
    assert sorted(p.name for p in out.iterdir() if p.name != ".nsarm-outputs.jsonl") == [
        "gray16.png",
        "photo.jpg",
        "rgba.png",
    ]  # no partial file
    with PILImage.open(out / "rgba.png") as im:
        assert im.mode == "RGBA" and im.size == (96, 80)
        alpha = np.asarray(im)[..., 3].astype(np.int32)
        assert alpha[:, 0].mean() < 30 and alpha[:, -1].mean() > 225  # the alpha ramp survived
    with PILImage.open(out / "gray16.png") as im:
        assert im.mode in ("I;16", "I") and im.size == (60, 72)
        assert np.asarray(im).max() > 255  # still 16-bit values, not 8-bit
    with PILImage.open(out / "photo.jpg") as im:
        assert im.format == "JPEG" and im.size == (84, 64)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-windows", "0"], "Invalid value for '--batch-windows'"),
        (["--model", "bicubic", "--batch-windows", "2"], "--batch-windows applies to NSARM models"),
    ],
    ids=["zero", "baseline"],
)
def test_cli_refuses_a_bad_batch_windows(tmp_path: Path, args: list[str], message: str) -> None:
    from nsarm_cli.main import app

    PILImage.new("RGB", (8, 8)).save(tmp_path / "a.png")
    res = CliRunner().invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output

"""Batch upscaling (nsarm_core/batch/upscale.py) with the bicubic baseline: formats, safety, resume, prompts."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from PIL import ImageCms

from nsarm_core.batch.inputs import detect_world, plan_inputs, shard
from nsarm_core.batch.upscale import InterpolationUpscaler, UpscaleOptions, output_suffix_for, upscale_files
from nsarm_core.data.captions import load_captions
from nsarm_core.data.io import Image, read_image, write_image
from nsarm_core.errors import ConfigError, InputError
from nsarm_core.pipeline import Upscaler, UpscaleResult


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def _write(path: Path, h: int = 6, w: int = 10, seed: int = 0, **kwargs: object) -> Path:
    write_image(path, Image(rgb=_rgb(h, w, seed), **kwargs))  # type: ignore[arg-type]
    return path


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp-" in p.name]


class Recording:
    """Bicubic x4 that records the prompts and seeds it saw, and can fail on chosen calls."""

    native_scale = 4
    name = "recording"

    def __init__(self, raise_on: dict[int, BaseException] | None = None) -> None:
        self.calls: list[tuple[int, str | None]] = []
        self.raise_on = raise_on or {}
        self._inner = InterpolationUpscaler("bicubic", 4)

    def upscale(self, rgb: torch.Tensor, *, seed: int, prompt: str | None) -> UpscaleResult:
        self.calls.append((seed, prompt))
        if len(self.calls) in self.raise_on:
            raise self.raise_on[len(self.calls)]
        return self._inner.upscale(rgb, seed=seed, prompt=prompt)


def test_bicubic_upscaler_shape_clamp_and_protocol() -> None:
    up = InterpolationUpscaler("bicubic", 4)
    assert isinstance(up, Upscaler)
    x = torch.zeros(1, 3, 5, 7)
    x[..., 2, 3] = 1.0  # an impulse makes bicubic overshoot and ring below 0
    res = up.upscale(x, seed=3, prompt=None)
    assert res.image.shape == (1, 3, 20, 28) and res.seed == 3
    assert res.image.min() >= 0 and res.image.max() <= 1
    raw = F.interpolate(x, size=(20, 28), mode="bicubic", align_corners=False)
    assert raw.min() < 0  # the clamp did something
    assert torch.allclose(res.image, raw.clamp(0, 1))
    assert InterpolationUpscaler("bicubic", 2).upscale(x, seed=0, prompt=None).image.shape == (1, 3, 10, 14)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError):
            InterpolationUpscaler("bicubic", bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"\[1, 3, H, W\]"):
        up.upscale(torch.zeros(3, 5, 7), seed=0, prompt=None)


@pytest.mark.parametrize(("scale", "size"), [(4, (40, 24)), (2, (20, 12)), (3, (30, 18)), (1.5, (15, 9))])
def test_output_size_for_any_scale(tmp_path: Path, scale: float, size: tuple[int, int]) -> None:
    _write(tmp_path / "in" / "a.png", h=6, w=10)
    report = upscale_files(
        InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "out", UpscaleOptions(scale=scale)
    )
    assert report.exit_code == 0 and report.records[0].status == "done"
    out = read_image(tmp_path / "out" / "a.png")
    assert (out.width, out.height) == size == report.records[0].size_out


def test_x2_resize_matches_resize_to_scale(tmp_path: Path) -> None:
    rgb = _rgb(8, 8, 1)
    write_image(tmp_path / "a.png", Image(rgb=rgb))
    upscale_files(
        InterpolationUpscaler("bicubic", 4), [tmp_path / "a.png"], tmp_path / "o", UpscaleOptions(scale=2)
    )
    x4 = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None], scale_factor=4, mode="bicubic").clamp(
        0, 1
    )
    expected = (
        F.interpolate(x4, size=(16, 16), mode="bicubic", antialias=True).clamp(0, 1)[0].permute(1, 2, 0)
    )
    got = read_image(tmp_path / "o" / "a.png").rgb
    assert np.abs(got - expected.numpy()).max() <= 1 / 255 + 1e-6


def test_alpha_kept_and_upscaled_with_bicubic(tmp_path: Path) -> None:
    alpha = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (6, 1))
    _write(tmp_path / "a.png", alpha=alpha)
    upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "a.png"], tmp_path / "o", UpscaleOptions())
    out = read_image(tmp_path / "o" / "a.png")
    assert out.alpha is not None and out.alpha.shape == (24, 40)
    expected = F.interpolate(torch.from_numpy(alpha)[None, None], size=(24, 40), mode="bicubic").clamp(0, 1)
    assert np.abs(out.alpha - expected[0, 0].numpy()).max() <= 1 / 255 + 1e-6


def test_16bit_and_gray_kept(tmp_path: Path) -> None:
    # 16-bit RGB: a smooth ramp keeps levels finer than 8 bits after bicubic.
    ramp = np.linspace(0, 1, 60, dtype=np.float32).reshape(6, 10)
    rgb16 = np.stack([ramp, ramp[::-1], np.full_like(ramp, 0.3)], axis=2)
    write_image(tmp_path / "in" / "c16.png", Image(rgb=rgb16, bit_depth=16))
    g = _rgb(6, 10, 2).mean(axis=2, keepdims=True).repeat(3, axis=2)
    write_image(tmp_path / "in" / "g8.png", Image(rgb=np.ascontiguousarray(g), grayscale=True))
    write_image(tmp_path / "in" / "g16.tif", Image(rgb=np.ascontiguousarray(g), grayscale=True, bit_depth=16))
    report = upscale_files(
        InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "o", UpscaleOptions()
    )
    assert report.count("done") == 3
    c16 = read_image(tmp_path / "o" / "c16.png")
    assert c16.bit_depth == 16 and not c16.grayscale
    levels = np.round(c16.rgb * 65535).astype(np.int64)
    assert np.any(levels % 257 != 0)  # not 8-bit values widened
    g8 = read_image(tmp_path / "o" / "g8.png")
    assert g8.grayscale and g8.bit_depth == 8 and (g8.width, g8.height) == (40, 24)
    with PILImage.open(tmp_path / "o" / "g8.png") as im:
        assert im.mode == "L"
    g16 = read_image(tmp_path / "o" / "g16.tif")
    assert g16.grayscale and g16.bit_depth == 16


def test_format_fallback_to_png(tmp_path: Path) -> None:
    img16 = Image(rgb=_rgb(4, 4), bit_depth=16)
    assert output_suffix_for(Path("a.png"), img16, "jpg")[0] == ".png"
    assert output_suffix_for(Path("a.png"), img16, "tif") == (".tif", None)
    rgba = Image(rgb=_rgb(4, 4), alpha=np.ones((4, 4), np.float32))
    suffix, note = output_suffix_for(Path("a.png"), rgba, "jpg")
    assert suffix == ".png" and note is not None and "transparency" in note
    assert output_suffix_for(Path("a.jpeg"), Image(rgb=_rgb(4, 4)), "same") == (".jpeg", None)
    # End to end: --ext jpg with a 16-bit input writes PNG and says so; the rerun skips it.
    write_image(tmp_path / "in" / "d.png", img16)
    opts = UpscaleOptions(ext="jpg")
    report = upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "o", opts)
    rec = report.records[0]
    assert rec.status == "done" and rec.output == tmp_path / "o" / "d.png" and rec.notes
    assert read_image(tmp_path / "o" / "d.png").bit_depth == 16 and not (tmp_path / "o" / "d.jpg").exists()
    assert (
        upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "o", opts)
        .records[0]
        .status
        == "skipped"
    )


def _icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_exif_and_icc_carried_and_stripped(tmp_path: Path) -> None:
    exif = PILImage.Exif()
    exif[0x010F] = "nsarm-test-camera"  # Make
    pil = PILImage.fromarray((_rgb(6, 10) * 255).astype(np.uint8))
    (tmp_path / "in").mkdir()
    icc = _icc()  # once: a new profile carries its creation time, so two calls can differ
    pil.save(tmp_path / "in" / "p.jpg", exif=exif.tobytes(), icc_profile=icc, quality=95)
    upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "keep", UpscaleOptions())
    upscale_files(
        InterpolationUpscaler("bicubic", 4),
        [tmp_path / "in"],
        tmp_path / "strip",
        UpscaleOptions(keep_metadata=False),
    )
    with PILImage.open(tmp_path / "keep" / "p.jpg") as im:
        assert im.size == (40, 24)
        assert im.info.get("icc_profile") == icc
        assert im.getexif().get(0x010F) == "nsarm-test-camera"
    with PILImage.open(tmp_path / "strip" / "p.jpg") as im:
        assert not im.info.get("icc_profile") and 0x010F not in im.getexif()


def test_skip_resume_and_overwrite(tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "o"
    first = upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], out, UpscaleOptions())
    assert first.count("done") == 3
    old = 1_000_000_000
    for p in out.iterdir():
        os.utime(p, ns=(old, old))
    again = upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], out, UpscaleOptions())
    assert again.count("skipped") == 3 and again.exit_code == 0
    assert all(p.stat().st_mtime_ns == old for p in out.iterdir())
    redo = upscale_files(
        InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], out, UpscaleOptions(overwrite=True)
    )
    assert redo.count("done") == 3
    assert all(p.stat().st_mtime_ns != old for p in out.iterdir())


def _visible(folder: Path) -> list[str]:
    """The file names in ``folder`` without hidden ones (the output record ``.nsarm-outputs.jsonl``)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_bad_files_are_reported_and_the_rest_continue(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _write(src / "good1.png", seed=1)
    _write(src / "good2.jpg", seed=2)
    _write(src / "big.png", h=40, w=40)
    good = (src / "good1.png").read_bytes()
    (src / "corrupt.png").write_bytes(good[: len(good) // 2])
    (src / "empty.png").write_bytes(b"")
    (src / "text.jpg").write_text("not an image at all\n")
    report = upscale_files(
        InterpolationUpscaler("bicubic", 4), [src], tmp_path / "o", UpscaleOptions(max_pixels=1000)
    )
    status = {r.input.name: r for r in report.records}
    assert {n for n, r in status.items() if r.status == "done"} == {"good1.png", "good2.jpg"}
    for name in ("corrupt.png", "empty.png", "text.jpg", "big.png"):
        assert status[name].status == "failed" and name in (status[name].error or "")
        assert not (tmp_path / "o" / name).exists()
    assert "max-pixels" in (status["big.png"].error or "")
    assert report.exit_code == 1 and len(report.failed) == 4
    assert _visible(tmp_path / "o") == ["good1.png", "good2.jpg"]
    assert _temps(tmp_path) == []


def test_never_overwrites_inputs(tmp_path: Path) -> None:
    for i in range(2):
        _write(tmp_path / f"{i}.png", seed=i)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    report = upscale_files(
        InterpolationUpscaler("bicubic", 4),
        [tmp_path],
        tmp_path,
        UpscaleOptions(name_suffix="", overwrite=True),
    )
    assert report.count("failed") == 2 and report.exit_code == 1
    assert all("would overwrite the input" in (r.error or "") for r in report.records)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # A name suffix makes the same folder fine, and the outputs are not taken as inputs on the next run.
    ok = upscale_files(
        InterpolationUpscaler("bicubic", 4), [tmp_path], tmp_path, UpscaleOptions(name_suffix="_x4")
    )
    assert ok.count("done") == 2
    rerun = upscale_files(
        InterpolationUpscaler("bicubic", 4), [tmp_path], tmp_path, UpscaleOptions(name_suffix="_x4")
    )
    assert rerun.count("skipped") == 2 and len(rerun.excluded) == 2 and not list(tmp_path.glob("*_x4_x4*"))


def test_hard_link_to_input_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "a.png")
    (tmp_path / "o").mkdir()
    os.link(tmp_path / "in" / "a.png", tmp_path / "o" / "a.png")
    report = upscale_files(
        InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "o", UpscaleOptions(overwrite=True)
    )
    assert report.records[0].status == "failed" and "overwrite the input" in (report.records[0].error or "")


def test_layout_globs_and_earlier_outputs(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _write(root / "a.png")
    _write(root / "trip" / "b.jpg")
    _write(root / "trip" / "day2" / "c.png")
    loose = _write(tmp_path / "loose.png")
    items, _ = plan_inputs([str(root / "**" / "*.png")], tmp_path / "g")
    assert sorted(str(it.src.relative_to(root)) for it in items) == ["a.png", "trip/day2/c.png"]
    assert all(it.root == root for it in items)
    out = root / "up"  # output folder inside the input folder
    report = upscale_files(InterpolationUpscaler("bicubic", 4), [root, loose], out, UpscaleOptions(scale=1))
    assert report.count("done") == 4
    assert (out / "a.png").is_file() and (out / "trip" / "b.jpg").is_file()
    assert (out / "trip" / "day2" / "c.png").is_file() and (out / "loose.png").is_file()
    items, excluded = plan_inputs([root], out)
    assert len(items) == 3 and len(excluded) == 4  # the outputs inside photos/up are not new inputs
    with pytest.raises(InputError, match="not found"):
        plan_inputs([tmp_path / "missing"], tmp_path / "o")


def test_same_output_name_from_two_inputs_fails_the_second(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "a.jpg")
    _write(tmp_path / "in" / "a.png", seed=1)
    report = upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "in" / "a.jpg", tmp_path / "in" / "a.png"],
                           tmp_path / "o", UpscaleOptions(ext="webp"))  # fmt: skip
    assert [r.status for r in report.records] == ["done", "failed"]
    assert "also the output of" in (report.records[1].error or "")


def test_keyboard_interrupt_then_rerun_finishes(tmp_path: Path) -> None:
    for i in range(4):
        _write(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "o"
    crashing = Recording(raise_on={2: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        upscale_files(crashing, [tmp_path / "in"], out, UpscaleOptions())
    assert _visible(out) == ["0.png"] and _temps(tmp_path) == []
    first_mtime = (out / "0.png").stat().st_mtime_ns
    rerun = Recording()
    report = upscale_files(rerun, [tmp_path / "in"], out, UpscaleOptions())
    assert [r.status for r in report.records] == ["skipped", "done", "done", "done"]
    assert len(rerun.calls) == 3  # the first image was not recomputed
    assert (out / "0.png").stat().st_mtime_ns == first_mtime
    assert _visible(out) == ["0.png", "1.png", "2.png", "3.png"]
    assert _temps(tmp_path) == []


def test_interrupt_during_write_leaves_no_file_and_stale_temps_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "in" / "a.png")
    out = tmp_path / "o"
    out.mkdir()
    stale = out / ".a.png.tmp-0123abcd"  # what a killed (not interrupted) run leaves behind
    stale.write_bytes(b"half")
    other = out / ".unrelated.png.tmp-0123abcd"  # not ours: untouched
    other.write_bytes(b"x")
    import nsarm_core.data.io as io_mod

    real_save = io_mod._save_pillow

    def interrupted(handle: io.BufferedWriter, *args: object) -> None:
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(io_mod, "_save_pillow", interrupted)
    with pytest.raises(KeyboardInterrupt):
        upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], out, UpscaleOptions())
    assert not (out / "a.png").exists() and not stale.exists() and other.exists()
    assert [p for p in out.iterdir() if p != other] == []
    monkeypatch.setattr(io_mod, "_save_pillow", real_save)
    assert (
        upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], out, UpscaleOptions()).count(
            "done"
        )
        == 1
    )


def test_captions_jsonl_matching(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        _write(src / name)
    lines = [
        {"image_path": str(src / "a.png"), "long_caption": "caption of a"},  # absolute path
        {"image_path": "elsewhere/b.png", "caption": "ignored", "long_caption": "caption of b"},  # by name
        {"image_path": "in/c.png", "caption": "caption of c"},  # relative to the jsonl folder
    ]
    cap = tmp_path / "captions.jsonl"
    cap.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    index = load_captions(cap)
    assert index.lookup(src / "a.png") == "caption of a" and index.lookup("x/b.png") == "caption of b"
    _write(src / "d.png")
    up = Recording()
    report = upscale_files(up, [src], tmp_path / "o", UpscaleOptions(captions=index, seed=7))
    by_name = {r.input.name: r for r in report.records}
    assert by_name["a.png"].prompt == "caption of a" and by_name["b.png"].prompt == "caption of b"
    assert by_name["c.png"].prompt == "caption of c" and by_name["c.png"].prompt_source == "caption"
    # no caption: the upscaler gets no prompt and uses its own default (a bicubic one has none)
    assert by_name["d.png"].prompt is None and by_name["d.png"].prompt_source == "default"
    assert (7, None) in up.calls
    assert any("no caption" in n for n in by_name["d.png"].notes)
    assert {seed for seed, _ in up.calls} == {7} and by_name["a.png"].seed == 7
    # --prompt is the fallback when captions are given, and the prompt for all otherwise.
    up2 = Recording()
    opts = UpscaleOptions(captions=index, prompt="fixed", overwrite=True)
    upscale_files(up2, [src / "d.png", src / "a.png"], tmp_path / "o", opts)
    assert [p for _, p in up2.calls] == ["fixed", "caption of a"]
    up3 = Recording()
    upscale_files(up3, [src / "a.png"], tmp_path / "o", UpscaleOptions(prompt="fixed", overwrite=True))
    assert up3.calls == [(1, "fixed")]


def test_captions_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_path": "a.png", "caption": "ok"}\n{"caption": "no path"}\n')
    with pytest.raises(InputError, match="line 2"):
        load_captions(bad)
    bad.write_text("not json\n")
    with pytest.raises(InputError, match="line 1.*not valid JSON"):
        load_captions(bad)
    with pytest.raises(InputError, match="not found"):
        load_captions(tmp_path / "missing.jsonl")
    folder = tmp_path / "caps"
    folder.mkdir()
    (folder / "x.jsonl").write_text(json.dumps({"image_path": "x/a.png", "caption": "A"}) + "\n")
    (folder / "y.jsonl").write_text(json.dumps({"image_path": "y/a.png", "caption": "B"}) + "\n")
    index = load_captions(folder)  # same name, two captions: matched by path only
    assert index.lookup(folder / "x" / "a.png") == "A" and index.lookup(tmp_path / "a.png") is None


def test_failures_inside_the_upscaler(tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path / "in" / f"{i}.png", seed=i)
    up = Recording(raise_on={2: RuntimeError("CUDA out of memory")})
    report = upscale_files(up, [tmp_path / "in"], tmp_path / "o", UpscaleOptions())
    assert [r.status for r in report.records] == ["done", "failed", "done"]
    assert report.records[1].error == "RuntimeError: CUDA out of memory"
    # A configuration error concerns the whole run: it stops the batch.
    with pytest.raises(ConfigError):
        upscale_files(Recording(raise_on={1: ConfigError("bad tile")}), [tmp_path / "in"], tmp_path / "o2",
                      UpscaleOptions())  # fmt: skip

    class WrongShape(InterpolationUpscaler):
        def upscale(self, rgb: torch.Tensor, *, seed: int, prompt: str | None) -> UpscaleResult:
            return UpscaleResult(image=torch.zeros(1, 3, 2, 2), seed=seed)

    bad = upscale_files(
        WrongShape("bicubic", 4), [tmp_path / "in" / "0.png"], tmp_path / "o3", UpscaleOptions()
    )
    assert bad.records[0].status == "failed" and "expected [1, 3, 24, 40]" in (bad.records[0].error or "")


def test_shard_is_a_partition() -> None:
    items = list(range(11))
    shares = [shard(items, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shares, [])) == items
    assert shard(items, 0, 1) == items and shard([], 1, 2) == []
    for rank, world in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(ConfigError):
            shard(items, rank, world)


def test_batch_split_between_processes(tmp_path: Path) -> None:
    for i in range(5):
        _write(tmp_path / "in" / f"{i}.png", seed=i)
    reports = [
        upscale_files(
            InterpolationUpscaler("bicubic", 4),
            [tmp_path / "in"],
            tmp_path / "o",
            UpscaleOptions(rank=r, world_size=2),
        )
        for r in range(2)
    ]
    assert [len(r.records) for r in reports] == [3, 2] and all(r.total_inputs == 5 for r in reports)
    assert len(_visible(tmp_path / "o")) == 5
    assert reports[1].to_dict()["rank"] == 1


def test_detect_world_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert detect_world() == (0, 1, None)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert detect_world() == (0, 1, None)


def test_options_validation_and_report_json(tmp_path: Path) -> None:
    for bad in (dict(scale=0), dict(scale=float("nan")), dict(ext="gif"), dict(quality=0),
                dict(name_suffix="a/b"), dict(rank=2, world_size=2)):  # fmt: skip
        with pytest.raises(ConfigError):
            UpscaleOptions(**bad)  # type: ignore[arg-type]
    _write(tmp_path / "a.png")
    report = upscale_files(
        InterpolationUpscaler("bicubic", 4), [tmp_path / "a.png"], tmp_path / "o", UpscaleOptions()
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["totals"]["done"] == 1 and data["records"][0]["size_out"] == [40, 24]
    assert data["records"][0]["seed"] == 1 and data["upscaler"] == "bicubic"


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "nearest", "lanczos"])
def test_interpolation_baselines(mode: str) -> None:

    x = torch.rand(1, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    out = InterpolationUpscaler(mode, scale=4).upscale(x, seed=0, prompt=None).image
    assert out.shape == (1, 3, 36, 28) and 0 <= out.min() and out.max() <= 1
    # interpolation keeps the mean level (up to edge effects of the kernels)
    assert abs(float(out.mean() - x.mean())) < 0.03
    if mode == "nearest":
        assert torch.equal(out[..., ::4, ::4], x)


def test_unknown_baseline_is_refused() -> None:

    with pytest.raises(ConfigError, match="valid"):
        InterpolationUpscaler("cubic-spline")


def test_output_state_tells_finished_outputs_from_broken_ones(tmp_path: Path) -> None:
    from nsarm_core.batch.outputs import output_state

    png = _write(tmp_path / "a.png", h=32, w=32)
    jpg = _write(tmp_path / "a.jpg", h=32, w=32)
    assert output_state(png) == ("complete", None) and output_state(jpg) == ("complete", None)
    assert output_state(tmp_path / "none.png") == ("absent", None)
    (tmp_path / "link.png").symlink_to(tmp_path / "missing.png")
    assert output_state(tmp_path / "link.png") == ("absent", None)  # the atomic write replaces it
    (tmp_path / "dir.png").mkdir()
    assert output_state(tmp_path / "dir.png") == ("blocked", "is a folder")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert output_state(tmp_path / "empty.jpg") == ("incomplete", "empty (0 bytes)")
    data = jpg.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert output_state(tmp_path / "cut.jpg")[0] == "incomplete"
    damaged = bytearray(png.read_bytes())
    damaged[40] ^= 0xFF  # a byte inside a chunk: its CRC no longer matches
    (tmp_path / "damaged.png").write_bytes(bytes(damaged))
    state, reason = output_state(tmp_path / "damaged.png")
    assert state == "incomplete" and "checksum mismatch" in (reason or "")


def test_output_records_survive_a_cut_line_and_the_last_line_wins(tmp_path: Path) -> None:
    from nsarm_core.batch.outputs import RECORDS_NAME, OutputRecords

    out = tmp_path / "o"
    out.mkdir()
    (out / RECORDS_NAME).write_text(
        '{"output": "a.png", "settings": {"scale": 4.0}}\n{"output": "b.png", "sett'  # killed mid-line
    )
    records = OutputRecords(out)
    assert records.get(out / "a.png") == {"scale": 4.0} and records.get(out / "b.png") is None
    records.add(out / "b.png", {"scale": 2.0})
    records.add(out / "sub" / "a.png", {"scale": 3.0})
    records.add(out / "a.png", {"scale": 8.0})
    again = OutputRecords(out)
    assert again.get(out / "a.png") == {"scale": 8.0} and again.get(out / "b.png") == {"scale": 2.0}
    assert again.get(out / "sub" / "a.png") == {"scale": 3.0}


def test_outputs_without_a_record_are_kept_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(2):
        _write(tmp_path / "in" / f"{i}.png", seed=i)
        _write(tmp_path / "o" / f"{i}.png", h=24, w=40, seed=i)  # made by another tool (or an older nsarm)
    with caplog.at_level(logging.WARNING):
        report = upscale_files(
            InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "o", UpscaleOptions()
        )
    assert report.count("skipped") == 2
    assert sum("without recorded settings" in r.getMessage() for r in caplog.records) == 1  # said once
    assert all("not recorded" in r.notes[0] for r in report.records)


def test_upscale_batch_takes_this_process_share_and_its_device(tmp_path: Path, monkeypatch) -> None:
    """The one entry point of `nsarm upscale`: rank/world from detect_world (here process 2 of 2 on its own
    device), captions loaded from a path, the model loaded after the checks, then this process's files only."""
    from nsarm_core.batch import upscale as U

    for i in range(4):
        _write(tmp_path / "in" / f"{i}.png", seed=i)
    (tmp_path / "caps.jsonl").write_text(json.dumps({"image_path": "1.png", "caption": "a cat"}) + "\n")
    monkeypatch.setattr(U, "detect_world", lambda: (1, 2, "cpu:7"))
    loaded: dict[str, object] = {}

    def fake_load(model: object, **kwargs: object) -> InterpolationUpscaler:
        loaded.update(kwargs, model=model)
        return InterpolationUpscaler("bicubic", scale=2)

    monkeypatch.setattr(U, "load_upscaler", fake_load)
    started: list[tuple[int, int]] = []
    report = U.upscale_batch(
        "bicubic",
        [tmp_path / "in"],
        tmp_path / "out",
        UpscaleOptions(scale=2.0),
        load={"device": "auto"},
        captions=tmp_path / "caps.jsonl",
        on_start=lambda rank, world: started.append((rank, world)),
    )
    assert started == [(1, 2)]
    assert loaded == {"model": "bicubic", "scale": 2.0, "device": "cpu:7"}
    assert [r.input.name for r in report.records] == ["1.png", "3.png"]  # every 2nd file, from the second
    assert [r.status for r in report.records] == ["done", "done"]
    assert report.records[0].prompt == "a cat"

"""Tests for nsarm_core.data.io: every mode and format, 16-bit, EXIF/ICC, bombs, bad files, atomic writes."""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps

from nsarm_core.data import io as nio
from nsarm_core.data.io import (
    SUPPORTED_SUFFIXES,
    Image,
    atomic_write_bytes,
    atomic_write_text,
    from_tensor,
    read_image,
    to_tensor,
    write_image,
)
from nsarm_core.errors import InputError

# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def _rgb8(h: int = 12, w: int = 17, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth_rgb8(h: int = 32, w: int = 48) -> np.ndarray:
    """A smooth gradient, so lossy codecs stay close to it."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], axis=2).astype(
        np.uint8
    )


def _as16(values: np.ndarray) -> np.ndarray:
    return np.round(values * 65535).astype(np.uint16)


def _as8(values: np.ndarray) -> np.ndarray:
    return np.round(values * 255).astype(np.uint8)


def _png_filter_reference(raw: np.ndarray, bpp: int, kinds: list[int]) -> bytes:
    """Byte-by-byte PNG filtering (spec section 9), independent of the module's vectorised encoder."""
    out = bytearray()
    height, stride = raw.shape
    for y in range(height):
        kind = kinds[y % len(kinds)]
        out.append(kind)
        for i in range(stride):
            x = int(raw[y, i])
            a = int(raw[y, i - bpp]) if i >= bpp else 0
            b = int(raw[y - 1, i]) if y > 0 else 0
            c = int(raw[y - 1, i - bpp]) if y > 0 and i >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out.append((x - pred) & 0xFF)
    return bytes(out)


def _png16_file(samples: np.ndarray, kinds: list[int], interlace: int = 0) -> bytes:
    """A 16-bit PNG built by hand (reference filters), for C = 1, 2, 3, 4 samples."""
    height, width, channels = samples.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = samples.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, interlace)
    idat = zlib.compress(_png_filter_reference(raw, channels * 2, kinds))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int | None = None, make: str = "nsarm-test-camera") -> PILImage.Exif:
    exif = PILImage.Exif()
    exif[0x010F] = make
    if orientation is not None:
        exif[0x0112] = orientation
    return exif


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------------------
# 8-bit modes
# ------------------------------------------------------------------------------------------------------------


def test_gray_l_round_trip(tmp_path: Path) -> None:
    gray = _rgb8()[..., 0]
    PILImage.fromarray(gray, "L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.grayscale and img.bit_depth == 8 and img.alpha is None and img.format == "PNG"
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (12, 17, 3)
    assert np.array_equal(_as8(img.rgb[..., 0]), gray) and np.array_equal(img.rgb[..., 0], img.rgb[..., 2])
    write_image(tmp_path / "out.png", img)
    back = PILImage.open(tmp_path / "out.png")
    assert back.mode == "L" and np.array_equal(np.asarray(back), gray)


def test_gray_alpha_la_round_trip(tmp_path: Path) -> None:
    data = _rgb8()[..., :2]
    PILImage.fromarray(data, "LA").save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    assert img.grayscale and img.alpha is not None
    assert np.array_equal(_as8(img.alpha), data[..., 1])
    write_image(tmp_path / "out.png", img)
    back = PILImage.open(tmp_path / "out.png")
    assert back.mode == "LA" and np.array_equal(np.asarray(back), data)


def test_palette_with_transparency_becomes_alpha(tmp_path: Path) -> None:
    index = np.random.default_rng(3).integers(0, 4, (9, 11), dtype=np.uint8)
    pal = PILImage.fromarray(index, "P")
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]
    pal.putpalette(palette)
    pal.save(tmp_path / "p.png", transparency=2)
    img = read_image(tmp_path / "p.png")
    assert not img.grayscale and img.alpha is not None
    colours = np.array(palette, np.uint8).reshape(4, 3)
    assert np.array_equal(_as8(img.rgb), colours[index])
    assert np.array_equal(img.alpha, (index != 2).astype(np.float32))
    write_image(tmp_path / "out.png", img)
    back = PILImage.open(tmp_path / "out.png")
    assert back.mode == "RGBA"
    assert np.array_equal(np.asarray(back)[..., 3], np.where(index == 2, 0, 255))


def test_palette_without_transparency_is_rgb(tmp_path: Path) -> None:
    rgb = _rgb8()
    PILImage.fromarray(rgb).quantize(16).save(tmp_path / "p.bmp")
    img = read_image(tmp_path / "p.bmp")
    assert img.alpha is None and img.format == "BMP"
    assert np.array_equal(_as8(img.rgb), np.asarray(PILImage.open(tmp_path / "p.bmp").convert("RGB")))


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_rgb_and_rgba_round_trip(tmp_path: Path, mode: str) -> None:
    data = np.random.default_rng(5).integers(0, 256, (10, 13, len(mode)), dtype=np.uint8)
    PILImage.fromarray(data, mode).save(tmp_path / "in.png")
    img = read_image(tmp_path / "in.png")
    assert (img.alpha is not None) == (mode == "RGBA") and not img.grayscale
    write_image(tmp_path / "out.png", img)
    back = PILImage.open(tmp_path / "out.png")
    assert back.mode == mode and np.array_equal(np.asarray(back), data)


def test_rgb_colour_key_transparency(tmp_path: Path) -> None:
    data = _rgb8()
    data[0, 0] = (1, 2, 3)
    PILImage.fromarray(data).save(tmp_path / "key.png", transparency=(1, 2, 3))
    img = read_image(tmp_path / "key.png")
    assert (
        img.alpha is not None
        and img.alpha[0, 0] == 0
        and img.alpha.sum() == img.alpha.size - np.sum(np.all(data == (1, 2, 3), axis=2))
    )


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_is_converted_to_rgb(tmp_path: Path, suffix: str) -> None:
    rgb = _smooth_rgb8()
    PILImage.fromarray(rgb).convert("CMYK").save(
        tmp_path / f"c{suffix}", **({"quality": 100} if suffix == ".jpg" else {})
    )
    img = read_image(tmp_path / f"c{suffix}")
    assert img.rgb.shape == rgb.shape and img.alpha is None and img.bit_depth == 8 and img.icc_profile is None
    error = np.abs(_as8(img.rgb).astype(int) - rgb).max()
    assert error == 0 if suffix == ".tif" else error <= 12


# ------------------------------------------------------------------------------------------------------------
# 16-bit
# ------------------------------------------------------------------------------------------------------------

_GRAY16 = np.array([[0, 1, 255, 256], [32767, 32768, 65534, 65535], [12345, 54321, 7, 40000]], np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_gray16_round_trip(tmp_path: Path, suffix: str) -> None:
    PILImage.fromarray(_GRAY16).save(tmp_path / f"g{suffix}")
    img = read_image(tmp_path / f"g{suffix}")
    assert img.bit_depth == 16 and img.grayscale and img.alpha is None
    assert np.array_equal(_as16(img.rgb[..., 1]), _GRAY16)
    write_image(tmp_path / f"out{suffix}", img)
    back = PILImage.open(tmp_path / f"out{suffix}")
    assert back.mode.startswith("I;16") and np.array_equal(np.asarray(back), _GRAY16)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png16_hand_built_all_filters(tmp_path: Path, channels: int) -> None:
    """16-bit colour PNGs with every filter type (incl. Average and Paeth) decode exactly."""
    samples = np.random.default_rng(channels).integers(0, 65536, (7, 6, channels), dtype=np.uint16)
    samples[3:5] = 40000  # flat rows make Up/Paeth predictions exact
    (tmp_path / "h.png").write_bytes(_png16_file(samples, kinds=[0, 1, 2, 3, 4, 4, 3]))
    img = read_image(tmp_path / "h.png")
    assert img.bit_depth == 16 and img.grayscale == (channels == 2)
    colour = samples[..., :1] if channels <= 2 else samples[..., :3]
    assert np.array_equal(_as16(img.rgb), np.broadcast_to(colour, img.rgb.shape))
    if channels in (2, 4):
        assert img.alpha is not None and np.array_equal(_as16(img.alpha), samples[..., -1])


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_write_read_exact(tmp_path: Path, channels: int) -> None:
    samples = np.random.default_rng(10 + channels).integers(0, 65536, (19, 23, channels), dtype=np.uint16)
    samples[5:9, :] = 1234  # mixture of noisy and flat rows -> several filter types get chosen
    write_image(tmp_path / "o.png", samples if channels > 1 else samples[..., 0])
    img = read_image(tmp_path / "o.png")
    assert img.bit_depth == 16 and img.grayscale == (channels <= 2)
    colour = samples[..., :1] if channels <= 2 else samples[..., :3]
    assert np.array_equal(_as16(img.rgb), np.broadcast_to(colour, img.rgb.shape))
    if channels in (2, 4):
        assert np.array_equal(_as16(img.alpha), samples[..., -1])
    if channels >= 3:
        # An independent decoder (Pillow narrows 16-bit colour PNG to the high byte) agrees with the encoder.
        with PILImage.open(tmp_path / "o.png") as pil:
            assert np.array_equal(np.asarray(pil), (samples >> 8).astype(np.uint8))


def test_png16_interlaced_is_refused_clearly(tmp_path: Path) -> None:
    samples = np.zeros((4, 4, 3), np.uint16)
    (tmp_path / "inter.png").write_bytes(_png16_file(samples, kinds=[0], interlace=1))
    with pytest.raises(InputError, match=r"inter\.png.*interlaced"):
        read_image(tmp_path / "inter.png")


@pytest.mark.parametrize("channels", [3, 4])
def test_tiff16_colour_write_read_exact(tmp_path: Path, channels: int) -> None:
    samples = np.random.default_rng(20 + channels).integers(0, 65536, (21, 18, channels), dtype=np.uint16)
    write_image(tmp_path / "o.tif", samples)
    img = read_image(tmp_path / "o.tif")
    assert img.bit_depth == 16 and not img.grayscale
    assert np.array_equal(_as16(img.rgb), samples[..., :3])
    assert (img.alpha is not None) == (channels == 4)
    if channels == 4:
        assert np.array_equal(_as16(img.alpha), samples[..., 3])
    tifffile = pytest.importorskip("tifffile")
    assert np.array_equal(tifffile.imread(tmp_path / "o.tif"), samples)  # an independent decoder agrees


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"compression": "zlib", "predictor": True, "rowsperstrip": 5},
        {"compression": "zlib", "tile": (16, 16), "predictor": True},
        {"byteorder": ">", "compression": "zlib", "predictor": True},
        {"planarconfig": "separate", "compression": "zlib", "rowsperstrip": 4},
    ],
    ids=["raw", "deflate-predictor", "tiled", "big-endian", "planar"],
)
def test_tiff16_colour_from_tifffile(tmp_path: Path, options: dict) -> None:
    tifffile = pytest.importorskip("tifffile")
    samples = np.random.default_rng(7).integers(0, 65536, (37, 45, 3), dtype=np.uint16)
    data = np.ascontiguousarray(samples.transpose(2, 0, 1)) if options.get("planarconfig") else samples
    tifffile.imwrite(tmp_path / "t.tif", data, photometric="rgb", **options)
    img = read_image(tmp_path / "t.tif")
    assert img.bit_depth == 16 and np.array_equal(_as16(img.rgb), samples)


def test_tiff16_colour_lzw(tmp_path: Path) -> None:
    """LZW (libtiff's codec): Pillow writes the strips as a 3x wider gray image; a new IFD calls them RGB."""
    samples = np.random.default_rng(8).integers(0, 65536, (13, 10, 3), dtype=np.uint16)
    samples[4:8] = 999  # something for LZW to compress
    gray = io.BytesIO()
    PILImage.fromarray(samples.reshape(13, 30)).save(gray, format="TIFF", compression="tiff_lzw")
    with PILImage.open(gray) as pil:
        offsets, counts = list(pil.tag_v2[273]), list(pil.tag_v2[279])
        rows_per_strip = int(pil.tag_v2[278])
    data = gray.getvalue()
    start = len(data) + len(data) % 2
    entries = [
        (256, 4, [10]),
        (257, 4, [13]),
        (258, 3, [16, 16, 16]),
        (259, 3, [5]),  # LZW
        (262, 3, [2]),
        (273, 4, offsets),
        (277, 3, [3]),
        (278, 4, [rows_per_strip]),
        (279, 4, counts),
        (284, 3, [1]),
    ]
    rgb_tiff = bytearray(data + b"\x00" * (start - len(data)) + nio._tiff_ifd(entries, "<", start))
    struct.pack_into("<I", rgb_tiff, 4, start)
    (tmp_path / "lzw.tif").write_bytes(bytes(rgb_tiff))
    with PILImage.open(tmp_path / "lzw.tif") as pil:
        assert pil.mode == "RGB" and pil.tag_v2[259] == 5  # Pillow alone would narrow it to 8 bits
    img = read_image(tmp_path / "lzw.tif")
    assert img.bit_depth == 16 and np.array_equal(_as16(img.rgb), samples)


def test_16bit_to_8bit_formats_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    samples = np.random.default_rng(1).integers(0, 65536, (8, 9, 3), dtype=np.uint16)
    with caplog.at_level(logging.WARNING, logger="nsarm_core.data.io"):
        write_image(tmp_path / "o.jpg", samples, bit_depth=16)
    assert "8 bits" in caplog.text
    assert PILImage.open(tmp_path / "o.jpg").mode == "RGB"


def test_explicit_bit_depth_conversion(tmp_path: Path) -> None:
    rgb = _rgb8()
    write_image(tmp_path / "o.png", rgb, bit_depth=16)
    img = read_image(tmp_path / "o.png")
    assert img.bit_depth == 16 and np.array_equal(_as16(img.rgb), rgb.astype(np.uint16) * 257)
    write_image(tmp_path / "o8.png", img, bit_depth=8)
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "o8.png")), rgb)


# ------------------------------------------------------------------------------------------------------------
# EXIF orientation and metadata
# ------------------------------------------------------------------------------------------------------------


def test_jpeg_orientation_6_rotates(tmp_path: Path) -> None:
    data = np.zeros((20, 30, 3), np.uint8)
    data[:6, :8] = 255  # white block at the stored top-left
    PILImage.fromarray(data).save(tmp_path / "o6.jpg", exif=_exif(6), quality=100)
    img = read_image(tmp_path / "o6.jpg")
    assert (img.height, img.width) == (30, 20)  # orientation 6: shown rotated 90 degrees clockwise
    pixels = _as8(img.rgb)
    assert pixels[:8, -6:].min() > 200  # the block is now at the top-right
    assert pixels[:8, :6].max() < 50
    with PILImage.open(tmp_path / "o6.jpg") as pil:
        assert np.array_equal(pixels, np.asarray(ImageOps.exif_transpose(pil)))
    exif = PILImage.Exif()
    exif.load(img.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "nsarm-test-camera"
    # Written back, viewers must not rotate it a second time.
    write_image(tmp_path / "out.jpg", img)
    with PILImage.open(tmp_path / "out.jpg") as out:
        assert out.size == (20, 30) and out.getexif()[0x0112] == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    data = np.random.default_rng(orientation).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    PILImage.fromarray(data, "RGBA").save(tmp_path / "o.png", exif=_exif(orientation))
    img = read_image(tmp_path / "o.png")
    with PILImage.open(tmp_path / "o.png") as pil:
        expected = np.asarray(ImageOps.exif_transpose(pil))
    assert np.array_equal(_as8(img.rgb), expected[..., :3])
    assert np.array_equal(_as8(img.alpha), expected[..., 3])


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_icc_and_exif_carried_and_stripped(tmp_path: Path, suffix: str) -> None:
    icc = _srgb_icc()
    PILImage.fromarray(_smooth_rgb8()).save(tmp_path / "src.jpg", icc_profile=icc, exif=_exif())
    img = read_image(tmp_path / "src.jpg")
    assert img.icc_profile == icc and img.exif is not None
    write_image(tmp_path / f"keep{suffix}", img)
    with PILImage.open(tmp_path / f"keep{suffix}") as kept:
        assert kept.info.get("icc_profile") == icc
        assert kept.getexif().get(0x010F) == "nsarm-test-camera"
    again = read_image(tmp_path / f"keep{suffix}")
    assert again.icc_profile == icc and again.exif is not None
    write_image(tmp_path / f"strip{suffix}", img, keep_metadata=False)
    with PILImage.open(tmp_path / f"strip{suffix}") as stripped:
        assert not stripped.info.get("icc_profile")
        assert 0x010F not in stripped.getexif()


def test_png16_carries_icc_and_exif(tmp_path: Path) -> None:
    icc = _srgb_icc()
    samples = np.random.default_rng(2).integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    rgb = (samples / 65535).astype(np.float32)
    img = Image(rgb=rgb, bit_depth=16, icc_profile=icc, exif=_exif().tobytes())
    write_image(tmp_path / "m.png", img)
    back = read_image(tmp_path / "m.png")
    assert back.icc_profile == icc and np.array_equal(_as16(back.rgb), samples)
    exif = PILImage.Exif()
    exif.load(back.exif)
    assert exif[0x010F] == "nsarm-test-camera"


# ------------------------------------------------------------------------------------------------------------
# formats, alpha fallbacks, arrays, quantisation
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUPPORTED_SUFFIXES)
def test_every_format_reads_and_writes(tmp_path: Path, suffix: str) -> None:
    rgb = _smooth_rgb8()
    out = write_image(tmp_path / f"x{suffix}", rgb.astype(np.float32) / 255)
    assert out == tmp_path / f"x{suffix}" and _files(tmp_path) == [f"x{suffix}"]
    img = read_image(out)
    assert img.format == nio._SUFFIX_FORMATS[suffix] and img.rgb.shape == rgb.shape
    error = np.abs(_as8(img.rgb).astype(int) - rgb).max()
    if suffix in (".jpg", ".jpeg", ".webp"):
        assert np.abs(_as8(img.rgb).astype(int) - rgb).mean() < 3
    else:
        assert error == 0


@pytest.mark.parametrize("suffix", [".jpg", ".bmp"])
def test_alpha_dropped_with_warning(tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture) -> None:
    rgba = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="nsarm_core.data.io"):
        write_image(tmp_path / f"a{suffix}", rgba)
    assert "alpha" in caplog.text
    assert read_image(tmp_path / f"a{suffix}").alpha is None


@pytest.mark.parametrize("suffix", [".webp", ".tif"])
def test_alpha_kept_where_possible(tmp_path: Path, suffix: str) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    write_image(tmp_path / f"a{suffix}", rgba.astype(np.float32) / 255)
    img = read_image(tmp_path / f"a{suffix}")
    assert img.alpha is not None
    if suffix == ".tif":
        assert np.array_equal(_as8(img.alpha), rgba[..., 3])


def test_gray_image_written_gray_to_jpeg(tmp_path: Path) -> None:
    PILImage.fromarray(_smooth_rgb8()[..., 0], "L").save(tmp_path / "g.png")
    write_image(tmp_path / "g.jpg", read_image(tmp_path / "g.png"))
    assert PILImage.open(tmp_path / "g.jpg").mode == "L"


def test_quantisation_rounds_and_clips(tmp_path: Path) -> None:
    values = np.array([[-0.5, 0.0, 0.4 / 255, 0.6 / 255, 254.5 / 255 + 1e-6, 1.0, 7.0, np.nan]], np.float32)
    write_image(tmp_path / "q.png", values)
    assert np.asarray(PILImage.open(tmp_path / "q.png")).tolist() == [[0, 0, 0, 1, 255, 255, 255, 0]]


def test_bad_arguments(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(InputError, match="unsupported suffix"):
        write_image(tmp_path / "x.gif", rgb)
    with pytest.raises(InputError, match="bit_depth"):
        write_image(tmp_path / "x.png", rgb, bit_depth=12)
    with pytest.raises(InputError, match=r"\[H, W, C\]"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 5), np.float32))
    with pytest.raises(InputError, match="float32"):
        Image(rgb=np.zeros((4, 4, 3), np.float64))
    with pytest.raises(InputError, match="alpha"):
        Image(rgb=rgb, alpha=np.zeros((3, 4), np.float32))
    assert _files(tmp_path) == []


# ------------------------------------------------------------------------------------------------------------
# decompression bombs and bad files
# ------------------------------------------------------------------------------------------------------------


def test_decompression_bomb_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    PILImage.fromarray(_rgb8(40, 50)).save(tmp_path / "big.png")

    def no_decoding(self: PILImage.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(PILImage.Image, "load", no_decoding)
    out = tmp_path / "out" / "big.png"
    with pytest.raises(InputError) as info:
        write_image(out, read_image(tmp_path / "big.png", max_pixels=1000))
    message = str(info.value)
    assert "big.png" in message and "50x40" in message and "2,000" in message and "1,000" in message
    assert "--max-pixels" in message and "\n" not in message
    assert not out.exists() and not out.parent.exists()


def test_max_pixels_none_or_zero_disables_the_limit(tmp_path: Path) -> None:
    PILImage.fromarray(_rgb8(40, 50)).save(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png", max_pixels=None).width == 50
    assert read_image(tmp_path / "big.png", max_pixels=0).height == 40


def test_pillow_bomb_guard_defers_to_max_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    PILImage.fromarray(_rgb8(20, 20)).save(tmp_path / "b.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # Pillow itself refuses > 200 pixels now
    with pytest.raises(InputError, match=r"b\.png.*--max-pixels"):
        read_image(tmp_path / "b.png", max_pixels=150)
    assert read_image(tmp_path / "b.png", max_pixels=1000).width == 20  # our (higher) limit wins
    assert PILImage.MAX_IMAGE_PIXELS == 100  # and Pillow's global is restored


def _truncated_png(tmp: Path) -> bytes:
    PILImage.fromarray(_rgb8(64, 64)).save(tmp / "full.png")
    return (tmp / "full.png").read_bytes()[:-600]


def _truncated_jpeg(tmp: Path) -> bytes:
    PILImage.fromarray(_rgb8(64, 64)).save(tmp / "full.jpg", quality=95)
    return (tmp / "full.jpg").read_bytes()[:-800]


def _corrupt_png(tmp: Path) -> bytes:
    PILImage.fromarray(_rgb8(64, 64)).save(tmp / "full.png")
    data = bytearray((tmp / "full.png").read_bytes())
    data[100:140] = bytes(40)
    return bytes(data)


def _truncated_png16(tmp: Path) -> bytes:
    samples = np.random.default_rng(0).integers(0, 65536, (32, 32, 3), dtype=np.uint16)
    return nio._encode_png16(samples, None, None)[:-300]


def _corrupt_png16(tmp: Path) -> bytes:
    samples = np.random.default_rng(0).integers(0, 65536, (32, 32, 3), dtype=np.uint16)
    data = bytearray(nio._encode_png16(samples, None, None))
    data[200:260] = bytes(60)
    return bytes(data)


@pytest.mark.parametrize(
    "name, make",
    [
        ("empty.png", lambda tmp: b""),
        ("notes.png", lambda tmp: b"this is a text file renamed to .png\nsecond line\n"),
        ("garbage.jpg", lambda tmp: os.urandom(64)),
        ("truncated.png", _truncated_png),
        ("truncated.jpg", _truncated_jpeg),
        ("corrupt.png", _corrupt_png),
        ("truncated16.png", _truncated_png16),
        ("corrupt16.png", _corrupt_png16),
    ],
)
def test_bad_files_raise_one_line_input_error(tmp_path: Path, name: str, make) -> None:
    (tmp_path / name).write_bytes(make(tmp_path))
    with pytest.raises(InputError) as info:
        read_image(tmp_path / name)
    message = str(info.value)
    assert name in message and "\n" not in message


def test_missing_and_folder_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"not found.*nope\.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="not a file"):
        read_image(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------------------


def test_failed_encoder_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "result.png"
    out.write_bytes(b"older output")

    def exploding_save(self: PILImage.Image, fp, *args, **kwargs) -> None:
        fp.write(b"\x89PNG half an image")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(PILImage.Image, "save", exploding_save)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_image(out, np.zeros((4, 4, 3), np.float32))
    assert out.read_bytes() == b"older output" and _files(tmp_path) == ["result.png"]
    with pytest.raises(RuntimeError):
        write_image(tmp_path / "new.jpg", np.zeros((4, 4, 3), np.float32))
    assert _files(tmp_path) == ["result.png"]


def test_failed_png16_encoder_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs) -> bytes:
        raise MemoryError("simulated")

    monkeypatch.setattr(nio, "_encode_png16", fail)
    (tmp_path / "x.png").write_bytes(b"older output")
    with pytest.raises(MemoryError):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint16))
    assert _files(tmp_path) == ["x.png"] and (tmp_path / "x.png").read_bytes() == b"older output"


def test_atomic_text_and_bytes(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "manifest.json"
    assert atomic_write_text(target, '{"k": 1}\n') == target
    assert target.read_text() == '{"k": 1}\n'
    atomic_write_bytes(target, b"v2")
    assert target.read_bytes() == b"v2" and _files(target.parent) == ["manifest.json"]
    with pytest.raises(InputError, match="exists"):
        atomic_write_bytes(target, b"v3", overwrite=False)
    image = target.with_suffix(".png")
    write_image(image, np.zeros((2, 2), np.float32))
    before = image.read_bytes()
    with pytest.raises(InputError, match="exists"):
        write_image(image, np.ones((2, 2), np.float32), overwrite=False)
    assert target.read_bytes() == b"v2" and image.read_bytes() == before


def test_atomic_open_writes_hidden_temp_in_same_folder(tmp_path: Path) -> None:
    with nio.atomic_open(tmp_path / "f.bin") as handle:
        handle.write(b"x")
        temps = [p for p in tmp_path.iterdir()]
        assert len(temps) == 1 and temps[0].name.startswith(".f.bin.tmp-")
        assert not (tmp_path / "f.bin").exists()
    assert _files(tmp_path) == ["f.bin"]


# ------------------------------------------------------------------------------------------------------------
# tensors
# ------------------------------------------------------------------------------------------------------------


def test_tensor_round_trip() -> None:
    torch = pytest.importorskip("torch")
    rgb = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    tensor = to_tensor(rgb)
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0, 1], torch.from_numpy(rgb[..., 1]))
    assert np.array_equal(from_tensor(tensor), rgb)
    assert np.array_equal(from_tensor(tensor[0].double()), rgb)
    clipped = from_tensor(torch.tensor([[[[-1.0]], [[0.5]], [[2.0]]]]))
    assert clipped.dtype == np.float32 and clipped.tolist() == [[[0.0, 0.5, 1.0]]]
    with pytest.raises(InputError):
        to_tensor(rgb[..., :2])
    with pytest.raises(InputError):
        from_tensor(torch.zeros(2, 3, 4, 4))


def test_image_properties(tmp_path: Path) -> None:
    img = Image(rgb=np.zeros((3, 5, 3), np.float32))
    assert (img.height, img.width) == (3, 5) and img.bit_depth == 8 and img.alpha is None
    buffer = io.BytesIO()
    PILImage.fromarray(_rgb8()).save(buffer, format="PNG")
    (tmp_path / "s.png").write_bytes(buffer.getvalue())
    assert read_image(str(tmp_path / "s.png")).source == tmp_path / "s.png"

"""Robust image I/O for the super-resolution tools: read, write, and convert to/from tensors.

Not a paper component: this is the edge of the pipeline (docs/architecture.md S.5, package layout).
Images travel through nsarm as float32 arrays in [0, 1]; this module is the only place that knows about file
formats, bit depths, alpha, colour profiles, EXIF and decompression bombs.

What it guarantees:

* **Every common photo mode is read**: L, LA, P (palette transparency becomes alpha), RGB, RGBA, CMYK
  (converted to RGB through its ICC profile when it has one), 16-bit gray (``I;16``/``I;16B``/``I``) and
  16-bit RGB / RGBA / gray+alpha PNG and TIFF. Pillow 13 narrows 16-bit colour PNG and TIFF to 8 bits when it
  decodes them, so those are decoded here: PNG by a small zlib + numpy decoder (filters 0-4, non-interlaced),
  TIFF by letting Pillow/libtiff decompress the strips as one wide 16-bit gray image (any compression libtiff
  knows: none, deflate, LZW, PackBits) and undoing the horizontal predictor in numpy. 16 bits stay 16 bits end
  to end (values / 65535).
* **EXIF orientation is applied** (``ImageOps.exif_transpose`` semantics) and the orientation tag is then
  reset to 1 in place, so the rest of the EXIF block (maker notes included) is carried byte for byte.
* **Decompression bombs are refused** from the header, before any pixel is decoded (``max_pixels``).
* **Corrupt, truncated, empty and non-image files** raise :class:`~nsarm_core.errors.InputError` with a
  one-line message naming the file. Decoding is forced with ``.load()`` and ``LOAD_TRUNCATED_IMAGES`` is never
  set.
* **Writes are atomic** (:mod:`nsarm_core.atomic`): the encoder writes a hidden temporary file next to the
  target, which is renamed over the target only when complete. No half-written image ever exists.

Why a small 16-bit codec is written here (checked against Pillow 13.0, installed for ``pillow>=10.4``, tifffile
2026.3 and imageio 2.38, in December 2026):

* Pillow has no 16-bit RGB(A) mode: ``Image.fromarray`` refuses ``uint16 [H, W, 3]`` and ``RGB;16``/``RGB;16B``
  are not modes, so it can neither keep 16-bit colour PNG/TIFF samples when decoding nor encode them. It does
  16-bit *gray* exactly, which the TIFF reader below relies on.
* imageio reads and writes PNG through Pillow, so it has the same limit.
* tifffile writes 16-bit RGB TIFF (uncompressed or deflate) and reads uncompressed and deflate files, but LZW
  and PackBits - the compressions most cameras and editors write - need the binary ``imagecodecs`` package. It
  is not a dependency of this project (only the ``dev`` extra pulls it in, through scikit-image), and its writer
  alone would save about 70 lines, so the TIFF code stays: it lets Pillow/libtiff decompress every compression
  libtiff knows and only reassembles the samples.
* No maintained library on the dependency list writes 16-bit RGB PNG (pypng does, in pure Python, last released
  in 2022), hence the ~150-line zlib + numpy PNG codec.

Everything else (8-bit images, palettes, CMYK, EXIF, ICC, JPEG/WebP/BMP) goes through Pillow.

Only numpy and Pillow are imported at module import; torch is imported inside :func:`to_tensor` /
:func:`from_tensor`.

Shape legend:
    H, W   image height and width in pixels
    C      samples per pixel in a file (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)
    rgb    float32 [H, W, 3] in [0, 1] (gray images carry 3 equal channels)
    alpha  float32 [H, W] in [0, 1]
    tensor float32 [1, 3, H, W] in [0, 1]
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image as PILImage
from PIL import ImageCms

from nsarm_core.atomic import atomic_open, atomic_write_bytes, atomic_write_text
from nsarm_core.errors import InputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "Image",
    "read_image",
    "read_image_size",
    "write_image",
    "to_tensor",
    "from_tensor",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_open",
]

#: Largest image (width * height) read by default: 100 megapixels. A float32 RGB copy of such an image takes
#: 1.2 GB, and the super-resolved output is 16x larger, so anything bigger is almost surely a mistake or a
#: decompression bomb. Raise it with ``read_image(..., max_pixels=...)`` / ``--max-pixels``
#: (0 or None: no limit).
DEFAULT_MAX_PIXELS: int = 100_000_000

#: File suffix -> Pillow format name. The format of a written file is always chosen from its suffix.
_SUFFIX_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}

#: Suffixes (lower case, with the dot) that :func:`read_image` and :func:`write_image` handle.
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_SUFFIX_FORMATS)

# What each output format can hold.
_FORMATS_WITH_ALPHA = frozenset({"PNG", "WEBP", "TIFF"})
_FORMATS_WITH_16BIT = frozenset({"PNG", "TIFF"})
_FORMATS_WITH_GRAY = frozenset({"PNG", "JPEG", "TIFF", "BMP"})  # WebP stores RGB only
_FORMATS_WITH_ICC = frozenset({"PNG", "JPEG", "WEBP", "TIFF"})
_FORMATS_WITH_EXIF = frozenset({"PNG", "JPEG", "WEBP", "TIFF"})

_EXIF_PREFIX = b"Exif\x00\x00"
_ORIENTATION_TAG = 0x0112

# Exceptions Pillow (and our own decoders) raise for files that are not images or are damaged.
# FileNotFoundError
# and PermissionError are OSErrors too but are checked for before decoding, with their own messages.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
)


# ------------------------------------------------------------------------------------------------------------
# The in-memory image
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Image:
    """A decoded image plus what is needed to write it back faithfully.

    Attributes:
        rgb: float32 [H, W, 3] in [0, 1]. Gray images carry three equal channels, so the model always sees
            RGB.
        alpha: float32 [H, W] in [0, 1], or None when the image is opaque.
        bit_depth: 8 or 16, the precision of the source file; :func:`write_image` uses it by default.
        grayscale: True when the source was gray (L, LA, 16-bit gray); it is then written back as gray.
        icc_profile: the embedded ICC profile, or None (sRGB assumed).
        exif: the EXIF block in Pillow's form (``b"Exif\\0\\0"`` + TIFF header), orientation already applied
            and reset to 1; None when the file has none.
        source: the file it was read from, or None.
        format: Pillow's format name of the source ("PNG", "JPEG", ...), or None.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    grayscale: bool = False
    icc_profile: bytes | None = None
    exif: bytes | None = None
    source: Path | None = None
    format: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rgb, np.ndarray) or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            shape = getattr(self.rgb, "shape", type(self.rgb).__name__)
            raise InputError(f"Image.rgb must be a float32 array [H, W, 3]; got {shape}")
        if self.rgb.dtype != np.float32:
            raise InputError(f"Image.rgb must be float32 in [0, 1]; got dtype {self.rgb.dtype}")
        if self.alpha is not None:
            if not isinstance(self.alpha, np.ndarray) or self.alpha.shape != self.rgb.shape[:2]:
                shape = getattr(self.alpha, "shape", type(self.alpha).__name__)
                raise InputError(
                    f"Image.alpha must be a float32 array [H, W] = {list(self.rgb.shape[:2])}; got {shape}"
                )
            if self.alpha.dtype != np.float32:
                raise InputError(f"Image.alpha must be float32 in [0, 1]; got dtype {self.alpha.dtype}")
        if self.bit_depth not in (8, 16):
            raise InputError(f"Image.bit_depth must be 8 or 16; got {self.bit_depth}")

    @property
    def height(self) -> int:
        """Height H in pixels."""
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        """Width W in pixels."""
        return int(self.rgb.shape[1])


# ------------------------------------------------------------------------------------------------------------
# Small helpers: messages, EXIF orientation
# ------------------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (Pillow messages sometimes span lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _corrupt(path: Path, reason: str) -> InputError:
    return InputError(
        f"cannot read image '{path}': {reason}; the file is corrupt, truncated or not an image "
        f"(supported: {', '.join(SUPPORTED_SUFFIXES)})"
    )


def _bomb(path: Path, size: str, max_pixels: int) -> InputError:
    return InputError(
        f"refusing to decode '{path}': {size} exceeds the limit of {max_pixels:,} pixels "
        f"(a guard against decompression bombs); if the image is genuine, raise the limit with "
        f"--max-pixels (read_image(..., max_pixels=...); 0 disables it)"
    )


def _normalise_exif(exif: bytes | None) -> bytes | None:
    """EXIF in Pillow's JPEG form: ``b"Exif\\0\\0"`` + TIFF header (PNG and WebP store it unprefixed)."""
    if not exif:
        return None
    return exif if exif.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + exif


def _exif_orientation(exif: bytes | None) -> int:
    """The EXIF orientation (1-8) of an EXIF block; 1 when absent or unreadable."""
    if not exif:
        return 1
    try:
        parsed = PILImage.Exif()
        parsed.load(exif)
        value = int(parsed.get(_ORIENTATION_TAG, 1))
    except Exception as exc:  # a damaged EXIF block must not make a good image unreadable
        logger.debug("ignoring unreadable EXIF block: %s", exc)
        return 1
    return value if 1 <= value <= 8 else 1


def _reset_orientation(exif: bytes) -> bytes:
    """Set the orientation tag of IFD0 to 1, editing the bytes in place so the rest is carried unchanged.

    Pillow's ``exif_transpose`` rebuilds the whole block with ``Exif.tobytes()``, which can drop or corrupt
    maker notes; patching the one SHORT value keeps every other byte. A block that cannot be parsed is
    returned as is.
    """
    data = bytearray(exif)
    base = len(_EXIF_PREFIX) if data.startswith(_EXIF_PREFIX) else 0
    try:
        endian = {b"II": "<", b"MM": ">"}[bytes(data[base : base + 2])]
        (ifd,) = struct.unpack_from(endian + "I", data, base + 4)
        (count,) = struct.unpack_from(endian + "H", data, base + ifd)
        for i in range(count):
            entry = base + ifd + 2 + 12 * i
            tag, typ = struct.unpack_from(endian + "HH", data, entry)
            if tag == _ORIENTATION_TAG and typ == 3:  # SHORT, value stored inline
                struct.pack_into(endian + "H", data, entry + 8, 1)
                return bytes(data)
    except (KeyError, struct.error) as exc:
        logger.debug("could not reset the EXIF orientation tag: %s", exc)
    return exif


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Transpose a [H, W, ...] array the way ``ImageOps.exif_transpose`` does for EXIF orientation 1-8."""
    if orientation == 2:  # mirrored horizontally
        array = array[:, ::-1]
    elif orientation == 3:  # rotated 180
        array = array[::-1, ::-1]
    elif orientation == 4:  # mirrored vertically
        array = array[::-1]
    elif orientation == 5:  # transpose (mirror + 90 CCW)
        array = np.swapaxes(array, 0, 1)
    elif orientation == 6:  # shown rotated 90 CW: Pillow's ROTATE_270
        array = np.rot90(array, k=-1)
    elif orientation == 7:  # transverse
        array = np.swapaxes(array, 0, 1)[::-1, ::-1]
    elif orientation == 8:  # shown rotated 90 CCW: Pillow's ROTATE_90
        array = np.rot90(array, k=1)
    return np.ascontiguousarray(array)


def _tiff_exif(im: PILImage.Image) -> bytes | None:
    """A clean EXIF block for a TIFF source: its descriptive IFD0 tags plus the EXIF and GPS sub-IFDs.

    A TIFF's own IFD0 also holds strip offsets and sample layout, which must not travel into another file.
    """
    try:
        tiff_tags = im.getexif()
        exif = PILImage.Exif()
        for tag in (
            0x010E,
            0x010F,
            0x0110,
            0x0112,
            0x0131,
            0x0132,
            0x013B,
            0x8298,
        ):  # description ... copyright
            if tag in tiff_tags:
                exif[tag] = tiff_tags[tag]
        for ifd in (0x8769, 0x8825):  # EXIF and GPS sub-IFDs
            sub = tiff_tags.get_ifd(ifd)
            if sub:
                exif[ifd] = dict(sub)
        return _normalise_exif(exif.tobytes()) if len(exif) else None
    except Exception as exc:  # metadata is best effort; the pixels matter
        logger.debug("dropping unreadable TIFF EXIF tags: %s", exc)
        return None


# ------------------------------------------------------------------------------------------------------------
# 16-bit colour PNG: decoder and encoder (Pillow 13 narrows these to 8 bits)
# ------------------------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


def _png_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) from a PNG's IHDR, or None if not a PNG."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return width, height, depth, colour, interlace


def _png_paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The Paeth predictor (PNG spec 9.4) on int16 arrays of left (a), up (b) and upper-left (c) bytes."""
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _png_unfilter(rows: np.ndarray, width: int, bpp: int) -> np.ndarray:
    """Undo PNG scanline filters (spec section 9).

    Args:
        rows: uint8 [H, 1 + W * bpp], each row its filter type byte followed by the filtered bytes.
        width: W.
        bpp: bytes per pixel (the filters look ``bpp`` bytes back).

    Returns:
        uint8 [H, W * bpp], the reconstructed bytes.
    """
    height = rows.shape[0]
    types, filtered = rows[:, 0], rows[:, 1:]
    if types.size and int(types.max()) > 4:
        raise ValueError(f"unknown PNG filter type {int(types.max())}")
    out = np.empty_like(filtered)
    if np.all(types <= 2):
        # None / Sub / Up only: each row is one vectorised step (uint8 arithmetic wraps modulo 256 as
        # required).
        prior = np.zeros(filtered.shape[1], np.uint8)
        for y in range(height):
            line = filtered[y]
            if types[y] == 1:
                line = line.reshape(width, bpp).cumsum(axis=0, dtype=np.uint8).reshape(-1)
            elif types[y] == 2:
                line = line + prior
            out[y] = line
            prior = out[y]
        return out
    # Average and Paeth depend on the reconstructed left neighbour, so a row cannot be vectorised. Pixel (y,
    # x) needs (y, x-1), (y-1, x) and (y-1, x-1), which all lie on earlier anti-diagonals t = x + y; sweeping
    # the anti-diagonals processes up to H pixels per numpy step (W + H - 1 steps instead of W * H).
    src = filtered.reshape(height, width, bpp)
    dst = out.reshape(height, width, bpp)
    kind = types.astype(np.int16)[:, None]
    prev = np.zeros(
        (height + 1, bpp), np.int16
    )  # diagonal t-1, indexed by y + 1 (row 0 = the zero row above)
    prev2 = np.zeros((height + 1, bpp), np.int16)  # diagonal t-2
    for t in range(width + height - 1):
        y0, y1 = max(0, t - width + 1), min(height - 1, t)
        ys = np.arange(y0, y1 + 1)
        xs = t - ys
        a = prev[y0 + 1 : y1 + 2]  # left: (y, x-1); zero where x == 0 (never written)
        b = prev[y0 : y1 + 1]  # up: (y-1, x); the zero row where y == 0
        c = prev2[y0 : y1 + 1]  # upper-left: (y-1, x-1)
        k = kind[y0 : y1 + 1]
        pred = np.select([k == 1, k == 2, k == 3, k == 4], [a, b, (a + b) >> 1, _png_paeth(a, b, c)], 0)
        value = (src[ys, xs].astype(np.int16) + pred) & 0xFF
        dst[ys, xs] = value
        cur = np.zeros_like(prev)
        cur[y0 + 1 : y1 + 2] = value
        prev2, prev = prev, cur
    return out


@dataclass
class _PngData:
    samples: np.ndarray  # uint16 [H, W, C]
    colour_type: int
    transparent: tuple[int, ...] | None
    icc_profile: bytes | None
    exif: bytes | None


def _decode_png16(data: bytes) -> _PngData:
    """Decode a non-interlaced 16-bit PNG (any colour type) to uint16 [H, W, C], with its metadata.

    Raises ValueError / zlib.error on damaged data (turned into InputError by the caller).
    """
    header = _png_header(data)
    assert header is not None and header[2] == 16
    width, height, _, colour, interlace = header
    if colour not in _PNG_CHANNELS:
        raise ValueError(f"invalid colour type {colour} for a 16-bit PNG")
    if interlace:
        raise InputError(
            "interlaced (Adam7) 16-bit PNG is not supported; re-save it non-interlaced "
            "(e.g. `magick in.png -interlace none out.png`)"
        )
    channels = _PNG_CHANNELS[colour]
    idat: list[bytes] = []
    transparent = icc = exif = None
    pos, ended = len(_PNG_SIGNATURE), False
    while pos + 8 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            raise ValueError(f"truncated PNG chunk {ctype!r}")
        if zlib.crc32(ctype + body) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"CRC mismatch in PNG chunk {ctype!r}")
        pos += 12 + length
        if ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"tRNS" and len(body) == 2 * channels:
            transparent = struct.unpack(f">{channels}H", body)
        elif ctype == b"iCCP":
            name_end = body.index(b"\x00")
            icc = zlib.decompress(body[name_end + 2 :])
        elif ctype == b"eXIf":
            exif = _normalise_exif(body)
        elif ctype == b"IEND":
            ended = True
            break
    if not ended:
        raise ValueError("missing IEND chunk (file truncated)")
    bpp = 2 * channels
    expected = height * (1 + width * bpp)
    decompressor = zlib.decompressobj()
    raw = decompressor.decompress(b"".join(idat), expected)  # never inflate more than the header promises
    if len(raw) < expected:
        raise ValueError(f"image data too short ({len(raw)} of {expected} bytes; file truncated)")
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * bpp)
    unfiltered = _png_unfilter(rows, width, bpp)
    samples = unfiltered.view(">u2").reshape(height, width, channels).astype(np.uint16)
    return _PngData(samples, colour, transparent, icc, exif)


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _encode_png16(samples: np.ndarray, icc_profile: bytes | None, exif: bytes | None) -> bytes:
    """Encode uint16 [H, W, C] (C = 1, 2, 3, 4) as a 16-bit PNG with adaptive per-row filters.

    The filter of each row is the one with the smallest sum of absolute signed bytes (libpng's heuristic);
    rows are processed in blocks to bound memory.
    """
    height, width, channels = samples.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = 2 * channels
    data = np.ascontiguousarray(samples.astype(">u2")).view(np.uint8).reshape(height, width * bpp)
    out = np.empty((height, 1 + width * bpp), np.uint8)
    block = max(1, (1 << 22) // max(1, width * bpp))
    for y0 in range(0, height, block):
        y1 = min(height, y0 + block)
        x = data[y0:y1].astype(np.int16)
        up = np.zeros_like(x)
        up[1:] = x[:-1]
        if y0 > 0:
            up[0] = data[y0 - 1]
        left = np.zeros_like(x)
        left[:, bpp:] = x[:, :-bpp]
        upleft = np.zeros_like(x)
        upleft[:, bpp:] = up[:, :-bpp]
        candidates = np.stack(
            [x, x - left, x - up, x - ((left + up) >> 1), x - _png_paeth(left, up, upleft)]
        ).astype(np.uint8)  # [5, rows, bytes]; the cast wraps modulo 256 as the spec requires
        score = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)  # [5, rows]
        best = score.argmin(axis=0)
        out[y0:y1, 0] = best
        out[y0:y1, 1:] = candidates[best, np.arange(y1 - y0)]
    chunks = [
        _PNG_SIGNATURE,
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)),
    ]
    if icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        chunks.append(
            _png_chunk(b"eXIf", exif[len(_EXIF_PREFIX) :] if exif.startswith(_EXIF_PREFIX) else exif)
        )
    compressed = zlib.compress(out.tobytes(), 6)
    for start in range(0, max(1, len(compressed)), 1 << 20):
        chunks.append(_png_chunk(b"IDAT", compressed[start : start + (1 << 20)]))
    chunks.append(_png_chunk(b"IEND", b""))
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------------------------
# 16-bit multi-sample TIFF: reader (through libtiff) and writer
# ------------------------------------------------------------------------------------------------------------

_TIFF_SHORT, _TIFF_LONG, _TIFF_UNDEFINED = 3, 4, 7
_TIFF_TYPE_SIZES = {_TIFF_SHORT: 2, _TIFF_LONG: 4, _TIFF_UNDEFINED: 1}


def _tiff_ifd(entries: list[tuple[int, int, list[int] | bytes]], endian: str, offset: int) -> bytes:
    """Serialise one classic-TIFF IFD that starts at file ``offset``; values too big to inline follow it.

    Args:
        entries: (tag, type, values) with type SHORT, LONG (list of ints) or UNDEFINED (bytes).
        endian: "<" (II) or ">" (MM).
        offset: where the IFD will lie in the file (word aligned).
    """
    entries = sorted(entries, key=lambda e: e[0])
    extra_at = offset + 2 + 12 * len(entries) + 4
    table, extra = bytearray(struct.pack(endian + "H", len(entries))), bytearray()
    for tag, typ, values in entries:
        if typ == _TIFF_UNDEFINED:
            payload, count = bytes(values), len(values)
        else:
            code = "H" if typ == _TIFF_SHORT else "I"
            payload, count = struct.pack(endian + code * len(values), *values), len(values)
        if len(payload) <= 4:
            field = payload.ljust(4, b"\x00")
        else:
            field = struct.pack(endian + "I", extra_at + len(extra))
            extra += payload + (b"\x00" if len(payload) % 2 else b"")
        table += struct.pack(endian + "HHI", tag, typ, count) + field
    table += struct.pack(endian + "I", 0)  # no next IFD
    return bytes(table + extra)


def _is_tiff16_multisample(im: PILImage.Image) -> bool:
    """True for a TIFF with 2-4 16-bit samples per pixel, which Pillow would narrow to 8 bits."""
    tags = getattr(im, "tag_v2", None)
    if im.format != "TIFF" or tags is None:
        return False
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    return int(tags.get(277, 1)) >= 2 and all(int(b) == 16 for b in bits)


def _read_tiff16(data: bytes, im: PILImage.Image) -> np.ndarray:
    """Decode a 16-bit TIFF with C = 2-4 samples per pixel to uint16 [H, W, C] without losing bits.

    Pillow can only narrow such images, but it decodes a 16-bit *gray* TIFF exactly. So the file's bytes get
    one more IFD describing the same compressed strips as a gray image C times wider (chunky layout) or as one
    gray image per plane (planar layout); Pillow/libtiff decompresses it (any codec libtiff has: none,
    deflate, LZW, PackBits, ...), and the horizontal-difference predictor, declared absent in the new IFD, is
    undone here.
    """
    tags = im.tag_v2
    width, height = im.size
    channels = int(tags[277])
    compression = int(tags.get(259, 1))
    predictor = int(tags.get(317, 1))
    planar = int(tags.get(284, 1))
    fmt = tags.get(339, 1)
    if any(int(f) != 1 for f in (fmt if isinstance(fmt, tuple) else (fmt,))):
        raise InputError("16-bit TIFF with signed or floating-point samples is not supported")
    if predictor not in (1, 2):
        raise InputError(f"16-bit TIFF predictor {predictor} is not supported (only none and horizontal)")
    if compression in (6, 7):
        raise InputError(
            "16-bit colour TIFF with JPEG compression is not supported; re-save it as PNG or TIFF"
        )
    if data[2:4] not in (b"*\x00", b"\x00*"):
        raise InputError("BigTIFF with 16-bit colour is not supported; re-save it as classic TIFF or PNG")
    endian = "<" if data[:2] == b"II" else ">"
    tiled = 322 in tags
    offsets = list(tags[324] if tiled else tags[273])
    counts = list(tags[325] if tiled else tags[279])
    planes = [(offsets, counts, width * channels)]
    if planar == 2:
        per = len(offsets) // channels
        planes = [
            (offsets[i * per : (i + 1) * per], counts[i * per : (i + 1) * per], width)
            for i in range(channels)
        ]
    decoded = []
    for plane_offsets, plane_counts, plane_width in planes:
        scale = plane_width // width  # samples packed per pixel column in this plane
        entries: list[tuple[int, int, list[int] | bytes]] = [
            (256, _TIFF_LONG, [plane_width]),
            (257, _TIFF_LONG, [height]),
            (258, _TIFF_SHORT, [16]),
            (259, _TIFF_SHORT, [compression]),
            (262, _TIFF_SHORT, [1]),
            (277, _TIFF_SHORT, [1]),
            (284, _TIFF_SHORT, [1]),
        ]
        if tiled:
            entries += [
                (322, _TIFF_LONG, [int(tags[322]) * scale]),
                (323, _TIFF_LONG, [int(tags[323])]),
                (324, _TIFF_LONG, plane_offsets),
                (325, _TIFF_LONG, plane_counts),
            ]
        else:
            entries += [
                (273, _TIFF_LONG, plane_offsets),
                (278, _TIFF_LONG, [int(tags.get(278, height))]),
                (279, _TIFF_LONG, plane_counts),
            ]
        start = len(data) + (len(data) % 2)
        patched = bytearray(data) + b"\x00" * (start - len(data)) + _tiff_ifd(entries, endian, start)
        struct.pack_into(endian + "I", patched, 4, start)  # the new IFD becomes the first one
        with PILImage.open(io.BytesIO(bytes(patched))) as gray:
            gray.load()
            decoded.append(np.array(gray, dtype=np.uint16).reshape(height, width, scale))
    samples = np.concatenate(decoded, axis=2) if planar == 2 else decoded[0]
    if predictor == 2:
        # Horizontal differencing restarts at the left edge of every strip row / tile row (TIFF 6.0, section
        # 14).
        step = int(tags[322]) if tiled else width
        for x0 in range(0, width, step):
            samples[:, x0 : x0 + step] = samples[:, x0 : x0 + step].cumsum(axis=1, dtype=np.uint16)
    return samples


def _encode_tiff16(samples: np.ndarray, icc_profile: bytes | None) -> bytes:
    """Encode uint16 [H, W, C] (C = 2, 3, 4) as a little-endian 16-bit TIFF, deflate + horizontal predictor.

    (C = 2 is valid TIFF, but Pillow 13 cannot open it, so :func:`write_image` never asks for it.)
    """
    height, width, channels = samples.shape
    rows_per_strip = max(1, (1 << 20) // (width * channels * 2))
    diff = samples.astype(np.uint16)
    diff[:, 1:] -= samples[:, :-1]  # predictor 2; uint16 arithmetic wraps as the spec requires
    strips = [
        zlib.compress(diff[y : y + rows_per_strip].astype("<u2").tobytes(), 6)
        for y in range(0, height, rows_per_strip)
    ]
    body, offsets, pos = bytearray(), [], 8
    for strip in strips:
        offsets.append(pos + len(body))
        body += strip + (b"\x00" if len(strip) % 2 else b"")
    ifd_at = 8 + len(body)
    entries: list[tuple[int, int, list[int] | bytes]] = [
        (256, _TIFF_LONG, [width]),
        (257, _TIFF_LONG, [height]),
        (258, _TIFF_SHORT, [16] * channels),
        (259, _TIFF_SHORT, [8]),  # Adobe deflate
        (262, _TIFF_SHORT, [2 if channels >= 3 else 1]),  # RGB or black-is-zero
        (273, _TIFF_LONG, offsets),
        (277, _TIFF_SHORT, [channels]),
        (278, _TIFF_LONG, [rows_per_strip]),
        (279, _TIFF_LONG, [len(s) for s in strips]),
        (284, _TIFF_SHORT, [1]),  # chunky
        (317, _TIFF_SHORT, [2]),  # horizontal differencing
        (339, _TIFF_SHORT, [1] * channels),  # unsigned integers
    ]
    if channels in (2, 4):
        entries.append((338, _TIFF_SHORT, [2]))  # extra sample = unassociated (straight) alpha
    if icc_profile:
        entries.append((34675, _TIFF_UNDEFINED, icc_profile))
    header = b"II*\x00" + struct.pack("<I", ifd_at)
    return header + bytes(body) + _tiff_ifd(entries, "<", ifd_at)


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------

_PILLOW_LIMIT_LOCK = threading.Lock()


def _open_pillow(path: Path, data: bytes, max_pixels: int | None) -> PILImage.Image:
    """``PIL.Image.open`` on the file's bytes, with Pillow's own bomb guard deferred to ``max_pixels``.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and refuses above twice that, independently of our limit. The
    warning is silenced (our limit decides); the refusal is either reported with our message or, when the
    caller explicitly allowed bigger images, lifted for this one call under a lock.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        try:
            return PILImage.open(io.BytesIO(data))
        except PILImage.DecompressionBombError as exc:
            pillow_limit = 2 * int(PILImage.MAX_IMAGE_PIXELS or 0)
            if max_pixels is not None and max_pixels <= pillow_limit:
                raise _bomb(path, f"its size (more than {pillow_limit:,} pixels)", max_pixels) from exc
            with _PILLOW_LIMIT_LOCK:
                saved, PILImage.MAX_IMAGE_PIXELS = PILImage.MAX_IMAGE_PIXELS, None
                try:
                    return PILImage.open(io.BytesIO(data))
                finally:
                    PILImage.MAX_IMAGE_PIXELS = saved


def _gray(values: np.ndarray) -> np.ndarray:
    """float32 [H, W] -> float32 [H, W, 3] with three equal channels."""
    return np.repeat(values[:, :, None], 3, axis=2)


def _to_float(samples: np.ndarray, maximum: float) -> np.ndarray:
    return (samples.astype(np.float32) / np.float32(maximum)).astype(np.float32)


def _transparency_mask(samples: np.ndarray, key: Any) -> np.ndarray | None:
    """Alpha [H, W] from a colour key (PNG tRNS for gray/RGB): 0 where a pixel equals the key, else 1."""
    if key is None or isinstance(key, bytes):
        return None
    key_arr = np.asarray(key).reshape(-1)
    if samples.ndim == 2:
        hit = samples == key_arr[0]
    else:
        hit = np.all(samples == key_arr[: samples.shape[2]], axis=2)
    return (~hit).astype(np.float32)


def _cmyk_to_rgb(im: PILImage.Image, icc: bytes | None) -> PILImage.Image:
    """CMYK -> RGB: via the embedded profile to sRGB (LittleCMS) when there is one, else Pillow's formula."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            logger.warning("CMYK profile could not be applied (%s); using the uncalibrated conversion", exc)
    return im.convert("RGB")


def _pixels_from_pillow(
    im: PILImage.Image, path: Path
) -> tuple[np.ndarray, np.ndarray | None, int, bool, bool]:
    """A loaded Pillow image as (rgb [H,W,3], alpha [H,W] | None, bit depth, grayscale, dropped_icc)."""
    mode = im.mode
    key = im.info.get("transparency")
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode in ("La", "PA"):
        im = im.convert("LA" if mode == "La" else "RGBA")
        mode = im.mode
    if mode == "RGBa":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode == "P":
        im = im.convert("RGBA" if key is not None or im.palette.mode == "RGBA" else "RGB")
        mode, key = im.mode, None
    if mode == "L":
        samples = np.asarray(im)
        return _gray(_to_float(samples, 255)), _transparency_mask(samples, key), 8, True, False
    if mode == "LA":
        samples = np.asarray(im)
        return _gray(_to_float(samples[..., 0], 255)), _to_float(samples[..., 1], 255), 8, True, False
    if mode in ("RGB", "RGBX"):
        samples = np.asarray(im)[..., :3]
        return _to_float(samples, 255), _transparency_mask(samples, key), 8, False, False
    if mode == "RGBA":
        samples = np.asarray(im)
        return _to_float(samples[..., :3], 255), _to_float(samples[..., 3], 255), 8, False, False
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        samples = np.asarray(im)
        if mode == "I" and samples.size and (int(samples.min()) < 0 or int(samples.max()) > 65535):
            raise InputError(
                f"cannot read image '{path}': 32-bit integer samples (range {int(samples.min())}.."
                f"{int(samples.max())}) are not supported; convert it to 8 or 16 bits"
            )
        samples = samples.astype(np.uint16)
        return _gray(_to_float(samples, 65535)), _transparency_mask(samples, key), 16, True, False
    if mode == "F":
        samples = np.asarray(im, dtype=np.float32)
        if samples.size and (float(np.nanmin(samples)) < 0.0 or float(np.nanmax(samples)) > 1.0):
            logger.warning("'%s': floating-point samples outside [0, 1] were clipped", path)
        gray = np.clip(np.nan_to_num(samples), 0.0, 1.0).astype(np.float32)
        return _gray(gray), None, 16, True, False
    if mode == "CMYK":
        rgb = _cmyk_to_rgb(im, im.info.get("icc_profile"))
        return _to_float(np.asarray(rgb), 255), None, 8, False, True
    if mode in ("YCbCr", "LAB", "HSV"):
        try:
            rgb = im.convert("RGB")
        except ValueError as exc:
            raise InputError(
                f"cannot read image '{path}': colour mode {mode} cannot be converted to RGB"
            ) from exc
        return _to_float(np.asarray(rgb), 255), None, 8, False, True
    raise InputError(
        f"cannot read image '{path}': unsupported colour mode {mode!r}; convert it to RGB or RGBA"
    )


def _pixels_from_png16(png: _PngData) -> tuple[np.ndarray, np.ndarray | None, bool]:
    samples, channels = png.samples, png.samples.shape[2]
    colour = samples[..., : 1 if channels <= 2 else 3]
    alpha = (
        _to_float(samples[..., -1], 65535)
        if channels in (2, 4)
        else _transparency_mask(colour, png.transparent)
    )
    if channels <= 2:
        return _gray(_to_float(colour[..., 0], 65535)), alpha, True
    return _to_float(colour, 65535), alpha, False


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Read a PNG, JPEG, WebP, TIFF or BMP file into an :class:`Image`.

    The EXIF orientation is applied (the pixels come out the way viewers show them) and then reset to 1 in the
    carried EXIF. Gray images become three equal channels with ``grayscale=True``; alpha, palette
    transparency and colour-key transparency become ``alpha``; CMYK is converted to RGB; 16-bit files keep
    16 bits.

    Args:
        path: the image file.
        max_pixels: refuse images with more than this many pixels (width * height), checked from the header
            before decoding; None or 0 disables the check.

    Returns:
        The decoded image: ``rgb`` float32 [H, W, 3] in [0, 1], ``alpha`` float32 [H, W] or None.

    Raises:
        InputError: missing, empty, corrupt, truncated, non-image or oversized files, or unsupported modes.
            The message is one line and names the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"image not found: '{path}'")
    if not path.is_file():
        raise InputError(f"not a file: '{path}' (expected an image file)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image '{path}': {_one_line(exc)}") from exc
    if not data:
        raise InputError(f"cannot read image '{path}': the file is empty (0 bytes)")
    limit = max_pixels or None
    try:
        return _decode(path, data, limit)
    except InputError as exc:
        message = str(exc)
        if str(path) not in message:  # messages raised deep in a decoder do not know the file
            message = f"cannot read image '{path}': {message}"
        raise InputError(" ".join(message.split())) from exc
    except PILImage.UnidentifiedImageError as exc:
        raise _corrupt(path, "not a recognised image format") from exc
    except _DECODE_ERRORS as exc:
        raise _corrupt(path, _one_line(exc)) from exc


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(width, height)`` of an image file as :func:`read_image` would return it, from the header only.

    No pixel is decoded, so a batch can size every input (progress totals, output budgets, the size of
    skipped files) before any work. EXIF orientations 5-8 swap the two sides, as reading does. An EXIF block
    stored after the pixel data (possible in PNG) is not seen here.

    Returns:
        The size, or None when the file cannot be opened as an image (reading it reports why).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(Path(path)) as im:
                width, height = im.size
                exif = im.getexif()
                orientation = int(exif.get(_ORIENTATION_TAG, 1)) if exif else 1
    except Exception as exc:  # noqa: BLE001 - any failure means "size unknown"; read_image gives the reason
        logger.debug("'%s': size not readable from the header: %s", path, exc)
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _decode(path: Path, data: bytes, max_pixels: int | None) -> Image:
    """:func:`read_image` after the file checks; raises decoder exceptions as they come."""
    with _open_pillow(path, data, max_pixels) as im:
        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise _bomb(path, f"its size {width}x{height} ({width * height:,} pixels)", max_pixels)
        fmt = im.format
        icc = im.info.get("icc_profile") or None
        png = _png_header(data)
        alpha: np.ndarray | None
        if png is not None and png[2] == 16 and png[3] in (2, 4, 6):
            decoded = _decode_png16(data)
            rgb, alpha, grayscale = _pixels_from_png16(decoded)
            bit_depth, dropped_icc = 16, False
            icc, exif = decoded.icc_profile or icc, decoded.exif
        elif _is_tiff16_multisample(im):
            samples = _read_tiff16(data, im)
            channels = samples.shape[2]
            grayscale = channels <= 2
            colour = samples[..., :1] if grayscale else samples[..., :3]
            rgb = _gray(_to_float(colour[..., 0], 65535)) if grayscale else _to_float(colour, 65535)
            alpha = _to_float(samples[..., -1], 65535) if channels in (2, 4) else None
            bit_depth, dropped_icc = 16, False
            exif = _tiff_exif(im)
        else:
            im.load()  # force the full decode now, so truncation is detected here
            rgb, alpha, bit_depth, grayscale, dropped_icc = _pixels_from_pillow(im, path)
            # After load(): PNG may keep eXIf after the image data, so info["exif"] is only complete now.
            exif = _tiff_exif(im) if fmt == "TIFF" else _normalise_exif(im.info.get("exif"))
    if dropped_icc and icc:
        # The profile described the CMYK/YCbCr/LAB source, not the RGB pixels we now hold (those are sRGB).
        icc = None
    orientation = _exif_orientation(exif)
    if orientation != 1:
        rgb = _apply_orientation(rgb, orientation)
        alpha = None if alpha is None else _apply_orientation(alpha, orientation)
        assert exif is not None
        exif = _reset_orientation(exif)
    return Image(
        rgb=rgb,
        alpha=alpha,
        bit_depth=bit_depth,
        grayscale=grayscale,
        icc_profile=icc,
        exif=exif,
        source=path,
        format=fmt,
    )


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------


def _as_image(image: Image | np.ndarray) -> Image:
    """An :class:`Image` from an Image or an array in [0, 1]: [H, W] / [H, W, 1] gray, [H, W, 2] gray + alpha,
    [H, W, 3] RGB, [H, W, 4] RGBA; float, or uint8 / uint16 (then the bit depth follows the dtype)."""
    if isinstance(image, Image):
        return image
    if not isinstance(image, np.ndarray):
        raise InputError(f"write_image expects an Image or a numpy array; got {type(image).__name__}")
    array, bit_depth = image, 8
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255
    elif array.dtype == np.uint16:
        array, bit_depth = array.astype(np.float32) / 65535, 16
    elif not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"image arrays must be float in [0, 1], uint8 or uint16; got dtype {array.dtype}")
    array = array.astype(np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"image arrays must be [H, W] or [H, W, C] with C in 1..4; got {image.shape}")
    channels = array.shape[2]
    grayscale = channels <= 2
    rgb = np.repeat(array[..., :1], 3, axis=2) if grayscale else array[..., :3]
    alpha = np.ascontiguousarray(array[..., -1]) if channels in (2, 4) else None
    return Image(rgb=np.ascontiguousarray(rgb), alpha=alpha, bit_depth=bit_depth, grayscale=grayscale)


def _quantise(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """float [0, 1] -> uint8 / uint16 by rounding to nearest, after clipping (NaN becomes 0)."""
    maximum = 255 if bit_depth == 8 else 65535
    clipped = np.clip(np.nan_to_num(values.astype(np.float64), nan=0.0), 0.0, 1.0)
    return np.round(clipped * maximum).astype(np.uint8 if bit_depth == 8 else np.uint16)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> [H, W] with ITU-R 601 weights (as Pillow's L); equal channels map to themselves."""
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _save_pillow(
    handle: IO[bytes], samples: np.ndarray, mode: str, fmt: str, options: dict[str, Any]
) -> None:
    pil = PILImage.fromarray(samples, mode=mode) if mode != "I;16" else PILImage.fromarray(samples)
    pil.save(handle, format=fmt, **options)


def write_image(
    path: str | os.PathLike[str],
    image: Image | np.ndarray,
    *,
    bit_depth: int | None = None,
    keep_metadata: bool = True,
    quality: int = 95,
    overwrite: bool = True,
) -> Path:
    """Write an image atomically, in the format its suffix names.

    Alpha is reattached (RGBA / LA), gray images are written gray, 16-bit precision is kept where the format
    can hold it (PNG, TIFF), and the ICC profile and EXIF travel along. Values are clipped to [0, 1] and
    rounded to the nearest level. Formats that cannot hold something fall back with a log message: JPEG and
    BMP drop alpha (warning) and are 8-bit; WebP is 8-bit RGB(A); BMP carries no metadata; 16-bit TIFF with
    2-4 samples carries the ICC profile but not EXIF.

    Args:
        path: the output file; its suffix (.png .jpg .jpeg .webp .tif .tiff .bmp) picks the format. Parent
            folders are created.
        image: an :class:`Image`, or an array [H, W] / [H, W, C] (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA),
            float in [0, 1], uint8 or uint16.
        bit_depth: 8 or 16; None keeps the image's own bit depth.
        keep_metadata: carry the ICC profile and EXIF (False strips both).
        quality: JPEG / WebP quality 1-100 (at 90 and above JPEG chroma is not subsampled).
        overwrite: if False and the file exists, raise InputError instead.

    Returns:
        ``path`` as a Path.

    Raises:
        InputError: unsupported suffix, bad array, bad bit depth or quality, or an existing file with
            ``overwrite=False``.
    """
    path = Path(path)
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"cannot write '{path}': unsupported suffix {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    img = _as_image(image)
    depth = img.bit_depth if bit_depth is None else bit_depth
    if depth not in (8, 16):
        raise InputError(f"bit_depth must be 8 or 16; got {bit_depth}")
    if not 1 <= quality <= 100:
        raise InputError(f"quality must be in 1..100; got {quality}")
    if depth == 16 and fmt not in _FORMATS_WITH_16BIT:
        log = logger.warning if bit_depth == 16 else logger.info
        log("'%s': %s holds 8 bits per sample; writing 8-bit", path, fmt)
        depth = 8
    alpha = img.alpha
    if alpha is not None and fmt not in _FORMATS_WITH_ALPHA:
        logger.warning("'%s': %s cannot hold transparency; the alpha channel is dropped", path, fmt)
        alpha = None
    gray = img.grayscale and fmt in _FORMATS_WITH_GRAY
    icc = img.icc_profile if keep_metadata and fmt in _FORMATS_WITH_ICC else None
    exif = img.exif if keep_metadata and fmt in _FORMATS_WITH_EXIF else None
    if keep_metadata and fmt == "BMP" and (img.icc_profile or img.exif):
        logger.info("'%s': BMP cannot hold an ICC profile or EXIF; they are not written", path)

    colour = _luma(img.rgb)[:, :, None] if gray else img.rgb
    planes = colour if alpha is None else np.concatenate([colour, alpha[:, :, None]], axis=2)
    samples = _quantise(planes, depth)  # [H, W, C]
    channels = samples.shape[2]

    if depth == 16 and channels == 2 and fmt == "TIFF":
        # Pillow cannot open 16-bit gray+alpha TIFF, so it is stored as RGBA (three equal channels) instead.
        logger.info("'%s': 16-bit gray+alpha TIFF is written as RGBA", path)
        samples = np.concatenate([np.repeat(samples[:, :, :1], 3, axis=2), samples[:, :, 1:]], axis=2)
        channels = 4

    encode: Callable[[IO[bytes]], None]
    if depth == 16 and channels > 1:
        if fmt == "PNG":
            blob = _encode_png16(samples, icc, exif)
        else:
            if exif:
                logger.info("'%s': EXIF is not written into 16-bit colour/alpha TIFF (ICC is)", path)
            blob = _encode_tiff16(samples, icc)

        def encode(handle: IO[bytes]) -> None:
            handle.write(blob)

    else:
        if depth == 16:
            mode, pixels = "I;16", samples[:, :, 0]
        else:
            mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
            pixels = samples[:, :, 0] if channels == 1 else samples
        options: dict[str, Any] = {}
        if icc:
            options["icc_profile"] = icc
        if exif:
            options["exif"] = exif
        if fmt == "JPEG":
            options.update(quality=quality, subsampling=0 if quality >= 90 else 2, optimize=True)
        elif fmt == "WEBP":
            options.update(quality=quality, method=4)
        elif fmt == "TIFF":
            options["compression"] = "tiff_adobe_deflate"
        elif fmt == "PNG":
            options["compress_level"] = 6

        def encode(handle: IO[bytes]) -> None:
            _save_pillow(handle, pixels, mode, fmt, options)

    with atomic_open(path, overwrite=overwrite) as handle:
        encode(handle)
    return path


# ------------------------------------------------------------------------------------------------------------
# Tensors
# ------------------------------------------------------------------------------------------------------------


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """float [H, W, 3] in [0, 1] -> float32 tensor [1, 3, H, W] on the CPU (a copy).

    Raises:
        InputError: if the array is not [H, W, 3].
    """
    import torch

    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(
            f"to_tensor expects an array [H, W, 3]; got {getattr(rgb, 'shape', type(rgb).__name__)}"
        )
    array = np.ascontiguousarray(rgb, dtype=np.float32).transpose(2, 0, 1)[None]
    return torch.from_numpy(np.ascontiguousarray(array))


def from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """Tensor [1, 3, H, W] or [3, H, W] (any device / float dtype) -> float32 [H, W, 3] clipped to [0, 1].

    Raises:
        InputError: if the tensor is not [1, 3, H, W] or [3, H, W].
    """
    import torch

    shape = tuple(tensor.shape)
    if tensor.ndim == 4 and shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise InputError(f"from_tensor expects a tensor [1, 3, H, W] or [3, H, W]; got {list(shape)}")
    array = tensor.detach().to("cpu", dtype=torch.float32).clamp(0.0, 1.0).permute(1, 2, 0)
    return np.ascontiguousarray(array.numpy(), dtype=np.float32)

"""Differentiable JPEG compression in torch (the JPEG step of the Real-ESRGAN degradation).

Reference: docs/architecture.md P.2.1 ("JPEG ... DiffJPEG (non-differentiable mode)"), docs/architecture.md E.5. Real-ESRGAN
uses BasicSR's ``DiffJPEG`` (Apache-2.0, after github.com/mlomnitz/DiffJPEG). This is a re-implementation of
the same codec model: RGB -> YCbCr (JFIF/BT.601 full range), 4:2:0 chroma subsampling (2x2 mean), 8x8 DCT-II
(JPEG's FDCT is the orthonormal DCT), quantisation with the IJG (JPEG Annex K) tables scaled by quality,
rounding, dequantisation, inverse DCT, chroma upsampling, YCbCr -> RGB, clamp. No entropy coding (lossless).

Two table/border conventions (``mode``):
    "libjpeg": what libjpeg/Pillow do: integer tables ``clamp((T·s + 50) // 100, 1, 255)`` with the integer
        quality scale s, edge-replicated padding to the MCU, triangular ("fancy") chroma upsampling.
    "basicsr": bit-for-bit BasicSR DiffJPEG semantics: float factor ``s/100`` from a float quality, the
        luminance table transposed (a quirk of BasicSR's code), zero padding to a multiple of 16,
        nearest-neighbour chroma upsampling. Use this to reproduce Real-ESRGAN's training degradation.

Shape legend:
    B      batch
    H, W   image size (any; padded internally to a multiple of 16)
    hb, wb number of 8x8 blocks per column/row
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from nsarm_core.errors import ConfigError

JpegMode = Literal["libjpeg", "basicsr"]
JPEG_MODES: tuple[str, ...] = ("libjpeg", "basicsr")

# JPEG Annex K tables in natural order (row = vertical frequency, column = horizontal frequency).
Y_TABLE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.float64,
)
C_TABLE = np.full((8, 8), 99.0)
C_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]

# JFIF RGB <-> YCbCr (the constants of libjpeg's jccolor.c/jdcolor.c and of BasicSR's DiffJPEG).
_RGB2YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC2RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def _dct_matrix() -> np.ndarray:
    """Orthonormal 8-point DCT-II matrix ``M[u, x] = c(u) cos((2x+1)uπ/16)``; JPEG's FDCT is ``M X Mᵀ``."""
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    m = np.cos((2 * x + 1) * u * np.pi / 16) * 0.5
    m[0] *= 1 / np.sqrt(2)
    return m


_DCT = _dct_matrix()


def diff_round(x: torch.Tensor) -> torch.Tensor:
    """Differentiable rounding ``round(x) + (x − round(x))³`` (BasicSR/DiffJPEG): exact at integers,
    gradient ``3(x − round(x))²`` in between."""
    r = torch.round(x)
    return r + (x - r) ** 3


def quality_scale(quality: torch.Tensor, mode: JpegMode) -> torch.Tensor:
    """Quality -> table scale in percent (``[B]``), libjpeg's ``jpeg_quality_scaling``.

    q < 50: 5000/q, else 200 − 2q. libjpeg works on integer quality in [1, 100] with integer division;
    BasicSR uses the float quality directly.
    """
    if mode == "libjpeg":
        q = torch.clamp(torch.round(quality), 1, 100)
        return torch.where(q < 50, torch.floor(5000 / q), 200 - 2 * q)
    return torch.where(quality < 50, 5000.0 / quality, 200.0 - quality * 2)


def quant_tables(quality: torch.Tensor, mode: JpegMode = "libjpeg") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample luminance and chroma quantisation tables ``[B, 8, 8]`` (float64) for quality ``[B]``."""
    q = quality.to(torch.float64)
    s = quality_scale(q, mode).view(-1, 1, 1)
    yt = torch.from_numpy(Y_TABLE).to(q.device)
    ct = torch.from_numpy(C_TABLE).to(q.device)
    if mode == "libjpeg":
        # jcparam.c: temp = (basic * scale + 50) / 100, clamped to [1, 255] (force_baseline).
        return torch.clamp(torch.floor((yt * s + 50) / 100), 1, 255), torch.clamp(
            torch.floor((ct * s + 50) / 100), 1, 255
        )
    # BasicSR: float factor, and its luminance table is stored transposed.
    return yt.T * (s / 100.0), ct * (s / 100.0)


def _colour(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel 3x3 colour matrix on ``[B, 3, H, W]`` as one GEMM (a 1x1 conv is ~15x slower on CPU)."""
    b, _, h, w = x.shape
    return (matrix @ x.reshape(b, 3, h * w)).reshape(b, 3, h, w)


def _to_blocks(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` (multiples of 8) -> ``[B, hb, wb, 64]`` row-major 8x8 blocks."""
    b, h, w = x.shape
    return x.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, h // 8, w // 8, 64)


def _from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_to_blocks``: ``[B, hb, wb, 64]`` -> ``[B, H, W]``."""
    b, hb, wb, _ = blocks.shape
    return blocks.reshape(b, hb, wb, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, hb * 8, wb * 8)


def _code_channel(x: torch.Tensor, table: torch.Tensor, rounding, kron: torch.Tensor) -> torch.Tensor:
    """Level shift, DCT, quantise, round, dequantise, IDCT for one channel ``[B, H, W]`` -> same.

    The 2-D DCT ``M X Mᵀ`` of a row-major flattened block is ``kron(M, M) · vec(X)``: one GEMM for all blocks.
    """
    b = x.shape[0]
    t = table.reshape(b, 1, 1, 64)
    coef = (_to_blocks(x - 128.0) @ kron.T) / t
    coef = rounding(coef) * t
    return _from_blocks(coef @ kron) + 128.0


def diff_jpeg(
    img: torch.Tensor,
    quality: float | torch.Tensor,
    *,
    differentiable: bool = False,
    mode: JpegMode = "libjpeg",
) -> torch.Tensor:
    """JPEG-compress and decode a batch, ``[B,3,H,W]`` in [0, 1] -> ``[B,3,H,W]`` in [0, 1].

    Args:
        img: RGB batch in [0, 1] (clamp it first, as Real-ESRGAN does).
        quality: JPEG quality in (0, 100], a number or a per-sample ``[B]`` tensor.
        differentiable: use ``diff_round`` (cubic) instead of hard rounding, so gradients flow.
        mode: "libjpeg" (Pillow/libjpeg tables and borders) or "basicsr" (Real-ESRGAN's DiffJPEG).

    Returns:
        the decoded image, clamped to [0, 1] (not rounded to 8 bit).
    """
    if mode not in JPEG_MODES:
        raise ConfigError(f"unknown JPEG mode {mode!r}; valid modes: {', '.join(JPEG_MODES)}")
    if img.dim() != 4 or img.shape[1] != 3:
        raise ConfigError(f"diff_jpeg expects an RGB batch [B,3,H,W], got shape {tuple(img.shape)}")
    b, _, h, w = img.shape
    dtype = img.dtype if img.is_floating_point() else torch.float32
    q = torch.as_tensor(quality, dtype=torch.float64, device=img.device).reshape(-1)
    if q.numel() == 1:
        q = q.expand(b)
    if q.numel() != b:
        raise ConfigError(f"got {q.numel()} JPEG qualities for a batch of {b}")
    if bool((q <= 0).any()) or bool((q > 100).any()):
        raise ConfigError(f"JPEG quality must be in (0, 100], got {q.tolist()}")
    yt, ct = quant_tables(q, mode)
    yt, ct = yt.to(dtype), ct.to(dtype)
    rounding = diff_round if differentiable else torch.round
    kron = torch.as_tensor(np.kron(_DCT, _DCT), dtype=dtype, device=img.device)  # [64, 64], orthonormal

    # Pad to whole MCUs (16x16 for 4:2:0): libjpeg replicates the edge, BasicSR pads zeros.
    ph, pw = (-h) % 16, (-w) % 16
    x = img.to(dtype) * 255.0
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate" if mode == "libjpeg" else "constant")
    hp, wp = h + ph, w + pw

    shift = torch.tensor([0.0, 128.0, 128.0], dtype=dtype, device=img.device).view(3, 1)
    ycc = _colour(torch.as_tensor(_RGB2YCC, dtype=dtype, device=img.device), x) + shift.view(1, 3, 1, 1)
    y = ycc[:, 0]
    chroma = F.avg_pool2d(ycc[:, 1:], kernel_size=2, stride=2)  # [B, 2, H/2, W/2], 4:2:0

    y_rec = _code_channel(y, yt, rounding, kron)
    cb_rec = _code_channel(chroma[:, 0], ct, rounding, kron)
    cr_rec = _code_channel(chroma[:, 1], ct, rounding, kron)
    c_rec = torch.stack([cb_rec, cr_rec], dim=1)
    if mode == "libjpeg":
        # libjpeg's h2v2 "fancy" upsampling is the triangle filter = bilinear, align_corners=False, edge clamp.
        c_up = F.interpolate(c_rec, size=(hp, wp), mode="bilinear", align_corners=False)
    else:
        c_up = c_rec.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    ycc_rec = torch.cat([y_rec.unsqueeze(1), c_up], dim=1)
    rgb = _colour(torch.as_tensor(_YCC2RGB, dtype=dtype, device=img.device), ycc_rec - shift.view(1, 3, 1, 1))
    rgb = torch.clamp(rgb, 0, 255) / 255.0
    return rgb[:, :, :h, :w]


__all__ = ["C_TABLE", "JPEG_MODES", "Y_TABLE", "diff_jpeg", "diff_round", "quality_scale", "quant_tables"]

"""Colour fix (AdaIN, wavelet) against the official NSARM ``color_adjust`` fixtures and basic invariants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nsarm_core.color_fix import (
    adain_color_fix,
    adaptive_instance_normalization,
    calc_mean_std,
    color_fix,
    wavelet_blur,
    wavelet_color_fix,
    wavelet_decomposition,
    wavelet_lowpass,
    wavelet_reconstruction,
)
from nsarm_core.errors import ConfigError, InputError
from tests.parity import color_adjust_pil, load_manifest, load_tensors, resize_lr_like_official

FIXTURE = "color_fix"
TENSOR_TOL = 1e-6  # manifest tolerances: tensor abs 1e-6, uint8 |diff| <= 1


@pytest.fixture(scope="module")
def fx(parity_dir: Path) -> dict:
    manifest = load_manifest(parity_dir, FIXTURE)
    t = load_tensors(parity_dir, FIXTURE)
    sr = t["in.sr_u8"].numpy()
    lr_resized = t["lr_resized_pil_default_u8"].numpy()

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255.0)[None]

    return {"manifest": manifest, "t": t, "sr": to_t(sr), "lr": to_t(lr_resized)}


def test_manifest_entries_all_covered(fx: dict) -> None:
    tested = {
        "in.sr_u8", "in.lr_small_u8", "lr_resized_pil_default_u8", "adain_u8", "wavelet_u8",
        "adain_then_wavelet_u8", "tensor.adain", "tensor.wavelet_reconstruction", "tensor.wavelet_high_sr",
        "tensor.wavelet_low_sr", "tensor.wavelet_blur_r4_sr",
    }  # fmt: skip
    assert set(fx["manifest"]["tensors"]) == tested


def test_pillow_default_resize(fx: dict) -> None:
    t = fx["t"]
    ours = resize_lr_like_official(t["in.lr_small_u8"].numpy(), (128, 128))
    ref = t["lr_resized_pil_default_u8"].numpy()
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_tensor_level_functions(fx: dict) -> None:
    t, sr, lr = fx["t"], fx["sr"], fx["lr"]
    checks = {
        "tensor.adain": adaptive_instance_normalization(sr, lr),
        "tensor.wavelet_reconstruction": wavelet_reconstruction(sr, lr),
        "tensor.wavelet_high_sr": wavelet_decomposition(sr, levels=5)[0],
        "tensor.wavelet_low_sr": wavelet_decomposition(sr, levels=5)[1],
        "tensor.wavelet_blur_r4_sr": wavelet_blur(sr, radius=4),
    }
    for name, ours in checks.items():
        err = (ours - t[name]).abs().max().item()
        assert err <= TENSOR_TOL, f"{name}: max|diff| {err:.3g}"


@pytest.mark.parametrize(
    ("name", "adain", "wavelet"),
    [("adain_u8", True, False), ("wavelet_u8", False, True), ("adain_then_wavelet_u8", True, True)],
)
def test_pil_level_color_adjust(fx: dict, name: str, adain: bool, wavelet: bool) -> None:
    t = fx["t"]
    sr, lr_small = t["in.sr_u8"].numpy(), t["in.lr_small_u8"].numpy()
    ours = color_adjust_pil(sr, lr_small, adain=adain, wavelet=wavelet)
    assert ours.dtype == np.uint8 and ours.shape == sr.shape
    assert np.abs(ours.astype(int) - t[name].numpy().astype(int)).max() <= 1
    # PIL images are accepted too
    ours_pil = color_adjust_pil(Image.fromarray(sr), Image.fromarray(lr_small), adain=adain, wavelet=wavelet)
    assert np.array_equal(ours, ours_pil)


def test_color_fix_modes_match_float_chain(fx: dict) -> None:
    sr, lr = fx["sr"], fx["lr"]
    assert torch.equal(color_fix(sr, lr, "none"), sr)
    adain = color_fix(sr, lr, "adain")
    assert torch.equal(adain, adaptive_instance_normalization(sr, lr).clamp(0, 1))
    assert torch.equal(color_fix(sr, lr, "wavelet"), wavelet_reconstruction(sr, lr).clamp(0, 1))
    both = color_fix(sr, lr, "both")
    assert torch.equal(both, wavelet_color_fix(adain_color_fix(sr, lr), lr))
    assert both.min() >= 0 and both.max() <= 1
    # The float chain agrees with the official uint8 chain up to the two truncations (<= 2/255 + rounding).
    ref = fx["t"]["adain_then_wavelet_u8"].permute(2, 0, 1).float()[None]
    assert (both * 255 - ref).abs().max().item() <= 3.0
    with pytest.raises(ConfigError, match="wavelet"):
        color_fix(sr, lr, "wavlet")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="upsampled"):
        color_fix(sr, lr[..., :64, :64], "both")


def test_invariants() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 24, generator=g)
    style = torch.rand(2, 3, 10, 6, generator=g) * 0.5 + 0.2
    # decomposition is exact: high + low == x
    high, low = wavelet_decomposition(x)
    assert torch.allclose(high + low, x, atol=1e-6)
    # a constant image is a fixed point of the blur (replicate padding, kernel sums to 1)
    const = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(wavelet_blur(const, 16), const, atol=1e-7)
    # AdaIN transfers the style statistics (LR may have another size); batch rows are independent
    out = adaptive_instance_normalization(x, style)
    m_out, s_out = calc_mean_std(out)
    m_sty, s_sty = calc_mean_std(style)
    assert torch.allclose(m_out, m_sty, atol=1e-5) and torch.allclose(s_out, s_sty, atol=1e-3)
    assert torch.allclose(adaptive_instance_normalization(x[:1], style[:1]), out[:1], atol=1e-6)
    # wavelet fix of an image against itself is the identity (before clamping)
    assert torch.allclose(wavelet_reconstruction(x, x), x, atol=1e-6)
    with pytest.raises(InputError):
        adaptive_instance_normalization(x[0], style[0])


# --- the official formulation (StableSR/NSARM colorfix), kept here to check the rewrite against -------------------


def _official_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Official ``wavelet_blur``: depthwise 3x3 binomial conv2d, dilation ``radius``, replicate padding."""
    kernel = torch.tensor(
        [[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]], dtype=x.dtype
    )
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(x, kernel[None, None].repeat(c, 1, 1, 1), groups=c, dilation=radius)


def _official_reconstruction(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Official ``wavelet_reconstruction``: high bands of content (5 levels) + lowest band of style."""

    def decompose(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        high = torch.zeros_like(x)
        for i in range(5):
            low = _official_blur(x, 2**i)
            high = high + (x - low)
            x = low
        return high, low

    return decompose(content)[0] + decompose(style)[1]


# Sizes from 1x1 to larger than every dilation: below 16 px every tap at the last levels falls on the replicate
# padding, so the border handling is what is compared there.
SHAPES = [(1, 3, 1, 1), (2, 3, 3, 5), (1, 3, 7, 20), (1, 3, 15, 16), (1, 3, 64, 48), (1, 3, 256, 256)]


@pytest.mark.parametrize("shape", SHAPES)
def test_separable_blur_equals_official_conv(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=g)
    for radius in (1, 2, 4, 8, 16):
        assert (wavelet_blur(x.double(), radius) - _official_blur(x.double(), radius)).abs().max() <= 1e-12
        assert (wavelet_blur(x, radius) - _official_blur(x, radius)).abs().max() <= 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_one_decomposition_equals_official_two(shape: tuple[int, ...]) -> None:
    """content + low(style - content) == high(content) + low(style): equal in exact arithmetic (float64 shows it),
    a few float32 ulps apart, and in bf16 no farther from the exact value than the official bf16 chain."""
    g = torch.Generator().manual_seed(2)
    content, style = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    exact = _official_reconstruction(content.double(), style.double())
    assert (wavelet_reconstruction(content.double(), style.double()) - exact).abs().max() <= 1e-12
    fp32 = wavelet_reconstruction(content, style)
    assert fp32.dtype == torch.float32
    assert (fp32 - _official_reconstruction(content, style)).abs().max() <= 1e-6
    c16, s16 = content.bfloat16(), style.bfloat16()
    exact16 = _official_reconstruction(c16.double(), s16.double())
    ours, official = wavelet_reconstruction(c16, s16), _official_reconstruction(c16, s16)
    assert ours.dtype == torch.bfloat16
    err_ours = (ours.double() - exact16).abs().max().item()
    err_official = (official.double() - exact16).abs().max().item()
    assert err_ours <= max(err_official, 2**-8)  # one bf16 step of a value in [0.5, 1)
    assert (ours.double() - official.double()).abs().max() <= 2**-5  # both roundings, values up to ~1.5


def test_lowpass_is_the_lowest_band() -> None:
    x = torch.rand(1, 3, 40, 33, generator=torch.Generator().manual_seed(3))
    assert torch.equal(wavelet_lowpass(x), wavelet_decomposition(x)[1])
    assert torch.equal(wavelet_lowpass(x, levels=2), wavelet_blur(wavelet_blur(x, 1), 2))


def _official_mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Official ``calc_mean_std``: ``torch.var`` (unbiased) + 1e-5, sqrt; ``mean`` over the flattened pixels."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    return flat.mean(dim=2).reshape(b, c, 1, 1), (flat.var(dim=2) + 1e-5).sqrt().reshape(b, c, 1, 1)


def _official_adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    style_mean, style_std = _official_mean_std(style)
    content_mean, content_std = _official_mean_std(content)
    return (content - content_mean) / content_std * style_std + style_mean


@pytest.mark.parametrize("shape", SHAPES[1:])  # 1x1: both divide 0 by N - 1 = 0 (NaN), see below
def test_two_pass_adain_equals_official(shape: tuple[int, ...]) -> None:
    """Two-pass variance instead of torch.var's Welford: float64 equal to 1e-12, float32 within 1e-6, bf16 no
    farther from the exact value than the official bf16 chain."""
    g = torch.Generator().manual_seed(4)
    content = torch.rand(shape, generator=g)
    style = torch.rand(shape[0], 3, 5, 7, generator=g) * 0.5 + 0.2  # any size: only its statistics are used
    for ours, official in zip(
        calc_mean_std(content.double()), _official_mean_std(content.double()), strict=True
    ):
        assert (ours - official).abs().max() <= 1e-12
    exact = _official_adain(content.double(), style.double())
    assert (adaptive_instance_normalization(content.double(), style.double()) - exact).abs().max() <= 1e-12
    assert (
        adaptive_instance_normalization(content, style) - _official_adain(content, style)
    ).abs().max() <= 1e-6
    c16, s16 = content.bfloat16(), style.bfloat16()
    exact16 = _official_adain(c16.double(), s16.double())
    ours16 = adaptive_instance_normalization(c16, s16)
    assert ours16.dtype == torch.bfloat16
    err_ours = (ours16.double() - exact16).abs().max().item()
    err_official = (_official_adain(c16, s16).double() - exact16).abs().max().item()
    assert err_ours <= max(err_official, 2**-7)


def test_adain_of_one_pixel_is_nan_as_officially() -> None:
    x = torch.rand(1, 3, 1, 1, generator=torch.Generator().manual_seed(5))
    with pytest.warns(UserWarning):  # torch.var warns about the zero degrees of freedom; ours divides by 0
        official = _official_adain(x, x)
    assert official.isnan().all() and adaptive_instance_normalization(x, x).isnan().all()

"""nsarm_core.resize: the project's resampling filters (baselines, colour-fix reference, any-factor resize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from nsarm_core.errors import ConfigError
from nsarm_core.resize import (
    ARRAY_MODES,
    INTERPOLATION_MODES,
    interpolate,
    interpolate_array,
    pil_bicubic,
    resize_alpha,
    resize_to_scale,
)


def test_resize_to_scale_sizes_and_filters() -> None:
    g = torch.Generator().manual_seed(3)
    hr = torch.rand(1, 3, 40, 28, generator=g)  # a 10x7 LR at native scale 4
    assert resize_to_scale(hr, 4, 4) is hr
    assert resize_to_scale(hr, 2, 4).shape == (1, 3, 20, 14)
    assert resize_to_scale(hr, 3, 4).shape == (1, 3, 30, 21)
    assert resize_to_scale(hr, 2.5, 4).shape == (1, 3, 25, 18)
    assert resize_to_scale(hr, 8, 4).shape == (1, 3, 80, 56)
    down = F.interpolate(hr, size=(20, 14), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(resize_to_scale(hr, 2, 4), down)
    up = F.interpolate(hr, size=(80, 56), mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(resize_to_scale(hr, 8, 4), up)
    flat = torch.full((1, 3, 40, 28), 0.25)
    torch.testing.assert_close(resize_to_scale(flat, 3, 4), torch.full((1, 3, 30, 21), 0.25))
    with pytest.raises(ConfigError):
        resize_to_scale(hr, 0, 4)


def test_interpolate_is_torch_bicubic_clamped_and_refuses_unknown_modes() -> None:
    x = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(x, size=(20, 28), mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(interpolate(x, (20, 28), "bicubic"), want)
    for mode in INTERPOLATION_MODES:
        out = interpolate(x, (10, 14), mode)
        assert out.shape == (1, 3, 10, 14) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ConfigError, match="unknown interpolation baseline"):
        interpolate(x, (10, 14), "cubic-spline")


def test_pil_bicubic_matches_pillow_float_channels() -> None:
    x = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    ref = np.stack(
        [
            np.asarray(PILImage.fromarray(c, mode="F").resize((24, 24), PILImage.Resampling.BICUBIC))
            for c in x[0].numpy()
        ]
    )
    torch.testing.assert_close(pil_bicubic(x, (24, 24))[0], torch.from_numpy(ref).clamp(0, 1))


def test_resize_alpha_keeps_range() -> None:
    alpha = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = resize_alpha(alpha, (12, 16))
    assert out.shape == (12, 16) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("mode", ARRAY_MODES)
def test_interpolate_array_gives_torchs_floats_bit_for_bit(mode: str) -> None:
    # The baselines' torch-free path must not change a single output value: whole factors 1-8 (the same or
    # different per axis), 1-pixel edges, and values outside [0, 1] (the clamp comes after the taps).
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (1, 5), (7, 3), (17, 23), (32, 48)]:
        for sy, sx in [(k, k) for k in range(1, 9)] + [(4, 2), (3, 7)]:
            x = (np.round((rng.random((h, w, 3)) * 1.2 - 0.1) * 255) / 255).astype(np.float32)
            want = interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], (h * sy, w * sx), mode)
            got = interpolate_array(x, (h * sy, w * sx), mode)
            assert np.array_equal(got, want[0].permute(1, 2, 0).numpy()), (mode, h, w, sy, sx)


def test_interpolate_array_refuses_what_it_does_not_replay() -> None:
    x = np.zeros((4, 6, 3), np.float32)
    with pytest.raises(ConfigError, match="whole-number factors"):
        interpolate_array(x, (6, 9), "bicubic")
    with pytest.raises(ConfigError, match="not 'bilinear'"):
        interpolate_array(x, (8, 12), "bilinear")
    assert interpolate_array(x, (6, 9), "lanczos").shape == (6, 9, 3)  # Pillow's: any size


def test_resize_alpha_enlargement_runs_in_numpy_with_torchs_floats() -> None:
    alpha = np.random.default_rng(2).random((9, 11), dtype=np.float32)
    want = F.interpolate(torch.from_numpy(alpha)[None, None], size=(36, 44), mode="bicubic").clamp(0, 1)[0, 0]
    assert np.array_equal(resize_alpha(alpha, (36, 44)), want.numpy())

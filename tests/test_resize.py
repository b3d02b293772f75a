"""nsarm_core.resize: the project's resampling filters (baselines, colour-fix reference, any-factor resize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from nsarm_core.errors import ConfigError
from nsarm_core.resize import INTERPOLATION_MODES, interpolate, pil_bicubic, resize_alpha, resize_to_scale


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

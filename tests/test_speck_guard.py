"""The speck guard (nsarm_core/speck_guard.py): isolated dots the LR does not explain are found and painted over
with the LR's bicubic; lines, noise and everything else are left alone; the paper's models never run it.

Synthetic images: a smooth LR, its bicubic x4 upsampling as the "model output", and dots or lines drawn on it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nsarm_core.errors import ConfigError, InputError
from nsarm_core.models.nsarm import NSARMConfig, get_preset
from nsarm_core.pipeline import load_pipeline
from nsarm_core.resize import pil_bicubic
from nsarm_core.speck_guard import BAND_ROWS, SpeckGuardConfig, find_specks, guard_specks, lr_residual

SCALE = 4
CFG = SpeckGuardConfig()


def _smooth_lr(h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    """A smooth colour gradient with gentle waves: flat at the scale of a speck, like a sky."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h).view(1, 1, h, 1)
    x = torch.linspace(0, 1, w).view(1, 1, 1, w)
    base = torch.rand(1, 3, 1, 1, generator=g) * 0.4 + 0.3
    return (base + 0.15 * torch.sin(3 * x + 2 * y) + 0.1 * y).clamp(0, 1)


def _upscaled(lr: torch.Tensor) -> torch.Tensor:
    return pil_bicubic(lr, (SCALE * lr.shape[-2], SCALE * lr.shape[-1]))


def _dot(hr: torch.Tensor, cy: int, cx: int, radius: int = 4, value: float = 0.05) -> torch.Tensor:
    """A dark disc of ``radius`` output pixels at (cy, cx)."""
    yy, xx = torch.meshgrid(torch.arange(hr.shape[-2]), torch.arange(hr.shape[-1]), indexing="ij")
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2
    out = hr.clone()
    out[:, :, disc] = value
    return out


def test_a_planted_dot_is_found_and_painted_over_and_the_rest_is_untouched() -> None:
    lr = _smooth_lr()
    clean = _upscaled(lr)
    dotted = _dot(_dot(clean, 60, 80), 130, 200, radius=6)
    res = guard_specks(dotted, lr, SCALE, CFG, keep_mask=True)
    assert res.specks == [2]
    # both dots are gone: the output is back to the smooth image where they were
    for cy, cx in ((60, 80), (130, 200)):
        assert (
            res.image[..., cy - 3 : cy + 4, cx - 3 : cx + 4] - clean[..., cy - 3 : cy + 4, cx - 3 : cx + 4]
        ).abs().max() < 0.02
    # outside the masks the output is the input, bit for bit
    assert res.mask is not None
    outside = res.mask[0, 0] == 0
    assert outside.float().mean() > 0.9
    assert torch.equal(res.image[0][:, outside], dotted[0][:, outside])


def _whole_image_guard(hr: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The guard's painting done on the whole image at once (its first form): the reference for the bands."""
    import torch.nn.functional as F

    centres = find_specks(lr_residual(hr, lr, SCALE), CFG)
    grown = F.max_pool2d(centres.float(), 2 * CFG.grow + 1, stride=1, padding=CFG.grow)
    up = F.interpolate(grown, scale_factor=SCALE, mode="nearest")
    k = 2 * SCALE + 1
    mask = F.avg_pool2d(F.pad(up, (k // 2,) * 4, mode="replicate"), k, stride=1).clamp(0, 1)
    bicubic = torch.cat([pil_bicubic(one[None], tuple(hr.shape[-2:])) for one in lr]).clamp(0, 1)
    return torch.lerp(hr, bicubic, mask), mask


def test_painting_in_bands_equals_painting_the_whole_image_to_the_bit() -> None:
    """Specks on band boundaries, at the image borders and in several bands of a batch of two: the banded
    painting (bounded memory) gives the whole-image result exactly, mask included; in place or on a copy."""
    h, w = 3 * BAND_ROWS + 5, 40
    lr = torch.cat([_smooth_lr(h, w, seed=3), _smooth_lr(h, w, seed=4)])
    hr = _upscaled(lr[:1])
    hr = torch.cat([hr, _upscaled(lr[1:])])
    spots = [(2, 2 * SCALE), (BAND_ROWS - 1, 9), (BAND_ROWS, 30), (2 * BAND_ROWS + 1, 5), (h - 3, w - 5)]
    for i, (row, col) in enumerate(spots):
        img = i % 2
        hr[img : img + 1] = _dot(hr[img : img + 1], row * SCALE + 2, col * SCALE + 2, radius=4)
    want, want_mask = _whole_image_guard(hr, lr)
    before = hr.clone()
    res = guard_specks(hr, lr, SCALE, CFG, keep_mask=True)
    assert res.specks == [3, 2]  # every dot found: near the borders, on both sides of band boundaries
    assert torch.equal(res.image, want) and res.mask is not None and torch.equal(res.mask, want_mask)
    assert torch.equal(hr, before)  # a copy was painted
    assert guard_specks(hr, lr, SCALE, CFG).mask is None
    same = guard_specks(hr, lr, SCALE, CFG, inplace=True)
    assert same.image is hr and torch.equal(hr, want)


def test_an_image_without_specks_comes_back_unchanged() -> None:
    lr = _smooth_lr(seed=1)
    hr = _upscaled(lr)
    res = guard_specks(hr, lr, SCALE, CFG, keep_mask=True)
    assert res.specks == [0]
    assert res.mask is not None and torch.equal(res.image, hr) and not res.mask.any()


def test_lines_and_edges_are_not_specks() -> None:
    """A thin dark line the LR does not show leaves a residual that continues through the ring: kept."""
    lr = _smooth_lr(seed=2)
    hr = _upscaled(lr).clone()
    hr[:, :, 40:43, 20:230] = 0.02  # horizontal line, 3 px thick
    hr[:, :, 100:180, 120:122] = 0.95  # vertical bright line
    res = guard_specks(hr, lr, SCALE, CFG)
    assert res.specks == [0]
    assert torch.equal(res.image, hr)


def test_specks_on_the_border_are_found_and_lines_along_it_are_not() -> None:
    """Only the ring's pixels inside the image count: a dot in the last column or the first row is isolated (with
    replicated borders it sat on its own ring and was never found)."""
    lr = _smooth_lr(seed=6)
    clean = _upscaled(lr)
    h, w = clean.shape[-2:]
    for cy, cx in ((90, w - 2), (1, 120), (h - 2, 100), (100, 1)):
        res = guard_specks(_dot(clean, cy, cx, radius=3), lr, SCALE, CFG)
        assert res.specks == [1], (cy, cx)
        assert (res.image[..., cy, cx] - clean[..., cy, cx]).abs().max() < 0.02, (cy, cx)
    along = clean.clone()
    along[:, :, 0:3, 20:230] = 0.02  # a dark line along the top border
    along[:, :, 60:150, w - 2 :] = 0.95  # a bright one along the right border
    assert guard_specks(along, lr, SCALE, CFG).specks == [0]


def test_near_a_corner_too_little_of_the_ring_is_inside_to_judge() -> None:
    lr = _smooth_lr(seed=6)
    clean = _upscaled(lr)
    h, w = clean.shape[-2:]
    for cy, cx in ((1, 1), (h - 2, w - 2), (5, w - 6)):  # LR pixels (0, 0), (h-1, w-1), (1, w-2)
        assert guard_specks(_dot(clean, cy, cx, radius=3), lr, SCALE, CFG).specks == [0], (cy, cx)


def test_the_threshold_follows_the_noise_of_the_residual() -> None:
    """On a noisy residual (a noisy input) a peak that stands out on a clean one is within the noise: kept."""
    lr = _smooth_lr(seed=3)
    hr = _dot(_upscaled(lr), 90, 120, radius=3, value=lr.mean().item() - 0.12)
    assert guard_specks(hr, lr, SCALE, CFG).specks == [1]
    g = torch.Generator().manual_seed(0)
    noisy_lr = (lr + 0.06 * torch.randn(lr.shape, generator=g)).clamp(0, 1)
    assert not find_specks(lr_residual(hr, noisy_lr, SCALE), CFG).any()


def test_a_batch_counts_specks_per_image() -> None:
    lr = torch.cat([_smooth_lr(seed=4), _smooth_lr(seed=5)])
    hr = _upscaled(lr[:1])
    hr = torch.cat([_dot(hr, 50, 50), _upscaled(lr[1:])])
    assert guard_specks(hr, lr, SCALE, CFG).specks == [1, 0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threshold", 0.0),
        ("threshold", 1.5),
        ("noise_factor", -1.0),
        ("ring", 0),
        ("ring_ratio", 0.0),
        ("grow", -1),
    ],
)
def test_bad_config_values_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"speck_guard.{field}"):
        SpeckGuardConfig(**{field: value})


def test_unknown_config_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown speck_guard config keys"):
        SpeckGuardConfig.from_dict({"threshold": 0.1, "treshold": 0.2})


def test_an_output_that_is_not_the_lr_times_the_scale_is_refused() -> None:
    lr = _smooth_lr()
    with pytest.raises(InputError, match="before any final resize"):
        guard_specks(torch.zeros(1, 3, 100, 100), lr, SCALE, CFG)


# ------------------------------------------------------------------------------------------ in the pipeline


def test_config_round_trip_and_the_paper_models_have_none() -> None:
    cfg = dataclasses.replace(get_preset("tiny"), speck_guard=SpeckGuardConfig(threshold=0.2))
    back = NSARMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.speck_guard == SpeckGuardConfig(threshold=0.2)
    assert get_preset("nsarm-8b").speck_guard is None
    assert "speck_guard" not in get_preset("nsarm-8b").to_dict()  # the paper's config.json stays as it was


@pytest.mark.usefixtures("one_torch_thread")
def test_the_pipeline_runs_the_guard_only_when_asked(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model without a speck_guard entry (the paper's path) is unchanged unless --speck-guard asks for it;
    asked, the guard sees the stitched image and its LR, and its result is what upscale returns."""
    import nsarm_core.pipeline as pipeline_module

    lr = _smooth_lr(40, 52)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    real = pipeline_module.guard_specks

    def spy(hr: torch.Tensor, lr_in: torch.Tensor, scale: int, config: SpeckGuardConfig, **kw: bool):  # noqa: ANN202
        seen.append((tuple(hr.shape), tuple(lr_in.shape)))
        return real(_dot(hr, 80, 100, radius=5), lr_in, scale, config, **kw)

    monkeypatch.setattr(pipeline_module, "guard_specks", spy)
    default = load_pipeline(tiny_dir, device="cpu", dtype="fp32").upscale(lr, seed=3)
    off = load_pipeline(tiny_dir, device="cpu", dtype="fp32", speck_guard=False).upscale(lr, seed=3)
    assert seen == [] and default.settings["speck_guard"] is False and default.settings["specks"] is None
    assert torch.equal(default.image, off.image)

    on = load_pipeline(tiny_dir, device="cpu", dtype="fp32", speck_guard=True).upscale(lr, seed=3)
    assert seen == [((1, 3, 160, 208), (1, 3, 40, 52))]
    assert on.settings["speck_guard"] is True and on.settings["specks"] >= 1
    assert "speck_guard" in on.timings
    # the planted dot went; far from it the image is the unguarded one
    assert torch.equal(on.image[..., :, :60], default.image[..., :, :60])


@pytest.mark.parametrize("flag", ["--speck-guard", "--no-speck-guard"])
@pytest.mark.parametrize("model", ["bicubic", "realesrgan-x4plus"])
def test_cli_refuses_the_guard_for_baselines_and_peers(tmp_path: Path, flag: str, model: str) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from nsarm_cli.main import app

    Image.new("RGB", (20, 16), (120, 30, 200)).save(tmp_path / "in.png")
    res = CliRunner().invoke(
        app, ["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", model, flag]
    )
    assert res.exit_code == 2, res.output
    assert f"--speck-guard/--no-speck-guard applies to NSARM models, not to --model {model}" in " ".join(
        res.output.split()
    )
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

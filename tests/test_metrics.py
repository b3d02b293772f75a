"""Metrics: native BasicSR PSNR/SSIM (exact cases + parity fixture), catalogue, pyiqa backend errors offline."""

from __future__ import annotations

import math
import sys
import types
from urllib.error import URLError

import numpy as np
import pytest
import torch

from nsarm_core.errors import ConfigError, InputError, MissingExtraError, NSARMError, WeightsNotFoundError
from nsarm_core.eval import metrics as M
from tests.parity import load_manifest, load_tensors


def _img(seed: int, h: int = 48, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.float64)


# --------------------------------------------------------------------------------------------- exact cases


def test_identical_images_give_inf_psnr_and_unit_ssim() -> None:
    a = _img(0)
    assert M.psnr(a, a) == math.inf
    assert M.psnr(a, a, test_y_channel=False) == math.inf
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(a, a, crop_border=4, test_y_channel=False) == pytest.approx(1.0, abs=1e-12)


def test_known_mse_gives_known_psnr_rgb() -> None:
    ref = np.clip(_img(1), 0, 200)
    img = ref + 5.0  # every sample off by 5 -> MSE = 25
    assert M.psnr(img, ref, test_y_channel=False) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)
    img2 = ref.copy()
    img2[0, 0, 0] += 51.0  # one sample off by 51 -> MSE = 51^2 / n
    n = ref.size
    assert M.psnr(img2, ref, test_y_channel=False) == pytest.approx(
        10 * math.log10(255**2 * n / 51**2), abs=1e-10
    )


def test_known_mse_on_y_channel() -> None:
    # Adding c to R, G and B moves Y by c * (65.481 + 128.553 + 24.966) / 255 = c * 219 / 255.
    ref = np.clip(_img(2), 0, 200)
    img = ref + 10.0
    dy = 10.0 * 219.0 / 255.0
    assert M.psnr(img, ref) == pytest.approx(10 * math.log10(255**2 / dy**2), abs=1e-4)


def test_crop_border_ignores_the_border() -> None:
    ref = _img(3)
    img = ref.copy()
    img[:2] = 0  # damage only the two top rows
    assert M.psnr(img, ref, crop_border=2) == math.inf
    assert M.psnr(img, ref, crop_border=1) < 100
    assert M.ssim(img, ref, crop_border=2) == pytest.approx(1.0, abs=1e-12)


def test_ssim_decreases_with_noise_and_is_symmetric() -> None:
    ref = _img(4, 64, 64)
    noise = np.random.default_rng(9).normal(0, 1, ref.shape)
    s1 = M.ssim(np.clip(ref + 5 * noise, 0, 255), ref)
    s2 = M.ssim(np.clip(ref + 40 * noise, 0, 255), ref)
    assert 1.0 > s1 > s2
    a, b = np.clip(ref + 5 * noise, 0, 255), ref
    assert M.ssim(a, b) == pytest.approx(M.ssim(b, a), abs=1e-12)


def test_bad_inputs_raise() -> None:
    with pytest.raises(InputError, match="shapes differ"):
        M.psnr(_img(0, 8, 8), _img(0, 8, 9))
    with pytest.raises(InputError, match="too small"):
        M.psnr(_img(0, 8, 8), _img(0, 8, 8), crop_border=4)
    with pytest.raises(InputError, match="at least 11x11"):
        M.ssim(_img(0, 8, 8), _img(1, 8, 8))


def test_to_8bit_levels_rounds() -> None:
    x = np.array([[[0.0, 0.5, 1.2]]], dtype=np.float32)
    np.testing.assert_array_equal(M.to_8bit_levels(x), [[[0.0, 128.0, 255.0]]])


# --------------------------------------------------------------------------------------------- parity


def test_parity_basicsr_psnr_ssim(parity_dir) -> None:
    """BasicSR calculate_psnr/ssim (crop 4, RGB and Y, numpy and _pt) from degradation_kernels."""
    man = load_manifest(parity_dir, "degradation_kernels")
    t = {k: v.numpy() for k, v in load_tensors(parity_dir, "degradation_kernels").items()}
    ref = man["metrics"]["values"]
    a = t["metric.img1_u8_bgr"][..., ::-1]  # fixtures are BGR (cv2 order); our API takes RGB
    b = t["metric.img2_u8_bgr"][..., ::-1]
    assert M.psnr(a, b, crop_border=4, test_y_channel=False) == pytest.approx(ref["psnr_rgb_crop4"], abs=1e-6)
    assert M.psnr(a, b, crop_border=4, test_y_channel=True) == pytest.approx(ref["psnr_y_crop4"], abs=1e-6)
    assert M.ssim(a, b, crop_border=4, test_y_channel=False) == pytest.approx(ref["ssim_rgb_crop4"], abs=1e-7)
    assert M.ssim(a, b, crop_border=4, test_y_channel=True) == pytest.approx(ref["ssim_y_crop4"], abs=1e-7)
    # The torch (_pt) variants: same SSIM; PSNR differs only by BasicSR's +1e-8 in 10*log10(1/(mse+1e-8)).
    assert M.ssim(a, b, crop_border=4) == pytest.approx(ref["ssim_pt_y_crop4"], abs=1e-7)
    assert M.psnr(a, b, crop_border=4) == pytest.approx(ref["psnr_pt_y_crop4"], abs=1e-4)
    assert float(t["metric.psnr_y_crop4"][0]) == pytest.approx(ref["psnr_y_crop4"], abs=1e-12)


def test_parity_colour_conversion(parity_dir) -> None:
    t = {k: v.numpy() for k, v in load_tensors(parity_dir, "degradation_kernels").items()}
    u8 = t["metric.img1_u8_bgr"]
    f32 = u8.astype(np.float32) / 255.0
    np.testing.assert_allclose(M.bgr2ycbcr(f32, y_only=True), t["color.bgr2ycbcr_y_float"], atol=1e-7, rtol=0)
    np.testing.assert_array_equal(M.bgr2ycbcr(u8, y_only=True), t["color.bgr2ycbcr_y_u8"])
    np.testing.assert_allclose(M.bgr2ycbcr(f32), t["color.bgr2ycbcr_full_float"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(M.rgb2ycbcr(f32, y_only=True), t["color.rgb2ycbcr_y_float"], atol=1e-7, rtol=0)
    rgb = np.ascontiguousarray(f32[..., ::-1])  # rgb2ycbcr_pt was fed the RGB version of the same image
    np.testing.assert_allclose(
        M.rgb2ycbcr(rgb, y_only=True), t["color.rgb2ycbcr_pt_y"][0, 0], atol=2e-7, rtol=0
    )
    # to_y_channel (RGB order) = bgr2ycbcr on the BGR array, scaled to [0, 255]
    np.testing.assert_allclose(M.to_y_channel(u8[..., ::-1]), t["color.bgr2ycbcr_y_float"] * 255.0, atol=1e-4)


# --------------------------------------------------------------------------------------------- catalogue


def test_catalogue_entries_and_lookup() -> None:
    for name in ("psnr", "ssim", "lpips", "niqe", "clipiqa", "musiq", "maniqa", "topiq_nr"):
        assert name in M.METRICS
    for name in ("ms_ssim", "gmsd", "fsim", "vif", "vsi"):
        assert M.METRICS[name].kind == "FR" and not M.METRICS[name].weights
    assert M.get_metric("MANIQA").pyiqa_name == "maniqa-pipal"
    assert M.get_metric("topiq").name == "topiq_nr"
    with pytest.raises(ConfigError, match="Did you mean 'musiq'"):
        M.get_metric("musq")
    assert [s.name for s in M.parse_metric_list("psnr, ssim,psnr")] == ["psnr", "ssim"]
    with pytest.raises(ConfigError):
        M.parse_metric_list(" , ")


def test_lower_better_normalisation() -> None:
    assert M.get_metric("lpips").lower_better and M.get_metric("niqe").lower_better
    assert M.get_metric("gmsd").lower_better
    np.testing.assert_allclose(M.get_metric("lpips").normalise([0.2, 0.35]), [0.8, 0.65])
    np.testing.assert_allclose(M.get_metric("gmsd").normalise(0.1), 0.9)
    np.testing.assert_allclose(M.get_metric("niqe").normalise([4.0, 6.5]), [0.96, 0.935])
    np.testing.assert_allclose(M.get_metric("piqe").normalise([20.0, 50.0]), [0.8, 0.5])
    np.testing.assert_allclose(M.get_metric("musiq").normalise(71.09), 0.7109)
    np.testing.assert_allclose(M.get_metric("clipiqa").normalise(0.737), 0.737)
    rows = {r["name"]: r for r in M.catalogue_rows()}
    assert rows["psnr"]["range"] == [0.0, None] and rows["lpips"]["composite_normalisation"] == "1 - x"


# --------------------------------------------------------------------------------------------- pyiqa backend


def test_missing_pyiqa_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # makes `import pyiqa` raise ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'nsarm\[eval\]'"):
        M.build_scorer(M.get_metric("musiq"))
    # native metrics never need it
    assert M.build_scorer(M.get_metric("psnr"))(_img(0), _img(0)) == math.inf


def _fake_pyiqa(create_metric) -> types.ModuleType:
    mod = types.ModuleType("pyiqa")
    mod.create_metric = create_metric
    return mod


def test_download_failure_becomes_weights_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))

    def create_metric(name, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setitem(sys.modules, "pyiqa", _fake_pyiqa(create_metric))
    with pytest.raises(WeightsNotFoundError) as info:
        M.build_scorer(M.get_metric("musiq"))
    msg = str(info.value)
    expected = tmp_path / "th" / "hub" / "pyiqa" / "musiq_koniq_ckpt-e95806b9.pth"
    assert str(expected) in msg and "MISSING" in msg
    assert "huggingface.co/chaofengc/IQA-PyTorch-Weights" in msg and "TORCH_HOME" in msg
    # a present file is reported as present
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"x")
    with pytest.raises(WeightsNotFoundError, match=r"present"):
        M.build_scorer(M.get_metric("musiq"))


def test_hf_offline_failure_for_timm_backbone(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    class LocalEntryNotFoundError(Exception):
        pass

    def create_metric(name, **kwargs):
        try:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache")
        except LocalEntryNotFoundError as exc:
            raise RuntimeError("timm failed") from exc

    monkeypatch.setitem(sys.modules, "pyiqa", _fake_pyiqa(create_metric))
    with pytest.raises(WeightsNotFoundError, match="MANIQA_PIPAL-ae6d356b.pth.*vit_base_patch8_224"):
        M.build_scorer(M.get_metric("maniqa"))


def test_other_pyiqa_errors_are_not_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    def create_metric(name, **kwargs):
        raise ValueError("bad option")

    monkeypatch.setitem(sys.modules, "pyiqa", _fake_pyiqa(create_metric))
    with pytest.raises(ValueError, match="bad option"):
        M.build_scorer(M.get_metric("clipiqa"))


def test_pyiqa_scorer_feeds_rgb_tensors_and_is_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {}

    class FakeMetric(torch.nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def forward(self, x, y=None):
            calls[self.name] = (tuple(x.shape), float(x.min()), float(x.max()), y is not None)
            noise = torch.rand(()) if self.name == "maniqa-pipal" else torch.zeros(())  # random test crops
            return (x.mean() + noise).reshape(1, 1)

    monkeypatch.setitem(sys.modules, "pyiqa", _fake_pyiqa(lambda name, **kw: FakeMetric(name)))
    sr = np.zeros((20, 30, 3))
    sr[..., 0] = 255.0
    hr = np.full((20, 30, 3), 51.0)
    fr = M.build_scorer(M.get_metric("gmsd"), crop_border=2)
    assert fr(sr, hr) == pytest.approx(1 / 3)
    assert calls["gmsd"] == ((1, 3, 16, 26), 0.0, 1.0, True)
    with pytest.raises(InputError, match="full-reference"):
        fr(sr, None)
    with pytest.raises(InputError, match="shapes differ"):
        fr(sr, hr[:10])
    nr = M.build_scorer(M.get_metric("maniqa"), seed=3, crop_border=2)
    nr(sr, None)
    assert calls["maniqa-pipal"][0] == (1, 3, 20, 30)  # crop_border is a full-reference convention only
    state = torch.random.get_rng_state()
    v1, v2 = nr(sr, None), nr(sr, None)
    assert v1 == v2  # same seed for every image -> reproducible
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
    assert M.build_scorer(M.get_metric("maniqa"), seed=4)(sr, None) != v1


def test_pyiqa_min_side_is_checked_before_pyiqa(monkeypatch: pytest.MonkeyPatch) -> None:
    """ms_ssim / vif fail inside pyiqa with an opaque conv error below their smallest side; we name it."""

    class Metric(torch.nn.Module):
        def forward(self, x, y=None):
            raise AssertionError("pyiqa must not be called on a too-small image")

    monkeypatch.setitem(sys.modules, "pyiqa", _fake_pyiqa(lambda name, **kw: Metric()))
    scorer = M.build_scorer(M.get_metric("ms_ssim"), crop_border=4)
    img = np.zeros((168, 200, 3))
    with pytest.raises(
        InputError, match=r"ms_ssim needs images of at least 161x161 pixels after crop_border, got 160x192"
    ):
        scorer(img, img)
    with pytest.raises(InputError, match=r"vif needs images of at least 33x33 pixels, got 32x40"):
        M.build_scorer(M.get_metric("vif"))(img[:32, :40], img[:32, :40])


def test_pyiqa_direction_mismatch_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Metric(torch.nn.Module):
        lower_better = False  # contradicts the catalogue's gmsd (lower is better)

    monkeypatch.setitem(sys.modules, "pyiqa", _fake_pyiqa(lambda name, **kw: Metric()))
    with pytest.raises(NSARMError, match="'gmsd' is higher-is-better but the nsarm catalogue says lower"):
        M.build_scorer(M.get_metric("gmsd"))
    Metric.lower_better = True
    M.build_scorer(M.get_metric("gmsd"))  # agreeing direction builds


def test_pyiqa_weight_dir_follows_the_imported_pyiqa(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """pyiqa fixes its weight folder at import; after that TORCH_HOME no longer moves it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    mod = _fake_pyiqa(None)
    mod.utils = types.SimpleNamespace(
        download_util=types.SimpleNamespace(DEFAULT_CACHE_DIR=str(tmp_path / "w"))
    )
    monkeypatch.setitem(sys.modules, "pyiqa", mod)
    assert M.pyiqa_weight_dir() == tmp_path / "w"
    locs = dict((wf.file, path) for wf, path in M.weight_locations(M.get_metric("lpips")))
    assert locs["LPIPS_v0.1_alex-df73285e.pth"] == tmp_path / "w" / "LPIPS_v0.1_alex-df73285e.pth"
    assert (
        locs["alexnet-owt-7be5be79.pth"]
        == tmp_path / "th" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    )

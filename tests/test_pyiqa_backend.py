"""The pyiqa backend against a real pyiqa (runs only where pyiqa imports: the ``eval`` extra's venv).

What is checked, on real photographs (scikit-image sample photos; SR = PIL bicubic of a 4x downscale):
the weight-free full-reference metrics run offline and equal pyiqa's own direct call bit for bit; our native
BasicSR PSNR/SSIM agree with pyiqa's ``psnr``/``ssim`` (``test_y_channel=True, color_space='ycbcr'``) within
the measured tolerances, and the residual is explained; the catalogue's directions and weight files are the
ones the installed pyiqa uses; missing weights give the WeightsNotFoundError that names every file and path.

Measured with pyiqa 0.1.16, torch 2.14.1 (4 photos, up to 320x320, crop 0 and 4): native - pyiqa PSNR
+2.1e-5 .. +6.1e-5 dB (pyiqa's eps=1e-8 on the [0, 1] MSE; float32); native - pyiqa SSIM +0.92e-3 .. +1.21e-3
(pyiqa rounds Y to integer levels and clamps the contrast term at 0); SSIM on rounded Y - pyiqa within 3.6e-5.

No test downloads anything: downloads through torch.hub are replaced by a URLError (what a machine without
network gets) and HF_HUB_OFFLINE=1 (conftest) stops the Hugging Face path.

Shape legend: H, W = image height and width; images are RGB ``[H, W, 3]`` in 8-bit levels (float64).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

pyiqa = pytest.importorskip("pyiqa")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from nsarm_core.errors import InputError, WeightsNotFoundError  # noqa: E402
from nsarm_core.eval import metrics as M  # noqa: E402
from nsarm_core.eval.evaluate import EvalOptions, evaluate_folder  # noqa: E402

WEIGHT_FREE_FR = ("ms_ssim", "gmsd", "fsim", "vif", "vsi")
SIDE = 176  # >= ms_ssim's smallest side (161)
SMALL = 96  # crop for the slower metrics (fsim, vif, vsi) where a metric accepts it

# Tolerances from the measurements in the module docstring, with a margin of about 2x.
PSNR_TOL_DB = 2e-4
SSIM_TOL = 3e-3
PSNR_EPS_TOL_DB = 1e-5  # after adding pyiqa's eps to our MSE: only float32 rounding is left (max 1.3e-6)
SSIM_ROUNDED_Y_TOL = 1e-4  # after rounding our Y as pyiqa does: only pyiqa's clamp of cs at 0 is left


def _photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()[:SIDE, :SIDE].astype(np.float64)


def _bicubic_sr(hr: np.ndarray, factor: int) -> np.ndarray:
    """PIL bicubic down by ``factor`` and back up: a blurred SR output of the HR photo."""
    pil = Image.fromarray(hr.astype(np.uint8))
    w, h = pil.size
    lr = pil.resize((w // factor, h // factor), Image.Resampling.BICUBIC)
    return np.asarray(lr.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (SR, HR): three real photos, SR = 4x bicubic round trip."""
    out = {}
    for name in ("astronaut", "chelsea", "coffee"):
        hr = _photo(name)
        out[name] = (_bicubic_sr(hr, 4), hr)
    return out


def _tensor(img: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` 8-bit levels -> ``[1, 3, H, W]`` float32 in [0, 1], what pyiqa expects."""
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


@pytest.fixture
def offline_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty weight folders under tmp_path and no network: every torch.hub download raises URLError."""
    import torch.hub
    from pyiqa.utils import download_util

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # pyiqa fixed its folder at import time; move it as a fresh TORCH_HOME would.
    monkeypatch.setattr(download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "torch" / "hub" / "pyiqa"))

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise URLError(f"<urlopen error [Errno -2] Name or service not known> (test: no download of {url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(download_util, "download_url_to_file", no_network)
    return tmp_path / "torch"


# --------------------------------------------------------------------------------------------- weight-free FR


def test_weight_free_fr_metrics_equal_pyiqa_direct_calls(pairs, offline_weights) -> None:
    sr_full, hr_full = pairs["astronaut"]
    for name in WEIGHT_FREE_FR:
        spec = M.get_metric(name)
        # fsim/vif/vsi cost ~1 s per 176x176 call on 2 busy cores: use a 96x96 crop where the metric allows
        n = SIDE if spec.min_side > SMALL else SMALL
        sr, hr = sr_full[:n, :n], hr_full[:n, :n]
        ours = M.build_scorer(spec)(sr, hr)
        direct = pyiqa.create_metric(spec.pyiqa_name, device="cpu")(_tensor(sr), _tensor(hr)).item()
        assert ours == direct, name  # same scorer, same inputs -> the same float
        assert math.isfinite(ours)
    # crop_border: ours crops the arrays; pyiqa sees the cropped tensors
    cb = 4
    ours = M.build_scorer(M.get_metric("gmsd"), crop_border=cb)(sr, hr)
    crop = (slice(cb, -cb), slice(cb, -cb))
    assert ours == pyiqa.create_metric("gmsd", device="cpu")(_tensor(sr[crop]), _tensor(hr[crop])).item()


def test_weight_free_values_are_sane_and_gmsd_is_lower_better(pairs) -> None:
    """Identity is perfect; a 4x bicubic SR is worse than a 2x one, in each metric's own direction."""
    sr4, hr = (a[:SMALL, :SMALL] for a in pairs["chelsea"])
    sr2 = _bicubic_sr(hr, 2)
    scorers = {n: M.build_scorer(M.get_metric(n)) for n in ("gmsd", "fsim", "vsi")}
    for name, score in scorers.items():
        spec = M.get_metric(name)
        perfect, good, bad = score(hr, hr), score(sr2, hr), score(sr4, hr)
        lo, hi = spec.score_range
        assert all(lo <= v <= hi for v in (good, bad)), (name, good, bad)
        if spec.lower_better:  # gmsd: a deviation, 0 for identical images, grows with the damage
            assert perfect == pytest.approx(0.0, abs=1e-6) and perfect < good < bad
            assert spec.normalise(good) > spec.normalise(bad)  # composite scale is higher-is-better
        else:
            assert perfect == pytest.approx(1.0, abs=1e-6) and perfect > good > bad
    assert M.get_metric("gmsd").lower_better and pyiqa.create_metric("gmsd", device="cpu").lower_better


def test_catalogue_directions_and_modes_match_pyiqa() -> None:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    for spec in M.METRICS.values():
        if spec.backend != "pyiqa":
            continue
        cfg = DEFAULT_CONFIGS[spec.pyiqa_name]
        assert cfg.get("lower_better", False) == spec.lower_better, spec.name
        assert cfg["metric_mode"] == spec.kind, spec.name


def test_min_side_matches_pyiqa(pairs) -> None:
    """At min_side pyiqa runs; one pixel less it fails, and our scorer says why before calling it."""
    sr, hr = pairs["coffee"]
    for name in ("ms_ssim", "vif"):
        spec = M.get_metric(name)
        n = spec.min_side
        metric = pyiqa.create_metric(spec.pyiqa_name, device="cpu")
        assert math.isfinite(metric(_tensor(sr[:n, :n]), _tensor(hr[:n, :n])).item())
        with pytest.raises(RuntimeError):
            metric(_tensor(sr[: n - 1, : n - 1]), _tensor(hr[: n - 1, : n - 1]))
        with pytest.raises(InputError, match=f"at least {n}x{n}"):
            M.build_scorer(spec)(sr[: n - 1, : n - 1], hr[: n - 1, : n - 1])


# --------------------------------------------------------------------------------------------- native vs pyiqa


@pytest.mark.parametrize("crop_border", [0, 4])
def test_native_psnr_ssim_agree_with_pyiqa_ycbcr(pairs, crop_border: int) -> None:
    kw = {"test_y_channel": True, "color_space": "ycbcr", "crop_border": crop_border, "device": "cpu"}
    p_psnr = pyiqa.create_metric("psnr", **kw)
    p_ssim = pyiqa.create_metric("ssim", **kw)
    for name, (sr, hr) in pairs.items():
        ours_psnr = M.psnr(sr, hr, crop_border=crop_border)
        ours_ssim = M.ssim(sr, hr, crop_border=crop_border)
        their_psnr = p_psnr(_tensor(sr), _tensor(hr)).item()
        their_ssim = p_ssim(_tensor(sr), _tensor(hr)).item()
        assert abs(ours_psnr - their_psnr) < PSNR_TOL_DB, name
        assert abs(ours_ssim - their_ssim) < SSIM_TOL, name
        # The residuals are the two documented convention differences, nothing else:
        c = (slice(crop_border, -crop_border), slice(crop_border, -crop_border)) if crop_border else ...
        y_sr, y_hr = M.to_y_channel(sr[c]), M.to_y_channel(hr[c])
        mse01 = np.mean((y_sr - y_hr) ** 2) / 255.0**2
        assert 10 * np.log10(1.0 / (mse01 + 1e-8)) == pytest.approx(their_psnr, abs=PSNR_EPS_TOL_DB)
        rounded = M._ssim_single(np.round(y_sr), np.round(y_hr))
        assert rounded == pytest.approx(their_ssim, abs=SSIM_ROUNDED_Y_TOL), name


def test_evaluate_folder_with_pyiqa_metrics(tmp_path: Path, pairs) -> None:
    """End to end through files: CSV-level values equal the direct pyiqa call; gmsd flagged lower-better."""
    for sub in ("sr", "hr"):
        (tmp_path / sub).mkdir()
    for name, (sr, hr) in list(pairs.items())[:2]:
        Image.fromarray(sr.astype(np.uint8)).save(tmp_path / "sr" / f"{name}.png")
        Image.fromarray(hr.astype(np.uint8)).save(tmp_path / "hr" / f"{name}.png")
    opts = EvalOptions(metrics=("psnr", "ssim", "gmsd", "ms_ssim"))
    result = evaluate_folder(tmp_path / "sr", tmp_path / "hr", opts)
    summary = result.summary()
    assert summary["metrics"]["gmsd"]["lower_better"] and not summary["metrics"]["ms_ssim"]["lower_better"]
    assert summary["protocol"]["versions"]["pyiqa"] == M.pyiqa_version()
    gmsd = pyiqa.create_metric("gmsd", device="cpu")
    for rec in result.records:
        sr, hr = pairs[rec.key]
        assert rec.scores["gmsd"] == gmsd(_tensor(sr), _tensor(hr)).item()
        assert rec.scores["psnr"] == M.psnr(sr, hr)


# --------------------------------------------------------------------------------------------- weights


def test_catalogue_weight_files_are_the_ones_pyiqa_asks_for() -> None:
    import torchvision
    from pyiqa.archs import lpips_arch, maniqa_arch, musiq_arch, niqe_arch, topiq_arch

    asked = {
        "lpips": [
            torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url,
            lpips_arch.default_model_urls["0.1_alex"],
        ],
        "musiq": [musiq_arch.default_model_urls["koniq10k"]],
        "niqe_pyiqa": [niqe_arch.default_model_urls["niqe"]],
        "maniqa": [maniqa_arch.default_model_urls["pipal"]],
        "topiq_nr": [topiq_arch.default_model_urls["cfanet_nr_koniq_res50"]],
    }
    for name, urls in asked.items():
        files = [w for w in M.get_metric(name).weights if w.store != "hf"]
        assert [w.file for w in files] == [u.rsplit("/", 1)[-1] for u in urls], name
        if not os.environ.get("HF_ENDPOINT"):
            assert [w.url for w in files] == urls, name
    timm = pytest.importorskip("timm")
    for name, arch in (("maniqa", "vit_base_patch8_224"), ("topiq_nr", "resnet50")):
        hf = [w.file for w in M.get_metric(name).weights if w.store == "hf"]
        assert hf == [timm.models.get_pretrained_cfg(arch).hf_hub_id], name


@pytest.mark.parametrize("name", ["lpips", "musiq", "maniqa"])
def test_missing_weights_name_every_file(offline_weights: Path, name: str) -> None:
    spec = M.get_metric(name)
    with pytest.raises(WeightsNotFoundError) as info:
        M.build_scorer(spec)
    msg = str(info.value)
    assert f"metric '{name}' (pyiqa '{spec.pyiqa_name}') could not load its weights offline" in msg
    for wf, path in M.weight_locations(spec):
        assert f"{wf.file} [MISSING] expected at {path}" in msg
        if wf.store == "pyiqa":
            assert path == offline_weights / "hub" / "pyiqa" / wf.file
        elif wf.store == "torchvision":
            assert path == offline_weights / "hub" / "checkpoints" / wf.file
    assert "TORCH_HOME" in msg
    if name != "maniqa":  # the torch.hub path really went through the no-network stub (no real download)
        assert "test: no download of" in msg


def test_weights_placed_where_the_message_says_are_used(offline_weights: Path, pairs) -> None:
    """pyiqa's NIQE with a synthetic model file at the reported path builds and scores offline (plumbing only)."""
    from scipy.io import savemat

    spec = M.get_metric("niqe_pyiqa")
    ((wf, path),) = M.weight_locations(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    # 36 NIQE features; an identity covariance and zero mean: a valid but meaningless model.
    savemat(path, {"mu_prisparam": np.zeros((1, 36)), "cov_prisparam": np.eye(36)})
    sr, _ = pairs["astronaut"]
    value = M.build_scorer(spec)(sr, None)
    assert math.isfinite(value) and value > 0

"""Parity of our degradation kernels, USM, filter2D and noise with BasicSR (``degradation_kernels`` fixture).

The fixture's noise draws were replaced inside BasicSR (parity README §5): ``randn(*size)`` ->
``sin(0.7·arange(numel) + 0.3)`` (same pattern on every call) and ``poisson(rate)`` ->
``floor(rate + 0.5·sqrt(rate) + 0.5)``; we inject the same draws through our functions' draw arguments.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nsarm_core.data import kernels as K
from nsarm_core.errors import ConfigError
from tests.parity import load_manifest, load_tensors

TOL = 1e-5
FIXTURE = "degradation_kernels"


@pytest.fixture(scope="module")
def fixture(parity_dir):
    return load_manifest(parity_dir, FIXTURE), load_tensors(parity_dir, FIXTURE)


def _cutoff(value: str | float) -> float:
    return (
        {"pi/3": math.pi / 3, "pi/5": math.pi / 5, "pi": math.pi}[value]
        if isinstance(value, str)
        else float(value)
    )


def _kernel_from_params(p: dict, dtype: type) -> np.ndarray:
    fn = p["function"]
    if fn == "circular_lowpass_kernel":
        return K.circular_lowpass_kernel(_cutoff(p["cutoff"]), p["kernel_size"], p["pad_to"], dtype=dtype)
    args = (p["kernel_size"], p["sig_x"], p["sig_y"], p["theta"])
    if fn == "bivariate_Gaussian":
        return K.bivariate_gaussian(*args, isotropic=p["isotropic"], dtype=dtype)
    if fn == "bivariate_generalized_Gaussian":
        return K.bivariate_generalized_gaussian(*args, p["beta"], isotropic=p["isotropic"], dtype=dtype)
    if fn == "bivariate_plateau":
        return K.bivariate_plateau(*args, p["beta"], isotropic=p["isotropic"], dtype=dtype)
    raise AssertionError(f"fixture function {fn} not covered")


def test_every_fixture_kernel(fixture):
    manifest, tensors = fixture
    assert len(manifest["kernel_params"]) == 11
    for name, p in manifest["kernel_params"].items():
        ref = tensors[f"kernel.{name}"].numpy()
        k64 = _kernel_from_params(p, np.float64)
        assert k64.shape == ref.shape, name
        # float64 path: our float64 Bessel J1 matches scipy to ~1e-15, so this is far below the 1e-5 budget.
        assert np.abs(k64 - ref).max() < 1e-12, name
        k32 = _kernel_from_params(p, np.float32)
        assert k32.dtype == np.float32 and np.abs(k32 - ref).max() < TOL, name


def test_kernel_registry_matches_direct_functions(fixture):
    manifest, tensors = fixture
    p = manifest["kernel_params"]["gengauss_aniso_k21"]
    spec = K.KernelSpec("generalized_aniso", 21, p["sig_x"], p["sig_y"], p["theta"], p["beta"], pad_to=21)
    np.testing.assert_allclose(
        K.make_kernel(spec, np.float64), tensors["kernel.gengauss_aniso_k21"].numpy(), atol=1e-12
    )
    p = manifest["kernel_params"]["sinc_k13_pi5_pad21"]
    spec = K.KernelSpec("sinc", 13, cutoff=math.pi / 5, pad_to=21)
    np.testing.assert_allclose(
        K.make_kernel(spec, np.float64), tensors["kernel.sinc_k13_pi5_pad21"].numpy(), atol=1e-12
    )
    pulse = K.make_kernel(K.KernelSpec("pulse", 21))
    assert pulse.sum() == 1 and pulse[10, 10] == 1


def test_unknown_kernel_name_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown kernel type .*; valid: iso, aniso"):
        K.make_kernel(K.KernelSpec("gausian", 7, 1.0))
    with pytest.raises(ConfigError, match="Did you mean 'plateau_iso'"):
        K.get_kernel_fn("plateau_isoo")


def test_usm_kernel_is_opencv_default(fixture):
    _, tensors = fixture
    assert K.opencv_gaussian_sigma(51) == pytest.approx(8.0)
    k1 = K.gaussian_kernel_1d(51)
    np.testing.assert_array_equal(np.outer(k1, k1).astype(np.float32), tensors["usm.kernel"][0].numpy())


@pytest.mark.parametrize("method", ["separable", "direct", "fft", "auto"])
def test_usm_sharpen_matches_both_basicsr_versions(fixture, method):
    _, tensors = fixture
    x = tensors["usm.input"]
    out = K.usm_sharpen(x, weight=0.5, radius=50, threshold=10, method=method)
    assert (out - tensors["usm.USMSharp_out"]).abs().max().item() < TOL
    # usm_sharp (cv2.GaussianBlur, BORDER_REFLECT_101) on the same image, HWC.
    assert (out[0].permute(1, 2, 0) - tensors["usm.usm_sharp_numpy_out"]).abs().max().item() < TOL


@pytest.mark.parametrize("method", ["direct", "fft", "auto"])
def test_filter2d_matches(fixture, method):
    _, tensors = fixture
    x = tensors["usm.input"]
    kernel = tensors["kernel.gauss_aniso_k21"].float()
    assert (
        K.filter2d(x, kernel, method=method) - tensors["filter2D.gauss_aniso_k21"]
    ).abs().max().item() < TOL
    assert (
        K.filter2d(x, kernel[None].numpy(), method=method) - tensors["filter2D.gauss_aniso_k21"]
    ).abs().max().item() < TOL


def test_filter2d_fft_equals_direct_for_per_sample_kernels():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 37, 50, generator=g)
    ks = torch.stack(
        [
            torch.from_numpy(K.circular_lowpass_kernel(1.2, 13, 21)),
            torch.from_numpy(K.bivariate_plateau(21, 2.0, 1.0, 0.4, 1.5, False)),
        ]
    )
    torch.testing.assert_close(
        K.filter2d(x, ks, method="fft"), K.filter2d(x, ks, method="direct"), atol=2e-6, rtol=0
    )
    with pytest.raises(ConfigError, match="valid methods"):
        K.filter2d(x, ks, method="winograd")


def test_filter2d_per_sample_kernels_equal_separate_calls():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 20, 17, generator=g)
    ks = torch.stack([torch.from_numpy(K.bivariate_gaussian(7, s, s, 0.0)) for s in (0.5, 1.0, 2.0)])
    batched = K.filter2d(x, ks)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], K.filter2d(x[i : i + 1], ks[i]), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="kernels for a batch"):
        K.filter2d(x, ks[:2])


def test_reflect_pad_wider_than_image_is_reflect101():
    x = torch.arange(4.0).view(1, 1, 1, 4)
    out = K.reflect_pad(x, 0, 6)  # F.pad refuses pads >= the size; we mirror again
    assert out[0, 0, 0].tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    small = torch.rand(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        K.reflect_pad(small, 3, 4), torch.nn.functional.pad(small, (4, 4, 3, 3), mode="reflect")
    )
    # USM's radius-50 kernel on a 16x16 image works (BasicSR's F.pad would raise).
    assert K.usm_sharpen(torch.full((1, 3, 16, 16), 0.5)).shape == (1, 3, 16, 16)


def _sin_draws(shape: tuple[int, ...]) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(
        np.sin(0.7 * np.arange(n, dtype=np.float64) + 0.3).astype(np.float32).reshape(shape)
    )


def _poisson_stand_in(rate: torch.Tensor) -> torch.Tensor:
    return torch.floor(rate + 0.5 * torch.sqrt(rate) + 0.5)


def test_noise_draw_sequence_is_the_documented_one(fixture):
    manifest, _ = fixture
    assert manifest["noise"]["draws"] == [
        ["randn", [1, 3, 64, 64]],
        ["randn", [64, 64]],
        ["randn", [1, 3, 64, 64]],
        ["poisson", [1, 3, 64, 64]],
    ]


def test_gaussian_colour_noise(fixture):
    _, tensors = fixture
    out = K.add_gaussian_noise(
        tensors["usm.input"],
        torch.tensor([12.0]),
        torch.tensor([0.0]),
        clip=True,
        rounds=False,
        normals=_sin_draws((1, 3, 64, 64)),
    )
    assert (out - tensors["noise.gauss_color"]).abs().max().item() < TOL


def test_gaussian_gray_noise_with_rounding(fixture):
    _, tensors = fixture
    out = K.add_gaussian_noise(
        tensors["usm.input"],
        torch.tensor([20.0]),
        torch.tensor([1.0]),
        clip=True,
        rounds=True,
        normals=_sin_draws((1, 3, 64, 64)),
        normals_gray=_sin_draws((64, 64)),
    )
    assert (out - tensors["noise.gauss_gray_rounds"]).abs().max().item() < TOL
    # Gray noise is the same on all channels (before clipping): check on a mid-gray image.
    flat = torch.full((1, 3, 8, 8), 0.5)
    n = K.gaussian_noise(flat, 5.0, True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(n[:, 0], n[:, 1]) and torch.equal(n[:, 1], n[:, 2])


def test_poisson_colour_noise(fixture):
    _, tensors = fixture
    x = tensors["usm.input"]
    assert (K.poisson_rate(x) - tensors["noise.poisson_rate_input"]).abs().max().item() < TOL
    out = K.add_poisson_noise(
        x, torch.tensor([1.5]), torch.tensor([0.0]), clip=True, rounds=False, sampler=_poisson_stand_in
    )
    assert (out - tensors["noise.poisson_color"]).abs().max().item() < TOL


def test_photon_count_is_next_power_of_two():
    img = torch.tensor([0, 1, 2, 3, 4], dtype=torch.float32).view(1, 1, 1, 5) / 255  # 5 unique values -> 8
    assert K.poisson_photon_counts(img).item() == 8.0


def test_batched_noise_is_per_sample():
    g = torch.Generator().manual_seed(1)
    x = torch.full((2, 3, 16, 16), 0.5)
    n = K.gaussian_noise(x, torch.tensor([0.0, 10.0]), torch.tensor([1.0, 0.0]), generator=g)
    assert torch.count_nonzero(n[0]) == 0  # sigma 0
    assert n[1].std().item() == pytest.approx(10 / 255, rel=0.2)
    assert not torch.equal(n[1, 0], n[1, 1])  # colour noise differs per channel
    p = K.poisson_noise(
        x, torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]), generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(p[0, 0], p[0, 2]) and not torch.equal(p[1, 0], p[1, 2])

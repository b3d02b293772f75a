"""Blur kernels, 2-D filtering, USM sharpening and noise of the Real-ESRGAN degradation.

Reference: docs/architecture.md P.2 / docs/architecture.md E.5 (Real-ESRGAN second-order degradation, used by NSARM
to synthesise LR training/test data). Ported from BasicSR (Apache-2.0, XPixelGroup/BasicSR
``basicsr/data/degradations.py``, ``basicsr/utils/img_process_util.py``) without depending on it, cv2 or
scipy. Every function is pure: parameters and random draws are arguments. Parity against the official
code is tested with ``../shared/parity/degradation_kernels.*``.

Shape legend:
    K        kernel size (odd)
    B, C     batch, channels (C = 3 for RGB)
    H, W     image height, width
    kernels  numpy ``[K, K]`` (float32 by default, float64 on request), normalised to sum 1
    images   torch ``[B, C, H, W]`` float in [0, 1]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nsarm_core.errors import ConfigError, unknown_choice

# ----------------------------------------------------------------------------------------------------------
# Kernels (numpy, computed in float64 like BasicSR, returned as `dtype`)
# ----------------------------------------------------------------------------------------------------------


def _check_size(kernel_size: int) -> None:
    if not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1 or kernel_size % 2 != 1:
        raise ConfigError(f"kernel size must be a positive odd integer, got {kernel_size!r}")


def mesh_grid(kernel_size: int) -> np.ndarray:
    """Grid of (x, y) offsets centred at zero, ``[K, K, 2]`` float64 (x = column, y = row)."""
    _check_size(kernel_size)
    ax = np.arange(-kernel_size // 2 + 1.0, kernel_size // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def sigma_matrix2(sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    """Rotated covariance ``U diag(σx², σy²) Uᵀ`` with U the rotation by ``theta`` radians, ``[2, 2]``."""
    d = np.array([[sig_x**2, 0.0], [0.0, sig_y**2]])
    u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return u @ d @ u.T


def _mahalanobis2(kernel_size: int, sig_x: float, sig_y: float, theta: float, isotropic: bool) -> np.ndarray:
    """``xᵀ Σ⁻¹ x`` on the kernel grid, ``[K, K]`` (isotropic ignores sig_y and theta, as BasicSR)."""
    if sig_x <= 0 or (not isotropic and sig_y <= 0):
        raise ConfigError(f"kernel sigmas must be > 0, got sig_x={sig_x}, sig_y={sig_y}")
    grid = mesh_grid(kernel_size)
    if isotropic:
        sigma = np.array([[sig_x**2, 0.0], [0.0, sig_x**2]])
    else:
        sigma = sigma_matrix2(sig_x, sig_y, theta)
    inv = np.linalg.inv(sigma)
    return np.sum(np.dot(grid, inv) * grid, 2)


def bivariate_gaussian(
    kernel_size: int,
    sig_x: float,
    sig_y: float,
    theta: float,
    isotropic: bool = True,
    dtype: type = np.float32,
) -> np.ndarray:
    """Normalised (an)isotropic Gaussian ``exp(-½ xᵀΣ⁻¹x)``, ``[K, K]``."""
    k = np.exp(-0.5 * _mahalanobis2(kernel_size, sig_x, sig_y, theta, isotropic))
    return (k / np.sum(k)).astype(dtype)


def bivariate_generalized_gaussian(
    kernel_size: int,
    sig_x: float,
    sig_y: float,
    theta: float,
    beta: float,
    isotropic: bool = True,
    dtype: type = np.float32,
) -> np.ndarray:
    """Normalised generalized Gaussian ``exp(-½ (xᵀΣ⁻¹x)^β)`` (β = 1 is the Gaussian), ``[K, K]``."""
    k = np.exp(-0.5 * np.power(_mahalanobis2(kernel_size, sig_x, sig_y, theta, isotropic), beta))
    return (k / np.sum(k)).astype(dtype)


def bivariate_plateau(
    kernel_size: int,
    sig_x: float,
    sig_y: float,
    theta: float,
    beta: float,
    isotropic: bool = True,
    dtype: type = np.float32,
) -> np.ndarray:
    """Normalised plateau kernel ``1 / (1 + (xᵀΣ⁻¹x)^β)``, ``[K, K]``."""
    k = np.reciprocal(np.power(_mahalanobis2(kernel_size, sig_x, sig_y, theta, isotropic), beta) + 1)
    return (k / np.sum(k)).astype(dtype)


def pad_kernel(kernel: np.ndarray, pad_to: int) -> np.ndarray:
    """Zero-pad a ``[K, K]`` kernel symmetrically to ``[pad_to, pad_to]`` (no-op if pad_to <= K)."""
    k = kernel.shape[-1]
    if pad_to > k:
        if (pad_to - k) % 2:
            raise ConfigError(f"pad_to must be odd like the kernel size {k}, got {pad_to}")
        p = (pad_to - k) // 2
        kernel = np.pad(kernel, ((p, p), (p, p)))
    return kernel


def bessel_j1(x: np.ndarray) -> np.ndarray:
    """Bessel function of the first kind, order 1, in float64 (stands in for ``scipy.special.j1``).

    Uses Bessel's integral ``J₁(x) = 1/(2π) ∫₀^{2π} cos(τ − x sin τ) dτ``: the integrand is smooth and
    periodic, so the N-point trapezoidal rule is exact up to ``J_{N±1}(x)``, i.e. to machine precision once
    N exceeds |x| by a margin. (torch.special.bessel_j1 is off by up to 5e-7 for x in [5, 10].)
    """
    x = np.asarray(x, dtype=np.float64)
    n = int(max(64, 2 * np.abs(x).max(initial=0.0) + 64))
    tau = 2 * np.pi * np.arange(n, dtype=np.float64) / n
    return np.cos(tau - x[..., None] * np.sin(tau)).mean(axis=-1)


def circular_lowpass_kernel(
    cutoff: float, kernel_size: int, pad_to: int = 0, dtype: type = np.float32
) -> np.ndarray:
    """2-D circularly symmetric sinc ``ω J₁(ω r) / (2π r)`` (centre ``ω²/4π``), normalised, ``[K, K]``.

    Args:
        cutoff: cutoff frequency ω in radians (π is the Nyquist frequency).
        kernel_size: odd size K.
        pad_to: zero-pad the normalised kernel to this odd size (0 = no padding).
    """
    _check_size(kernel_size)
    c = (kernel_size - 1) / 2
    ii, jj = np.meshgrid(
        np.arange(kernel_size, dtype=np.float64), np.arange(kernel_size, dtype=np.float64), indexing="ij"
    )
    r = np.sqrt((ii - c) ** 2 + (jj - c) ** 2)
    j1 = bessel_j1(cutoff * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * j1 / (2 * np.pi * r)
    k[(kernel_size - 1) // 2, (kernel_size - 1) // 2] = cutoff**2 / (4 * np.pi)  # limit r -> 0
    k = k / np.sum(k)
    return pad_kernel(k, pad_to).astype(dtype)


def pulse_kernel(kernel_size: int = 21, dtype: type = np.float32) -> np.ndarray:
    """Identity kernel (1 at the centre): filtering with it changes nothing (the "no final sinc" case)."""
    _check_size(kernel_size)
    k = np.zeros((kernel_size, kernel_size), dtype=np.float64)
    k[kernel_size // 2, kernel_size // 2] = 1.0
    return k.astype(dtype)


@dataclass(frozen=True)
class KernelSpec:
    """A kernel recorded by its defining parameters (JSON-friendly), see ``make_kernel``.

    Attributes:
        kind: a key of ``KERNELS`` (iso, aniso, generalized_iso, generalized_aniso, plateau_iso,
            plateau_aniso, sinc, pulse).
        size: odd kernel size before padding.
        sigma_x, sigma_y, theta: Gaussian-family shape (theta in radians); iso kinds use sigma_x only.
        beta: shape of generalized/plateau kernels.
        cutoff: sinc cutoff ω (radians).
        pad_to: zero-pad the kernel to this odd size (Real-ESRGAN pads everything to 21).
    """

    kind: str
    size: int
    sigma_x: float = 0.0
    sigma_y: float = 0.0
    theta: float = 0.0
    beta: float = 1.0
    cutoff: float = 0.0
    pad_to: int = 21

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KernelSpec:
        return cls(**d)


def _iso(s: KernelSpec, dtype: type) -> np.ndarray:
    return bivariate_gaussian(s.size, s.sigma_x, s.sigma_x, 0.0, isotropic=True, dtype=dtype)


def _aniso(s: KernelSpec, dtype: type) -> np.ndarray:
    return bivariate_gaussian(s.size, s.sigma_x, s.sigma_y, s.theta, isotropic=False, dtype=dtype)


def _gen_iso(s: KernelSpec, dtype: type) -> np.ndarray:
    return bivariate_generalized_gaussian(
        s.size, s.sigma_x, s.sigma_x, 0.0, s.beta, isotropic=True, dtype=dtype
    )


def _gen_aniso(s: KernelSpec, dtype: type) -> np.ndarray:
    return bivariate_generalized_gaussian(
        s.size, s.sigma_x, s.sigma_y, s.theta, s.beta, isotropic=False, dtype=dtype
    )


def _plateau_iso(s: KernelSpec, dtype: type) -> np.ndarray:
    return bivariate_plateau(s.size, s.sigma_x, s.sigma_x, 0.0, s.beta, isotropic=True, dtype=dtype)


def _plateau_aniso(s: KernelSpec, dtype: type) -> np.ndarray:
    return bivariate_plateau(s.size, s.sigma_x, s.sigma_y, s.theta, s.beta, isotropic=False, dtype=dtype)


def _sinc(s: KernelSpec, dtype: type) -> np.ndarray:
    return circular_lowpass_kernel(s.cutoff, s.size, pad_to=0, dtype=dtype)


def _pulse(s: KernelSpec, dtype: type) -> np.ndarray:
    return pulse_kernel(s.size, dtype=dtype)


#: name -> function(spec, dtype) building the unpadded kernel. The first six names are BasicSR's
#: ``kernel_list`` spellings, so Real-ESRGAN option files work unchanged.
KERNELS: dict[str, Callable[[KernelSpec, type], np.ndarray]] = {
    "iso": _iso,
    "aniso": _aniso,
    "generalized_iso": _gen_iso,
    "generalized_aniso": _gen_aniso,
    "plateau_iso": _plateau_iso,
    "plateau_aniso": _plateau_aniso,
    "sinc": _sinc,
    "pulse": _pulse,
}


def get_kernel_fn(name: str) -> Callable[[KernelSpec, type], np.ndarray]:
    """The ``KERNELS`` entry for ``name``; raises ConfigError listing the valid names."""
    if name not in KERNELS:
        raise unknown_choice("kernel type", name, KERNELS)
    return KERNELS[name]


def make_kernel(spec: KernelSpec, dtype: type = np.float32) -> np.ndarray:
    """Build the kernel described by ``spec`` and zero-pad it to ``spec.pad_to``, ``[K', K']``."""
    k = get_kernel_fn(spec.kind)(spec, np.float64)
    return pad_kernel(k, spec.pad_to).astype(dtype)


# ----------------------------------------------------------------------------------------------------------
# Filtering (torch)
# ----------------------------------------------------------------------------------------------------------


def _reflect101_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source indices of a REFLECT_101 padded axis (``dcb|abcd|cba``), valid for any pad width."""
    idx = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    m = torch.remainder(idx, period)
    return torch.where(m >= n, period - m, m)


def reflect_pad(img: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Reflect-pad (torch 'reflect' = OpenCV BORDER_REFLECT_101) ``[B,C,H,W]`` by ph rows and pw columns.

    Uses ``F.pad`` when possible and falls back to index mirroring when a pad is wider than the image
    (``F.pad`` refuses that case, which happens for the radius-50 USM on small images).
    """
    h, w = img.shape[-2:]
    if ph < h and pw < w:
        return F.pad(img, (pw, pw, ph, ph), mode="reflect")
    rows = _reflect101_index(h, ph, ph, img.device)
    cols = _reflect101_index(w, pw, pw, img.device)
    return img.index_select(-2, rows).index_select(-1, cols)


def _as_kernel_tensor(kernel: np.ndarray | torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    k = torch.as_tensor(kernel) if isinstance(kernel, np.ndarray) else kernel
    return k.to(device=img.device, dtype=img.dtype)


def _filter2d_direct(x: torch.Tensor, k: torch.Tensor, b: int, c: int, h: int, w: int) -> torch.Tensor:
    ks = k.shape[-1]
    ph, pw = x.shape[-2:]
    # One group per (sample, channel), also for a shared kernel: torch's CPU depthwise conv is ~3x faster
    # than a batch of single-channel convs.
    weight = k.view(-1, 1, ks, ks).expand(b, c, ks, ks).reshape(b * c, 1, ks, ks)
    return F.conv2d(x.reshape(1, b * c, ph, pw), weight, groups=b * c).view(b, c, h, w)


def _filter2d_fft(x: torch.Tensor, k: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The same cross-correlation through a float64 FFT (exact up to ~1e-15 relative; cost independent of K).

    The padded image is at least K−1 larger than the output, so the circular wrap-around of the FFT only
    touches discarded rows/columns.
    """
    ks = k.shape[-1]
    ph, pw = x.shape[-2:]
    xf = torch.fft.rfft2(x.to(torch.float64))
    kf = torch.fft.rfft2(
        torch.flip(k.to(torch.float64), (-2, -1)), s=(ph, pw)
    )  # flip: correlation, like conv2d
    y = torch.fft.irfft2(xf * kf.view(-1, 1, *kf.shape[-2:]), s=(ph, pw))
    return y[..., ks - 1 : ks - 1 + h, ks - 1 : ks - 1 + w].to(x.dtype).contiguous()


#: ``filter2d(method="auto")`` uses the FFT from this many multiply-adds per channel (K²·H·W) on.
FFT_MIN_MACS = 2**26


def filter2d(img: torch.Tensor, kernel: np.ndarray | torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Convolve ``[B,C,H,W]`` with one kernel ``[K,K]``/``[1,K,K]`` or per-sample kernels ``[B,K,K]``.

    BasicSR's ``filter2D``: reflect padding by K//2, then a cross-correlation with a per-(sample, channel)
    kernel. Output ``[B,C,H,W]``.

    Args:
        method: "direct" (grouped conv, as BasicSR), "fft" (float64 FFT, same result to ~1e-7, much faster for
            large kernels and images on CPU) or "auto" (fft on CPU when K²·H·W >= ``FFT_MIN_MACS``).
    """
    k = _as_kernel_tensor(kernel, img)
    if k.dim() == 2:
        k = k[None]
    ks = k.shape[-1]
    if ks % 2 != 1 or k.shape[-2] != ks:
        raise ConfigError(f"filter kernels must be square with an odd size, got shape {tuple(k.shape)}")
    b, c, h, w = img.shape
    if k.shape[0] not in (1, b):
        raise ConfigError(f"got {k.shape[0]} kernels for a batch of {b} images; give 1 or {b}")
    if method not in ("auto", "direct", "fft"):
        raise ConfigError(f"unknown filter method {method!r}; valid methods: auto, direct, fft")
    x = reflect_pad(img, ks // 2, ks // 2)
    # auto: FFT on CPU for large work; on GPUs cuDNN's direct convolution is the faster path.
    if method == "fft" or (method == "auto" and img.device.type == "cpu" and ks * ks * h * w >= FFT_MIN_MACS):
        return _filter2d_fft(x, k, h, w)
    return _filter2d_direct(x, k, b, c, h, w)


def filter_separable(img: torch.Tensor, kernel_1d: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Separable version of ``filter2d`` for ``outer(k, k)`` kernels (rows then columns, reflect border)."""
    k = _as_kernel_tensor(kernel_1d, img).reshape(-1)
    ks = k.numel()
    b, c, h, w = img.shape
    n = b * c
    x = reflect_pad(img, ks // 2, ks // 2).reshape(1, n, h + ks - 1, w + ks - 1)
    x = F.conv2d(x, k.view(1, 1, ks, 1).expand(n, 1, ks, 1), groups=n)
    x = F.conv2d(x, k.view(1, 1, 1, ks).expand(n, 1, 1, ks), groups=n)
    return x.view(b, c, h, w)


def opencv_gaussian_sigma(ksize: int) -> float:
    """OpenCV's sigma for ``sigma <= 0``: ``0.3·((ksize−1)·0.5 − 1) + 0.8``."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def gaussian_kernel_1d(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.getGaussianKernel(ksize, sigma)`` in float64 (sigma <= 0 uses OpenCV's default), ``[ksize]``.

    OpenCV uses fixed tables only for ksize <= 7 with sigma <= 0; USM uses ksize 51, computed here.
    """
    _check_size(ksize)
    if sigma <= 0:
        if ksize <= 7:
            tables = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
                      7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]}  # fmt: skip
            return np.array(tables[ksize], dtype=np.float64)
        sigma = opencv_gaussian_sigma(ksize)
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) * 0.5
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def usm_sharpen(
    img: torch.Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10.0, method: str = "auto"
) -> torch.Tensor:
    """Unsharp-mask sharpening of the GT (BasicSR ``USMSharp`` / ``usm_sharp``), ``[B,C,H,W]`` -> same.

    ``blur = G * I`` (Gaussian of size radius+1 if radius is even, OpenCV default sigma, REFLECT_101
    border); ``mask = |I − blur|·255 > threshold``; ``soft = G * mask``;
    ``out = soft · clip(I + weight·(I − blur), 0, 1) + (1 − soft) · I``.

    Args:
        img: ``[B,C,H,W]`` in [0, 1].
        weight: sharpening weight (0.5 in Real-ESRGAN).
        radius: Gaussian kernel size (50 -> 51).
        threshold: residual threshold on the 0-255 scale (10).
        method: "separable" (two 1-D passes, like cv2.GaussianBlur), "direct" (the 2-D kernel, like
            BasicSR's USMSharp), "fft" (float64 FFT) or "auto" (fft for large images, else separable).
            All agree to ~1e-6.
    """
    if radius % 2 == 0:
        radius += 1
    k1 = gaussian_kernel_1d(radius)
    k2 = np.outer(k1, k1).astype(np.float32)
    h, w = img.shape[-2:]
    if method == "auto":
        method = "fft" if img.device.type == "cpu" and radius * h * w >= FFT_MIN_MACS // 8 else "separable"
    if method == "separable":
        blur_fn = lambda x: filter_separable(x, k1.astype(np.float32))  # noqa: E731
    elif method in ("direct", "fft"):
        blur_fn = lambda x: filter2d(x, k2, method=method)  # noqa: E731
    else:
        raise ConfigError(f"unknown USM method {method!r}; valid methods: auto, separable, direct, fft")
    blur = blur_fn(img)
    residual = img - blur
    mask = (torch.abs(residual) * 255 > threshold).to(img.dtype)
    soft_mask = blur_fn(mask)
    sharp = torch.clip(img + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img


# ----------------------------------------------------------------------------------------------------------
# Noise (torch). Draws are arguments: pass a torch.Generator, or the draws themselves.
# ----------------------------------------------------------------------------------------------------------


def _per_sample(value: float | torch.Tensor | list[float], img: torch.Tensor) -> torch.Tensor:
    """A scalar or length-B sequence as a ``[B,1,1,1]`` tensor on img's device/dtype."""
    t = torch.as_tensor(value, dtype=img.dtype, device=img.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(img.shape[0])
    if t.numel() != img.shape[0]:
        raise ConfigError(f"got {t.numel()} per-sample values for a batch of {img.shape[0]}")
    return t.view(-1, 1, 1, 1)


def _finish(out: torch.Tensor, clip: bool, rounds: bool) -> torch.Tensor:
    """BasicSR's clip/round tail of every ``add_*_noise`` function."""
    if clip and rounds:
        return torch.clamp((out * 255.0).round(), 0, 255) / 255.0
    if clip:
        return torch.clamp(out, 0, 1)
    if rounds:
        return (out * 255.0).round() / 255.0
    return out


def gaussian_noise(
    img: torch.Tensor,
    sigma: float | torch.Tensor,
    gray: bool | torch.Tensor = False,
    *,
    generator: torch.Generator | None = None,
    normals: torch.Tensor | None = None,
    normals_gray: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive Gaussian noise ``N(0, (σ/255)²)``; gray samples share one draw across channels.

    Args:
        img: ``[B,C,H,W]``.
        sigma: per-sample σ on the 0-255 scale, scalar or ``[B]``.
        gray: per-sample gray flag, bool or ``[B]`` (0/1).
        generator: source of the standard normals when ``normals``/``normals_gray`` are not given.
        normals: colour draws ``[B,C,H,W]`` (standard normal).
        normals_gray: gray draws ``[B,1,H,W]`` (or ``[H,W]`` as BasicSR's batch-1 code draws them).

    Returns:
        the noise ``[B,C,H,W]`` (not yet added).
    """
    b, c, h, w = img.shape
    s = _per_sample(sigma, img)
    g = _per_sample(gray, img) > 0
    if normals is None and not bool(g.all()):
        normals = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
    if normals_gray is None and bool(g.any()):
        normals_gray = torch.randn((b, 1, h, w), generator=generator, device=img.device, dtype=img.dtype)
    # BasicSR multiplies (draw * σ) / 255 in the image dtype; same order here for bitwise parity.
    color = normals.to(img).reshape(b, c, h, w) * s / 255.0 if normals is not None else None
    if normals_gray is None:
        return color
    gray_n = (normals_gray.to(img).reshape(b, 1, h, w) * s / 255.0).expand(b, c, h, w)
    return gray_n if color is None else torch.where(g, gray_n, color)


def add_gaussian_noise(
    img: torch.Tensor,
    sigma: float | torch.Tensor,
    gray: bool | torch.Tensor = False,
    *,
    clip: bool = True,
    rounds: bool = False,
    generator: torch.Generator | None = None,
    normals: torch.Tensor | None = None,
    normals_gray: torch.Tensor | None = None,
) -> torch.Tensor:
    """``img + gaussian_noise(...)``, then BasicSR's clip/round (``add_gaussian_noise_pt``), ``[B,C,H,W]``."""
    noise = gaussian_noise(img, sigma, gray, generator=generator, normals=normals, normals_gray=normals_gray)
    return _finish(img + noise, clip, rounds)


def rgb_to_gray(img: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale``: ``0.2989 R + 0.587 G + 0.114 B``, ``[B,3,H,W]`` -> ``[B,1,H,W]``."""
    r, g, b = img.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3).to(img.dtype)


def poisson_photon_counts(img_q: torch.Tensor) -> torch.Tensor:
    """BasicSR's photon count per sample: ``2^ceil(log2(#unique values))`` of the 8-bit image, ``[B,1,1,1]``.

    ``img_q`` holds multiples of 1/255, so its unique values are counted with a 256-bin histogram of the
    levels (same count as BasicSR's ``torch.unique``, without sorting millions of values).
    """
    levels = torch.clamp(torch.round(img_q * 255.0), 0, 255).to(torch.int64)
    vals = [
        int(torch.count_nonzero(torch.bincount(levels[i].reshape(-1), minlength=256)))
        for i in range(img_q.shape[0])
    ]
    return img_q.new_tensor([2 ** np.ceil(np.log2(v)) for v in vals]).view(-1, 1, 1, 1)


def _poisson_part(
    img: torch.Tensor, sampler: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise of one (colour or gray) image, plus the Poisson rate (exposed for the parity test)."""
    img_q = torch.clamp((img * 255.0).round(), 0, 255) / 255.0  # 8-bit, so the unique count is meaningful
    vals = poisson_photon_counts(img_q)
    rate = img_q * vals
    return sampler(rate) / vals - img_q, rate


def poisson_noise(
    img: torch.Tensor,
    scale: float | torch.Tensor,
    gray: bool | torch.Tensor = False,
    *,
    generator: torch.Generator | None = None,
    sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Shot noise (BasicSR ``generate_poisson_noise_pt``), ``[B,C,H,W]`` -> noise ``[B,C,H,W]``.

    The image is quantised to 8 bit, the photon count is ``2^ceil(log2(#unique values))`` per sample,
    the noise is ``Poisson(img·vals)/vals − img`` times ``scale``. Gray samples use the noise of the
    grayscale image on all channels.

    Args:
        scale: per-sample noise scale, scalar or ``[B]``.
        gray: per-sample gray flag, bool or ``[B]``.
        generator: torch.Generator for ``torch.poisson`` (used when ``sampler`` is None).
        sampler: maps a rate tensor to Poisson counts (replaces ``torch.poisson``; e.g. injected draws).
    """
    b, c, h, w = img.shape
    if sampler is None:
        sampler = lambda rate: torch.poisson(rate, generator=generator)  # noqa: E731
    s = _per_sample(scale, img)
    g = _per_sample(gray, img) > 0
    noise = None
    if bool(g.any()):
        noise_gray, _ = _poisson_part(rgb_to_gray(img), sampler)
        noise = noise_gray.expand(b, c, h, w)
    if not bool(g.all()):
        noise_color, _ = _poisson_part(img, sampler)
        noise = noise_color if noise is None else torch.where(g, noise, noise_color)
    return noise * s


def add_poisson_noise(
    img: torch.Tensor,
    scale: float | torch.Tensor,
    gray: bool | torch.Tensor = False,
    *,
    clip: bool = True,
    rounds: bool = False,
    generator: torch.Generator | None = None,
    sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``img + poisson_noise(...)``, then BasicSR's clip/round (``add_poisson_noise_pt``), ``[B,C,H,W]``."""
    return _finish(img + poisson_noise(img, scale, gray, generator=generator, sampler=sampler), clip, rounds)


def poisson_rate(img: torch.Tensor) -> torch.Tensor:
    """The Poisson rate ``round(img·255)/255 · vals`` of the colour branch (for inspection/tests)."""
    return _poisson_part(img, lambda r: r)[1]


__all__ = [
    "KERNELS",
    "KernelSpec",
    "add_gaussian_noise",
    "add_poisson_noise",
    "bivariate_gaussian",
    "bivariate_generalized_gaussian",
    "bivariate_plateau",
    "circular_lowpass_kernel",
    "FFT_MIN_MACS",
    "filter2d",
    "filter_separable",
    "gaussian_kernel_1d",
    "gaussian_noise",
    "get_kernel_fn",
    "make_kernel",
    "mesh_grid",
    "opencv_gaussian_sigma",
    "pad_kernel",
    "poisson_noise",
    "poisson_photon_counts",
    "poisson_rate",
    "pulse_kernel",
    "reflect_pad",
    "rgb_to_gray",
    "sigma_matrix2",
    "usm_sharpen",
]

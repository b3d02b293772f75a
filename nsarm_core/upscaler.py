"""The contract every upscaler shares, importable without torch: what it is given and what it returns.

Not a paper component. The NSARM pipeline (:mod:`nsarm_core.pipeline`), the peer networks
(:mod:`nsarm_core.peers`) and the interpolation baselines (``nsarm_core.batch.upscale.InterpolationUpscaler``)
all implement :class:`Upscaler` and return an :class:`UpscaleResult`, and every run option is checked by the
rules here (sampling settings, device and dtype names) whatever the model, so a typo fails the same way for
``--model bicubic`` as for ``--model nsarm-tiny``. This module imports no torch, so choosing and checking a
baseline, and running it, does not load the model stack (``nsarm upscale --model bicubic`` starts fast).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeGuard, runtime_checkable

from nsarm_core.errors import ConfigError

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

    import numpy as np
    import torch

    from nsarm_core.pipeline import SRPipeline

__all__ = [
    "COLOR_FIX_MODES",
    "DTYPE_NAMES",
    "STITCH_MODES",
    "LoadOptions",
    "UpscaleSettings",
    "check_batch_windows",
    "UpscaleResult",
    "Upscaler",
    "check_device_name",
    "check_dtype_name",
    "check_fidelity",
    "check_tau",
    "is_sr_pipeline",
    "pipeline_settings",
]

#: The colour corrections of :func:`nsarm_core.color_fix.color_fix` (``--color-fix``).
COLOR_FIX_MODES: tuple[str, ...] = ("none", "adain", "wavelet", "both")

#: How the windows of an image are put together (``--stitch``): decoded windows blended in pixels, or sampled
#: latents blended and the image latent decoded in large tiles (:mod:`nsarm_core.latent_stitch`).
STITCH_MODES: tuple[str, ...] = ("pixel", "latent")

#: The dtype names of ``--dtype`` besides ``auto`` (``nsarm_core.pipeline.DTYPES`` maps them to torch dtypes).
DTYPE_NAMES: tuple[str, ...] = ("fp32", "bf16", "fp16")


def check_tau(tau: float) -> float:
    """The one rule for the sampling temperature, used by the sampler, the pipeline and the CLI alike.

    The logits are divided by ``tau``, so it must be a finite number > 0.

    Raises:
        ConfigError: anything else (0, negative, NaN, infinity, not a number).
    """
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau) or tau <= 0:
        raise ConfigError(f"tau (the sampling temperature) must be a finite number > 0, got {tau!r}")
    return float(tau)


def check_batch_windows(value: int | None) -> int | None:
    """``value`` if it is None (automatic) or a positive integer; a :class:`ConfigError` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"batch_windows must be a positive number of windows (or None/omitted for automatic), got {value!r}"
        )
    return value


def check_fidelity(value: float, what: str = "fidelity") -> float:
    """``value`` as a float in [0, 1], or a :class:`ConfigError` naming ``what``."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= w <= 1.0 or math.isnan(w):
        raise ConfigError(
            f"{what} must be in [0, 1] (0 = NSARM's generative output, 1 = most faithful), got {w}"
        )
    return w


def check_dtype_name(dtype: str) -> str:
    """``dtype`` if it is ``auto`` or one of :data:`DTYPE_NAMES`.

    Raises:
        ConfigError: any other name.
    """
    if dtype != "auto" and dtype not in DTYPE_NAMES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(DTYPE_NAMES)}")
    return dtype


def check_device_name(device: str) -> str:
    """``device`` if it names a device nsarm runs on (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    Raises:
        ConfigError: any other name.
    """
    if device not in ("auto", "cpu", "cuda", "mps") and not re.fullmatch(r"cuda:\d+", device):
        raise ConfigError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N (e.g. cuda:1), mps")
    return device


@dataclass(frozen=True)
class UpscaleSettings:
    """How the pipeline upscales: the transformer's sampling (tau, top_p, cfg; NSARM's defaults,
    ``scripts/infer.sh``, spec E.3), the colour fix, the window overlap, the CFW fidelity, how the windows are
    stitched (``None``: the model's ``NSARMConfig.stitch``) and the speck guard."""

    tau: float = 0.5
    top_p: float = 0.97
    cfg: float = 1.0
    color_fix: str = "both"
    tile_overlap: int | None = None  # LR pixels; None = a quarter of the window
    fidelity: float | None = None  # CFW w in [0, 1]; None = the model's default (0 for models without CFW)
    stitch: str | None = None  # "pixel" | "latent"; None = the model's default (NSARMConfig.stitch)
    speck_guard: bool | None = None  # nsarm_core/speck_guard.py; None = the model's default (off: the paper)

    def __post_init__(self) -> None:
        check_tau(self.tau)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not math.isfinite(self.cfg):
            raise ConfigError(f"cfg must be a finite number, got {self.cfg}")
        if self.tile_overlap is not None and self.tile_overlap < 0:
            raise ConfigError(f"tile_overlap must be >= 0 LR pixels, got {self.tile_overlap}")
        if self.color_fix not in COLOR_FIX_MODES:
            raise ConfigError(f"unknown colour fix {self.color_fix!r}; valid: {list(COLOR_FIX_MODES)}")
        if self.fidelity is not None:
            check_fidelity(self.fidelity)
        if self.stitch is not None and self.stitch not in STITCH_MODES:
            raise ConfigError(f"unknown stitch mode {self.stitch!r}; valid: {', '.join(STITCH_MODES)}")


def pipeline_settings(
    sampling: Mapping[str, Any] | None = None,
    color_fix: str | None = None,
    tile_overlap: int | None = None,
    fidelity: float | None = None,
    stitch: str | None = None,
    speck_guard: bool | None = None,
) -> UpscaleSettings:
    """The :class:`UpscaleSettings` of :func:`nsarm_core.pipeline.load_pipeline`'s options (validated: tau,
    top_p, cfg, colour fix, overlap, CFW fidelity, stitch mode, speck guard), so a caller can check them
    before loading a model."""
    settings = UpscaleSettings(**dict(sampling or {}))
    if color_fix is not None:
        settings = replace(settings, color_fix=color_fix)
    if tile_overlap is not None:
        settings = replace(settings, tile_overlap=int(tile_overlap))
    if fidelity is not None:
        settings = replace(settings, fidelity=float(fidelity))
    if stitch is not None:
        settings = replace(settings, stitch=stitch)
    if speck_guard is not None:
        settings = replace(settings, speck_guard=bool(speck_guard))
    return settings


class LoadOptions(TypedDict, total=False):
    """The loading options :func:`nsarm_core.batch.upscale.load_upscaler` takes and passes on to
    :func:`nsarm_core.pipeline.load_pipeline` (the same names, defaults and meaning; documented there), written
    once here so the two lists cannot drift apart."""

    device: str
    dtype: str
    weights: str | os.PathLike[str] | None
    vae_weights: str | os.PathLike[str] | None
    text_encoder: str | os.PathLike[str] | None
    sampling: Mapping[str, Any] | None
    color_fix: str | None
    tile: int | None
    tile_overlap: int | None
    fidelity: float | None
    stitch: str | None
    speck_guard: bool | None
    batch_windows: int | None


def check_load_options(options: Mapping[str, Any]) -> None:
    """Refuse an option :class:`LoadOptions` does not name (a typo would otherwise surface as a TypeError deep
    in the model loader, after the checks every other option gets).

    Raises:
        ConfigError: an unknown option name.
    """
    unknown = sorted(set(options) - set(LoadOptions.__annotations__))
    if unknown:
        raise ConfigError(
            f"unknown upscaler option(s) {', '.join(unknown)}; valid: {', '.join(LoadOptions.__annotations__)}"
        )


@dataclass
class UpscaleResult:
    """What an upscaler returns for one image.

    Attributes:
        image: float32 [1, 3, s*H, s*W] tensor in [0, 1], at the upscaler's native factor ``s`` (an
            [s*H, s*W, 3] array from ``InterpolationUpscaler.upscale_array``, the baselines' torch-free path).
        seed: the seed actually used (recorded per image so a result can be reproduced).
        settings: the sampling settings that produced it (tau, top_p, cfg, tile, ...), JSON-serialisable.
        timings: seconds per stage, e.g. ``{"encode": 0.1, "sample": 2.3, "decode": 0.4}``.
    """

    image: torch.Tensor | np.ndarray
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Upscaler(Protocol):
    """Anything that super-resolves one RGB image by a fixed native factor.

    Implemented by :class:`nsarm_core.pipeline.SRPipeline` (NSARM; tiles internally, so any H, W), the peers
    (:mod:`nsarm_core.peers`) and the interpolation baselines (``nsarm_core.batch.upscale.InterpolationUpscaler``).
    """

    native_scale: int
    name: str

    def upscale(self, rgb: torch.Tensor, *, seed: int, prompt: str | None) -> UpscaleResult:
        """``rgb`` [1, 3, H, W] float32 in [0, 1] -> :class:`UpscaleResult` with image [1, 3, s*H, s*W]."""
        ...


def is_sr_pipeline(upscaler: object) -> TypeGuard[SRPipeline]:
    """Whether ``upscaler`` is an NSARM :class:`~nsarm_core.pipeline.SRPipeline`, without importing the model
    stack: while :mod:`nsarm_core.pipeline` has not been imported, nothing can be one (a baseline's run stays
    torch-free)."""
    pipeline = sys.modules.get("nsarm_core.pipeline")
    return pipeline is not None and isinstance(upscaler, pipeline.SRPipeline)

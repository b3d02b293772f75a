"""Batch upscaling: the layer between ``nsarm upscale photos/ --scale 4`` and the model.

Not a paper component. NSARM's official inference (docs/architecture.md P.1.1) reads a jsonl list of 256x256 crops
and writes 1024x1024 PNGs; this module is what a photographer's batch tool needs around any upscaler (the NSARM
``SRPipeline`` or an :class:`InterpolationUpscaler` baseline, chosen by :func:`load_upscaler`), following docs/architecture.md P.4.5 and P.5:

* **inputs**: planned by :mod:`nsarm_core.batch.inputs` (files, folders, glob patterns; sub-folders mirrored);
* **safety**: an input is never overwritten (a per-file refusal); writes are atomic (``write_image``), existing
  outputs are skipped unless ``overwrite`` when they are complete and were made with this run's settings
  (:mod:`nsarm_core.batch.outputs`: other settings stop the run naming the setting), so an interrupted batch is
  finished by running it again, and temporary files left by a killed run are removed when their output is
  redone;
* **errors**: a file that cannot be read or upscaled is recorded as failed and the batch goes on;
* **fidelity to the file**: alpha is kept (upscaled separately with bicubic and re-attached: the model only sees
  RGB), 16-bit files stay 16-bit, gray files stay gray (the luma of the RGB result), EXIF and ICC are carried
  (``keep_metadata=False`` strips them); a format that cannot hold the result (16-bit or alpha into JPEG/BMP,
  16-bit into WebP) is replaced by PNG, with a warning;
* **any factor**: the upscaler works at its native factor (4); other factors are a final bicubic resize of its
  output (antialiased when shrinking, :func:`nsarm_core.resize.resize_to_scale`);
* **start-up**: the model stack (torch, :mod:`nsarm_core.pipeline`, :mod:`nsarm_core.peers`) is imported by
  :func:`load_upscaler` only when a model or a peer is asked for. The bicubic, nearest and lanczos baselines run
  on numpy arrays (:func:`nsarm_core.resize.interpolate_array`, the same floats as torch's kernel) and never
  import torch, so ``nsarm upscale --model bicubic`` starts in a fraction of a second;
* **prompts**: one fixed prompt, per-image captions from jsonl files (the official ``image_path`` +
  ``long_caption`` layout, :mod:`nsarm_core.data.captions`), or the model's own ``default_prompt``;
* **multi-GPU**: under ``accelerate launch`` every process takes every ``world``-th file
  (:func:`nsarm_core.batch.inputs.shard`).

Shape legend:
    H, W     input height and width in pixels
    s        the upscaler's native factor (4)
    oH, oW   output size, ``round(H * scale)``, ``round(W * scale)``
    rgb      tensor [1, 3, H, W] float32 in [0, 1]
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import numpy as np

from nsarm_core.batch.inputs import (
    BatchItem,
    InputGuard,
    detect_world,
    output_file_mode,
    output_for,
    plan_inputs,
    resolve_name_suffix,
    shard,
)
from nsarm_core.batch.outputs import (
    OutputRecords,
    output_settings,
    output_state,
    settings_differences,
    weights_identity,
)
from nsarm_core.batch.tiled import TiledUpscaler, accepts_on_tile, count_windows
from nsarm_core.batch.write_checks import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    check_output_budget,
    check_output_folder,
    write_error,
)
from nsarm_core.data.captions import CaptionIndex, load_captions
from nsarm_core.data.files import path_key
from nsarm_core.data.io import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    Image,
    from_tensor,
    read_image,
    read_image_size,
    to_tensor,
    write_image,
)
from nsarm_core.devices import check_device
from nsarm_core.errors import ConfigError, InputError, MissingExtraError, WeightsNotFoundError
from nsarm_core.resize import (
    ARRAY_MODES,
    INTERPOLATION_MODES,
    interpolate,
    interpolate_array,
    resize_alpha,
    resize_to_scale,
)
from nsarm_core.upscaler import (
    LoadOptions,
    Upscaler,
    UpscaleResult,
    check_batch_windows,
    check_dtype_name,
    check_load_options,
    pipeline_settings,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_EXTS",
    "InterpolationUpscaler",
    "load_upscaler",
    "UpscaleOptions",
    "ImageRecord",
    "BatchReport",
    "output_suffix_for",
    "upscale_image",
    "upscale_files",
    "upscale_batch",
    "check_batch",
    "preflight",
    "run_model_on_folder",
]

#: Values of ``--ext``: an output format, or ``same`` as the input.
OUTPUT_EXTS: tuple[str, ...] = ("same", "png", "jpg", "webp", "tif")

# What each output suffix can hold (mirrors write_image's rules in data/io.py). A format that cannot hold the
# bit depth or the alpha of the result would silently lose it, so such outputs are written as PNG instead.
_HOLDS_16BIT = frozenset({".png", ".tif", ".tiff"})
_HOLDS_ALPHA = frozenset({".png", ".webp", ".tif", ".tiff"})

# write_image's temporary files: ".<name>.tmp-<8 hex>" next to the target (nsarm_core.atomic.temp_path).
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.tmp-[0-9a-f]{8}$")

# Errors that concern the whole run (configuration, weights, missing packages): they stop the batch instead of
# being recorded against one image.
_FATAL_ERRORS: tuple[type[BaseException], ...] = (ConfigError, WeightsNotFoundError, MissingExtraError)


# ------------------------------------------------------------------------------------------------------------
# The interpolation baselines, and the choice baseline-or-model
# ------------------------------------------------------------------------------------------------------------


class InterpolationUpscaler:
    """A classical interpolation baseline: ``bicubic``, ``bilinear``, ``nearest`` or ``lanczos``, clamped to [0, 1].

    Deterministic (``seed`` and ``prompt`` are ignored but recorded). Used by ``nsarm upscale --model bicubic``
    (or ``lanczos``, ``bilinear``, ``nearest``) and as reference methods of the evaluation. bicubic/bilinear use
    ``F.interpolate(align_corners=False)``; lanczos uses Pillow's Lanczos-3 on float channels.
    :meth:`upscale_array` gives the same floats on numpy arrays without torch (bicubic, nearest, lanczos); the
    batch uses it when :attr:`runs_on_arrays`.

    Args:
        mode: one of :data:`INTERPOLATION_MODES`.
        scale: the integer factor ``s >= 1``.
    """

    def __init__(self, mode: str = "bicubic", scale: int = 4) -> None:
        if mode not in INTERPOLATION_MODES:
            raise ConfigError(f"unknown interpolation baseline {mode!r}; valid: {list(INTERPOLATION_MODES)}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ConfigError(f"{mode} upscaler scale must be an integer >= 1, got {scale!r}")
        self.mode = mode
        self.native_scale: int = scale
        self.name: str = mode

    @property
    def runs_on_arrays(self) -> bool:
        """True when :meth:`upscale_array` is this upscaler's result without torch: the mode has a numpy path
        (:data:`~nsarm_core.resize.ARRAY_MODES`; bilinear has none) and :meth:`upscale` is not overridden (a
        subclass's own ``upscale`` is what it means)."""
        return self.mode in ARRAY_MODES and type(self).upscale is InterpolationUpscaler.upscale

    def upscale_array(self, rgb: np.ndarray, *, seed: int, prompt: str | None) -> UpscaleResult:
        """Upscale ``rgb`` [H, W, 3] float32 to an [s*H, s*W, 3] array in ``result.image``, without torch: the
        same floats as :meth:`upscale` (:func:`~nsarm_core.resize.interpolate_array`).

        Raises:
            ConfigError: bilinear (it has no numpy path; use :meth:`upscale`).
        """
        start = time.perf_counter()
        h, w = rgb.shape[:2]
        out = interpolate_array(rgb, (h * self.native_scale, w * self.native_scale), self.mode)
        return self._result(out, seed, start)

    def upscale(self, rgb: torch.Tensor, *, seed: int, prompt: str | None) -> UpscaleResult:
        """Upscale ``rgb`` [1, 3, H, W] to [1, 3, s*H, s*W] (float32, clamped: cubic kernels overshoot at edges).

        Raises:
            InputError: ``rgb`` is not a [1, 3, H, W] tensor.
        """
        if rgb.ndim != 4 or rgb.shape[0] != 1 or rgb.shape[1] != 3:
            raise InputError(f"{self.name} upscaler expects a tensor [1, 3, H, W]; got {list(rgb.shape)}")
        start = time.perf_counter()
        h, w = rgb.shape[-2:]
        out = interpolate(rgb, (h * self.native_scale, w * self.native_scale), self.mode)
        return self._result(out, seed, start)

    def _result(self, image: torch.Tensor | np.ndarray, seed: int, start: float) -> UpscaleResult:
        """The one result record of both paths: the method and factor, and the seconds since ``start``."""
        return UpscaleResult(
            image=image,
            seed=seed,
            settings={"method": self.mode, "scale": self.native_scale},
            timings={"upscale": time.perf_counter() - start},
        )


#: The load options only NSARM models take: (option, flag, what it applies to).
_NSARM_ONLY_OPTIONS = (
    ("fidelity", "--fidelity", "NSARM models with a CFW module"),
    ("speck_guard", "--speck-guard/--no-speck-guard", "NSARM models"),
    ("batch_windows", "--batch-windows", "NSARM models"),
    ("stitch", "--stitch", "NSARM models"),
)


def _refuse_nsarm_only_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse, for a baseline or a peer ``name``, an option only NSARM models take (ignoring it silently would
    hide a wrong --model)."""
    for key, flag, applies_to in _NSARM_ONLY_OPTIONS:
        if options.get(key) is not None:
            raise ConfigError(f"{flag} applies to {applies_to}, not to --model {name}")


def load_upscaler(model: str | Path, *, scale: float = 4.0, **options: Unpack[LoadOptions]) -> Upscaler:
    """The one choice baseline-or-model: an :class:`InterpolationUpscaler` for ``bicubic``, ``bilinear``,
    ``nearest`` and ``lanczos``, a peer network for a peer name (``realesrgan-x4plus``,
    :func:`nsarm_core.peers.load_peer`), else the NSARM pipeline (:func:`nsarm_core.pipeline.load_pipeline`,
    whose options ``options`` are: :class:`~nsarm_core.upscaler.LoadOptions`; an unknown name is refused).

    ``scale`` is the output factor the batch will ask for: a baseline does an integer factor in one
    interpolation step; any other factor is x4 plus the batch's final resize, as for a model. ``fidelity`` (the
    CFW weight) and ``speck_guard`` apply to NSARM models only; a baseline or a peer refuses them, and so do
    ``batch_windows`` (windows run together, None: from a memory budget) and ``stitch`` (how the windows are put
    together).

    ``tile``: for a peer network its window side (Real-ESRGAN's ``--tile``); for NSARM models and the baselines
    a :class:`~nsarm_core.batch.tiled.TiledUpscaler` of that many input pixels around the upscaler (see there
    for what it changes). None or 0: no extra tiling. ``device`` must exist on this machine
    (:func:`nsarm_core.devices.check_device`) and ``fp16`` is refused on the CPU (no fast fp16 kernels there).
    """
    check_load_options(options)
    device = options.get("device", "auto")
    dtype = options.get("dtype", "fp32")
    weights = options.get("weights")
    vae_weights = options.get("vae_weights")
    text_encoder = options.get("text_encoder")
    tile = options.get("tile")
    fidelity = options.get("fidelity")
    speck_guard = options.get("speck_guard")
    batch_windows = options.get("batch_windows")
    stitch = options.get("stitch")
    tile_overlap = options.get("tile_overlap")
    # Every option is checked here, for a baseline too, so a typo fails the same way whatever the model.
    pipeline_settings(
        options.get("sampling"), options.get("color_fix"), tile_overlap, fidelity, stitch, speck_guard
    )
    check_dtype_name(dtype)
    check_device(device)  # the name rule (upscaler.check_device_name) and whether this machine has it
    if tile is not None and tile < 0:
        raise ConfigError(f"--tile must be >= 0 input pixels (0: no extra tiling), got {tile}")
    tile = tile or None
    name = str(model)
    fp16_on_cpu = (
        "--dtype fp16 runs on the CPU without fast kernels (about 14x slower than fp32); "
        "use --dtype fp32 (or bf16), or a CUDA device"
    )
    check_batch_windows(batch_windows)
    if name in INTERPOLATION_MODES:
        _refuse_nsarm_only_options(name, options)
        # Weight options a baseline has no use for are refused: silently ignoring them hides a wrong --model.
        unused = (("--weights", weights), ("--vae-weights", vae_weights), ("--text-encoder", text_encoder))
        given = [opt for opt, value in unused if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} does not apply to --model {name}")
        if dtype == "fp16":  # the baselines always run on the CPU, whatever --device says
            raise ConfigError(fp16_on_cpu)
        native = int(scale) if float(scale).is_integer() and scale >= 1 else 4
        baseline = InterpolationUpscaler(name, scale=native)
        return baseline if tile is None else TiledUpscaler(baseline, tile)
    # A model or a peer: only now is the model stack (torch) imported, so the baselines above start fast.
    from nsarm_core.peers import PEER_MODELS, load_peer
    from nsarm_core.pipeline import resolve_device, resolve_dtype

    dev = resolve_device(device)
    if dev == "cpu" and dtype == "fp16":
        raise ConfigError(fp16_on_cpu)
    if name in PEER_MODELS:
        _refuse_nsarm_only_options(name, options)
        # Weight options the chosen model has no use for are refused: silently ignoring them hides a wrong --model.
        extra = (("--vae-weights", vae_weights), ("--text-encoder", text_encoder))
        given = [opt for opt, value in extra if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} does not apply to --model {name}")
        # A feed-forward network: the sampling and colour-fix options do not apply, the tiling ones do.
        return load_peer(
            name,
            device=dev,
            dtype=resolve_dtype(dtype, dev),
            weights=weights,
            tile=tile,
            tile_overlap=tile_overlap,
        )
    # ``tile`` is this function's (the TiledUpscaler below); every other option means the same to load_pipeline.
    pipe = load_pipeline(model, **{k: v for k, v in options.items() if k != "tile"})
    return pipe if tile is None else TiledUpscaler(pipe, tile)


def load_pipeline(model: str | Path, **options: Any) -> Upscaler:
    """:func:`nsarm_core.pipeline.load_pipeline` (same arguments), imported on first use: torch and the model
    stack load only when a model is asked for, never for a baseline."""
    from nsarm_core.pipeline import load_pipeline as load

    return load(model, **options)


# ------------------------------------------------------------------------------------------------------------
# Options and records
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpscaleOptions:
    """How a batch is upscaled and written (everything except the model's own sampling settings).

    Attributes:
        scale: output factor > 0. The upscaler's native factor is used as is; any other factor resizes its
            output with bicubic (antialiased when shrinking).
        ext: output format, one of :data:`OUTPUT_EXTS`; ``same`` keeps the input's suffix.
        name_suffix: appended to each output file's stem (e.g. ``_x4``); None: ``_x<scale>`` when the outputs
            go next to their inputs, else nothing (:func:`~nsarm_core.batch.inputs.resolve_name_suffix`).
        overwrite: redo outputs that already exist (they are skipped otherwise, when complete and made with
            the same settings).
        keep_metadata: carry EXIF and the ICC profile into the outputs.
        quality: JPEG / WebP quality 1-100.
        max_pixels: refuse inputs larger than this many pixels (decompression bombs); None or 0: no limit.
        max_output_pixels: refuse the batch, before any work, when an output would be larger than this many
            pixels (``--scale 1000``); None or 0: no limit.
        seed: the sampling seed, the same for every image (an image gives the same result alone or in a batch).
        prompt: a fixed prompt for every image; with ``captions``, the prompt for images without an entry.
        captions: per-image prompts; images missing from it get ``prompt`` or the model's default (warning).
        rank: this process's index when the batch is split across processes (:func:`shard`).
        world_size: number of processes the batch is split across.
    """

    scale: float = 4.0
    ext: str = "same"
    name_suffix: str | None = None
    overwrite: bool = False
    keep_metadata: bool = True
    quality: int = 95
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS
    seed: int = 1
    prompt: str | None = None
    captions: CaptionIndex | None = field(default=None, compare=False, repr=False)
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, int | float) and math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"scale must be a number > 0 (e.g. 4, 2, 1.5); got {self.scale!r}")
        if self.ext not in OUTPUT_EXTS:
            raise ConfigError(f"unknown output format {self.ext!r}; use one of {', '.join(OUTPUT_EXTS)}")
        if self.name_suffix is not None and ("/" in self.name_suffix or os.sep in self.name_suffix):
            raise ConfigError(f"name suffix {self.name_suffix!r} must not contain a path separator")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality must be in 1..100; got {self.quality}")
        if self.max_pixels is not None and self.max_pixels < 0:
            raise ConfigError(f"max_pixels must be >= 0 (0: no limit); got {self.max_pixels}")
        if self.max_output_pixels is not None and self.max_output_pixels < 0:
            raise ConfigError(f"max_output_pixels must be >= 0 (0: no limit); got {self.max_output_pixels}")
        if not (self.world_size >= 1 and 0 <= self.rank < self.world_size):
            raise ConfigError(
                f"need 0 <= rank < world_size; got rank {self.rank}, world_size {self.world_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-serialisable values (the captions index as its source path)."""
        data = {k: v for k, v in asdict(self).items() if k != "captions"}
        data["captions"] = None if self.captions is None else self.captions.source
        return data


@dataclass
class ImageRecord:
    """The outcome for one input file.

    Attributes:
        input: the input file.
        output: the output file (planned, for skipped and failed images; None if it could not be planned).
        status: ``"done"``, ``"skipped"`` (output exists) or ``"failed"``.
        size_in: ``(W, H)`` of the input: from its header before the batch starts (also for skipped files),
            then from the decoded image.
        size_out: ``(oW, oH)`` of the written output.
        seconds: wall time for this image (read + upscale + write).
        seed: the seed used (None when not upscaled).
        prompt: the prompt used.
        prompt_source: ``"fixed"`` (``prompt``), ``"caption"`` or ``"default"``.
        error: one-line reason for a failure.
        notes: anything else worth saying (format fallback, missing caption, ...).
        settings: the upscaler's settings for this image.
        timings: the upscaler's per-stage seconds.
    """

    input: Path
    output: Path | None
    status: str
    size_in: tuple[int, int] | None = None
    size_out: tuple[int, int] | None = None
    seconds: float = 0.0
    seed: int | None = None
    prompt: str | None = None
    prompt_source: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (paths as strings, sizes as [W, H])."""
        data = asdict(self)
        data["input"] = str(self.input)
        data["output"] = None if self.output is None else str(self.output)
        for key in ("size_in", "size_out"):
            data[key] = None if data[key] is None else list(data[key])
        return data


@dataclass
class BatchReport:
    """Everything :func:`upscale_files` did, one record per input file of this process's share."""

    records: list[ImageRecord]
    upscaler: str
    options: UpscaleOptions
    out_dir: Path
    total_inputs: int
    excluded: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """Number of records with ``status``."""
        return sum(r.status == status for r in self.records)

    @property
    def failed(self) -> list[ImageRecord]:
        """The failed records."""
        return [r for r in self.records if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 otherwise (the CLI's exit status)."""
        return 1 if self.failed else 0

    def totals(self) -> dict[str, Any]:
        """Counts and times: done, skipped, failed, images (this process), inputs (all), seconds."""
        done = [r for r in self.records if r.status == "done"]
        return {
            "images": len(self.records),
            "inputs": self.total_inputs,
            "done": len(done),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "excluded_earlier_outputs": len(self.excluded),
            "seconds": self.seconds,
            "seconds_per_done_image": (sum(r.seconds for r in done) / len(done)) if done else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable report: upscaler, options, rank/world, per-image records and totals."""
        return {
            "upscaler": self.upscaler,
            "out_dir": str(self.out_dir),
            "rank": self.options.rank,
            "world_size": self.options.world_size,
            "options": self.options.to_dict(),
            "records": [r.to_dict() for r in self.records],
            "excluded": [str(p) for p in self.excluded],
            "totals": self.totals(),
        }


# ------------------------------------------------------------------------------------------------------------
# One image
# ------------------------------------------------------------------------------------------------------------


def output_suffix_for(src: Path, image: Image, ext: str) -> tuple[str, str | None]:
    """The output suffix for ``image`` read from ``src``, and a note when it had to change to PNG.

    ``ext="same"`` keeps the input's suffix. A format that cannot hold what must be written (16 bits into
    JPEG, WebP or BMP; alpha into JPEG or BMP) becomes PNG, so nothing is silently lost.
    """
    suffix = src.suffix if ext == "same" else f".{ext}"
    if suffix.lower() not in SUPPORTED_SUFFIXES:  # an image found by its content, without an image suffix
        suffix = ".png"
    lacks = []
    if image.bit_depth == 16 and suffix.lower() not in _HOLDS_16BIT:
        lacks.append("16-bit samples")
    if image.alpha is not None and suffix.lower() not in _HOLDS_ALPHA:
        lacks.append("transparency")
    if not lacks:
        return suffix, None
    return ".png", f"{suffix.lstrip('.').upper()} cannot hold {' and '.join(lacks)}; written as PNG instead"


def upscale_image(
    upscaler: Upscaler,
    image: Image,
    *,
    scale: float,
    seed: int,
    prompt: str | None,
    on_tile: Callable[[int, int], None] | None = None,
) -> tuple[Image, UpscaleResult]:
    """Upscale one decoded image by ``scale``, keeping its alpha, bit depth, grayness and metadata.

    The RGB goes through ``upscaler`` at its native factor, then :func:`resize_to_scale` (bicubic, antialiased
    when shrinking) for any other factor. Alpha is resized with bicubic straight to the output size and
    re-attached (the model only knows RGB). Gray images come back gray when written (the writer takes the luma).
    A baseline that :attr:`~InterpolationUpscaler.runs_on_arrays` works on the arrays (torch is imported only for
    a factor other than its native one, by the final resize).

    Args:
        upscaler: the model or baseline.
        image: the decoded input, rgb [H, W, 3].
        scale: output factor > 0.
        seed: sampling seed.
        prompt: text prompt (None: the upscaler's own default).
        on_tile: progress ``on_tile(windows done, windows total)``, passed to upscalers that take it.

    Returns:
        ``(output image [oH, oW, 3], the upscaler's result)``.

    Raises:
        InputError: the upscaler returned a wrong shape.
    """
    s = upscaler.native_scale
    if isinstance(upscaler, InterpolationUpscaler) and upscaler.runs_on_arrays:
        result = upscaler.upscale_array(image.rgb, seed=seed, prompt=prompt)
        if on_tile is not None:
            on_tile(1, 1)
        native = result.image  # [s*H, s*W, 3] float32 in [0, 1]: from_tensor's output for the tensor path
        same = math.isclose(scale, s)
        rgb_out = native if same else from_tensor(resize_to_scale(to_tensor(native), scale, s))
    else:
        rgb = to_tensor(image.rgb)
        if on_tile is not None and accepts_on_tile(upscaler):
            result = upscaler.upscale(rgb, seed=seed, prompt=prompt, on_tile=on_tile)  # type: ignore[call-arg]
        else:
            result = upscaler.upscale(rgb, seed=seed, prompt=prompt)
            if on_tile is not None:
                on_tile(1, 1)
        expected = (1, 3, image.height * s, image.width * s)
        if tuple(result.image.shape) != expected:
            raise InputError(
                f"upscaler '{upscaler.name}' returned shape {list(result.image.shape)} for an input of "
                f"{image.width}x{image.height}; expected {list(expected)} (native factor {s})"
            )
        rgb_out = from_tensor(resize_to_scale(result.image.float(), scale, s))
    alpha = None
    if image.alpha is not None:
        alpha = resize_alpha(image.alpha, (rgb_out.shape[0], rgb_out.shape[1]))
    upscaled = Image(
        rgb=rgb_out,
        alpha=alpha,
        bit_depth=image.bit_depth,
        grayscale=image.grayscale,
        icc_profile=image.icc_profile,
        exif=image.exif,
        source=image.source,
        format=image.format,
    )
    return upscaled, result


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (
        text
        if isinstance(exc, InputError)
        else f"{type(exc).__name__}: {text}"
        if text
        else type(exc).__name__
    )


def _remove_stale_temps(outputs: Sequence[Path]) -> int:
    """Delete write_image temporary files (``.<name>.tmp-xxxxxxxx``) left next to ``outputs`` by a killed run.

    Only temporaries of this process's own outputs are touched, so concurrent processes never collide.
    """
    wanted: dict[Path, set[str]] = {}
    for out in outputs:
        wanted.setdefault(out.parent, set()).add(out.name)
    removed = 0
    for folder, names in wanted.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            match = _TEMP_NAME.match(entry.name)
            if match and match["target"] in names and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)
    return removed


# ------------------------------------------------------------------------------------------------------------
# The batch
# ------------------------------------------------------------------------------------------------------------


def _prompt_for(src: Path, options: UpscaleOptions) -> tuple[str | None, str, str | None]:
    """``(prompt, source, note)`` for ``src``: caption, else the fixed prompt, else None.

    None lets the upscaler use its own default: an NSARM model's ``default_prompt`` from its ``config.json``.
    """
    if options.captions is not None:
        caption = options.captions.lookup(src)
        if caption is not None:
            return caption, "caption", None
        if options.prompt is not None:
            note = f"no caption for '{src}' in '{options.captions.source}'; using the given --prompt"
            return options.prompt, "fixed", note
        note = f"no caption for '{src}' in '{options.captions.source}'; using the model's default prompt"
        return None, "default", note
    if options.prompt is not None:
        return options.prompt, "fixed", None
    return None, "default", None


def upscale_files(
    upscaler: Upscaler,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: UpscaleOptions,
    *,
    on_progress: Callable[[int, int, ImageRecord], None] | None = None,
    on_plan: Callable[[list[int]], None] | None = None,
    on_window: Callable[[int, Path, int, int], None] | None = None,
    weights_id: str | None = None,
) -> BatchReport:
    """Upscale every image of ``inputs`` into ``out_dir``; one failed image does not stop the batch.

    For each file of this process's share (:func:`shard` with ``options.rank`` / ``world_size``): plan the
    output (``out_dir`` / sub-folders below the input folder / stem + ``name_suffix`` + suffix), refuse it if it
    is an input, skip it if it is complete and was made with this run's settings (unless ``overwrite``), read
    the image (``max_pixels`` guard), pick the prompt, :func:`upscale_image`, write it atomically and record its
    settings. A ``KeyboardInterrupt`` stops the batch at once; everything written so far is complete and the
    next run skips it. ``out_dir`` ending in an image extension names the one output file of a single input.

    Before any image is upscaled, the output folder is checked to be writable, existing outputs made with other
    settings refuse the run, and every image to be done is sized from its header: an output over
    ``max_output_pixels`` refuses the whole batch, and the sizes give the window totals of the progress
    (``on_plan``) and the size of skipped files in the report.

    Args:
        upscaler: the model or baseline (:class:`Upscaler`).
        inputs: files, folders and glob patterns.
        out_dir: the output folder (created when needed), or the output file of a single input.
        options: see :class:`UpscaleOptions`.
        on_progress: called after each file as ``on_progress(done, total, record)``.
        on_plan: called once before the first file with the number of model windows of each file of this
            process's share, in order (0 for files that will be skipped or whose size is unknown).
        on_window: called after each model window as ``on_window(file index, file, windows done, windows
            total)``.
        weights_id: the identity of the upscaler's weights
            (:func:`~nsarm_core.batch.outputs.weights_identity`), recorded with each output.

    Returns:
        The :class:`BatchReport` (``exit_code`` 1 when any image failed).

    Raises:
        InputError: an input that does not exist or has no images (nothing is processed).
        ConfigError: an unwritable output folder, an output over ``max_output_pixels``, existing outputs made
            with other settings (without ``overwrite``), or ``out_dir`` naming one output file (an image
            extension) for several inputs: nothing is processed. The upscaler's errors for the whole run (also
            WeightsNotFoundError, MissingExtraError).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    plan = _plan(inputs, out_dir, options)
    options, folder, mine, planned = plan.options, plan.folder, plan.mine, plan.planned
    guard = InputGuard([it.src for it in plan.items])
    resume = _Resume(
        OutputRecords(folder),
        output_settings(upscaler, scale=options.scale, seed=options.seed, weights=weights_id),
    )
    sizes, todo = preflight(
        mine, planned, folder, options, is_done=lambda out: resume.state(out)[0] == "complete"
    )
    if not options.overwrite:
        resume.check_all(planned, folder)
    if options.scale < 1:
        logger.warning(
            "--scale %g makes the outputs smaller than the inputs: the model still upscales x%d and the "
            "result is then shrunk %gx",
            options.scale, upscaler.native_scale, upscaler.native_scale / options.scale,
        )  # fmt: skip
    if on_plan is not None:
        on_plan(
            [
                count_windows(upscaler, *size) if size is not None and do else 0
                for size, do in zip(sizes, todo, strict=True)
            ]
        )
    _remove_stale_temps(planned)
    claimed: dict[str, Path] = {}  # output key -> the input that writes it in this run
    records: list[ImageRecord] = []
    for index, (item, out) in enumerate(zip(mine, planned, strict=True)):
        t0 = time.perf_counter()
        record = ImageRecord(input=item.src, output=out, status="failed", size_in=sizes[index])
        on_tile = None
        if on_window is not None:
            on_tile = lambda done, total, i=index, src=item.src: on_window(i, src, done, total)  # noqa: E731
        try:
            record.status = _process_one(
                upscaler, item, out, options, guard, claimed, record, resume, on_tile
            )
        except _FATAL_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the batch; the reason is recorded
            record.status = "failed"
            record.error = _one_line(exc)
            logger.debug("'%s' failed", item.src, exc_info=True)
            logger.warning("'%s' failed: %s", item.src, record.error)
        record.seconds = time.perf_counter() - t0
        records.append(record)
        if on_progress is not None:
            on_progress(index + 1, len(mine), record)
    return BatchReport(
        records=records,
        upscaler=upscaler.name,
        options=options,
        out_dir=out_dir,
        total_inputs=len(plan.items),
        excluded=plan.excluded,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class _BatchPlan:
    """What a batch will do, decided before any work.

    Attributes:
        options: the run's options with the name suffix resolved (``_x<scale>`` next to the inputs).
        folder: the folder the outputs go below: ``out_dir``, or its parent when ``out_dir`` names the one
            output file of a single input (:func:`~nsarm_core.batch.inputs.output_file_mode`).
        items: every input file; excluded: earlier outputs found among the inputs and left out.
        mine: this process's share of ``items``; planned: their output paths, in order.
    """

    options: UpscaleOptions
    folder: Path
    items: list[BatchItem]
    excluded: list[Path]
    mine: list[BatchItem]
    planned: list[Path]


def _plan(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: Path,
    options: UpscaleOptions,
    *,
    report_skipped: bool = True,
) -> _BatchPlan:
    """Plan the inputs and their outputs (see :class:`_BatchPlan`); ``report_skipped``: name the files a scan
    leaves out in the log (False for :func:`check_batch`, so a run names them once).

    Raises:
        InputError: a missing input or one without images.
        ConfigError: ``out_dir`` names one output file for several inputs, or a format other than ``--ext``.
    """
    single = output_file_mode(inputs, out_dir)
    folder = out_dir.parent if single else out_dir
    if single and options.ext not in ("same", out_dir.suffix.lower().lstrip(".")):
        raise ConfigError(
            f"-o '{out_dir}' names a {out_dir.suffix} file but --ext is {options.ext}; drop one"
        )
    suffix = "" if single else resolve_name_suffix(inputs, out_dir, options.name_suffix, options.scale)
    options = replace(options, name_suffix=suffix)
    items, excluded = plan_inputs(
        inputs, folder, ext=options.ext, name_suffix=suffix, report_skipped=report_skipped
    )
    mine = shard(items, options.rank, options.world_size)
    planned = (
        [out_dir] if single else [output_for(it, out_dir, ext=options.ext, name_suffix=suffix) for it in mine]
    )
    return _BatchPlan(options, folder, items, excluded, mine, planned)


def check_batch(
    inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], options: UpscaleOptions
) -> None:
    """What :func:`upscale_files` checks before any work, without an upscaler: call it before loading a model.

    Existing outputs are taken as kept here (only :func:`upscale_files` knows the settings that decide it), so
    an incomplete existing output over the budget is refused by :func:`upscale_files` instead.

    Raises:
        InputError: a missing input or one without images.
        ConfigError: an unwritable output folder (an existing file at ``out_dir``, unless it names the output
            file of one input), an output over ``options.max_output_pixels``, or ``out_dir`` naming one output
            file for several inputs.
    """
    plan = _plan(inputs, Path(out_dir), options, report_skipped=False)
    preflight(plan.mine, plan.planned, plan.folder, plan.options)


def preflight(
    items: Sequence[BatchItem],
    planned: Sequence[Path],
    out_dir: Path,
    options: UpscaleOptions,
    *,
    is_done: Callable[[Path], bool] | None = None,
) -> tuple[list[tuple[int, int] | None], list[bool]]:
    """The checks made once before any work: the output folder is writable, no output is over budget.

    Args:
        items: the files to upscale; planned: their output paths.
        out_dir: the folder the outputs go below (the parent of a single output file).
        options: the run's options (``overwrite``, ``scale``, ``max_output_pixels``).
        is_done: whether the output at a path is kept without ``overwrite`` (default: it exists;
            :func:`upscale_files` passes the resume rule: it is complete).

    Returns:
        ``(sizes, todo)``: each item's ``(width, height)`` from its header (None when unreadable; reading it
        later reports why) and whether it will be upscaled (False when its output exists and is kept).

    Raises:
        ConfigError: an unwritable output folder, or an output over ``options.max_output_pixels``.
    """
    check_output_folder(out_dir)
    done = is_done if is_done is not None else Path.exists
    sizes = [read_image_size(it.src) for it in items]
    todo = [options.overwrite or not done(out) for out in planned]
    check_output_budget(
        ((it.src, size) for it, size, do in zip(items, sizes, todo, strict=True) if do and size is not None),
        options.scale,
        options.max_output_pixels,
    )
    return sizes, todo


@dataclass
class _Resume:
    """The resume rule: an existing output is done only when complete and made with ``settings``."""

    records: OutputRecords
    settings: dict[str, Any]
    states: dict[str, tuple[str, str | None]] = field(
        default_factory=dict
    )  # output key -> output_state, once
    unrecorded: int = 0

    def state(self, out: Path) -> tuple[str, str | None]:
        key = path_key(out)
        if key not in self.states:
            self.states[key] = output_state(out)
        return self.states[key]

    def differences(self, out: Path) -> list[str]:
        recorded = self.records.get(out)
        return [] if recorded is None else settings_differences(recorded, self.settings)

    def check_all(self, planned: Sequence[Path], folder: Path) -> None:
        """Refuse the run, before any work, when complete outputs were made with other settings."""
        stale = [out for out in planned if self.state(out)[0] == "complete" and self.differences(out)]
        if stale:
            raise ConfigError(
                f"{len(stale)} existing output(s) in '{folder}' were made with other settings "
                f"({'; '.join(self.differences(stale[0]))}; e.g. '{stale[0]}'): use --overwrite to redo them, "
                f"or choose another output folder"
            )

    def skip(self, out: Path, record: ImageRecord, overwrite: bool) -> bool:
        """True when ``out`` already holds this run's output (skip it); notes what is made again and why.

        Raises:
            InputError: a folder or special file is in the way, or (without ``overwrite``) the output was made
                with other settings.
        """
        state, reason = self.state(out)
        if state == "blocked":
            raise InputError(f"output '{out}' {reason}; remove it or choose another output folder")
        if overwrite:
            return False
        if state == "incomplete":
            record.notes.append(f"the existing output was {reason}; made again")
            logger.warning("'%s': the existing output was %s; making it again", out, reason)
            return False
        if state == "absent":
            return False
        differences = self.differences(out)
        if differences:
            raise InputError(
                f"output '{out}' was made with other settings ({'; '.join(differences)}); use --overwrite"
            )
        if self.records.get(out) is None:
            record.notes.append("its settings were not recorded (made by an older nsarm or another tool)")
            if self.unrecorded == 0:
                logger.warning(
                    "'%s' exists without recorded settings (made by an older nsarm or another tool): kept; "
                    "--overwrite makes such outputs again",
                    out,
                )
            self.unrecorded += 1
        return True


def _claim(out: Path, src: Path, guard: InputGuard, claimed: dict[str, Path]) -> None:
    """Refuse ``out`` if it is an input, or if another input of this run already writes it."""
    guard.check(out)
    owner = claimed.setdefault(path_key(out), src)
    if owner != src:
        raise InputError(
            f"output '{out}' is also the output of '{owner}' (same name); rename one of them, or write them "
            f"to different output folders"
        )


def _process_one(
    upscaler: Upscaler,
    item: BatchItem,
    out: Path,
    options: UpscaleOptions,
    guard: InputGuard,
    claimed: dict[str, Path],
    record: ImageRecord,
    resume: _Resume,
    on_tile: Callable[[int, int], None] | None = None,
) -> str:
    """Plan, check, read, upscale and write one file; returns its status (errors propagate to the caller)."""
    _claim(out, item.src, guard, claimed)
    if item.src.is_symlink() and not item.src.exists():
        raise InputError(
            f"'{item.src}' is a symbolic link to '{os.readlink(item.src)}', which does not exist"
        )
    if resume.skip(out, record, options.overwrite):
        return "skipped"
    image = read_image(item.src, max_pixels=options.max_pixels)
    record.size_in = (image.width, image.height)
    suffix, note = output_suffix_for(item.src, image, options.ext)
    if note is not None:
        out = out.with_suffix(suffix)
        record.output = out
        record.notes.append(note)
        logger.warning("'%s': %s", item.src, note)
        _claim(out, item.src, guard, claimed)
        if resume.skip(out, record, options.overwrite):
            return "skipped"
    prompt, source, prompt_note = _prompt_for(item.src, options)
    if prompt_note is not None:
        record.notes.append(prompt_note)
        logger.warning("%s", prompt_note)
    upscaled, result = upscale_image(
        upscaler, image, scale=options.scale, seed=options.seed, prompt=prompt, on_tile=on_tile
    )
    # The prompt the upscaler actually used (its default when none was given; None for the baselines).
    record.prompt = prompt if prompt is not None else result.settings.get("prompt")
    record.prompt_source = source
    record.seed, record.settings, record.timings = result.seed, dict(result.settings), dict(result.timings)
    # overwrite=False unless asked (or the file there is incomplete): an output that appeared meanwhile (another
    # process) is not clobbered.
    try:
        write_image(
            out,
            upscaled,
            keep_metadata=options.keep_metadata,
            quality=options.quality,
            overwrite=options.overwrite or resume.state(out)[0] == "incomplete",
        )
    except OSError as exc:  # full disk, permissions, a file in the way: the file and the reason in words
        raise write_error(out, exc) from exc
    resume.records.add(out, resume.settings)
    record.size_out = (upscaled.width, upscaled.height)
    return "done"


def upscale_batch(
    model: str | Path,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: UpscaleOptions,
    *,
    load: LoadOptions | None = None,
    captions: str | os.PathLike[str] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int, int, ImageRecord], None] | None = None,
    on_plan: Callable[[list[int]], None] | None = None,
    on_window: Callable[[int, Path, int, int], None] | None = None,
) -> BatchReport:
    """The whole ``nsarm upscale`` run: split across processes, check, load ``model``, upscale the batch.

    Under ``accelerate launch`` this process takes its share of the files (``options.rank`` / ``world_size``
    are set from :func:`~nsarm_core.batch.inputs.detect_world`) and, for ``device`` auto or cuda, its own GPU.
    Missing inputs, ``-o result.png`` for several inputs, an unwritable output folder and outputs over the
    pixel budget are refused (:func:`check_batch`) before the model is loaded.

    Args:
        model: anything :func:`load_upscaler` takes.
        inputs, out_dir, options: as for :func:`upscale_files`.
        load: :func:`load_upscaler`'s keyword arguments besides ``scale`` (``options.scale`` is used).
        captions: a JSONL file or folder of per-image prompts (:func:`~nsarm_core.data.captions.load_captions`).
        on_start: called as ``on_start(rank, world_size)`` once the model is loaded.
        on_progress, on_plan, on_window: as for :func:`upscale_files`.
    """
    load = LoadOptions(**(load or {}))
    rank, world, world_device = detect_world()
    options = replace(
        options,
        rank=rank,
        world_size=world,
        captions=load_captions(captions) if captions is not None else options.captions,
    )
    if world_device is not None and load.get("device", "auto") in ("auto", "cuda"):
        load["device"] = world_device  # each process on its own GPU
    check_batch(list(inputs), out_dir, options)
    upscaler = load_upscaler(model, scale=options.scale, **load)
    if on_start is not None:
        on_start(rank, world)
    return upscale_files(
        upscaler,
        inputs,
        out_dir,
        options,
        on_progress=on_progress,
        on_plan=on_plan,
        on_window=on_window,
        weights_id=weights_identity(model, load.get("weights")),
    )


def run_model_on_folder(
    model: str | Path,
    lr_dir: str | Path,
    out_dir: str | Path,
    *,
    scale: float = 4.0,
    seed: int = 1,
    device: str = "auto",
    dtype: str = "fp32",
) -> list[Path]:
    """Upscale every image of ``lr_dir`` into ``out_dir`` as PNG (same relative names), resumably.

    The batch behind ``nsarm evaluate --model`` and the robustness sweep's ``--sweep-method``: ``model`` is
    anything ``nsarm upscale --model`` takes (a registered name, a model folder, or an interpolation baseline),
    run by :func:`load_upscaler` and :func:`upscale_files`, so a baseline is the same one everywhere.

    Raises:
        InputError: some images could not be upscaled (the message lists them).
    """
    upscaler = load_upscaler(model, scale=scale, device=device, dtype=dtype)
    options = UpscaleOptions(scale=scale, seed=seed, ext="png", name_suffix="")
    report = upscale_files(
        upscaler, [Path(lr_dir)], Path(out_dir), options, weights_id=weights_identity(model)
    )
    if report.failed:
        listed = "; ".join(f"{r.input.name}: {r.error}" for r in report.failed[:5])
        raise InputError(
            f"{len(report.failed)} image(s) of {lr_dir} could not be upscaled with {model}: {listed}"
        )
    return [r.output for r in report.records if r.output is not None]

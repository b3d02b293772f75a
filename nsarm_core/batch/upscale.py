"""Batch upscaling: the layer between ``nsarm upscale photos/ --scale 4`` and the model.

Not a paper component. NSARM's official inference (docs/architecture.md P.1.1) reads a jsonl list of 256x256 crops
and writes 1024x1024 PNGs; this module is what a photographer's batch tool needs around any upscaler (the NSARM
``SRPipeline`` or an :class:`InterpolationUpscaler` baseline, chosen by :func:`load_upscaler`), following docs/architecture.md P.4.5 and P.5:

* **inputs**: planned by :mod:`nsarm_core.batch.inputs` (files, folders, glob patterns; sub-folders mirrored);
* **safety**: an input is never overwritten (a per-file refusal); writes are atomic (``write_image``), existing
  outputs are skipped unless ``overwrite``, so an interrupted batch is finished by running it again, and
  temporary files left by a killed run are removed when their output is redone;
* **errors**: a file that cannot be read or upscaled is recorded as failed and the batch goes on;
* **fidelity to the file**: alpha is kept (upscaled separately with bicubic and re-attached: the model only sees
  RGB), 16-bit files stay 16-bit, gray files stay gray (the luma of the RGB result), EXIF and ICC are carried
  (``keep_metadata=False`` strips them); a format that cannot hold the result (16-bit or alpha into JPEG/BMP,
  16-bit into WebP) is replaced by PNG, with a warning;
* **any factor**: the upscaler works at its native factor (4); other factors are a final bicubic resize of its
  output (antialiased when shrinking, :func:`nsarm_core.resize.resize_to_scale`);
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nsarm_core.batch.inputs import BatchItem, InputGuard, plan_inputs, shard
from nsarm_core.data.captions import CaptionIndex
from nsarm_core.data.files import output_path_for, path_key
from nsarm_core.data.io import DEFAULT_MAX_PIXELS, Image, from_tensor, read_image, to_tensor, write_image
from nsarm_core.errors import ConfigError, InputError, MissingExtraError, WeightsNotFoundError
from nsarm_core.peers import PEER_MODELS, load_peer
from nsarm_core.pipeline import (
    Upscaler,
    UpscaleResult,
    check_device_name,
    check_dtype_name,
    load_pipeline,
    pipeline_settings,
    resolve_device,
    resolve_dtype,
)
from nsarm_core.resize import INTERPOLATION_MODES, interpolate, resize_alpha, resize_to_scale
from nsarm_core.window_batch import check_batch_windows

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
        return UpscaleResult(
            image=out,
            seed=seed,
            settings={"method": self.mode, "scale": self.native_scale},
            timings={"upscale": time.perf_counter() - start},
        )


def load_upscaler(
    model: str | Path,
    *,
    scale: float = 4.0,
    device: str = "auto",
    dtype: str = "fp32",
    weights: str | Path | None = None,
    vae_weights: str | Path | None = None,
    text_encoder: str | Path | None = None,
    sampling: Mapping[str, Any] | None = None,
    color_fix: str | None = None,
    tile: int | None = None,
    tile_overlap: int | None = None,
    fidelity: float | None = None,
    batch_windows: int | None = None,
) -> Upscaler:
    """The one choice baseline-or-model: an :class:`InterpolationUpscaler` for ``bicubic``, ``bilinear``,
    ``nearest`` and ``lanczos``, a peer network for a peer name (``realesrgan-x4plus``,
    :func:`nsarm_core.peers.load_peer`), else the NSARM pipeline (:func:`nsarm_core.pipeline.load_pipeline`,
    whose options the other arguments are).

    ``scale`` is the output factor the batch will ask for: a baseline does an integer factor in one
    interpolation step; any other factor is x4 plus the batch's final resize, as for a model. ``fidelity`` (the
    CFW weight) applies to NSARM models only; a baseline or a peer refuses it, and so does ``batch_windows``
    (windows run together, None: from a memory budget).
    """
    # Every option is checked here, for a baseline too, so a typo fails the same way whatever the model.
    pipeline_settings(sampling, color_fix, tile_overlap, fidelity)
    check_device_name(device)
    check_dtype_name(dtype)
    if tile is not None and tile < 1:
        raise ConfigError(f"tile must be >= 1 LR pixels, got {tile}")
    name = str(model)
    if fidelity is not None and (name in INTERPOLATION_MODES or name in PEER_MODELS):
        raise ConfigError(f"--fidelity applies to NSARM models with a CFW module, not to --model {name}")
    check_batch_windows(batch_windows)
    if batch_windows is not None and (name in INTERPOLATION_MODES or name in PEER_MODELS):
        raise ConfigError(f"--batch-windows applies to NSARM models, not to --model {name}")
    if name in INTERPOLATION_MODES:
        native = int(scale) if float(scale).is_integer() and scale >= 1 else 4
        return InterpolationUpscaler(name, scale=native)
    if name in PEER_MODELS:
        # A feed-forward network: the sampling and colour-fix options do not apply, the tiling ones do.
        dev = resolve_device(device)
        return load_peer(
            name,
            device=dev,
            dtype=resolve_dtype(dtype, dev),
            weights=weights,
            tile=tile,
            tile_overlap=tile_overlap,
        )
    return load_pipeline(
        model,
        device=device,
        dtype=dtype,
        weights=weights,
        vae_weights=vae_weights,
        text_encoder=text_encoder,
        sampling=sampling,
        color_fix=color_fix,
        tile=tile,
        tile_overlap=tile_overlap,
        fidelity=fidelity,
        batch_windows=batch_windows,
    )


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
        name_suffix: appended to each output file's stem (e.g. ``_x4``).
        overwrite: redo outputs that already exist (they are skipped otherwise).
        keep_metadata: carry EXIF and the ICC profile into the outputs.
        quality: JPEG / WebP quality 1-100.
        max_pixels: refuse inputs larger than this many pixels (decompression bombs); None or 0: no limit.
        seed: the sampling seed, the same for every image (an image gives the same result alone or in a batch).
        prompt: a fixed prompt for every image; with ``captions``, the prompt for images without an entry.
        captions: per-image prompts; images missing from it get ``prompt`` or the model's default (warning).
        rank: this process's index when the batch is split across processes (:func:`shard`).
        world_size: number of processes the batch is split across.
    """

    scale: float = 4.0
    ext: str = "same"
    name_suffix: str = ""
    overwrite: bool = False
    keep_metadata: bool = True
    quality: int = 95
    max_pixels: int | None = DEFAULT_MAX_PIXELS
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
        if "/" in self.name_suffix or os.sep in self.name_suffix:
            raise ConfigError(f"name suffix {self.name_suffix!r} must not contain a path separator")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality must be in 1..100; got {self.quality}")
        if self.max_pixels is not None and self.max_pixels < 0:
            raise ConfigError(f"max_pixels must be >= 0 (0: no limit); got {self.max_pixels}")
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
        size_in: ``(W, H)`` of the input, when read.
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
    lacks = []
    if image.bit_depth == 16 and suffix.lower() not in _HOLDS_16BIT:
        lacks.append("16-bit samples")
    if image.alpha is not None and suffix.lower() not in _HOLDS_ALPHA:
        lacks.append("transparency")
    if not lacks:
        return suffix, None
    return ".png", f"{suffix.lstrip('.').upper()} cannot hold {' and '.join(lacks)}; written as PNG instead"


def upscale_image(
    upscaler: Upscaler, image: Image, *, scale: float, seed: int, prompt: str | None
) -> tuple[Image, UpscaleResult]:
    """Upscale one decoded image by ``scale``, keeping its alpha, bit depth, grayness and metadata.

    The RGB goes through ``upscaler`` at its native factor, then :func:`resize_to_scale` (bicubic, antialiased
    when shrinking) for any other factor. Alpha is resized with bicubic straight to the output size and
    re-attached (the model only knows RGB). Gray images come back gray when written (the writer takes the luma).

    Args:
        upscaler: the model or baseline.
        image: the decoded input, rgb [H, W, 3].
        scale: output factor > 0.
        seed: sampling seed.
        prompt: text prompt (None: the upscaler's own default).

    Returns:
        ``(output image [oH, oW, 3], the upscaler's result)``.

    Raises:
        InputError: the upscaler returned a wrong shape.
    """
    rgb = to_tensor(image.rgb)
    result = upscaler.upscale(rgb, seed=seed, prompt=prompt)
    s = upscaler.native_scale
    expected = (1, 3, image.height * s, image.width * s)
    if tuple(result.image.shape) != expected:
        raise InputError(
            f"upscaler '{upscaler.name}' returned shape {list(result.image.shape)} for an input of "
            f"{image.width}x{image.height}; expected {list(expected)} (native factor {s})"
        )
    out = resize_to_scale(result.image.float(), scale, s)
    rgb_out = from_tensor(out)
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
) -> BatchReport:
    """Upscale every image of ``inputs`` into ``out_dir``; one failed image does not stop the batch.

    For each file of this process's share (:func:`shard` with ``options.rank`` / ``world_size``): plan the
    output (``out_dir`` / sub-folders below the input folder / stem + ``name_suffix`` + suffix), refuse it if it
    is an input, skip it if it exists (unless ``overwrite``), read the image (``max_pixels`` guard), pick the
    prompt, :func:`upscale_image`, and write it atomically. A ``KeyboardInterrupt`` stops the batch at once;
    everything written so far is complete and the next run skips it.

    Args:
        upscaler: the model or baseline (:class:`Upscaler`).
        inputs: files, folders and glob patterns.
        out_dir: the output folder (created when needed).
        options: see :class:`UpscaleOptions`.
        on_progress: called after each file as ``on_progress(done, total, record)``.

    Returns:
        The :class:`BatchReport` (``exit_code`` 1 when any image failed).

    Raises:
        InputError: an input that does not exist or has no images (nothing is processed).
        ConfigError, WeightsNotFoundError, MissingExtraError: raised by the upscaler for the whole run.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    items, excluded = plan_inputs(inputs, out_dir, ext=options.ext, name_suffix=options.name_suffix)
    guard = InputGuard([it.src for it in items])
    mine = shard(items, options.rank, options.world_size)
    planned = [
        output_path_for(
            it.src, it.root, out_dir, suffix=None if options.ext == "same" else f".{options.ext}",
            name_suffix=options.name_suffix,
        )
        for it in mine
    ]  # fmt: skip
    _remove_stale_temps(planned)
    claimed: dict[str, Path] = {}  # output key -> the input that writes it in this run
    records: list[ImageRecord] = []
    for index, (item, out) in enumerate(zip(mine, planned, strict=True)):
        t0 = time.perf_counter()
        record = ImageRecord(input=item.src, output=out, status="failed")
        try:
            record.status = _process_one(upscaler, item, out, options, guard, claimed, record)
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
        total_inputs=len(items),
        excluded=excluded,
        seconds=time.perf_counter() - start,
    )


def _claim(out: Path, src: Path, guard: InputGuard, claimed: dict[str, Path]) -> None:
    """Refuse ``out`` if it is an input, or if another input of this run already writes it."""
    guard.check(out)
    owner = claimed.setdefault(path_key(out), src)
    if owner != src:
        raise InputError(
            f"output '{out}' is also the output of '{owner}' (same name); use --suffix, keep the inputs in "
            f"separate folders or rename one"
        )


def _process_one(
    upscaler: Upscaler,
    item: BatchItem,
    out: Path,
    options: UpscaleOptions,
    guard: InputGuard,
    claimed: dict[str, Path],
    record: ImageRecord,
) -> str:
    """Plan, check, read, upscale and write one file; returns its status (errors propagate to the caller)."""
    _claim(out, item.src, guard, claimed)
    if out.exists() and not options.overwrite:
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
        if out.exists() and not options.overwrite:
            return "skipped"
    prompt, source, prompt_note = _prompt_for(item.src, options)
    if prompt_note is not None:
        record.notes.append(prompt_note)
        logger.warning("%s", prompt_note)
    upscaled, result = upscale_image(upscaler, image, scale=options.scale, seed=options.seed, prompt=prompt)
    # The prompt the upscaler actually used (its default when none was given; None for the baselines).
    record.prompt = prompt if prompt is not None else result.settings.get("prompt")
    record.prompt_source = source
    record.seed, record.settings, record.timings = result.seed, dict(result.settings), dict(result.timings)
    # overwrite=False unless asked: an output that appeared meanwhile (another process) is not clobbered.
    write_image(
        out,
        upscaled,
        keep_metadata=options.keep_metadata,
        quality=options.quality,
        overwrite=options.overwrite,
    )
    record.size_out = (upscaled.width, upscaled.height)
    return "done"


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
    options = UpscaleOptions(scale=scale, seed=seed, ext="png")
    report = upscale_files(upscaler, [Path(lr_dir)], Path(out_dir), options)
    if report.failed:
        listed = "; ".join(f"{r.input.name}: {r.error}" for r in report.failed[:5])
        raise InputError(
            f"{len(report.failed)} image(s) of {lr_dir} could not be upscaled with {model}: {listed}"
        )
    return [r.output for r in report.records if r.output is not None]

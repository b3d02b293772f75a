"""The degrade batch: HR images -> LR images (+ HR targets, sidecars, a manifest), resumable and seeded per image.

Not a paper component: the batch around :mod:`nsarm_core.data.degrade` (Real-ESRGAN degradation, NSARM Sec. 4.1;
docs/architecture.md E.5, P.2) used by ``nsarm degrade`` and by the robustness sweep
(:func:`nsarm_core.eval.robustness.run_sweep`), so both make the same LR set from the same HR images and seed.

Seeding: every image gets its own seed, derived from the run seed and the image's path relative to the input
root (:func:`image_seed`), so an output depends neither on the order of the files, nor on skipped files, nor on
the other images: the same seed gives byte-identical files. Layout under ``out_dir``: ``lr/<path>.png`` (8-bit),
``lr/<path>.json`` (the sampled parameters, the seeds, the source), ``hr/<path>.png`` when the HR is written
(``crop`` or ``save_hr``), and ``manifest.json`` describing the run. Existing outputs are skipped unless
``overwrite`` when they are complete (decodable images and a readable sidecar; an empty or broken file is made
again, a folder in the way is an error); an image that cannot be read or degraded, or whose output name another
source already takes (``photo.bmp`` and ``photo.tiff`` -> ``lr/photo.png``), is recorded as failed and the
batch goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsarm_core import __version__
from nsarm_core.atomic import atomic_write_text
from nsarm_core.batch.outputs import output_state
from nsarm_core.batch.write_checks import check_output_folder, write_error
from nsarm_core.data import degrade as deg
from nsarm_core.data.files import ensure_not_input, output_path_for, path_key
from nsarm_core.data.io import DEFAULT_MAX_PIXELS, Image, read_image, to_tensor, write_image
from nsarm_core.errors import ConfigError, InputError, NSARMError

logger = logging.getLogger(__name__)

__all__ = ["MANIFEST_VERSION", "DegradeOptions", "DegradeReport", "degrade_files", "image_seed"]

MANIFEST_VERSION = 1


def image_seed(run_seed: int, relative_path: str) -> int:
    """Seed of one image: sha256 of the run seed and its POSIX relative path, as a 63-bit integer."""
    digest = hashlib.sha256(f"nsarm-degrade:{run_seed}:{relative_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class DegradeOptions:
    """How a degrade batch runs.

    Attributes:
        preset: degradation preset of :mod:`nsarm_core.data.degrade` (``realesrgan``, ``light``, ``bicubic``).
        config_path: YAML of Real-ESRGAN option keys overriding the preset, or None.
        scale: integer downscaling factor >= 1.
        seed: run seed; each image's seed derives from it and its relative path (:func:`image_seed`).
        crop: random HR crop of ``crop x crop`` (a multiple of ``scale``), or None to keep the whole image
            (trimmed to a multiple of ``scale`` so LR pixels align with HR blocks).
        save_hr: also write the HR (always written with ``crop``).
        hr_usm: write the USM-sharpened HR (the Real-ESRNet target) instead of the original.
        overwrite: redo images whose outputs exist.
        device: torch device of the degradation.
        max_pixels: refuse larger images; None or 0: no limit.
    """

    preset: str = "realesrgan"
    config_path: Path | None = None
    scale: int = 4
    seed: int = 0
    crop: int | None = None
    save_hr: bool = False
    hr_usm: bool = False
    overwrite: bool = False
    device: str = "cpu"
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise ConfigError(f"--scale must be a positive integer, got {self.scale}")
        if self.crop is not None and (self.crop < self.scale or self.crop % self.scale):
            raise ConfigError(
                f"--crop {self.crop} must be a positive multiple of --scale {self.scale} "
                f"(e.g. {max(1, self.crop // self.scale) * self.scale})"
            )
        try:
            dev = torch.device(self.device)
        except RuntimeError as exc:
            raise ConfigError(f"--device {self.device!r} is not a torch device (try cpu or cuda)") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {self.device} requested but CUDA is not available; use --device cpu")
        self.config()  # a bad preset name or YAML file fails here, before any image is read

    @property
    def writes_hr(self) -> bool:
        """True when the HR is written next to the LR (``crop`` or ``save_hr``)."""
        return self.crop is not None or self.save_hr

    def config(self) -> deg.DegradationConfig:
        """The degradation config: the preset, with the YAML overrides applied."""
        cfg = deg.get_preset(self.preset)
        return deg.load_config_overrides(self.config_path, cfg) if self.config_path is not None else cfg


@dataclass
class DegradeReport:
    """What :func:`degrade_files` did: counts, failures and the manifest written to ``manifest_path``."""

    out_dir: Path
    manifest_path: Path
    counts: dict[str, int]
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary printed by ``nsarm degrade --json``."""
        rate = round(self.counts["done"] / self.seconds, 3) if self.seconds > 0 else None
        return {"out_dir": str(self.out_dir), "manifest": str(self.manifest_path), "counts": self.counts,
                "failures": self.failures, "elapsed_s": round(self.seconds, 3), "images_per_s": rate}  # fmt: skip


def _finished(path: Path) -> bool:
    """A complete output: a decodable image (:func:`output_state`), or a sidecar that reads as a JSON object."""
    if path.suffix != ".json":
        return output_state(path)[0] == "complete"
    try:
        return path.is_file() and isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def _relative(src: Path, root: Path) -> str:
    try:
        return src.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return src.name


def _degrade_one(
    src: Path,
    rel: str,
    paths: dict[str, Path],
    cfg: deg.DegradationConfig,
    opts: DegradeOptions,
    out_dir: Path,
) -> dict[str, Any]:
    """Read, degrade and write one image (HR, LR, then the sidecar last); returns its sidecar."""
    img = read_image(src, max_pixels=opts.max_pixels or None)
    rgb = img.rgb
    h, w = rgb.shape[:2]
    scale, crop = opts.scale, opts.crop
    s_img = image_seed(opts.seed, rel)
    rng = np.random.default_rng(s_img)
    crop_box = None
    if crop is not None:
        if h < crop or w < crop:
            raise InputError(f"image '{src}' is {w}x{h}, smaller than --crop {crop}")
        top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        rgb = rgb[top : top + crop, left : left + crop]
        crop_box = {"top": top, "left": left, "size": crop}
    else:
        if h < scale or w < scale:
            raise InputError(f"image '{src}' is {w}x{h}, smaller than the scale {scale}")
        rgb = rgb[: (h // scale) * scale, : (w // scale) * scale]  # so LR pixels align with HR blocks
    params = deg.sample_params(cfg, scale, rng)
    target, lr = deg.apply_pair(to_tensor(np.ascontiguousarray(rgb)).to(opts.device), params)
    lr_np = lr[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)

    if opts.writes_hr:
        hr_np = (
            target[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
            if opts.hr_usm
            else np.ascontiguousarray(rgb)
        )
        hr_img = Image(
            rgb=hr_np,
            bit_depth=img.bit_depth,
            grayscale=img.grayscale and not opts.hr_usm,
            icc_profile=img.icc_profile,
        )
        write_image(paths["hr"], hr_img, keep_metadata=True)
    # LR: 8-bit PNG; the ICC profile is carried (colours mean the same), EXIF is not (sizes changed).
    write_image(paths["lr"], Image(rgb=np.ascontiguousarray(lr_np), icc_profile=img.icc_profile), bit_depth=8)
    sidecar = {
        "source": str(src),
        "relative_path": rel,
        "seed": opts.seed,
        "image_seed": s_img,
        "preset": opts.preset,
        "config": str(opts.config_path) if opts.config_path else None,
        "scale": scale,
        "hr_size": [int(rgb.shape[1]), int(rgb.shape[0])],
        "lr_size": [int(lr_np.shape[1]), int(lr_np.shape[0])],
        "crop": crop_box,
        "hr_usm": bool(opts.writes_hr and opts.hr_usm and params.gt_usm),
        "alpha_dropped": img.alpha is not None,
        "lr": paths["lr"].relative_to(out_dir).as_posix(),
        "hr": paths["hr"].relative_to(out_dir).as_posix() if opts.writes_hr else None,
        "params": params.to_dict(),
    }
    atomic_write_text(paths["json"], json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return sidecar


def degrade_files(
    sources: Sequence[Path],
    root: Path,
    out_dir: Path,
    options: DegradeOptions,
    *,
    input_label: str | None = None,
    stop_on_error: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> DegradeReport:
    """Degrade every image of ``sources`` into ``out_dir`` (layout in the module docstring).

    Args:
        sources: the HR images (e.g. ``collect_images([hr_dir])``).
        root: the folder their relative paths (output layout and per-image seeds) are taken from.
        out_dir: the output folder (created).
        options: see :class:`DegradeOptions`.
        input_label: what the manifest records as the input (default: ``root``).
        stop_on_error: re-raise the first per-image error instead of recording it (``--debug``).
        on_progress: called after each image as ``on_progress(done, total, relative path)``.

    Returns:
        The :class:`DegradeReport`; ``counts["failed"] > 0`` when an image failed.

    Raises:
        ConfigError: ``out_dir`` cannot be written (checked once, before any image).
    """
    cfg = options.config()
    if options.hr_usm and not cfg.gt_usm:
        logger.warning("--hr-usm has no effect: this configuration does not sharpen the HR (gt_usm is false)")
    check_output_folder(out_dir)  # once, before any work: not after the first image was degraded
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    counts = {"done": 0, "skipped": 0, "failed": 0}
    failures: list[dict[str, str]] = []
    claimed: dict[str, Path] = {}  # LR output key -> the source that writes it
    start = time.perf_counter()
    for index, src in enumerate(sources):
        rel = _relative(src, root)
        lr_path = output_path_for(src, root, out_dir / "lr", suffix=".png")
        paths = {
            "lr": lr_path,
            "json": lr_path.with_suffix(".json"),
            "hr": output_path_for(src, root, out_dir / "hr", suffix=".png"),
        }
        entry: dict[str, Any] = {"source": str(src), "relative_path": rel, "lr": paths["lr"].relative_to(out_dir).as_posix(),
                                 "sidecar": paths["json"].relative_to(out_dir).as_posix(),
                                 "hr": paths["hr"].relative_to(out_dir).as_posix() if options.writes_hr else None}  # fmt: skip
        needed = [paths["lr"], paths["json"]] + ([paths["hr"]] if options.writes_hr else [])
        owner = claimed.setdefault(path_key(paths["lr"]), src)
        if owner != src:  # photo.bmp and photo.tiff both make lr/photo.png: neither is silently dropped
            message = (
                f"output '{paths['lr']}' is also the output of '{owner}' (same name); rename one of them"
            )
            counts["failed"] += 1
            failures.append({"source": str(src), "error": message})
            entries.append(entry | {"status": "failed", "error": message})
            logger.warning("failed %s: %s", src, message)
        elif not options.overwrite and all(_finished(p) for p in needed):
            counts["skipped"] += 1
            entries.append(entry | {"status": "skipped"})
        else:
            try:
                for p in needed:
                    ensure_not_input(p, sources)
                    if p.is_dir() or output_state(p)[0] == "blocked":
                        raise InputError(
                            f"output '{p}' is a folder or special file; remove it or choose another output folder"
                        )
                    p.parent.mkdir(parents=True, exist_ok=True)
                _degrade_one(src, rel, paths, cfg, options, out_dir)
                counts["done"] += 1
                entries.append(entry | {"status": "done"})
            except (NSARMError, OSError, ValueError, RuntimeError) as exc:
                if stop_on_error:
                    raise
                message = " ".join(str(exc).split())
                if isinstance(exc, OSError) and not isinstance(exc, NSARMError):  # full disk, permissions
                    message = str(write_error(Path(exc.filename) if exc.filename else paths["lr"], exc))
                elif not isinstance(exc, NSARMError):
                    message = f"{type(exc).__name__}: {message}"
                counts["failed"] += 1
                failures.append({"source": str(src), "error": message})
                entries.append(entry | {"status": "failed", "error": message})
                logger.warning("failed %s: %s", src, message)
        if on_progress is not None:
            on_progress(index + 1, len(sources), rel)
    manifest = {
        "version": MANIFEST_VERSION,
        "nsarm_version": __version__,
        "torch_version": torch.__version__,
        "command": "degrade",
        "input": input_label if input_label is not None else str(root),
        "preset": options.preset,
        "config_file": str(options.config_path) if options.config_path else None,
        "config": dataclasses.asdict(cfg),
        "scale": options.scale,
        "seed": options.seed,
        "crop": options.crop,
        "hr_written": options.writes_hr,
        "hr_usm": options.hr_usm,
        "device": options.device,
        "counts": counts,
        "images": entries,
    }
    manifest_path = out_dir / "manifest.json"
    try:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise write_error(manifest_path, exc) from exc
    return DegradeReport(out_dir, manifest_path, counts, failures, time.perf_counter() - start)

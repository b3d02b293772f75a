"""``nsarm degrade``: synthesise LR images from HR images with the Real-ESRGAN degradation (protocols.md §2).

Every image gets its own seed, derived from the run seed and the image's path relative to HR_DIR, so the
outputs do not depend on the order, on skipped files or on other images: the same seed gives byte-identical
files. Heavy imports (numpy, torch, PIL) happen inside the command so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from nsarm_cli._console import STATE, info, out_console, print_json, progress, warn
from nsarm_core.errors import ConfigError, InputError, NSARMError

MANIFEST_VERSION = 1


def image_seed(run_seed: int, relative_path: str) -> int:
    """Seed of one image: sha256 of the run seed and its POSIX relative path, as a 63-bit integer."""
    digest = hashlib.sha256(f"nsarm-degrade:{run_seed}:{relative_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _relative(src: Path, root: Path) -> str:
    try:
        return src.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return src.name


def _degrade_one(
    src: Path,
    rel: str,
    paths: dict[str, Path],
    *,
    cfg: Any,
    preset: str,
    config_path: Path | None,
    scale: int,
    seed: int,
    crop: int | None,
    write_hr: bool,
    hr_usm: bool,
    device: str,
    max_pixels: int | None,
    out_dir: Path,
) -> dict[str, Any]:
    """Read, degrade and write one image (HR, LR, then the sidecar last); returns its manifest entry."""
    import numpy as np

    from nsarm_core.data import degrade as deg
    from nsarm_core.data.io import Image, atomic_write_text, read_image, to_tensor, write_image

    img = read_image(src, max_pixels=max_pixels)
    rgb = img.rgb
    h, w = rgb.shape[:2]
    s_img = image_seed(seed, rel)
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
    hr_t = to_tensor(np.ascontiguousarray(rgb)).to(device)
    target, lr = deg.apply_pair(hr_t, params)
    lr_np = lr[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)

    if write_hr:
        hr_np = (
            target[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
            if hr_usm
            else np.ascontiguousarray(rgb)
        )
        hr_img = Image(
            rgb=hr_np,
            bit_depth=img.bit_depth,
            grayscale=img.grayscale and not hr_usm,
            icc_profile=img.icc_profile,
        )
        write_image(paths["hr"], hr_img, keep_metadata=True)
    # LR: 8-bit PNG; the ICC profile is carried (colours mean the same), EXIF is not (sizes changed).
    write_image(paths["lr"], Image(rgb=np.ascontiguousarray(lr_np), icc_profile=img.icc_profile), bit_depth=8)
    sidecar = {
        "source": str(src),
        "relative_path": rel,
        "seed": seed,
        "image_seed": s_img,
        "preset": preset,
        "config": str(config_path) if config_path else None,
        "scale": scale,
        "hr_size": [int(rgb.shape[1]), int(rgb.shape[0])],
        "lr_size": [int(lr_np.shape[1]), int(lr_np.shape[0])],
        "crop": crop_box,
        "hr_usm": bool(write_hr and hr_usm and params.gt_usm),
        "alpha_dropped": img.alpha is not None,
        "lr": paths["lr"].relative_to(out_dir).as_posix(),
        "hr": paths["hr"].relative_to(out_dir).as_posix() if write_hr else None,
        "params": params.to_dict(),
    }
    atomic_write_text(paths["json"], json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return sidecar


def _summary_table(counts: dict[str, int], failures: list[dict[str, str]], elapsed: float, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("status")
    table.add_column("images", justify="right")
    for k in ("done", "skipped", "failed"):
        table.add_row(k, str(counts[k]))
    rate = counts["done"] / elapsed if elapsed > 0 else 0.0
    table.add_row("time", f"{elapsed:.1f} s ({rate:.2f} images/s)")
    for f in failures:
        table.add_row(f"[red]failed[/red] {f['source']}", f["error"])
    return table


def degrade(
    hr_dir: Annotated[Path, typer.Argument(help="Folder of HR images (searched recursively), or one image.")],
    out_dir: Annotated[
        Path, typer.Argument(help="Output folder: OUT/lr (+ OUT/hr), sidecars, manifest.json.")
    ],
    preset: Annotated[
        str, typer.Option("--preset", "-p", help="Degradation preset: realesrgan, light, bicubic.")
    ] = "realesrgan",
    scale: Annotated[
        int, typer.Option("--scale", "-s", help="Downscaling factor (integer, e.g. 2, 3, 4, 8).")
    ] = 4,
    seed: Annotated[
        int, typer.Option("--seed", help="Run seed; each image's seed derives from it and its path.")
    ] = 0,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="YAML of Real-ESRGAN option keys overriding the preset (see examples/)."
        ),
    ] = None,
    crop: Annotated[
        int | None,
        typer.Option(
            "--crop",
            help="Random HR crop of SIZE x SIZE (a multiple of --scale); writes OUT/hr + OUT/lr pairs.",
        ),
    ] = None,
    save_hr: Annotated[
        bool,
        typer.Option("--save-hr", help="Also write the HR (trimmed to a multiple of --scale) to OUT/hr."),
    ] = False,
    hr_usm: Annotated[
        bool,
        typer.Option(
            "--hr-usm", help="Write the USM-sharpened HR (the Real-ESRNet target) instead of the original."
        ),
    ] = False,
    recursive: Annotated[
        bool, typer.Option("--recursive/--no-recursive", help="Descend into sub-folders.")
    ] = True,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo images whose outputs already exist.")
    ] = False,
    device: Annotated[
        str, typer.Option("--device", help="Torch device for the degradation (cpu, cuda, cuda:1).")
    ] = "cpu",
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="Refuse larger images (width*height); 0 = no limit.")
    ] = 100_000_000,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the run summary as JSON on stdout.")
    ] = False,
) -> None:
    """Degrade HR images into LR images with the Real-ESRGAN second-order model (or a milder preset).

    Writes OUT/lr/<path>.png (8-bit) and a JSON sidecar OUT/lr/<path>.json (sampled parameters, source, seeds).

    OUT/manifest.json describes the run. Existing outputs are skipped unless --overwrite.

    Unreadable images are reported and skipped; the exit code is then 1.
    """
    import dataclasses

    import torch

    from nsarm_core import __version__
    from nsarm_core.data import degrade as deg
    from nsarm_core.data.files import collect_images, ensure_not_input, output_path_for
    from nsarm_core.data.io import atomic_write_text

    if scale < 1:
        raise ConfigError(f"--scale must be a positive integer, got {scale}")
    if crop is not None and (crop < scale or crop % scale):
        raise ConfigError(
            f"--crop {crop} must be a positive multiple of --scale {scale} (e.g. {max(1, crop // scale) * scale})"
        )
    try:
        torch_device = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r} is not a torch device (try cpu or cuda)") from exc
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} requested but CUDA is not available; use --device cpu")
    cfg = deg.get_preset(preset)
    if config is not None:
        cfg = deg.load_config_overrides(config, cfg)
    if hr_usm and not cfg.gt_usm:
        warn("--hr-usm has no effect: this configuration does not sharpen the HR (gt_usm is false)")

    sources = collect_images([hr_dir], recursive=recursive)
    root = hr_dir if hr_dir.is_dir() else hr_dir.parent
    write_hr = crop is not None or save_hr
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    counts = {"done": 0, "skipped": 0, "failed": 0}
    failures: list[dict[str, str]] = []
    start = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("degrading", total=len(sources), status="")
        for src in sources:
            rel = _relative(src, root)
            lr_path = output_path_for(src, root, out_dir / "lr", suffix=".png")
            paths = {
                "lr": lr_path,
                "json": lr_path.with_suffix(".json"),
                "hr": output_path_for(src, root, out_dir / "hr", suffix=".png"),
            }
            entry: dict[str, Any] = {"source": str(src), "relative_path": rel, "lr": paths["lr"].relative_to(out_dir).as_posix(),
                                     "sidecar": paths["json"].relative_to(out_dir).as_posix(),
                                     "hr": paths["hr"].relative_to(out_dir).as_posix() if write_hr else None}  # fmt: skip
            bar.update(task, status=rel)
            needed = [paths["lr"], paths["json"]] + ([paths["hr"]] if write_hr else [])
            if not overwrite and all(p.exists() for p in needed):
                counts["skipped"] += 1
                entries.append(entry | {"status": "skipped"})
                bar.advance(task)
                continue
            try:
                for p in needed:
                    ensure_not_input(p, sources)
                    p.parent.mkdir(parents=True, exist_ok=True)
                _degrade_one(src, rel, paths, cfg=cfg, preset=preset, config_path=config, scale=scale, seed=seed,
                             crop=crop, write_hr=write_hr, hr_usm=hr_usm, device=device,
                             max_pixels=max_pixels or None, out_dir=out_dir)  # fmt: skip
                counts["done"] += 1
                entries.append(entry | {"status": "done"})
            except (NSARMError, OSError, ValueError, RuntimeError) as exc:
                if STATE.debug:
                    raise
                message = " ".join(str(exc).split())
                if not isinstance(exc, NSARMError):
                    message = f"{type(exc).__name__}: {message}"
                counts["failed"] += 1
                failures.append({"source": str(src), "error": message})
                entries.append(entry | {"status": "failed", "error": message})
                warn(f"failed {src}: {message}")
            bar.advance(task)
    elapsed = time.perf_counter() - start

    manifest = {
        "version": MANIFEST_VERSION,
        "nsarm_version": __version__,
        "torch_version": torch.__version__,
        "command": "degrade",
        "input": str(hr_dir),
        "preset": preset,
        "config_file": str(config) if config else None,
        "config": dataclasses.asdict(cfg),
        "scale": scale,
        "seed": seed,
        "crop": crop,
        "hr_written": write_hr,
        "hr_usm": hr_usm,
        "device": device,
        "counts": counts,
        "images": entries,
    }
    manifest_path = out_dir / "manifest.json"
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    summary = {"out_dir": str(out_dir), "manifest": str(manifest_path), "counts": counts, "failures": failures,
               "elapsed_s": round(elapsed, 3), "images_per_s": round(counts["done"] / elapsed, 3) if elapsed > 0 else None}  # fmt: skip
    if json_out:
        print_json(summary)
    else:
        out_console.print(
            _summary_table(
                counts, failures, elapsed, f"nsarm degrade --preset {preset} -s {scale} -> {out_dir}"
            )
        )
        info(f"manifest: {manifest_path}")
    if counts["failed"]:
        raise typer.Exit(code=1)

"""``nsarm degrade``: synthesise LR images from HR images with the Real-ESRGAN degradation.

Parses the options, runs :func:`nsarm_core.batch.degrade.degrade_files` and prints its summary. Heavy imports
(numpy, torch, PIL) happen inside the command so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nsarm_cli._console import STATE, info, out_console, print_json, progress
from nsarm_cli._options import JsonOut, Overwrite, device_option


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
    overwrite: Overwrite = False,
    device: Annotated[str, device_option("Torch device for the degradation (cpu, cuda, cuda:1).")] = "cpu",
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="Refuse larger images (width*height); 0 = no limit.")
    ] = 100_000_000,
    json_out: JsonOut = False,
) -> None:
    """Degrade HR images into LR images with the Real-ESRGAN second-order model (or a milder preset).

    Writes OUT/lr/<path>.png (8-bit) and a JSON sidecar OUT/lr/<path>.json (sampled parameters, source, seeds).

    OUT/manifest.json describes the run. Complete existing outputs are skipped unless --overwrite (empty or broken
    ones are made again); two sources with one output name (photo.bmp, photo.tiff) are reported as failed.

    Unreadable images are reported and skipped; the exit code is then 1.
    """
    from nsarm_core.batch.degrade import DegradeOptions, degrade_files
    from nsarm_core.batch.write_checks import check_output_folder
    from nsarm_core.data.files import collect_images

    options = DegradeOptions(
        preset=preset, config_path=config, scale=scale, seed=seed, crop=crop, save_hr=save_hr, hr_usm=hr_usm,
        overwrite=overwrite, device=device, max_pixels=max_pixels or None,
    )  # fmt: skip
    sources = collect_images([hr_dir], recursive=recursive, keep_broken_links=True)
    check_output_folder(out_dir)  # before the progress bar starts (degrade_files checks it too)
    root = hr_dir if hr_dir.is_dir() else hr_dir.parent
    with progress() as bar:
        task = bar.add_task("degrading", total=len(sources), status="")
        report = degrade_files(
            sources, root, out_dir, options, input_label=str(hr_dir), stop_on_error=STATE.debug,
            on_progress=lambda done, total, rel: bar.update(task, completed=done, status=rel),
        )  # fmt: skip
    if json_out:
        print_json(report.to_dict())
    else:
        title = f"nsarm degrade --preset {preset} -s {scale} -> {out_dir}"
        out_console.print(_summary_table(report.counts, report.failures, report.seconds, title))
        info(f"manifest: {report.manifest_path}")
    if report.counts["failed"]:
        raise typer.Exit(code=1)

"""``nsarm upscale``: super-resolve photos, folders and glob patterns in one resumable batch.

The run lives in :mod:`nsarm_core.batch.upscale` (``upscale_batch``: checks, ``load_upscaler`` picks the NSARM
pipeline, a peer or an interpolation baseline, ``upscale_files`` runs the batch); this module parses the options
(the model-run ones are shared, :mod:`nsarm_cli._options`), shows progress and prints the summary. torch, numpy and PIL are imported inside the command so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nsarm_cli._console import STATE, err_console, info, out_console, print_json, progress, warn
from nsarm_cli._options import (
    BatchWindows,
    Cfg,
    ColorFix,
    Dtype,
    Fidelity,
    ModelWeights,
    SpeckGuard,
    Stitch,
    Tau,
    TextEncoder,
    Threads,
    Tile,
    TileOverlap,
    TopP,
    VaeWeights,
    device_option,
)

_TABLE_ROWS = 50  # longer batches list only the failed images in the summary table

_HELP_SCALE = (
    "Output factor, any number > 0. 4 is the model's native factor; other factors resize the x4 result "
    "with bicubic (antialiased when shrinking), e.g. 2, 3 or 1.5."
)


def _size(size: tuple[int, int] | None) -> str:
    return "?" if size is None else f"{size[0]}x{size[1]}"


def _summary_table(report: Any) -> Any:
    from rich.table import Table

    records = report.records
    shown = records if len(records) <= _TABLE_ROWS else report.failed
    totals = report.totals()
    title = (
        f"{totals['done']} upscaled, {totals['skipped']} skipped (exist), {totals['failed']} failed "
        f"in {totals['seconds']:.1f} s -> {report.out_dir}"
    )
    table = Table(title=title)
    for col, justify in (
        ("file", "left"),
        ("size in -> out", "right"),
        ("seconds", "right"),
        ("status", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    colours = {"done": "green", "skipped": "yellow", "failed": "red"}
    for r in shown:
        status = f"[{colours[r.status]}]{r.status}[/]"
        if r.error:
            status += f": {r.error}"
        elif r.notes:
            status += f" ({'; '.join(r.notes)})"
        size = f"{_size(r.size_in)} -> {_size(r.size_out)}" if r.status == "done" else _size(r.size_in)
        table.add_row(str(r.input), size, f"{r.seconds:.2f}", status)
    if shown is not records and shown:
        table.caption = f"only the {len(shown)} failed of {len(records)} images are listed (--json lists all)"
    return table


class _BatchProgress:
    """One progress line, so a log keeps it unpadded: all windows of the run (its ETA is the run's), and the image
    in progress with its own windows. It is drawn from ``on_plan`` on, once the checks before any work have
    passed, so a refused run (outputs made with other settings) prints its error line alone."""

    def __init__(self) -> None:
        self.bar = progress()
        self.task = self.bar.add_task("upscale", total=None, status="")
        self.windows: list[int] = []
        self.done = [0, 0]  # finished, total: for the interrupt message

    def on_start(self, rank: int, world: int) -> None:
        if world > 1:
            info(f"process {rank + 1} of {world}: taking every {world}th file")
            self.bar.update(self.task, description=f"upscale [{rank + 1}/{world}]")

    def on_plan(self, counts: list[int]) -> None:
        self.windows[:] = counts
        self.bar.update(self.task, total=sum(counts) or None)
        self.bar.start()

    def on_window(self, index: int, src: Path, k: int, n: int) -> None:
        status = f"image {index + 1}/{len(self.windows)} {src.name}: window {k}/{n}"
        self.bar.update(self.task, completed=sum(self.windows[:index]) + k, status=status)

    def on_progress(self, i: int, n: int, record: Any) -> None:
        self.done[:] = [i, n]
        status = f"image {i}/{n} {record.input.name}: {record.status}"
        self.bar.update(self.task, completed=sum(self.windows[:i]), status=status)

    def stop(self) -> None:
        self.bar.stop()  # no output when it never started (nsarm_cli._console.progress)


def upscale(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (searched recursively) and glob patterns ('shots/**/*.jpg')."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder; sub-folders of input folders are mirrored, several input folders each under "
            "its own name. With one input file, a name ending in an image extension (-o result.png) is the "
            "output file.",
        ),
    ] = Path("upscaled"),
    scale: Annotated[float, typer.Option("--scale", "-s", help=_HELP_SCALE)] = 4.0,
    suffix: Annotated[
        str | None,
        typer.Option(
            "--suffix",
            help="Text added to output file names, e.g. _x4 (default: none in a separate output folder, "
            "_x<scale> when writing next to the inputs).",
        ),
    ] = None,
    ext: Annotated[
        str,
        typer.Option(
            "--ext",
            help="Output format: same|png|jpg|webp|tif. 'same' keeps the input's; a format that cannot hold "
            "the result (16-bit or alpha into JPEG) becomes PNG, with a warning.",
        ),
    ] = "same",
    quality: Annotated[int, typer.Option("--quality", help="JPEG / WebP quality 1-100.")] = 95,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Redo outputs that exist, whatever settings made them (finished ones are skipped otherwise).",
        ),
    ] = False,
    strip_metadata: Annotated[
        bool, typer.Option("--strip-metadata", help="Do not copy EXIF and the ICC colour profile.")
    ] = False,
    max_pixels: Annotated[
        int,
        typer.Option(
            "--max-pixels", help="Refuse inputs with more pixels (decompression bombs); 0: no limit."
        ),
    ] = 100_000_000,
    max_output_pixels: Annotated[
        int,
        typer.Option(
            "--max-output-pixels",
            help="Refuse the run, before any work, if an output would have more pixels (e.g. --scale 1000); "
            "0: no limit.",
        ),
    ] = 400_000_000,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help="Prompt for every image (with --captions: for images without one)."),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(
            "--captions",
            help='JSONL file (or folder of them) with lines {"image_path", "caption" or "long_caption"}, '
            "matched by path, then by file name.",
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Model name or folder (see `nsarm models`); bicubic, bilinear, nearest and lanczos are "
            "interpolation baselines.",
        ),
    ] = "nsarm-tiny",
    weights: ModelWeights = None,
    vae_weights: VaeWeights = None,
    text_encoder: TextEncoder = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (the same for every image).")] = 1,
    tau: Tau = 0.5,
    top_p: TopP = 0.97,
    cfg: Cfg = 1.0,
    color_fix: ColorFix = "both",
    fidelity: Fidelity = None,
    speck_guard: SpeckGuard = None,
    tile: Tile = 0,
    tile_overlap: TileOverlap = None,
    device: Annotated[str, device_option("auto|cpu|cuda|cuda:N|mps.")] = "auto",
    dtype: Dtype = "auto",
    batch_windows: BatchWindows = None,
    stitch: Stitch = None,
    threads: Threads = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print per-image records and totals as JSON on stdout.")
    ] = False,
) -> None:
    """Upscale images (x4 native; any --scale by a final bicubic resize). Resumable: finished outputs are skipped.

    An existing output counts as finished when it is a complete image made with the same settings (model and
    weights, scale, seed, sampling, colour fix, fidelity, speck guard, dtype, --tile, --stitch; recorded in OUT/.nsarm-outputs.jsonl);
    outputs made with other settings stop the run until --overwrite is given, and empty or broken ones are made
    again.

    Inputs are never overwritten. Alpha is kept (upscaled separately with bicubic and re-attached), 16-bit and
    gray images stay 16-bit and gray, EXIF and ICC are copied (--strip-metadata drops them). An image that
    fails is reported and the others continue; the exit status is then 1. Under `accelerate launch` the files
    are split between the processes.
    """
    from nsarm_core.allocator import keep_freed_memory
    from nsarm_core.devices import set_torch_threads

    set_torch_threads(threads)  # before any torch work, so every op of the run uses it
    keep_freed_memory()  # reuse freed activation memory instead of page-faulting it in again (allocator.py)

    from nsarm_core.batch.upscale import UpscaleOptions, upscale_batch

    options = UpscaleOptions(
        scale=scale, ext=ext, name_suffix=suffix, overwrite=overwrite, keep_metadata=not strip_metadata,
        quality=quality, max_pixels=max_pixels, max_output_pixels=max_output_pixels, seed=seed, prompt=prompt,
    )  # fmt: skip
    load = dict(
        device=device, dtype=dtype, weights=weights, vae_weights=vae_weights, text_encoder=text_encoder,
        sampling=dict(tau=tau, top_p=top_p, cfg=cfg), color_fix=color_fix, tile=tile, tile_overlap=tile_overlap,
        fidelity=fidelity, speck_guard=speck_guard, batch_windows=batch_windows, stitch=stitch,
    )  # fmt: skip
    bar = _BatchProgress()
    try:
        try:
            report = upscale_batch(
                model, inputs, out, options, load=load, captions=captions, on_start=bar.on_start,
                on_plan=bar.on_plan, on_window=bar.on_window, on_progress=bar.on_progress,
            )  # fmt: skip
        finally:
            bar.stop()  # nothing to stop when the checks refused the run before on_plan
    except KeyboardInterrupt:
        warn(
            f"interrupted after {bar.done[0]} of {bar.done[1] or '?'} images; finished outputs are complete and "
            "kept. Run the same command again to do the rest."
        )
        raise typer.Exit(130) from None

    if json_out:
        print_json(report.to_dict())
    elif STATE.verbosity < 0:  # -q: no table; only the failures, one line each
        for r in report.failed:
            err_console.print(f"[red]failed:[/red] {r.input}: {r.error}", highlight=False, soft_wrap=True)
    else:
        if report.excluded:
            info(f"left out {len(report.excluded)} earlier output(s) found among the inputs")
        out_console.print(_summary_table(report))
        if report.failed and len(report.records) > _TABLE_ROWS:
            err_console.print(f"[red]{len(report.failed)} image(s) failed[/red]", highlight=False)
    if report.exit_code:
        raise typer.Exit(report.exit_code)

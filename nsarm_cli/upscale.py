"""``nsarm upscale``: super-resolve photos, folders and glob patterns in one resumable batch.

The batch logic lives in :mod:`nsarm_core.batch.upscale` (``load_upscaler`` picks the NSARM pipeline or an
interpolation baseline, ``upscale_files`` runs the batch); this module parses the options, shows progress and
prints the summary. torch, numpy and PIL are imported inside the command so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nsarm_cli._console import STATE, err_console, info, out_console, print_json, progress, warn
from nsarm_cli._options import Threads, device_option

_TABLE_ROWS = 50  # longer batches list only the failed images in the summary table

_HELP_SCALE = (
    "Output factor, any number > 0. 4 is the model's native factor; other factors resize the x4 result "
    "with bicubic (antialiased when shrinking), e.g. 2, 3 or 1.5."
)


_HELP_TILE = (
    "Tile side in input pixels; 0: no extra tiling. realesrgan-x4plus: its window side (Real-ESRGAN's memory "
    "knob). NSARM models and the baselines: the image is processed as N x N tiles, each cut into the model's "
    "windows and blended; NSARM's memory is one window either way and its sample changes (baselines: the "
    "same image up to float rounding)."
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
    weights: Annotated[Path | None, typer.Option("--weights", help="Local checkpoint file.")] = None,
    vae_weights: Annotated[Path | None, typer.Option("--vae-weights", help="Local VAE weights file.")] = None,
    text_encoder: Annotated[
        Path | None, typer.Option("--text-encoder", help="Local text-encoder folder or file.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (the same for every image).")] = 1,
    tau: Annotated[float, typer.Option("--tau", help="Sampling temperature.")] = 0.5,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling threshold in (0, 1].")] = 0.97,
    cfg: Annotated[float, typer.Option("--cfg", help="Classifier-free guidance scale (1: none).")] = 1.0,
    color_fix: Annotated[
        str, typer.Option("--color-fix", help="Colour correction: none|adain|wavelet|both.")
    ] = "both",
    fidelity: Annotated[
        float | None,
        typer.Option(
            "--fidelity",
            help="Fidelity-realism knob w in [0, 1] of models with CFW: 0 = NSARM's generative output, "
            "1 = most faithful to the input (default: the model's own, 0.75 for nsarm-tiny).",
        ),
    ] = None,
    tile: Annotated[int, typer.Option("--tile", min=0, help=_HELP_TILE)] = 0,
    tile_overlap: Annotated[
        int | None,
        typer.Option("--tile-overlap", help="Tile overlap in input pixels (default: the model's)."),
    ] = None,
    device: Annotated[str, device_option("auto|cpu|cuda|cuda:N|mps.")] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="auto|fp32|bf16|fp16 (auto: bf16 on CUDA and on CPUs with native bf16, AVX512-BF16 or AMX; "
            "fp32 on other CPUs, where bf16 is emulated and much slower; fp16 is refused on the CPU, where it is "
            "about 14x slower).",
        ),
    ] = "auto",
    batch_windows: Annotated[
        int | None,
        typer.Option(
            "--batch-windows",
            min=1,
            help="Windows of an image run together (NSARM models; default: from a memory budget). "
            "Outputs do not depend on it: every window keeps its own seed.",
        ),
    ] = None,
    threads: Threads = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print per-image records and totals as JSON on stdout.")
    ] = False,
) -> None:
    """Upscale images (x4 native; any --scale by a final bicubic resize). Resumable: finished outputs are skipped.

    An existing output counts as finished when it is a complete image made with the same settings (model and
    weights, scale, seed, sampling, colour fix, fidelity, dtype, --tile; recorded in OUT/.nsarm-outputs.jsonl);
    outputs made with other settings stop the run until --overwrite is given, and empty or broken ones are made
    again.

    Inputs are never overwritten. Alpha is kept (upscaled separately with bicubic and re-attached), 16-bit and
    gray images stay 16-bit and gray, EXIF and ICC are copied (--strip-metadata drops them). An image that
    fails is reported and the others continue; the exit status is then 1. Under `accelerate launch` the files
    are split between the processes.
    """
    from nsarm_core.devices import set_torch_threads

    set_torch_threads(threads)  # before any torch work, so every op of the run uses it

    from nsarm_core.batch.inputs import detect_world
    from nsarm_core.batch.outputs import weights_identity
    from nsarm_core.batch.upscale import UpscaleOptions, check_batch, load_upscaler, upscale_files
    from nsarm_core.data.captions import load_captions

    rank, world, world_device = detect_world()
    options = UpscaleOptions(
        scale=scale,
        ext=ext,
        name_suffix=suffix,
        overwrite=overwrite,
        keep_metadata=not strip_metadata,
        quality=quality,
        max_pixels=max_pixels,
        max_output_pixels=max_output_pixels,
        seed=seed,
        prompt=prompt,
        captions=load_captions(captions) if captions is not None else None,
        rank=rank,
        world_size=world,
    )
    if world_device is not None and device in ("auto", "cuda"):
        device = world_device  # each process on its own GPU
    # Missing inputs, -o result.png for several inputs, an unwritable output folder, outputs over budget:
    # refused before the model is loaded.
    check_batch(list(inputs), out, options)
    upscaler = load_upscaler(
        model, scale=scale, device=device, dtype=dtype, weights=weights, vae_weights=vae_weights,
        text_encoder=text_encoder, sampling=dict(tau=tau, top_p=top_p, cfg=cfg), color_fix=color_fix, tile=tile,
        tile_overlap=tile_overlap, fidelity=fidelity, batch_windows=batch_windows,
    )  # fmt: skip
    if world > 1:
        info(f"process {rank + 1} of {world}: taking every {world}th file")

    done = [0, 0]  # finished, total: for the interrupt message
    label = "upscale" if world == 1 else f"upscale [{rank + 1}/{world}]"
    # One line, so a log keeps it unpadded: all windows of the run (its ETA is the run's), and the image in
    # progress with its own windows. It is drawn from on_plan on, once the checks before any work have passed,
    # so a refused run (outputs made with other settings) prints its error line alone.
    bar = progress()
    task = bar.add_task(label, total=None, status="")
    windows: list[int] = []

    def on_plan(counts: list[int]) -> None:
        windows[:] = counts
        bar.update(task, total=sum(counts) or None)
        bar.start()

    def on_window(index: int, src: Path, k: int, n: int) -> None:
        status = f"image {index + 1}/{len(windows)} {src.name}: window {k}/{n}"
        bar.update(task, completed=sum(windows[:index]) + k, status=status)

    def on_progress(i: int, n: int, record: Any) -> None:
        done[:] = [i, n]
        status = f"image {i}/{n} {record.input.name}: {record.status}"
        bar.update(task, completed=sum(windows[:i]), status=status)

    try:
        try:
            report = upscale_files(
                upscaler,
                inputs,
                out,
                options,
                on_progress=on_progress,
                on_plan=on_plan,
                on_window=on_window,
                weights_id=weights_identity(model, weights),
            )
        finally:
            bar.stop()  # a no-op when the checks refused the run before on_plan
    except KeyboardInterrupt:
        warn(
            f"interrupted after {done[0]} of {done[1] or '?'} images; finished outputs are complete and kept. "
            "Run the same command again to do the rest."
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

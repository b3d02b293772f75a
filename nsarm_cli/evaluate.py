"""``nsarm evaluate``: score SR outputs (full-reference against HR, or no-reference), optionally running a model.

Heavy imports (numpy, torch, PIL, pyiqa) happen inside the command so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nsarm_cli._console import info, out_console, print_json, progress, warn
from nsarm_cli._options import HRFolder, JsonOut, MetricDevice


def _print_catalogue(json_out: bool) -> None:
    from rich.table import Table

    from nsarm_core.eval.benchmarks import PRESETS
    from nsarm_core.eval.metrics import catalogue_rows

    rows = catalogue_rows()
    if json_out:
        print_json({"metrics": rows, "presets": {k: p.to_dict() for k, p in PRESETS.items()}})
        return
    table = Table(title="Metrics")
    for col in ("name", "type", "better", "range", "backend", "variant", "composite"):
        table.add_column(col)
    for r in rows:
        lo, hi = r["range"]
        table.add_row(r["name"], r["type"], "lower" if r["lower_better"] else "higher", f"[{lo:g}, {'inf' if hi is None else f'{hi:g}'}]",
                      r["backend"], r["variant"], r["composite_normalisation"])  # fmt: skip
    out_console.print(table)
    presets = Table(title="Datasets (--dataset NAME [--data-root DIR])")
    for col in ("name", "images", "LR folder", "HR folder", "protocol", "without --data-root"):
        presets.add_column(col)
    for p in PRESETS.values():
        pr = p.protocol
        presets.add_row(p.name, str(p.n_images), f"{'|'.join(p.lr_dirs)}/{p.lr_pattern}",
                        f"{'|'.join(p.hr_dirs)}/{p.hr_pattern}" if p.hr_dirs else "– (no-reference)",
                        f"LR {pr.lr_size} -> in {pr.model_input_size} -> out {pr.output_size} -> eval {pr.eval_size}, "
                        f"crop {pr.crop_border}",
                        f"Hub dataset {p.hub.repo_id}" if p.hub else "– (needs --data-root)")  # fmt: skip
    out_console.print(presets)


def summary_table(summary: dict[str, Any], title: str) -> Any:
    """A rich table of mean / variance per metric from an evaluation summary."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("metric", "better", "mean", "var (per image)", "min", "max", "n"):
        table.add_column(col, justify="right" if col not in ("metric", "better") else "left")
    for name, s in summary["metrics"].items():
        if not s.get("n"):
            continue
        table.add_row(name, "lower" if s["lower_better"] else "higher", f"{s['mean']:.4f}", f"{s['var']:.6g}",
                      f"{s['min']:.4f}", f"{s['max']:.4f}", str(s["n"]))  # fmt: skip
    return table


def evaluate(
    sr_dir: Annotated[
        Path | None, typer.Argument(help="Folder of SR images to score (omit with --model).")
    ] = None,
    hr: HRFolder = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            "-m",
            help="Comma-separated metrics (see --list). Default: psnr,ssim with HR, "
            "else clipiqa,musiq,maniqa,topiq_nr.",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Benchmark set: RealSR, DRealSR, RP60, DIV2K-val. Without --data-root, RealSR and DRealSR "
            "are downloaded once from the Hugging Face Hub (StableSR's test sets) into the cache.",
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", hidden=True, help="Old name of --dataset.")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="Your local copy of the --dataset set.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Run this model on the LR folder first, as `nsarm upscale --seed 1 --dtype fp32` does (fp32 on "
            "every CPU, so the scores do not depend on the machine; the model's other defaults).",
        ),
    ] = None,
    lr: Annotated[
        Path | None, typer.Option("--lr", help="LR folder for --model (default: the preset's LR folder).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: <SR_DIR>_eval).")
    ] = None,
    crop_border: Annotated[
        int | None,
        typer.Option("--crop-border", help="Border cropped before PSNR/SSIM (default: preset or 0)."),
    ] = None,
    resize_sr: Annotated[
        bool | None,
        typer.Option(
            "--resize-sr/--no-resize-sr",
            help="Resize SR to the HR size when sizes differ (PIL bicubic; default: preset or off).",
        ),
    ] = None,
    eval_size: Annotated[
        int | None,
        typer.Option("--eval-size", help="Side to resize SR to when there is no HR (with --resize-sr)."),
    ] = None,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Score only existing pairs when SR outputs are missing.")
    ] = False,
    device: MetricDevice = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Seed of metrics with random crops (MANIQA).")] = 0,
    max_pixels: Annotated[
        int,
        typer.Option(
            "--max-pixels", help="Refuse images with more pixels (decompression bombs); 0: no limit."
        ),
    ] = 100_000_000,
    list_all: Annotated[bool, typer.Option("--list", help="List metrics and datasets, then exit.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Score SR images: PSNR/SSIM on Y (BasicSR convention) and NIQE natively, LPIPS/CLIPIQA/MUSIQ/MANIQA/TOPIQ via pyiqa.

    Writes OUT/scores.csv (per image) and OUT/scores.summary.json (mean, per-image variance, protocol), and
    records the run in ./nsarm-evaluations.jsonl, from which `nsarm robustness` compares the methods.
    """
    if list_all:
        _print_catalogue(json_out)
        return
    if dataset is not None and preset is not None and dataset != preset:
        raise typer.BadParameter(f"--dataset {dataset} and --preset {preset} differ; give --dataset only")
    from nsarm_core.allocator import keep_freed_memory
    from nsarm_core.eval.evaluate import json_safe
    from nsarm_core.eval.index import default_index_path
    from nsarm_core.eval.run import EvaluationRequest, run_evaluation

    keep_freed_memory()  # models and metrics reuse freed activation memory (nsarm_core/allocator.py)
    request = EvaluationRequest(
        sr_dir=sr_dir, hr=hr, lr=lr, preset=dataset or preset, data_root=data_root, model=model, out=out,
        metrics=metrics, crop_border=crop_border, resize_sr=resize_sr, eval_size=eval_size,
        allow_missing=allow_missing, device=device, seed=seed, max_pixels=max_pixels, index=default_index_path(),
    )  # fmt: skip
    with progress(transient=True) as bar:
        task = bar.add_task("scoring", total=None, status="")
        run = run_evaluation(
            request, on_image=lambda i, n, key: bar.update(task, completed=i, total=n, status=key)
        )
    for failure in run.result.failures:
        warn(f"not scored: {failure.reason}")
    if run.csv_path is None:
        warn(f"none of the {len(run.result.failures)} image(s) could be scored; nothing written")
        raise typer.Exit(1)
    summary = run.result.summary()
    if json_out:
        print_json(json_safe(summary | {"csv": str(run.csv_path), "summary_json": str(run.json_path)}))
    else:
        out_console.print(summary_table(summary, f"{run.sr_dir} ({len(run.result.records)} images)"))
        info(f"per-image scores: {run.csv_path}\nsummary + protocol: {run.json_path}")
        info(
            f"recorded in {request.index}: `nsarm robustness --report` compares every method evaluated there"
        )
    if run.result.failures:  # the good pairs are scored and written; the run is still incomplete
        raise typer.Exit(1)

"""``nsarm evaluate``: score SR outputs (full-reference against HR, or no-reference), optionally running a model.

Heavy imports (numpy, torch, PIL, pyiqa) happen inside the command so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nsarm_cli._console import info, out_console, print_json, progress
from nsarm_cli._options import HRFolder, JsonOut, MetricDevice
from nsarm_core.errors import ConfigError


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
    presets = Table(title="Dataset presets (--preset NAME --data-root DIR)")
    for col in ("name", "images", "LR folder", "HR folder", "protocol"):
        presets.add_column(col)
    for p in PRESETS.values():
        pr = p.protocol
        presets.add_row(p.name, str(p.n_images), f"{'|'.join(p.lr_dirs)}/{p.lr_pattern}",
                        f"{'|'.join(p.hr_dirs)}/{p.hr_pattern}" if p.hr_dirs else "– (no-reference)",
                        f"LR {pr.lr_size} -> in {pr.model_input_size} -> out {pr.output_size} -> eval {pr.eval_size}, "
                        f"crop {pr.crop_border}")  # fmt: skip
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
    preset: Annotated[
        str | None, typer.Option("--preset", help="Dataset preset: RealSR, DRealSR, RP60, DIV2K-val.")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="Your local copy of the preset's dataset.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Run this model on the LR folder first (nsarm upscale).")
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
    list_all: Annotated[
        bool, typer.Option("--list", help="List metrics and dataset presets, then exit.")
    ] = False,
    json_out: JsonOut = False,
) -> None:
    """Score SR images: PSNR/SSIM on Y (BasicSR convention) natively, LPIPS/NIQE/CLIPIQA/MUSIQ/MANIQA/TOPIQ via pyiqa.

    Writes OUT/scores.csv (per image) and OUT/scores.summary.json (mean, per-image variance, protocol).
    """
    if list_all:
        _print_catalogue(json_out)
        return
    from nsarm_core.batch.upscale import run_model_on_folder
    from nsarm_core.eval.benchmarks import get_preset, resolve_layout
    from nsarm_core.eval.evaluate import EvalOptions, evaluate_folder, write_outputs
    from nsarm_core.eval.metrics import PAPER_NR_METRICS, parse_metric_list

    ds = get_preset(preset) if preset else None
    layout = None
    if ds is not None:
        if data_root is None:
            raise ConfigError(
                f"--preset {ds.name} needs --data-root pointing at your local copy ({ds.source})"
            )
        layout = resolve_layout(ds, data_root)
    elif data_root is not None:
        raise ConfigError(
            "--data-root is only used with --preset; pass --hr / --lr folders directly otherwise"
        )
    hr_dir = hr or (layout.hr_dir if layout else None)
    lr_dir = lr or (layout.lr_dir if layout else None)

    if model is not None:
        if lr_dir is None:
            raise ConfigError("--model needs an LR folder: pass --lr DIR or --preset with --data-root")
        if sr_dir is not None:
            raise ConfigError("give either SR_DIR or --model (which writes its own SR folder), not both")
        out = out or Path(f"nsarm_eval_{model.replace('/', '_')}")
        sr_dir = out / "sr"
        info(f"running {model} on {lr_dir} -> {sr_dir}")
        run_model_on_folder(model, lr_dir, sr_dir)
    if sr_dir is None:
        raise ConfigError("give the folder of SR images to score (SR_DIR), or --model with --lr / --preset")
    out = out or sr_dir.resolve().parent / f"{sr_dir.resolve().name}_eval"

    names = metrics or ("psnr,ssim" if hr_dir is not None else ",".join(PAPER_NR_METRICS))
    specs = parse_metric_list(names)
    proto = ds.protocol if ds else None
    opts = EvalOptions(
        metrics=tuple(s.name for s in specs),
        crop_border=crop_border if crop_border is not None else (proto.crop_border if proto else 0),
        resize_sr=resize_sr if resize_sr is not None else (proto.resize_sr if proto else False),
        eval_size=eval_size if eval_size is not None else (proto.eval_size if proto else None),
        device=device,
        seed=seed,
    )
    with progress(transient=True) as bar:
        task = bar.add_task("scoring", total=None, status="")
        result = evaluate_folder(
            sr_dir, hr_dir, opts, preset=ds, strict=not allow_missing,
            on_image=lambda i, n, key: bar.update(task, completed=i, total=n, status=key),
        )  # fmt: skip
    csv_path, json_path = write_outputs(result, out)
    summary = result.summary()
    if json_out:
        from nsarm_core.eval.evaluate import json_safe

        print_json(json_safe(summary | {"csv": str(csv_path), "summary_json": str(json_path)}))
        return
    out_console.print(summary_table(summary, f"{sr_dir} ({len(result.records)} images)"))
    info(f"per-image scores: {csv_path}\nsummary + protocol: {json_path}")

"""``nsarm robustness``: composite score, Eq. 7 Deficient/Poor/Collapse counts, sorted curves, worst images, sweeps.

Heavy imports happen inside the command so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nsarm_cli._console import info, out_console, print_json, progress
from nsarm_cli._options import HRFolder, JsonOut, MetricDevice
from nsarm_core.errors import ConfigError


def _split_input(item: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (NAME, PATH); a bare PATH is named after its file stem (CSV) or folder name."""
    if "=" in item and not Path(item).exists():
        name, _, path = item.partition("=")
        if not name or not path:
            raise ConfigError(f"input {item!r}: expected PATH or NAME=PATH")
        return name, Path(path)
    p = Path(item)
    name = p.stem if p.suffix.lower() == ".csv" else p.name
    if name == "scores" and p.suffix.lower() == ".csv":  # `nsarm evaluate` default name: use the folder
        name = p.parent.name.removesuffix("_eval") or name
    return name, p


def _counts_table(data: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    labels = [t["label"] for t in data["thresholds"]]
    table = Table(title=title)
    table.add_column("method")
    for col in ("images", "composite mean", "composite var", *labels):
        table.add_column(col, justify="right")
    for name, m in data["methods"].items():
        table.add_row(name, str(m["n_images"]), f"{m['composite_mean']:.4f}", f"{m['composite_var']:.5f}",
                      *[str(m["counts"][lab]) for lab in labels])  # fmt: skip
    return table


def robustness(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Per-image score CSVs from `nsarm evaluate` or SR folders (scored here), as PATH or NAME=PATH."
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            "-m",
            help="Composite metrics (default clipiqa,musiq,maniqa,topiq_nr; sweep: psnr,ssim).",
        ),
    ] = None,
    thresholds: Annotated[
        str, typer.Option("--thresholds", help="Eq. 7 fractions of the global mean.")
    ] = "1.0,0.9,0.8",
    hr: HRFolder = None,
    worst_k: Annotated[
        int, typer.Option("--worst-k", help="Worst images per method shown in the report.")
    ] = 4,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", help="Write robustness.html (self-contained), robustness.md and plots here."
        ),
    ] = None,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Degrade --hr images at increasing severity, upscale, score.")
    ] = False,
    levels: Annotated[
        str, typer.Option("--levels", help="Severity ladder of degradation presets (sweep).")
    ] = "bicubic,light,realesrgan",
    sweep_method: Annotated[
        str, typer.Option("--sweep-method", help="'bicubic' (built in) or a model name (sweep).")
    ] = "bicubic",
    scale: Annotated[int, typer.Option("--scale", help="SR factor (sweep).")] = 4,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the degradation draws and of random-crop metrics.")
    ] = 0,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Where the sweep writes LR/SR images.")
    ] = None,
    crop_border: Annotated[int, typer.Option("--crop-border", help="Border cropped before PSNR/SSIM.")] = 0,
    device: MetricDevice = "cpu",
    json_out: JsonOut = False,
) -> None:
    """Robustness of SR methods as in NSARM Fig. 4: composite per-image score, global mean mu_G over all methods,
    Deficient (< mu_G), Poor (< 0.9 mu_G) and Collapse (< 0.8 mu_G) counts, per-image variance, sorted curves.
    """
    from nsarm_core.eval.evaluate import EvalOptions, EvalResult, evaluate_folder, json_safe, load_scores_csv
    from nsarm_core.eval.metrics import parse_metric_list
    from nsarm_core.eval.robustness import (
        DEFAULT_COMPOSITE,
        SweepResult,
        analyse,
        model_method,
        parse_thresholds,
        run_sweep,
        severity_ladder,
    )

    if not inputs and not sweep:
        raise ConfigError("give score CSVs / SR folders to compare, or --sweep with --hr")
    thr = parse_thresholds(thresholds)
    default = "psnr,ssim" if sweep and not inputs else ",".join(DEFAULT_COMPOSITE)
    names = [s.name for s in parse_metric_list(metrics or default)]
    opts = EvalOptions(metrics=tuple(names), crop_border=crop_border, device=device, seed=seed)

    results: dict[str, EvalResult] = {}
    for item in inputs or []:
        name, path = _split_input(item)
        if name in results:
            raise ConfigError(f"two inputs are named '{name}'; name them explicitly with NAME=PATH")
        if path.is_dir():
            info(f"scoring {path} ({', '.join(names)})")
            results[name] = evaluate_folder(path, hr, opts)
        else:
            results[name] = load_scores_csv(path)

    sweep_result: SweepResult | None = None
    if sweep:
        if hr is None:
            raise ConfigError("--sweep needs --hr: a folder of HR images to degrade")
        from nsarm_core.eval.evaluate import list_images

        ladder = severity_ladder([x.strip() for x in levels.split(",") if x.strip()])
        method = model_method(sweep_method)
        wd = work_dir or (report / "sweep_work" if report else Path("nsarm_sweep"))
        with progress(transient=True) as bar:
            task = bar.add_task("sweep", total=len(ladder), status="")
            sweep_result = run_sweep(
                list_images(hr), ladder, method, sweep_method, wd, metrics=names, scale=scale, seed=seed, opts=opts,
                on_level=lambda i, n, p: bar.update(task, completed=i, status=p),
            )  # fmt: skip
        if not results:  # a sweep alone: compare the severity levels with each other (Eq. 7 over levels)
            results = {
                f"{lv.index}:{lv.preset}": r
                for lv, r in zip(sweep_result.levels, sweep_result.results, strict=True)
            }

    analysis = analyse(results, names, thr)
    data = analysis.to_dict(worst_k=worst_k)
    if sweep_result is not None:
        data["sweep"] = sweep_result.to_dict()
    if report is not None:
        from nsarm_core.eval.report import write_report

        protocol = next((r.protocol for r in results.values() if r.protocol), None)
        files = write_report(analysis, report, worst_k=worst_k, sweep=sweep_result, protocol=protocol)
        data["report"] = {
            "html": str(files.html),
            "markdown": str(files.markdown),
            "plots": [str(p) for p in files.plots],
        }
    if json_out:
        print_json(json_safe(data))
        return
    out_console.print(
        _counts_table(data, f"Robustness (composite: {' + '.join(names)}; mu_G = {analysis.global_mean:.4f})")
    )
    if report is not None:
        info(f"report: {data['report']['html']} and {data['report']['markdown']}")

"""``nsarm robustness``: composite score, Eq. 7 Deficient/Poor/Collapse counts, sorted curves, worst images, sweeps.

Heavy imports happen inside the command so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from nsarm_cli._console import info, out_console, print_json, progress
from nsarm_cli._options import HRFolder, JsonOut, MetricDevice

# `--report` given without a folder (last, or followed by another option) stands for this value: Typer's
# options always take a value, so the command class below inserts it before parsing.
REPORT_DEFAULT = ""


class RobustnessCommand(TyperCommand):
    """``nsarm robustness``: lets ``--report`` go without its folder (then the default folder is used)."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        args = list(args)
        i = 0
        while i < len(args) and args[i] != "--":
            if args[i] == "--report" and (i + 1 == len(args) or _is_option(args[i + 1])):
                args.insert(i + 1, REPORT_DEFAULT)
            i += 1
        return super().parse_args(ctx, args)


def _is_option(arg: str) -> bool:
    return arg.startswith("-") and len(arg) > 1


def _report_dir(value: str | None) -> Path | None:
    """The folder of ``--report DIR``; refuses a score file taken for the folder (``--report a.csv b.csv``)."""
    if value is None or value == REPORT_DEFAULT:
        return None
    looks_like_input = value.lower().endswith(".csv") or ("=" in value and not Path(value).exists())
    if looks_like_input and not Path(value).is_dir():
        raise typer.BadParameter(
            f"--report takes the report folder, got {value!r}, which looks like a method's scores: put the "
            "methods before --report, or give --report DIR",
            param_hint="--report",
        )
    return Path(value)


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
            help="Per-image score CSVs from `nsarm evaluate` or SR folders (scored here), as PATH or NAME=PATH. "
            "None: every method evaluated on one dataset, from the evaluation index (nsarm-evaluations.jsonl)."
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            "-m",
            help="Composite metrics (default clipiqa,musiq,maniqa,topiq_nr, or those every method has; "
            "sweep: psnr,ssim).",
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
        str | None,
        typer.Option(
            "--report",
            metavar="[DIR]",
            help="Write robustness.html (self-contained), robustness.md and plots to DIR "
            "(without DIR: reports/robustness-<dataset>, printed).",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Without methods: the dataset of the evaluation index to compare (default: the latest).",
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
    from nsarm_core.allocator import keep_freed_memory
    from nsarm_core.eval.evaluate import json_safe
    from nsarm_core.eval.index import default_index_path
    from nsarm_core.eval.run import RobustnessRequest, run_robustness

    keep_freed_memory()  # models and metrics reuse freed activation memory (nsarm_core/allocator.py)
    request = RobustnessRequest(
        inputs=tuple(inputs or ()), metrics=metrics, thresholds=thresholds, hr=hr, worst_k=worst_k,
        report=_report_dir(report), report_default=report is not None, sweep=sweep, levels=levels,
        sweep_method=sweep_method, scale=scale, seed=seed, work_dir=work_dir, crop_border=crop_border,
        device=device, index=default_index_path(), dataset=dataset,
    )  # fmt: skip
    with progress(transient=True) as bar:
        task = bar.add_task("robustness", total=None, status="")
        analysis, data = run_robustness(
            request, on_level=lambda i, n, p: bar.update(task, completed=i, total=n, status=p)
        )
    if "index" in data:  # the methods came from the evaluation index: say which
        idx = data["index"]
        others = idx["other_datasets"]
        info(
            f"comparing {', '.join(idx['methods'])}: the methods evaluated on {idx['dataset']} ({idx['path']})"
            + (f"; other datasets there: {', '.join(others)} (choose with --dataset)" if others else "")
        )
    if json_out:
        print_json(json_safe(data))
        return
    names = analysis.composite_metrics
    out_console.print(
        _counts_table(data, f"Robustness (composite: {' + '.join(names)}; mu_G = {analysis.global_mean:.4f})")
    )
    if "report" in data:
        info(f"report: {data['report']['html']} and {data['report']['markdown']}")

"""The evaluation commands as runs: ``nsarm evaluate`` (:func:`run_evaluation`) and ``nsarm robustness``
(:func:`run_robustness`).

Not a paper component: the commands' logic (docs/architecture.md P.1.2 for the protocol a preset carries, P.1.6
for Eq. 7), kept here so the command modules only parse options and print. For ``evaluate`` a dataset preset
supplies the LR/HR folders under a local data root and the protocol's defaults (border crop, SR resize, evaluation
size); explicit values win. Without ``data_root`` a preset's public Hub copy is used (:mod:`.hub_sets`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsarm_core.batch.upscale import run_model_on_folder
from nsarm_core.errors import ConfigError
from nsarm_core.eval.benchmarks import get_preset, resolve_layout
from nsarm_core.eval.evaluate import (
    EvalOptions,
    EvalResult,
    evaluate_folder,
    list_images,
    load_scores_csv,
    write_outputs,
)
from nsarm_core.eval.hub_sets import fetch_dataset
from nsarm_core.eval.index import (
    IndexEntry,
    choose_dataset,
    dataset_key,
    dataset_slug,
    methods_of_dataset,
    read_index,
    record_run,
)
from nsarm_core.eval.metrics import PAPER_NR_METRICS, parse_metric_list
from nsarm_core.eval.report import write_report
from nsarm_core.eval.robustness import (
    RobustnessResult,
    SweepResult,
    analyse,
    check_worst_k,
    default_composite,
    model_method,
    parse_thresholds,
    run_sweep,
    severity_ladder,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluationRequest",
    "EvaluationRun",
    "run_evaluation",
    "parse_method_input",
    "RobustnessRequest",
    "run_robustness",
]


@dataclass(frozen=True)
class EvaluationRequest:
    """What to score and how (the options of ``nsarm evaluate``; None: the preset's value, else the default).

    Attributes:
        sr_dir: folder of SR images, or None with ``model`` (which writes ``out/sr``).
        hr: HR references (full-reference metrics); default: the preset's HR folder.
        lr: LR folder for ``model``; default: the preset's LR folder.
        preset: dataset preset name (``RealSR``, ``DRealSR``, ``RP60``, ``DIV2K-val``), with ``data_root``.
        data_root: the local copy of the preset's dataset (None: its Hub copy, downloaded into the cache).
        model: run this model (anything ``nsarm upscale --model`` takes) on the LR folder first.
        out: output folder; default ``<sr_dir>_eval`` (``nsarm_eval_<model>`` with a model).
        metrics: comma-separated metric names; default psnr,ssim with HR, else the paper's no-reference four.
        crop_border, resize_sr, eval_size: the protocol's choices (default: the preset's, else 0 / off / None).
        allow_missing: score only the pairs that exist when SR outputs are missing.
        device: device of the pyiqa metrics.
        seed: seed of metrics with random crops.
        max_pixels: refuse images with more pixels (decompression bombs); 0: no limit.
        index: the evaluation index to record the finished run in (None: not recorded).
    """

    sr_dir: Path | None = None
    hr: Path | None = None
    lr: Path | None = None
    preset: str | None = None
    data_root: Path | None = None
    model: str | None = None
    out: Path | None = None
    metrics: str | None = None
    crop_border: int | None = None
    resize_sr: bool | None = None
    eval_size: int | None = None
    allow_missing: bool = False
    device: str = "cpu"
    seed: int = 0
    max_pixels: int = 100_000_000
    index: Path | None = None


@dataclass(frozen=True)
class EvaluationRun:
    """The scores and where they were written (``None`` when no image could be scored: nothing is written).

    ``result.failures`` lists the images that were not scored; the good pairs are scored and written anyway.
    """

    result: EvalResult
    sr_dir: Path
    csv_path: Path | None
    json_path: Path | None


def run_evaluation(
    request: EvaluationRequest, *, on_image: Callable[[int, int, str], None] | None = None
) -> EvaluationRun:
    """Score ``request.sr_dir`` (or the outputs of ``request.model``) and write the CSV and summary JSON.

    Raises:
        ConfigError: contradictory or missing folders (the message says which option to give).
    """
    r = request
    ds = get_preset(r.preset) if r.preset else None
    layout = None
    if ds is not None:
        # Without a local copy, the set's public Hub copy is fetched (or checked, once cached).
        layout = resolve_layout(ds, r.data_root if r.data_root is not None else fetch_dataset(ds))
    elif r.data_root is not None:
        raise ConfigError(
            "--data-root is only used with --dataset; pass --hr / --lr folders directly otherwise"
        )
    hr_dir = r.hr or (layout.hr_dir if layout else None)
    lr_dir = r.lr or (layout.lr_dir if layout else None)
    sr_dir, out = r.sr_dir, r.out
    if r.model is not None:
        if lr_dir is None:
            raise ConfigError("--model needs an LR folder: pass --lr DIR or --dataset NAME")
        if sr_dir is not None:
            raise ConfigError("give either SR_DIR or --model (which writes its own SR folder), not both")
        out = out or Path(f"nsarm_eval_{r.model.replace('/', '_')}")
        sr_dir = out / "sr"
        logger.info("running %s on %s -> %s", r.model, lr_dir, sr_dir)
        run_model_on_folder(r.model, lr_dir, sr_dir)
    if sr_dir is None:
        raise ConfigError("give the folder of SR images to score (SR_DIR), or --model with --lr / --dataset")
    out = out or sr_dir.resolve().parent / f"{sr_dir.resolve().name}_eval"

    names = r.metrics or ("psnr,ssim" if hr_dir is not None else ",".join(PAPER_NR_METRICS))
    proto = ds.protocol if ds else None
    opts = EvalOptions(
        metrics=tuple(s.name for s in parse_metric_list(names)),
        crop_border=r.crop_border if r.crop_border is not None else (proto.crop_border if proto else 0),
        resize_sr=r.resize_sr if r.resize_sr is not None else (proto.resize_sr if proto else False),
        eval_size=r.eval_size if r.eval_size is not None else (proto.eval_size if proto else None),
        device=r.device,
        seed=r.seed,
        max_pixels=r.max_pixels,
    )
    result = evaluate_folder(sr_dir, hr_dir, opts, preset=ds, strict=not r.allow_missing, on_image=on_image)
    if not result.records:  # an empty CSV would read as a finished evaluation
        return EvaluationRun(result, sr_dir, None, None)
    csv_path, json_path = write_outputs(result, out)
    if r.index is not None:
        settings = {"metrics": list(opts.metrics), "crop_border": opts.crop_border, "resize_sr": opts.resize_sr,
                    "eval_size": opts.eval_size, "seed": opts.seed, "model": r.model}  # fmt: skip
        entry = IndexEntry(
            dataset=dataset_key(ds.name if ds else None, hr_dir, lr_dir, r.index),
            method=r.model or sr_dir.resolve().name, scores=csv_path, summary=json_path, sr_dir=sr_dir,
            settings=settings, n_images=len(result.records), n_failed=len(result.failures),
        )  # fmt: skip
        record_run(r.index, entry)
        logger.info("recorded in %s (dataset %s, method %s)", r.index, entry.dataset, entry.method)
    return EvaluationRun(result, sr_dir, csv_path, json_path)


def parse_method_input(item: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (NAME, PATH); a bare PATH is named after its file stem (CSV) or folder name.

    Raises:
        ConfigError: ``NAME=`` or ``=PATH`` with an empty side.
    """
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


@dataclass(frozen=True)
class RobustnessRequest:
    """The options of ``nsarm robustness`` (see the command's help for each).

    With no ``inputs`` (and no sweep), the methods are read from the evaluation ``index``: every method
    evaluated on ``dataset`` (default: the dataset evaluated last). ``report_default`` writes the report to
    :func:`default_report_dir` when ``report`` is None.
    """

    inputs: Sequence[str] = ()
    metrics: str | None = None
    thresholds: str = "1.0,0.9,0.8"
    hr: Path | None = None
    worst_k: int = 4
    report: Path | None = None
    sweep: bool = False
    levels: str = "bicubic,light,realesrgan"
    sweep_method: str = "bicubic"
    scale: int = 4
    seed: int = 0
    work_dir: Path | None = None
    crop_border: int = 0
    device: str = "cpu"
    index: Path | None = None
    dataset: str | None = None
    report_default: bool = False


def default_report_dir(dataset: str | None) -> Path:
    """Where ``--report`` without a folder writes: ``reports/robustness-<dataset>`` in the working folder."""
    return Path("reports") / (f"robustness-{dataset_slug(dataset)}" if dataset else "robustness")


def _inputs_from_index(r: RobustnessRequest) -> tuple[list[str], dict[str, Any]]:
    """``NAME=scores.csv`` for every method evaluated on the chosen dataset of the index, and what was chosen.

    A recorded run whose score file has since been deleted is left out with a warning naming it.
    """
    if r.index is None:
        raise ConfigError("give score CSVs / SR folders to compare, or --sweep with --hr")
    entries = read_index(r.index)
    dataset = choose_dataset(entries, r.dataset)
    methods = methods_of_dataset(entries, dataset)
    gone = [f"{name} ({e.scores})" for name, e in methods.items() if not e.scores.is_file()]
    if gone:
        logger.warning("left out, their score files no longer exist: %s", ", ".join(gone))
    methods = {name: e for name, e in methods.items() if e.scores.is_file()}
    if not methods:
        raise ConfigError(
            f"the score files of every method evaluated on {dataset} are gone; run `nsarm evaluate` again"
        )
    chosen = {
        "path": str(r.index),
        "dataset": dataset,
        "methods": list(methods),
        "other_datasets": sorted({e.dataset for e in entries if e.dataset not in (None, dataset)}),
    }
    logger.info("comparing %s evaluated on %s (from %s)", ", ".join(methods), dataset, r.index)
    return [f"{name}={e.scores}" for name, e in methods.items()], chosen


def _folder_metrics(hr: Path | None) -> list[str]:
    """Metrics to score SR folders with when none are chosen: the paper's four with pyiqa installed, else the
    native ones (PSNR and SSIM against ``hr``, or NIQE without references), so a base install still works."""
    import importlib.util

    if importlib.util.find_spec("pyiqa") is not None:
        return list(PAPER_NR_METRICS)
    fallback = ["psnr", "ssim"] if hr is not None else ["niqe"]
    logger.warning(
        "pyiqa is not installed (pip install 'nsarm[eval]'), so the SR folders are scored with %s",
        ", ".join(fallback),
    )
    return fallback


def run_robustness(
    request: RobustnessRequest, *, on_level: Callable[[int, int, str], None] | None = None
) -> tuple[RobustnessResult, dict[str, Any]]:
    """Score or load every input, run the severity sweep when asked, analyse (Eq. 7) and write the report.

    Without a metric choice the composite is the paper's four when every method has them, else the metrics
    every method has (:func:`~nsarm_core.eval.robustness.default_composite`, with a one-line warning); a sweep
    alone uses PSNR and SSIM.

    Returns:
        ``(analysis, data)``: ``data`` is the JSON form (the analysis, ``sweep`` and ``report`` when made,
        ``index`` when the methods came from the evaluation index).

    Raises:
        ConfigError: nothing to compare, two inputs with one name, a bad ``worst_k``, or a sweep without ``hr``.
    """
    r = request
    inputs, dataset, from_index = list(r.inputs), r.dataset, None
    if not inputs and not r.sweep:
        inputs, from_index = _inputs_from_index(r)
        dataset = from_index["dataset"]
    check_worst_k(r.worst_k)  # before any scoring
    thresholds = parse_thresholds(r.thresholds)
    chosen = [s.name for s in parse_metric_list(r.metrics)] if r.metrics else None

    results: dict[str, EvalResult] = {}
    folders: dict[str, Path] = {}
    for item in inputs:
        name, path = parse_method_input(item)
        if name in results or name in folders:
            raise ConfigError(f"two inputs are named '{name}'; name them explicitly with NAME=PATH")
        if path.is_dir():
            folders[name] = path
        else:
            results[name] = load_scores_csv(path)
    if folders:
        scored = chosen or _folder_metrics(r.hr)
        opts = EvalOptions(metrics=tuple(scored), crop_border=r.crop_border, device=r.device, seed=r.seed)
        for name, path in folders.items():
            logger.info("scoring %s (%s)", path, ", ".join(scored))
            results[name] = evaluate_folder(path, r.hr, opts)

    note = None
    if chosen is not None:
        names = chosen
    elif results:
        names, note = default_composite(results)
        if note:
            logger.warning("%s", note)
    else:  # a sweep alone: the weight-free full-reference pair
        names = ["psnr", "ssim"]

    report_dir = r.report or (default_report_dir(dataset) if r.report_default else None)
    sweep: SweepResult | None = None
    if r.sweep:
        if r.hr is None:
            raise ConfigError("--sweep needs --hr: a folder of HR images to degrade")
        ladder = severity_ladder([x.strip() for x in r.levels.split(",") if x.strip()])
        opts = EvalOptions(metrics=tuple(names), crop_border=r.crop_border, device=r.device, seed=r.seed)
        work_dir = r.work_dir or (report_dir / "sweep_work" if report_dir else Path("nsarm_sweep"))
        sweep = run_sweep(
            list_images(r.hr), ladder, model_method(r.sweep_method), r.sweep_method, work_dir, metrics=names,
            scale=r.scale, seed=r.seed, opts=opts, on_level=on_level,
        )  # fmt: skip
        if not results:  # a sweep alone: compare the severity levels with each other (Eq. 7 over levels)
            results = {
                f"{lv.index}:{lv.preset}": res for lv, res in zip(sweep.levels, sweep.results, strict=True)
            }

    analysis = analyse(results, names, thresholds)
    data = analysis.to_dict(worst_k=r.worst_k)
    if note:
        data["composite"]["note"] = note
    if from_index is not None:
        data["index"] = from_index
    if sweep is not None:
        data["sweep"] = sweep.to_dict()
    if report_dir is not None:
        protocol = next((res.protocol for res in results.values() if res.protocol), None)
        files = write_report(analysis, report_dir, worst_k=r.worst_k, sweep=sweep, protocol=protocol)
        data["report"] = {
            "dir": str(report_dir),
            "html": str(files.html),
            "markdown": str(files.markdown),
            "plots": [str(p) for p in files.plots],
            "notes": list(files.notes),
        }
    return analysis, data

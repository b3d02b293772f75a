"""One evaluation as ``nsarm evaluate`` runs it: resolve the folders, optionally run a model, score, write.

Not a paper component: the command's logic (docs/architecture.md P.1.2 for the protocol a preset carries), kept
here so the command module only parses options and prints. A dataset preset supplies the LR/HR folders under a
local data root and the protocol's defaults (border crop, SR resize, evaluation size); explicit values win.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nsarm_core.batch.upscale import run_model_on_folder
from nsarm_core.errors import ConfigError
from nsarm_core.eval.benchmarks import get_preset, resolve_layout
from nsarm_core.eval.evaluate import EvalOptions, EvalResult, evaluate_folder, write_outputs
from nsarm_core.eval.metrics import PAPER_NR_METRICS, parse_metric_list

logger = logging.getLogger(__name__)

__all__ = ["EvaluationRequest", "EvaluationRun", "run_evaluation"]


@dataclass(frozen=True)
class EvaluationRequest:
    """What to score and how (the options of ``nsarm evaluate``; None: the preset's value, else the default).

    Attributes:
        sr_dir: folder of SR images, or None with ``model`` (which writes ``out/sr``).
        hr: HR references (full-reference metrics); default: the preset's HR folder.
        lr: LR folder for ``model``; default: the preset's LR folder.
        preset: dataset preset name (``RealSR``, ``DRealSR``, ``RP60``, ``DIV2K-val``), with ``data_root``.
        data_root: the local copy of the preset's dataset.
        model: run this model (anything ``nsarm upscale --model`` takes) on the LR folder first.
        out: output folder; default ``<sr_dir>_eval`` (``nsarm_eval_<model>`` with a model).
        metrics: comma-separated metric names; default psnr,ssim with HR, else the paper's no-reference four.
        crop_border, resize_sr, eval_size: the protocol's choices (default: the preset's, else 0 / off / None).
        allow_missing: score only the pairs that exist when SR outputs are missing.
        device: device of the pyiqa metrics.
        seed: seed of metrics with random crops.
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


@dataclass(frozen=True)
class EvaluationRun:
    """The scores and where they were written."""

    result: EvalResult
    sr_dir: Path
    csv_path: Path
    json_path: Path


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
        if r.data_root is None:
            raise ConfigError(
                f"--preset {ds.name} needs --data-root pointing at your local copy ({ds.source})"
            )
        layout = resolve_layout(ds, r.data_root)
    elif r.data_root is not None:
        raise ConfigError(
            "--data-root is only used with --preset; pass --hr / --lr folders directly otherwise"
        )
    hr_dir = r.hr or (layout.hr_dir if layout else None)
    lr_dir = r.lr or (layout.lr_dir if layout else None)
    sr_dir, out = r.sr_dir, r.out
    if r.model is not None:
        if lr_dir is None:
            raise ConfigError("--model needs an LR folder: pass --lr DIR or --preset with --data-root")
        if sr_dir is not None:
            raise ConfigError("give either SR_DIR or --model (which writes its own SR folder), not both")
        out = out or Path(f"nsarm_eval_{r.model.replace('/', '_')}")
        sr_dir = out / "sr"
        logger.info("running %s on %s -> %s", r.model, lr_dir, sr_dir)
        run_model_on_folder(r.model, lr_dir, sr_dir)
    if sr_dir is None:
        raise ConfigError("give the folder of SR images to score (SR_DIR), or --model with --lr / --preset")
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
    )
    result = evaluate_folder(sr_dir, hr_dir, opts, preset=ds, strict=not r.allow_missing, on_image=on_image)
    csv_path, json_path = write_outputs(result, out)
    return EvaluationRun(result, sr_dir, csv_path, json_path)

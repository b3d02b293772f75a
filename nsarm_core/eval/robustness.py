"""Robustness analysis of NSARM Sec. 4 / Fig. 4: composite score, Eq. 7 Deficient/Poor/Collapse counts, sweeps.

Paper recipe (docs/architecture.md P.1.5–P.1.6):

* per-image score = mean of CLIPIQA, MUSIQ/100, MANIQA and TOPIQ (every term "higher is better", ~[0, 1]);
* Eq. 7: mu_G = the global mean of that score over **all images of all compared methods** on one dataset;
  per method, Deficient = #{score < mu_G}, Poor = #{score < 0.9 mu_G}, Collapse = #{score < 0.8 mu_G};
* the per-image variance of each no-reference metric (Table 1 "Var.", lower = more robust).

Any catalogue metric can enter the composite; each is first mapped to "higher is better" by its catalogue
rule (``MetricSpec.normalise``: x, x/100, 1 - x for lower-better metrics in [0, 1], -x for unbounded ones).

The severity sweep degrades HR images with increasingly strong presets of ``nsarm_core.data.degrade``, runs a
method (bicubic baseline built in, or a model through the pipeline) and scores each level.

Shape legend: N = number of images of one method; M = number of methods; L = number of severity levels.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nsarm_core.batch.degrade import DegradeOptions, degrade_files
from nsarm_core.batch.upscale import run_model_on_folder
from nsarm_core.data import degrade
from nsarm_core.errors import ConfigError, InputError
from nsarm_core.eval.evaluate import EvalOptions, EvalResult, evaluate_folder
from nsarm_core.eval.metrics import METRICS, PAPER_NR_METRICS, MetricSpec, get_metric

logger = logging.getLogger(__name__)

DEFAULT_COMPOSITE = PAPER_NR_METRICS  # CLIPIQA, MUSIQ/100, MANIQA, TOPIQ (Fig. 4)


@dataclass(frozen=True)
class Thresholds:
    """Eq. 7 thresholds as fractions of the global mean mu_G, with their labels (paper: 1.0, 0.9, 0.8)."""

    ratios: tuple[float, ...] = (1.0, 0.9, 0.8)
    labels: tuple[str, ...] = ("Deficient", "Poor", "Collapse")

    def __post_init__(self) -> None:
        if len(self.ratios) != len(self.labels) or not self.ratios:
            raise ConfigError(
                f"thresholds: {len(self.ratios)} ratios but {len(self.labels)} labels; give one label each"
            )
        if any(r <= 0 for r in self.ratios):
            raise ConfigError(f"threshold ratios must be > 0, got {self.ratios}")


def parse_thresholds(text: str) -> Thresholds:
    """``"1.0,0.9,0.8"`` -> :class:`Thresholds` (the paper labels for three ratios, ``<r>`` labels otherwise)."""
    try:
        ratios = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ConfigError(
            f"--thresholds expects comma-separated numbers such as 1.0,0.9,0.8, got {text!r}"
        ) from exc
    labels = Thresholds().labels if len(ratios) == 3 else tuple(f"<{r:g} mu_G" for r in ratios)
    return Thresholds(ratios, labels)


def composite_scores(result: EvalResult, metrics: Sequence[str] = DEFAULT_COMPOSITE) -> np.ndarray:
    """Per-image composite: the mean over ``metrics`` of each metric mapped to "higher is better".

    Args:
        result: per-image scores of one method.
        metrics: catalogue names; each must be a column of ``result``.

    Returns:
        ``[N]`` float64 composite scores.

    Raises:
        ConfigError: a metric is not in the scores or not in the catalogue.
        InputError: a score is NaN or infinite (e.g. PSNR of identical images).
    """
    specs: list[MetricSpec] = [get_metric(m) for m in metrics]
    if not specs:
        raise ConfigError("the composite needs at least one metric")
    terms = []
    for spec in specs:
        if spec.name not in result.metrics:
            raise ConfigError(
                f"composite metric '{spec.name}' is not in the scores (available: {', '.join(result.metrics)}); "
                "evaluate it first or choose --metrics from the available columns"
            )
        v = spec.normalise(result.values(spec.name))
        if not np.all(np.isfinite(v)):
            bad = [r.key for r, x in zip(result.records, v, strict=True) if not np.isfinite(x)]
            raise InputError(f"metric '{spec.name}' is not finite for image(s) {', '.join(bad[:5])}")
        terms.append(v)
    return np.mean(np.stack(terms, axis=0), axis=0)


def default_composite(
    results: Mapping[str, EvalResult], preferred: Sequence[str] = DEFAULT_COMPOSITE
) -> tuple[list[str], str | None]:
    """The composite used when none is chosen: ``preferred`` (the paper's four) when every method has those
    scores, else the catalogue metrics that every method has, with a one-line note saying so.

    A base install scores PSNR/SSIM/NIQE natively but not the paper's pyiqa metrics, so refusing would make
    the default unusable there; the note names the metrics used and how to choose others.

    Returns:
        ``(metrics, note)``; ``note`` is None when ``preferred`` is used as it is.

    Raises:
        ConfigError: no catalogue metric is in the scores of every method.
    """
    if not results:
        raise ConfigError("robustness needs the scores of at least one method")
    first = next(iter(results.values()))
    common = [m for m in first.metrics if m in METRICS and all(m in r.metrics for r in results.values())]
    wanted = list(preferred)
    if all(m in common for m in wanted):
        return wanted, None
    chosen = [m for m in wanted if m in common] or common
    if not chosen:
        raise ConfigError(
            "no metric is in the scores of every method ("
            + "; ".join(f"{name}: {', '.join(r.metrics) or 'none'}" for name, r in results.items())
            + "); evaluate the same metrics for each method"
        )
    note = (
        f"the default composite ({', '.join(wanted)}) is not in the scores; using the metrics every method "
        f"has: {', '.join(chosen)} (choose others with --metrics)"
    )
    return chosen, note


def eq7_counts(
    scores: Mapping[str, np.ndarray], thresholds: Thresholds = Thresholds()
) -> tuple[float, dict[str, dict[str, int]]]:
    """Eq. 7: the global mean over all images of all methods, and per-method counts below each threshold.

    Args:
        scores: method name -> ``[N_m]`` composite (or single-metric, higher-is-better) scores.
        thresholds: fractions of mu_G and their labels.

    Returns:
        ``(mu_G, {method: {label: count}})``; a count is ``#{score < ratio * mu_G}`` (strict).

    Raises:
        ConfigError: no scores, or mu_G <= 0 (the thresholds are ratios of the mean, so the score must be
            positive; choose metrics whose normalised values are positive).
    """
    if not scores or not any(len(v) for v in scores.values()):
        raise ConfigError("Eq. 7 needs at least one method with at least one image")
    mu_g = float(np.mean(np.concatenate([np.asarray(v, dtype=np.float64) for v in scores.values()])))
    if mu_g <= 0:
        raise ConfigError(
            f"the global mean score is {mu_g:.4g} <= 0, so the Eq. 7 thresholds (fractions of it) are meaningless; "
            "choose metrics whose normalised values are positive (see the catalogue's composite_normalisation)"
        )
    counts = {
        m: {
            lab: int(np.sum(np.asarray(v) < r * mu_g))
            for r, lab in zip(thresholds.ratios, thresholds.labels, strict=True)
        }
        for m, v in scores.items()
    }
    return mu_g, counts


def check_worst_k(k: int) -> None:
    """Refuse a negative number of worst images (``--worst-k -1`` would slice off the best instead)."""
    if k < 0:
        raise ConfigError(f"--worst-k must be >= 0 (0 lists no worst images), got {k}")


@dataclass
class MethodScores:
    """One method's evaluated images and its composite scores (``composite`` is ``[N]``)."""

    name: str
    result: EvalResult
    composite: np.ndarray

    def worst(self, k: int) -> list[tuple[str, float, Path]]:
        """The ``k`` lowest composite scores as ``(key, score, sr_path)``, worst first."""
        check_worst_k(k)
        order = np.argsort(self.composite, kind="stable")[:k]
        return [
            (self.result.records[i].key, float(self.composite[i]), self.result.records[i].sr_path)
            for i in order
        ]


@dataclass
class RobustnessResult:
    """Everything the robustness report shows."""

    methods: list[MethodScores]
    composite_metrics: list[str]
    thresholds: Thresholds
    global_mean: float
    counts: dict[str, dict[str, int]]
    metric_stats: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def to_dict(self, worst_k: int = 0) -> dict[str, Any]:
        """JSON-ready summary (composite definition, mu_G, counts, per-metric mean/var, worst images)."""
        out: dict[str, Any] = {
            "composite": {
                "metrics": self.composite_metrics,
                "normalisation": {m: get_metric(m).norm_rule for m in self.composite_metrics},
                "definition": "per-image mean of the normalised metrics (higher is better)",
            },
            "global_mean": self.global_mean,
            "thresholds": [
                {"label": lab, "ratio": r, "value": r * self.global_mean}
                for r, lab in zip(self.thresholds.ratios, self.thresholds.labels, strict=True)
            ],
            "methods": {},
        }
        for ms in self.methods:
            entry: dict[str, Any] = {
                "n_images": int(ms.composite.size),
                "composite_mean": float(np.mean(ms.composite)),
                "composite_var": float(np.var(ms.composite)),
                "counts": self.counts[ms.name],
                "metrics": self.metric_stats.get(ms.name, {}),
            }
            if worst_k:
                entry["worst"] = [{"key": k, "score": s, "sr_path": str(p)} for k, s, p in ms.worst(worst_k)]
            out["methods"][ms.name] = entry
        return out


def _label(name: str, result: EvalResult) -> str:
    return f"{result.source}" if result.source is not None else f"method '{name}'"


def _check_unique_keys(name: str, result: EvalResult) -> None:
    """Refuse a method that lists an image twice: it would count twice in mu_G and in the Eq. 7 counts."""
    counts = Counter(r.key for r in result.records)
    dupes = sorted(k for k, n in counts.items() if n > 1)
    if dupes:
        raise InputError(
            f"{_label(name, result)} lists image key(s) more than once: {', '.join(dupes[:5])}; keep one row per image"
        )


def _finite_only(name: str, result: EvalResult, metrics: Sequence[str]) -> EvalResult:
    """``result`` without the images whose composite metrics are not finite, with a warning naming them.

    PSNR is ``inf`` for an SR image identical to its HR (``evaluate`` writes it so). The protocol has no cap
    for it, and any cap would set the global mean mu_G, so such images are left out of the analysis, loudly.
    """
    present = [m for m in metrics if m in result.metrics]  # a missing column is composite_scores' error
    keep, dropped = [], []
    for r in result.records:
        bad = [
            f"{m}={r.scores.get(m, math.nan)}"
            for m in present
            if not math.isfinite(r.scores.get(m, math.nan))
        ]
        (dropped if bad else keep).append((r, bad))
    if not dropped:
        return result
    listed = ", ".join(f"{r.key} ({' '.join(bad)})" for r, bad in dropped[:5])
    more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
    logger.warning(
        "%s: %d image(s) left out of the robustness analysis, their scores are not finite: %s%s "
        "(PSNR is inf when an SR image equals its HR)",
        _label(name, result), len(dropped), listed, more,
    )  # fmt: skip
    return replace(result, records=[r for r, _ in keep])


def metric_stats(result: EvalResult) -> dict[str, dict[str, float]]:
    """Mean and per-image variance (ddof 0) of every finite-valued metric column."""
    out = {}
    for m in result.metrics:
        v = result.values(m)
        if v.size and np.all(np.isfinite(v)):
            out[m] = {"mean": float(np.mean(v)), "var": float(np.var(v))}
    return out


def analyse(
    results: Mapping[str, EvalResult],
    metrics: Sequence[str] = DEFAULT_COMPOSITE,
    thresholds: Thresholds = Thresholds(),
) -> RobustnessResult:
    """Composite scores, Eq. 7 counts and per-metric variance for one dataset and several methods.

    Args:
        results: method name -> per-image scores (e.g. from :func:`~nsarm_core.eval.evaluate.load_scores_csv`).
        metrics: composite metrics (default: the paper's CLIPIQA, MUSIQ/100, MANIQA, TOPIQ).
        thresholds: Eq. 7 ratios.
    """
    if not results:
        raise ConfigError("robustness needs the scores of at least one method")
    names = [get_metric(m).name for m in metrics]
    for name, res in results.items():
        _check_unique_keys(name, res)
    results = {name: _finite_only(name, res, names) for name, res in results.items()}
    methods = [MethodScores(name, res, composite_scores(res, names)) for name, res in results.items()]
    keysets = {ms.name: {r.key for r in ms.result.records} for ms in methods}
    first = next(iter(keysets.values()))
    if any(ks != first for ks in keysets.values()):
        logger.warning(
            "methods were scored on different image sets; mu_G still pools all their images (Eq. 7)"
        )
    mu_g, counts = eq7_counts({ms.name: ms.composite for ms in methods}, thresholds)
    stats = {ms.name: metric_stats(ms.result) for ms in methods}
    return RobustnessResult(methods, names, thresholds, mu_g, counts, stats)


# ---------------------------------------------------------------------------------------------------------
# Severity sweep
# ---------------------------------------------------------------------------------------------------------

# A folder method upscales every image of ``lr_dir`` by ``scale`` into ``out_dir`` (same file names).
FolderMethod = Callable[[Path, Path, int], None]
DEFAULT_LADDER = ("bicubic", "light", "realesrgan")


@dataclass(frozen=True)
class SeverityLevel:
    """One rung of the sweep: a degradation preset of ``nsarm_core.data.degrade``."""

    index: int
    preset: str


def severity_ladder(presets: Sequence[str] = DEFAULT_LADDER) -> list[SeverityLevel]:
    """Validate preset names against ``nsarm_core.data.degrade`` and number them by increasing severity."""

    if not presets:
        raise ConfigError("the severity ladder needs at least one degradation preset")
    for p in presets:
        degrade.get_preset(p)  # raises ConfigError with the valid names
    return [SeverityLevel(i, p) for i, p in enumerate(presets)]


def model_method(model: str) -> FolderMethod:
    """A folder method that runs ``model`` (a registered name, a model folder, or an interpolation baseline such
    as ``bicubic``) through :func:`nsarm_core.batch.upscale.run_model_on_folder`: the same batch, and so the
    same baseline, as ``nsarm upscale`` and ``nsarm evaluate --model``."""

    def run(lr_dir: Path, out_dir: Path, scale: int) -> None:
        run_model_on_folder(model, lr_dir, out_dir, scale=scale)

    return run


@dataclass
class SweepResult:
    """Scores per severity level (``levels`` and ``results`` have length L)."""

    method: str
    levels: list[SeverityLevel]
    results: list[EvalResult]
    composite_metrics: list[str]

    def curve(self, metric: str | None = None) -> np.ndarray:
        """``[L]`` mean score per level: of one metric, or of the composite when ``metric`` is None."""
        if metric is None:
            return np.array(
                [float(np.mean(composite_scores(r, self.composite_metrics))) for r in self.results]
            )
        return np.array([float(np.mean(r.values(metric))) for r in self.results])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready per-level means and variances."""
        levels = []
        for lvl, res in zip(self.levels, self.results, strict=True):
            comp = composite_scores(res, self.composite_metrics)
            levels.append(
                {
                    "level": lvl.index,
                    "preset": lvl.preset,
                    "composite_mean": float(np.mean(comp)),
                    "composite_var": float(np.var(comp)),
                    "metrics": metric_stats(res),
                }
            )
        return {"method": self.method, "composite_metrics": self.composite_metrics, "levels": levels}


def run_sweep(
    hr_paths: Sequence[Path],
    ladder: Sequence[SeverityLevel],
    method: FolderMethod,
    method_name: str,
    work_dir: Path,
    metrics: Sequence[str] = ("psnr", "ssim"),
    scale: int = 4,
    seed: int = 0,
    opts: EvalOptions | None = None,
    on_level: Callable[[int, int, str], None] | None = None,
) -> SweepResult:
    """Degrade HR images at each severity level, run ``method`` and score its outputs.

    Each level is one degrade batch (:func:`nsarm_core.batch.degrade.degrade_files`) with the run ``seed``:
    every image draws its parameters from its own seed (the run seed and its path), so a level's LR set is
    byte-identical to ``nsarm degrade HR_DIR OUT --preset <level> --seed <seed> --scale <scale>``, and does not
    depend on which other levels or images are run.

    Args:
        hr_paths: HR images (trimmed to a multiple of ``scale``; the trimmed images are the references).
        ladder: severity levels from :func:`severity_ladder`.
        method: folder method (e.g. ``model_method("bicubic")``).
        method_name: label for plots and JSON.
        work_dir: per level ``<index>_<preset>/`` holds the degrade batch (``lr/``, ``hr/``, sidecars, manifest)
            and the method's outputs ``SR/``.
        metrics: metrics to compute and to average into the composite (weight-free ones work offline).
        scale: SR factor.
        seed: run seed of the degradations.
        opts: evaluation options (``metrics`` is overridden by ``metrics``).
        on_level: progress callback ``(done, total, preset)``.
    """
    if not hr_paths:
        raise InputError("the sweep needs at least one HR image")
    names = [get_metric(m).name for m in metrics]
    base = opts or EvalOptions()
    opts = EvalOptions(tuple(names), base.crop_border, False, None, base.device, base.seed)
    sources = [Path(p) for p in hr_paths]
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in sources]))
    results = []
    for n, level in enumerate(ladder):
        level_dir = work_dir / f"{level.index:02d}_{level.preset}"
        # overwrite: an LR set left by an earlier sweep with another seed must not be reused
        options = DegradeOptions(preset=level.preset, scale=scale, seed=seed, save_hr=True, overwrite=True)
        report = degrade_files(sources, root, level_dir, options)
        if report.failures:
            first = report.failures[0]
            raise InputError(f"the sweep could not degrade {first['source']}: {first['error']}")
        method(level_dir / "lr", level_dir / "SR", scale)
        results.append(evaluate_folder(level_dir / "SR", level_dir / "hr", opts))
        if on_level is not None:
            on_level(n + 1, len(ladder), level.preset)
    return SweepResult(method_name, list(ladder), results, names)

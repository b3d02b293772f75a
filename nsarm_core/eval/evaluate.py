"""Folder evaluation: score SR images against HR references (or alone) and write per-image CSV + summary JSON.

Implements the scoring side of NSARM Table 1 (docs/architecture.md P.1.2): per-image metric values, their mean and
their **per-image variance** (the paper's "Var." columns, lower = more robust). Because published numbers
move with the protocol (docs/architecture.md P.1.2 "Protocol sensitivity"), every summary records it: metric
variants, pyiqa version, colour space, bit depth, crop border, sizes and the resize used.

Shape legend: H, W = image height and width; images are RGB ``[H, W, 3]`` in 8-bit levels (see metrics.py).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nsarm_core import __version__
from nsarm_core.atomic import atomic_write_text
from nsarm_core.data.files import collect_images
from nsarm_core.data.io import read_image
from nsarm_core.errors import InputError, NSARMError
from nsarm_core.eval.benchmarks import DatasetPreset, ImagePair, PairProblem, pair_images
from nsarm_core.eval.metrics import (
    MetricSpec,
    Scorer,
    build_scorer,
    get_metric,
    parse_metric_list,
    pyiqa_version,
    to_8bit_levels,
)

logger = logging.getLogger(__name__)

CSV_FIXED_COLUMNS = (
    "key",
    "sr_path",
    "hr_path",
    "sr_height",
    "sr_width",
    "eval_height",
    "eval_width",
    "resized",
)
COLOUR_SPACE = (
    "PSNR/SSIM: Y of YCbCr (ITU-R BT.601 studio swing, BasicSR rgb2ycbcr y_only, test_y_channel=True); "
    "pyiqa metrics: RGB tensors in [0, 1]"
)
BIT_DEPTH = "8-bit: every image is quantised to round(rgb * 255) before scoring (BasicSR reads 8-bit)"
VARIANCE = "population variance over images (numpy var, ddof=0), as the paper's per-image 'Var.'"


@dataclass(frozen=True)
class EvalOptions:
    """Options of :func:`evaluate_pairs`.

    Attributes:
        metrics: catalogue names (metrics.METRICS).
        crop_border: pixels removed on every side before full-reference metrics.
        resize_sr: resize each SR image to its HR size (or to ``eval_size`` without HR) when sizes differ;
            otherwise a size mismatch is an error.
        eval_size: target side for no-reference resizing (presets: 512 real-world, 1024 DIV2K).
        device: torch device for pyiqa metrics.
        seed: seed for metrics with random test crops (MANIQA).
        max_pixels: decompression-bomb limit of each image read (``None``: the reader's default; 0: none).
    """

    metrics: tuple[str, ...] = ("psnr", "ssim")
    crop_border: int = 0
    resize_sr: bool = False
    eval_size: int | None = None
    device: str = "cpu"
    seed: int = 0
    max_pixels: int | None = None


@dataclass
class ImageScores:
    """Scores of one image.

    Attributes:
        key: pairing key (file stem without _LR4/_HR/... suffixes).
        sr_path: SR file.
        hr_path: HR file or None.
        sr_size: (H, W) of the SR file as read.
        eval_size: (H, W) at which it was scored.
        resized: True when the SR image was resized before scoring.
        scores: metric name -> value.
    """

    key: str
    sr_path: Path
    hr_path: Path | None
    sr_size: tuple[int, int]
    eval_size: tuple[int, int]
    resized: bool
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    """Per-image records plus the protocol they were produced under."""

    records: list[ImageScores]
    metrics: list[str]
    protocol: dict[str, Any]
    failures: list[PairProblem] = field(default_factory=list)
    """Images that could not be scored (unreadable, too small, clashing names), each with its reason."""
    source: Path | None = None
    """Where the scores came from (the score CSV or the SR folder), for messages."""

    def values(self, metric: str) -> np.ndarray:
        """``[N]`` float64 scores of one metric over the images (NaN where absent)."""
        return np.array([r.scores.get(metric, math.nan) for r in self.records], dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        """Mean, per-image variance, std, min, max and count per metric, plus the protocol."""
        stats: dict[str, Any] = {}
        for name in self.metrics:
            v = self.values(name)
            v = v[~np.isnan(v)]
            spec = get_metric(name)
            entry: dict[str, Any] = {"n": int(v.size), "lower_better": spec.lower_better, "type": spec.kind}
            if v.size:
                entry.update(
                    mean=float(np.mean(v)),
                    var=float(np.var(v)) if np.all(np.isfinite(v)) else math.nan,
                    std=float(np.std(v)) if np.all(np.isfinite(v)) else math.nan,
                    min=float(np.min(v)),
                    max=float(np.max(v)),
                    n_infinite=int(np.sum(np.isinf(v))),
                )
            stats[name] = entry
        out = {"n_images": len(self.records), "metrics": stats, "protocol": self.protocol}
        if self.failures:
            out["failed"] = [{"key": f.key, "path": str(f.path), "reason": f.reason} for f in self.failures]
        return out


def _read_levels(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as RGB 8-bit levels ``[H, W, 3]`` float64 (via nsarm_core.data.io)."""

    image = read_image(path) if max_pixels is None else read_image(path, max_pixels=max_pixels or None)
    return to_8bit_levels(image.rgb)


def resize_levels(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize 8-bit-level RGB ``[H, W, 3]`` to ``size_hw`` with PIL bicubic (the protocol's stated resize)."""
    from PIL import Image

    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
    out = pil.resize((size_hw[1], size_hw[0]), resample=Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.float64)


def _fit_size(
    sr: np.ndarray, hr: np.ndarray | None, pair: ImagePair, opts: EvalOptions
) -> tuple[np.ndarray, bool]:
    """Apply the size policy: equal sizes pass, otherwise resize (if allowed) or raise."""
    if hr is not None:
        target = hr.shape[:2]
    elif opts.eval_size is not None and opts.resize_sr:
        target = (
            (opts.eval_size, opts.eval_size)
            if sr.shape[0] == sr.shape[1]
            else _fit_short_side(sr, opts.eval_size)
        )
    else:
        return sr, False
    if sr.shape[:2] == tuple(target):
        return sr, False
    if not opts.resize_sr:
        scale = trimmed_scale(sr.shape[:2], tuple(target))
        if scale is not None:  # the LR was made from an HR cut to a multiple of the scale (nsarm degrade)
            raise InputError(
                f"size mismatch: SR {pair.sr} is {sr.shape[1]}x{sr.shape[0]} but HR {pair.hr} is "
                f"{target[1]}x{target[0]}, i.e. the HR cut to a multiple of {scale}, as `nsarm degrade` cuts it "
                "before downscaling; score against the cut HR images that `nsarm degrade --save-hr` writes to "
                "OUT/hr (--hr OUT/hr)"
            )
        raise InputError(
            f"size mismatch: SR {pair.sr} is {sr.shape[1]}x{sr.shape[0]} but HR {pair.hr} is "
            f"{target[1]}x{target[0]}; pass --resize-sr to resize SR images to the HR size (PIL bicubic, "
            "recorded in the protocol) or produce outputs at the HR size"
        )
    return resize_levels(sr, tuple(target)), True


def trimmed_scale(sr_hw: tuple[int, ...], hr_hw: tuple[int, ...], max_scale: int = 16) -> int | None:
    """The smallest factor k in 2..max_scale with SR = HR cut down to multiples of k, or None.

    ``nsarm degrade`` (and any Real-ESRGAN-style pipeline) cuts the HR to a multiple of the scale so LR pixels
    align with HR blocks; an SR of that LR is then a few pixels smaller than the uncut HR.
    """
    for k in range(2, max_scale + 1):
        if all(s == h - h % k for s, h in zip(sr_hw, hr_hw, strict=True)):
            return k
    return None


def _fit_short_side(img: np.ndarray, side: int) -> tuple[int, int]:
    h, w = img.shape[:2]
    s = side / min(h, w)
    return (round(h * s), round(w * s))


def build_protocol(
    specs: Sequence[MetricSpec],
    opts: EvalOptions,
    preset: DatasetPreset | None,
    records: Sequence[ImageScores],
) -> dict[str, Any]:
    """The protocol block of the summary (everything a reader needs to compare numbers)."""

    uses_pyiqa = any(s.backend == "pyiqa" for s in specs)
    versions: dict[str, Any] = {
        "nsarm": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    if uses_pyiqa:
        import torch

        versions.update(pyiqa=pyiqa_version(), torch=torch.__version__)
    return {
        "metrics": {
            s.name: {"variant": s.variant, "pyiqa_name": s.pyiqa_name, "backend": s.backend} for s in specs
        },
        "versions": versions,
        "colour_space": COLOUR_SPACE,
        "bit_depth": BIT_DEPTH,
        "crop_border": opts.crop_border,
        "resize": {
            "enabled": opts.resize_sr,
            "method": "PIL bicubic on 8-bit RGB" if opts.resize_sr else "none (sizes must match)",
            "eval_size": opts.eval_size,
            "n_resized": sum(r.resized for r in records),
        },
        "sizes": {
            "sr": sorted({f"{r.sr_size[1]}x{r.sr_size[0]}" for r in records}),
            "eval": sorted({f"{r.eval_size[1]}x{r.eval_size[0]}" for r in records}),
        },
        "variance": VARIANCE,
        "seed": opts.seed,
        "device": opts.device,
        "preset": preset.to_dict() if preset else None,
    }


def evaluate_pairs(
    pairs: Sequence[ImagePair],
    opts: EvalOptions,
    preset: DatasetPreset | None = None,
    on_image: Callable[[int, int, str], None] | None = None,
    scorers: dict[str, Scorer] | None = None,
) -> EvalResult:
    """Score every pair with every metric.

    Args:
        pairs: from :func:`nsarm_core.eval.benchmarks.pair_images`.
        opts: metrics and protocol options.
        preset: dataset preset, recorded in the protocol.
        on_image: progress callback ``(index, total, key)`` after each image.
        scorers: prebuilt scorers by metric name (tests; normally built from the catalogue).

    Returns:
        The per-image records and the protocol.

    Raises:
        InputError: a full-reference metric without HR, or a size mismatch without ``resize_sr``.
        MissingExtraError / WeightsNotFoundError: a pyiqa metric cannot be built.
    """
    specs = parse_metric_list(list(opts.metrics))
    has_hr = all(p.hr is not None for p in pairs)
    fr = [s.name for s in specs if s.kind == "FR"]
    if fr and not has_hr:
        raise InputError(
            f"full-reference metric(s) {', '.join(fr)} need HR references; pass --hr (or a preset with HR) "
            "or choose no-reference metrics"
        )
    scorers = dict(scorers or {})
    for s in specs:  # build all first, so a missing extra/weight fails before any image is read
        if s.name not in scorers:
            scorers[s.name] = build_scorer(
                s, crop_border=opts.crop_border, device=opts.device, seed=opts.seed
            )
    records: list[ImageScores] = []
    failures: list[PairProblem] = []
    for i, pair in enumerate(pairs):
        try:
            records.append(_score_pair(pair, specs, scorers, opts))
            logger.debug("%s: %s", pair.key, records[-1].scores)
        except NSARMError as exc:
            # One bad image (unreadable, too small for SSIM, wrong size) must not cost the scores of the others.
            failures.append(PairProblem(pair.key, pair.sr, _naming(exc, pair)))
            logger.info("not scored: %s", failures[-1].reason)  # listed by the caller (result.failures)
        if on_image is not None:
            on_image(i + 1, len(pairs), pair.key)
    protocol = build_protocol(specs, opts, preset, records)
    return EvalResult(records, [s.name for s in specs], protocol, failures)


def _score_pair(
    pair: ImagePair, specs: Sequence[MetricSpec], scorers: dict[str, Scorer], opts: EvalOptions
) -> ImageScores:
    sr = _read_levels(pair.sr, opts.max_pixels)
    hr = _read_levels(pair.hr, opts.max_pixels) if pair.hr is not None else None
    sr_size = (int(sr.shape[0]), int(sr.shape[1]))
    sr_eval, resized = _fit_size(sr, hr, pair, opts)
    rec = ImageScores(
        pair.key, pair.sr, pair.hr, sr_size, (int(sr_eval.shape[0]), int(sr_eval.shape[1])), resized
    )
    for s in specs:
        rec.scores[s.name] = scorers[s.name](sr_eval, hr)
    return rec


def _naming(exc: Exception, pair: ImagePair) -> str:
    """The error's message, prefixed with the SR file when it does not name it (metric errors do not)."""
    text = " ".join(str(exc).split())
    return (
        text
        if str(pair.sr) in text or (pair.hr is not None and str(pair.hr) in text)
        else f"{pair.sr}: {text}"
    )


def list_images(folder: str | Path) -> list[Path]:
    """Image files in ``folder`` (via nsarm_core.data.files.collect_images, non-recursive, sorted)."""

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of images")
    return sorted(Path(p) for p in collect_images([folder], recursive=False))


def evaluate_folder(
    sr_dir: str | Path,
    hr_dir: str | Path | None,
    opts: EvalOptions,
    preset: DatasetPreset | None = None,
    strict: bool = True,
    on_image: Callable[[int, int, str], None] | None = None,
) -> EvalResult:
    """Pair ``sr_dir`` with ``hr_dir`` by stem and score them (see :func:`evaluate_pairs`)."""
    sr_files = list_images(sr_dir)
    hr_files = list_images(hr_dir) if hr_dir is not None else None
    problems: list[PairProblem] = []
    pairs = pair_images(sr_files, hr_files, strict=strict, problems=problems)
    result = evaluate_pairs(pairs, opts, preset=preset, on_image=on_image)
    result.failures[:0] = problems
    result.source = Path(sr_dir)
    return result


# ---------------------------------------------------------------------------------------------------------
# CSV / JSON
# ---------------------------------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """Replace inf/NaN (not valid JSON) by the strings "inf", "-inf", "nan"; recurse into containers."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def scores_csv_text(result: EvalResult, base_dir: Path | None = None) -> str:
    """The per-image CSV: fixed columns (``CSV_FIXED_COLUMNS``) then one column per metric (full precision).

    With ``base_dir`` (the CSV's folder), image paths are written relative to it so the folder can be moved
    together with the images; :func:`load_scores_csv` resolves them against the CSV's folder.
    """

    def rel(p: Path | None) -> str:
        if p is None:
            return ""
        return os.path.relpath(Path(p).resolve(), base_dir.resolve()) if base_dir is not None else str(p)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*CSV_FIXED_COLUMNS, *result.metrics])
    for r in result.records:
        writer.writerow(
            [
                r.key,
                rel(r.sr_path),
                rel(r.hr_path),
                r.sr_size[0],
                r.sr_size[1],
                r.eval_size[0],
                r.eval_size[1],
                int(r.resized),
                *[repr(float(r.scores[m])) for m in result.metrics],
            ]
        )
    return buf.getvalue()


def write_outputs(result: EvalResult, out_dir: str | Path, stem: str = "scores") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (per image) and ``<stem>.summary.json`` (means, variances, protocol) atomically."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{stem}.csv"
    json_path = out / f"{stem}.summary.json"
    atomic_write_text(csv_path, scores_csv_text(result, base_dir=out))
    summary = result.summary() | {"csv": str(csv_path)}
    atomic_write_text(json_path, json.dumps(json_safe(summary), indent=2) + "\n")
    return csv_path, json_path


def load_scores_csv(path: str | Path) -> EvalResult:
    """Read a CSV written by :func:`write_outputs` (protocol from its sibling summary JSON when present).

    Relative SR/HR paths are resolved against the CSV's folder.

    Raises:
        InputError: missing file, missing columns, or a value that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"score file {path} does not exist (write one with `nsarm evaluate ... --out DIR`)")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            records, metric_cols = _read_score_rows(path, csv.DictReader(fh))
    except UnicodeDecodeError as exc:
        raise InputError(
            f"score file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV"
        ) from exc
    except csv.Error as exc:
        raise InputError(f"score file {path} is not a readable CSV ({exc})") from exc
    if not records:
        raise InputError(f"{path} holds no image rows")
    seen: dict[str, int] = {}
    for r in records:
        seen[r.key] = seen.get(r.key, 0) + 1
    dupes = [k for k, n in seen.items() if n > 1]
    if dupes:
        # Each image must count once in means, variances and the robustness counts.
        raise InputError(
            f"{path} lists image key(s) more than once: {', '.join(dupes[:5])}"
            + (f" and {len(dupes) - 5} more" if len(dupes) > 5 else "")
            + "; keep one row per image"
        )
    summary_path = path.with_name(path.stem + ".summary.json")
    protocol: dict[str, Any] = {}
    if summary_path.is_file():
        try:
            protocol = json.loads(summary_path.read_text(encoding="utf-8")).get("protocol", {})
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise InputError(
                f"summary {summary_path} next to {path.name} is not a JSON object ({exc}); delete or rewrite it"
            ) from exc
    return EvalResult(records, metric_cols, protocol, source=path)


def _read_score_rows(path: Path, reader: csv.DictReader) -> tuple[list[ImageScores], list[str]]:
    header = list(reader.fieldnames or [])
    if "key" not in header:
        raise InputError(f"{path}: not an nsarm score CSV (no 'key' column; columns: {', '.join(header)})")
    metric_cols = [c for c in header if c not in CSV_FIXED_COLUMNS]
    records = []
    for line, row in enumerate(reader, start=2):
        values: dict[str, float] = {}
        for col in [*metric_cols, "sr_height", "sr_width", "eval_height", "eval_width"]:
            raw = row.get(col)
            if col not in metric_cols and not raw:
                values[col] = 0.0  # sizes are optional (hand-made CSVs)
                continue
            try:
                values[col] = float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                raise InputError(f"{path}:{line}: column '{col}' holds {raw!r}, expected a number") from exc
        sr = _resolve(path.parent, row.get("sr_path") or "")
        hr = _resolve(path.parent, row.get("hr_path") or "") if row.get("hr_path") else None
        sr_size = (int(values["sr_height"]), int(values["sr_width"]))
        ev_size = (int(values["eval_height"]), int(values["eval_width"]))
        scores = {m: values[m] for m in metric_cols}
        records.append(ImageScores(row["key"], sr, hr, sr_size, ev_size, row.get("resized") == "1", scores))
    return records, metric_cols


def _resolve(base: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() or not p else base / path

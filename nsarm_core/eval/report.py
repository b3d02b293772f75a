"""Robustness report: sorted-score curves (NSARM Fig. 4), sweep plots, worst images, HTML and Markdown.

Fig. 4 of the paper plots, per method, the per-image composite score sorted ascending, with the global mean as a
dashed line, and lists the Deficient / Poor / Collapse counts of Eq. 7 (docs/architecture.md P.1.5–P.1.6). The HTML page
is self-contained: plots and image thumbnails are embedded as base64 data URIs, so it can be mailed or archived
as one file. matplotlib is imported lazily (``pip install 'nsarm[report]'``) and used through its
object-oriented API only, so the global pyplot state and backend are never touched. Without matplotlib the
report is written without its plots, and says so and how to get them (a base install must still get a report).

Shape legend: N = images of one method; L = severity levels; thumbnails are at most ``THUMB_SIDE`` pixels.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nsarm_core.atomic import atomic_write_text
from nsarm_core.errors import MissingExtraError, missing_extra
from nsarm_core.eval.metrics import get_metric
from nsarm_core.eval.robustness import RobustnessResult, SweepResult

logger = logging.getLogger(__name__)

THUMB_SIDE = 256
_LINESTYLES = ("--", ":", "-.", (0, (1, 4)), (0, (5, 2, 1, 2)))


def _figure(width: float = 7.0, height: float = 4.2) -> Any:
    """A matplotlib Figure (no pyplot), or MissingExtraError naming the extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtraError(str(missing_extra("matplotlib", "report", "Robustness plots"))) from exc
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig: Any, out_stem: Path) -> list[Path]:
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, format=p.suffix[1:])
    return paths


def plot_sorted_curves(result: RobustnessResult, out_stem: Path) -> list[Path]:
    """Fig. 4-style plot: each method's composite scores sorted ascending, mu_G and the Eq. 7 thresholds.

    Args:
        result: from :func:`nsarm_core.eval.robustness.analyse`.
        out_stem: path without suffix; ``.png`` and ``.svg`` are written.

    Returns:
        The written PNG and SVG paths.
    """
    fig = _figure()
    ax = fig.add_subplot()
    for ms in result.methods:
        ys = np.sort(ms.composite)  # [N] ascending, as the paper's curves
        xs = np.arange(1, ys.size + 1)
        c = ", ".join(f"{lab[0]}{n}" for lab, n in result.counts[ms.name].items())
        ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.4, label=f"{ms.name} ({c})")
    for i, (r, lab) in enumerate(zip(result.thresholds.ratios, result.thresholds.labels, strict=True)):
        y = r * result.global_mean
        ax.axhline(y, color="0.3", linewidth=1.0, linestyle=_LINESTYLES[i % len(_LINESTYLES)])
        ax.annotate(f"{lab} < {r:g}·μG = {y:.3f}", (0.99, y), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize=8, color="0.25")  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("image rank (sorted by score)")
    ax.set_ylabel("composite score: " + " + ".join(result.composite_metrics) + " (normalised mean)")
    ax.set_title(f"Per-image scores, sorted (μG = {result.global_mean:.4f})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out_stem)


def plot_sweep(sweep: SweepResult, out_stem: Path) -> list[Path]:
    """Score vs degradation severity: the composite and each metric's mean per level (PNG + SVG)."""
    fig = _figure()
    ax = fig.add_subplot()
    xs = np.arange(len(sweep.levels))
    ax.plot(xs, sweep.curve(None), marker="o", linewidth=2.0, label="composite")
    for m in sweep.composite_metrics:
        if len(sweep.composite_metrics) > 1:
            ax.plot(xs, get_metric(m).normalise(sweep.curve(m)), marker=".", linewidth=1.0, alpha=0.8,
                    label=f"{m} ({get_metric(m).norm_rule})")  # fmt: skip
    ax.set_xticks(xs, [lvl.preset for lvl in sweep.levels])
    ax.set_xlabel("degradation severity (preset)")
    ax.set_ylabel("mean normalised score")
    ax.set_title(f"{sweep.method}: score vs degradation severity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_stem)


def image_data_uri(path: Path, max_side: int = THUMB_SIDE) -> str | None:
    """A PNG thumbnail of ``path`` as a ``data:`` URI, or None when the file cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, UnidentifiedImageError) as exc:
        logger.warning("cannot embed %s in the report: %s", path, exc)
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_data_uri(path: Path) -> str:
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@dataclass
class ReportFiles:
    """Files written by :func:`write_report`."""

    html: Path
    markdown: Path
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;padding:0 2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.row{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:1em}figure{margin:0;text-align:center;font-size:12px}
figure img{display:block;width:200px;height:auto;image-rendering:pixelated;border:1px solid #ccc}.missing{width:200px;height:120px;background:#eee;
display:flex;align-items:center;justify-content:center}img.plot{max-width:100%}code{background:#f6f6f6}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 1000 else f"{x:.1f}"


def _tables(result: RobustnessResult) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """Header/rows of the counts table and of the per-metric mean/variance table."""
    labels = list(result.thresholds.labels)
    h1 = ["method", "images", "composite mean", "composite var", *labels]
    rows1 = []
    for ms in result.methods:
        c = result.counts[ms.name]
        rows1.append([ms.name, str(ms.composite.size), _fmt(float(np.mean(ms.composite))),
                      f"{float(np.var(ms.composite)):.5f}", *[str(c[lab]) for lab in labels]])  # fmt: skip
    metrics = sorted({m for s in result.metric_stats.values() for m in s})
    h2 = ["method", *[f"{m} mean / var" for m in metrics]]
    rows2 = []
    for ms in result.methods:
        st = result.metric_stats.get(ms.name, {})
        rows2.append(
            [ms.name, *[f"{_fmt(st[m]['mean'])} / {st[m]['var']:.4g}" if m in st else "–" for m in metrics]]
        )
    return h1, rows1, h2, rows2


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(
    result: RobustnessResult,
    out_dir: Path,
    worst_k: int = 4,
    sweep: SweepResult | None = None,
    title: str = "NSARM robustness report",
    protocol: dict[str, Any] | None = None,
) -> ReportFiles:
    """Write ``robustness.html`` (self-contained), ``robustness.md`` and the plots into ``out_dir``.

    Args:
        result: composite scores and Eq. 7 counts.
        out_dir: output folder (created).
        worst_k: thumbnails of the k lowest-scoring images of each method, side by side (0 = none).
        sweep: an optional severity sweep to plot.
        title: page title.
        protocol: evaluation protocol to print (e.g. from a summary JSON).

    Returns:
        The written files; ``notes`` says what was left out (the plots, without matplotlib).
    """
    created = not out_dir.exists()
    try:
        return _write_report(result, out_dir, worst_k, sweep, title, protocol)
    except BaseException:
        if created:  # a folder of plots without the report (or an empty one) would read as a finished report
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _plots_or_note(make: Any, *args: Any) -> tuple[list[Path], str | None]:
    """``make(*args)``'s plot files, or no files and the reason (matplotlib is an optional extra)."""
    try:
        return make(*args), None
    except MissingExtraError as exc:
        return [], str(exc)


def _write_report(
    result: RobustnessResult,
    out_dir: Path,
    worst_k: int,
    sweep: SweepResult | None,
    title: str,
    protocol: dict[str, Any] | None,
) -> ReportFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots, missing = _plots_or_note(plot_sorted_curves, result, out_dir / "sorted_scores")
    sweep_plots: list[Path] = []
    if sweep is not None and missing is None:
        sweep_plots, missing = _plots_or_note(plot_sweep, sweep, out_dir / "sweep")
    notes = []
    if missing is not None:
        notes.append(f"plots left out: {missing}")
        logger.warning("report without plots: %s", missing)
    h1, rows1, h2, rows2 = _tables(result)
    thr = ", ".join(f"{lab}: score < {r:g}·μG = {r * result.global_mean:.4f}"
                    for r, lab in zip(result.thresholds.ratios, result.thresholds.labels, strict=True))  # fmt: skip
    comp = " + ".join(result.composite_metrics)

    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>",
        f"<p>Composite score per image = mean of <code>{_esc(comp)}</code>, each mapped to higher-is-better "
        f"({_esc(', '.join(f'{m}: {r}' for m, r in result.to_dict()['composite']['normalisation'].items()))}). "
        f"Global mean over all images of all methods μG = <b>{result.global_mean:.4f}</b>. Eq. 7: {_esc(thr)}.</p>",
        "<h2>Deficient / Poor / Collapse counts</h2>",
        _html_table(h1, rows1),
        "<h2>Per-metric mean and per-image variance</h2>",
        _html_table(h2, rows2),
        "<h2>Sorted scores</h2>",
        f"<img class='plot' alt='sorted composite scores' src='{_file_data_uri(plots[0])}'>"
        if plots
        else f"<p class='note'>No plot: {_esc(missing)}</p>",
    ]
    md = [
        f"# {title}",
        "",
        f"Composite = mean of `{comp}` (normalised to higher-is-better). μG = {result.global_mean:.4f}. {thr}.",
        "",
        "## Deficient / Poor / Collapse counts",
        "",
        _md_table(h1, rows1),
        "",
        "## Per-metric mean and per-image variance",
        "",
        _md_table(h2, rows2),
        "",
        "## Sorted scores",
        "",
        f"![sorted composite scores]({plots[0].name}) ([SVG]({plots[1].name}))"
        if plots
        else f"No plot: {missing}",
        "",
    ]
    if sweep is not None:
        parts.append("<h2>Score vs degradation severity</h2>")
        if sweep_plots:
            parts.append(f"<img class='plot' alt='severity sweep' src='{_file_data_uri(sweep_plots[0])}'>")
        sd = sweep.to_dict()
        srows = [
            [str(lv["level"]), lv["preset"], _fmt(lv["composite_mean"]), f"{lv['composite_var']:.5f}"]
            for lv in sd["levels"]
        ]
        sh = ["level", "preset", "composite mean", "composite var"]
        parts.append(_html_table(sh, srows))
        md += [
            "## Score vs degradation severity",
            "",
            f"![severity sweep]({sweep_plots[0].name})" if sweep_plots else f"No plot: {missing}",
            "",
            _md_table(sh, srows),
            "",
        ]
    if worst_k > 0:
        parts.append(f"<h2>Worst {worst_k} images per method</h2>")
        md += [f"## Worst {worst_k} images per method", ""]
        for ms in result.methods:
            figs = []
            for key, score, path in ms.worst(worst_k):
                uri = image_data_uri(path)
                img = (f"<img alt='{_esc(key)}' src='{uri}'>" if uri
                       else f"<div class='missing'>missing: {_esc(path.name)}</div>")  # fmt: skip
                figs.append(f"<figure>{img}<figcaption>{_esc(key)}<br>{score:.4f}</figcaption></figure>")
            parts.append(f"<h3>{_esc(ms.name)}</h3><div class='row'>{''.join(figs)}</div>")
            md.append(f"- **{ms.name}**: " + ", ".join(f"{k} ({s:.4f})" for k, s, _ in ms.worst(worst_k)))
        md.append("")
    if protocol:
        import json

        parts += ["<h2>Protocol</h2>", f"<pre>{_esc(json.dumps(protocol, indent=2, default=str))}</pre>"]
        md += ["## Protocol", "", "```json", json.dumps(protocol, indent=2, default=str), "```", ""]
    parts.append("</body></html>")
    html_path = out_dir / "robustness.html"
    md_path = out_dir / "robustness.md"
    atomic_write_text(html_path, "\n".join(parts) + "\n")
    atomic_write_text(md_path, "\n".join(md))
    return ReportFiles(html_path, md_path, plots + sweep_plots, notes)

"""Robustness report: plots, self-contained HTML, Markdown; the HTML renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.data.io import read_image, write_image
from nsarm_core.errors import MissingExtraError
from nsarm_core.eval import report as REP
from nsarm_core.eval import robustness as R
from nsarm_core.eval.evaluate import EvalResult, ImageScores

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _robustness(tmp_path: Path) -> R.RobustnessResult:
    """Two methods x 5 images with real thumbnails (one file missing on purpose)."""
    rng = np.random.default_rng(0)
    results = {}
    for m, base in (("good", 0.8), ("shaky", 0.6)):
        recs = []
        for i in range(5):
            p = tmp_path / m / f"im{i}.png"
            if not (m == "shaky" and i == 4):
                write_image(p, rng.random((40, 48, 3)).astype(np.float32))
            s = base + 0.05 * i * (1 if m == "good" else -1)
            recs.append(
                ImageScores(f"im{i}", p, None, (40, 48), (40, 48), False, {"ssim": s, "lpips": 1 - s})
            )
        results[m] = EvalResult(recs, ["ssim", "lpips"], {"crop_border": 0})
    return R.analyse(results, ["ssim", "lpips"])


def test_report_files_are_written_and_self_contained(tmp_path: Path) -> None:
    rob = _robustness(tmp_path)
    files = REP.write_report(rob, tmp_path / "rep", worst_k=3, protocol={"crop_border": 0})
    for p in [files.html, files.markdown, *files.plots]:
        assert p.is_file() and p.stat().st_size > 0
    assert {p.suffix for p in files.plots} == {".png", ".svg"}
    png = read_image(tmp_path / "rep" / "sorted_scores.png").rgb
    assert png.shape[0] > 200 and png.std() > 0.05  # a real plot, not a blank canvas
    html = files.html.read_text()
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) == 1 + 2 * 3 - 1  # plot + 3 worst of each method, minus the missing file
    assert all(s.startswith("data:image/png;base64,") for s in srcs)  # no external references
    assert "missing: im4.png" in html and "Deficient" in html and "μG" in html
    md = files.markdown.read_text()
    assert "| method | images | composite mean | composite var | Deficient | Poor | Collapse |" in md
    assert "![sorted composite scores](sorted_scores.png)" in md and "**shaky**: im4" in md


def test_report_with_sweep_plot(tmp_path: Path) -> None:
    rob = _robustness(tmp_path)
    levels = [R.SeverityLevel(0, "bicubic"), R.SeverityLevel(1, "light")]
    sweep = R.SweepResult("bicubic", levels, [m.result for m in rob.methods], ["ssim", "lpips"])
    files = REP.write_report(rob, tmp_path / "rep", worst_k=0, sweep=sweep)
    assert (tmp_path / "rep" / "sweep.png").is_file() and (tmp_path / "rep" / "sweep.svg").is_file()
    assert "Score vs degradation severity" in files.markdown.read_text()
    assert files.html.read_text().count("data:image/png;base64,") == 2


def test_missing_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingExtraError, match=r"nsarm\[report\]"):
        REP.plot_sorted_curves(_robustness(tmp_path), tmp_path / "x")


def test_cli_report(tmp_path: Path) -> None:
    for m, vals in (("A", [0.9, 0.8, 0.7]), ("B", [0.5, 0.95, 0.6])):
        for i, v in enumerate(vals):
            write_image(tmp_path / m / f"i{i}.png", np.full((16, 16, 3), v, np.float32))
        lines = ["key,sr_path,hr_path,ssim"] + [f"i{i},{m}/i{i}.png,,{v}" for i, v in enumerate(vals)]
        (tmp_path / f"{m}.csv").write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(app, ["robustness", str(tmp_path / "A.csv"), str(tmp_path / "B.csv"), "-m", "ssim",
                                 "--report", str(tmp_path / "rep"), "--worst-k", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output + str(r.exception)
    html = (tmp_path / "rep" / "robustness.html").read_text()
    assert html.count("<figure>") == 4 and "missing:" not in html  # relative paths resolved next to the CSV


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    rob = _robustness(tmp_path)
    files = REP.write_report(rob, tmp_path / "rep", worst_k=3)
    # Probe copy: after load, record how many <img> failed to decode into the DOM.
    probe = files.html.with_name("probe.html")
    script = (
        "<script>window.addEventListener('load',()=>{const b=[...document.images].filter("
        "i=>!i.complete||i.naturalWidth===0).length;document.body.setAttribute('data-broken',b);"
        "document.body.setAttribute('data-images',document.images.length);});</script>"
    )
    probe.write_text(files.html.read_text().replace("</body>", script + "</body>"))
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=3000",
    ]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-broken="0"' in dom.stdout and 'data-images="6"' in dom.stdout
    shot = tmp_path / "shot.png"
    run = subprocess.run([*flags, "--window-size=1200,1400", f"--screenshot={shot}", files.html.as_uri()],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    px = read_image(shot).rgb
    assert px.shape[:2] == (1400, 1200)
    assert px.std() > 0.05 and (px < 0.5).mean() > 0.005  # not blank: text, tables and plots were drawn

"""`nsarm evaluate --model`: run a model on an LR folder, then score it (here the bicubic baseline)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from nsarm_cli.main import app


def test_evaluate_runs_a_model_first(tmp_path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    for i in range(2):
        hr = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(hr).save(tmp_path / "hr" / f"img{i}.png")
        Image.fromarray(hr).resize((8, 8), Image.Resampling.BICUBIC).save(tmp_path / "lr" / f"img{i}.png")
    result = CliRunner().invoke(
        app,
        ["evaluate", "--model", "bicubic", "--lr", str(tmp_path / "lr"), "--hr", str(tmp_path / "hr"),
         "-o", str(tmp_path / "eval"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    text = json.dumps(summary)
    assert "psnr" in text and "ssim" in text
    assert (tmp_path / "eval" / "scores.csv").is_file()

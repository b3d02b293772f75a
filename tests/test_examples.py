"""The scripts in examples/ run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_degrade_one_image(tmp_path) -> None:
    out = tmp_path / "coffee_lr.png"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "degrade_one_image.py"),
            str(ROOT / "examples/photos/coffee.png"),
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert Image.open(out).size == (60, 40)
    assert out.with_suffix(".json").is_file()

"""scripts/prefix_ceiling.py: the oracle ceilings of an NSARM geometry (docs/model_card.md, "Why")."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prefix_ceiling", ROOT / "scripts" / "prefix_ceiling.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prefix_ceiling_on_an_example_photo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    with Image.open(ROOT / "examples" / "photos" / "astronaut.png") as im:
        hr = im.convert("RGB").resize((256, 256), Image.LANCZOS)
    hr.save(hr_dir / "a.png")
    hr.resize((64, 64), Image.BICUBIC).save(lr_dir / "a.png")
    out = tmp_path / "ceiling.json"
    assert _script().main(["nsarm-tiny", str(hr_dir), str(lr_dir), "--json-out", str(out)]) == 0
    mean = json.loads(out.read_text())["mean"]
    assert set(mean) == {"gt_prefix", "gt_prefix_ar", "gt_all", "net_prefix", "bicubic"}
    assert all(np.isfinite(v) for s in mean.values() for v in s.values())
    # All scales hold more of the photo than the first K_t = 3, and clean bicubic keeps more than the prefix.
    assert mean["gt_all"]["psnr"] > mean["gt_prefix"]["psnr"] + 1.0
    assert mean["bicubic"]["ssim"] > mean["gt_prefix"]["ssim"]
    assert "gt_prefix" in capsys.readouterr().out


def test_prefix_ceiling_names_a_missing_lr(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    Image.new("RGB", (256, 256)).save(hr_dir / "a.png")
    with pytest.raises(SystemExit, match="no LR image .*a.png"):
        _script().main(["nsarm-tiny", str(hr_dir), str(tmp_path)])


def test_prefix_ceiling_bad_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _script().main(["no-such-model", str(tmp_path), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown model 'no-such-model'") and "\n" not in err

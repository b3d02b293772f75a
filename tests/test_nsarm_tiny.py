"""The bundled nsarm-tiny: registered with its checksum, loads offline, runs the README's main command, and is
a trained model (its output is much closer to the photo than the same network with random weights).

The quality check uses an example photo (``examples/photos``, not a training photo) as the HR image, degraded
x4 with the light preset at seed 0; the held-out photos of the model card need the Debian packages and live in
scripts/evaluate_nsarm_tiny.sh instead. v2's controllable feature wrapping is what keeps the content: at its
default fidelity the output is far closer to the photo than at w = 0 (the paper's decoder path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core import weights as W
from nsarm_core.models.nsarm import NSARMConfig, get_preset

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "nsarm_core" / "assets" / "nsarm-tiny"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bundled_weights_match_the_registered_checksum_and_preset() -> None:
    spec = W.get_model_spec("nsarm-tiny")
    ckpt = spec.files["checkpoint"]
    assert ckpt.bundled and ckpt.sha256 is not None
    data = (ASSETS / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == ckpt.sha256
    assert len(data) < 40 * 2**20  # "a few tens of MB at most"
    config = NSARMConfig.from_dict(json.loads((ASSETS / "config.json").read_text()))
    preset = get_preset("nsarm-tiny")
    assert (config.vae, config.transformer, config.transform_net) == (
        preset.vae,
        preset.transformer,
        preset.transform_net,
    )
    assert config.schedule.token_grids == preset.schedule.token_grids and config.text_encoder is None
    # v2: the paper's networks plus CFW, whose default w was chosen on training photos (model card).
    assert config.cfw is not None and config.cfw.default_fidelity == 0.75


@pytest.mark.slow  # the README command on every example photo: ~45 s on 2 loaded cores
def test_readme_main_command_upscales_the_examples_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "upscaled"
    res = CliRunner().invoke(app, ["upscale", "examples/", "--scale", "4", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    photos = sorted((ROOT / "examples" / "photos").glob("*.png"))
    for photo in photos:
        with Image.open(photo) as src, Image.open(out / "photos" / photo.name) as up:
            assert up.size == (src.width * 4, src.height * 4)


def _levels(x: torch.Tensor) -> Any:
    from nsarm_core.data.io import from_tensor
    from nsarm_core.eval.metrics import to_8bit_levels

    return to_8bit_levels(from_tensor(x))  # [H, W, 3] in 8-bit levels, as the saved PNGs


def test_nsarm_tiny_is_trained_and_deterministic() -> None:
    import numpy as np

    from nsarm_core.data.degrade import apply_pair, sample_params
    from nsarm_core.data.degrade import get_preset as degradation_preset
    from nsarm_core.data.io import read_image, to_tensor
    from nsarm_core.eval.metrics import psnr, ssim
    from nsarm_core.models.nsarm import NSARM
    from nsarm_core.pipeline import SRPipeline, load_pipeline

    hr = to_tensor(read_image(ROOT / "examples" / "photos" / "astronaut.png").rgb)  # [1, 3, 192, 192]
    params = sample_params(degradation_preset("light"), 4, np.random.default_rng(0))
    _, lr = apply_pair(hr, params)  # [1, 3, 48, 48] in [0, 1]
    pipe = load_pipeline("nsarm-tiny", device="cpu", dtype="fp32")
    sr = pipe.upscale(lr, seed=0).image
    assert torch.equal(sr, pipe.upscale(lr, seed=0).image)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = NSARM(pipe.model.config).eval()
    random_sr = SRPipeline(untrained, None, device="cpu").upscale(lr, seed=0).image
    ref = _levels(hr)
    trained, random = ssim(_levels(sr), ref), ssim(_levels(random_sr), ref)
    # measured (v2.1 weights): SSIM 0.441 at the default w = 0.75 (PSNR 18.20 dB) vs 0.08 with random weights;
    # bicubic 0.414 (18.01 dB); colour fix in all
    assert trained > random + 0.15, (trained, random, psnr(_levels(sr), ref), psnr(_levels(random_sr), ref))
    paper_path = pipe.upscale(lr, seed=0, settings=dataclasses.replace(pipe.settings, fidelity=0.0)).image
    # measured: SSIM 0.305 at w = 0 (PSNR 14.70 dB): without CFW the content is generated, not kept
    assert trained > ssim(_levels(paper_path), ref) + 0.08


def test_upscale_window_gives_one_output_for_both_memory_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from nsarm_core.data.io import read_image
    from nsarm_core.pipeline import load_pipeline

    pipe = load_pipeline("nsarm-tiny", device="cpu", dtype="fp32")
    h, w = pipe.config.lr_size
    hwc = np.ascontiguousarray(read_image(ROOT / "examples" / "photos" / "astronaut.png").rgb[:h, :w])
    channels_last = torch.from_numpy(hwc).permute(2, 0, 1)[None]  # what a library caller naturally writes
    assert (
        channels_last.is_contiguous(memory_format=torch.channels_last) and not channels_last.is_contiguous()
    )
    nchw = channels_last.contiguous()

    seen: list[bool] = []
    encode = pipe.model.vae.encode_raw

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.is_contiguous())
        return encode(x)

    monkeypatch.setattr(pipe.model.vae, "encode_raw", spy)
    a = pipe.upscale_window(nchw, seed=0)
    b = pipe.upscale_window(channels_last, seed=0)
    # The encoder sees the same (NCHW) layout either way, so the output is the same to the bit.
    assert seen == [True, True]
    assert torch.equal(a, b)

"""The tokenizer recipe: loss terms on hand-checked cases, straight-through gradients, 2 steps + exact resume,
export + held-out PSNR."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nsarm_core.errors import ConfigError, InputError
from nsarm_core.train.config import TrainConfig
from nsarm_core.train.loop import train
from nsarm_core.train.tokenizer import (
    TokenizerRecipe,
    TokenizerSettings,
    TrainingVAE,
    bsq_entropy_terms,
    commitment_loss,
    evaluate_reconstruction,
    gradient_l1,
)

pytest.importorskip("accelerate")


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _images(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(root / f"{i}.png")
    return root


def test_entropy_terms_hand_cases() -> None:
    d = 4
    # Every position the same sign pattern, far from 0: decided bits (H_sample ~ 0) and no bit diversity.
    same = torch.ones(2, d, 3, 3)
    h_s, h_c = bsq_entropy_terms(same, inv_temperature=100.0)
    assert float(h_s) < 1e-4 and float(h_c) < 1e-4
    # Half the positions +, half -, decided: H_sample ~ 0 but every bit is used half the time: H_codebook = d ln 2.
    mixed = torch.ones(2, d, 2, 2)
    mixed[:, :, 0] = -1
    h_s, h_c = bsq_entropy_terms(mixed, inv_temperature=100.0)
    assert float(h_s) < 1e-4 and float(h_c) == pytest.approx(d * math.log(2), rel=1e-4)
    # A zero latent is undecided everywhere: H_sample = d ln 2 per position.
    h_s, _ = bsq_entropy_terms(torch.zeros(1, d, 2, 2), inv_temperature=100.0)
    assert float(h_s) == pytest.approx(d * math.log(2), rel=1e-4)


def test_commitment_and_edge_terms() -> None:
    from nsarm_core.models.bsq import bsq_quantize

    r = torch.randn(2, 6, 4, 4)
    q, _ = bsq_quantize(r)
    assert float(commitment_loss(q * 3.0, q)) == pytest.approx(0.0, abs=1e-10)  # already on a code vector
    z = torch.nn.functional.normalize(r, dim=1)
    assert float(commitment_loss(r, q)) == pytest.approx(float(((z - q) ** 2).sum(1).mean()), rel=1e-6)
    x = torch.rand(1, 3, 8, 8)
    assert float(gradient_l1(x, x + 0.25)) < 1e-6  # a constant offset has no edges (float rounding only)
    assert float(gradient_l1(x, torch.zeros_like(x))) > 0


def test_straight_through_reaches_the_encoder() -> None:
    from nsarm_core.models.vae import build_vae

    torch.manual_seed(0)
    vae = build_vae("tiny-d14")
    model = TrainingVAE(vae, [(2, 2), (4, 4), (8, 8)])
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    rec, scales = model(x)
    assert rec.shape == x.shape and len(scales.bits) == 3
    (rec - x).abs().mean().backward()
    assert float(vae.encoder.conv_in.conv.weight.grad.abs().sum()) > 0


def test_settings_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'commit_weight'"):
        TokenizerSettings.from_stage({"hr_dirs": ["x"], "comit_weight": 1})
    with pytest.raises(ConfigError, match="hr_dirs"):
        TokenizerSettings.from_stage({})
    with pytest.raises(ConfigError, match="pixel loss"):
        TokenizerSettings.from_stage({"hr_dirs": ["x"], "l1_weight": 0, "l2_weight": 0})


def _cfg(tmp_path: Path, hr: Path, val: Path, **kw: object) -> TrainConfig:
    stage = {
        "schedule": "tiny-64", "vae": "tiny-d14", "hr_dirs": [str(hr)], "val_dir": str(val),
        "entropy_weight": 0.01, "grad_weight": 1.0,
    }  # fmt: skip
    base = dict(
        run_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, lr=1e-3, checkpoint_every=1, log_every=1,
        num_workers=0, progress=False, tensorboard=False, cpu=True, stage=stage,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_two_steps_resume_export_and_psnr(tmp_path: Path) -> None:
    from nsarm_core.models.vae import BSQVAE

    hr = _images(tmp_path / "hr", 4, (80, 72))
    val = _images(tmp_path / "val", 2, (64, 64), seed=1)
    cfg = _cfg(tmp_path, hr, val)
    recipe = TokenizerRecipe.from_config(cfg)
    full = train(recipe, cfg)
    assert len(full.losses) == 2 and all(np.isfinite(full.losses))
    assert {"l1", "l2", "commit", "h_sample", "h_codebook", "grad_l1", "psnr", "bit_balance"} <= set(
        full.last_metrics
    )
    vae = BSQVAE.from_pretrained(full.final_dir / "vae")
    report = json.loads((full.final_dir / "reconstruction.json").read_text())
    assert report["psnr"] == recipe.val_psnr and np.isfinite(report["psnr"])
    # The exported weights give the reported PSNR (the export is the trained model).
    assert evaluate_reconstruction(vae, val, [(2, 2), (4, 4), (8, 8)]) == pytest.approx(
        report["psnr"], abs=1e-9
    )

    from accelerate.state import AcceleratorState

    part = dataclasses.replace(cfg, run_dir=str(tmp_path / "part"))
    AcceleratorState._reset_state(True)
    train(TokenizerRecipe.from_config(part), part, stop_after=1)
    AcceleratorState._reset_state(True)
    resumed = train(TokenizerRecipe.from_config(part), dataclasses.replace(part, resume="latest"))
    assert resumed.start_step == 1 and resumed.losses == full.losses[1:]  # bit-exact on the CPU


def test_evaluate_reconstruction_formula_and_errors(tmp_path: Path) -> None:
    from nsarm_core.data.io import read_image
    from nsarm_core.models.vae import build_vae

    torch.manual_seed(0)
    vae = build_vae("tiny-d14").eval()
    val = _images(tmp_path / "val", 1, (80, 70))  # one 64x64 window, centred: offsets (8, 3)
    grids = [(2, 2), (4, 4), (8, 8)]
    psnr = evaluate_reconstruction(vae, val, grids)
    rgb = read_image(val / "0.png").rgb[3:67, 8:72]
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        rec = (vae(x * 2 - 1, grids) + 1) / 2
    assert psnr == pytest.approx(10 * math.log10(1 / float((rec - x).pow(2).mean())), rel=1e-5)
    with pytest.raises(InputError, match="smaller than one"):
        evaluate_reconstruction(vae, _images(tmp_path / "small", 1, (40, 40)), grids)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        evaluate_reconstruction(vae, tmp_path / "empty", grids)

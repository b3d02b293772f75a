"""Overfitting 4 images: both NSARM stages must lower their loss substantially within a few dozen steps.

A check that the losses are learnable end to end (targets, gradients, optimizer, data order), not a quality
test: a random frozen VAE, deterministic data (centre crops, bicubic x2 LR), the 64 px tiny geometry (VAE grids
2, 4, 8; the transformation network predicts the first K_t = 2), one batch of all 4 images per step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsarm_core.train.config import TrainConfig
from nsarm_core.train.loop import train

pytest.importorskip("accelerate")

NET = {
    "in_channels": 14, "latent_size": [4, 4], "feature_widths": [8, 16], "branch_grids": [[2, 2], [4, 4]],
    "branch_dims": [16, 16], "branch_depths": [1, 1], "branch_heads": [2, 2], "dropout": 0.0,
}  # fmt: skip


# slow: a few dozen training steps per stage (NSARM_SLOW=1 or -m slow; run by .ci/run)
pytestmark = [pytest.mark.usefixtures("fresh_accelerate_state"), pytest.mark.slow]


@pytest.fixture()
def four_images(tmp_path: Path) -> Path:
    root = tmp_path / "hr"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        small = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
        Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC).save(root / f"{i}.png")
    return root


def _cfg(tmp_path: Path, hr: Path, steps: int, **stage: object) -> TrainConfig:
    base = {
        "schedule": "tiny-64", "vae": "tiny-d14", "transform_net": NET, "degradation": "bicubic", "scale": 2,
        "crop": "center", "hr_dirs": [str(hr)],
    }  # fmt: skip
    return TrainConfig(
        run_dir=str(tmp_path / "run"), max_steps=steps, batch_size=4, lr=3e-3, schedule="constant",
        weight_decay=0.0, checkpoint_every=0, log_every=1000, num_workers=0, progress=False, tensorboard=False,
        cpu=True, stage={**base, **stage},
    )  # fmt: skip


def test_stage1_overfits_four_images(tmp_path: Path, four_images: Path) -> None:
    from nsarm_core.train.stage1 import Stage1Recipe

    cfg = _cfg(tmp_path, four_images, 20)
    losses = train(Stage1Recipe.from_config(cfg), cfg).losses
    # Measured: 0.248 -> 0.054 (x0.21) in 20 steps.
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def test_stage2_overfits_four_images(tmp_path: Path, four_images: Path) -> None:
    from nsarm_core.train.stage2 import Stage2Recipe

    # The transformation network is frozen so the modified-GT labels (Alg. 2) stay fixed.
    cfg = _cfg(tmp_path, four_images, 40, transformer="tiny", train_transform_net=False)
    losses = train(Stage2Recipe.from_config(cfg), cfg).losses
    # Measured: 0.693 (random bits, ln 2) -> 0.15 (x0.22) in 40 steps.
    assert abs(losses[0] - np.log(2)) < 0.1
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses

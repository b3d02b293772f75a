"""Make a Real-ESRGAN-style LR image from an HR photo with the library API, and regenerate it from its record.

    python examples/degrade_one_image.py examples/photos/coffee.png out/coffee_lr.png

Sampling (random, seeded) and applying (a pure function of the image and the record) are separate steps, so the
JSON record written next to the LR image is enough to reproduce it exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from nsarm_core.data.degrade import DegradationParams, apply, get_preset, sample_params
from nsarm_core.data.io import atomic_write_text, from_tensor, read_image, to_tensor, write_image


def main(src: str, dst: str, seed: int = 0) -> None:
    hr = to_tensor(read_image(src).rgb)  # [1, 3, H, W] in [0, 1]
    hr = hr[..., : hr.shape[-2] // 4 * 4, : hr.shape[-1] // 4 * 4]  # a multiple of the scale
    params = sample_params(get_preset("realesrgan"), 4, np.random.default_rng(seed))
    lr = apply(hr, params)  # [1, 3, H/4, W/4]
    write_image(dst, from_tensor(lr))
    atomic_write_text(Path(dst).with_suffix(".json"), params.to_json())

    # The record alone reproduces the same LR image, bit for bit.
    again = apply(hr, DegradationParams.from_json(Path(dst).with_suffix(".json").read_text()))
    assert torch.equal(lr, again)
    print(
        f"{src} {tuple(hr.shape[-2:])} -> {dst} {tuple(lr.shape[-2:])}; parameters in {Path(dst).with_suffix('.json')}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

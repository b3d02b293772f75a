"""nsarm_core.models.sampler: the one rule for tau, shared by the sampler, the pipeline and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.data.io import Image, write_image
from nsarm_core.errors import ConfigError
from nsarm_core.models.sampler import check_tau, sample_scales
from nsarm_core.models.transformer import build_transformer
from nsarm_core.pipeline import UpscaleSettings
from nsarm_core.scales import custom

BAD_TAUS = [0.0, -0.5, math.nan, math.inf]


@pytest.mark.parametrize("tau", BAD_TAUS)
def test_every_layer_refuses_the_same_taus_with_the_same_message(tau: float, tmp_path: Path) -> None:
    # The bug: the CLI accepted tau >= 0 (0 passed), the pipeline tau > 0 (NaN passed), the sampler tau > 0.
    with pytest.raises(ConfigError) as rule:
        check_tau(tau)
    with pytest.raises(ConfigError) as settings:
        UpscaleSettings(tau=tau)
    model = build_transformer("tiny")
    schedule = custom([(1, 1), (2, 2)], patchify=model.config.patchify)
    with pytest.raises(ConfigError) as sampler:
        sample_scales(model, None, schedule, generator=torch.Generator().manual_seed(0), tau=tau)
    assert str(rule.value) == str(settings.value) == str(sampler.value)

    write_image(tmp_path / "a.png", Image(rgb=np.zeros((4, 4, 3), np.float32)))
    res = CliRunner().invoke(
        app,
        [
            "upscale",
            str(tmp_path / "a.png"),
            "-o",
            str(tmp_path / "o"),
            "--model",
            "bicubic",
            "--tau",
            str(tau),
        ],
    )
    assert res.exit_code == 2, res.output
    assert "tau (the sampling temperature) must be a finite number > 0" in res.output


def test_good_taus_pass_unchanged() -> None:
    assert check_tau(0.5) == 0.5 and check_tau(1) == 1.0
    with pytest.raises(ConfigError):
        check_tau(True)  # a bool is not a temperature

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
from nsarm_core.models.sampler import _two_class_top_p, check_tau, sample_bits, sample_scales
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


# --- the official bit sampler, kept to check the one-softmax top-p against ---------------------------------------


def _official_top_p_probs(lg: torch.Tensor, top_p: float) -> torch.Tensor:
    """``sample_with_top_k_top_p_also_inplace_modifying_logits_`` for two classes: sort, softmax, cumsum, mask."""
    sorted_logits, sorted_idx = lg.sort(dim=-1, descending=False)
    remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove[..., -1:] = False
    return lg.masked_fill(remove.scatter(-1, sorted_idx, remove), -torch.inf).softmax(dim=-1)


def _hard_logits() -> torch.Tensor:
    """[1, 4·4096 + 8, 2] logits: spreads from near-ties to tau = 1e-8 magnitudes, exact ties, -inf and +-0."""
    g = torch.Generator().manual_seed(7)
    rows = [torch.randn(4096, 2, generator=g) * s for s in (1e-3, 1.0, 4.0, 1e8)]
    ties = [[0.0, 0.0], [-0.0, 0.0], [1.0, 1.0], [3.0, 3.0000002]]
    edge = torch.tensor([*ties, [-torch.inf, 3.0], [2.0, -torch.inf], [5.0, 1.5], [-1e8, 1e8]])
    return torch.cat([*rows, edge])[None]


@pytest.mark.parametrize("top_p", [0.97, 0.9, 0.6, 0.5000001])
def test_one_softmax_top_p_equals_official_filter(top_p: float) -> None:
    """Bit for bit: the probabilities (hence the multinomial draws of any generator) of the official filter."""
    lg = _hard_logits()
    ours, official = _two_class_top_p(lg, top_p), _official_top_p_probs(lg, top_p)
    assert torch.equal(ours, official)
    dropped = (official == 0).any(-1)
    assert 0 < int(dropped.sum()) < dropped.numel()  # both branches of the filter are exercised


@pytest.mark.parametrize("top_p", [0.97, 0.5, 0.3, 0.0])
def test_sample_bits_draws_the_official_bits(top_p: float) -> None:
    lg = _hard_logits()
    logits = lg.reshape(2, -1, 4)
    official = _official_top_p_probs(lg, top_p) if top_p > 0 else lg.softmax(-1)
    g = torch.Generator().manual_seed(3)
    expected = torch.multinomial(official.view(-1, 2), 1, replacement=True, generator=g).view(2, -1, 2)
    assert torch.equal(sample_bits(logits, top_p, torch.Generator().manual_seed(3)), expected.to(torch.uint8))
    per_row = [torch.Generator().manual_seed(5 + b) for b in range(2)]
    rows = official.view(2, -1, 2)
    expected_rows = torch.cat(
        [
            torch.multinomial(rows[b], 1, replacement=True, generator=torch.Generator().manual_seed(5 + b))
            for b in range(2)
        ]
    ).view(2, -1, 2)
    assert torch.equal(sample_bits(logits, top_p, per_row), expected_rows.to(torch.uint8))

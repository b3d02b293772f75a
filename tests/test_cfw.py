"""Controllable feature wrapping (models/cfw.py) and its place in the decoder, the NSARM model and the pipeline.

The contract that matters most: ``w = 0`` is the paper's decoder bit for bit (the fusion is skipped), a freshly
initialised CFW changes nothing at any ``w`` (zero-initialised last layers), and models without CFW refuse
``fidelity > 0`` with a clear message. Small random models, CPU, offline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nsarm_core.errors import ConfigError
from nsarm_core.models.cfw import CFW, CFWConfig, check_fidelity, decoder_levels, get_preset
from nsarm_core.models.nsarm import NSARM, NSARMConfig
from nsarm_core.models.nsarm import get_preset as nsarm_preset
from nsarm_core.models.vae import get_preset as vae_preset
from nsarm_core.pipeline import UpscaleSettings, load_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _perturbed(cfw: CFW, seed: int = 1) -> CFW:
    """The same module with every fusion output layer set to small random values (a 'trained' CFW)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in cfw.fuse:
            block.conv2.weight.copy_(torch.randn(block.conv2.weight.shape, generator=g) * 0.05)
    return cfw


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The random tiny NSARM saved twice: without CFW, and with a (perturbed) CFW module."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        plain = NSARM(nsarm_preset("tiny"))
        cfg = dataclasses.replace(
            plain.config, cfw=dataclasses.replace(get_preset("tiny"), default_fidelity=0.25)
        )
        with_cfw = NSARM(cfg)
    with_cfw.load_state_dict(
        {**plain.state_dict(), **{f"cfw.{k}": v for k, v in with_cfw.cfw.state_dict().items()}}
    )
    _perturbed(with_cfw.cfw)
    root = tmp_path_factory.mktemp("cfw_models")
    return plain.save_pretrained(root / "plain"), with_cfw.save_pretrained(root / "cfw")


def test_decoder_levels_of_the_tiny_geometry() -> None:
    # Stride 8, x4: the decoder runs at LR/2 (latent), LR, 2 LR and 4 LR; level 0 has base_ch channels.
    vae = vae_preset("tiny-d14")
    assert decoder_levels(vae, 4) == [(32, 2), (64, 1), (64, 0), (64, -1)]
    with pytest.raises(ConfigError, match="power of two"):
        decoder_levels(vae, 3)
    # A fast decoder (VAEConfig.decoder_shuffle, E.12) stops doubling earlier: its finest levels share a grid.
    import dataclasses

    assert decoder_levels(dataclasses.replace(vae, decoder_shuffle=2), 4) == [
        (32, 1),
        (64, 1),
        (64, 0),
        (64, -1),
    ]
    assert decoder_levels(dataclasses.replace(vae, decoder_shuffle=4), 4) == [
        (32, 0),
        (64, 0),
        (64, 0),
        (64, -1),
    ]


def test_features_match_every_decoder_level() -> None:
    vae = vae_preset("tiny-d14")
    cfw = CFW(get_preset("tiny"), vae, 4)
    feats = cfw.encoder(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert {k: tuple(f.shape[-2:]) for k, f in feats.items()} == {
        -1: (8, 8),
        0: (16, 16),
        1: (32, 32),
        2: (64, 64),
    }


def test_fresh_cfw_is_the_identity_and_w0_is_the_plain_decoder() -> None:
    torch.manual_seed(0)
    vae_cfg = vae_preset("tiny-d14")
    model = NSARM(dataclasses.replace(nsarm_preset("tiny"), cfw=get_preset("tiny")))
    z, lr = torch.randn(2, vae_cfg.codebook_dim, 8, 8), torch.rand(2, 3, 16, 16) * 2 - 1
    plain = model.vae.decode(z)
    # Fresh: the zero-initialised fusion outputs leave every level unchanged, whatever w.
    assert torch.equal(model.vae.decode(z, model.cfw.wrap(lr, 1.0)), plain)
    _perturbed(model.cfw)
    assert model.cfw.wrap(lr, 0.0) is None  # w = 0: no hook at all, the decoder's own code path
    assert torch.equal(model.vae.decode(z, model.cfw.wrap(lr, 0.0)), plain)
    half, full = model.vae.decode(z, model.cfw.wrap(lr, 0.5)), model.vae.decode(z, model.cfw.wrap(lr, 1.0))
    assert not torch.equal(half, plain) and not torch.equal(full, half)
    # One w per sample (training): sample 0 at w = 0 is the plain decoder, sample 1 at w = 1 the full fusion.
    mixed = model.vae.decode(z, model.cfw.wrap(lr, torch.tensor([0.0, 1.0])))
    torch.testing.assert_close(mixed[0], plain[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], full[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "high"])
def test_fidelity_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="fidelity"):
        check_fidelity(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fidelity"):
        UpscaleSettings(fidelity=bad)  # type: ignore[arg-type]


def test_cfw_config_round_trips_and_plain_configs_stay_unchanged() -> None:
    plain = nsarm_preset("tiny")
    assert "cfw" not in plain.to_dict()  # the paper's models keep their config.json byte for byte
    cfg = dataclasses.replace(plain, cfw=CFWConfig(width=16, num_blocks=1, up_width=8, default_fidelity=0.75))
    again = NSARMConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.cfw is not None and again.cfw.default_fidelity == 0.75
    with pytest.raises(ConfigError, match="unknown CFW config keys"):
        CFWConfig.from_dict({"width": 8, "depth": 2})


def test_pipeline_fidelity(tiny_models: tuple[Path, Path]) -> None:
    plain_dir, cfw_dir = tiny_models
    lr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    plain = load_pipeline(plain_dir, device="cpu")
    with_cfw = load_pipeline(cfw_dir, device="cpu")
    assert plain.fidelity() == 0.0 and with_cfw.fidelity() == 0.25  # the model's default from config.json
    base = plain.upscale_window(lr, seed=5)
    # Fidelity 0 on the CFW model is the plain model's output, bit for bit (same networks otherwise).
    w0 = with_cfw.upscale_window(lr, seed=5, settings=UpscaleSettings(fidelity=0.0))
    assert torch.equal(w0, base)
    w1 = with_cfw.upscale_window(lr, seed=5, settings=UpscaleSettings(fidelity=1.0))
    assert not torch.equal(w1, base)
    result = with_cfw.upscale(lr[..., :40, :50], seed=5)
    assert result.settings["fidelity"] == 0.25
    with pytest.raises(ConfigError, match="no CFW module"):
        plain.upscale_window(lr, seed=5, settings=UpscaleSettings(fidelity=0.5))
    with pytest.raises(ConfigError, match="no CFW module"):
        plain.upscale(lr, seed=5, settings=UpscaleSettings(fidelity=0.5))


def test_cli_fidelity_errors(tiny_models: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image

    from nsarm_cli.main import app

    plain_dir, _ = tiny_models
    Image.new("RGB", (20, 16), (120, 30, 200)).save(tmp_path / "in.png")
    runner = CliRunner()
    cases = [
        (["--model", str(plain_dir), "--fidelity", "0.5"], "no CFW module"),
        (["--model", "bicubic", "--fidelity", "0.5"], "--fidelity applies to NSARM models"),
        (["--model", str(plain_dir), "--fidelity", "2"], "fidelity must be in [0, 1]"),
    ]
    for args, message in cases:
        res = runner.invoke(app, ["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), *args])
        assert res.exit_code == 2, res.output
        assert message in res.output.replace("\n", " ")
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True

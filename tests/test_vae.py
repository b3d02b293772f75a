"""BSQ-VAE: tiny-preset shapes and dtypes, checkpoint I/O, loader errors, official preset sizes and key names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nsarm_core.errors import ConfigError, InputError, WeightsNotFoundError
from nsarm_core.models.vae import (
    BSQVAE,
    MASK_KEYS,
    VAEConfig,
    build_vae,
    get_preset,
    load_official_vae_state_dict,
    norm_groups,
)
from nsarm_core.scales import get_named_schedule
from tests.parity import load_manifest


def _tiny(seed: int = 0) -> BSQVAE:
    torch.manual_seed(seed)  # module init uses the global RNG; seeded so the test is deterministic
    return build_vae("tiny").eval()


def _plain(key: str) -> str:
    """``...conv1.conv.weight`` -> ``...conv1.weight``, ``...norm1.norm.bias`` -> ``...norm1.bias``."""
    parts = key.split(".")
    assert parts[-2] in ("conv", "norm"), key
    return ".".join(parts[:-2] + parts[-1:])


def _image(b: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def test_tiny_shapes_and_range() -> None:
    vae = _tiny()
    x = _image()
    sched = get_named_schedule("tiny-64")
    with torch.no_grad():
        raw = vae.encode_raw(x)
        assert raw.shape == (2, 8, 8, 8)
        rs = vae.encode(x, sched)
        out = vae.decode(rs.f_hat)
        recon = vae(x, sched)
    assert [tuple(b.shape) for b in rs.bits] == [(2, 2, 2, 8), (2, 4, 4, 8), (2, 8, 8, 8)]
    assert all(b.dtype == torch.uint8 for b in rs.bits)
    assert [tuple(c.shape) for c in rs.codes] == [(2, 8, 2, 2), (2, 8, 4, 4), (2, 8, 8, 8)]
    assert rs.f_hat.shape == (2, 8, 8, 8) and rs.f_hat.dtype == torch.float32
    assert out.shape == x.shape and float(out.abs().max()) <= 1.0
    torch.testing.assert_close(recon, out)
    # explicit grids == schedule's vae grids
    with torch.no_grad():
        rs2 = vae.encode(x, [(2, 2), (4, 4), (8, 8)])
    assert all(torch.equal(a, b) for a, b in zip(rs.bits, rs2.bits, strict=True))
    assert vae.config.token_dim == 32 and vae.config.token_stride == 16


def test_input_checks() -> None:
    vae = _tiny()
    with pytest.raises(InputError, match="multiple of the VAE stride 8"):
        vae.encode_raw(torch.zeros(1, 3, 60, 64))
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        vae.encode_raw(torch.zeros(1, 1, 64, 64))
    with pytest.raises(InputError, match=r"\[B, 8, h, w\]"):
        vae.decode(torch.zeros(1, 14, 8, 8))
    # no official default schedule for an 8x8 latent: the error lists the valid sizes
    with pytest.raises(ConfigError, match="valid latent sizes"):
        vae.encode(_image(1))


def test_bf16_and_channels_last() -> None:
    vae = _tiny()
    x = _image(1)
    with torch.no_grad():
        ref_raw = vae.encode_raw(x)
        ref_out = vae.decode(ref_raw)
        vae_cl = _tiny().to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(vae_cl.encode_raw(x_cl), ref_raw, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            vae_cl.decode(ref_raw.contiguous(memory_format=torch.channels_last)),
            ref_out,
            rtol=1e-4,
            atol=1e-4,
        )
        vae_bf = _tiny().to(torch.bfloat16)
        raw_bf = vae_bf.encode_raw(x.to(torch.bfloat16))
        assert raw_bf.dtype == torch.bfloat16
        rs = vae_bf.quantize(raw_bf, get_named_schedule("tiny-64"))  # BSQ always runs in fp32
        assert rs.f_hat.dtype == torch.float32
        out_bf = vae_bf.decode(rs.f_hat)
    assert out_bf.dtype == torch.bfloat16 and torch.isfinite(out_bf.float()).all()
    # bf16 tracks fp32 loosely (random tiny weights, ~8 mantissa bits)
    assert float((raw_bf.float() - ref_raw).abs().max()) < 0.1 * float(ref_raw.abs().max()) + 1e-2


def test_gradients_reach_the_encoder() -> None:
    vae = _tiny().train()
    x = _image(1)
    loss = vae.decode(vae.encode_raw(x)).square().mean()
    loss.backward()
    assert vae.encoder.conv_in.conv.weight.grad is not None
    assert float(vae.encoder.conv_in.conv.weight.grad.abs().sum()) > 0


def test_save_and_load_pretrained_round_trip(tmp_path: Path) -> None:
    vae = _tiny(seed=1)
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "config.json").is_file() and (tmp_path / "vae" / "model.safetensors").is_file()
    again = BSQVAE.from_pretrained(tmp_path / "vae")
    assert again.config == vae.config
    for (ka, a), (kb, b) in zip(vae.state_dict().items(), again.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b)
    x = _image(1)
    with torch.no_grad():
        torch.testing.assert_close(
            again(x, get_named_schedule("tiny-64")), vae(x, get_named_schedule("tiny-64")), rtol=0, atol=0
        )
    assert (
        BSQVAE.from_pretrained(tmp_path / "vae", dtype=torch.bfloat16).encoder.conv_in.conv.weight.dtype
        == torch.bfloat16
    )
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        BSQVAE.from_pretrained(tmp_path / "nothing")


def test_loader_reads_official_style_files(tmp_path: Path) -> None:
    src = _tiny(seed=2)
    d = src.config.codebook_dim
    mask = torch.tensor([2 ** (d - 1 - i) for i in range(d)])
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    # a training-style .pth: the VAE under "vae", other state next to it, both mask aliases present
    pth = tmp_path / "official.pth"
    torch.save({"vae": {**sd, MASK_KEYS[0]: mask, MASK_KEYS[1]: mask}, "step": torch.tensor(3)}, pth)
    dst = _tiny(seed=3)
    report = load_official_vae_state_dict(dst, pth)
    assert report.loaded == len(sd) and set(report.ignored) == set(MASK_KEYS) and not report.renamed
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items())
    # safetensors file with the spelling without the inner wrappers (conv1.weight, norm1.weight, conv_in.bias, ...)
    st = tmp_path / "plain.safetensors"
    save_file({_plain(k): v for k, v in sd.items()}, str(st))
    again = _tiny(seed=4)
    report = load_official_vae_state_dict(again, st)
    assert report.loaded == len(report.renamed) == len(sd)
    assert "encoder.down.0.block.0.norm1.weight" in report.renamed
    assert all(torch.equal(again.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_official_vae_state_dict(dst, tmp_path / "missing.pth")


def test_loader_errors() -> None:
    dst = _tiny()
    sd = dict(_tiny(seed=5).state_dict())
    d = dst.config.codebook_dim
    with pytest.raises(ConfigError, match=r"bit weights \[2\^7"):
        load_official_vae_state_dict(dst, {**sd, "quantizer.lfq.mask": torch.arange(d)})
    with pytest.raises(ConfigError, match="unexpected key.*encoder.extra.weight"):
        load_official_vae_state_dict(dst, {**sd, "encoder.extra.weight": torch.zeros(1)})
    missing = dict(sd)
    missing.pop("decoder.conv_out.conv.bias")
    with pytest.raises(ConfigError, match="missing key.*decoder.conv_out.conv.bias"):
        load_official_vae_state_dict(dst, missing)
    report = load_official_vae_state_dict(dst, missing, strict=False)
    assert report.missing == ("decoder.conv_out.conv.bias",)
    with pytest.raises(ConfigError, match="twice"):
        load_official_vae_state_dict(dst, {**sd, "encoder.conv_in.weight": sd["encoder.conv_in.conv.weight"]})
    with pytest.raises(ConfigError, match=r"shape \(3, 8, 3, 3\)"):
        load_official_vae_state_dict(dst, {**sd, "decoder.conv_out.conv.weight": torch.zeros(3, 8, 3, 3)})


def test_presets_and_config_validation() -> None:
    assert get_preset("infinity-vae-d56").token_dim == 56
    assert get_preset("infinity-vae-d32").token_dim == 32
    with pytest.raises(ConfigError, match="Did you mean 'infinity-vae-d32'"):
        get_preset("infinity-vae-d23")
    with pytest.raises(ConfigError, match="power of two"):
        VAEConfig(8, 12, (1, 2, 2, 2))
    with pytest.raises(ConfigError, match="at least 5 levels"):
        VAEConfig(8, 16, (1, 2, 2, 2))
    with pytest.raises(ConfigError, match="unknown VAEConfig fields"):
        VAEConfig.from_dict({**get_preset("tiny").to_dict(), "bogus": 1})
    assert VAEConfig.from_dict(get_preset("tiny").to_dict()) == get_preset("tiny")
    # official rule where it applies (32 if C%32==0 else 24), largest divisor <= 32 otherwise
    assert [norm_groups(c) for c in (128, 256, 512, 48, 72, 16, 40)] == [32, 32, 32, 24, 24, 16, 20]


@pytest.mark.parametrize(
    ("preset", "fixture", "n_params"),
    [("infinity-vae-d32", "vae_d32", 110_118_051), ("infinity-vae-d56", "vae_d14_patchify", 81_624_209)],
)
def test_official_presets_param_counts_and_keys(
    parity_dir: Path, preset: str, fixture: str, n_params: int
) -> None:
    with torch.device("meta"):
        vae = build_vae(preset)
    assert sum(p.numel() for p in vae.parameters()) == n_params
    official = load_manifest(parity_dir, fixture)["state_dict"]
    ours = vae.state_dict()
    # identical keys, order and shapes; the official mask buffer aliases are the only extra official keys
    assert list(ours) == [k for k in official if k not in MASK_KEYS]
    assert set(official) - set(ours) == set(MASK_KEYS)
    assert all(list(ours[k].shape) == official[k]["shape"] for k in ours)


@pytest.mark.parametrize("preset", ["infinity-vae-d16", "infinity-vae-d24", "infinity-vae-d64"])
def test_other_stride16_presets_build(preset: str) -> None:
    with torch.device("meta"):
        vae = build_vae(preset)
    d = vae.config.codebook_dim
    assert vae.encoder.conv_out.conv.weight.shape == (d, 512, 3, 3)
    assert vae.decoder.conv_in.conv.weight.shape == (512, d, 3, 3)


def test_fast_silu_is_the_decoders_alone_and_off_for_official_presets() -> None:
    """``VAEConfig.fast_silu`` swaps the decoder's ``x * sigmoid(x)`` for the fused ``F.silu``: the same function
    (outputs equal up to float rounding), the encoder untouched (its latent feeds the sampler's bits), and off for
    every preset and absent from a saved config unless set (the official outputs stay bit for bit)."""
    import dataclasses

    import torch.nn.functional as F

    from nsarm_core.models.vae import PRESETS, swish

    assert not any(cfg.fast_silu for cfg in PRESETS.values())
    assert "fast_silu" not in get_preset("tiny").to_dict()
    fast_cfg = dataclasses.replace(get_preset("tiny"), fast_silu=True)
    assert VAEConfig.from_dict(fast_cfg.to_dict()).fast_silu is True
    assert fast_cfg == get_preset(
        "tiny"
    )  # the same geometry and weights: equality ignores the rounding choice
    exact = _tiny()
    torch.manual_seed(0)
    fast = BSQVAE(fast_cfg).eval()
    fast.load_state_dict(exact.state_dict())
    assert fast.decoder.act is F.silu and exact.decoder.act is swish
    assert all(getattr(m, "act", swish) is swish for m in fast.encoder.modules())
    x = _image()
    with torch.no_grad():
        assert torch.equal(fast.encode_raw(x), exact.encode_raw(x))
        z = exact.encode_raw(x)
        a, b = fast.decode(z), exact.decode(z)
    assert (a - b).abs().max() < 1e-4


def test_decoder_shuffle_moves_the_finest_levels_to_a_coarser_grid() -> None:
    """``VAEConfig.decoder_shuffle`` (our fast decoders, docs/architecture.md E.12): the same output size, the
    skipped upsamplings keep their convolutions at the coarser grid (so every key of the full decoder exists),
    only ``conv_out`` changes shape, and the official presets and saved configs are untouched."""
    import dataclasses

    from nsarm_core.models.vae import PRESETS, Decoder

    assert all(cfg.decoder_shuffle == 1 for cfg in PRESETS.values())
    assert "decoder_shuffle" not in get_preset("tiny").to_dict()
    full_cfg = get_preset("tiny")
    assert full_cfg.decoder_upsample_levels == (1, 2, 3)
    for shuffle, levels in ((2, (2, 3)), (4, (3,)), (8, ())):
        cfg = dataclasses.replace(full_cfg, decoder_shuffle=shuffle)
        assert cfg.decoder_upsample_levels == levels
        assert VAEConfig.from_dict(cfg.to_dict()) == cfg and cfg != full_cfg  # a geometry, unlike fast_silu
        torch.manual_seed(0)
        fast, full = Decoder(cfg), Decoder(full_cfg)
        fast_keys, full_keys = fast.state_dict(), full.state_dict()
        assert set(fast_keys) == set(full_keys)
        changed = {k for k in full_keys if fast_keys[k].shape != full_keys[k].shape}
        assert changed == {"conv_out.conv.weight", "conv_out.conv.bias"}
        assert fast_keys["conv_out.conv.weight"].shape[0] == 3 * shuffle**2
        z = torch.randn(1, cfg.codebook_dim, 4, 6)
        with torch.no_grad():
            assert fast(z).shape == full(z).shape == (1, 3, 32, 48)
    for bad in (3, 0, 16, 2.0):
        with pytest.raises(ConfigError, match="decoder_shuffle must be a power of two"):
            dataclasses.replace(full_cfg, decoder_shuffle=bad)

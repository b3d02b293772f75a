"""Unit tests of the transformation network (tiny preset, CPU, random weights)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from nsarm_core.errors import ConfigError, InputError, WeightsNotFoundError
from nsarm_core.models.checkpoint import count_parameters
from nsarm_core.models.transform_net import (
    PRESETS,
    EncoderLayer,
    TransformNet,
    TransformNetConfig,
    build_transform_net,
    get_preset,
    latent_maps_to_outputs,
    load_official_state_dict,
    outputs_to_latent_maps,
)


def _tiny(seed: int = 0, **overrides: object) -> TransformNet:
    cfg = dataclasses.replace(get_preset("tiny"), **overrides)
    torch.manual_seed(seed)  # module init uses torch's default RNG; seed it for reproducible tests
    return TransformNet(cfg).eval()


def _latent(cfg: TransformNetConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_channels, *cfg.latent_size, generator=g)


def test_tiny_shapes_and_input_dependence() -> None:
    model = _tiny()
    cfg = model.config
    x = _latent(cfg)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == cfg.num_branches == 3
    for out, (h, w) in zip(outs, cfg.branch_grids, strict=True):
        assert out.shape == (2, h * w, cfg.in_channels)
        assert torch.isfinite(out).all()
        assert (out[0] - out[1]).abs().max() > 1e-3  # different inputs give different outputs
    maps = model.latent_maps(x)
    for m, (h, w) in zip(maps, cfg.branch_grids, strict=True):
        assert m.shape == (2, cfg.in_channels, h, w)


def test_non_square_grids_and_latent() -> None:
    model = _tiny(
        latent_size=(12, 20), branch_grids=((1, 2), (3, 5), (6, 10)), branch_dims=(16, 32, 32), in_channels=6
    )
    x = _latent(model.config)
    with torch.no_grad():
        outs = model(x)
    assert [o.shape for o in outs] == [(2, 2, 6), (2, 15, 6), (2, 60, 6)]
    maps = outputs_to_latent_maps(outs, model.config.branch_grids)
    assert [tuple(m.shape) for m in maps] == [(2, 6, 1, 2), (2, 6, 3, 5), (2, 6, 6, 10)]
    # raw reshape: flat element p*d + c of the token-major output goes to flat index p*d + c of [d, h, w]
    assert torch.equal(maps[1].reshape(2, -1), outs[1].reshape(2, -1))
    assert all(torch.equal(a, b) for a, b in zip(latent_maps_to_outputs(maps), outs, strict=True))


def test_wrong_input_size_raises() -> None:
    model = _tiny()
    with pytest.raises(InputError, match=r"\[B, 8, 16, 16\]"):
        model(torch.zeros(1, 8, 32, 32))
    with pytest.raises(InputError):
        outputs_to_latent_maps([torch.zeros(1, 5, 8)], [(2, 2)])


def test_nsarm_8b_param_count_on_meta() -> None:
    model = build_transform_net("nsarm-8b", device="meta")
    assert count_parameters(model) == 385_103_600
    keys = model.state_dict().keys()
    assert len(keys) == 950
    assert "transformers.6.layers.15.self_attn.in_proj_weight" in keys
    assert "feature_extractor.7.weight" in keys and "output_projs.3.3.bias" in keys
    assert tuple(model.state_dict()["feature_transforms.6.4.weight"].shape) == (1024, 32, 32)


def test_encoder_layer_matches_torch_composite_path() -> None:
    """Our encoder layer == nn.TransformerEncoderLayer (post-norm, ReLU, batch_first) on the composite path."""
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(
        d_model=32, nhead=4, dim_feedforward=128, dropout=0.1, batch_first=True
    ).eval()
    ours = EncoderLayer(32, 4, 128, dropout=0.1, eps=1e-5).eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(1))
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            expected = ref(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)
    with torch.no_grad():
        assert (ours(x) - expected).abs().max().item() < 1e-6


def test_dropout_only_in_train_mode_and_gradients() -> None:
    model = _tiny()
    x = _latent(model.config)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))  # eval: deterministic
    model.train()
    outs = model(x)
    loss = sum(o.square().mean() for o in outs)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        c = model(x)
    assert any(not torch.equal(p, q) for p, q in zip(a, c, strict=True))  # train: dropout active


def test_bf16_forward() -> None:
    model = _tiny().to(torch.bfloat16)
    with torch.no_grad():
        outs = model(_latent(model.config).to(torch.bfloat16))
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o.float()).all() for o in outs)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = _tiny(seed=3)
    model.save_pretrained(tmp_path / "tn")
    loaded = TransformNet.from_pretrained(tmp_path / "tn").eval()
    assert loaded.config == model.config
    x = _latent(model.config)
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(model(x), loaded(x), strict=True))
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        TransformNet.from_pretrained(tmp_path / "missing")


def test_official_loader_prefix_and_errors() -> None:
    src, dst = _tiny(seed=1), _tiny(seed=2)
    full = {f"map_transformer.{k}": v for k, v in src.state_dict().items()}
    full["block_chunks.0.module.0.ada_gss"] = torch.zeros(1, 1, 6, 8)  # other NSARM keys are ignored
    load_official_state_dict(dst, full)
    assert all(
        torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True)
    )
    stripped = dict(src.state_dict())
    load_official_state_dict(dst, stripped)  # already without prefix

    missing = dict(full)
    del missing["map_transformer.output_projs.0.3.bias"]
    with pytest.raises(ConfigError, match="missing key"):
        load_official_state_dict(dst, missing)
    extra = dict(full)
    extra["map_transformer.transformers.9.layers.0.linear1.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError, match="unexpected key"):
        load_official_state_dict(dst, extra)
    bad = dict(full)
    bad["map_transformer.feature_extractor.1.weight"] = torch.zeros(16, 32, 32)
    with pytest.raises(ConfigError, match="shape mismatch"):
        load_official_state_dict(dst, bad)


def test_config_validation_and_presets() -> None:
    assert set(PRESETS) >= {"tiny", "nsarm-8b"}
    with pytest.raises(ConfigError, match="nsarm-8b"):
        get_preset("nsarm8b")
    with pytest.raises(ConfigError, match="branch_dims"):
        TransformNetConfig(branch_dims=(64,))
    with pytest.raises(ConfigError, match="divide"):
        dataclasses.replace(get_preset("tiny"), branch_heads=(3, 2, 4))
    with pytest.raises(ConfigError, match="even"):
        dataclasses.replace(get_preset("tiny"), branch_dims=(31, 32, 64))
    cfg = get_preset("tiny")
    assert TransformNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        TransformNetConfig.from_dict({**cfg.to_dict(), "width": 3})

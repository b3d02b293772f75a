"""Unit tests of the Infinity transformer, its loader and the KV-cached sampler (tiny presets, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nsarm_core.errors import ConfigError, InputError, WeightsNotFoundError
from nsarm_core.models.checkpoint import count_parameters
from nsarm_core.models.layers import apply_rope2d
from nsarm_core.models.sampler import sample_bits, sample_scales
from nsarm_core.models.transformer import (
    PRESETS,
    TextCondition,
    TransformerConfig,
    build_transformer,
    get_preset,
    load_official_state_dict,
    load_transformer_weights,
)
from nsarm_core.scales import get_named_schedule, get_schedule


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """O(1) random weights everywhere (the official init makes the head and AdaLN almost inert)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise / (p[0].numel() ** 0.5))
            elif name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    return _randomize(build_transformer("tiny"), 0)


@pytest.fixture(scope="module")
def texty():
    return _randomize(build_transformer("tiny-parity-nopatchify", depth=2, block_chunks=2), 1)


def _texts(n: int, lens: list[int], channels: int, seed: int = 0) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    return TextCondition.from_list([torch.randn(le, channels, generator=g) for le in lens[:n]])


# --- configs ------------------------------------------------------------------------------------------------


def test_presets_and_errors() -> None:
    assert {"infinity-2b", "infinity-8b", "tiny-parity-patchify", "tiny-parity-nopatchify", "tiny"} <= set(
        PRESETS
    )
    with pytest.raises(ConfigError, match="infinity-2b"):
        get_preset("infinity-2")
    with pytest.raises(ConfigError, match="block_chunks"):
        TransformerConfig(depth=3, embed_dim=64, num_heads=2, d_vae=32, block_chunks=2, text_channels=128)
    with pytest.raises(ConfigError, match="attention-pool heads"):
        TransformerConfig(depth=2, embed_dim=64, num_heads=2, d_vae=32, block_chunks=1, text_channels=64)
    with pytest.raises(ConfigError, match="unknown TransformerConfig field"):
        build_transformer("tiny", device="meta", widht=3)


@pytest.fixture(scope="module")
def meta_models() -> dict:
    return {name: build_transformer(name, device="meta") for name in ("infinity-2b", "infinity-8b")}


def test_meta_parameter_counts(meta_models) -> None:
    m2, m8 = meta_models["infinity-2b"], meta_models["infinity-8b"]
    assert count_parameters(m2) == 2_204_564_032
    assert count_parameters(m8) == 8_375_791_824
    assert m8.config.vae_channels == 14 and m8.config.d_vae == 56 and m8.config.mlp_hidden == 14336


@pytest.mark.parametrize("preset,official", [("infinity-2b", "infinity_2b"), ("infinity-8b", "infinity_8b")])
def test_state_dict_keys_equal_official(parity_dir: Path, meta_models, preset: str, official: str) -> None:
    ref = json.loads((parity_dir / "official_keys.json").read_text())["models"][official]
    model = meta_models[preset]
    buffers = {n for n, _ in model.named_buffers()}
    ours = {k: (list(v.shape), "buffer" if k in buffers else "param") for k, v in model.state_dict().items()}
    theirs = {k: (e["shape"], e["kind"]) for k, e in ref["keys"].items()}
    assert ours == theirs
    assert list(ours) == list(theirs)
    assert len(ours) == ref["n_keys"] and count_parameters(model) == ref["n_params"]


# --- forward ------------------------------------------------------------------------------------------------


def _tf_inputs(model, sched, B: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, sched.seq_len - 1, model.config.d_vae, generator=g) * 0.3


def test_kv_cached_sampler_equals_teacher_forcing(tiny) -> None:
    sched = get_named_schedule("tiny-128")
    out = sample_scales(tiny, None, sched, generator=torch.Generator().manual_seed(0), tau=1.0, batch_size=2)
    with torch.no_grad():
        tf = tiny(None, torch.cat(out.next_inputs, dim=1), sched)
    assert tf.shape == (2, sched.seq_len, 112)
    assert (torch.cat(out.logits, dim=1) - tf).abs().max().item() < 1e-5
    assert out.summed_codes.shape == (2, 14, 16, 16)
    assert [tuple(b.shape) for b in out.bits] == [(2, 2 * h, 2 * w, 14) for h, w in sched.token_grids]


def test_kv_cached_sampler_with_text_and_cfg_equals_teacher_forcing(texty) -> None:
    sched = get_schedule(1.0, "0.06M").prefix(5)
    text = _texts(2, [3, 9], 256)
    out = sample_scales(texty, text, sched, generator=torch.Generator().manual_seed(0), cfg=[1, 3, 3, 3, 3])
    assert out.logits[0].shape[0] == 4  # batch doubled: rows [cond; uncond]
    x = torch.cat(out.next_inputs, dim=1)
    with torch.no_grad():
        cond = texty(text, x, sched)
        uncond = texty(texty.unconditional_text(text), x, sched)
    logits = torch.cat(out.logits, dim=1)
    assert (logits[:2] - cond).abs().max().item() < 1e-5
    assert (logits[2:] - uncond).abs().max().item() < 1e-5
    assert (cond - uncond).abs().max().item() > 1e-3  # the text matters


def test_same_seed_same_bits_different_seed_different_bits(tiny) -> None:
    sched = get_named_schedule("tiny-128")

    def run(seed: int):
        return sample_scales(
            tiny, None, sched, generator=torch.Generator().manual_seed(seed), tau=1.0, batch_size=1
        )

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(x, y) for x, y in zip(a.bits_tok, b.bits_tok, strict=True))
    assert torch.equal(a.summed_codes, b.summed_codes)
    assert any(not torch.equal(x, y) for x, y in zip(a.bits_tok, c.bits_tok, strict=True))


def test_block_causal_mask_and_varlen_text(texty) -> None:
    sched = get_schedule(1.0, "0.06M").prefix(4)
    x = _tf_inputs(texty, sched, 2, 0)
    text = _texts(2, [4, 10], 256)
    with torch.no_grad():
        ref = texty(text, x, sched)
        x2 = x.clone()
        x2[:, -36:] += 1.0  # change only the last scale's inputs
        out = texty(text, x2, sched)
        # Padding rows of the text are never attended to: garbage there changes nothing.
        noisy = TextCondition(text.features + (~text.mask[..., None]) * 5.0, text.lengths)
        padded = texty(noisy, x, sched)
        single = texty(TextCondition(text.features[:1, :4], text.lengths[:1]), x[:1], sched)
    earlier = sched.seq_len - 36
    assert torch.equal(out[:, :earlier], ref[:, :earlier])
    assert (out[:, earlier:] - ref[:, earlier:]).abs().max() > 1e-3
    assert (padded - ref).abs().max().item() < 1e-5
    assert (single[0] - ref[0]).abs().max().item() < 1e-5


def test_cond_drop_uses_cfg_uncond(texty) -> None:
    sched = get_schedule(1.0, "0.06M").prefix(3)
    x = _tf_inputs(texty, sched, 2, 1)
    text = _texts(2, [5, 2], 256)
    with torch.no_grad():
        dropped = texty(text, x, sched, cond_drop=torch.tensor([True, False]))
        uncond = texty(texty.unconditional_text(text), x, sched)
        cond = texty(text, x, sched)
    assert (dropped[0] - uncond[0]).abs().max().item() < 1e-6
    assert (dropped[1] - cond[1]).abs().max().item() < 1e-6


def test_bf16_autocast_and_cast_blocks_close_to_fp32(texty) -> None:
    sched = get_schedule(1.0, "0.06M").prefix(4)
    x, text = _tf_inputs(texty, sched, 1, 2), _texts(1, [6], 256)
    with torch.no_grad():
        ref = texty(text, x, sched)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = texty(text, x, sched)
        model = _randomize(
            build_transformer("tiny-parity-nopatchify", depth=2, block_chunks=2), 1
        ).cast_blocks(torch.bfloat16)
        cast = model(text, x, sched)
    assert amp.dtype == torch.float32 and cast.dtype == torch.float32
    scale = ref.abs().max().item()
    assert (amp - ref).abs().max().item() < 0.05 * scale
    assert (cast - ref).abs().max().item() < 0.05 * scale
    assert (
        model.head.weight.dtype == torch.float32
        and model.block_chunks[0].module[0].sa.proj.weight.dtype == torch.bfloat16
    )


def test_input_errors(tiny, texty) -> None:
    sched = get_named_schedule("tiny-64")
    with pytest.raises(InputError, match="x_BLC_inputs"):
        tiny(None, torch.zeros(1, 3, 56), sched)
    with pytest.raises(InputError, match="use_text"):
        texty(None, torch.zeros(1, 20, 32), get_schedule(1.0, "0.06M").prefix(3))
    with pytest.raises(InputError, match="text_maxlen"):
        texty(_texts(1, [17], 256), torch.zeros(1, 20, 32), get_schedule(1.0, "0.06M").prefix(3))
    with pytest.raises(ConfigError, match="patchify"):
        sample_scales(tiny, None, get_schedule(1.0, "0.06M"), generator=None, batch_size=1)


def test_sample_bits_top_p() -> None:
    g = torch.Generator().manual_seed(0)
    # bit 0: p(1) = sigmoid(5) ≈ 0.993 -> minority removed, always 1; bit 1: 50/50 -> both values occur.
    logits = torch.tensor([[[0.0, 5.0, 0.0, 0.0]]]).expand(1, 4000, 4).contiguous()
    bits = sample_bits(logits, 0.97, g)
    assert bits.shape == (1, 4000, 2) and bits.dtype == torch.uint8
    assert bits[..., 0].all()
    assert 0.4 < bits[..., 1].float().mean().item() < 0.6
    assert not sample_bits(logits, 0.0, g)[..., 0].all()  # without top-p the minority class can be drawn


def test_prefix_codes_replace_first_scales(tiny) -> None:
    sched = get_named_schedule("tiny-128")
    g = torch.Generator().manual_seed(5)
    prefix = [
        torch.where(torch.randn(1, 14, 2 * h, 2 * w, generator=g) > 0, 1.0, -1.0) / 14**0.5
        for h, w in sched.token_grids[:2]
    ]
    out = sample_scales(
        tiny, None, sched, generator=g, prefix_codes=prefix, next_input_mode="area", batch_size=1
    )
    for k in range(2):
        assert torch.equal(out.bits[k], (prefix[k] > 0).permute(0, 2, 3, 1).to(torch.uint8))
    first = torch.nn.functional.interpolate(prefix[0], size=(16, 16), mode="bilinear", align_corners=False)
    expected = torch.nn.functional.adaptive_avg_pool2d(first, (4, 4))
    assert torch.allclose(
        out.next_inputs[0], torch.nn.functional.pixel_unshuffle(expected, 2).flatten(2).transpose(1, 2)
    )
    with pytest.raises(InputError, match="prefix_codes"):
        sample_scales(tiny, None, sched, generator=g, prefix_codes=[prefix[1]], batch_size=1)


# --- loading ------------------------------------------------------------------------------------------------


def _fresh(seed: int):
    return _randomize(build_transformer("tiny-parity-nopatchify", depth=2, block_chunks=2), seed)


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sharded_safetensors_loading(tmp_path: Path) -> None:
    src, dst = _fresh(1), _fresh(2)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    keys = list(sd)
    weight_map = {}
    for i, part in enumerate(
        (keys[: len(keys) // 3], keys[len(keys) // 3 : 2 * len(keys) // 3], keys[2 * len(keys) // 3 :])
    ):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: sd[k] for k in part}, str(tmp_path / name))
        weight_map.update(dict.fromkeys(part, name))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    load_transformer_weights(dst, tmp_path)
    _assert_same(src, dst)
    # A wrong preset fails on the key names from the index, before any shard is read.
    other = build_transformer("tiny-parity-nopatchify", init=False)  # depth 4
    with pytest.raises(ConfigError, match="missing keys"):
        load_transformer_weights(other, tmp_path / "model.safetensors.index.json")
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="missing"):
        load_transformer_weights(dst, tmp_path)


def test_pth_loading_with_official_adaptations(tmp_path: Path) -> None:
    src = _fresh(3)
    sd = dict(src.state_dict())
    long_uncond = torch.randn(40, 256)
    sd["cfg_uncond"] = long_uncond  # official checkpoints have 512 rows; ours 16 -> truncated
    sd["lvl_1L"] = torch.zeros(1, 5)  # legacy buffers are dropped
    sd["attn_bias_for_masking"] = torch.zeros(1, 1, 5, 5)
    # A block_chunks=1 checkpoint spells the blocks blocks.{n}.
    sd = {k.replace("block_chunks.1.module.0.", "blocks.1."): v for k, v in sd.items()}
    torch.save({"trainer": {"gpt_fsdp": sd}}, tmp_path / "ar-ckpt.pth")
    dst = _fresh(4)
    load_transformer_weights(dst, tmp_path / "ar-ckpt.pth")
    assert torch.equal(dst.cfg_uncond, long_uncond[:16])
    assert torch.equal(
        dst.block_chunks[1].module[0].ffn.fc1.weight, src.block_chunks[1].module[0].ffn.fc1.weight
    )
    # Shorter cfg_uncond: padded with the model's own rows.
    own = dst.cfg_uncond.detach().clone()
    short = dict(src.state_dict(), cfg_uncond=torch.ones(5, 256))
    load_official_state_dict(dst, short)
    assert torch.equal(dst.cfg_uncond[:5], torch.ones(5, 256)) and torch.equal(dst.cfg_uncond[5:], own[5:])
    with pytest.raises(WeightsNotFoundError):
        load_transformer_weights(dst, tmp_path / "nope.pth")


def test_strict_loader_errors() -> None:
    model = _fresh(5)
    good = dict(model.state_dict())
    missing = {k: v for k, v in good.items() if k != "head.bias"}
    with pytest.raises(ConfigError, match=r"missing keys: head\.bias"):
        load_official_state_dict(model, missing)
    with pytest.raises(ConfigError, match="unexpected keys: map_transformer.x"):
        load_official_state_dict(model, dict(good, **{"map_transformer.x": torch.zeros(1)}))
    with pytest.raises(ConfigError, match=r"shape mismatches: word_embed\.weight"):
        load_official_state_dict(model, dict(good, **{"word_embed.weight": torch.zeros(256, 56)}))
    key = "block_chunks.0.module.0.sa.zero_k_bias"
    with pytest.raises(ConfigError, match="must be zero"):
        load_official_state_dict(model, dict(good, **{key: torch.ones(256)}))
    # zero_k_bias buffers may be absent.
    load_official_state_dict(model, {k: v for k, v in good.items() if not k.endswith("zero_k_bias")})


def test_no_text_mode_rejects_text(tiny) -> None:
    sched = get_named_schedule("tiny-64")
    with pytest.raises(InputError, match="no text encoder"):
        tiny([torch.zeros(3, 128)], torch.zeros(1, sched.seq_len - 1, 56), sched)
    with pytest.raises(InputError, match="batch size"):
        tiny.text_condition(None, None)


def test_nsarm_checkpoint_keys_fit_8b_with_map_prefix_ignored(parity_dir: Path, meta_models) -> None:
    ref = json.loads((parity_dir / "official_keys.json").read_text())["models"]["nsarm_8b"]["keys"]
    ours = {k: list(v.shape) for k, v in meta_models["infinity-8b"].state_dict().items()}
    assert {k: e["shape"] for k, e in ref.items() if not k.startswith("map_transformer.")} == ours


def test_sample_bits_with_one_generator_per_row_matches_rows_alone() -> None:
    """Batched windows: row b drawn with its own generator gets the bits it gets in a batch of one."""
    logits = torch.randn(3, 10, 8, generator=torch.Generator().manual_seed(0))
    alone = [sample_bits(logits[b : b + 1], 0.97, torch.Generator().manual_seed(10 + b)) for b in range(3)]
    batched = sample_bits(logits, 0.97, [torch.Generator().manual_seed(10 + b) for b in range(3)])
    assert torch.equal(batched, torch.cat(alone))
    with pytest.raises(InputError, match="2 generators for a batch of 3 samples"):
        sample_bits(logits, 0.97, [torch.Generator(), torch.Generator()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_equals_the_official_pair_rotation(dtype: torch.dtype) -> None:
    """apply_rope2d's whole-tensor form gives the official (a·cos − b·sin, a·sin + b·cos) bits, and its gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 50, 64, generator=g).to(dtype).requires_grad_()
    angles = torch.rand(50, 32, generator=g) * 30
    cos, sin = angles.cos(), angles.sin()
    grad_out = torch.randn(4, 3, 50, 64, generator=g).to(dtype)
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    official = torch.stack([cos * a - sin * b, sin * a + cos * b], dim=-1).flatten(-2).to(dtype)
    ours = apply_rope2d(x, cos, sin)
    assert ours.dtype == dtype and torch.equal(ours, official)
    assert torch.equal(
        torch.autograd.grad(ours, x, grad_out)[0], torch.autograd.grad(official, x, grad_out)[0]
    )

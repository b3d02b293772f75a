"""Parity of the Infinity transformer and its KV-cached sampler with the official implementation.

Fixtures: ../shared/parity/infinity_tiny_{patchify,nopatchify} (official ``Infinity`` class, formula weights);
NSARM's modified sampler (nsarm_infer_tiny) is covered end to end by tests/test_pipeline_parity.py. Sampler tests
use replay (parity README §4): per scale compare the logits, compare our argmax bits with the stored ones where the logit gap
exceeds 1e-4, then continue with the stored bits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nsarm_core.models.checkpoint import count_parameters
from nsarm_core.models.sampler import sample_scales
from nsarm_core.models.transformer import (
    TextCondition,
    build_transformer,
    load_official_state_dict,
)
from nsarm_core.scales import custom, get_schedule
from tests.parity import load_manifest, load_tensors, official_state_dict

FIXTURES = {
    "infinity_tiny_patchify": "tiny-parity-patchify",
    "infinity_tiny_nopatchify": "tiny-parity-nopatchify",
}
LOGIT_TOL = 1e-4
GAP = 1e-4


@pytest.fixture(scope="module", params=sorted(FIXTURES))
def fixture(request: pytest.FixtureRequest, parity_dir: Path):
    name = request.param
    manifest = load_manifest(parity_dir, name)
    tensors = load_tensors(parity_dir, name)
    model = build_transformer(FIXTURES[name], init=False)
    model.eval()
    sd = official_state_dict(manifest)
    load_official_state_dict(model, sd)
    return name, manifest, tensors, model


def _schedule(manifest: dict, key: str, patchify: bool):
    return custom([tuple(s[1:]) for s in manifest["schedules"][key]], patchify=patchify)


def test_keys_shapes_and_count_match_fixture(fixture) -> None:
    _, manifest, _, model = fixture
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: e["shape"] for k, e in manifest["state_dict"].items()}
    assert ours == theirs
    assert list(ours) == list(theirs)  # same order as the official state dict
    assert count_parameters(model) == manifest["n_params"]
    derived = manifest["config"]["derived"]
    assert model.config.d_vae == derived["d_vae"] and model.config.vocab == derived["V"]
    assert model.config.head_dim == derived["head_dim"]
    assert model.text_proj_for_sos.ca.num_heads == derived["pool_heads"]


def test_teacher_forced_logits_varlen_text(fixture) -> None:
    _, manifest, t, model = fixture
    text = TextCondition.from_compact(t["in.text_kv_compact"], t["in.text_lens"])
    assert text.lengths.tolist() == [7, 12]
    with torch.no_grad():
        logits = model(
            text, t["tf.x_BLC_wo_prefix"], _schedule(manifest, "scale_schedule", model.config.patchify)
        )
    assert logits.shape == t["tf.logits"].shape
    assert (logits - t["tf.logits"]).abs().max().item() <= LOGIT_TOL
    # The two rows have different texts and inputs: a model that ignored them would fail here.
    assert (t["tf.logits"][0] - t["tf.logits"][1]).abs().max().item() > 1e-2


def test_teacher_forced_logits_half_template(fixture) -> None:
    _, manifest, t, model = fixture
    text = TextCondition.from_compact(t["in.text_kv_compact"][:7], [7])
    sched = _schedule(manifest, "r0.5.scale_schedule", model.config.patchify)
    assert sched.seq_len == 451
    with torch.no_grad():
        logits = model(text, t["r0.5.tf.x_BLC_wo_prefix"], sched)
    assert (logits - t["r0.5.tf.logits"]).abs().max().item() <= LOGIT_TOL


class _Replay:
    """force_bits hook: checks our argmax bits against the stored ones where the gap is large, then replays."""

    def __init__(self, stored: list[torch.Tensor | None], logits_source: list[torch.Tensor]) -> None:
        self.stored, self.logits = stored, logits_source
        self.checked = 0

    def __call__(self, k: int, bits_tok: torch.Tensor) -> torch.Tensor:
        ref = self.stored[k]
        if ref is None:
            return bits_tok
        lg = self.logits[k][: bits_tok.shape[0]].reshape(*bits_tok.shape, 2)
        confident = (lg[..., 1] - lg[..., 0]).abs() > GAP
        assert torch.equal(bits_tok[confident], ref[confident]), f"scale {k}: sampled bits differ"
        self.checked += int(confident.sum())
        return ref


@pytest.mark.parametrize(
    "prefix,cfg,sched_key",
    [
        ("smp", 1.0, "scale_schedule"),
        ("smp_cfg3", 3.0, "scale_schedule"),
        ("r0.5.smp", 1.0, "r0.5.scale_schedule"),
    ],
)
def test_sampler_replay(fixture, prefix: str, cfg: float, sched_key: str) -> None:
    _, manifest, t, model = fixture
    sched = _schedule(manifest, sched_key, model.config.patchify)
    K = sched.num_scales
    ref_logits = [t[f"{prefix}.logits.{k:02d}"] for k in range(K)]
    replay = _Replay([t[f"{prefix}.bits_tok.{k:02d}"] for k in range(K)], ref_logits)
    text = TextCondition.from_compact(t["in.text_kv_compact"][:7], [7])
    out = sample_scales(
        model,
        text,
        sched,
        generator=torch.Generator().manual_seed(0),
        tau=1e-8,
        top_p=0.97,
        cfg=cfg,
        force_bits=replay,
    )
    assert replay.checked > 0.99 * sum(b.numel() for b in replay.stored)
    for k in range(K):
        assert out.logits[k].shape == ref_logits[k].shape  # [2, l, V] rows [cond, uncond] with CFG
        assert (out.logits[k] - ref_logits[k]).abs().max().item() <= LOGIT_TOL, f"logits of scale {k}"
        assert torch.equal(out.bits[k], t[f"{prefix}.bits_vae.{k:02d}"][:, 0]), (
            f"VAE-layout bits of scale {k}"
        )
    for k in range(1, K):
        assert (out.next_inputs[k - 1] - t[f"{prefix}.next_input.{k:02d}"]).abs().max().item() <= 1e-6
    assert (out.summed_codes - t[f"{prefix}.summed_codes"]).abs().max().item() <= 1e-6


def test_sampler_free_run_matches(fixture) -> None:
    """Without replay the bits agree too (smallest stored gap 4e-6, parity README §4)."""
    _, manifest, t, model = fixture
    sched = _schedule(manifest, "scale_schedule", model.config.patchify)
    text = TextCondition.from_compact(t["in.text_kv_compact"][:7], [7])
    out = sample_scales(
        model, text, sched, generator=torch.Generator().manual_seed(0), tau=1e-8, return_logits=False
    )
    for k in range(sched.num_scales):
        assert torch.equal(out.bits_tok[k], t[f"smp.bits_tok.{k:02d}"])
    assert (out.summed_codes - t["smp.summed_codes"]).abs().max().item() <= 1e-6


def test_rope_table_equals_official_cache(parity_dir: Path) -> None:
    from safetensors.torch import load_file

    from nsarm_core.models.layers import rope2d_cos_sin
    from nsarm_core.scales import rope_positions

    ref = load_file(str(parity_dir / "scale_schedules.rope_1x1_hd128.safetensors"))["cos_sin"]  # [2, 521, 64]
    cos, sin = rope2d_cos_sin(rope_positions(get_schedule(1.0, "0.06M")), 128)
    assert torch.equal(torch.stack((cos, sin)), ref)

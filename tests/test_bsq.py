"""Multi-scale BSQ: invariants (Alg. 1 / Alg. 2) and parity with the official quantiser outputs."""

from __future__ import annotations

import math

import pytest
import torch

from nsarm_core.models.bsq import (
    BitFlipConfig,
    accumulate_codes,
    bits_to_codes,
    bsq_quantize,
    decompose_into_residual_scales,
    map_to_tokens,
    modified_gt_labels,
    patchify,
    resize_latent,
    teacher_forcing_inputs,
    tokens_to_map,
    unpatchify,
)
from tests.parity import load_manifest, load_tensors

GRIDS = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]


def _latent(seed: int = 0, d: int = 8, size: int = 8, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, d, size, size, generator=g)


def test_codes_are_unit_vectors_and_bits_round_trip() -> None:
    x = _latent()
    codes, bits = bsq_quantize(x)
    d = x.shape[1]
    assert bits.dtype == torch.uint8 and bits.shape == (2, 8, 8, d)
    assert torch.allclose(codes.abs(), torch.full_like(codes, 1 / math.sqrt(d)))
    assert torch.allclose(codes.norm(dim=1), torch.ones(2, 8, 8))
    assert torch.equal(bits_to_codes(bits), codes)
    # sign rule: a component <= 0 gives bit 0
    zero = torch.zeros(1, 4, 1, 1)
    assert bsq_quantize(zero)[1].sum() == 0


def test_straight_through_passes_gradients() -> None:
    x = _latent().requires_grad_(True)
    codes, _ = bsq_quantize(x, straight_through=True)
    codes.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.allclose(codes.detach(), bsq_quantize(x.detach())[0], atol=1e-6)


def test_decomposition_then_accumulation_reproduces_the_quantised_latent() -> None:
    x = _latent()
    rs = decompose_into_residual_scales(x, GRIDS)
    assert [tuple(b.shape[1:3]) for b in rs.bits] == GRIDS
    assert torch.allclose(accumulate_codes(rs.codes, (8, 8)), rs.f_hat, atol=1e-6)
    # every later residual is what the earlier codes left unexplained
    resid = x - accumulate_codes(rs.codes[:2], (8, 8))
    assert torch.allclose(rs.residuals[2], resize_latent(resid, (4, 4), "area"), atol=1e-6)
    # the accumulated latent approximates the input better than the first scale alone
    err_all = (rs.f_hat - x).pow(2).mean()
    err_one = (accumulate_codes(rs.codes[:1], (8, 8)) - x).pow(2).mean()
    assert err_all < err_one


def test_alg2_with_no_predicted_scales_equals_alg1() -> None:
    x = _latent(3)
    a = decompose_into_residual_scales(x, GRIDS)
    b = modified_gt_labels(x, [], GRIDS)
    for ba, bb in zip(a.bits, b.bits, strict=True):
        assert torch.equal(ba, bb)
    assert torch.equal(a.f_hat, b.f_hat)


def test_alg2_hand_checked_case() -> None:
    """Two scales (1x1 then 2x2) with d=2, worked by hand."""
    hr = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, -1.0], [-1.0, 5.0]]]])  # [1, 2, 2, 2]
    predicted = [torch.tensor([[[[-0.5]], [[0.25]]]])]  # K_t = 1: the transformation net says (-, +)
    rs = modified_gt_labels(hr, predicted, [(1, 1), (2, 2)])
    s = 1 / math.sqrt(2)
    # scale 0: label = bits of the prediction, not of the HR latent (whose pooled residual is (+, +))
    assert rs.bits[0].flatten().tolist() == [0, 1]
    # scale 1: residual = HR - up(code_0) with code_0 = (-s, +s) everywhere
    expected_residual = hr - torch.tensor([-s, s]).view(1, 2, 1, 1)
    assert torch.allclose(rs.residuals[1], expected_residual)
    expected_bits = (expected_residual > 0).permute(0, 2, 3, 1).to(torch.uint8)
    assert torch.equal(rs.bits[1], expected_bits)
    # Alg. 1 on the same latent gives a different first label
    assert decompose_into_residual_scales(hr, [(1, 1), (2, 2)]).bits[0].flatten().tolist() == [1, 1]


def test_gradients_reach_the_predictions_through_modified_labels() -> None:
    x = _latent(1)
    pred = [torch.randn(2, 8, 1, 1, requires_grad=True), torch.randn(2, 8, 2, 2, requires_grad=True)]
    rs = modified_gt_labels(x, pred, GRIDS, straight_through=True)
    inputs = teacher_forcing_inputs(rs.codes, GRIDS, (8, 8), "bilinear")
    sum(i.sum() for i in inputs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pred)


def test_bit_flips_keep_labels_correct_and_are_seeded() -> None:
    x = _latent(2)
    flip = BitFlipConfig(layers=5, strength=0.3)
    a = decompose_into_residual_scales(x, GRIDS, flip=flip, generator=torch.Generator().manual_seed(7))
    b = decompose_into_residual_scales(x, GRIDS, flip=flip, generator=torch.Generator().manual_seed(7))
    clean = decompose_into_residual_scales(x, GRIDS)
    for ba, bb in zip(a.bits, b.bits, strict=True):
        assert torch.equal(ba, bb)
    assert not all(torch.equal(c1, c2) for c1, c2 in zip(a.codes, clean.codes, strict=True))
    # labels are the correct bits given the corrupted history: scale 0 sees no history
    assert torch.equal(a.bits[0], clean.bits[0])


def test_flipping_changes_exactly_the_flipped_codes() -> None:
    x = _latent(4)
    _, bits = bsq_quantize(x)
    flipped = bits.clone()
    flipped[0, 0, 0, :3] ^= 1
    diff = (bits_to_codes(flipped) != bits_to_codes(bits)).sum().item()
    assert diff == 3


def test_layout_helpers_round_trip() -> None:
    x = _latent(5, d=14, size=8)
    p = patchify(x)
    assert p.shape == (2, 56, 4, 4)
    # channel c*4 + dy*2 + dx holds pixel (2y+dy, 2x+dx) of channel c
    assert p[0, 3 * 4 + 1 * 2 + 0, 1, 2] == x[0, 3, 3, 4]
    assert torch.equal(unpatchify(p), x)
    t = map_to_tokens(p)
    assert t.shape == (2, 16, 56)
    assert torch.equal(tokens_to_map(t, 4, 4), p)


def test_resize_modes() -> None:
    x = _latent(6)
    assert resize_latent(x, (8, 8), "area") is x
    assert torch.allclose(resize_latent(x, (4, 4), "area"), torch.nn.functional.avg_pool2d(x, 2))
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_latent(x, (4, 4), "nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last scale"):
        decompose_into_residual_scales(x, [(1, 1), (4, 4)])


@pytest.mark.parametrize("name", ["vae_d14_patchify", "vae_d32"])
def test_quantiser_parity_with_official(parity_dir, name: str) -> None:
    manifest = load_manifest(parity_dir, name)
    t = load_tensors(parity_dir, name)
    raw = t["raw_latent"]
    latent = raw.reshape(raw.shape[0], raw.shape[1], *raw.shape[-2:])
    for tag, sched in manifest["schedules"].items():
        grids = [(s[1], s[2]) for s in sched]
        rs = decompose_into_residual_scales(latent, grids)
        for k in range(len(grids)):
            ref = t[f"{tag}.bits.{k:02d}"].reshape(rs.bits[k].shape)
            assert torch.equal(ref, rs.bits[k]), f"{name} {tag} bits of scale {k} differ"
        assert (t[f"{tag}.F_hat"].reshape(rs.f_hat.shape) - rs.f_hat).abs().max() <= 1e-6
        # the quantiser's own next-scale inputs use area down-sampling of the accumulated latent
        for k, ours in enumerate(teacher_forcing_inputs(rs.codes, grids, grids[-1], "area"), start=1):
            ref = t[f"{tag}.var_input.{k:02d}"].reshape(ours.shape)
            assert (ref - ours).abs().max() <= 1e-6, f"{name} {tag} var_input {k}"

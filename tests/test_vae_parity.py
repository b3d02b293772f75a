"""BSQ-VAE parity with the official Infinity code (fixtures vae_d14_patchify and vae_d32, see ../shared/parity).

The full-size VAEs are filled with the fixture weight formula through our official-checkpoint loader (strict)
and run on the stored 256x256 input in float32 on CPU.

Tolerance note for ``decoded`` of the d32 (stride-16) VAE: with the formula weights its decoder is extremely
ill-conditioned. A relative perturbation of 1e-7 of the input latent moves the output by 2.8e-3, two float32
implementations that differ only in reduction order (1 vs 2 threads, oneDNN on/off) differ by up to 2.5e-3, and a
float64 run of our decoder is 1.7e-3 away from the stored float32 reference. The stored reference is therefore
only reproducible to about 2e-3 unless the convolution kernels round identically. The d14 decoder, which is better
conditioned, matched the reference bit for bit where the fixtures were made (max 1.0e-3, mean 3.3e-5 on an
AVX2-only AMD EPYC, whose kernels sum in another order), so it is checked at max <= 3e-3 and mean <= 2e-4; the d32
decoder is checked at max <= 1.5e-2 and mean <= 2e-4 (measured: 2.0e-3 and 4.5e-5 where the fixtures were made;
5.7e-3 and 7.7e-5 on that AMD EPYC).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nsarm_core.errors import ConfigError
from nsarm_core.models.bsq import teacher_forcing_inputs
from nsarm_core.models.vae import BSQVAE, MASK_KEYS, VAEConfig, load_official_vae_state_dict
from tests.parity import load_manifest, load_tensors, official_state_dict

FIXTURES = ("vae_d14_patchify", "vae_d32")
# (max, mean), see module docstring. The max bounds also cover AVX2-only CPUs (AMD EPYC Zen 3, where CI runs):
# their convolution kernels sum in another order, measured max 1.0e-3 (d14) and 5.7e-3 (d32) with means of
# 3.3e-5 and 7.7e-5, so the tight mean bounds still catch any real difference.
DECODE_TOL = {"vae_d14_patchify": (3e-3, 2e-4), "vae_d32": (1.5e-2, 2e-4)}


class _Fixture:
    def __init__(self, parity_dir: Path, name: str) -> None:
        self.name = name
        self.manifest: dict[str, Any] = load_manifest(parity_dir, name)
        self.tensors = load_tensors(parity_dir, name)
        self.official = official_state_dict(self.manifest)
        cfg = self.manifest["config"]
        assert cfg["encoder_ch_mult"] == cfg["decoder_ch_mult"]
        self.config = VAEConfig(
            codebook_dim=cfg["codebook_dim"],
            patch_size=cfg["patch_size"],
            ch_mult=tuple(cfg["encoder_ch_mult"]),
            spatial_patchify=cfg["patch_size"] == 8,
        )
        self.model = BSQVAE(self.config).eval()
        self.report = load_official_vae_state_dict(self.model, self.official, strict=True)
        self._raw: torch.Tensor | None = None

    @property
    def raw_latent(self) -> torch.Tensor:
        if self._raw is None:
            with torch.no_grad():
                self._raw = self.model.encode_raw(self.tensors["input_image"])
        return self._raw


@pytest.fixture(scope="module")
def fx(request: pytest.FixtureRequest, parity_dir: Path) -> _Fixture:
    """The loaded full-size VAE of one fixture (built once per module and fixture name)."""
    return _Fixture(parity_dir, request.param)


ALL = pytest.mark.parametrize("fx", FIXTURES, indirect=True)
SCHEDULE_CASES = pytest.mark.parametrize(
    ("fx", "tag"),
    [("vae_d14_patchify", "default"), ("vae_d14_patchify", "patchify"), ("vae_d32", "default")],
    indirect=["fx"],
)


@ALL
def test_strict_load_fills_every_parameter(fx: _Fixture) -> None:
    sd = fx.model.state_dict()
    assert fx.report.loaded == len(sd) == len(fx.manifest["state_dict"]) - 2
    assert set(fx.report.ignored) == set(MASK_KEYS)
    assert sum(p.numel() for p in fx.model.parameters()) == fx.manifest["n_params"]
    for key, value in sd.items():
        assert torch.equal(value, fx.official[key]), key


@ALL
def test_raw_latent(fx: _Fixture) -> None:
    ref = fx.tensors["raw_latent"]
    assert fx.raw_latent.shape == ref.shape
    # 5e-4: with one torch thread the d14 encoder's convolution sums round differently and the latent moves by
    # 2e-4 (measured); with two threads it matches to 1e-4.
    assert float((fx.raw_latent - ref).abs().max()) <= 5e-4


@SCHEDULE_CASES
def test_quantizer_bits_fhat_and_var_inputs(fx: _Fixture, tag: str) -> None:
    t = fx.tensors
    grids = [tuple(g[1:]) for g in fx.manifest["schedules"][tag]]
    # 'default' = the official quantiser called without a schedule: our vae_default_schedule must pick the same grids
    rs = fx.model.quantize(t["raw_latent"], None if tag == "default" else grids)
    assert len(rs.bits) == len(grids)
    for k, bits in enumerate(rs.bits):
        ref = t[f"{tag}.bits.{k:02d}"][:, 0]  # official [B,1,h,w,d] -> ours [B,h,w,d]
        assert bits.shape == ref.shape, k
        # margins (bsq_sign_margin) are >= 4e-6, far above float32 rounding: every bit must agree
        assert torch.equal(bits, ref), f"{tag} scale {k}: {(bits != ref).sum().item()} bits differ"
    assert float((rs.f_hat - t[f"{tag}.F_hat"]).abs().max()) <= 1e-6
    # the quantiser's own next-scale inputs use area down-sampling of the accumulated latent (spec A.6)
    var_inputs = teacher_forcing_inputs(rs.codes, grids, rs.f_hat.shape[-2:], "area")
    assert len(var_inputs) == len(grids) - 1
    for k, vi in enumerate(var_inputs, start=1):
        ref = t[f"{tag}.var_input.{k:02d}"][:, :, 0]
        assert vi.shape == ref.shape
        assert float((vi - ref).abs().max()) <= 1e-6, k


def _check_decode(fx: _Fixture, latent: torch.Tensor, ref: torch.Tensor) -> None:
    with torch.no_grad():
        out = fx.model.decode(latent)
    assert out.shape == ref.shape and float(out.abs().max()) <= 1.0
    diff = (out - ref).abs()
    max_tol, mean_tol = DECODE_TOL[fx.name]
    assert float(diff.max()) <= max_tol and float(diff.mean()) <= mean_tol, (
        float(diff.max()),
        float(diff.mean()),
    )


@pytest.mark.slow  # three more full-size 256x256 decodes (~3 s each on 2 idle cores)
@SCHEDULE_CASES
def test_decode_f_hat(fx: _Fixture, tag: str) -> None:
    _check_decode(fx, fx.tensors[f"{tag}.F_hat"], fx.tensors[f"{tag}.decoded"])


@ALL
def test_decode_raw_latent(fx: _Fixture) -> None:
    _check_decode(fx, fx.tensors["raw_latent"], fx.tensors["raw_latent.decoded"])


def _plain(key: str) -> str:
    parts = key.split(".")
    assert parts[-2] in ("conv", "norm"), key
    return ".".join(parts[:-2] + parts[-1:])


@ALL
def test_loader_accepts_the_spelling_without_inner_wrappers(fx: _Fixture) -> None:
    renamed = {(k if k in MASK_KEYS else _plain(k)): v for k, v in fx.official.items()}
    assert "encoder.conv_in.weight" in renamed and "encoder.down.0.block.0.norm1.weight" in renamed
    assert "encoder.down.0.downsample.conv.weight" in renamed and "decoder.up.1.upsample.conv.bias" in renamed
    with torch.no_grad():
        for p in fx.model.parameters():
            p.zero_()
    report = load_official_vae_state_dict(fx.model, {"vae": renamed}, strict=True)
    assert len(report.renamed) == report.loaded == len(fx.model.state_dict())
    for key, value in fx.model.state_dict().items():
        assert torch.equal(value, fx.official[key]), key


@ALL
def test_loader_rejects_unknown_keys_and_wrong_shapes(fx: _Fixture) -> None:
    with pytest.raises(ConfigError, match=r"unexpected keys: encoder\.down\.0\.attn\.0\.q\.weight"):
        load_official_vae_state_dict(
            fx.model, {**fx.official, "encoder.down.0.attn.0.q.weight": torch.zeros(1)}
        )
    bad = dict(fx.official)
    key = "encoder.conv_out.conv.weight"
    bad[key] = torch.zeros(bad[key].shape[0] + 1, *bad[key].shape[1:])
    with pytest.raises(ConfigError, match=r"encoder\.conv_out\.conv\.weight: checkpoint shape"):
        load_official_vae_state_dict(fx.model, bad)
    # the model was not touched by the failed loads
    assert torch.equal(fx.model.state_dict()[key], fx.official[key])

"""Controllable feature wrapping (CFW): the LR image's own features fused into the VAE decoder, scaled by ``w``.

Not a paper component of NSARM: our extension, docs/architecture.md E.11.

Why: NSARM passes the LR to its generator only through the first K_t bit-quantised scales (about 0.2 bits per
pixel for nsarm-tiny). The paper's 8 B-parameter prior and GAN-trained decoder fill in the rest; a 5 M-parameter
model cannot, and loses faces, text and thin structures (docs/model_card.md, "Why v1 stays below bicubic"). CFW is
StableSR's answer to the same problem for a latent diffusion model (Wang et al., "Exploiting Diffusion Prior for
Real-World Image Super-Resolution", 2023, Sec. 3.3): a small encoder turns the LR *pixels* into feature maps at
the decoder's resolutions, and at each decoder level

    F_m = F_d + w * C(concat(F_d, F_e))                                          (StableSR Eq. 4)

with ``C`` a small convolution stack whose last layer starts at zero. ``w`` is an inference-time scalar in
[0, 1]: ``w = 0`` skips the fusion entirely, so the decoder computes exactly what it computes without CFW (the
paper's NSARM path, bit for bit); ``w = 1`` is the most faithful to the LR. The decoder's own keys are untouched
(official checkpoints still load); the CFW weights live under ``cfw.*`` of an NSARM model
(:mod:`nsarm_core.models.nsarm`).

Geometry: a decoder level ``i`` works at ``latent * 2^u_i`` pixels, where ``u_i`` counts the upsamplings before
it; relative to the LR window that is ``2^k_i`` with ``k_i = log2(scale / patch_size) + u_i`` (for nsarm-tiny and
nsarm-8b, stride 8 and x4: levels at LR/2, LR, 2 LR, 4 LR). The LR encoder builds one feature pyramid over
those powers of two: a residual trunk at LR resolution, stride-2 convolutions below it and pixel-shuffle steps
above it.

Shape legend: ``lr [B, 3, h, w]`` in [-1, 1]; decoder level features ``[B, C_i, h * 2^k_i, w * 2^k_i]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nsarm_core.errors import ConfigError, check_known_keys, unknown_choice
from nsarm_core.models.vae import VAEConfig, decoder_swish, swish

# The rule lives in the torch-free nsarm_core.upscaler, so the batch layer checks --fidelity without torch.
from nsarm_core.upscaler import check_fidelity

# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CFWConfig:
    """Hyper-parameters of the LR encoder and the fusion blocks.

    Attributes:
        width: channels of the LR trunk (and of the pyramid levels at or below LR resolution).
        num_blocks: residual blocks of the trunk at LR resolution (where most of the LR analysis happens).
        up_width: channels of the pyramid levels above LR resolution (cheaper: they run at 4x/16x the pixels).
        default_fidelity: the ``w`` used when the caller gives none (recorded in the model's ``config.json``).
    """

    width: int = 64
    num_blocks: int = 6
    up_width: int = 32
    default_fidelity: float = 0.5

    def __post_init__(self) -> None:
        for name in ("width", "num_blocks", "up_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"cfw.{name} must be a positive integer, got {value!r}")
        check_fidelity(self.default_fidelity, "cfw.default_fidelity")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CFWConfig:
        check_known_keys(data, cls.__dataclass_fields__, "CFW config keys")
        return cls(**dict(data))


PRESETS: dict[str, CFWConfig] = {
    "tiny": CFWConfig(width=64, num_blocks=6, up_width=32),
    # For the official nsarm-8b decoder (d56 VAE, 1024 px windows): the same shape, wider.
    "large": CFWConfig(width=128, num_blocks=8, up_width=64),
}


def get_preset(name: str) -> CFWConfig:
    """A named :class:`CFWConfig` (``tiny`` for nsarm-tiny, ``large`` for big decoders)."""
    if name not in PRESETS:
        raise unknown_choice("CFW preset", name, PRESETS)
    return PRESETS[name]


def decoder_levels(vae: VAEConfig, scale: int) -> list[tuple[int, int]]:
    """``(channels, k)`` of each decoder level ``i`` (index = the decoder's ``up[i]``), resolution ``LR * 2^k``.

    The decoder runs level ``L-1`` first at the latent grid (``LR * scale / patch_size``) and doubles the grid
    after each level of ``vae.decoder_upsample_levels`` (``1 <= i <= num_downsamples`` for the official decoder;
    see ``vae.Decoder``).
    """
    ratio = scale / vae.patch_size  # latent grid / LR pixels
    k_latent = math.log2(ratio)
    if k_latent != int(k_latent):
        raise ConfigError(
            f"CFW needs scale / VAE stride to be a power of two, got scale {scale} and stride {vae.patch_size}"
        )
    levels: list[tuple[int, int]] = [(0, 0)] * len(vae.ch_mult)
    k = int(k_latent)
    for i in reversed(range(len(vae.ch_mult))):
        levels[i] = (vae.base_ch * vae.ch_mult[i], k)
        if i in vae.decoder_upsample_levels:
            k += 1
    return levels


# ----------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------


class _ResBlock(nn.Module):
    """conv3x3 -> swish -> conv3x3 plus identity (no normalisation: the trunk sees one LR window at a time)."""

    def __init__(self, channels: int, act: Callable[[Tensor], Tensor] = swish) -> None:
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class LREncoder(nn.Module):
    """LR pixels ``[B, 3, h, w]`` in [-1, 1] -> one feature map per power of two ``k`` in ``ks``."""

    def __init__(self, config: CFWConfig, ks: list[int], act: Callable[[Tensor], Tensor] = swish) -> None:
        super().__init__()
        self.act = act
        c, cu = config.width, config.up_width
        self.ks = sorted(set(ks))
        self.conv_in = nn.Conv2d(3, c, 3, padding=1)
        self.trunk = nn.Sequential(*[_ResBlock(c, act) for _ in range(config.num_blocks)])
        self.trunk_out = nn.Conv2d(c, c, 3, padding=1)
        # Below LR resolution: one stride-2 conv per halving; above it: conv + pixel shuffle per doubling.
        self.down = nn.ModuleList(
            nn.Conv2d(c, c, 3, stride=2, padding=1) for _ in range(max(0, -min(self.ks + [0])))
        )
        ups: list[nn.Module] = []
        for j in range(max(0, max(self.ks + [0]))):
            ups.append(
                nn.Sequential(nn.Conv2d(c if j == 0 else cu, cu * 4, 3, padding=1), nn.PixelShuffle(2))
            )
        self.up = nn.ModuleList(ups)

    def channels(self, k: int) -> int:
        return self.trunk_out.out_channels if k <= 0 else self.up[0][0].out_channels // 4

    def forward(self, lr: Tensor) -> dict[int, Tensor]:
        x = self.conv_in(lr)
        x = x + self.trunk_out(self.trunk(x))
        pyramid = {0: x}
        h = x
        for j, conv in enumerate(self.down):
            h = self.act(conv(h))
            pyramid[-(j + 1)] = h
        h = x
        for j, block in enumerate(self.up):
            h = self.act(block(h))
            pyramid[j + 1] = h
        return {k: pyramid[k] for k in self.ks}


class FusionBlock(nn.Module):
    """``C(concat(F_d, F_e))``: conv3x3 -> swish -> conv1x1, the last layer zero-initialised (StableSR Eq. 4)."""

    def __init__(self, dec_channels: int, lr_channels: int, act: Callable[[Tensor], Tensor] = swish) -> None:
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(dec_channels + lr_channels, dec_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(dec_channels, dec_channels, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, dec: Tensor, lr_feat: Tensor) -> Tensor:
        return self.conv2(self.act(self.conv1(torch.cat([dec, lr_feat.to(dec.dtype)], dim=1))))


class CFW(nn.Module):
    """The LR encoder and one fusion block per decoder level of a given VAE and SR scale.

    Use :meth:`wrap` to get the hook that :meth:`nsarm_core.models.vae.Decoder.forward` calls after each level.
    """

    def __init__(self, config: CFWConfig, vae: VAEConfig, scale: int) -> None:
        super().__init__()
        self.config = config
        self.levels = decoder_levels(vae, scale)
        act = decoder_swish(vae)  # the decoder's swish: F.silu for models with VAEConfig.fast_silu
        self.encoder = LREncoder(config, [k for _, k in self.levels], act)
        self.fuse = nn.ModuleList(FusionBlock(c, self.encoder.channels(k), act) for c, k in self.levels)

    def wrap(self, lr: Tensor, fidelity: float | Tensor) -> FeatureWrap | None:
        """The decoder hook for the LR window ``lr`` ``[B, 3, h, w]`` in [-1, 1] and fidelity ``w``.

        ``fidelity`` is a float (one ``w`` for the batch) or a tensor ``[B]`` (one per sample, for training).
        A float 0 returns ``None``: the decoder then runs its plain path, bit for bit.
        """
        if not isinstance(fidelity, Tensor):
            if check_fidelity(fidelity) == 0.0:
                return None
        dtype = next(self.parameters()).dtype
        return FeatureWrap(self, self.encoder(lr.to(dtype)), fidelity)


class FeatureWrap:
    """What the decoder calls after level ``i``: ``F_d + w * C_i(concat(F_d, F_e,i))``."""

    def __init__(self, cfw: CFW, features: dict[int, Tensor], fidelity: float | Tensor) -> None:
        self.cfw = cfw
        self.features = features
        self.fidelity = fidelity

    def __call__(self, level: int, dec: Tensor) -> Tensor:
        _, k = self.cfw.levels[level]
        lr_feat = self.features[k]
        if lr_feat.shape[-2:] != dec.shape[-2:]:
            raise ConfigError(
                f"CFW level {level}: LR features {tuple(lr_feat.shape[-2:])} do not match the decoder's "
                f"{tuple(dec.shape[-2:])}; the LR window must be the latent window divided by the SR scale"
            )
        delta = self.cfw.fuse[level](dec, lr_feat)
        w = self.fidelity
        if isinstance(w, Tensor):
            w = w.to(delta.dtype).reshape(-1, 1, 1, 1)
        return dec + w * delta


def build_cfw(preset: str | CFWConfig, vae: VAEConfig, scale: int) -> CFW:
    """A randomly initialised :class:`CFW` (fusion outputs start at zero) for ``vae`` at SR factor ``scale``."""
    return CFW(get_preset(preset) if isinstance(preset, str) else preset, vae, scale)

"""BSQ-VAE tokenizer: a Flux-style convolutional autoencoder around the multi-scale BSQ of ``bsq.py``.

Paper: NSARM (arXiv 2510.00820) Sec. 3 uses Infinity-8B's tokenizer unchanged; spec: docs/architecture.md
A.1-A.5 (``infinity/models/bsq_vae/{vae,flux_vqgan,conv}.py``) and checklist H.1, H.12.

The module tree reproduces the official state-dict keys exactly (``encoder.conv_in.conv.weight``,
``encoder.down.{i}.block.{j}.norm1.norm.weight``, ``decoder.up.{i}.upsample.conv.conv.bias``, ...), so real
checkpoints load with no renaming. The only official keys we do not carry are the two aliases of the quantiser's
deterministic ``mask`` buffer (``quantizer.lfq.mask``/``quantize.lfq.mask``); the loader verifies and drops them.
There is no attention block, no quant_conv and no VAE sampling: the encoder outputs the raw ``d``-channel latent.

Shape legend:
    B          batch
    H_px, W_px image size (pixels); the image is RGB in [-1, 1]
    d          latent channels = codebook_dim (14 for the 8B/NSARM tokenizer, 32 for Infinity-2B)
    h, w       latent grid = image size / patch_size (stride 8 or 16)
    C          feature channels = base_ch * ch_mult[level]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsarm_core.errors import ConfigError, InputError, check_known_keys, unknown_choice
from nsarm_core.models import checkpoint
from nsarm_core.models.bsq import ResidualScales, decompose_into_residual_scales
from nsarm_core.scales import ScaleSchedule, vae_default_schedule

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


def norm_groups(channels: int) -> int:
    """GroupNorm group count: the official rule (32 if C % 32 == 0, else 24), extended for small models.

    The official ``Normalize`` uses 24 groups whenever C is not a multiple of 32, which only works for multiples of
    24. For other channel counts (our tiny presets) we take the largest divisor of C that is <= 32; for every
    channel count the official rule accepts, the result is the same.
    """
    if channels % 32 == 0:
        return 32
    if channels % 24 == 0:
        return 24
    for g in range(min(32, channels), 0, -1):
        if channels % g == 0:
            return g
    raise ConfigError(f"GroupNorm needs a positive channel count, got {channels}")


@dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of the BSQ-VAE (the official builder fixes everything but d, stride and ch_mult, A.1).

    Attributes:
        codebook_dim: latent channels d (= bits per VAE position; codebook size 2^d).
        patch_size: spatial stride of the encoder (8 or 16; any power of two >= 2 for our own models).
        ch_mult: channel multiplier per resolution level; ``len(ch_mult) > log2(patch_size)``.
        base_ch: channels of level 0.
        num_res_blocks: ResnetBlocks per encoder level (the decoder uses one more).
        in_channels: image channels.
        norm_eps: GroupNorm epsilon.
        spatial_patchify: the transformer sees 2x2 pixel-unshuffled latents (4d channels per token at stride
            2*patch_size); true for the stride-8 d=14 tokenizer of Infinity-8B / NSARM.
        fast_silu: the decoder (and a CFW module around it) computes its swish with the fused ``F.silu``
            instead of the official ``x * sigmoid(x)`` (:func:`swish`): the same function, rounded differently,
            about 20 % less decoder time on a CPU (nsarm-tiny, bf16: the two elementwise passes took 18 % of
            it). Only for models not bound to the official outputs (our own); False for every official preset,
            and the encoder always keeps the official form (its latent feeds the sampler's bits).
        decoder_shuffle: our extension for small, fast decoders (docs/architecture.md E.12): the decoder skips its
            last ``log2(decoder_shuffle)`` nearest-x2 upsamplings (their 3x3 convolutions stay, at the coarser
            grid), so its finest levels run at ``1/decoder_shuffle`` of the output resolution, and its output
            convolution emits ``in_channels * decoder_shuffle**2`` channels that a pixel shuffle rearranges into
            the image. 1 (every official preset) is the official decoder;
            nsarm-tiny's fast decoder uses 2, which removes the two most expensive full-resolution stages.
        name: preset name (informational).
    """

    codebook_dim: int
    patch_size: int
    ch_mult: tuple[int, ...]
    base_ch: int = 128
    num_res_blocks: int = 2
    in_channels: int = 3
    norm_eps: float = 1e-6
    spatial_patchify: bool = False
    name: str = field(default="", compare=False)
    # How the decoder rounds, not what it is: configs that differ only here hold the same weights and geometry
    # (the training configs' "tiny-d14" tokenizer is nsarm-tiny's), so equality ignores it.
    fast_silu: bool = field(default=False, compare=False)
    decoder_shuffle: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        label = f"VAEConfig {self.name!r}" if self.name else "VAEConfig"
        if self.codebook_dim < 1:
            raise ConfigError(f"{label}: codebook_dim must be >= 1, got {self.codebook_dim}")
        if self.patch_size < 2 or self.patch_size & (self.patch_size - 1):
            raise ConfigError(f"{label}: patch_size must be a power of two >= 2, got {self.patch_size}")
        if len(self.ch_mult) < self.num_downsamples + 1:
            raise ConfigError(
                f"{label}: patch_size {self.patch_size} needs {self.num_downsamples} downsamples, so ch_mult must "
                f"have at least {self.num_downsamples + 1} levels; got {list(self.ch_mult)}"
            )
        if self.base_ch < 1 or self.num_res_blocks < 1 or min(self.ch_mult) < 1:
            raise ConfigError(f"{label}: base_ch, num_res_blocks and ch_mult entries must be positive")
        for c in {self.base_ch * m for m in self.ch_mult}:
            norm_groups(c)  # raises ConfigError for channel counts no group count fits
        s = self.decoder_shuffle
        if not isinstance(s, int) or s < 1 or s & (s - 1) or s > self.patch_size:
            raise ConfigError(
                f"{label}: decoder_shuffle must be a power of two between 1 and patch_size {self.patch_size}, "
                f"got {s!r}"
            )

    @property
    def num_downsamples(self) -> int:
        """log2(patch_size): the encoder halves the grid after levels ``0..num_downsamples-1``."""
        return int(math.log2(self.patch_size))

    @property
    def decoder_upsample_levels(self) -> tuple[int, ...]:
        """Decoder levels ``i`` followed by a nearest x2 upsampling (the official ``1 <= i <= num_downsamples``,
        less the ``log2(decoder_shuffle)`` finest ones that the output pixel shuffle replaces)."""
        skipped = int(math.log2(self.decoder_shuffle))
        return tuple(range(1 + skipped, self.num_downsamples + 1))

    @property
    def token_dim(self) -> int:
        """Bits per transformer token: 4d with spatial patchify (e.g. 56 for d=14), else d."""
        return 4 * self.codebook_dim if self.spatial_patchify else self.codebook_dim

    @property
    def token_stride(self) -> int:
        """Pixels per transformer token: 2*patch_size with spatial patchify, else patch_size."""
        return 2 * self.patch_size if self.spatial_patchify else self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        out = asdict(self)
        out["ch_mult"] = list(self.ch_mult)
        if not self.fast_silu:  # written only when set, so configs saved before it keep their bytes
            del out["fast_silu"]
        if self.decoder_shuffle == 1:  # likewise: the official decoder's configs do not name it
            del out["decoder_shuffle"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VAEConfig:
        """Inverse of :meth:`to_dict`; unknown fields raise ConfigError."""
        check_known_keys(data, cls.__dataclass_fields__, "VAEConfig fields")
        return cls(**dict(data))


PRESETS: dict[str, VAEConfig] = {
    # Infinity-2B tokenizer (infinity_vae_d32reg.pth / infinity_vae_d32.pth): stride 16, 110,118,051 params.
    "infinity-vae-d32": VAEConfig(32, 16, (1, 2, 4, 4, 4), name="infinity-vae-d32"),
    # Infinity-8B / NSARM tokenizer (infinity_vae_d56_f8_14_patchify.pth): stride 8, d=14, the transformer sees
    # 2x2-patchified 56-bit tokens. 81,624,209 params.
    "infinity-vae-d56": VAEConfig(14, 8, (1, 2, 4, 4), spatial_patchify=True, name="infinity-vae-d56"),
    # The other released stride-16 tokenizers.
    "infinity-vae-d16": VAEConfig(16, 16, (1, 2, 4, 4, 4), name="infinity-vae-d16"),
    "infinity-vae-d24": VAEConfig(24, 16, (1, 2, 4, 4, 4), name="infinity-vae-d24"),
    "infinity-vae-d64": VAEConfig(64, 16, (1, 2, 4, 4, 4), name="infinity-vae-d64"),
    # Our small tokenizers (tests, toy training): the NSARM geometry (stride 8 + 2x2 patchify) at base_ch 32.
    "tiny": VAEConfig(8, 8, (1, 2, 2, 2), base_ch=32, spatial_patchify=True, name="tiny"),
    "tiny-d14": VAEConfig(14, 8, (1, 2, 2, 2), base_ch=32, spatial_patchify=True, name="tiny-d14"),
}


def get_preset(name: str) -> VAEConfig:
    """Named :class:`VAEConfig`; unknown names raise ConfigError listing the valid ones and the closest match."""
    if name not in PRESETS:
        raise unknown_choice("VAE preset", name, sorted(PRESETS))
    return PRESETS[name]


def swish(x: Tensor) -> Tensor:
    """``x * sigmoid(x)``, written out as in the official ``flux_vqgan.swish``.

    ``F.silu`` is the same function but rounds differently; with the parity fixtures' weights that alone moves the
    latent by 1.3e-4 and the decoded image by 1e-3, while this form reproduces the official outputs bit for bit.
    """
    return x * torch.sigmoid(x)


def decoder_swish(cfg: VAEConfig) -> Callable[[Tensor], Tensor]:
    """The decoder's swish for ``cfg``: ``F.silu`` with ``cfg.fast_silu``, else the official :func:`swish`."""
    return F.silu if cfg.fast_silu else swish


# ----------------------------------------------------------------------------------------------------------
# Building blocks (A.2). The thin wrappers exist so the parameter names carry the official inner ``.conv`` /
# ``.norm`` segment.
# ----------------------------------------------------------------------------------------------------------


class Conv(nn.Module):
    """``nn.Conv2d`` under the attribute ``conv`` (official ``Conv`` wrapper, 2-D branch)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Normalize(nn.Module):
    """``nn.GroupNorm`` under the attribute ``norm`` (official ``Normalize``, group norm over space)."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups(channels), channels, eps=eps, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class ResnetBlock(nn.Module):
    """``norm1 -> swish -> conv1 -> norm2 -> swish -> conv2`` plus a shortcut (1x1 ``nin_shortcut`` if in != out)."""

    def __init__(self, in_ch: int, out_ch: int, eps: float, act: Callable[[Tensor], Tensor] = swish) -> None:
        super().__init__()
        self.act = act
        self.norm1 = Normalize(in_ch, eps)
        self.conv1 = Conv(in_ch, out_ch, 3, padding=1)
        self.norm2 = Normalize(out_ch, eps)
        self.conv2 = Conv(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = Conv(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, h, w] -> [B, C_out, h, w]
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if self.nin_shortcut is not None else x
        return shortcut + h


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a 3x3 stride-2 conv without padding (halves h and w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, h, w] -> [B, C, h/2, w/2]
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv (the official ``use_pxsf=False`` path).

    ``factor=1`` keeps only the conv: a fast decoder (``VAEConfig.decoder_shuffle``) keeps the skipped upsamplings'
    convolutions at the coarser grid, so every tensor of the full decoder has a place to start from.
    """

    def __init__(self, channels: int, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, h, w] -> [B, C, factor*h, factor*w]
        if self.factor == 1:
            return self.conv(x)
        return self.conv(F.interpolate(x, scale_factor=float(self.factor), mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ModuleList of ResnetBlocks) and an optional ``downsample``/``upsample``."""

    def __init__(self, blocks: list[ResnetBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)


class _Mid(nn.Module):
    """The middle stage: ``block_1`` and ``block_2`` (no attention: ``cnn_attention='no'``)."""

    def __init__(self, channels: int, eps: float, act: Callable[[Tensor], Tensor] = swish) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, eps, act)
        self.block_2 = ResnetBlock(channels, channels, eps, act)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.block_1(x))


# ----------------------------------------------------------------------------------------------------------
# Encoder and decoder (A.3, A.4)
# ----------------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """RGB ``[B, 3, H_px, W_px]`` in [-1, 1] -> raw continuous latent ``[B, d, H_px/p, W_px/p]``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, eps = cfg.base_ch, cfg.norm_eps
        self.conv_in = Conv(cfg.in_channels, ch, 3, padding=1)
        in_mult = (1, *cfg.ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(cfg.ch_mult):
            block_in = ch * in_mult[i]
            block_out = ch * mult
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, eps))
                block_in = block_out
            level = _Level(blocks)
            if i < cfg.num_downsamples:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _Mid(block_in, eps)
        self.norm_out = Normalize(block_in, eps)
        self.conv_out = Conv(block_in, cfg.codebook_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``[B, d, h, w]`` (summed codes or raw latent) -> RGB ``[B, 3, h*p, w*p]`` (unclamped)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, eps = cfg.base_ch, cfg.norm_eps
        self.act = decoder_swish(cfg)
        block_in = ch * cfg.ch_mult[-1]
        self.conv_in = Conv(cfg.codebook_dim, block_in, 3, padding=1)
        self.mid = _Mid(block_in, eps, self.act)
        levels: list[_Level] = []
        for i in reversed(range(len(cfg.ch_mult))):
            block_out = ch * cfg.ch_mult[i]
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, eps, self.act))
                block_in = block_out
            level = _Level(blocks)
            if 1 <= i <= cfg.num_downsamples:
                level.upsample = Upsample(block_in, 2 if i in cfg.decoder_upsample_levels else 1)
            levels.insert(0, level)  # up[i] is level i, as in the official ``self.up.insert(0, up)``
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(block_in, eps)
        # decoder_shuffle > 1 (our fast decoders, docs/architecture.md E.12): the last levels ran at 1/shuffle of
        # the output grid and the output convolution emits a shuffle x shuffle block of pixels per position.
        self.shuffle = cfg.decoder_shuffle
        self.conv_out = Conv(block_in, cfg.in_channels * self.shuffle**2, 3, padding=1)

    def forward(self, z: Tensor, wrap: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """``wrap(i, h)``, when given, replaces level ``i``'s output before its upsampling (CFW, ``cfw.py``)."""
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for block in level.block:
                h = block(h)
            if wrap is not None:
                h = wrap(i, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        out = self.conv_out(self.act(self.norm_out(h)))
        return F.pixel_shuffle(out, self.shuffle) if self.shuffle > 1 else out


# ----------------------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------------------


class BSQVAE(nn.Module):
    """Encoder + multi-scale BSQ + decoder (the official ``AutoEncoder`` with ``MultiScaleBSQ``, inference path).

    Use :meth:`encode_raw` for the continuous latent (NSARM's transformation network consumes it),
    :meth:`encode` for the per-scale bits/codes of a schedule, and :meth:`decode` for images.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    # --- encoding ---------------------------------------------------------------------------------------------

    def encode_raw(self, x: Tensor) -> Tensor:
        """Image ``[B, 3, H_px, W_px]`` in [-1, 1] -> raw latent ``[B, d, H_px/p, W_px/p]`` (``encode_for_raw_features``).

        The official encoder runs in fp32 (``encoder_dtype='fp32'``); here it runs in the encoder's dtype (the input is
        cast to it), so keep the encoder in fp32 for official-quality latents.
        """
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise InputError(
                f"VAE encoder expects an image batch [B, {self.config.in_channels}, H, W], got shape {tuple(x.shape)}"
            )
        p = self.config.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise InputError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of the VAE stride {p}; crop or pad the image"
            )
        return self.encoder(x.to(next(self.encoder.parameters()).dtype))

    def encode(
        self, x: Tensor, grids: ScaleSchedule | Sequence[Sequence[int]] | None = None
    ) -> ResidualScales:
        """Image -> per-scale residual bits/codes (paper Alg. 1; official ``MultiScaleBSQ.forward``).

        Args:
            x: image ``[B, 3, H_px, W_px]`` in [-1, 1].
            grids: VAE grids per scale (a :class:`ScaleSchedule` contributes its ``vae_grids``), the last equal to the
                latent grid. ``None`` = the official default schedule for the latent size
                (:func:`nsarm_core.scales.vae_default_schedule`).

        Returns:
            :class:`~nsarm_core.models.bsq.ResidualScales` (bits ``[B, h_k, w_k, d]``, codes, residuals, f_hat
            ``[B, d, h, w]``), computed in float32 as the official BSQ does.
        """
        return self.quantize(self.encode_raw(x), grids)

    def quantize(
        self, latent: Tensor, grids: ScaleSchedule | Sequence[Sequence[int]] | None = None
    ) -> ResidualScales:
        """Raw latent ``[B, d, h, w]`` -> per-scale decomposition (the official ``vae.quantizer(latent)``)."""
        if grids is None:
            grids = vae_default_schedule(latent.shape[-2], latent.shape[-1]).vae_grids
        elif isinstance(grids, ScaleSchedule):
            grids = grids.vae_grids
        return decompose_into_residual_scales(latent.float(), grids)

    # --- decoding ---------------------------------------------------------------------------------------------

    def decode(self, f_hat: Tensor, wrap: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """Latent ``[B, d, h, w]`` (summed codes ``f_hat`` or a raw latent) -> image ``[B, 3, h*p, w*p]`` in [-1, 1].

        ``wrap`` is an optional per-level decoder hook (controllable feature wrapping, ``cfw.CFW.wrap``).
        """
        if f_hat.dim() != 4 or f_hat.shape[1] != self.config.codebook_dim:
            raise InputError(
                f"VAE decoder expects a latent [B, {self.config.codebook_dim}, h, w], got shape {tuple(f_hat.shape)}"
            )
        dtype = next(self.decoder.parameters()).dtype
        return self.decoder(f_hat.to(dtype), wrap).clamp(-1.0, 1.0)

    def forward(self, x: Tensor, grids: ScaleSchedule | Sequence[Sequence[int]] | None = None) -> Tensor:
        """Reconstruction through the multi-scale quantiser: ``decode(encode(x, grids).f_hat)``."""
        return self.decode(self.encode(x, grids).f_hat)

    # --- our own checkpoints ----------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (float tensors as stored) into ``directory``."""
        return checkpoint.save_folder(
            directory, self.state_dict(), self.config.to_dict(), model_type="bsq_vae"
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> BSQVAE:
        """Rebuild a model written by :meth:`save_pretrained` (strict load)."""
        data, state = checkpoint.read_folder(directory, model_type="bsq_vae", writer="BSQVAE.save_pretrained")
        model = cls(VAEConfig.from_dict(data))
        load_official_vae_state_dict(model, state, strict=True)
        return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)


def build_vae(preset: str | VAEConfig) -> BSQVAE:
    """A randomly initialised :class:`BSQVAE` from a preset name or config."""
    return BSQVAE(get_preset(preset) if isinstance(preset, str) else preset)


# ----------------------------------------------------------------------------------------------------------
# Loading official checkpoints (A.5, H.1, H.12)
# ----------------------------------------------------------------------------------------------------------

MASK_KEYS = ("quantizer.lfq.mask", "quantize.lfq.mask")
"""Official buffer aliases of the BSQ's MSB-first bit weights ``[2^(d-1), ..., 2, 1]``; unused by bit-label models."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_official_vae_state_dict` did.

    Attributes:
        loaded: number of model tensors filled.
        renamed: official keys that were mapped from the spelling without the inner ``.conv``/``.norm``.
        ignored: known buffers that were verified and dropped (the quantiser masks).
        missing: model keys absent from the checkpoint (only non-empty with ``strict=False``).
        unexpected: checkpoint keys with no model counterpart (only non-empty with ``strict=False``).
    """

    loaded: int
    renamed: tuple[str, ...]
    ignored: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


def _plain_key(key: str) -> str | None:
    """``a.b.conv1.conv.weight`` -> ``a.b.conv1.weight``; ``...norm1.norm.bias`` -> ``...norm1.bias``."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[-2] in ("conv", "norm"):
        return ".".join(parts[:-2] + parts[-1:])
    return None


def load_official_vae_state_dict(
    model: BSQVAE, sd_or_path: Mapping[str, Any] | str | Path, *, strict: bool = True
) -> LoadReport:
    """Fill ``model`` from an official Infinity/NSARM VAE checkpoint (or one of ours).

    Accepts a path (``.pth`` read with ``torch.load(weights_only=True)``, or ``.safetensors``) or a mapping. A
    checkpoint dict holding a ``"vae"`` entry is unwrapped (the official builder reads ``ckpt["vae"]``). Keys may use
    either spelling: ``encoder.conv_in.conv.weight`` or ``encoder.conv_in.weight``, ``...norm1.norm.weight`` or
    ``...norm1.weight`` (the official ``load_cnn`` accepts both). The quantiser's ``mask`` buffers are verified to be
    ``[2^(d-1), ..., 1]`` and dropped.

    Args:
        model: the target :class:`BSQVAE` (its config must match the checkpoint).
        sd_or_path: state dict or file path.
        strict: raise on missing or unexpected keys (default). With ``False`` they are logged and returned.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ConfigError: unexpected/missing keys (strict), a key given in both spellings, a shape mismatch, a bad mask.
        WeightsNotFoundError: the path does not exist.
    """
    source = checkpoint.read_weights(sd_or_path) if isinstance(sd_or_path, (str, Path)) else sd_or_path
    if "vae" in source and isinstance(source["vae"], Mapping):
        source = source["vae"]
    target = model.state_dict()
    plain_to_model = {p: k for k in target if (p := _plain_key(k)) is not None}
    d = model.config.codebook_dim

    mapped: dict[str, Tensor] = {}
    renamed: list[str] = []
    ignored: list[str] = []
    unexpected: list[str] = []
    for key, value in source.items():
        if key in MASK_KEYS:
            expected = torch.tensor([2 ** (d - 1 - i) for i in range(d)], dtype=torch.int64)
            if (
                not isinstance(value, Tensor)
                or value.shape != expected.shape
                or not torch.equal(value.long(), expected)
            ):
                raise ConfigError(
                    f"checkpoint buffer {key} should be the bit weights [2^{d - 1}, ..., 2, 1] of a d={d} quantiser, "
                    f"got {value if not isinstance(value, Tensor) else value.tolist()}; is this the right VAE preset?"
                )
            ignored.append(key)
            continue
        name = key if key in target else plain_to_model.get(key)
        if name is None:
            unexpected.append(key)
            continue
        if name in mapped:
            raise ConfigError(f"checkpoint holds {name} twice (as {name!r} and its plain spelling); keep one")
        if not isinstance(value, Tensor):
            raise ConfigError(f"checkpoint entry {key} is a {type(value).__name__}, expected a tensor")
        if name != key:
            renamed.append(key)
        mapped[name] = value
    missing = sorted(set(target) - set(mapped))
    # Shapes are always checked; missing and unexpected keys only when strict (else they are reported below).
    checkpoint.check_state_dict(
        target,
        {**mapped, **dict.fromkeys(unexpected)} if strict else mapped,
        source="VAE checkpoint",
        what=f"VAE preset {model.config.name or '<custom>'}",
        hint="Check the preset (codebook_dim, stride, patch size) or pass strict=False for missing/unexpected keys.",
        optional=None if strict else (lambda _key: True),
    )
    if missing or unexpected:
        logger.warning("VAE load: %d missing and %d unexpected keys", len(missing), len(unexpected))
    with torch.no_grad():
        for name, value in mapped.items():
            target[name].copy_(
                value
            )  # state_dict tensors share storage with the parameters; copy_ casts dtype
    logger.info(
        "VAE load: %d tensors (%d renamed, %d buffers dropped)", len(mapped), len(renamed), len(ignored)
    )
    return LoadReport(len(mapped), tuple(renamed), tuple(ignored), tuple(missing), tuple(sorted(unexpected)))

"""Transformation network: LR latent -> continuous residuals of the first K_t scales (NSARM, spec E.2/E.3).

NSARM (arXiv 2510.00820, "transformation network") maps the *raw* (unquantised) VAE latent of the LR image to
one continuous prediction per early scale. Each prediction is raw-reshaped into a latent map and BSQ-quantised,
and those codes replace the first K_t = 7 scales of the bitwise next-scale AR model (spec E.3). The official
class is `Map_Transformer_residual_for8B` (Xiangtaokong/NSARM, `infinity/models/infinity.py`); the preset
``"nsarm-8b"`` reproduces it exactly, including its state-dict keys (without the ``map_transformer.`` prefix).

Architecture (spec E.2), per branch i with token grid (h_i, w_i) and width D_i:

    feat  = feature_extractor(x)                 3 x [Conv3x3, LayerNorm([C,H,W]), GELU]      -> [B, d, H, W]
    f_i   = feature_transforms[i](feat)          2 x [Conv3x3, LayerNorm([C,H,W]), GELU]      -> [B, D_i, H, W]
    t_i   = adaptive_avg_pool(f_i, (h_i, w_i))   row-major tokens, no positional encoding      -> [B, h_i*w_i, D_i]
    t_i   = transformers[i](t_i)                 post-norm encoder (ReLU FFN, dropout 0.1)     -> [B, h_i*w_i, D_i]
    out_i = output_projs[i](t_i)                 Linear D->D/2, LN, GELU, Linear D/2->d        -> [B, h_i*w_i, d]

Shape legend: B batch, d latent (VAE) channels, (H, W) input latent grid, (h_i, w_i) branch grid,
D_i branch width, L_i = h_i * w_i tokens of branch i.

The encoder layer is written out here (same parameter names as ``nn.TransformerEncoderLayer``) so that the
math is always that of torch's *composite* path, which the official model takes under autocast and which the
parity fixtures use; torch's CPU/GPU "fast path" differs by up to 2e-5 and does not run in every dtype.
Dropout (train mode only) draws from torch's global RNG, like every ``nn.Dropout``; seed it for reproducible
training runs. Parameter initialisation is torch's default (``nn.MultiheadAttention``'s for the attention).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsarm_core.errors import ConfigError, InputError, check_known_keys, unknown_choice
from nsarm_core.models import checkpoint

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformNetConfig:
    """Hyper-parameters of the transformation network (spec E.2).

    Attributes:
        in_channels: d, channels of the input latent and of every branch output (the VAE's BSQ channels).
        latent_size: (H, W) of the input latent. The LayerNorm affine shapes ``[C, H, W]`` follow it, so a
            model only accepts this size (the official one: 32x32, i.e. a 256x256 LR with the stride-8 VAE).
        feature_widths: hidden widths of the shared feature extractor (d -> w0 -> w1 -> d).
        branch_grids: per branch the (h, w) token grid = the VAE grid of the scale it predicts. Any list,
            non-square grids included (the official model is square: 2, 4, 8, 12, 16, 24, 32).
        branch_dims: per branch width D (even: the feature transform and output projection use D/2).
        branch_depths: per branch number of encoder layers.
        branch_heads: per branch attention heads (D % heads == 0).
        mlp_ratio: encoder feed-forward width = mlp_ratio * D (official 4).
        dropout: dropout of the encoder layers, active only in train mode (official 0.1, torch's default).
        norm_eps: epsilon of every LayerNorm (official 1e-5, torch's default).
    """

    in_channels: int = 14
    latent_size: tuple[int, int] = (32, 32)
    feature_widths: tuple[int, int] = (64, 128)
    branch_grids: tuple[tuple[int, int], ...] = (
        (2, 2),
        (4, 4),
        (8, 8),
        (12, 12),
        (16, 16),
        (24, 24),
        (32, 32),
    )
    branch_dims: tuple[int, ...] = (64, 128, 256, 384, 512, 768, 1024)
    branch_depths: tuple[int, ...] = (4, 6, 8, 10, 12, 14, 16)
    branch_heads: tuple[int, ...] = (4, 4, 8, 8, 8, 12, 16)
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        # Normalise lists (e.g. from JSON) to tuples so the frozen config is hashable and comparable.
        object.__setattr__(self, "latent_size", _pair(self.latent_size, "latent_size"))
        object.__setattr__(self, "feature_widths", tuple(int(v) for v in self.feature_widths))
        object.__setattr__(
            self,
            "branch_grids",
            tuple(_pair(g, f"branch_grids[{i}]") for i, g in enumerate(self.branch_grids)),
        )
        for name in ("branch_dims", "branch_depths", "branch_heads"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

        if self.in_channels < 1:
            raise ConfigError(f"TransformNetConfig.in_channels must be >= 1, got {self.in_channels}")
        if len(self.feature_widths) != 2 or min(self.feature_widths) < 1:
            raise ConfigError(
                f"TransformNetConfig.feature_widths must be two positive ints, got {self.feature_widths}"
            )
        n = len(self.branch_grids)
        if n == 0:
            raise ConfigError("TransformNetConfig.branch_grids is empty; give at least one (h, w) grid")
        for name in ("branch_dims", "branch_depths", "branch_heads"):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f"TransformNetConfig.{name} has {len(getattr(self, name))} entries but branch_grids has {n}; "
                    "give one value per branch"
                )
        for i, (dim, depth, heads) in enumerate(
            zip(self.branch_dims, self.branch_depths, self.branch_heads, strict=True)
        ):
            if dim < 2 or dim % 2:
                raise ConfigError(f"branch_dims[{i}] = {dim} must be an even int >= 2 (the branch uses D/2)")
            if depth < 1:
                raise ConfigError(f"branch_depths[{i}] = {depth} must be >= 1")
            if heads < 1 or dim % heads:
                raise ConfigError(f"branch_heads[{i}] = {heads} must divide branch_dims[{i}] = {dim}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"TransformNetConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TransformNetConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_branches(self) -> int:
        """K_t, the number of scales the network predicts."""
        return len(self.branch_grids)

    def ffn_dim(self, i: int) -> int:
        """Feed-forward width of branch i (official: 4 * D)."""
        return int(self.mlp_ratio * self.branch_dims[i])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransformNetConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise ConfigError."""
        check_known_keys(d, cls.__dataclass_fields__, "TransformNetConfig field(s)")
        return cls(**dict(d))


def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2 or min(v) < 1:
        raise ConfigError(f"TransformNetConfig.{name} must be a positive int or (h, w) pair, got {v}")
    return v  # type: ignore[return-value]


PRESETS: dict[str, TransformNetConfig] = {
    # Official Map_Transformer_residual_for8B (spec E.2): 385,103,600 parameters.
    "nsarm-8b": TransformNetConfig(),
    # Small network for tests and for our own small models: d=8 latent of 16x16, three branches.
    "tiny": TransformNetConfig(
        in_channels=8,
        latent_size=(16, 16),
        feature_widths=(16, 32),
        branch_grids=((2, 2), (4, 4), (8, 8)),
        branch_dims=(32, 32, 64),
        branch_depths=(1, 1, 2),
        branch_heads=(2, 2, 4),
    ),
    # The transformation network of the shipped nsarm-tiny: 64x64 LR -> 8x8 latent (stride-8 VAE, d = 14)
    # -> the first K_t = 3 scales of the 256x256 HR (VAE grids 2, 4, 8: up to a quarter of the final 32x32
    # grid, the scales the LR can explain, as NSARM's 256 -> 1024 model predicts 2..32 of 128).
    "nsarm-tiny": TransformNetConfig(
        in_channels=14,
        latent_size=(8, 8),
        feature_widths=(32, 64),
        branch_grids=((2, 2), (4, 4), (8, 8)),
        branch_dims=(64, 64, 96),
        branch_depths=(2, 2, 2),
        branch_heads=(2, 2, 4),
    ),
}


def get_preset(name: str) -> TransformNetConfig:
    """Return the named preset config.

    Raises:
        ConfigError: unknown name; the message lists the valid names and the closest match.
    """
    if name in PRESETS:
        return PRESETS[name]
    raise unknown_choice("transformation-network preset", name, sorted(PRESETS))


# ---------------------------------------------------------------------------------------------------------------
# The raw-reshape layout quirk (spec E.2 "Layout quirk", checklist H.11)
# ---------------------------------------------------------------------------------------------------------------


def outputs_to_latent_maps(outs: Sequence[Tensor], grids: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Turn branch outputs into latent maps with NSARM's *raw reshape* (no permute).

    WHY: the official sampler does ``out_i.reshape(B, d, 1, h, w)`` on the contiguous token-major output
    ``[B, h*w, d]``, so flat element ``p*d + c`` (token p, channel c) lands in channel ``(p*d + c) // (h*w)``
    at spatial index ``(p*d + c) % (h*w)``. This is *not* the natural token->pixel layout, but the released
    network was trained against targets built with the mirror operation (:func:`latent_maps_to_outputs`), so
    reproducing the released model requires exactly this reshape. It is a fixed bijection, so a model trained
    from scratch with the same pair of ops is equally valid.

    Args:
        outs: per branch ``[B, h_i*w_i, d]``.
        grids: per branch ``(h_i, w_i)``.

    Returns:
        per branch ``[B, d, h_i, w_i]`` (a view when the input is contiguous).
    """
    if len(outs) != len(grids):
        raise InputError(f"got {len(outs)} branch outputs but {len(grids)} grids")
    maps = []
    for i, (out, (h, w)) in enumerate(zip(outs, grids, strict=True)):
        if out.ndim != 3 or out.shape[1] != h * w:
            raise InputError(
                f"branch {i}: expected an output [B, {h * w}, d] for grid {h}x{w}, got {tuple(out.shape)}"
            )
        b, _, d = out.shape
        maps.append(out.reshape(b, d, h, w))  # raw reshape, deliberately no permute (see WHY above)
    return maps


def latent_maps_to_outputs(maps: Sequence[Tensor]) -> list[Tensor]:
    """Mirror of :func:`outputs_to_latent_maps`: latent maps -> branch-output layout (stage-1 targets).

    WHY: NSARM's ``BitwiseSelfCorrection_forres`` builds the stage-1 MSE targets by raw-reshaping the HR
    residual ``[B, d, 1, h, w]`` to ``[B, h*w, d]`` (no permute). Applying this to the continuous residuals of
    the HR latent gives targets directly comparable with the network's outputs.

    Args:
        maps: per scale ``[B, d, h, w]``.

    Returns:
        per scale ``[B, h*w, d]``.
    """
    outs = []
    for i, m in enumerate(maps):
        if m.ndim != 4:
            raise InputError(f"scale {i}: expected a latent map [B, d, h, w], got {tuple(m.shape)}")
        b, d, h, w = m.shape
        outs.append(m.reshape(b, h * w, d))  # raw reshape, deliberately no permute
    return outs


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names and composite-path math.

    Keys: ``in_proj_weight [3D, D]``, ``in_proj_bias [3D]``, ``out_proj.{weight,bias}``. Softmax scale
    1/sqrt(D/heads); attention dropout in train mode (as ``nn.MultiheadAttention(dropout=p)``).
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        # Same initialisation as nn.MultiheadAttention._reset_parameters.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, D] -> [B, L, D]."""
        b, n, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        # [B, L, D] -> [B, heads, L, D/heads]
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer = ``nn.TransformerEncoderLayer(batch_first=True)`` defaults.

    ``x = norm1(x + drop(SA(x)))``; ``x = norm2(x + drop(linear2(drop(relu(linear1(x))))))``.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)  # inside the FFN
        self.dropout1 = nn.Dropout(dropout)  # on the attention branch
        self.dropout2 = nn.Dropout(dropout)  # on the FFN branch

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, D] -> [B, L, D]."""
        x = self.norm1(x + self.dropout1(self.self_attn(x)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class Encoder(nn.Module):
    """Stack of :class:`EncoderLayer` under ``layers`` (``nn.TransformerEncoder`` keys; no final norm)."""

    def __init__(self, layers: Sequence[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, D] -> [B, L, D]."""
        for layer in self.layers:
            x = layer(x)
        return x


def _conv_ln_gelu(c_in: int, c_out: int, size: tuple[int, int], eps: float) -> list[nn.Module]:
    # LayerNorm over [C, H, W] jointly with per-element affine (spec E.2): the reason the input size is fixed.
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.LayerNorm([c_out, *size], eps=eps), nn.GELU()]


# ---------------------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------------------


class TransformNet(nn.Module):
    """NSARM transformation network (spec E.2). ``nsarm-8b`` == official ``Map_Transformer_residual_for8B``.

    Submodule names equal the official ones (``feature_extractor``, ``feature_transforms``, ``adaptive_pools``,
    ``transformers``, ``output_projs``), so ``state_dict()`` keys equal the official keys without the
    ``map_transformer.`` prefix.
    """

    def __init__(self, config: TransformNetConfig) -> None:
        super().__init__()
        self.config = config
        c, size, eps = config.in_channels, config.latent_size, config.norm_eps
        w0, w1 = config.feature_widths
        self.feature_extractor = nn.Sequential(
            *_conv_ln_gelu(c, w0, size, eps),
            *_conv_ln_gelu(w0, w1, size, eps),
            *_conv_ln_gelu(w1, c, size, eps),
        )
        self.feature_transforms = nn.ModuleList()
        self.adaptive_pools = nn.ModuleList()
        self.transformers = nn.ModuleList()
        self.output_projs = nn.ModuleList()
        for i, grid in enumerate(config.branch_grids):
            dim, depth, heads = config.branch_dims[i], config.branch_depths[i], config.branch_heads[i]
            self.feature_transforms.append(
                nn.Sequential(
                    *_conv_ln_gelu(c, dim // 2, size, eps), *_conv_ln_gelu(dim // 2, dim, size, eps)
                )
            )
            self.adaptive_pools.append(nn.AdaptiveAvgPool2d(grid))
            self.transformers.append(
                Encoder(
                    [EncoderLayer(dim, heads, config.ffn_dim(i), config.dropout, eps) for _ in range(depth)]
                )
            )
            self.output_projs.append(
                nn.Sequential(
                    nn.Linear(dim, dim // 2),
                    nn.LayerNorm(dim // 2, eps=eps),
                    nn.GELU(),
                    nn.Linear(dim // 2, c),
                )
            )

    @property
    def branch_grids(self) -> tuple[tuple[int, int], ...]:
        """Per branch (h, w) token grid."""
        return self.config.branch_grids

    def _check_input(self, x: Tensor) -> None:
        expected = (self.config.in_channels, *self.config.latent_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise InputError(
                f"transformation network expects a latent [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(its LayerNorms are shaped for this grid), got {tuple(x.shape)}; resize or crop the LR so "
                f"its latent is {expected[1]}x{expected[2]}"
            )

    def forward(self, x: Tensor) -> list[Tensor]:
        """Predict the continuous residuals of the first K_t scales, in the official token layout.

        Args:
            x: raw (unquantised) VAE-encoder latent of the LR image, ``[B, d, H, W]``.

        Returns:
            K_t tensors ``out_i [B, h_i*w_i, d]`` (tokens row-major). Use :func:`outputs_to_latent_maps`
            (raw reshape) to turn them into ``[B, d, h_i, w_i]`` latents before BSQ.
        """
        self._check_input(x)
        feat = self.feature_extractor(x)  # [B, d, H, W]; every branch starts here (no input residual)
        outs = []
        for ft, pool, enc, proj in zip(
            self.feature_transforms, self.adaptive_pools, self.transformers, self.output_projs, strict=True
        ):
            f = pool(ft(feat))  # [B, D, h, w]
            tokens = f.flatten(2).transpose(1, 2)  # [B, h*w, D], row-major == permute(0,2,3,1).reshape
            outs.append(proj(enc(tokens)))  # [B, h*w, d]
        return outs

    def latent_maps(self, x: Tensor) -> list[Tensor]:
        """``forward`` followed by the raw reshape: per branch ``[B, d, h_i, w_i]`` continuous latents."""
        return outputs_to_latent_maps(self(x), self.config.branch_grids)

    # -- persistence (our own format: config.json + model.safetensors) -------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        return checkpoint.save_folder(
            directory, self.state_dict(), self.config.to_dict(), model_type="transform_net"
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> TransformNet:
        """Rebuild a network written by :meth:`save_pretrained` (strict load)."""
        data, state = checkpoint.read_folder(
            directory, model_type="transform_net", writer="TransformNet.save_pretrained"
        )
        try:
            config = TransformNetConfig.from_dict(data)
        except TypeError as e:
            raise ConfigError(f"cannot read transformation-network config in {directory}: {e}") from e
        model = cls(config)
        load_official_state_dict(model, state, prefix="")
        return model.to(device=device, dtype=dtype)


def load_official_state_dict(
    model: TransformNet, state_dict: Mapping[str, Tensor], prefix: str = "map_transformer."
) -> None:
    """Strictly load official ``Map_Transformer_residual_for8B`` weights (or our own) into ``model``.

    Args:
        model: the network to fill (its dtype/device are kept; values are cast).
        state_dict: either a full NSARM checkpoint (keys ``map_transformer.*`` plus the Infinity keys, which are
            ignored), or the network's keys already without the prefix.
        prefix: the official prefix; when no key carries it, the keys are taken as already stripped.

    Raises:
        ConfigError: missing keys, unexpected keys (under the prefix) or shape mismatches, with examples.
    """
    if prefix and any(k.startswith(prefix) for k in state_dict):
        sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    else:
        sub = dict(state_dict)
    checkpoint.check_state_dict(
        model.state_dict(),
        sub,
        source="transformation-network weights",
        what=f"the model config (branches {list(model.config.branch_grids)}, dims {list(model.config.branch_dims)})",
        hint="Use the preset that matches the checkpoint (the official NSARM checkpoint needs 'nsarm-8b').",
    )
    model.load_state_dict(sub, strict=True)
    logger.debug("loaded %d transformation-network tensors", len(sub))


def build_transform_net(
    config: TransformNetConfig | str, *, device: str | torch.device | None = None
) -> TransformNet:
    """Build a randomly initialised network from a config or preset name (``device="meta"`` for counting)."""
    cfg = get_preset(config) if isinstance(config, str) else config
    if device is None:
        return TransformNet(cfg)
    with torch.device(device):
        return TransformNet(cfg)


__all__ = [
    "PRESETS",
    "Encoder",
    "EncoderLayer",
    "SelfAttention",
    "TransformNet",
    "TransformNetConfig",
    "build_transform_net",
    "get_preset",
    "latent_maps_to_outputs",
    "load_official_state_dict",
    "outputs_to_latent_maps",
]

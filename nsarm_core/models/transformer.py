"""Infinity: the bitwise next-scale autoregressive transformer that NSARM fine-tunes (architecture spec C, H).

NSARM (arXiv 2510.00820) keeps Infinity-8B unchanged and only replaces the inputs of its first scales; the
module here is weight-compatible with the official ``infinity.models.infinity.Infinity`` checkpoints: every
parameter and buffer carries the official state-dict key (``block_chunks.{c}.module.{m}.sa.mat_qkv.weight``, ...).

Sequence (spec C.4): token 0 is the SOS = pooled text ``cond_BD`` + ``pos_start``; the tokens of scale k ≥ 1 are
``word_embed`` of the accumulated code map resized to scale k's grid (patchified for the 8B geometry);
``lvl_embed[k]`` is added once before the first block. The IVC head predicts ``2·d_vae`` logits per token,
``[..., 2j]`` = bit j is 0 (−1/√d) and ``[..., 2j+1]`` = bit j is 1 (+1/√d) (spec C.7).

Shape legend:
    B  batch            L  sequence length Σ_k h_k·w_k (SOS included)   C  width      V = 2·d_vae logits per token
    d_vae  bits per token (VAE channels, ×4 with patchify)             Lt text tokens (padded)   Ct text channels
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsarm_core.errors import ConfigError, InputError, WeightsNotFoundError, unknown_choice
from nsarm_core.models import checkpoint
from nsarm_core.models.layers import (
    AdaLNBeforeHead,
    BlockChunk,
    CrossAttnBlock,
    LayerKVCache,
    RMSNorm,
    TextAttentivePool,
    pool_heads,
    rope2d_cos_sin,
)
from nsarm_core.scales import ScaleSchedule, custom, rope_positions

logger = logging.getLogger(__name__)

NUM_LEVELS = 15
"""Rows of ``lvl_embed`` (the official constant; schedules have at most 13 scales)."""

LEGACY_BUFFERS = ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")
"""Buffers older official checkpoints carry; the official loader drops them, and so do we (spec C.2)."""


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of the Infinity transformer (spec C.1).

    Attributes:
        depth: number of blocks.
        embed_dim: width C.
        num_heads: self-/cross-attention heads (head dim C / heads, a multiple of 4 for the 2-D RoPE).
        d_vae: bits per token = VAE channels, ×4 when ``patchify`` (2B: 32, 8B/NSARM: 56 = 4·14).
        patchify: the tokens are 2×2 pixel-unshuffled VAE latents (8B / NSARM geometry, spec C.8).
        text_channels: text-encoder width Ct (Flan-T5-XL: 2048).
        text_maxlen: rows of ``cfg_uncond`` = longest text (512 for the released models).
        block_chunks: number of ``block_chunks.{c}`` groups (8 in the released checkpoints); divides depth.
        mlp_ratio: FFN hidden = round(C·ratio/256)·256.
        norm_eps: LayerNorm / RMSNorm epsilon.
        cond_drop_rate: training probability of replacing a caption by ``cfg_uncond`` (classifier-free guidance).
        use_text: False = "no text encoder" mode: the learned ``cfg_uncond`` rows are the text of every sample.
    """

    depth: int
    embed_dim: int
    num_heads: int
    d_vae: int
    patchify: bool = False
    text_channels: int = 2048
    text_maxlen: int = 512
    block_chunks: int = 8
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    cond_drop_rate: float = 0.1
    use_text: bool = True

    def __post_init__(self) -> None:
        problems = []
        if (
            min(self.depth, self.embed_dim, self.num_heads, self.d_vae, self.text_maxlen, self.block_chunks)
            <= 0
        ):
            problems.append(
                "depth, embed_dim, num_heads, d_vae, text_maxlen and block_chunks must be positive"
            )
        elif self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:
            problems.append(
                f"embed_dim {self.embed_dim} / num_heads {self.num_heads} must be an integer multiple of 4"
            )
        if self.block_chunks > 0 and self.depth % self.block_chunks:
            problems.append(f"block_chunks {self.block_chunks} must divide depth {self.depth}")
        heads = pool_heads(self.text_channels, self.embed_dim)
        if heads < 1 or self.embed_dim % heads:
            problems.append(
                f"text_channels {self.text_channels} gives {heads} attention-pool heads (Ct // 128, or // 64 when "
                f"C > 4096); it must be >= 1 and divide embed_dim {self.embed_dim}: use text_channels >= 128"
            )
        if self.patchify and self.d_vae % 4:
            problems.append(f"patchify needs d_vae = 4 x VAE channels, got d_vae {self.d_vae}")
        if not 0.0 <= self.cond_drop_rate < 1.0:
            problems.append(f"cond_drop_rate must be in [0, 1), got {self.cond_drop_rate}")
        if problems:
            raise ConfigError("invalid TransformerConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        """Per-head dim of self-/cross-attention."""
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        """FFN hidden width (official rounding to a multiple of 256)."""
        return round(self.embed_dim * self.mlp_ratio / 256) * 256

    @property
    def vocab(self) -> int:
        """Logits per token V = 2·d_vae."""
        return 2 * self.d_vae

    @property
    def vae_channels(self) -> int:
        """Channels d of the VAE latent (d_vae / 4 with patchify)."""
        return self.d_vae // 4 if self.patchify else self.d_vae


# The geometry of the official-implementation fixtures (../shared/parity/infinity_tiny_*), with and without
# patchify.
_TINY_PARITY = TransformerConfig(
    depth=4,
    embed_dim=256,
    num_heads=2,
    d_vae=56,
    patchify=True,
    text_channels=256,
    text_maxlen=16,
    block_chunks=2,
    cond_drop_rate=0.0,
)

PRESETS: dict[str, TransformerConfig] = {
    # Released models (spec C.1). Parameter counts: 2,204,564,032 and 8,375,791,824 (tests/test_transformer.py).
    "infinity-2b": TransformerConfig(depth=32, embed_dim=2048, num_heads=16, d_vae=32, patchify=False),
    "infinity-8b": TransformerConfig(depth=40, embed_dim=3584, num_heads=28, d_vae=56, patchify=True),
    "tiny-parity-patchify": _TINY_PARITY,
    "tiny-parity-nopatchify": replace(_TINY_PARITY, d_vae=32, patchify=False),
    # Our own small model: the NSARM geometry (d=14 VAE, patchified) without a text encoder.
    "tiny": TransformerConfig(
        depth=2,
        embed_dim=128,
        num_heads=2,
        d_vae=56,
        patchify=True,
        text_channels=128,
        text_maxlen=8,
        block_chunks=1,
        cond_drop_rate=0.0,
        use_text=False,
    ),
}
# The transformer of the shipped nsarm-tiny (CPU-trained, 4 blocks of width 192, ~2.9 M parameters): "tiny" made
# deep and wide enough to predict the fine scales' bits, yet ~1 s per batch-8 step on 2 cores.
PRESETS["nsarm-tiny"] = replace(PRESETS["tiny"], depth=4, embed_dim=192, num_heads=3)


def get_preset(name: str) -> TransformerConfig:
    """The named :class:`TransformerConfig`; unknown names raise ConfigError with the valid names."""
    if name not in PRESETS:
        raise unknown_choice("transformer preset", name, sorted(PRESETS))
    return PRESETS[name]


# ----------------------------------------------------------------------------------------------------------
# Text conditioning inputs
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextCondition:
    """A batch of variable-length text features, zero-padded (the official var-len ``kv_compact`` + lengths).

    Attributes:
        features: [B, Lt, Ct] encoder outputs; rows ≥ ``lengths[b]`` are padding and never attended to.
        lengths: [B] int64 number of real tokens of each sample (≥ 1).
    """

    features: Tensor
    lengths: Tensor

    def __post_init__(self) -> None:
        if self.features.dim() != 3:
            raise InputError(f"text features must be [B, Lt, Ct], got shape {tuple(self.features.shape)}")
        lengths = torch.as_tensor(self.lengths, dtype=torch.int64, device=self.features.device).reshape(-1)
        if lengths.numel() != self.features.shape[0]:
            raise InputError(
                f"{lengths.numel()} text lengths for a batch of {self.features.shape[0]} text rows"
            )
        if lengths.numel() and (lengths.min() < 1 or lengths.max() > self.features.shape[1]):
            raise InputError(
                f"text lengths {lengths.tolist()} must lie in [1, {self.features.shape[1]}] (the padded length)"
            )
        object.__setattr__(self, "lengths", lengths)

    @classmethod
    def from_list(cls, texts: Sequence[Tensor]) -> TextCondition:
        """Pad a list of [L_i, Ct] tensors."""
        if not texts:
            raise InputError("empty text list: pass one [L_i, Ct] tensor per sample")
        lengths = torch.tensor([t.shape[0] for t in texts], dtype=torch.int64)
        feats = nn.utils.rnn.pad_sequence(list(texts), batch_first=True)
        return cls(feats, lengths.to(feats.device))

    @classmethod
    def from_compact(cls, kv_compact: Tensor, lengths: Sequence[int] | Tensor) -> TextCondition:
        """From the official concatenated layout ``kv_compact [ΣL_i, Ct]`` and per-sample lengths."""
        lens = [int(x) for x in torch.as_tensor(lengths).reshape(-1).tolist()]
        if sum(lens) != kv_compact.shape[0]:
            raise InputError(
                f"text lengths {lens} sum to {sum(lens)}, but kv_compact has {kv_compact.shape[0]} rows"
            )
        return cls.from_list(list(torch.split(kv_compact, lens)))

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]

    @property
    def mask(self) -> Tensor:
        """bool [B, Lt], True for the real tokens."""
        return torch.arange(self.features.shape[1], device=self.features.device)[None] < self.lengths[:, None]

    def concat(self, other: TextCondition) -> TextCondition:
        """Stack two batches (e.g. [cond; uncond] for classifier-free guidance), padding to the longer one."""
        a, b = self.features, other.features.to(self.features)
        n = max(a.shape[1], b.shape[1])
        a, b = F.pad(a, (0, 0, 0, n - a.shape[1])), F.pad(b, (0, 0, 0, n - b.shape[1]))
        return TextCondition(torch.cat((a, b)), torch.cat((self.lengths, other.lengths.to(self.lengths))))


TextInput = TextCondition | Sequence[Tensor] | None


@dataclass
class TextContext:
    """Everything the blocks need from the text, computed once per batch (spec C.3).

    Attributes:
        cond_BD: [B, C] pooled condition (the SOS content and the head's AdaLN input).
        gss: [B, 1, 6, C] shared AdaLN output (γ1, γ2, scale1, scale2, shift1, shift2).
        ca_text: [B, Lt, C] cross-attention memory ``text_proj_for_ca(text_norm(text))``.
        text_mask: bool [B, Lt].
    """

    cond_BD: Tensor
    gss: Tensor
    ca_text: Tensor
    text_mask: Tensor


@dataclass
class InferenceState:
    """State of a KV-cached sampling run: the text context and one :class:`LayerKVCache` per block."""

    context: TextContext
    schedule: ScaleSchedule
    rope: tuple[Tensor, Tensor]
    caches: list[LayerKVCache] = field(default_factory=list)
    next_scale: int = 0


def as_schedule(schedule: ScaleSchedule | Sequence[Sequence[int]]) -> ScaleSchedule:
    """Accept a :class:`ScaleSchedule` or a plain list of token grids."""
    return schedule if isinstance(schedule, ScaleSchedule) else custom(schedule)


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------


class InfinityTransformer(nn.Module):
    """The Infinity transformer with official parameter names (spec C.2–C.7).

    Args:
        config: a :class:`TransformerConfig` (see :data:`PRESETS`).
        init: initialise the weights with the official recipe (spec C.10). Ignored on the meta device.
        generator: RNG of the initialisation (default: a fresh generator seeded 0).
    """

    def __init__(
        self, config: TransformerConfig, *, init: bool = True, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.config = cfg = config
        C, Ct = cfg.embed_dim, cfg.text_channels
        # Registration order reproduces the official state-dict order (direct params first, then children).
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.text_maxlen, Ct))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.text_norm = RMSNorm(Ct, eps=cfg.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(Ct, C)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.lvl_embed = nn.Embedding(NUM_LEVELS, C)
        self.word_embed = nn.Linear(cfg.d_vae, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(C, 6 * C))
        self.head_nm = AdaLNBeforeHead(C, C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab)
        per_chunk = cfg.depth // cfg.block_chunks
        blocks = [CrossAttnBlock(C, cfg.num_heads, cfg.mlp_hidden, cfg.norm_eps) for _ in range(cfg.depth)]
        self.block_chunks = nn.ModuleList(
            BlockChunk(blocks[i * per_chunk : (i + 1) * per_chunk]) for i in range(cfg.block_chunks)
        )
        self._rope_cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        if init and not self.pos_start.is_meta:
            self.init_weights(generator)

    # --- our own checkpoints (config.json + model.safetensors) ----------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (the :class:`TransformerConfig` fields) and ``model.safetensors``."""
        return checkpoint.save_folder(
            directory, self.state_dict(), dataclasses.asdict(self.config), model_type="infinity_transformer"
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: str | torch.device = "cpu"
    ) -> InfinityTransformer:
        """Rebuild a transformer written by :meth:`save_pretrained` (strict load, float32).

        Raises:
            WeightsNotFoundError: a file is missing; InputError: corrupt weights; ConfigError: they do not fit.
        """
        data, state = checkpoint.read_folder(
            directory, model_type="infinity_transformer", writer="InfinityTransformer.save_pretrained"
        )
        try:
            config = TransformerConfig(**data)
        except TypeError as exc:
            raise ConfigError(
                f"{Path(directory) / checkpoint.CONFIG_NAME}: not a TransformerConfig ({exc})"
            ) from exc
        model = cls(config, init=False)
        checkpoint.check_state_dict(
            model.state_dict(),
            state,
            source=str(Path(directory) / checkpoint.WEIGHTS_NAME),
            what="its config.json",
        )
        model.load_state_dict(state, strict=True)
        return model.to(device)

    # --- initialisation -----------------------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Official initialisation (spec C.10): trunc-normal std √(1/3C), then ``special_init``.

        ``cfg_uncond`` is drawn exactly as the official constructor does (its own generator seeded 0, std 1.2,
        divided by √Ct), so an untrained model's "empty text" rows equal the official ones.
        """
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        cfg, C = self.config, self.config.embed_dim
        std = math.sqrt(1 / C / 3)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std, generator=gen)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm | RMSNorm):
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        uncond_rng = torch.Generator().manual_seed(0)
        nn.init.trunc_normal_(self.cfg_uncond, std=1.2, generator=uncond_rng)
        self.cfg_uncond.div_(cfg.text_channels**0.5)
        nn.init.trunc_normal_(self.pos_start, std=std, generator=gen)
        nn.init.trunc_normal_(self.text_proj_for_sos.ca.mat_q, std=std, generator=gen)
        self.head_nm.ada_lin[-1].weight.mul_(1e-3)  # aln
        self.head.weight.mul_(0.02)  # hd0
        for blk in self.blocks():
            for p in (blk.sa.q_bias, blk.sa.v_bias, blk.ca.v_bias):
                nn.init.zeros_(p)
            blk.sa.scale_mul_1H11.fill_(math.log(4.0))
            scale = 1 / math.sqrt(2 * cfg.depth)
            for lin in (blk.sa.proj, blk.ca.proj, blk.ffn.fc2):
                lin.weight.mul_(scale)
            blk.ada_gss.copy_(torch.randn(blk.ada_gss.shape, generator=gen) / C**0.5)
            blk.ada_gss[:, :, :2].mul_(5e-6)  # γ rows (alng)
            blk.ada_gss[:, :, 2:].mul_(1e-3)  # scale/shift rows (aln)

    # --- structure ----------------------------------------------------------------------------------------

    def blocks(self) -> Iterator[CrossAttnBlock]:
        """All blocks in depth order."""
        for chunk in self.block_chunks:
            yield from chunk.module

    @torch.no_grad()
    def cast_blocks(self, dtype: torch.dtype) -> InfinityTransformer:
        """Cast only the blocks (the official bf16 inference set-up, spec D): embeddings, text path and head
        stay float32. Returns self."""
        for chunk in self.block_chunks:
            chunk.to(dtype)
        return self

    # --- text ---------------------------------------------------------------------------------------------

    def text_condition(self, text: TextInput, batch_size: int | None) -> TextCondition:
        cfg = self.config
        if text is None:
            if cfg.use_text:
                raise InputError(
                    "this transformer expects text features (use_text=True); pass a TextCondition or a list of "
                    "[L_i, Ct] tensors, or use a config with use_text=False"
                )
            if batch_size is None:
                raise InputError("text=None needs an explicit batch size")
            feats = self.cfg_uncond.detach()[None].expand(batch_size, -1, -1)
            return TextCondition(feats, torch.full((batch_size,), cfg.text_maxlen, device=feats.device))
        if not cfg.use_text:
            raise InputError(
                "this transformer has no text encoder (use_text=False): its learned cfg_uncond rows are the text; "
                "pass text=None and a batch size"
            )
        cond = text if isinstance(text, TextCondition) else TextCondition.from_list(list(text))
        if cond.features.shape[-1] != cfg.text_channels:
            raise InputError(
                f"text features have {cond.features.shape[-1]} channels; this model expects {cfg.text_channels}"
            )
        if int(cond.lengths.max()) > cfg.text_maxlen:
            raise InputError(
                f"text of {int(cond.lengths.max())} tokens is longer than text_maxlen {cfg.text_maxlen}; "
                "truncate the prompt tokens"
            )
        if batch_size is not None and cond.batch_size != batch_size:
            raise InputError(f"{cond.batch_size} text rows for a batch of {batch_size}")
        return cond

    def unconditional_text(self, text: TextCondition) -> TextCondition:
        """The CFG "empty text": the first ``len_b`` rows of ``cfg_uncond`` for every sample (spec C.3.5)."""
        Lt = text.features.shape[1]
        rows = self.cfg_uncond[:Lt].to(text.features)[None].expand(text.batch_size, -1, -1)
        return TextCondition(rows * text.mask[..., None], text.lengths)

    def encode_text(self, text: TextCondition, cond_drop: Tensor | None = None) -> TextContext:
        """Text path of spec C.3: RMSNorm, attention-pooled ``cond_BD``, CA memory and shared AdaLN.

        Args:
            text: the (padded) text features.
            cond_drop: optional bool [B]; True rows are replaced by ``cfg_uncond`` (training-time CFG dropout).

        Returns:
            The :class:`TextContext` (all float32 unless the text modules were cast).
        """
        feats, mask = text.features, text.mask
        if cond_drop is not None:
            uncond = self.unconditional_text(text).features
            feats = torch.where(cond_drop.to(mask.device).reshape(-1, 1, 1), uncond, feats.to(uncond))
        normed = self.text_norm(feats)
        dtype = self.text_proj_for_ca[0].weight.dtype
        cond_BD = self.text_proj_for_sos(normed.to(dtype), mask).float()
        ca_text = self.text_proj_for_ca(normed.to(dtype))
        gss = self.shared_ada_lin(cond_BD.to(dtype)).float().reshape(-1, 1, 6, self.config.embed_dim)
        return TextContext(cond_BD=cond_BD, gss=gss, ca_text=ca_text, text_mask=mask)

    # --- positions ----------------------------------------------------------------------------------------

    def rope_tables(self, schedule: ScaleSchedule, device: torch.device) -> tuple[Tensor, Tensor]:
        """(cos, sin) [L, hd/2] for the whole schedule, positions normalised to the template's 1M grid (C.6)."""
        key = (schedule.token_grids, str(device))
        if key not in self._rope_cache:
            pos = rope_positions(schedule).to(device)
            self._rope_cache[key] = rope2d_cos_sin(pos, self.config.head_dim)
        return self._rope_cache[key]

    # --- forward ------------------------------------------------------------------------------------------

    def _embed_inputs(self, x_BLC: Tensor) -> Tensor:
        return self.word_embed(x_BLC.to(self.word_embed.weight.dtype)).float()

    def _level_embedding(self, level: int | Tensor) -> Tensor:
        return self.lvl_embed.weight[level].float()

    def logits(self, x: Tensor, cond_BD: Tensor) -> Tensor:
        """IVC head (spec C.5 "Head", C.7): x [B, L, C], cond_BD [B, C] -> [B, L, 2·d_vae] float32."""
        with torch.autocast(device_type=x.device.type if x.device.type != "mps" else "cpu", enabled=False):
            h = self.head_nm(x.float(), cond_BD.to(self.head_nm.ada_lin[-1].weight.dtype))
            return self.head(h.to(self.head.weight.dtype)).float()

    def forward(
        self,
        text: TextInput,
        x_BLC_inputs: Tensor,
        schedule: ScaleSchedule | Sequence[Sequence[int]],
        *,
        cond_drop: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced forward with the block-causal mask (tokens of scale i see scales ≤ i).

        Args:
            text: TextCondition, list of [L_i, Ct] tensors, or None in "no text encoder" mode.
            x_BLC_inputs: [B, L − 1, d_vae] inputs of scales 1..K−1 (accumulated codes resized to each grid,
                patchified with the 8B geometry, row-major tokens); the SOS is built from the text.
            schedule: the token grids of the K scales.
            cond_drop: optional bool [B] CFG-dropout mask.

        Returns:
            logits [B, L, 2·d_vae] float32 (``[..., 2j]`` bit j = 0, ``[..., 2j+1]`` bit j = 1).
        """
        sched = as_schedule(schedule)
        B, cfg = x_BLC_inputs.shape[0], self.config
        lengths = sched.scale_lengths
        L = sum(lengths)
        if x_BLC_inputs.dim() != 3 or tuple(x_BLC_inputs.shape[1:]) != (L - 1, cfg.d_vae):
            raise InputError(
                f"x_BLC_inputs must be [B, {L - 1}, {cfg.d_vae}] for the schedule {sched.token_grids}, "
                f"got {tuple(x_BLC_inputs.shape)}"
            )
        if sched.num_scales > NUM_LEVELS:
            raise InputError(f"{sched.num_scales} scales exceed the {NUM_LEVELS} level embeddings")
        ctx = self.encode_text(self.text_condition(text, B), cond_drop)
        device = x_BLC_inputs.device
        sos = ctx.cond_BD[:, None] + self.pos_start.float()
        x = torch.cat((sos, self._embed_inputs(x_BLC_inputs)), dim=1)
        scale_id = torch.repeat_interleave(
            torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
        )
        x = x + self._level_embedding(scale_id)[None]  # once, before block 0 (spec C.4)
        attn_mask = scale_id[:, None] >= scale_id[None, :]  # block-causal [L, L]
        rope = self.rope_tables(sched, device)
        for blk in self.blocks():
            x = blk(x, ctx.gss, ctx.ca_text, ctx.text_mask, rope, attn_mask=attn_mask)
        return self.logits(x, ctx.cond_BD)

    # --- KV-cached inference (used by nsarm_core.models.sampler) ---------------------------------------

    def start_inference(
        self, text: TextCondition, schedule: ScaleSchedule | Sequence[Sequence[int]]
    ) -> InferenceState:
        """Encode the text and create empty per-block KV caches for a scale-by-scale run."""
        sched = as_schedule(schedule)
        if sched.num_scales > NUM_LEVELS:
            raise InputError(f"{sched.num_scales} scales exceed the {NUM_LEVELS} level embeddings")
        ctx = self.encode_text(
            text
        )  # already validated by text_condition (the sampler) or built by the caller
        rope = self.rope_tables(sched, ctx.cond_BD.device)
        return InferenceState(ctx, sched, rope, caches=[LayerKVCache() for _ in range(self.config.depth)])

    def forward_scale(self, state: InferenceState, x_inputs: Tensor | None) -> Tensor:
        """Run the next scale of a KV-cached run and return its logits.

        Args:
            state: from :meth:`start_inference`; its caches are extended and ``next_scale`` advanced.
            x_inputs: None for scale 0 (the SOS), else [B, h_k·w_k, d_vae] word-embed inputs of scale k.

        Returns:
            [B, h_k·w_k, 2·d_vae] float32 head output (before temperature or CFG).
        """
        k, sched, ctx = state.next_scale, state.schedule, state.context
        if k >= sched.num_scales:
            raise InputError(f"all {sched.num_scales} scales of this run are done")
        n, start = sched.scale_lengths[k], sched.scale_offsets[k]
        B = ctx.cond_BD.shape[0]
        if k == 0:
            x = ctx.cond_BD[:, None] + self.pos_start.float()
        else:
            if x_inputs is None or tuple(x_inputs.shape) != (B, n, self.config.d_vae):
                got = None if x_inputs is None else tuple(x_inputs.shape)
                raise InputError(f"scale {k} needs inputs [{B}, {n}, {self.config.d_vae}], got {got}")
            x = self._embed_inputs(x_inputs)
        x = x + self._level_embedding(k)
        rope = (state.rope[0][start : start + n], state.rope[1][start : start + n])
        for blk, cache in zip(self.blocks(), state.caches, strict=True):
            x = blk(x, ctx.gss, ctx.ca_text, ctx.text_mask, rope, cache=cache)
        state.next_scale = k + 1
        return self.logits(x, ctx.cond_BD)


def build_transformer(
    config: str | TransformerConfig,
    *,
    device: torch.device | str | None = None,
    init: bool = True,
    **overrides: object,
) -> InfinityTransformer:
    """Build a model from a preset name or config (``overrides`` replace config fields).

    ``device="meta"`` builds it without memory (parameter counting, key listing).
    """
    cfg = get_preset(config) if isinstance(config, str) else config
    if overrides:
        try:
            cfg = replace(cfg, **overrides)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(f"unknown TransformerConfig field in {sorted(overrides)}: {exc}") from exc
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return InfinityTransformer(cfg, init=init)


# ----------------------------------------------------------------------------------------------------------
# Loading official checkpoints
# ----------------------------------------------------------------------------------------------------------


def _adapt_key(model: InfinityTransformer, key: str, ignore_prefixes: Sequence[str] = ()) -> str | None:
    """Our key for an official one: legacy buffers and ignored prefixes -> None, ``blocks.{n}`` (block_chunks=1)
    -> chunked name."""
    if key in LEGACY_BUFFERS or any(key.startswith(p) for p in ignore_prefixes):
        return None
    if key.startswith("blocks."):
        _, idx, rest = key.split(".", 2)
        per_chunk = model.config.depth // model.config.block_chunks
        n = int(idx)
        return f"block_chunks.{n // per_chunk}.module.{n % per_chunk}.{rest}"
    return key


def _adapt_state_dict(
    model: InfinityTransformer, sd: Mapping[str, Tensor], ignore_prefixes: Sequence[str] = ()
) -> dict[str, Tensor]:
    """The official loader's adaptations (spec C.2): ``cfg_uncond`` truncated or padded to text_maxlen, legacy
    buffers dropped; plus ``blocks.{n}`` keys of block_chunks=1 checkpoints renamed to the chunked layout."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new_key = _adapt_key(model, key, ignore_prefixes)
        if new_key is None:
            logger.debug("not loading %s (legacy buffer or ignored prefix)", key)
            continue
        if new_key == "cfg_uncond":
            own = model.cfg_uncond.detach()
            if value.dim() == 2 and value.shape[1] == own.shape[1] and value.shape[0] != own.shape[0]:
                # Truncate, or pad with the model's own rows, exactly like Infinity.load_state_dict.
                n = min(value.shape[0], own.shape[0])
                value = torch.cat((value[:n].to(own), own[n:])) if n == value.shape[0] else value[:n]
        out[new_key] = value
    return out


_PRESET_HINT = "Check that the preset matches the checkpoint (e.g. infinity-2b vs infinity-8b)."


def _is_key_bias(key: str) -> bool:
    """The zero key-bias buffers: recomputed by the model, so a checkpoint may leave them out."""
    return key.endswith("zero_k_bias")


def _check_part(model: nn.Module, part: Mapping[str, Tensor | None], source: str, *, complete: bool) -> None:
    """Strict report of ``part`` against ``model`` (names only for None values); ``complete=False``: a shard."""
    checkpoint.check_state_dict(
        model.state_dict(),
        part,
        source=source,
        what="this transformer",
        hint=_PRESET_HINT,
        optional=_is_key_bias if complete else (lambda _key: True),
    )
    nonzero = [k for k, v in part.items() if _is_key_bias(k) and v is not None and bool(v.any())]
    if nonzero:
        raise ConfigError(
            f"{source}: the key-bias buffers must be zero, but {', '.join(nonzero[:12])} are not"
        )


@torch.no_grad()
def load_official_state_dict(
    model: InfinityTransformer,
    sd: Mapping[str, Tensor],
    *,
    source: str = "state dict",
    ignore_prefixes: Sequence[str] = (),
) -> None:
    """Load an official Infinity/NSARM state dict strictly (after the official adaptations).

    ``cfg_uncond`` is truncated/padded to the model's text_maxlen, the legacy buffers ``lvl_1L``,
    ``attn_bias_for_masking``, ``Infinity_visible_kvlen``, ``Infinity_invisible_qlen`` are dropped, and the
    ``zero_k_bias`` buffers are accepted (they must be zero) or may be absent. ``ignore_prefixes`` skips keys
    that belong to another module, e.g. ``("map_transformer.",)`` for an NSARM checkpoint.

    Raises:
        ConfigError: listing the missing / unexpected keys or shape mismatches.
    """
    adapted = _adapt_state_dict(model, sd, ignore_prefixes)
    _check_part(model, adapted, source, complete=True)
    model.load_state_dict(adapted, strict=False)


def _unwrap_checkpoint(obj: object, path: Path) -> Mapping[str, Tensor]:
    """Plain state dict, or the training checkpoint layout ``{'trainer': {'gpt_fsdp': sd}}`` (spec C.11)."""
    if isinstance(obj, Mapping) and "trainer" in obj and isinstance(obj["trainer"], Mapping):
        obj = obj["trainer"].get("gpt_fsdp", obj["trainer"])
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(
            f"{path} holds no transformer state dict (expected tensors or {{'trainer': {{'gpt_fsdp': ...}}}})"
        )
    return obj


@torch.no_grad()
def load_transformer_weights(
    model: InfinityTransformer, path: str | Path, *, ignore_prefixes: Sequence[str] = ()
) -> None:
    """Load official weights from a ``.pth``/``.safetensors`` file or a sharded-safetensors folder.

    * ``.pth``/``.pt``/``.bin``: ``torch.load(weights_only=True, mmap=True)``; a training checkpoint
      ``{'trainer': {'gpt_fsdp': sd}}`` is unwrapped.
    * ``.safetensors``: one file.
    * a folder with ``model.safetensors.index.json`` (or that index file itself): the shards listed in its
      ``weight_map`` are loaded one at a time, so peak memory stays about one shard above the model.

    Raises:
        WeightsNotFoundError: the path or a shard does not exist.
        ConfigError: keys or shapes do not fit the model.
    """
    path = checkpoint.weights_path(path)
    if path.name.endswith(".index.json"):
        weight_map = checkpoint.read_index(path)
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path.parent / s).is_file()]
        if missing:
            raise WeightsNotFoundError(f"shards listed in {path} are missing: {missing}")
        # Check the key names from the index before reading any tensor (fails fast on a wrong preset).
        names = [k for k in (_adapt_key(model, key, ignore_prefixes) for key in weight_map) if k is not None]
        _check_part(model, dict.fromkeys(names), str(path), complete=True)
        for shard in shards:  # one shard at a time: peak memory stays about one shard above the model
            part = _adapt_state_dict(model, checkpoint.load_state_dict(path.parent / shard), ignore_prefixes)
            _check_part(model, part, str(path.parent / shard), complete=False)
            model.load_state_dict(part, strict=False)
        return
    sd = _unwrap_checkpoint(checkpoint.read_weights(path), path)
    load_official_state_dict(model, sd, source=str(path), ignore_prefixes=ignore_prefixes)

"""Building blocks of the Infinity transformer (architecture spec C.3, C.5, C.6).

Everything here is named after the official module attributes, so the parameters of
``nsarm_core.models.transformer.InfinityTransformer`` carry the official state-dict keys without any renaming
table (``sa.mat_qkv.weight``, ``ca.v_bias``, ``ada_gss``, ...).

Shape legend:
    B  batch                          L  tokens in the (partial) sequence      C  model width
    H  attention heads                hd head dim = C / H                      Lt text tokens (padded)
    Ct text-encoder channels          Hp attention-pool heads (spec C.3)       S  tokens already in the KV cache

Precision policy: the residual stream, every LayerNorm, the AdaLN modulation and RoPE run in float32; the
matmuls run in the dtype of the block's weights (or under autocast). ``ada_layer_norm`` returns float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# exp(min(s, ln 100)): the per-head cosine-attention scale is capped at 100 (spec C.5). The official constant is
# torch.log(torch.tensor(100)).item(), i.e. ln 100 rounded to float32 (4.605170249938965).
MAX_SCALE_MUL = float(torch.log(torch.tensor(100.0)).item())
ROPE_BASE = 10000.0


def _float32_region(x: Tensor) -> torch.autocast:
    """An autocast-disabled region on x's device (norms, AdaLN and RoPE stay float32 under bf16 autocast)."""
    device_type = x.device.type if x.device.type in ("cuda", "cpu", "xpu") else "cpu"
    return torch.autocast(device_type=device_type, enabled=False)


def ada_layer_norm(x: Tensor, scale: Tensor, shift: Tensor, eps: float) -> Tensor:
    """Affine-free LayerNorm modulated by AdaLN: ``LN(x)·(1+scale) + shift`` (spec C.5), in float32.

    Args:
        x: [B, L, C] activations (any float dtype).
        scale: [B, 1, C] (or broadcastable) AdaLN scale.
        shift: [B, 1, C] AdaLN shift.
        eps: LayerNorm epsilon (1e-6 for every released model).

    Returns:
        [B, L, C] float32.
    """
    with _float32_region(x):
        x = F.layer_norm(x.float(), (x.shape[-1],), weight=None, bias=None, eps=eps)
        return x.mul(scale.float().add(1)).add_(shift.float())


class RMSNorm(nn.Module):
    """RMSNorm with a learnable gain, used on the text features (``text_norm``, spec C.3 step 2)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        """[..., Ct] -> [..., Ct] float32: ``x·rsqrt(mean(x²)+eps)·weight``."""
        with _float32_region(x):
            x = x.float()
            return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add(self.eps))) * self.weight.float()


class FFN(nn.Module):
    """fc1 -> GELU(tanh approximation) -> fc2 (spec C.5)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        """[B, L, C] -> [B, L, C]."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


# ----------------------------------------------------------------------------------------------------------
# 2-D RoPE (spec C.6)
# ----------------------------------------------------------------------------------------------------------


def rope2d_cos_sin(positions: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """cos/sin tables of the 2-D RoPE for integer (row, col) token positions.

    Pair m (elements 2m, 2m+1 of a head vector) rotates by ``row·inv_freq[m]`` for m < hd/4 and by
    ``col·inv_freq[m − hd/4]`` otherwise, with ``inv_freq[j] = 1/10000^(2j/(hd/2))``. The arithmetic follows
    the official float32 computation step by step, so the table equals the official cache exactly.

    Args:
        positions: [L, 2] integer (row, col) positions on the 1M grid of the aspect template.
        head_dim: per-head dimension hd (multiple of 4).

    Returns:
        (cos, sin), each [L, hd/2] float32.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / (
        ROPE_BASE ** (torch.arange(0, half, 2, dtype=torch.int64, device=positions.device) / half)
    )
    pos = positions.to(torch.int64).to(inv_freq.dtype)  # float32, exact for positions < 2^24
    angles = torch.cat([pos[:, :1] * inv_freq[None], pos[:, 1:2] * inv_freq[None]], dim=-1)  # [L, hd/2]
    return torch.cos(angles), torch.sin(angles)


def apply_rope2d(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs ``(a, b) -> (a·cos − b·sin, a·sin + b·cos)`` in float32 (spec C.6).

    Args:
        x: [B, H, L, hd] queries or keys.
        cos: [L, hd/2] from ``rope2d_cos_sin``.
        sin: [L, hd/2].

    Returns:
        [B, H, L, hd] in x's dtype.
    """
    with _float32_region(x):
        pairs = x.float().unflatten(-1, (-1, 2))  # [B, H, L, hd/2, 2]
        # (a, b)·(cos, cos) + (b, a)·(−sin, sin) = (a·cos − b·sin, b·cos + a·sin): the same products and sums
        # (x − y is x + (−y) in IEEE arithmetic, + and · commute), so the same bits, in four whole-tensor
        # operations instead of six on strided halves and a stack. roll(1) of a pair swaps it, 2.7x faster than
        # flip on the CPU.
        out = pairs * torch.stack((cos, cos), dim=-1)
        out.add_(pairs.roll(1, dims=-1) * torch.stack((-sin, sin), dim=-1))
    return out.flatten(-2).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LayerKVCache:
    """Self-attention keys/values of the scales already generated, for one block (inference only).

    ``k``/``v`` are [B, H, S, hd] after normalisation and RoPE; ``text_kv`` caches the block's projected text
    keys/values ([B, H, Lt, hd] each), which do not change across scales.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    text_kv: tuple[Tensor, Tensor] | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this scale's [B, H, l, hd] keys/values; return the full [B, H, S+l, hd] cache."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        return self.k, self.v


class SelfAttention(nn.Module):
    """Cosine self-attention with a learned per-head scale and 2-D RoPE (spec C.5 "Self-attention").

    ``q ← normalize(q)·exp(min(s_h, ln 100))``, ``k ← normalize(k)``, RoPE on both, softmax scale 1.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, channels // num_heads
        # Registration order = official state-dict order (direct params, buffer, then children).
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.q_bias = nn.Parameter(torch.zeros(channels))
        self.v_bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("zero_k_bias", torch.zeros(channels))  # keys have no bias; kept for the keys
        self.mat_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.proj = nn.Linear(channels, channels)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        attn_mask: Tensor | None = None,
        cache: LayerKVCache | None = None,
    ) -> Tensor:
        """Attend within the sequence (teacher forcing) or to the KV cache plus this scale (sampling).

        Args:
            x: [B, L, C] normalised, modulated input.
            rope: (cos, sin) [L, hd/2] for these L tokens.
            attn_mask: optional bool [L, L] (True = may attend), the block-causal mask of teacher forcing.
            cache: per-block KV cache; when given, this scale's keys/values are appended and the queries attend
                to everything cached so far (no mask: all earlier scales are visible).

        Returns:
            [B, L, C].
        """
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias)
        q, k, v = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        dtype = v.dtype
        with _float32_region(x):
            scale_mul = self.scale_mul_1H11.float().clamp_max(MAX_SCALE_MUL).exp()  # [1, H, 1, 1]
            q = F.normalize(q.float(), dim=-1, eps=1e-12).mul(scale_mul)
            k = F.normalize(k.float(), dim=-1, eps=1e-12)
        q, k = apply_rope2d(q, *rope).to(dtype), apply_rope2d(k, *rope).to(dtype)
        if cache is not None:
            k, v = cache.append(k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)  # logits = s_h · cos
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """[B, L, H·hd] -> [B, H, L, hd]."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


class CrossAttention(nn.Module):
    """Cross-attention from image tokens to the projected text (spec C.5), or the single-query text pool (C.3).

    With ``for_attn_pool`` the query is the learned ``mat_q`` [1, Hp, C/Hp] (``text_proj_for_sos.ca``);
    otherwise ``mat_q`` is a Linear applied to the normalised tokens. Keys/values are
    ``text·W_kvᵀ + cat(0, v_bias)``; softmax scale ``1/√hd``. Each sample attends only to its own text tokens
    (the official var-len semantics), expressed here as a key-padding mask.
    """

    def __init__(self, channels: int, kv_channels: int, num_heads: int, for_attn_pool: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, channels // num_heads
        self.for_attn_pool = for_attn_pool
        if for_attn_pool:
            self.mat_q = nn.Parameter(torch.zeros(1, num_heads, self.head_dim))
        self.v_bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("zero_k_bias", torch.zeros(channels))
        if not for_attn_pool:
            self.mat_q = nn.Linear(channels, channels)
        self.mat_kv = nn.Linear(kv_channels, 2 * channels, bias=False)
        self.proj = nn.Linear(channels, channels)

    def project_kv(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """[B, Lt, Ct] text -> keys, values [B, H, Lt, hd] each."""
        bias = torch.cat((self.zero_k_bias, self.v_bias))
        kv = F.linear(
            text.to(self.mat_kv.weight.dtype), self.mat_kv.weight, bias.to(self.mat_kv.weight.dtype)
        )
        k, v = kv.chunk(2, dim=-1)
        return _split_heads(k, self.num_heads), _split_heads(v, self.num_heads)

    def forward(
        self,
        x: Tensor | None,
        text: Tensor | None,
        text_mask: Tensor,
        kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attend to the text.

        Args:
            x: [B, L, C] normalised queries (ignored, may be None, for the attention pool).
            text: [B, Lt, Ct] text memory (may be None when ``kv`` is given).
            text_mask: bool [B, Lt], True for the real tokens of each sample.
            kv: precomputed ``project_kv(text)``.

        Returns:
            [B, L, C] ([B, 1, C] for the attention pool).
        """
        k, v = kv if kv is not None else self.project_kv(text)
        B = k.shape[0]
        if self.for_attn_pool:
            q = self.mat_q.to(k.dtype).unsqueeze(2).expand(B, -1, -1, -1)  # [B, Hp, 1, hd]
        else:
            q = _split_heads(self.mat_q(x), self.num_heads).to(k.dtype)
        L = q.shape[2]
        mask = text_mask[:, None, None, :]  # [B, 1, 1, Lt]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(self.head_dim))
        return self.proj(out.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim))


class AdaLNBeforeHead(nn.Module):
    """Head modulation ``(scale, shift) = Linear(SiLU(cond_BD))`` applied to an affine-free LN (spec C.5 "Head")."""

    def __init__(self, channels: int, cond_dim: int, eps: float) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(cond_dim, 2 * channels))

    def forward(self, x: Tensor, cond_BD: Tensor) -> Tensor:
        """x [B, L, C], cond_BD [B, D] -> [B, L, C] float32 (order of the split: scale, shift)."""
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.channels).unbind(2)
        return ada_layer_norm(x, scale, shift, self.eps)


class CrossAttnBlock(nn.Module):
    """Pre-norm block with shared AdaLN: SA (γ1) -> CA (no gate) -> FFN (γ2) (spec C.5)."""

    def __init__(self, channels: int, num_heads: int, mlp_hidden: int, eps: float) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, channels))
        self.sa = SelfAttention(channels, num_heads)
        self.ca = CrossAttention(channels, channels, num_heads)
        self.ffn = FFN(channels, mlp_hidden)
        self.ca_norm = nn.LayerNorm(channels, eps=eps)

    def forward(
        self,
        x: Tensor,
        gss: Tensor,
        ca_text: Tensor | None,
        text_mask: Tensor,
        rope: tuple[Tensor, Tensor],
        attn_mask: Tensor | None = None,
        cache: LayerKVCache | None = None,
    ) -> Tensor:
        """One block.

        Args:
            x: [B, L, C] float32 residual stream.
            gss: [B, 1, 6, C] shared AdaLN output ``shared_ada_lin(cond_BD)``.
            ca_text: [B, Lt, C] projected text memory (may be None when the cache holds ``text_kv``).
            text_mask: bool [B, Lt].
            rope: (cos, sin) [L, hd/2].
            attn_mask: bool [L, L] block-causal mask (teacher forcing) or None.
            cache: KV cache of this block (sampling) or None.

        Returns:
            [B, L, C] float32.
        """
        with _float32_region(x):  # the modulation is computed in float32 (spec C.5)
            gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss.float() + gss.float()).unbind(2)
        dtype = self.sa.mat_qkv.weight.dtype
        h = self.sa(ada_layer_norm(x, scale1, shift1, self.eps).to(dtype), rope, attn_mask, cache)
        x = x + h.float() * gamma1
        with _float32_region(x):
            h = F.layer_norm(
                x, (self.channels,), self.ca_norm.weight.float(), self.ca_norm.bias.float(), self.eps
            )
        text_kv = None
        if cache is not None:
            if cache.text_kv is None:
                cache.text_kv = self.ca.project_kv(ca_text)
            text_kv = cache.text_kv
        x = x + self.ca(h.to(dtype), ca_text, text_mask, kv=text_kv).float()
        h = self.ffn(ada_layer_norm(x, scale2, shift2, self.eps).to(dtype))
        return x + h.float() * gamma2


class BlockChunk(nn.Module):
    """A group of consecutive blocks; exists only to reproduce the official key prefix ``block_chunks.{c}.module.{m}``."""

    def __init__(self, blocks: list[CrossAttnBlock]) -> None:
        super().__init__()
        self.module = nn.ModuleList(blocks)


class TextAttentivePool(nn.Module):
    """Single-query attention pooling of the normalised text into the condition vector ``cond_BD`` (spec C.3.3).

    Heads: ``Ct // 128`` when C ≤ 4096, else ``Ct // 64`` (the official ``TextAttentivePool``); the per-head dim
    of the pool is then ``C / heads`` (128 for Infinity-2B, 224 for Infinity-8B).
    """

    def __init__(self, text_channels: int, channels: int) -> None:
        super().__init__()
        self.ca = CrossAttention(
            channels, text_channels, pool_heads(text_channels, channels), for_attn_pool=True
        )

    def forward(self, text: Tensor, text_mask: Tensor) -> Tensor:
        """text [B, Lt, Ct] (normalised), text_mask bool [B, Lt] -> cond_BD [B, C]."""
        return self.ca(None, text, text_mask).squeeze(1)


def pool_heads(text_channels: int, channels: int) -> int:
    """Number of heads of the text attention pool (spec C.3.3; 16 for both released models)."""
    return text_channels // (64 if channels > 4096 else 128)

"""KV-cached next-scale sampling of Infinity, and NSARM's variant with LR-derived first scales (spec D, E.3).

Per scale k (spec D step 3): run the new tokens through every block against the KV cache of scales < k, take
the IVC head's logits, divide by τ_k, combine classifier-free guidance on the logits
(``cfg·cond/τ + (1−cfg)·uncond/τ``, batch doubled with the learned ``cfg_uncond`` text), sample every bit
independently with top-p, turn the bits into codes ±1/√d, add them (bilinearly upsampled) to the accumulated
latent and resize that to the next scale's grid: the next input.

NSARM (paper Sec. 3, spec E.3): the codes of the first K_t scales come from the transformation network applied to
the LR latent (``prefix_codes``). The transformer still runs those scales, which fills its KV cache from the
LR-derived inputs; the bits it samples there are discarded. NSARM's released sampler builds the next input
with ``area`` resizing instead of Infinity's bilinear one (``next_input_mode``).

Shape legend:
    B  batch (2B rows inside the model with CFG)   l_k = h_k·w_k tokens of scale k   d_vae bits per token
    d  VAE channels (d_vae / 4 with patchify)      (H_k, W_k) VAE grid of scale k    (H, W) final VAE grid
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nsarm_core.errors import ConfigError, InputError
from nsarm_core.models.bsq import (
    bits_to_codes,
    map_to_tokens,
    next_scale_input,
    patchify,
    resize_latent,
    unpatchify,
)
from nsarm_core.models.transformer import InfinityTransformer, TextInput, as_schedule
from nsarm_core.scales import ScaleSchedule

# The rule lives in the torch-free nsarm_core.upscaler, so the batch layer checks --tau without torch.
from nsarm_core.upscaler import check_tau

logger = logging.getLogger(__name__)

ForceBits = Sequence[Tensor | None] | Callable[[int, Tensor], Tensor]
"""Replay hook: per scale a [B, l_k, d_vae] uint8 tensor (None = keep the sample), or ``f(k, bits_tok)``."""


@dataclass
class SampleResult:
    """Output of :func:`sample_scales`.

    Attributes:
        summed_codes: [B, d, H, W] accumulated latent Σ_k up(codes_k): the VAE decoder's input.
        bits: per scale [B, H_k, W_k, d] uint8 VAE-layout bits actually used (for NSARM's first K_t scales:
            the bits of ``prefix_codes``).
        bits_tok: per scale [B, l_k, d_vae] uint8, the same bits in token layout (patchified).
        logits: per scale [B, l_k, 2·d_vae] head output before τ and CFG ([2B, ...] rows [cond; uncond] when the
            batch was doubled for CFG); None when ``return_logits=False``.
        next_inputs: inputs of scales 1..K−1, [B, l_k, d_vae] each (word-embed inputs, cond half).
    """

    summed_codes: Tensor
    bits: list[Tensor]
    bits_tok: list[Tensor]
    logits: list[Tensor] | None
    next_inputs: list[Tensor]


Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the whole batch, or one per sample (then a sample's bits do not depend on the batch)."""


def sample_bits(logits: Tensor, top_p: float, generator: Generators) -> Tensor:
    """Sample every bit independently from its two logits with top-p (spec D 3c).

    The operations mirror the official ``sample_with_top_k_top_p_also_inplace_modifying_logits_``: sort the two
    logits ascending, drop the minority class when its probability is ≤ 1 − top_p, then one
    ``torch.multinomial`` draw per bit, so a given generator state yields the official bits.

    Args:
        logits: [B, l, 2·d_vae] (already divided by τ and CFG-combined).
        top_p: nucleus mass (0.97 in every released script); ≤ 0 disables the filter.
        generator: RNG on the logits' device, or a sequence of B generators: row ``b`` then draws from
            ``generator[b]`` alone, exactly as it would in a batch of one (batched windows, ``pipeline.py``).

    Returns:
        [B, l, d_vae] uint8 bits.
    """
    B, n, V = logits.shape
    lg = logits.float().reshape(B, -1, 2)
    if top_p > 0.5:
        probs = _two_class_top_p(lg, top_p)
    else:
        if top_p > 0:  # the filter keeps only the majority class (ties: sort order decides, as officially)
            sorted_logits, sorted_idx = lg.sort(dim=-1, descending=False)
            remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
            remove[..., -1:] = False  # the majority class is always kept
            lg = lg.masked_fill(remove.scatter(-1, sorted_idx, remove), -torch.inf)
        probs = lg.softmax(dim=-1)
    if generator is None or isinstance(generator, torch.Generator):
        idx = torch.multinomial(probs.view(-1, 2), num_samples=1, replacement=True, generator=generator)
    else:
        if len(generator) != B:
            raise InputError(f"{len(generator)} generators for a batch of {B} samples; pass one per sample")
        idx = torch.cat(
            [
                torch.multinomial(probs[b], num_samples=1, replacement=True, generator=g)
                for b, g in enumerate(generator)
            ]
        )
    return idx.view(B, n, V // 2).to(torch.uint8)


def _two_class_top_p(lg: Tensor, top_p: float) -> Tensor:
    """The probabilities the official top-p filter leaves for two classes per bit, bit for bit, with one softmax.

    Officially: sort the two logits, softmax, drop the first (minority) class when its cumulative probability,
    i.e. its own probability, is <= 1 - top_p, and softmax again with -inf in its place. With top_p > 0.5 a
    dropped class has p < 0.5 < p of the other, so it is the one with the smaller probability of the unsorted
    softmax (the softmax of two values does not depend on their order), and the second softmax is then exactly
    (0, 1): exp(-inf) = 0, exp(0) = 1. Rows that keep both classes keep the first softmax, which is the second.
    Saves a softmax, a sort, a cumsum and a scatter per scale (``tests/test_sampler.py`` compares both).

    Args:
        lg: [..., 2] float32 logits.
        top_p: in (0.5, 1].

    Returns:
        [..., 2] probabilities.
    """
    probs = lg.softmax(dim=-1)
    minority = probs.amin(dim=-1, keepdim=True)
    return torch.where(minority <= (1 - top_p), (probs > minority).to(probs.dtype), probs)


def _per_scale(value: float | Sequence[float], k: int, name: str) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)] * k
    values = [float(v) for v in value]
    if len(values) < k:
        raise ConfigError(
            f"{name} has {len(values)} entries for a schedule of {k} scales; give one per scale"
        )
    return values[:k]


def tokens_to_vae_bits(bits_tok: Tensor, grid: tuple[int, int], patchify_tokens: bool) -> Tensor:
    """Token-layout bits [B, h·w, d_vae] -> VAE-layout bits [B, H, W, d] (pixel-shuffle with patchify, spec C.8)."""
    h, w = grid
    maps = bits_tok.transpose(1, 2).reshape(bits_tok.shape[0], -1, h, w)  # [B, d_vae, h, w]
    if patchify_tokens:
        maps = unpatchify(maps)
    return maps.permute(0, 2, 3, 1).contiguous()


def vae_bits_to_tokens(bits: Tensor, patchify_tokens: bool) -> Tensor:
    """Inverse of :func:`tokens_to_vae_bits`: [B, H, W, d] -> [B, l, d_vae]."""
    maps = bits.permute(0, 3, 1, 2)
    if patchify_tokens:
        maps = patchify(maps)
    return map_to_tokens(maps).contiguous()


@torch.no_grad()
def sample_scales(
    model: InfinityTransformer,
    text: TextInput,
    schedule: ScaleSchedule | Sequence[Sequence[int]],
    *,
    generator: Generators,
    tau: float | Sequence[float] = 1.0,
    top_p: float = 0.97,
    cfg: float | Sequence[float] = 1.0,
    next_input_mode: str = "bilinear",
    prefix_codes: Sequence[Tensor] | None = None,
    force_bits: ForceBits | None = None,
    return_logits: bool = True,
    batch_size: int | None = None,
    stop_after: int | None = None,
) -> SampleResult:
    """Sample all scales of ``schedule`` with the KV cache (Infinity's ``autoregressive_infer_cfg``; NSARM's variant).

    Args:
        model: the transformer (eval mode; any dtype set-up).
        text: TextCondition / list of [L_i, Ct] tensors; None in the model's "no text encoder" mode.
        schedule: token grids; ``schedule.patchify`` must match the model (VAE grids = 2× token grids).
        generator: RNG for the bit draws (on the model's device), or one per sample (see :func:`sample_bits`).
            Required: pass ``None`` only to use torch's global RNG deliberately.
        tau: temperature, one value or one per scale (0.5 NSARM/2B scripts, 1.0 8B notebooks).
        top_p: top-p of every bit (0.97).
        cfg: guidance scale, one value or one per scale; any value ≠ 1 doubles the batch with ``cfg_uncond``.
        next_input_mode: ``"bilinear"`` (Infinity) or ``"area"`` (NSARM's released sampler).
        prefix_codes: NSARM: VAE-space code maps [B, d, H_k, W_k] (±1/√d) for the first K_t scales, replacing the
            sampled bits of those scales (their logits are still computed, and recorded).
        force_bits: replay hook applied after sampling (see :data:`ForceBits`); for parity tests.
        return_logits: keep the per-scale head outputs.
        batch_size: number of samples when ``text`` is None.
        stop_after: run only the first ``stop_after`` scales (the official ``trunk_scale``); codes still
            accumulate on the full schedule's final grid, so every computed scale equals the full run's.

    Returns:
        :class:`SampleResult`.
    """
    sched = as_schedule(schedule)
    mcfg = model.config
    if sched.patchify != mcfg.patchify:
        raise ConfigError(
            f"schedule patchify={sched.patchify} but the model was built with patchify={mcfg.patchify}; "
            f"use e.g. nsarm_core.scales.get_schedule(1.0, '1M', patchify={mcfg.patchify})"
        )
    if next_input_mode not in ("bilinear", "area"):
        raise ConfigError(
            f"next_input_mode must be 'bilinear' (Infinity) or 'area' (NSARM), got {next_input_mode!r}"
        )
    K = sched.num_scales
    steps = K if stop_after is None else int(stop_after)
    if not 1 <= steps <= K:
        raise ConfigError(f"stop_after must be in [1, {K}], got {stop_after}")
    taus, cfgs = [check_tau(t) for t in _per_scale(tau, K, "tau")], _per_scale(cfg, K, "cfg")
    cond = model.text_condition(text, batch_size)
    B = cond.batch_size
    # CFG doubles the batch with the "empty text" rows (spec D step 1); without a text encoder cond == uncond.
    doubled = mcfg.use_text and any(c != 1.0 for c in cfgs)
    if not mcfg.use_text and any(c != 1.0 for c in cfgs):
        logger.warning("cfg=%s has no effect: the model has no text encoder, so cond == uncond", cfg)
    state = model.start_inference(cond.concat(model.unconditional_text(cond)) if doubled else cond, sched)

    device = state.context.cond_BD.device
    vae_grids, final = sched.vae_grids, sched.vae_grids[-1]
    d = mcfg.vae_channels
    prefix = list(prefix_codes) if prefix_codes is not None else []
    if len(prefix) > K:
        raise InputError(f"{len(prefix)} prefix code maps for a schedule of {K} scales")
    for k, codes in enumerate(prefix):
        if tuple(codes.shape) != (B, d, *vae_grids[k]):
            raise InputError(
                f"prefix_codes[{k}] must be [{B}, {d}, {vae_grids[k][0]}, {vae_grids[k][1]}], got {tuple(codes.shape)}"
            )

    summed = torch.zeros(B, d, *final, device=device, dtype=torch.float32)
    result = SampleResult(summed, [], [], [] if return_logits else None, [])
    x_in: Tensor | None = None
    for k in range(steps):
        raw = model.forward_scale(state, x_in)  # [B or 2B, l_k, V]
        if result.logits is not None:
            result.logits.append(raw)
        lg = raw.mul(1 / taus[k])
        lg = cfgs[k] * lg[:B] + (1 - cfgs[k]) * lg[B:] if doubled and cfgs[k] != 1.0 else lg[:B]
        bits_tok = sample_bits(lg, top_p, generator)
        if force_bits is not None:
            bits_tok = _forced(force_bits, k, bits_tok)
        if k < len(prefix):
            # NSARM: the LR-derived codes replace this scale; the sampled bits are discarded (spec E.3 step 2).
            codes = prefix[k].to(device=device, dtype=torch.float32)
            bits = (codes > 0).permute(0, 2, 3, 1).to(torch.uint8).contiguous()
            bits_tok = vae_bits_to_tokens(bits, mcfg.patchify)
        else:
            bits = tokens_to_vae_bits(bits_tok, sched.token_grids[k], mcfg.patchify)
            codes = bits_to_codes(bits)
        result.bits.append(bits)
        result.bits_tok.append(bits_tok)
        summed = summed + resize_latent(codes, final, "bilinear")
        if k + 1 < steps:
            nxt = next_scale_input(summed, vae_grids[k + 1], next_input_mode)  # type: ignore[arg-type]
            x_in = map_to_tokens(patchify(nxt) if mcfg.patchify else nxt).contiguous()
            result.next_inputs.append(x_in)
            if doubled:
                x_in = torch.cat((x_in, x_in))
    result.summed_codes = summed
    return result


def _forced(force_bits: ForceBits, k: int, bits_tok: Tensor) -> Tensor:
    forced = (
        force_bits(k, bits_tok) if callable(force_bits) else (force_bits[k] if k < len(force_bits) else None)
    )
    if forced is None:
        return bits_tok
    if tuple(forced.shape) != tuple(bits_tok.shape):
        raise InputError(
            f"forced bits of scale {k} have shape {tuple(forced.shape)}, expected {tuple(bits_tok.shape)}"
        )
    return forced.to(device=bits_tok.device, dtype=torch.uint8)

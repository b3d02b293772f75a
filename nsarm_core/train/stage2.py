"""Stage 2 of NSARM training: end-to-end fine-tuning with bitwise cross-entropy on the "modified GT" labels.

Paper: NSARM (arXiv 2510.00820) Alg. 2 and the overview figure ("Stage2: CE Loss", "end-to-end full-model
fine-tuning"); spec docs/architecture.md E.4, C.9 (bitwise self-correction), C.10 (Infinity's loss
weighting). One micro-batch:

    F_HR, F_LR  = VAE(hr), VAE(lr)                                    frozen, fp32
    maps_k      = outputs_to_latent_maps(T(F_LR))                      k < K_t (transformation network)
    labels      = modified_gt_labels(F_HR, maps, grids, flip, ST)     Alg. 2: bits of BSQ(maps_k) for k < K_t,
                                                                       then the HR residual given those codes
    inputs      = teacher_forcing_inputs(codes, grids, bilinear)     scales 1..K-1 (E.4: trilinear in training)
    logits      = transformer(text, patchify(inputs) as tokens)       [B, L, 2 d_vae]
    loss        = bitwise CE(logits, labels), tokens weighted as Infinity (reweight_loss_by_scale=1, C.7)

The BSQ of the network's maps is straight-through, so the CE reaches the transformation network through the
word-embedded inputs (E.4, inferred) when it trains too.

Base pretraining (``stage.transform_net: null``, ``nsarm train-base``): without a transformation network the
labels are the plain HR decomposition (Alg. 1; ``modified_gt_labels`` with no predicted scales), i.e. Infinity's
own next-scale objective with no LR condition. That is the pretrained text-to-image model NSARM starts from; for
our small models, which have no released Infinity to start from, it gives the base transformer of the stage-1-only
ablation (paper Sec. 4.3: stage-1 network + the untouched base model) and the starting point of stage 2.

Shape legend:
    B  batch     d  VAE channels     d_vae = 4d bits per token (patchify) or d     K scales, L = sum_k h_k w_k
    grids: VAE grids (h_k, w_k) of the schedule; token grids are half of them with patchify
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from nsarm_core.errors import ConfigError
from nsarm_core.models.bsq import (
    BitFlipConfig,
    map_to_tokens,
    modified_gt_labels,
    patchify,
    teacher_forcing_inputs,
)
from nsarm_core.models.sampler import vae_bits_to_tokens
from nsarm_core.models.text_encoder import TextEncoder
from nsarm_core.models.transform_net import (
    TransformNet,
    TransformNetConfig,
    build_transform_net,
    outputs_to_latent_maps,
)
from nsarm_core.models.transformer import (
    InfinityTransformer,
    TextCondition,
    TransformerConfig,
    get_preset,
    load_transformer_weights,
)
from nsarm_core.scales import get_named_schedule
from nsarm_core.train.config import TrainConfig
from nsarm_core.train.loop import param_groups
from nsarm_core.train.stage1 import (
    DataSettings,
    check_geometry,
    encode_frozen,
    load_frozen_vae,
    settings_from_stage,
)

logger = logging.getLogger(__name__)

#: Infinity's parameters without weight decay (C.10); matched as name fragments.
NO_DECAY = ("cfg_uncond", "pos_start", "lvl_embed", "ada_gss", "scale_mul", "mat_q", "gamma", "beta")


@dataclass(frozen=True)
class Stage2Settings:
    """Stage-2 settings, read from the train config's ``stage:`` mapping (data keys as in stage 1).

    Attributes:
        schedule: named scale schedule ("sr-1024" for NSARM).
        vae, vae_weights: the frozen VAE (preset name or ``VAEConfig`` mapping; weights folder or file).
        transformer: preset name or a mapping of ``TransformerConfig`` fields; transformer_weights: initial
            weights (official ``.pth``/``.safetensors``/sharded folder, e.g. Infinity-8B).
        transform_net, transform_net_weights: the network (stage-1 export folder for the weights);
            ``transform_net: None`` trains the base model alone (Infinity's objective, see the module docstring).
        train_transform_net: fine-tune the transformation network too (end to end), else keep it frozen.
        transform_net_lr_scale: the network's learning rate as a fraction of the config's ``lr`` (1 = NSARM's
            single rate). Below 1 the network moves less than the transformer. With CE alone the nsarm-tiny network
            drifts away from the LR: its own scales lost 0.032 SSIM-Y on the held-out photos at the full rate and
            0.021 at a tenth of it (docs/model_card.md).
        text_encoder: Flan-T5 folder or hub id for transformers with ``use_text``.
        flip_layers, flip_strength: bitwise self-correction (C.9); ``flip_layers=0`` disables it (NSARM's
            run name says "NOFlip", E.4).
        loss_weighting: "infinity" (Infinity's ``reweight_loss_by_scale=1``, spec C.7: a token of scale k weighs
            ``sqrt(area_K / area_k)``, normalised to sum 1 over the sequence, so scale k's total weight grows as
            ``sqrt(area_k)``), "scales" (every scale weighs the same) or "tokens" (every token 1/L).
        data: the training data.
    """

    schedule: str = "sr-1024"
    vae: str | Mapping[str, Any] = "infinity-vae-d56"
    vae_weights: str | None = None
    transformer: str | Mapping[str, Any] = "infinity-8b"
    transformer_weights: str | None = None
    transform_net: str | Mapping[str, Any] | None = "nsarm-8b"
    transform_net_weights: str | None = None
    train_transform_net: bool = True
    transform_net_lr_scale: float = 1.0
    text_encoder: str = "google/flan-t5-xl"
    flip_layers: int = 0
    flip_strength: float = 0.3
    loss_weighting: Literal["infinity", "scales", "tokens"] = "infinity"
    data: DataSettings = field(default_factory=DataSettings)

    def __post_init__(self) -> None:
        if self.loss_weighting not in ("infinity", "scales", "tokens"):
            raise ConfigError(
                f"stage.loss_weighting must be 'infinity', 'scales' or 'tokens', got {self.loss_weighting!r}"
            )
        if not self.transform_net_lr_scale > 0:
            raise ConfigError(
                f"stage.transform_net_lr_scale must be > 0, got {self.transform_net_lr_scale!r} "
                "(use train_transform_net: false to freeze the network)"
            )
        if self.flip_layers < 0 or not 0.0 <= self.flip_strength <= 1.0:
            raise ConfigError(
                f"stage.flip_layers must be >= 0 and flip_strength in [0, 1], got {self.flip_layers}, {self.flip_strength}"
            )

    @classmethod
    def from_stage(cls, stage: Mapping[str, Any]) -> Stage2Settings:
        """Build from ``TrainConfig.stage`` (data keys sit at the same level)."""
        return settings_from_stage(cls, stage)


def bitwise_ce(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token bitwise cross-entropy and bit accuracy (C.7 bit layout: ``[..., 2j]`` bit j = 0, ``2j+1`` = 1).

    Args:
        logits: ``[B, l, 2 d_vae]`` float.
        labels: ``[B, l, d_vae]`` uint8 bits.

    Returns:
        ``(ce [B, l], correct [B, l])``: CE and fraction of correct bits, averaged over the d_vae bits.
    """
    b, n, v = logits.shape
    pairs = logits.float().reshape(b, n, v // 2, 2)
    ce = F.cross_entropy(pairs.reshape(-1, 2), labels.reshape(-1).long(), reduction="none").reshape(b, n, -1)
    correct = (pairs.argmax(-1) == labels.long()).float()
    return ce.mean(-1), correct.mean(-1)


def token_weights(lengths: Sequence[int], mode: str) -> Tensor:
    """Per-token loss weights ``[L]`` summing to 1 (spec C.7).

    ``"infinity"``: a token of scale k weighs ``sqrt(area_K / area_k)`` before normalisation (Infinity's
    ``reweight_loss_by_scale=1``), so coarse scales are not drowned by the many tokens of the fine ones;
    ``"scales"``: every scale weighs ``1/K``; ``"tokens"``: every token ``1/L``.
    """
    areas = torch.tensor([float(n) for n in lengths])
    if mode == "infinity":
        per_token = (areas[-1] / areas).sqrt()
    elif mode == "scales":
        per_token = 1.0 / areas
    elif mode == "tokens":
        per_token = torch.ones_like(areas)
    else:
        raise ConfigError(f"unknown loss weighting {mode!r}; valid: infinity, scales, tokens")
    w = torch.repeat_interleave(per_token, areas.long())
    return w / w.sum()


def weighted_ce(ce: Tensor, lengths: Sequence[int], mode: str) -> Tensor:
    """Batch mean of the weighted sum over tokens of the per-token CE ``ce [B, L]``."""
    w = token_weights(lengths, mode).to(ce.device)
    return (ce * w).sum(dim=1).mean()


class Stage2Recipe:
    """The stage-2 :class:`~nsarm_core.train.loop.Recipe`: bitwise CE on the modified GT labels (Alg. 2)."""

    def __init__(self, settings: Stage2Settings, seed: int = 0, base_lr: float | None = None) -> None:
        self.settings = settings
        self.seed = seed
        self.base_lr = base_lr  # the config's lr: transform_net_lr_scale is relative to it
        self.schedule = get_named_schedule(settings.schedule)
        self.pixel_size: tuple[int, int] | None = None
        self.net_config: TransformNetConfig | None = None
        self.transformer_config: TransformerConfig | None = None
        self.text_encoder: Any | None = None
        self.flip = (
            BitFlipConfig(settings.flip_layers, settings.flip_strength) if settings.flip_layers else None
        )

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Stage2Recipe:
        """Build from a :class:`TrainConfig` (its ``stage`` mapping and seed)."""
        return cls(Stage2Settings.from_stage(cfg.stage), seed=cfg.seed, base_lr=cfg.lr)

    def build_models(self) -> dict[str, nn.Module]:
        s = self.settings
        torch.manual_seed(self.seed)  # module initialisers read the global RNG (see stage1)
        vae = load_frozen_vae(s.vae, s.vae_weights)
        tn = s.transform_net
        net: TransformNet | None = None
        if tn is None:
            if s.transform_net_weights is not None:
                raise ConfigError(
                    "stage.transform_net is null (base pretraining) but stage.transform_net_weights is set; "
                    "drop one of them"
                )
        elif s.transform_net_weights is not None:
            net = TransformNet.from_pretrained(s.transform_net_weights)
        else:
            logger.warning("stage.transform_net_weights is not set: the transformation network starts random")
            net = build_transform_net(tn if isinstance(tn, str) else TransformNetConfig.from_dict(tn))
        if net is not None:
            net.requires_grad_(s.train_transform_net)
        if isinstance(s.transformer, str):
            transformer_config = get_preset(s.transformer)
        else:
            try:
                transformer_config = TransformerConfig(**s.transformer)
            except TypeError as exc:
                raise ConfigError(
                    f"stage.transformer mapping: {exc}; use TransformerConfig field names"
                ) from exc
        transformer = InfinityTransformer(
            transformer_config, generator=torch.Generator().manual_seed(self.seed)
        )
        if s.transformer_weights is not None:
            load_transformer_weights(transformer, s.transformer_weights)
        if net is not None:
            self.pixel_size = check_geometry(self.schedule, vae, net, s.data.scale)
        else:
            self.pixel_size = (int(self.schedule.pixel_size[0]), int(self.schedule.pixel_size[1]))
        if (
            transformer_config.patchify != self.schedule.patchify
            or transformer_config.vae_channels != vae.config.codebook_dim
        ):
            raise ConfigError(
                f"transformer (patchify={transformer_config.patchify}, {transformer_config.vae_channels} VAE channels) does not fit the "
                f"schedule (patchify={self.schedule.patchify}) and VAE ({vae.config.codebook_dim} channels)"
            )
        self.net_config, self.transformer_config = (
            (net.config if net is not None else None),
            transformer_config,
        )
        models: dict[str, nn.Module] = {"vae": vae, "transformer": transformer}
        if net is not None:
            models["transform_net"] = net
        if transformer_config.use_text:
            # Truncate captions to the transformer's text length (512 for the released models, C.3).
            self.text_encoder = TextEncoder.from_pretrained(
                s.text_encoder, max_length=transformer_config.text_maxlen
            )
            models["text_encoder"] = self.text_encoder.model  # frozen; the loop moves it to the device
        return models

    def trainable_parameters(self, models: Mapping[str, nn.Module]) -> list[dict[str, Any]]:
        groups = param_groups(models["transformer"], no_decay=NO_DECAY)
        if self.settings.train_transform_net and "transform_net" in models:
            net_groups = param_groups(models["transform_net"])
            if self.settings.transform_net_lr_scale != 1.0:
                if self.base_lr is None:
                    raise ConfigError(
                        "stage.transform_net_lr_scale needs the base learning rate: build the recipe with "
                        "Stage2Recipe.from_config(cfg) or pass base_lr="
                    )
                for g in net_groups:
                    g["lr"] = self.base_lr * self.settings.transform_net_lr_scale
            groups += net_groups
        return groups

    def make_dataset(self) -> Dataset:
        assert self.pixel_size is not None, "build_models() runs first"
        return self.settings.data.make_dataset(self.pixel_size, self.seed)

    def _text(self, captions: list[str], device: torch.device) -> TextCondition | None:
        if self.text_encoder is None:
            return None  # "no text encoder" mode: the learned cfg_uncond rows are the text
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            feats = self.text_encoder.encode(captions)
        return TextCondition.from_list(feats.per_prompt())

    def compute_loss(
        self, models: Mapping[str, nn.Module], batch: Mapping[str, Any], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        assert self.transformer_config is not None, "build_models() runs first"
        vae, transformer = models["vae"], models["transformer"]
        grids = self.schedule.vae_grids
        hr_latent = encode_frozen(vae, batch["hr"])  # [B, d, H, W]
        maps: list[Tensor] = []  # base pretraining: no LR-derived scales, the labels are Alg. 1's
        if "transform_net" in models:
            assert self.net_config is not None
            lr_latent = encode_frozen(vae, batch["lr"])
            maps = outputs_to_latent_maps(models["transform_net"](lr_latent), self.net_config.branch_grids)
        # Alg. 2: labels of scales < K_t are the bits of BSQ(maps) (straight-through, so the CE reaches T);
        # the later ones are the HR residual given those codes (optionally with flipped history, C.9).
        rs = modified_gt_labels(
            hr_latent,
            [m.float() for m in maps],
            grids,
            flip=self.flip,
            generator=generator,
            straight_through=True,
        )
        inputs = teacher_forcing_inputs(rs.codes, grids, hr_latent.shape[-2:], "bilinear")
        patch = self.transformer_config.patchify
        x_blc = torch.cat(
            [map_to_tokens(patchify(x) if patch else x) for x in inputs], dim=1
        )  # [B, L-1, d_vae]
        labels = torch.cat([vae_bits_to_tokens(b, patch) for b in rs.bits], dim=1)  # [B, L, d_vae]
        b = x_blc.shape[0]
        drop = None
        if self.transformer_config.cond_drop_rate > 0:
            drop = (torch.rand(b, generator=generator) < self.transformer_config.cond_drop_rate).to(
                x_blc.device
            )
        text = self._text(list(batch["caption"]), x_blc.device)
        logits = transformer(text, x_blc, self.schedule, cond_drop=drop)  # [B, L, 2 d_vae]
        ce, correct = bitwise_ce(logits, labels)
        lengths = list(self.schedule.scale_lengths)
        per_scale_ce = [c.mean() for c in ce.split(lengths, dim=1)]
        per_scale_acc = [a.mean() for a in correct.split(lengths, dim=1)]
        loss = weighted_ce(ce, lengths, self.settings.loss_weighting)
        metrics: dict[str, float] = {}
        for k, (c, a) in enumerate(zip(per_scale_ce, per_scale_acc, strict=True)):
            metrics[f"ce/scale_{k:02d}"] = float(c.detach())
            metrics[f"bit_acc/scale_{k:02d}"] = float(a)
        return loss, metrics

    def export(self, out_dir: Path, state_dicts: Mapping[str, dict[str, Tensor]]) -> None:
        assert self.transformer_config is not None, "build_models() runs first"
        transformer = InfinityTransformer(self.transformer_config, init=False)
        transformer.load_state_dict(state_dicts["transformer"])
        transformer.save_pretrained(out_dir / "transformer")
        if "transform_net" in state_dicts:
            assert self.net_config is not None
            net = TransformNet(self.net_config)
            net.load_state_dict({k: v.float() for k, v in state_dicts["transform_net"].items()})
            net.save_pretrained(out_dir / "transform_net")
        logger.info("exported stage-2 models to %s", out_dir)

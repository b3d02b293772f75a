"""Stage 1 of NSARM training: the transformation network learns the HR image's first K_t residual scales.

Paper: NSARM (arXiv 2510.00820) Eq. 4 and the overview figure ("Stage1: MSE Loss"); spec
docs/architecture.md E.2-E.4. The frozen BSQ-VAE encodes the HR image to ``F_HR`` and the LR image to
``F_LR``; the HR latent is decomposed into residual scales (Alg. 1, ``bsq.decompose_into_residual_scales``) and
the network ``T`` is trained so that its K_t outputs match the *continuous* residuals ``r_k`` (before BSQ) of
the first K_t scales::

    L_1 = MSE( outputs_to_latent_maps(T(F_LR)),  [r_0, ..., r_{K_t - 1}] )

Geometry (checked when the recipe is built): the HR crop is the schedule's pixel size; the LR is ``scale``
times smaller and its VAE latent must be the network's ``latent_size``; the network's branch grids must be the
first K_t VAE grids of the schedule. Official: 1024 px HR (``sr-1024``, VAE grids 2..128), x4, 256 px LR ->
32x32 latent, K_t = 7 branches on grids 2..32.

Shape legend:
    B  batch     d  VAE latent channels     (H, W)  HR latent grid     (h_k, w_k)  VAE grid of scale k
    hr [B, 3, H*p, W*p], lr [B, 3, H*p/s, W*p/s] in [-1, 1] (p = VAE stride, s = SR scale)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from nsarm_core.data.datasets import HRFolderDataset, PairedFolderDataset
from nsarm_core.errors import ConfigError
from nsarm_core.models.bsq import decompose_into_residual_scales
from nsarm_core.models.nsarm import get_preset as get_nsarm_preset
from nsarm_core.models.transform_net import PRESETS as NET_PRESETS
from nsarm_core.models.transform_net import (
    TransformNet,
    TransformNetConfig,
    build_transform_net,
    outputs_to_latent_maps,
)
from nsarm_core.models.transformer import PRESETS as TRANSFORMER_PRESETS
from nsarm_core.models.vae import BSQVAE, VAEConfig, build_vae, load_official_vae_state_dict
from nsarm_core.models.vae import PRESETS as VAE_PRESETS
from nsarm_core.scales import SCHEDULES, ScaleSchedule, get_named_schedule
from nsarm_core.train.config import TrainConfig, convert_scalar_fields
from nsarm_core.train.loop import param_groups

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSettings:
    """Where training pairs come from (shared by both stages; keys of ``stage:`` in the train config).

    Attributes:
        hr_dirs: HR image folders/files/patterns, degraded on the fly (``HRFolderDataset``).
        lr_dir, hr_dir: pre-made pair folders instead (``PairedFolderDataset``); both or neither.
        degradation: degradation preset for ``hr_dirs`` ("realesrgan", "light", "bicubic"), or a list of them (a
            mixture, one drawn per sample with ``degradation_weights``, default equal).
        scale: SR factor (4 in NSARM).
        captions: caption JSONL file or folder (sidecar .txt files are used otherwise).
        default_caption: caption of images without one.
        caption_dropout: probability of an empty caption (condition dropout, C.10).
        crop: "random" or "center".
        preload_images: decode the ``hr_dirs`` images once and keep them in memory (small photo sets).
    """

    hr_dirs: tuple[str, ...] = ()
    lr_dir: str | None = None
    hr_dir: str | None = None
    degradation: str | tuple[str, ...] = "realesrgan"
    degradation_weights: tuple[float, ...] | None = None
    scale: int = 4
    captions: str | None = None
    default_caption: str = ""
    caption_dropout: float = 0.0
    crop: Literal["random", "center"] = "random"
    preload_images: bool = False

    def __post_init__(self) -> None:
        hr_dirs = (self.hr_dirs,) if isinstance(self.hr_dirs, str) else tuple(str(p) for p in self.hr_dirs)
        object.__setattr__(self, "hr_dirs", hr_dirs)
        if not isinstance(self.degradation, str):
            object.__setattr__(self, "degradation", tuple(str(d) for d in self.degradation))
        if self.degradation_weights is not None:
            object.__setattr__(self, "degradation_weights", tuple(self.degradation_weights))
        paired = self.lr_dir is not None or self.hr_dir is not None
        if paired and (self.lr_dir is None or self.hr_dir is None):
            raise ConfigError("stage.lr_dir and stage.hr_dir go together: give both for pre-made pairs")
        if self.crop not in ("random", "center"):
            raise ConfigError(f"stage.crop must be 'random' or 'center', got {self.crop!r}")
        if int(self.scale) != self.scale or self.scale < 1:
            raise ConfigError(f"stage.scale must be a positive integer, got {self.scale!r}")
        if paired == bool(hr_dirs):
            raise ConfigError(
                "give training data either as stage.hr_dirs (HR images, LR made on the fly) or as "
                "stage.lr_dir + stage.hr_dir (pre-made pairs)"
            )

    def make_dataset(self, pixel_size: tuple[int, int], seed: int) -> Dataset:
        """The dataset these settings describe, cropping HR to ``pixel_size``."""

        common: dict[str, Any] = dict(
            captions=self.captions,
            default_caption=self.default_caption,
            caption_dropout=self.caption_dropout,
            crop=self.crop,
        )
        if self.hr_dirs:
            return HRFolderDataset(
                list(self.hr_dirs),
                pixel_size,
                self.degradation,
                self.scale,
                seed,
                degradation_weights=self.degradation_weights,
                preload=self.preload_images,
                **common,
            )
        assert self.lr_dir is not None and self.hr_dir is not None
        return PairedFolderDataset(self.lr_dir, self.hr_dir, self.scale, pixel_size, seed, **common)


@dataclass(frozen=True)
class Stage1Settings:
    """Stage-1 settings, read from the train config's ``stage:`` mapping.

    Attributes:
        schedule: named scale schedule of the HR image (``scales.SCHEDULES``: "sr-1024", "tiny-256", ...).
        vae: VAE preset name or a mapping of ``VAEConfig`` fields; vae_weights: its weights (a
            ``save_pretrained`` folder or an official file). Without weights the VAE is random, which is only
            useful for tests (a warning is logged).
        transform_net: network preset name or a mapping of ``TransformNetConfig`` fields;
            transform_net_weights: optional initial weights (``save_pretrained`` folder).
        loss_weighting: "tokens" = one MSE over every predicted element (fine scales weigh more), "scales" = the
            mean of the per-scale MSEs. The paper gives no reduction (E.4).
        data: the training data.
    """

    schedule: str = "sr-1024"
    vae: str | Mapping[str, Any] = "infinity-vae-d56"
    vae_weights: str | None = None
    transform_net: str | Mapping[str, Any] = "nsarm-8b"
    transform_net_weights: str | None = None
    loss_weighting: Literal["tokens", "scales"] = "tokens"
    data: DataSettings = field(default_factory=DataSettings)

    def __post_init__(self) -> None:
        if self.loss_weighting not in ("tokens", "scales"):
            raise ConfigError(
                f"stage.loss_weighting must be 'tokens' or 'scales', got {self.loss_weighting!r}"
            )

    @classmethod
    def from_stage(cls, stage: Mapping[str, Any]) -> Stage1Settings:
        """Build from ``TrainConfig.stage``; data keys sit at the same level (``hr_dirs``, ``scale``, ...)."""
        return settings_from_stage(cls, stage)


def model_geometry(model: str) -> dict[str, Any]:
    """The geometry one NSARM preset fixes, as stage settings: ``schedule``, ``vae``, ``transformer`` and
    ``transform_net``. ``stage.model: NAME`` in a training config stands for these keys, so the geometry is
    written once (``nsarm_core.models.nsarm.PRESETS``), not copied into every config.

    Raises:
        ConfigError: an unknown preset, or one whose schedule has no registered name.
    """
    config = get_nsarm_preset(model)
    if config.schedule.name not in SCHEDULES:
        raise ConfigError(
            f"NSARM preset {model!r} uses an unnamed scale schedule; it cannot be a stage.model"
        )
    return {
        "schedule": config.schedule.name,
        "vae": _preset_name(config.vae, VAE_PRESETS) or config.vae.to_dict(),
        "transformer": _preset_name(config.transformer, TRANSFORMER_PRESETS)
        or dataclasses.asdict(config.transformer),
        "transform_net": _preset_name(config.transform_net, NET_PRESETS) or config.transform_net.to_dict(),
    }


def _preset_name(config: object, presets: Mapping[str, object]) -> str | None:
    """The name of the preset equal to ``config`` (readable settings and logs), or None."""
    return next((name for name, preset in presets.items() if preset == config), None)


def settings_from_stage(cls: type, stage: Mapping[str, Any]) -> Any:
    """Build a stage-settings dataclass ``cls`` (with a ``data: DataSettings`` field) from ``TrainConfig.stage``.

    ``stage.model: NAME`` (an NSARM preset) supplies the geometry keys of :func:`model_geometry` that ``cls`` has;
    a key given explicitly wins.

    Raises:
        ConfigError: unknown keys (listing the valid ones) or values of the wrong kind.
    """
    own = {f.name for f in dataclasses.fields(cls)} - {"data"}
    stage = dict(stage)
    # A class with its own ``model`` field (the CFW stage's frozen model folder or name) keeps the key as is.
    model = stage.pop("model", None) if "model" not in own else None
    if model is not None:
        geometry = {k: v for k, v in model_geometry(str(model)).items() if k in own}
        # keys given next to stage.model (e.g. --set stage.schedule=...) win; check_geometry still checks the fit
        stage = {**geometry, **stage}
    data_keys = {f.name for f in dataclasses.fields(DataSettings)}
    unknown = sorted(set(stage) - own - data_keys)
    if unknown:
        raise ConfigError(
            f"unknown stage setting(s) {unknown}; valid: {sorted(own | data_keys | {'model'})} "
            "(set them with --set stage.KEY=VALUE)"
        )
    try:
        data = DataSettings(
            **convert_scalar_fields(DataSettings, {k: v for k, v in stage.items() if k in data_keys})
        )
        return cls(**convert_scalar_fields(cls, {k: v for k, v in stage.items() if k in own}), data=data)
    except TypeError as exc:
        raise ConfigError(f"invalid stage settings: {exc}") from exc


def load_frozen_vae(preset: str | Mapping[str, Any], weights: str | None) -> BSQVAE:
    """The VAE of a preset (or config mapping) with its weights (``save_pretrained`` folder or official file),
    frozen in eval mode."""
    if weights is not None and Path(weights).is_dir():
        vae = BSQVAE.from_pretrained(weights)
    else:
        vae = build_vae(preset if isinstance(preset, str) else VAEConfig.from_dict(preset))
        if weights is not None:
            load_official_vae_state_dict(vae, weights)
        else:
            logger.warning(
                "stage.vae_weights is not set: training against a RANDOM VAE (only meaningful in tests)"
            )
    vae.requires_grad_(False)
    return vae.eval()


def check_geometry(schedule: ScaleSchedule, vae: BSQVAE, net: TransformNet, scale: int) -> tuple[int, int]:
    """Validate that schedule, VAE, network and scale fit together; returns the HR pixel size.

    Raises:
        ConfigError: naming the mismatching numbers and what they must be.
    """
    px_h, px_w = schedule.pixel_size
    stride = vae.config.patch_size
    lr_latent = (px_h // scale // stride, px_w // scale // stride)
    if (px_h % (scale * stride)) or (px_w % (scale * stride)):
        raise ConfigError(f"HR size {px_h}x{px_w} must be divisible by scale x VAE stride = {scale * stride}")
    if lr_latent != net.config.latent_size:
        raise ConfigError(
            f"the LR latent of a {px_h}x{px_w} HR at x{scale} is {lr_latent}, but the transformation network "
            f"expects {net.config.latent_size}; pick a schedule/scale/preset that agree"
        )
    k_t = net.config.num_branches
    vae_grids = tuple(tuple(g) for g in schedule.vae_grids)
    if vae_grids[:k_t] != net.config.branch_grids:
        raise ConfigError(
            f"the network predicts grids {list(net.config.branch_grids)} but the schedule's first {k_t} VAE grids "
            f"are {list(vae_grids[:k_t])}"
        )
    if vae.config.codebook_dim != net.config.in_channels:
        raise ConfigError(
            f"VAE latent channels {vae.config.codebook_dim} != transformation-network channels {net.config.in_channels}"
        )
    return px_h, px_w


@torch.no_grad()
def encode_frozen(vae: BSQVAE, images: Tensor) -> Tensor:
    """Raw VAE latent ``[B, d, h, w]`` of ``images`` in [-1, 1], in float32 outside autocast (the official
    encoder runs in fp32, A.3)."""
    with torch.autocast(device_type=images.device.type, enabled=False):
        dtype = next(vae.parameters()).dtype
        return vae.encode_raw(images.to(dtype)).float()


class Stage1Recipe:
    """The stage-1 :class:`~nsarm_core.train.loop.Recipe`: MSE of the network's outputs to the HR residuals."""

    def __init__(self, settings: Stage1Settings, seed: int = 0) -> None:
        self.settings = settings
        self.seed = seed
        self.schedule = get_named_schedule(settings.schedule)
        self.pixel_size: tuple[int, int] | None = None
        self.net_config: TransformNetConfig | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Stage1Recipe:
        """Build from a :class:`TrainConfig` (its ``stage`` mapping and seed)."""
        return cls(Stage1Settings.from_stage(cfg.stage), seed=cfg.seed)

    def build_models(self) -> dict[str, nn.Module]:
        s = self.settings
        # Module initialisers read the global RNG: seed it so a rebuilt (resumed) run starts identically.
        torch.manual_seed(self.seed)
        vae = load_frozen_vae(s.vae, s.vae_weights)
        if s.transform_net_weights is not None:
            net = TransformNet.from_pretrained(s.transform_net_weights)
        else:
            tn = s.transform_net
            net = build_transform_net(tn if isinstance(tn, str) else TransformNetConfig.from_dict(tn))
        self.pixel_size = check_geometry(self.schedule, vae, net, s.data.scale)
        self.net_config = net.config
        return {"vae": vae, "transform_net": net}

    def trainable_parameters(self, models: Mapping[str, nn.Module]) -> list[dict[str, Any]]:
        return param_groups(models["transform_net"])

    def make_dataset(self) -> Dataset:
        assert self.pixel_size is not None, "build_models() runs first"
        return self.settings.data.make_dataset(self.pixel_size, self.seed)

    def compute_loss(
        self, models: Mapping[str, nn.Module], batch: Mapping[str, Any], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        assert self.net_config is not None, "build_models() runs first"
        vae, net = models["vae"], models["transform_net"]
        hr_latent = encode_frozen(vae, batch["hr"])  # [B, d, H, W]
        lr_latent = encode_frozen(vae, batch["lr"])  # [B, d, H/s, W/s]
        k_t = len(self.net_config.branch_grids)
        # Targets: continuous residuals r_k of the first K_t scales of the HR decomposition (Alg. 1, E.4).
        targets = decompose_into_residual_scales(hr_latent, self.schedule.vae_grids).residuals[:k_t]
        preds = outputs_to_latent_maps(net(lr_latent), self.net_config.branch_grids)  # raw reshape, E.2
        per_scale = [F.mse_loss(p.float(), t, reduction="sum") for p, t in zip(preds, targets, strict=True)]
        counts = [t.numel() for t in targets]
        if self.settings.loss_weighting == "tokens":
            loss = torch.stack(per_scale).sum() / sum(counts)
        else:
            loss = torch.stack([e / n for e, n in zip(per_scale, counts, strict=True)]).mean()
        metrics = {
            f"mse/scale_{k:02d}": float(e.detach()) / n
            for k, (e, n) in enumerate(zip(per_scale, counts, strict=True))
        }
        return loss, metrics

    def export(self, out_dir: Path, state_dicts: Mapping[str, dict[str, Tensor]]) -> None:
        assert self.net_config is not None, "build_models() runs first"
        net = TransformNet(self.net_config)
        net.load_state_dict({k: v.float() for k, v in state_dicts["transform_net"].items()})
        net.save_pretrained(out_dir / "transform_net")
        logger.info("exported the transformation network to %s", out_dir / "transform_net")

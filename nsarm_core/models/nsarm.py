"""The NSARM model: a bitwise next-scale transformer plus the transformation network, with their tokenizer.

Paper: NSARM (arXiv 2510.00820) Sec. 3. The official checkpoint ``NSARM.pth`` is one state dict holding the
Infinity-8B keys and the transformation network under the prefix ``map_transformer.`` (spec E.2, E.8):
8,375,791,824 + 385,103,600 = 8,760,895,424 parameters. This module describes the three networks together
(:class:`NSARMConfig`, with named presets), checks that their geometries agree, and loads/saves them.

Geometry (1:1 example, ``nsarm-8b``): LR 256x256 -> VAE (stride 8) latent 32x32 -> the transformation network
predicts the first K_t = 7 scales (VAE grids 2..32); the transformer continues scales 7..12 (VAE grids 40..128);
the decoder turns the 128x128 latent into the 1024x1024 HR image, so the upscaling factor is
``vae_grids[-1] / vae_grids[K_t - 1] = 4``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nsarm_core.errors import ConfigError, unknown_choice
from nsarm_core.models import checkpoint
from nsarm_core.models.cfw import CFW, CFWConfig
from nsarm_core.models.transform_net import TransformNet, TransformNetConfig
from nsarm_core.models.transform_net import get_preset as transform_net_preset
from nsarm_core.models.transform_net import load_official_state_dict as load_official_transform_net
from nsarm_core.models.transformer import InfinityTransformer, TransformerConfig
from nsarm_core.models.transformer import get_preset as transformer_preset
from nsarm_core.models.transformer import load_official_state_dict as load_official_transformer
from nsarm_core.models.vae import BSQVAE, VAEConfig, load_official_vae_state_dict
from nsarm_core.models.vae import get_preset as vae_preset
from nsarm_core.scales import ScaleSchedule, custom, get_named_schedule
from nsarm_core.speck_guard import SpeckGuardConfig
from nsarm_core.upscaler import STITCH_MODES

logger = logging.getLogger(__name__)

MAP_PREFIX = "map_transformer."
DEFAULT_PROMPT = "A high-definition image with harmonious colors and rich details."


@dataclass(frozen=True)
class NSARMConfig:
    """The three networks of an NSARM model and how they fit together.

    Attributes:
        name: preset or model name.
        vae: tokenizer config (its ``spatial_patchify`` must equal the transformer's and the schedule's).
        transformer: bitwise next-scale transformer config.
        transform_net: transformation network config; its branch grids are the first K_t VAE grids.
        schedule: the token grids of one native window (the last VAE grid x VAE stride = HR window size).
        text_encoder: Hugging Face id or path of the text encoder, or None for the "no text encoder" mode.
        next_input_mode: how the accumulated latent is resized to the next scale at inference ("area" in the
            released NSARM sampler, "bilinear" in Infinity; spec E.3).
        default_prompt: prompt used when the caller gives none (the paper's fixed-prompt arm).
        cfw: controllable feature wrapping of the decoder (``cfw.py``; our extension for small models), or None
            for the paper's model. Its ``default_fidelity`` is the ``w`` used when the caller gives none.
        stitch: how the windows of a larger image are put together when the caller does not say
            (``UpscaleSettings.stitch``): ``"pixel"`` (every window decoded and colour-fixed alone, the decoded
            windows blended; the paper's models) or ``"latent"`` (the windows' latents blended, the image latent
            decoded in large tiles: :mod:`nsarm_core.latent_stitch`).
        speck_guard: the speck guard run on every output by default (``nsarm_core/speck_guard.py``; our
            extension for small models), or None: off unless asked for, as for the paper's model.
    """

    name: str
    vae: VAEConfig
    transformer: TransformerConfig
    transform_net: TransformNetConfig
    schedule: ScaleSchedule
    text_encoder: str | None = None
    next_input_mode: str = "area"
    default_prompt: str = field(default=DEFAULT_PROMPT)
    cfw: CFWConfig | None = None
    stitch: str = "pixel"
    speck_guard: SpeckGuardConfig | None = None

    def __post_init__(self) -> None:
        problems = []
        v, t, m, s = self.vae, self.transformer, self.transform_net, self.schedule
        if not (v.spatial_patchify == t.patchify == s.patchify):
            problems.append(
                f"patchify differs: vae {v.spatial_patchify}, transformer {t.patchify}, schedule {s.patchify}"
            )
        if t.d_vae != v.token_dim:
            problems.append(f"transformer d_vae {t.d_vae} != VAE token dim {v.token_dim}")
        if m.in_channels != v.codebook_dim:
            problems.append(
                f"transformation net input channels {m.in_channels} != VAE channels {v.codebook_dim}"
            )
        k_t = len(m.branch_grids)
        if k_t >= s.num_scales:
            problems.append(
                f"the transformation net predicts {k_t} scales but the schedule has {s.num_scales}"
            )
        elif tuple(tuple(g) for g in m.branch_grids) != tuple(s.vae_grids[:k_t]):
            problems.append(
                f"transformation net branch grids {list(m.branch_grids)} != first {k_t} VAE grids {list(s.vae_grids[:k_t])}"
            )
        elif tuple(m.latent_size) != tuple(s.vae_grids[k_t - 1]):
            problems.append(
                f"transformation net input grid {tuple(m.latent_size)} != the VAE grid of scale K_t-1 "
                f"{tuple(s.vae_grids[k_t - 1])} (the LR latent)"
            )
        if t.use_text != (self.text_encoder is not None):
            problems.append(
                f"transformer use_text={t.use_text} but text_encoder={self.text_encoder!r}; "
                "a text encoder is needed exactly when the transformer uses text"
            )
        if self.next_input_mode not in ("area", "bilinear"):
            problems.append(f"next_input_mode must be 'area' or 'bilinear', got {self.next_input_mode!r}")
        if self.stitch not in STITCH_MODES:
            problems.append(f"stitch must be one of {', '.join(STITCH_MODES)}, got {self.stitch!r}")
        if problems:
            raise ConfigError(f"invalid NSARM config {self.name!r}: " + "; ".join(problems))
        lr_grid = s.vae_grids[k_t - 1]
        hr_grid = s.vae_grids[-1]
        if (
            hr_grid[0] % lr_grid[0]
            or hr_grid[1] % lr_grid[1]
            or hr_grid[0] // lr_grid[0] != hr_grid[1] // lr_grid[1]
        ):
            raise ConfigError(
                f"invalid NSARM config {self.name!r}: the final VAE grid {hr_grid} is not an integer multiple "
                f"of the LR latent grid {lr_grid}"
            )

    @property
    def num_transform_scales(self) -> int:
        """K_t: scales produced by the transformation network."""
        return len(self.transform_net.branch_grids)

    @property
    def scale(self) -> int:
        """Upscaling factor of one native window."""
        return self.schedule.vae_grids[-1][0] // self.schedule.vae_grids[self.num_transform_scales - 1][0]

    @property
    def lr_size(self) -> tuple[int, int]:
        """Native LR window ``(h, w)`` in pixels."""
        g = self.schedule.vae_grids[self.num_transform_scales - 1]
        return (g[0] * self.vae.patch_size, g[1] * self.vae.patch_size)

    @property
    def hr_size(self) -> tuple[int, int]:
        """Native HR window ``(H, W)`` in pixels."""
        g = self.schedule.vae_grids[-1]
        return (g[0] * self.vae.patch_size, g[1] * self.vae.patch_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON form written as ``config.json`` next to the weights."""
        return {
            "model_type": "nsarm",
            "name": self.name,
            "vae": self.vae.to_dict(),
            "transformer": _dataclass_dict(self.transformer),
            "transform_net": self.transform_net.to_dict(),
            "schedule": self.schedule.to_dict(),
            "text_encoder": self.text_encoder,
            "next_input_mode": self.next_input_mode,
            "default_prompt": self.default_prompt,
            # Written only when present, so the paper's models keep their config.json byte for byte.
            **({"cfw": self.cfw.to_dict()} if self.cfw is not None else {}),
            **({"stitch": self.stitch} if self.stitch != "pixel" else {}),
            **({"speck_guard": self.speck_guard.to_dict()} if self.speck_guard is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NSARMConfig:
        """Inverse of :meth:`to_dict`."""
        if data.get("model_type", "nsarm") != "nsarm":
            raise ConfigError(f"config describes a {data.get('model_type')!r} model, not an 'nsarm' model")
        try:
            return cls(
                name=str(data["name"]),
                vae=VAEConfig.from_dict(data["vae"]),
                transformer=TransformerConfig(**data["transformer"]),
                transform_net=TransformNetConfig.from_dict(data["transform_net"]),
                schedule=ScaleSchedule.from_dict(data["schedule"]),
                text_encoder=data.get("text_encoder"),
                next_input_mode=str(data.get("next_input_mode", "area")),
                default_prompt=str(data.get("default_prompt", DEFAULT_PROMPT)),
                cfw=CFWConfig.from_dict(data["cfw"]) if data.get("cfw") is not None else None,
                stitch=str(data.get("stitch", "pixel")),
                speck_guard=SpeckGuardConfig.from_dict(data["speck_guard"])
                if data.get("speck_guard") is not None
                else None,
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"NSARM config is missing or has a bad field: {exc}") from exc


def _dataclass_dict(obj: object) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)  # type: ignore[call-overload]


def _tiny_config() -> NSARMConfig:
    """Small NSARM geometry for tests: LR 64x64 -> HR 256x256 with the 0.06M prefix of the 1:1 schedule."""
    schedule = custom(
        [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)], patchify=True, name="tiny-256"
    )
    return NSARMConfig(
        name="tiny",
        vae=vae_preset("tiny-d14"),
        transformer=transformer_preset("tiny"),
        transform_net=replace(
            transform_net_preset("tiny"),
            in_channels=14,
            latent_size=(8, 8),
            branch_grids=((2, 2), (4, 4), (8, 8)),
        ),
        schedule=schedule,
        text_encoder=None,
    )


def _official_8b(transformer: TransformerConfig, name: str, text_encoder: str | None) -> NSARMConfig:
    return NSARMConfig(
        name=name,
        vae=vae_preset("infinity-vae-d56"),
        transformer=transformer,
        transform_net=transform_net_preset("nsarm-8b"),
        # the 1:1 template at 1M with patchify, under its registered name (the training configs use it)
        schedule=get_named_schedule("sr-1024"),
        text_encoder=text_encoder,
    )


PRESETS: dict[str, NSARMConfig] = {
    # The released model: Infinity-8B + its d56 VAE + Flan-T5-XL + the transformation network (spec E).
    "nsarm-8b": _official_8b(transformer_preset("infinity-8b"), "nsarm-8b", "google/flan-t5-xl"),
    # The geometry of ../shared/parity/nsarm_infer_tiny (tiny transformer, full-size VAE and map network).
    "nsarm-parity-tiny": _official_8b(
        transformer_preset("tiny-parity-patchify"), "nsarm-parity-tiny", "precomputed"
    ),
    "tiny": _tiny_config(),
    # The shipped CPU model (nsarm_core/assets/nsarm-tiny; docs/model_card.md): the tiny geometry with the
    # "nsarm-tiny" transformer and transformation network, trained by scripts/train_nsarm_tiny.sh.
    "nsarm-tiny": replace(
        _tiny_config(),
        name="nsarm-tiny",
        # our own model, not bound to official outputs: the decoder's fused F.silu (VAEConfig.fast_silu)
        vae=replace(_tiny_config().vae, fast_silu=True),
        transformer=transformer_preset("nsarm-tiny"),
        transform_net=transform_net_preset("nsarm-tiny"),
    ),
}


def get_preset(name: str) -> NSARMConfig:
    """The named :class:`NSARMConfig`; an unknown name raises ConfigError listing the valid ones."""
    if name not in PRESETS:
        raise unknown_choice("NSARM preset", name, sorted(PRESETS))
    return PRESETS[name]


class NSARM(nn.Module):
    """Tokenizer + transformation network + transformer (the text encoder is kept outside: it is optional and big).

    State-dict layout of our own checkpoints: ``vae.*``, ``transform_net.*``, ``transformer.*`` (official key
    names inside each part). :meth:`load_official` reads the official split: the NSARM checkpoint (transformer
    keys + ``map_transformer.*``) and the VAE checkpoint.
    """

    def __init__(self, config: NSARMConfig, *, init: bool = True) -> None:
        super().__init__()
        self.config = config
        self.vae = BSQVAE(config.vae)
        self.transform_net = TransformNet(config.transform_net)
        self.transformer = InfinityTransformer(config.transformer, init=init)
        # Optional: the LR-feature fusion into the decoder (our extension; absent from the paper's models).
        self.cfw = CFW(config.cfw, config.vae, config.scale) if config.cfw is not None else None

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part; ``total`` excludes the VAE, as the paper's Table 2 does (8,760 M for nsarm-8b)."""
        counts = {
            "vae": checkpoint.count_parameters(self.vae),
            "transform_net": checkpoint.count_parameters(self.transform_net),
            "transformer": checkpoint.count_parameters(self.transformer),
        }
        if self.cfw is not None:
            counts["cfw"] = checkpoint.count_parameters(self.cfw)
        counts["total"] = counts["transform_net"] + counts["transformer"]
        return counts

    def load_official(
        self, nsarm_state_dict: Mapping[str, Tensor], vae_state_dict: Mapping[str, Any] | None
    ) -> None:
        """Load the official checkpoints strictly: transformer + ``map_transformer.*`` keys, and the VAE."""
        map_sd = {k: v for k, v in nsarm_state_dict.items() if k.startswith(MAP_PREFIX)}
        if not map_sd:
            raise ConfigError(
                f"the NSARM checkpoint holds no '{MAP_PREFIX}*' keys: this is a plain Infinity checkpoint, not NSARM"
            )
        gpt_sd = {k: v for k, v in nsarm_state_dict.items() if not k.startswith(MAP_PREFIX)}
        load_official_transform_net(self.transform_net, map_sd, prefix=MAP_PREFIX)
        load_official_transformer(self.transformer, gpt_sd)
        if vae_state_dict is not None:
            load_official_vae_state_dict(self.vae, vae_state_dict, strict=True)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (all three parts) into ``directory``."""
        return checkpoint.save_folder(
            directory, self.state_dict(), _config_body(self.config), model_type="nsarm"
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        weights_file: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> NSARM:
        """Rebuild a model written by :meth:`save_pretrained` (strict load).

        Raises:
            WeightsNotFoundError: ``config.json`` or the weights are missing.
            InputError: the weights file is corrupt or truncated (the message names it).
            ConfigError: the config is invalid, or the weights do not fit it.
        """
        data, state = checkpoint.read_folder(
            directory, model_type="nsarm", weights_file=weights_file, writer="NSARM.save_pretrained"
        )
        model = cls(NSARMConfig.from_dict(data), init=False)
        checkpoint.check_state_dict(
            model.state_dict(),
            state,
            source=str(weights_file or Path(directory) / checkpoint.WEIGHTS_NAME),
            what=f"the NSARM model of {Path(directory) / checkpoint.CONFIG_NAME}",
        )
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()


def _config_body(config: NSARMConfig) -> dict[str, Any]:
    """``config.to_dict()`` without ``model_type``, which :func:`checkpoint.save_folder` writes itself."""
    body = config.to_dict()
    body.pop("model_type")
    return body

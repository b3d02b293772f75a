"""The CFW stage: fit controllable feature wrapping and the decoder on top of a frozen NSARM model.

Not a paper component of NSARM: our extension, docs/architecture.md E.11 (the stages: E.4).

Our extension of NSARM for small models (``nsarm_core.models.cfw``), trained as StableSR trains its CFW
(Wang et al. 2023, Sec. 3.3): the generator is frozen, and the decoder learns to turn *what the generator
actually samples* into the HR image, helped by the LR window's own features. Here the VAE encoder, the
transformation network and the transformer stay frozen; per training window

    z = sample(LR)                          the model's own latent: transformation net prefix + sampled scales
    x = Decoder(z, wrap = CFW(LR), w)       w drawn per sample in [0, 1], so every value of the knob trains
    L = |x - HR|_1 + lambda * L_G(D(x))     lambda: VQGAN's adaptive weight x ``gan_weight``, from ``gan_start``
    L_D = hinge(D(HR), D(x.detach()))       a PatchGAN trained from scratch alongside (``discriminator.py``)

Sampling the latent costs as much as a whole inference window, so the latents of ``cache_windows`` training
windows are sampled once and cached in the run folder (``latent_cache.safetensors``, rebuilt when its settings
change); each step then decodes a random ``crop`` of a cached window (the decoder is convolutional, and HR
crops aligned to the VAE stride have exact latent and LR crops). The LR windows come from a mixture of
degradation presets (realesrgan, light, bicubic by default), so clean inputs are not treated as noisy ones.

A fast decoder (``stage.decoder_shuffle``, docs/architecture.md E.12) is trained by the same stage: the frozen
model's own decoder and CFW become the *teacher*, and the student (the decoder with a pixel-shuffle output, and
its CFW module) starts from the teacher's weights wherever the shapes agree. ``stage.distill_weight`` adds

    L_distill = |x - Teacher(z, LR, w)|_1                 the same latent, LR and w as the student's

which teaches the student what the teacher draws where the HR cannot say (textures the GAN taught it).

Shape legend: cache windows HR ``[N, 3, S, S]``, LR ``[N, 3, S/s, S/s]`` (uint8) and latent ``[N, d, S/p, S/p]``;
training crops HR ``[B, 3, c, c]`` in [-1, 1], LR ``[B, 3, c/s, c/s]``, latent ``[B, d, c/p, c/p]``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from nsarm_core.errors import ConfigError
from nsarm_core.models.cfw import CFW, CFWConfig, check_fidelity, get_preset
from nsarm_core.models.discriminator import PatchDiscriminator, adaptive_weight, generator_loss, hinge_d_loss
from nsarm_core.models.nsarm import NSARM
from nsarm_core.models.vae import Decoder, VAEConfig
from nsarm_core.pipeline import SRPipeline, UpscaleSettings
from nsarm_core.speck_guard import SpeckGuardConfig
from nsarm_core.train.config import TrainConfig
from nsarm_core.train.loop import param_groups
from nsarm_core.train.stage1 import DataSettings, settings_from_stage

logger = logging.getLogger(__name__)

CACHE_NAME = "latent_cache.safetensors"


@dataclass(frozen=True)
class CFWSettings:
    """The CFW stage's settings (keys of ``stage:`` in the train config; data keys as in stage 1).

    Attributes:
        model: the frozen NSARM model: a registered name (``nsarm models``) or a model folder.
        weights: its weight file, for registered models that need one (``--weights`` of ``nsarm upscale``).
        cfw: CFW preset name ("tiny", "large") or a mapping of ``CFWConfig`` fields. A model that already has a
            CFW module continues from it and keeps its config.
        default_fidelity: the ``w`` written into the exported model's config (what ``--fidelity`` defaults to).
        speck_guard: write the default speck guard (``nsarm_core/speck_guard.py``) into the exported model's
            config, so ``nsarm upscale`` runs it unless ``--no-speck-guard``; false keeps the frozen model's.
        train_decoder: fine-tune the decoder too (StableSR does); otherwise only CFW trains.
        crop_size: HR crop side of a training step (a multiple of the VAE stride times the SR scale).
        cache_windows: native windows sampled into the latent cache.
        cache_batch: windows sampled at once while building the cache.
        tau, top_p: the sampling settings of the cached latents (the pipeline's defaults).
        fidelity_endpoints: probability that a sample's ``w`` is exactly 0 or 1 (half each); otherwise uniform.
        latent_noise: fraction of latent positions perturbed per sample with ``w > 0`` (see
            :func:`perturb_latent`): teaches the decoder to trust the LR over isolated wrongly sampled codes.
        decoder_shuffle: train a decoder with this pixel-shuffle output (``VAEConfig.decoder_shuffle``) in place of
            the frozen model's, starting from its weights; None or the model's own value continues the model's
            decoder.
        cfw_blocks: the CFW trunk depth of a student (``decoder_shuffle`` set); None keeps the model's. A shorter
            trunk starts from the teacher's first blocks.
        hr_weight: weight of ``|x - HR|_1``.
        distill_weight: weight of ``|x - Teacher(z, LR, w)|_1`` (0: no teacher); the teacher is the frozen
            model's own decoder and CFW module, or ``teacher``'s.
        gradient_weight: weight of ``|grad x - grad Teacher(z, LR, w)|_1`` (horizontal and vertical neighbour
            differences, per channel; needs ``distill_weight > 0``): aims at edges, where an L1 on the pixels
            leaves a student's 2-pixel staircases cheap (docs/model_card.md, "A faster decoder").
        teacher: a model (registered name or folder) whose decoder and CFW teach, for a student that continues
            its training (``model`` is then the student); its other parts must be ``model``'s.
        gan_weight: factor on the adaptive adversarial weight (0 disables the adversarial term).
        gan_start: first step with the adversarial term on the generator (the discriminator trains from step 0).
        disc_channels, disc_layers: PatchGAN width and depth.
        disc_lr_scale: the discriminator's learning rate relative to ``lr``.
        data: where the training photos come from (``hr_dirs``, ``degradation`` mixture, ``scale``, ...).
    """

    model: str = "nsarm-tiny"
    weights: str | None = None
    cfw: str | Mapping[str, Any] = "tiny"
    default_fidelity: float = 0.5
    speck_guard: bool = False
    train_decoder: bool = True
    crop_size: int = 128
    cache_windows: int = 2048
    cache_batch: int = 16
    tau: float = 0.5
    top_p: float = 0.97
    fidelity_endpoints: float = 0.3
    latent_noise: float = 0.0
    decoder_shuffle: int | None = None
    cfw_blocks: int | None = None
    hr_weight: float = 1.0
    distill_weight: float = 0.0
    gradient_weight: float = 0.0
    teacher: str | None = None
    gan_weight: float = 0.1
    gan_start: int = 500
    disc_channels: int = 64
    disc_layers: int = 3
    disc_lr_scale: float = 1.0
    data: DataSettings = field(default_factory=DataSettings)

    def __post_init__(self) -> None:
        check_fidelity(self.default_fidelity, "stage.default_fidelity")
        if not 0.0 <= self.fidelity_endpoints <= 1.0:
            raise ConfigError(f"stage.fidelity_endpoints must be in [0, 1], got {self.fidelity_endpoints}")
        if not 0.0 <= self.latent_noise <= 1.0:
            raise ConfigError(f"stage.latent_noise must be in [0, 1], got {self.latent_noise}")
        for name in ("crop_size", "cache_windows", "cache_batch", "disc_channels", "disc_layers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"stage.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.hr_weight < 0 or self.distill_weight < 0 or self.hr_weight + self.distill_weight <= 0:
            raise ConfigError(
                "stage.hr_weight and stage.distill_weight must be >= 0 and not both 0, got "
                f"{self.hr_weight}, {self.distill_weight}"
            )
        if self.gradient_weight < 0 or (self.gradient_weight > 0 and self.distill_weight <= 0):
            raise ConfigError(
                "stage.gradient_weight compares image gradients with the teacher's: it must be >= 0, and > 0 only "
                f"with stage.distill_weight > 0 (got {self.gradient_weight}, {self.distill_weight})"
            )
        if self.teacher is not None and self.distill_weight <= 0:
            raise ConfigError("stage.teacher is only used for distillation: set stage.distill_weight > 0 too")
        if self.cfw_blocks is not None and self.decoder_shuffle is None:
            raise ConfigError(
                "stage.cfw_blocks only applies to a student decoder: set stage.decoder_shuffle too"
            )
        if self.cfw_blocks is not None and int(self.cfw_blocks) < 1:
            raise ConfigError(f"stage.cfw_blocks must be a positive integer, got {self.cfw_blocks!r}")
        if self.gan_weight < 0 or self.gan_start < 0 or self.disc_lr_scale <= 0:
            raise ConfigError(
                "stage.gan_weight and stage.gan_start must be >= 0 and stage.disc_lr_scale > 0, got "
                f"{self.gan_weight}, {self.gan_start}, {self.disc_lr_scale}"
            )
        if not self.data.hr_dirs:
            raise ConfigError("the CFW stage degrades HR photos on the fly: set stage.hr_dirs")
        # stage.cfw is checked now, not after the frozen model has been loaded and sampled
        if isinstance(self.cfw, str):
            get_preset(self.cfw)
        elif isinstance(self.cfw, Mapping):
            CFWConfig.from_dict(self.cfw)
        else:
            raise ConfigError(
                f"stage.cfw must be a CFW preset name or a mapping of its fields, got {self.cfw!r}"
            )

    @classmethod
    def from_stage(cls, stage: Mapping[str, Any]) -> CFWSettings:
        return settings_from_stage(cls, stage)


def draw_fidelity(batch: int, generator: torch.Generator, endpoints: float) -> Tensor:
    """One ``w`` per sample: 0 or 1 with probability ``endpoints / 2`` each, else uniform in [0, 1]."""
    u = torch.rand(batch, generator=generator)
    pick = torch.rand(batch, generator=generator)
    w = torch.where(pick < endpoints / 2, torch.zeros_like(u), u)
    return torch.where((pick >= endpoints / 2) & (pick < endpoints), torch.ones_like(u), w)


def perturb_latent(latent: Tensor, fidelity: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """``latent`` with a random ``fraction`` of its positions replaced by noise, in samples with ``w > 0``.

    Why: at inference the sampler occasionally picks a wrong code at a fine scale (``tau`` < 1 makes it rare,
    not impossible), and the decoder turns each into an isolated speck a few pixels wide. Perturbed positions
    (Gaussian noise with the latent's own per-channel spread, added on top) have no counterpart in the HR
    target, so the decoder learns to follow the LR features there. Samples with ``w = 0`` keep the sampled
    latent untouched: without CFW the decoder has nothing else to follow (the paper's path).
    """
    if fraction <= 0.0:
        return latent
    b, c, h, w = latent.shape
    mask = torch.rand(b, 1, h, w, generator=generator).to(latent.device) < fraction
    mask = mask & (fidelity.view(b, 1, 1, 1) > 0)
    spread = latent.detach().float().std(dim=(0, 2, 3), keepdim=True).to(latent.dtype)
    noise = torch.randn(latent.shape, generator=generator).to(latent.device, latent.dtype) * spread
    return torch.where(mask, latent + noise, latent)


def gradient_l1(x: Tensor, target: Tensor) -> Tensor:
    """Mean ``|d x - d target|`` over the horizontal and vertical neighbour differences of ``[B, C, H, W]`` images
    (``stage.gradient_weight``)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


class DecoderWithCFW(nn.Module):
    """The trainable generator of this stage: ``Decoder(latent, wrap=CFW(lr), w)`` as one module (for DDP)."""

    def __init__(self, decoder: Decoder, cfw: CFW) -> None:
        super().__init__()
        self.decoder = decoder
        self.cfw = cfw

    def forward(self, latent: Tensor, lr: Tensor, fidelity: Tensor) -> Tensor:
        return self.decoder(latent, self.cfw.wrap(lr, fidelity))


# ----------------------------------------------------------------------------------------------------------
# The latent cache
# ----------------------------------------------------------------------------------------------------------


def _to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 levels (the LR is already quantised to 1/255 by the degradation)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def build_latent_cache(
    pipe: SRPipeline, settings: CFWSettings, window: tuple[int, int], seed: int
) -> dict[str, Tensor]:
    """Sample the latents of ``settings.cache_windows`` degraded training windows with the frozen model.

    Returns ``{"hr", "lr"}`` (uint8) and ``"latent"`` (float32); deterministic in ``seed``.
    """
    data = settings.data
    dataset = data.make_dataset(window, seed)
    dataset.sharpened_target = False  # the decoder learns the plain HR (fidelity metrics compare to it)
    n = settings.cache_windows
    hr_out, lr_out, z_out = [], [], []
    sampling = UpscaleSettings(tau=settings.tau, top_p=settings.top_p)
    order = [(e, i) for e in range(math.ceil(n / len(dataset))) for i in range(len(dataset))][:n]
    generator = torch.Generator(device=pipe.device)
    for start in range(0, n, settings.cache_batch):
        samples = []
        for epoch, index in order[start : start + settings.cache_batch]:
            dataset.set_epoch(epoch)
            samples.append(dataset[index])
        lr = torch.stack([s["lr"] for s in samples])
        generator.manual_seed(seed * 1_000_003 + start)
        z = pipe.sample_latent((lr + 1) / 2, generator=generator, settings=sampling)
        hr_out.append(_to_uint8(torch.stack([s["hr"] for s in samples])))
        lr_out.append(_to_uint8(lr))
        z_out.append(z.float().cpu())
        logger.info("latent cache: %d / %d windows sampled", min(start + settings.cache_batch, n), n)
    return {"hr": torch.cat(hr_out), "lr": torch.cat(lr_out), "latent": torch.cat(z_out)}


def cache_key(settings: CFWSettings, model_config: Mapping[str, Any], seed: int, model_sha: str) -> str:
    """What the cache depends on, hashed: the model and weights, the data and the sampling settings."""
    blob = json.dumps(
        {
            "model": dict(model_config),
            "weights_sha256": model_sha,
            "data": asdict(settings.data),
            "windows": settings.cache_windows,
            "tau": settings.tau,
            "top_p": settings.top_p,
            "seed": seed,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def state_fingerprint(module: nn.Module, skip: tuple[str, ...] = ()) -> str:
    """A cheap identity of a model's weights: every tensor's name, shape and first/last 4096 values, hashed.

    Cheap enough for an 8 B-parameter model (a full hash would read 35 GB); two trainings of the same model
    differ in every tensor, so they never collide in practice.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if name.startswith(skip):
            continue
        flat = t.detach().reshape(-1)
        head, tail = flat[:4096], flat[-4096:]
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(head.float().cpu().numpy().tobytes())
        h.update(tail.float().cpu().numpy().tobytes())
    return h.hexdigest()


class CachedWindows(Dataset):
    """Random aligned crops of the cached windows (HR, LR and latent cut at the same place).

    Args:
        cache: ``{"hr", "lr", "latent"}`` as built by :func:`build_latent_cache`.
        crop: HR crop side; a multiple of ``stride * scale`` (VAE stride ``stride``, SR factor ``scale``).
        stride: VAE stride.
        scale: SR factor.
        seed: base seed; sample ``i`` of epoch ``e`` crops with ``numpy.random.default_rng([seed, e, i])``.
    """

    def __init__(self, cache: Mapping[str, Tensor], crop: int, stride: int, scale: int, seed: int) -> None:
        size = int(cache["hr"].shape[-1])
        step = math.lcm(stride, scale)
        if crop % stride or crop % scale or crop > size:
            raise ConfigError(
                f"stage.crop_size {crop} must be a multiple of the VAE stride {stride} and the scale {scale}, "
                f"and at most the window {size}"
            )
        self.cache, self.crop, self.stride, self.scale, self.step = cache, crop, stride, scale, step
        self.seed, self.epoch = int(seed), 0
        self.positions = (size - crop) // step + 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.cache["hr"].shape[0])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        y, x = (int(v) * self.step for v in rng.integers(0, self.positions, size=2))
        c, p, s = self.crop, self.stride, self.scale
        hr = self.cache["hr"][index, :, y : y + c, x : x + c]
        lr = self.cache["lr"][index, :, y // s : (y + c) // s, x // s : (x + c) // s]
        z = self.cache["latent"][index, :, y // p : (y + c) // p, x // p : (x + c) // p]
        return {
            "hr": hr.float() / 127.5 - 1.0,
            "lr": lr.float() / 127.5 - 1.0,
            "latent": z.clone(),
        }


# ----------------------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------------------


class CFWRecipe:
    """The CFW :class:`~nsarm_core.train.loop.Recipe` (see the module docstring)."""

    def __init__(
        self, settings: CFWSettings, seed: int = 0, run_dir: str | Path = "runs/cfw", lr: float = 1e-4
    ) -> None:
        self.settings = settings
        self.seed = seed
        self.lr = float(lr)
        self.run_dir = Path(run_dir)
        self.step = 0
        self.base: NSARM | None = None
        self.pipe: SRPipeline | None = None
        self.cfw_config: CFWConfig | None = None
        self.vae_config: VAEConfig | None = None
        self.teacher: DecoderWithCFW | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> CFWRecipe:
        return cls(CFWSettings.from_stage(cfg.stage), seed=cfg.seed, run_dir=cfg.run_dir, lr=cfg.lr)

    def set_step(self, step: int) -> None:
        """Called by the loop before each optimizer step (the adversarial term starts at ``gan_start``)."""
        self.step = int(step)

    def build_models(self) -> dict[str, nn.Module]:
        s = self.settings
        torch.manual_seed(self.seed)
        self.pipe = SRPipeline.from_pretrained(s.model, weights=s.weights, device="cpu", dtype="fp32")
        base = self.pipe.model
        if base.config.scale != s.data.scale:
            raise ConfigError(
                f"stage.scale {s.data.scale} differs from model {base.config.name!r}'s x{base.config.scale}"
            )
        base.requires_grad_(False)
        self.base = base
        self.vae_config = base.config.vae
        if s.decoder_shuffle is not None or s.distill_weight > 0:
            if base.cfw is None:
                raise ConfigError(
                    f"stage.decoder_shuffle and stage.distill_weight need a teacher with CFW; {s.model!r} has none "
                    "(train its CFW first: the cfw_tiny config)"
                )
            # The teacher: the frozen model's own decoder and CFW (or stage.teacher's), never trained here (not
            # returned below).
            source = base
            if s.teacher is not None:
                source = SRPipeline.from_pretrained(s.teacher, device="cpu", dtype="fp32").model
                skip = ("vae.decoder.", "cfw.")
                if source.cfw is None or state_fingerprint(source, skip) != state_fingerprint(base, skip):
                    raise ConfigError(
                        f"stage.teacher {s.teacher!r} must be {s.model!r} with another decoder and a CFW module: "
                        "its encoder, transformation network and transformer differ (or it has no CFW)"
                    )
            assert source.cfw is not None
            self.teacher = DecoderWithCFW(copy.deepcopy(source.vae.decoder), copy.deepcopy(source.cfw)).eval()
            self.teacher.requires_grad_(False)
        if s.decoder_shuffle is not None and s.decoder_shuffle != base.config.vae.decoder_shuffle:
            assert base.cfw is not None
            self.vae_config = replace(base.config.vae, decoder_shuffle=int(s.decoder_shuffle))
            self.cfw_config = base.cfw.config
            if s.cfw_blocks is not None:
                self.cfw_config = replace(self.cfw_config, num_blocks=int(s.cfw_blocks))
            decoder = Decoder(self.vae_config)
            cfw = CFW(self.cfw_config, self.vae_config, base.config.scale)
            fresh = init_student(decoder, base.vae.decoder) + init_student(cfw, base.cfw)
            logger.info(
                "student decoder (decoder_shuffle %d, CFW trunk %d blocks) from the teacher's weights; new: %s",
                self.vae_config.decoder_shuffle,
                self.cfw_config.num_blocks,
                ", ".join(fresh) or "none",
            )
        elif base.cfw is not None:
            if s.cfw_blocks is not None and s.cfw_blocks != base.cfw.config.num_blocks:
                raise ConfigError(
                    f"stage.cfw_blocks {s.cfw_blocks} differs from the CFW trunk of {s.model!r} "
                    f"({base.cfw.config.num_blocks} blocks), whose training this continues; drop stage.cfw_blocks"
                )
            decoder, cfw, self.cfw_config = base.vae.decoder, base.cfw, base.cfw.config
            logger.info("continuing from the CFW module of %s", s.model)
        else:
            self.cfw_config = get_preset(s.cfw) if isinstance(s.cfw, str) else CFWConfig.from_dict(s.cfw)
            decoder, cfw = base.vae.decoder, CFW(self.cfw_config, base.config.vae, base.config.scale)
        cfw.requires_grad_(True)
        decoder.requires_grad_(s.train_decoder or s.decoder_shuffle is not None)
        generator = DecoderWithCFW(decoder, cfw)
        disc = PatchDiscriminator(s.disc_channels, s.disc_layers)
        return {"generator": generator, "disc": disc}

    def trainable_parameters(self, models: Mapping[str, nn.Module]) -> list[dict[str, Any]]:
        disc_groups = param_groups(models["disc"])
        for g in disc_groups:
            # VQGAN's discriminator betas; the learning rate follows the run's schedule, scaled.
            g["lr"] = self.lr * self.settings.disc_lr_scale
            g["betas"] = (0.5, 0.9)
        groups = param_groups(models["generator"]) + disc_groups
        return groups

    def make_dataset(self) -> Dataset:
        assert self.pipe is not None and self.base is not None, "build_models() runs first"
        from accelerate import PartialState
        from safetensors.torch import load_file, save_file

        s, cfg = self.settings, self.base.config
        key = cache_key(
            s, cfg.to_dict(), self.seed, state_fingerprint(self.base, skip=("vae.decoder.", "cfw."))
        )
        path = self.run_dir / CACHE_NAME
        state = PartialState()
        with state.main_process_first():  # the main process samples and writes; the others read its file
            cache = None
            if path.is_file():
                from safetensors import SafetensorError, safe_open

                try:
                    with safe_open(str(path), "pt") as f:
                        same = (f.metadata() or {}).get("key") == key
                    cache = load_file(str(path)) if same else None
                except (SafetensorError, OSError) as exc:  # a damaged cache is only a cost: sample it again
                    same = True
                    logger.warning("latent cache: cannot read %s (%s); sampling it again", path, exc)
                if cache is not None:
                    logger.info("latent cache: reusing %s (%d windows)", path, cache["hr"].shape[0])
                elif not same:
                    logger.info("latent cache: %s was made with other settings; sampling it again", path)
            if cache is None:
                device = next(self.base.vae.decoder.parameters()).device
                self.pipe.model.to(device)
                self.pipe.device = device
                cache = build_latent_cache(self.pipe, s, cfg.hr_size, self.seed)
                if state.is_main_process:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{path.name}.tmp")
                    save_file({k: v.contiguous() for k, v in cache.items()}, str(tmp), metadata={"key": key})
                    tmp.replace(path)
        # Only the decoder is needed from here on; the frozen transformer and transformation net stay on the CPU.
        self.base.transformer.to("cpu")
        self.base.transform_net.to("cpu")
        return CachedWindows(cache, s.crop_size, cfg.vae.patch_size, cfg.scale, self.seed)

    def compute_loss(
        self, models: Mapping[str, nn.Module], batch: Mapping[str, Any], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        s = self.settings
        gen, disc = models["generator"], models["disc"]
        hr, lr, latent = batch["hr"], batch["lr"], batch["latent"]
        w = draw_fidelity(int(hr.shape[0]), generator, s.fidelity_endpoints).to(hr.device)
        latent = perturb_latent(latent, w, s.latent_noise, generator)
        fake = gen(latent, lr, w)
        l1 = F.l1_loss(fake.float(), hr.float())
        rec = s.hr_weight * l1
        metrics: dict[str, float] = {"l1": float(l1.detach())}
        if s.distill_weight > 0:
            assert self.teacher is not None, "build_models() makes the teacher"
            self.teacher.to(fake.device)
            with torch.no_grad():
                target = self.teacher(latent, lr, w)
            distill = F.l1_loss(fake.float(), target.float())
            rec = rec + s.distill_weight * distill
            metrics["distill"] = float(distill.detach())
            if s.gradient_weight > 0:
                grad = gradient_l1(fake.float(), target.float())
                rec = rec + s.gradient_weight * grad
                metrics["gradient"] = float(grad.detach())
        loss = rec

        use_gan = s.gan_weight > 0 and self.step >= s.gan_start
        if use_gan:
            # The generator's adversarial term through a discriminator that does not learn from it.
            disc.requires_grad_(False)
            g_loss = generator_loss(disc(fake.float()))
            disc.requires_grad_(True)
            last = _unwrap(gen).decoder.conv_out.conv.weight
            if last.requires_grad:
                lam = adaptive_weight(rec, g_loss, last) * s.gan_weight
            else:
                lam = torch.tensor(s.gan_weight, device=rec.device)
            loss = loss + lam * g_loss
            metrics.update({"g_loss": float(g_loss.detach()), "gan_lambda": float(lam)})

        if s.gan_weight > 0:
            logits_real = disc(hr.float())
            logits_fake = disc(fake.detach().float())
            d_loss = hinge_d_loss(logits_real, logits_fake)
            loss = loss + d_loss
            metrics.update(
                {
                    "d_loss": float(d_loss.detach()),
                    "d_real": float(logits_real.detach().mean()),
                    "d_fake": float(logits_fake.detach().mean()),
                }
            )
        return loss, metrics

    def export(self, out_dir: Path, state_dicts: Mapping[str, dict[str, Tensor]]) -> None:
        assert self.base is not None and self.cfw_config is not None, "build_models() runs first"
        assert self.vae_config is not None
        cfw_config = replace(self.cfw_config, default_fidelity=self.settings.default_fidelity)
        config = replace(self.base.config, vae=self.vae_config, cfw=cfw_config)
        if self.settings.speck_guard:
            config = replace(config, speck_guard=SpeckGuardConfig())
        model = NSARM(config, init=False)
        # The decoder and CFW come from the generator (a student's shapes differ from the frozen model's).
        state = {
            k: v for k, v in self.base.state_dict().items() if not k.startswith(("cfw.", "vae.decoder."))
        }
        for k, v in state_dicts["generator"].items():
            if k.startswith("decoder."):
                state[f"vae.{k}"] = v.float()
            else:  # "cfw.*"
                state[k] = v.float()
        model.load_state_dict(state, strict=True)
        model.save_pretrained(out_dir / "model")
        logger.info("exported the model with CFW to %s", out_dir / "model")


def init_student(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Copy the teacher's tensors into the student wherever name and shape agree; returns the names left new.

    One exception gets a better start than random: a pixel-shuffle output convolution with ``s^2`` times the
    teacher's output channels repeats each teacher filter ``s^2`` times, so the student first draws the
    teacher's output at its coarser grid, each value repeated over an ``s x s`` block.
    """
    source = teacher.state_dict()
    target = student.state_dict()
    fresh = []
    for name, tensor in target.items():
        value = source.get(name)
        if value is not None and value.shape == tensor.shape:
            tensor.copy_(value)
        elif (
            value is not None
            and name.startswith("conv_out.")
            and tensor.shape[1:] == value.shape[1:]
            and tensor.shape[0] % value.shape[0] == 0
        ):
            tensor.copy_(value.repeat_interleave(tensor.shape[0] // value.shape[0], dim=0))
        else:
            fresh.append(name)
    return fresh


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP/FSDP wrapper (``module.module``), or the module itself."""
    return getattr(module, "module", module)

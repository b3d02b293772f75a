"""Assemble trained parts into one NSARM model folder that ``nsarm upscale --model DIR`` loads.

Paper: NSARM (arXiv 2510.00820) Sec. 3 (the model = tokenizer + transformation network + transformer); spec
docs/architecture.md E.4 (the two training stages). Training writes each part on its own:

    tokenizer run   final/vae/             BSQVAE.save_pretrained            (nsarm train-tokenizer)
    stage-1 run     final/transform_net/   TransformNet.save_pretrained      (nsarm train-stage1, Eq. 4)
    stage-2 run     final/transformer/     config.json + model.safetensors   (nsarm train-stage2, Alg. 2)
                    final/transform_net/   when stage 2 also trained it (train_transform_net: true)

:func:`export_nsarm_model` reads the stage-2 run's ``config.yaml`` for the geometry (scale schedule, VAE and
the weights it trained against), takes the newest transformation network (stage 2's, else stage 1's), builds the
:class:`~nsarm_core.models.nsarm.NSARMConfig` (which checks that the parts fit) and writes
``NSARM.save_pretrained`` (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from nsarm_core.errors import InputError, WeightsNotFoundError
from nsarm_core.models.nsarm import DEFAULT_PROMPT, NSARM, NSARMConfig
from nsarm_core.models.transform_net import TransformNet
from nsarm_core.models.transformer import InfinityTransformer
from nsarm_core.scales import get_named_schedule
from nsarm_core.train.config import load_config
from nsarm_core.train.stage1 import load_frozen_vae
from nsarm_core.train.stage2 import Stage2Settings

logger = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
"""Where ``nsarm train-stage2`` writes the assembled model: ``run_dir/final/model``."""


def _find_part(path: str | Path, part: str) -> Path | None:
    """The folder of ``part`` (holding ``config.json``) given the part folder itself, a run's ``final/`` folder
    or a run folder; ``None`` when none of them holds it."""
    p = Path(path)
    for candidate in (p / "final" / part, p / part, p):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    return None


def _load_run_stage(run_dir: Path) -> dict:
    """The ``stage:`` mapping of a run's ``config.yaml``."""

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise InputError(f"{run_dir} is not a training run folder: {cfg_path} is missing")
    return dict(load_config(cfg_path).stage)


def export_nsarm_model(
    stage2_run: str | Path,
    out_dir: str | Path,
    *,
    tokenizer: str | Path | None = None,
    stage1: str | Path | None = None,
    name: str | None = None,
    next_input_mode: str = "area",
    default_prompt: str = DEFAULT_PROMPT,
) -> Path:
    """Write an NSARM model folder from a finished stage-2 run (plus the tokenizer and stage-1 outputs).

    Args:
        stage2_run: the stage-2 run folder (``config.yaml`` + ``final/transformer``).
        out_dir: the model folder to write (``config.json`` + ``model.safetensors``).
        tokenizer: the trained VAE: a ``BSQVAE.save_pretrained`` folder, a tokenizer run folder or its
            ``final/``; or an official VAE file. Default: the stage-2 run's ``stage.vae_weights``.
        stage1: the transformation network when stage 2 did not train it: a ``TransformNet`` folder or a
            stage-1 run. Default: the stage-2 run's ``stage.transform_net_weights``.
        name: model name stored in the config (default: the output folder's name).
        next_input_mode: how the sampler resizes the accumulated latent ("area" = the released NSARM sampler).
        default_prompt: the prompt used when none is given.

    Returns:
        ``out_dir``.

    Raises:
        InputError: a missing run folder or part.
        WeightsNotFoundError: the VAE weights cannot be found (a random VAE would give a useless model).
        ConfigError: parts whose geometries do not fit (from :class:`NSARMConfig`).
    """

    run = Path(stage2_run)
    settings = Stage2Settings.from_stage(_load_run_stage(run))
    gpt_dir = _find_part(run, "transformer")
    if gpt_dir is None:
        raise InputError(
            f"{run} holds no trained transformer (final/transformer); finish `nsarm train-stage2` first"
        )

    # Tokenizer: the folder/file given, else the one stage 2 trained against.
    vae_source = tokenizer if tokenizer is not None else settings.vae_weights
    if vae_source is None:
        raise WeightsNotFoundError(
            f"the stage-2 run {run} trained against a random VAE (stage.vae_weights is null) and no --tokenizer "
            "was given; pass the trained tokenizer folder (e.g. runs/tokenizer/final/vae)"
        )
    vae_path = Path(vae_source)
    vae_dir = _find_part(vae_path, "vae") if vae_path.is_dir() else None
    if vae_path.is_dir() and vae_dir is None:
        raise WeightsNotFoundError(f"{vae_path} holds no trained VAE (config.json + model.safetensors)")
    if not vae_path.exists():
        raise WeightsNotFoundError(f"tokenizer weights {vae_path} do not exist")
    vae = load_frozen_vae(settings.vae, str(vae_dir if vae_dir is not None else vae_path))

    # Transformation network: stage 2's when it trained one, else stage 1's.
    net_dir = _find_part(run, "transform_net")
    if net_dir is None:
        net_source = stage1 if stage1 is not None else settings.transform_net_weights
        net_dir = _find_part(net_source, "transform_net") if net_source is not None else None
        if net_dir is None:
            raise InputError(
                f"no trained transformation network: {run}/final/transform_net is missing and the stage-1 output "
                f"({net_source}) holds none; pass --stage1 RUN_OR_FOLDER"
            )
    net = TransformNet.from_pretrained(net_dir)

    transformer = InfinityTransformer.from_pretrained(gpt_dir)
    transformer_config = transformer.config
    text_encoder = settings.text_encoder if transformer_config.use_text else None
    out = Path(out_dir)
    config = NSARMConfig(
        name=name or out.name,
        vae=vae.config,
        transformer=transformer_config,
        transform_net=net.config,
        schedule=get_named_schedule(settings.schedule),
        text_encoder=text_encoder,
        next_input_mode=next_input_mode,
        default_prompt=default_prompt,
    )
    model = NSARM(config, init=False)
    model.vae.load_state_dict(vae.state_dict())
    model.transform_net.load_state_dict(net.state_dict())
    model.transformer.load_state_dict(transformer.state_dict())
    model.save_pretrained(out)
    logger.info(
        "exported NSARM model %r to %s (VAE %s, transformation net %s, transformer %s)",
        config.name,
        out,
        vae_dir or vae_path,
        net_dir,
        gpt_dir,
    )
    return out

"""Running one training stage: find its config, pick its recipe, train, and assemble the model after stage 2.

Not a paper component; the stages are docs/architecture.md E.4. This is what the ``nsarm train-*`` commands
call, so the command module only parses options and prints: a YAML config (a path, or the name of a shipped
config such as ``stage1_tiny``) plus ``KEY=VALUE`` overrides -> :func:`build_config`; the recipe of the stage
-> :func:`run_stage`, which trains through :func:`nsarm_core.train.loop.train` and, after stage 2 with a trained
tokenizer, writes the upscale-ready model folder ``final/model``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nsarm_core.errors import ConfigError, did_you_mean, unknown_choice
from nsarm_core.train.cfw import CFWRecipe
from nsarm_core.train.config import TrainConfig, load_config
from nsarm_core.train.export import MODEL_SUBDIR, export_nsarm_model
from nsarm_core.train.loop import train
from nsarm_core.train.stage1 import Stage1Recipe
from nsarm_core.train.stage2 import Stage2Recipe
from nsarm_core.train.tokenizer import TokenizerRecipe

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CONFIGS",
    "STAGE_NAMES",
    "shipped_config_dir",
    "resolve_config",
    "build_config",
    "run_stage",
]

DEFAULT_CONFIGS = {
    "tokenizer": "tokenizer_tiny",
    "base": "base_tiny",
    "stage1": "stage1_tiny",
    "stage2": "stage2_tiny",
    "cfw": "cfw_tiny",
}
"""Stage -> the shipped config used when no config is given."""

STAGE_NAMES = tuple(DEFAULT_CONFIGS)


def shipped_config_dir() -> Path:
    """Folder of the shipped training configs (``nsarm_core/train/configs``)."""
    return Path(__file__).resolve().parent / "configs"


def resolve_config(value: str | None, stage: str) -> Path:
    """A config path: an existing file, or the name of a shipped config (with or without .yaml); None: the
    stage's default.

    Raises:
        ConfigError: neither a file nor a shipped name; the message lists the shipped names.
    """
    shipped = {p.stem: p for p in sorted(shipped_config_dir().glob("*.yaml"))}
    if value is None:
        return shipped[DEFAULT_CONFIGS[stage]]
    path = Path(value)
    if path.is_file():
        return path
    key = path.name.removesuffix(".yaml")
    if key in shipped and len(path.parts) == 1:
        return shipped[key]
    raise ConfigError(
        f"--config {value}: no such file and not a shipped config.{did_you_mean(key, shipped)} "
        f"Shipped: {', '.join(shipped)}"
    )


def build_config(
    stage: str,
    config: str | None,
    overrides: Sequence[str] = (),
    *,
    run_dir: Path | None = None,
    resume: str | None = None,
    max_steps: int | None = None,
    progress: bool = True,
) -> TrainConfig:
    """The stage's :class:`TrainConfig`: the file, then ``overrides``, then the explicit arguments (which win)."""
    extra = list(overrides)
    if run_dir is not None:
        extra.append(f"run_dir={run_dir}")
    if max_steps is not None:
        extra.append(f"max_steps={max_steps}")
    if resume is not None:
        extra.append(f"resume={resume}")
    if not progress:
        extra.append("progress=false")
    return load_config(resolve_config(config, stage), extra)


def _recipe(stage: str, cfg: TrainConfig) -> Any:
    if stage == "tokenizer":
        return TokenizerRecipe.from_config(cfg)
    if stage == "stage1":
        return Stage1Recipe.from_config(cfg)
    if stage == "cfw":
        return CFWRecipe.from_config(cfg)
    if stage == "base" and cfg.stage.get("transform_net", "missing") is not None:
        raise ConfigError(
            "train-base trains the transformer alone: its config needs `stage.transform_net: null` "
            "(use train-stage2 for the NSARM fine-tune)"
        )
    # stage 2, and base pretraining (stage 2's recipe without a transformation network)
    return Stage2Recipe.from_config(cfg)


def _is_main_process() -> bool:
    from accelerate.state import PartialState

    return bool(PartialState().is_main_process)


def run_stage(stage: str, cfg: TrainConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Train ``stage`` (``tokenizer``, ``base``, ``stage1``, ``stage2`` or ``cfw``) with ``cfg``; returns the run
    summary.

    The summary holds the steps, losses and folders of the run, ``psnr`` (the tokenizer's held-out
    reconstruction PSNR) for the tokenizer, ``model_dir`` (the assembled model) for stage 2 and CFW, and
    ``main``: whether this is the main process (only it should report). ``overwrite`` replaces a previous run in
    the run folder (:func:`nsarm_core.train.loop.check_run_dir`).

    Raises:
        ConfigError: an unknown stage, a base-pretraining config with a transformation network, or a run folder
            holding a previous run without ``resume`` or ``overwrite``.
    """
    if stage not in DEFAULT_CONFIGS:
        raise unknown_choice("training stage", stage, STAGE_NAMES)
    recipe = _recipe(stage, cfg)
    result = train(recipe, cfg, overwrite=overwrite)
    main = _is_main_process()
    summary: dict[str, Any] = {
        "stage": stage,
        "run_dir": str(result.run_dir),
        "start_step": result.start_step,
        "step": result.step,
        "max_steps": cfg.max_steps,
        "last_loss": result.losses[-1] if result.losses else None,
        "losses": result.losses,
        "metrics": result.last_metrics,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "final_dir": str(result.final_dir) if result.final_dir else None,
        "seconds": round(result.seconds, 3),
        "main": main,
    }
    if stage == "tokenizer":
        summary["psnr"] = recipe.val_psnr
    if stage == "stage2":
        summary["model_dir"] = None
        if result.final_dir is not None and main:
            summary["model_dir"] = _assemble_model(cfg, result.run_dir, result.final_dir)
    if stage == "cfw":  # CFWRecipe.export writes the whole model (frozen NSARM + CFW + tuned decoder)
        summary["model_dir"] = str(result.final_dir / MODEL_SUBDIR) if result.final_dir is not None else None
    return summary


def _assemble_model(cfg: TrainConfig, run_dir: Path, final_dir: Path) -> str | None:
    """After stage 2: the upscale-ready model folder, when there is a transformation network and a trained VAE."""
    if cfg.stage.get("transform_net", "missing") is None:
        return None  # base pretraining through train-stage2: a transformer only, nothing to assemble
    if cfg.stage.get("vae_weights") is None:
        logger.warning(
            "stage.vae_weights is not set (random VAE): no upscale-ready model was assembled; run "
            "`nsarm export-model RUN OUT --tokenizer VAE_FOLDER` with the trained tokenizer"
        )
        return None
    return str(export_nsarm_model(run_dir, final_dir / MODEL_SUBDIR))

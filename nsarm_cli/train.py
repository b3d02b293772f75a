"""``nsarm train-tokenizer``, ``train-base``, ``train-stage1``, ``train-stage2``, ``export-model``: training.

Thin wrappers over ``nsarm_core.train`` (spec docs/architecture.md E.4): a YAML config (a path, or the
name of a shipped config such as ``stage1_tiny``), ``--set key=value`` overrides (``--set stage.KEY=VALUE`` for
stage settings), then the accelerate loop. Multi-GPU runs go through ``accelerate launch``::

    accelerate launch --config_file nsarm_core/train/accelerate_configs/fsdp_8b.yaml \\
        -m nsarm_cli.main train-stage2 --config stage2_nsarm

A run folder holds ``config.yaml``, ``metrics.csv``, ``checkpoints/step_XXXXXX`` and ``final/``; stage 2 also
assembles ``final/model`` (the folder ``nsarm upscale --model`` loads) when its tokenizer weights are known.
torch is imported inside the commands so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nsarm_cli._console import STATE, info, print_json, warn
from nsarm_core.errors import ConfigError, did_you_mean

STAGES = {
    "tokenizer": "tokenizer_tiny",
    "base": "base_tiny",
    "stage1": "stage1_tiny",
    "stage2": "stage2_tiny",
}
"""Stage -> the shipped config used when ``--config`` is not given."""

ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file, or the name of a shipped one (tokenizer_tiny, base_tiny, stage1_tiny, "
        "stage2_tiny, stage1_nsarm, stage2_nsarm). Default: the stage's *_tiny config.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override KEY=VALUE (repeatable); stage settings as stage.KEY=VALUE."),
]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="Run folder (overrides run_dir).")]
ResumeOpt = Annotated[
    str | None,
    typer.Option("--resume", help="'latest' (newest checkpoint of the run folder) or a checkpoint folder."),
]
MaxStepsOpt = Annotated[
    int | None, typer.Option("--max-steps", help="Optimizer steps (overrides max_steps).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the run summary as JSON on stdout.")]


def shipped_config_dir() -> Path:
    """Folder of the shipped training configs (``nsarm_core/train/configs``)."""
    import nsarm_core.train

    return Path(nsarm_core.train.__file__).parent / "configs"


def resolve_config(value: str | None, stage: str) -> Path:
    """A config path from ``--config``: an existing file, or the name of a shipped config (with or without .yaml).

    Raises:
        ConfigError: neither a file nor a shipped name; the message lists the shipped names.
    """
    shipped = {p.stem: p for p in sorted(shipped_config_dir().glob("*.yaml"))}
    if value is None:
        return shipped[STAGES[stage]]
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


def _build_config(
    stage: str,
    config: str | None,
    overrides: list[str] | None,
    run_dir: Path | None,
    resume: str | None,
    max_steps: int | None,
) -> Any:
    from nsarm_core.train.config import load_config

    extra = list(overrides or [])
    # Explicit flags win over the file and over --set.
    if run_dir is not None:
        extra.append(f"run_dir={run_dir}")
    if max_steps is not None:
        extra.append(f"max_steps={max_steps}")
    if resume is not None:
        extra.append(f"resume={resume}")
    if STATE.verbosity < 0:
        extra.append("progress=false")
    return load_config(resolve_config(config, stage), extra)


def _summary(stage: str, cfg: Any, result: Any) -> dict[str, Any]:
    return {
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
    }


def _is_main_process() -> bool:
    from accelerate.state import PartialState

    return bool(PartialState().is_main_process)


def _report(summary: dict[str, Any], json_out: bool) -> None:
    if not _is_main_process():
        return
    if json_out:
        print_json(summary)
        return
    loss = summary["last_loss"]
    info(
        f"{summary['stage']}: steps {summary['start_step']} -> {summary['step']} of {summary['max_steps']}"
        + (f", last loss {loss:.5g}" if loss is not None else "")
        + f", {summary['seconds']:.1f} s; run folder {summary['run_dir']}"
    )
    for key in ("final_dir", "psnr", "model_dir"):
        if summary.get(key) is not None:
            info(f"  {key}: {summary[key]}")


def _train(stage: str, cfg: Any) -> tuple[Any, Any]:
    from nsarm_core.train.loop import train

    if stage == "tokenizer":
        from nsarm_core.train.tokenizer import TokenizerRecipe

        recipe: Any = TokenizerRecipe.from_config(cfg)
    elif stage == "stage1":
        from nsarm_core.train.stage1 import Stage1Recipe

        recipe = Stage1Recipe.from_config(cfg)
    else:  # stage 2, and base pretraining (stage 2's recipe without a transformation network)
        from nsarm_core.train.stage2 import Stage2Recipe

        if stage == "base" and cfg.stage.get("transform_net", "missing") is not None:
            raise ConfigError(
                "train-base trains the transformer alone: its config needs `stage.transform_net: null` "
                "(use train-stage2 for the NSARM fine-tune)"
            )
        recipe = Stage2Recipe.from_config(cfg)
    return recipe, train(recipe, cfg)


def train_tokenizer(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    run_dir: RunDirOpt = None,
    resume: ResumeOpt = None,
    max_steps: MaxStepsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a BSQ-VAE tokenizer (L1 + L2 through the multi-scale BSQ, commitment, optional entropy/edge terms).

    Writes RUN/final/vae (BSQVAE.save_pretrained) and, with stage.val_dir, the held-out reconstruction PSNR to
    RUN/final/reconstruction.json.
    """
    cfg = _build_config("tokenizer", config, overrides, run_dir, resume, max_steps)
    recipe, result = _train("tokenizer", cfg)
    summary = _summary("tokenizer", cfg, result)
    summary["psnr"] = recipe.val_psnr
    _report(summary, json_out)


def train_base(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    run_dir: RunDirOpt = None,
    resume: ResumeOpt = None,
    max_steps: MaxStepsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Pretrain the base next-scale transformer (Infinity's bitwise CE on the HR scales, no LR condition).

    The starting point of stage 2 and the transformer of the stage-1-only ablation when no released base model
    exists (our small models). Writes RUN/final/transformer.
    """
    cfg = _build_config("base", config, overrides, run_dir, resume, max_steps)
    _, result = _train("base", cfg)
    _report(_summary("base", cfg, result), json_out)


def train_stage1(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    run_dir: RunDirOpt = None,
    resume: ResumeOpt = None,
    max_steps: MaxStepsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stage 1 (paper Eq. 4): train the transformation network on the MSE to the HR residuals; VAE frozen.

    Writes RUN/final/transform_net.
    """
    cfg = _build_config("stage1", config, overrides, run_dir, resume, max_steps)
    _, result = _train("stage1", cfg)
    _report(_summary("stage1", cfg, result), json_out)


def train_stage2(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    run_dir: RunDirOpt = None,
    resume: ResumeOpt = None,
    max_steps: MaxStepsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stage 2 (paper Alg. 2): bitwise CE on the modified GT labels, transformer (+ transformation net) trained.

    Writes RUN/final/transformer (+ transform_net) and, when stage.vae_weights is set, the assembled model
    RUN/final/model that `nsarm upscale --model RUN/final/model` loads.
    """
    cfg = _build_config("stage2", config, overrides, run_dir, resume, max_steps)
    _, result = _train("stage2", cfg)
    summary = _summary("stage2", cfg, result)
    summary["model_dir"] = None
    if result.final_dir is not None and _is_main_process():
        if cfg.stage.get("transform_net", "missing") is None:
            pass  # base pretraining through train-stage2: a transformer only, nothing to assemble
        elif cfg.stage.get("vae_weights") is None:
            warn(
                "stage.vae_weights is not set (random VAE): no upscale-ready model was assembled; run "
                "`nsarm export-model RUN OUT --tokenizer VAE_FOLDER` with the trained tokenizer"
            )
        else:
            from nsarm_core.train.export import MODEL_SUBDIR, export_nsarm_model

            out = export_nsarm_model(result.run_dir, result.final_dir / MODEL_SUBDIR)
            summary["model_dir"] = str(out)
    _report(summary, json_out)


def export_model(
    stage2_run: Annotated[Path, typer.Argument(help="Finished stage-2 run folder (config.yaml + final/).")],
    out_dir: Annotated[Path, typer.Argument(help="Model folder to write (config.json + model.safetensors).")],
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer", help="Trained VAE folder or tokenizer run (default: the run's stage.vae_weights)."
        ),
    ] = None,
    stage1: Annotated[
        Path | None,
        typer.Option(
            "--stage1",
            help="Transformation network folder or stage-1 run, used when stage 2 did not train it "
            "(default: the run's stage.transform_net_weights).",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: OUT_DIR's name).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Assemble a tokenizer, a transformation network and a stage-2 transformer into one NSARM model folder.

    The result loads with `nsarm upscale --model OUT_DIR`.
    """
    from nsarm_core.train.export import export_nsarm_model

    out = export_nsarm_model(stage2_run, out_dir, tokenizer=tokenizer, stage1=stage1, name=name)
    if json_out:
        print_json({"model_dir": str(out)})
    else:
        info(f"exported the NSARM model to {out}")

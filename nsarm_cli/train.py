"""``nsarm train-tokenizer``, ``train-base``, ``train-stage1``, ``train-stage2``, ``train-cfw``, ``export-model``: training.

Thin wrappers over :mod:`nsarm_core.train.run` (spec docs/architecture.md E.4): a YAML config (a path, or
the name of a shipped config such as ``stage1_tiny``), ``--set key=value`` overrides (``--set stage.KEY=VALUE``
for stage settings), then the accelerate loop. Multi-GPU runs go through ``accelerate launch``::

    accelerate launch --config_file nsarm_core/train/accelerate_configs/fsdp_8b.yaml \\
        -m nsarm_cli.main train-stage2 --config stage2_nsarm

A run folder holds ``config.yaml``, ``metrics.csv``, ``checkpoints/step_XXXXXX`` and ``final/``; stage 2 also
assembles ``final/model`` (the folder ``nsarm upscale --model`` loads) when its tokenizer weights are known.
torch is imported inside the commands so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from nsarm_cli._console import STATE, info, print_json

ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file, or the name of a shipped one (tokenizer_tiny, base_tiny, stage1_tiny, "
        "stage2_tiny, cfw_tiny, cfw_tiny_ft, cfw_tiny_fast, stage1_nsarm, stage2_nsarm). "
        "Default: the stage's *_tiny config.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a setting (repeatable); stage settings as stage.KEY=VALUE.",
    ),
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
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace a previous run in the run folder (otherwise it is refused)."),
]


def _report(summary: dict[str, Any], json_out: bool) -> None:
    if not summary["main"]:
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


def _stage_command(stage: str, doc: str) -> Callable[..., None]:
    """The command of one training stage: every stage takes the same options and runs
    :func:`nsarm_core.train.run.run_stage`; only the stage name and the help (``doc``) differ."""

    def command(
        config: ConfigOpt = None,
        overrides: SetOpt = None,
        run_dir: RunDirOpt = None,
        resume: ResumeOpt = None,
        max_steps: MaxStepsOpt = None,
        overwrite: OverwriteOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        from nsarm_core.train.run import build_config, run_stage

        cfg = build_config(
            stage, config, overrides or [], run_dir=run_dir, resume=resume, max_steps=max_steps,
            progress=STATE.verbosity >= 0,
        )  # fmt: skip
        _report(run_stage(stage, cfg, overwrite=overwrite), json_out)

    command.__name__ = command.__qualname__ = f"train_{stage}"
    command.__doc__ = doc
    return command


train_tokenizer = _stage_command(
    "tokenizer",
    """Train a BSQ-VAE tokenizer (L1 + L2 through the multi-scale BSQ, commitment, optional entropy/edge terms).

    Writes RUN/final/vae (BSQVAE.save_pretrained) and, with stage.val_dir, the held-out reconstruction PSNR to
    RUN/final/reconstruction.json.
    """,
)
train_base = _stage_command(
    "base",
    """Pretrain the base next-scale transformer (Infinity's bitwise CE on the HR scales, no LR condition).

    The starting point of stage 2 and the transformer of the stage-1-only ablation when no released base model
    exists (our small models). Writes RUN/final/transformer.
    """,
)
train_stage1 = _stage_command(
    "stage1",
    """Stage 1 (paper Eq. 4): train the transformation network on the MSE to the HR residuals; VAE frozen.

    Writes RUN/final/transform_net.
    """,
)
train_stage2 = _stage_command(
    "stage2",
    """Stage 2 (paper Alg. 2): bitwise CE on the modified GT labels, transformer (+ transformation net) trained.

    Writes RUN/final/transformer (+ transform_net) and, when stage.vae_weights is set, the assembled model
    RUN/final/model that `nsarm upscale --model RUN/final/model` loads.
    """,
)
train_cfw = _stage_command(
    "cfw",
    """Fit controllable feature wrapping (CFW) and the decoder on top of a frozen NSARM model (stage.model).

    The model's own sampled latents of degraded training windows are cached in the run folder; the decoder and
    CFW learn L1 + an adversarial loss against a PatchGAN trained from scratch, with the fidelity w drawn per
    sample. With stage.decoder_shuffle it trains a faster decoder (pixel-shuffle output) from the model's own
    decoder and CFW, distilled with stage.distill_weight (and stage.gradient_weight on image gradients; config
    cfw_tiny_fast). Writes RUN/final/model, which `nsarm upscale --model RUN/final/model --fidelity W` loads.
    """,
)


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

"""Entry point of the ``nsarm`` command.

Global options go before or after the command: ``nsarm [-v|-q] [--debug] COMMAND ...`` or
``nsarm COMMAND ... --debug``. Library errors (``NSARMError``) become one red line on stderr and exit code 2; ``--debug`` shows the
traceback instead. Nothing here imports torch, so ``nsarm --help`` starts fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from nsarm_cli._console import STATE, configure_logging
from nsarm_cli._group import NsarmGroup, hoist_global_flags  # noqa: F401 - hoist_global_flags: tests use it here
from nsarm_cli.caption import caption
from nsarm_cli.degrade import degrade
from nsarm_cli.evaluate import evaluate
from nsarm_cli.models import models_app
from nsarm_cli.robustness import RobustnessCommand, robustness
from nsarm_cli.train import (
    export_model,
    train_base,
    train_cfw,
    train_stage1,
    train_stage2,
    train_tokenizer,
)
from nsarm_cli.upscale import upscale
from nsarm_core import __version__

app = typer.Typer(
    cls=NsarmGroup,
    name="nsarm",
    help="Robust real-world image super-resolution by next-scale autoregressive modeling (NSARM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"nsarm {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors; no progress bars.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    STATE.verbosity = -1 if quiet else min(verbose, 2)
    STATE.debug = debug
    if debug:
        STATE.verbosity = max(STATE.verbosity, 2)
    configure_logging(STATE.verbosity)


# --- commands, in the order `nsarm --help` lists them (command modules import torch lazily) ---
app.command("upscale")(upscale)
app.command("degrade")(degrade)
app.command("caption")(caption)
app.command("train-tokenizer")(train_tokenizer)
app.command("train-base")(train_base)
app.command("train-stage1")(train_stage1)
app.command("train-stage2")(train_stage2)
app.command("train-cfw")(train_cfw)
app.command("export-model")(export_model)
app.command("evaluate")(evaluate)
app.command("robustness", cls=RobustnessCommand)(robustness)
app.add_typer(models_app, name="models")  # `nsarm models` lists, `nsarm models fetch NAME` gets
# --- end commands ---


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

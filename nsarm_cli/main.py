"""Entry point of the ``nsarm`` command.

Global options come before the subcommand: ``nsarm [-v|-q] [--debug] COMMAND ...``.
Library errors (``NSARMError``) become one red line on stderr and exit code 2; ``--debug`` shows the
traceback instead. Nothing here imports torch, so ``nsarm --help`` starts fast.
"""

from __future__ import annotations

from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from nsarm_cli._console import STATE, configure_logging, err_console
from nsarm_core import __version__
from nsarm_core.errors import NSARMError


class _UserError(click.ClickException):
    """An NSARMError shown the CLI way: one red line, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: ARG002 - click's signature
        err_console.print(f"[bold red]Error:[/bold red] {self.message}", highlight=False, soft_wrap=True)


class _InternalError(click.ClickException):
    """An unexpected exception (a bug): one line plus a hint to rerun with --debug."""

    exit_code = 1

    def show(self, file=None) -> None:  # noqa: ARG002
        err_console.print(
            f"[bold red]Internal error:[/bold red] {self.message} (rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )


class _Group(TyperGroup):
    """Typer group that turns library errors into clean CLI errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NSARMError as exc:
            if STATE.debug:
                raise
            raise _UserError(" ".join(str(exc).split())) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - last-resort handler for bugs
            if STATE.debug:
                raise
            raise _InternalError(f"{type(exc).__name__}: {exc}") from exc


app = typer.Typer(
    cls=_Group,
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
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors; no progress bars.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    STATE.verbosity = -1 if quiet else min(verbose, 2)
    STATE.debug = debug
    if debug:
        STATE.verbosity = max(STATE.verbosity, 2)
    configure_logging(STATE.verbosity)


# --- commands (one registration line per command module; modules import torch lazily) ---
# --- end commands ---


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

"""Entry point of the ``nsarm`` command.

Global options go before or after the command: ``nsarm [-v|-q] [--debug] COMMAND ...`` or
``nsarm COMMAND ... --debug``. Library errors (``NSARMError``) become one red line on stderr and exit code 2; ``--debug`` shows the
traceback instead. Nothing here imports torch, so ``nsarm --help`` starts fast.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperGroup

from nsarm_cli._console import STATE, configure_logging, err_console
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
from nsarm_core.errors import NSARMError

# Exceptions that carry the CLI's own control flow (usage errors, --help, Exit) pass through untouched.
_PASSTHROUGH: tuple[type[BaseException], ...] = (
    typer.TyperException,
    typer.Exit,
    typer.Abort,
    KeyboardInterrupt,
    SystemExit,
)


def _one_line(text: object) -> str:
    """The message on one line, with Rich markup escaped (so `nsarm[eval]` is printed as written)."""
    from rich.markup import escape

    return escape(" ".join(str(text).split()))


#: The global options (all flags, none takes a value), accepted after the command too (``nsarm upscale x.png -q``).
_GLOBAL_FLAGS = re.compile(r"^(--verbose|--quiet|--debug|-q|-v+)$")


def hoist_global_flags(args: list[str]) -> list[str]:
    """``args`` with the global flags that follow the command moved before it (click only parses them there).

    Everything from a ``--`` on is left alone (``nsarm upscale -- -q.png``). No command declares these flags
    itself (tests/test_cli_conventions.py checks it), so moving them never steals a command's own option; an
    option *value* that looks like one (``--prompt -q``) would be moved, which no option of ours expects.
    """
    command = next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))
    end = args.index("--") if "--" in args[command:] else len(args)
    hoisted = [a for a in args[command:end] if _GLOBAL_FLAGS.match(a)]
    if not hoisted:
        return args
    rest = [a for a in args[command:end] if not _GLOBAL_FLAGS.match(a)]
    return args[:command] + hoisted + rest + args[end:]


class _Argument(TyperArgument):
    """A positional argument shown as click shows it: ``INPUTS...`` in the usage line and no type column."""

    def _usage_display_name(self) -> str:
        return self.display_name_raw if self.required else f"[{self.display_name_raw}]"

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def _reflow(text: str | None) -> str | None:
    """Docstring paragraphs joined into single lines, so the help wraps them at the terminal's width."""
    if not text:
        return text
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _tidy_help(commands: Iterable[Any]) -> None:
    """Help that reads like a well-kept click tool: flags show no ``<bool>`` type, a list argument is shown
    as ``INPUTS...`` (not ``{inputs}...`` / ``<list[str]>``), and docstrings wrap at the terminal's width
    instead of at their source line breaks."""
    for command in commands:
        command.help = _reflow(command.help)
        for param in command.params:
            if isinstance(param, TyperArgument):
                param.__class__ = _Argument  # a subclass that only changes how it is displayed
                if param.metavar is None:
                    param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
            elif getattr(param, "is_flag", False) or getattr(param, "count", False):
                param.metavar = ""  # no type column for flags and counters (-v)
        command.get_help_option = _flag_help_option(command.get_help_option)
        _tidy_help(getattr(command, "commands", {}).values())


def _flag_help_option(get_help_option: Any) -> Any:
    """``-h/--help`` is made by click on first use; show it like the other flags, with no type column."""

    def wrapped(ctx: Any) -> Any:
        option = get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    return wrapped


class _Group(TyperGroup):
    """Typer group that turns library errors into one red line and exit code 2 (1 for bugs), accepts the
    global flags after the command, and tidies every command's help (:func:`_tidy_help`)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.help = _reflow(self.help)
        _tidy_help([self])  # the group's own options (-v, -q, --debug, ...)
        _tidy_help(self.commands.values())

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        return super().parse_args(ctx, hoist_global_flags(list(args)))

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except NSARMError as exc:
            if STATE.debug:
                raise
            err_console.print(
                f"[bold red]Error:[/bold red] {_one_line(exc)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from exc
        except _PASSTHROUGH:
            raise
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # `nsarm ... | head`: let Typer close quietly
                raise
            if STATE.debug:
                raise
            err_console.print(
                f"[bold red]Error:[/bold red] {_one_line(exc)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from exc
        except Exception as exc:  # noqa: BLE001 - last-resort handler for bugs
            if STATE.debug:
                raise
            err_console.print(
                f"[bold red]Internal error:[/bold red] {type(exc).__name__}: {_one_line(exc)} "
                "(rerun with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from exc


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

"""The ``nsarm`` command group: one red line and exit code 2 for library errors, global flags accepted after the
command, and help that reads like a well-kept click tool. Nothing here imports torch.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup

from nsarm_cli._console import STATE, err_console
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


class NsarmGroup(TyperGroup):
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

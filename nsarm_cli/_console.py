"""Shared console, logging set-up, progress bars and JSON output for the CLI.

Diagnostics and progress go to stderr so that stdout stays machine-readable (``--json``).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

err_console = Console(stderr=True)
out_console = Console()

#: Layout width for a stream that is not a terminal: wide enough that tables take their natural width (no
#: truncated file names) while nothing is padded to it (tables are not expanded, plain logs are used).
PIPE_WIDTH = 10_000


@dataclass
class GlobalState:
    """The global options (``nsarm -v --debug upscale ...``, or after the command: ``nsarm upscale ... -v``)."""

    verbosity: int = 0  # -1 quiet, 0 normal, 1 info, 2 debug
    debug: bool = False


STATE = GlobalState()


def fit_consoles_to_streams() -> None:
    """Terminals get Rich's layout at the window width; pipes and files get lines that are never wrapped and
    tables whose cells are never cut (``truncated.png`` and ``truncated.jpg`` must stay apart in a log).

    Called once per command, since the streams are only known then (tests swap them).
    """
    for console in (err_console, out_console):
        piped = not console.is_terminal
        console.soft_wrap = piped
        console.width = PIPE_WIDTH if piped else None  # type: ignore[assignment]  # None: ask the terminal


def configure_logging(verbosity: int) -> None:
    """Route the library's ``logging`` records to stderr: a Rich handler on a terminal, plain lines otherwise."""
    from rich.logging import RichHandler

    fit_consoles_to_streams()
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    root = logging.getLogger("nsarm_core")
    root.handlers.clear()
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, show_time=verbosity >= 2, markup=False)
    else:
        # Rich's log layout pads every line to the console width; a pipe gets "LEVEL    message" lines instead.
        handler = logging.StreamHandler(sys.stderr)
        time = "%(asctime)s " if verbosity >= 2 else ""
        handler.setFormatter(logging.Formatter(f"{time}%(levelname)-8s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


class _Progress(Progress):
    """rich's Progress, minus the empty line its ``stop`` writes on a non-terminal stderr when the bar never drew
    anything there (never started, or transient): an error that ends a run before or during the bar must reach a
    log or a pipe as its one line."""

    def stop(self) -> None:
        drew = self.live.is_started and not self.live.transient
        if self.disable or drew or self.console.is_interactive or self.console.is_jupyter:
            super().stop()
        else:
            self.live.stop()


def progress(transient: bool = False) -> Progress:
    """A rich progress bar with count, elapsed time and ETA, drawn on stderr (disabled by -q)."""
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err_console,
        transient=transient,
        disable=STATE.verbosity < 0,
    )


def print_json(data: Any) -> None:
    """Write one JSON document to stdout (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    """A human-readable line on stderr unless -q was given."""
    if STATE.verbosity >= 0:
        err_console.print(message)


def warn(message: str) -> None:
    """A warning line on stderr (shown even with -q)."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

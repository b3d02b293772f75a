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


@dataclass
class GlobalState:
    """Options given before the subcommand (``nsarm -v --debug upscale ...``)."""

    verbosity: int = 0  # -1 quiet, 0 normal, 1 info, 2 debug
    debug: bool = False


STATE = GlobalState()


def configure_logging(verbosity: int) -> None:
    """Route the library's ``logging`` records to a Rich handler on stderr."""
    from rich.logging import RichHandler

    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    root = logging.getLogger("nsarm_core")
    root.handlers.clear()
    handler = RichHandler(console=err_console, show_path=False, show_time=verbosity >= 2, markup=False)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def progress(transient: bool = False) -> Progress:
    """A rich progress bar with count, elapsed time and ETA, drawn on stderr (disabled by -q)."""
    return Progress(
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

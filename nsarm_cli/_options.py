"""Option types shared by several commands, so one flag reads and behaves the same everywhere.

Each is an ``Annotated`` type for a Typer parameter: ``json_out: JsonOut = False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOut = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")
]
"""``--json``: machine-readable output on stdout (messages and progress stay on stderr)."""

MetricDevice = Annotated[str, typer.Option("--device", help="Device for pyiqa metrics (cpu, cuda, cuda:1).")]
"""``--device`` of the commands that score images."""

HRFolder = Annotated[Path | None, typer.Option("--hr", help="Folder of HR reference images.")]
"""``--hr``: the HR references (full-reference metrics; the images a robustness sweep degrades)."""

Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Redo outputs that already exist (else skipped).")
]
"""``--overwrite``: batches skip existing outputs unless it is given (an interrupted run is resumed)."""

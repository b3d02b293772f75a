"""Option types shared by several commands, so one flag reads and behaves the same everywhere.

Each is an ``Annotated`` type for a Typer parameter: ``json_out: JsonOut = False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

JsonOut = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")
]
"""``--json``: machine-readable output on stdout (messages and progress stay on stderr)."""


def _check_device(value: str | None) -> str | None:
    """Refuse an unknown device, or one this machine lacks, while the options are parsed (one line, exit 2)."""
    if value is None:
        return None
    from nsarm_core.devices import check_device

    return check_device(value)


def device_option(help: str) -> Any:
    """``--device`` with the one check every command shares: auto, cpu, cuda, cuda:N or mps, and present here.

    The check runs while the options are parsed, before any work (torch is imported only for cuda and mps).
    Used as ``device: Annotated[str, device_option("...")] = "cpu"``.
    """
    return typer.Option("--device", help=help, callback=_check_device)


MetricDevice = Annotated[str, device_option("Device for pyiqa metrics (cpu, cuda, cuda:1).")]
"""``--device`` of the commands that score images."""

Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch (default: $OMP_NUM_THREADS if set, else the cores this process may use). "
        "On a machine busy with other work fewer threads can be much faster: 1 thread ran 3-5x faster than 2 "
        "on a 2-core machine with one core taken.",
    ),
]
"""``--threads``: torch's intra-op threads, set before any work (:func:`nsarm_core.devices.set_torch_threads`)."""

HRFolder = Annotated[Path | None, typer.Option("--hr", help="Folder of HR reference images.")]
"""``--hr``: the HR references (full-reference metrics; the images a robustness sweep degrades)."""

Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Redo outputs that already exist (else skipped).")
]
"""``--overwrite``: batches skip existing outputs unless it is given (an interrupted run is resumed)."""

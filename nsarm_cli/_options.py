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

# --- the options of a model run (``load_upscaler``'s arguments): one declaration for every command that loads a
# model, so a flag reads and checks the same wherever it appears ---

ModelWeights = Annotated[Path | None, typer.Option("--weights", help="Local checkpoint file.")]
VaeWeights = Annotated[Path | None, typer.Option("--vae-weights", help="Local VAE weights file.")]
TextEncoder = Annotated[
    Path | None, typer.Option("--text-encoder", help="Local text-encoder folder or file.")
]
Tau = Annotated[float, typer.Option("--tau", help="Sampling temperature.")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling threshold in (0, 1].")]
Cfg = Annotated[float, typer.Option("--cfg", help="Classifier-free guidance scale (1: none).")]
ColorFix = Annotated[str, typer.Option("--color-fix", help="Colour correction: none|adain|wavelet|both.")]
Fidelity = Annotated[
    float | None,
    typer.Option(
        "--fidelity",
        help="Fidelity-realism knob w in [0, 1] of models with CFW: 0 = NSARM's generative output, "
        "1 = most faithful to the input (default: the model's own, 0.75 for nsarm-tiny).",
    ),
]
SpeckGuard = Annotated[
    bool | None,
    typer.Option(
        "--speck-guard/--no-speck-guard",
        help="Paint isolated specks the input does not explain over with its bicubic (NSARM models; default: "
        "the model's own, on for nsarm-tiny, off for the paper's nsarm-8b).",
    ),
]
Tile = Annotated[
    int,
    typer.Option(
        "--tile",
        min=0,
        help="Tile side in input pixels; 0: no extra tiling. realesrgan-x4plus: its window side (Real-ESRGAN's "
        "memory knob). NSARM models and the baselines: the image is processed as N x N tiles, each cut into the "
        "model's windows and blended; NSARM's memory is one window either way and its sample changes (baselines: "
        "the same image up to float rounding).",
    ),
]
TileOverlap = Annotated[
    int | None, typer.Option("--tile-overlap", help="Tile overlap in input pixels (default: the model's).")
]
Dtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto|fp32|bf16|fp16 (auto: bf16 on CUDA and on CPUs with native bf16, AVX512-BF16 or AMX; "
        "fp32 on other CPUs, where bf16 is emulated and much slower; fp16 is refused on the CPU, where it is "
        "about 14x slower).",
    ),
]
Stitch = Annotated[
    str | None,
    typer.Option(
        "--stitch",
        help="pixel|latent: how the windows of an image are put together (NSARM models). pixel decodes and "
        "colour-fixes every window and blends the decoded windows; latent blends the windows' sampled latents "
        "and decodes the image in large tiles (faster: overlaps are decoded once; slightly lower scores on "
        "nsarm-tiny). Default: the model's config (pixel for every registered model).",
    ),
]
BatchWindows = Annotated[
    int | None,
    typer.Option(
        "--batch-windows",
        min=1,
        help="Windows of an image run together (NSARM models; default: from a memory budget). "
        "Outputs do not depend on it: every window keeps its own seed.",
    ),
]

"""Checks on where a batch writes, made once before any work, and write errors told in words.

Not a paper component. Without these, an unwritable output folder (a read-only mount, a folder without write
permission, ``-o`` naming an existing file) or a ``--scale 1000`` that asks for a 115 GB image is discovered
only after the first image was upscaled, and a full disk reads as ``[Errno 28]`` with no file name. (Whether an
existing *output* is done is :mod:`nsarm_core.batch.outputs`; when ``-o`` names the output file of one input,
the folder checked here is its parent.)
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from nsarm_core.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_OUTPUT_PIXELS",
    "check_output_folder",
    "check_output_budget",
    "os_error_reason",
    "write_error",
]

#: Largest output image (width * height) written by default: 400 megapixels, e.g. a 24-megapixel photo
#: (6000x4000) at x4. The float32 result and its blend weights alone take about 6.4 GB at that size.
DEFAULT_MAX_OUTPUT_PIXELS: int = 400_000_000

# errno -> the reason in words (the rest fall back to the system's own text).
_REASONS: dict[int, str] = {
    errno.ENOSPC: "the disk is full (no space left on the device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder is in the way",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EIO: "an input/output error of the disk",
}


def os_error_reason(exc: OSError) -> str:
    """What went wrong, in words: ``the disk is full (no space left on the device)`` for ENOSPC, etc."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    return (exc.strerror or str(exc) or type(exc).__name__).strip()


def write_error(path: Path, exc: OSError) -> InputError:
    """The one-line error for a failed write of ``path``: the file and the reason in words."""
    return InputError(f"cannot write '{path}': {os_error_reason(exc)}")


def _deepest_existing(path: Path) -> Path:
    """``path`` or the nearest of its parents that exists (where a new folder would be created)."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_output_folder(out_dir: str | os.PathLike[str]) -> None:
    """Refuse an output folder that cannot be written, before any work; nothing is created.

    ``out_dir`` may not exist yet: then its nearest existing parent must be a writable folder. The check
    writes and removes a temporary file, so read-only mounts, missing permissions (also for root on a
    read-only mount) and ``-o`` naming an existing file are all found.

    Raises:
        ConfigError: one line naming the folder and the reason.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output folder '{out_dir}' is an existing file, not a folder; pass a folder")
    base = _deepest_existing(out_dir)
    if not base.is_dir():
        raise ConfigError(
            f"cannot create output folder '{out_dir}': '{base}' is a file, not a folder; pass another folder"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".nsarm-write-test-", dir=base)
    except OSError as exc:
        where = "" if base == out_dir.absolute() else f" (its parent '{base}' would hold it)"
        raise ConfigError(
            f"cannot write to output folder '{out_dir}'{where}: {os_error_reason(exc)}; pass another folder"
        ) from exc
    os.close(fd)
    os.unlink(probe)


def check_output_budget(
    sizes: Iterable[tuple[Path, tuple[int, int]]], scale: float, max_output_pixels: int | None
) -> None:
    """Refuse the batch when an output would exceed ``max_output_pixels`` (before any image is upscaled).

    Args:
        sizes: ``(input file, (width, height))`` of each image to be upscaled.
        scale: the output factor.
        max_output_pixels: the budget; None or 0: no limit.

    Raises:
        ConfigError: one line naming the first file over the budget and how many are.
    """
    if not max_output_pixels:
        return
    over: list[tuple[Path, int, int]] = []
    for src, (width, height) in sizes:
        ow, oh = max(1, round(width * scale)), max(1, round(height * scale))
        if ow * oh > max_output_pixels:
            over.append((src, ow, oh))
    if not over:
        return
    src, ow, oh = over[0]
    more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
    raise ConfigError(
        f"'{src}' would become {ow}x{oh} = {ow * oh:,} pixels at --scale {scale:g}{more}, over the output "
        f"limit of {max_output_pixels:,}; lower --scale or raise --max-output-pixels (0: no limit)"
    )

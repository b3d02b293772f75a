"""Atomic file writes: a file appears at its final path only once it is complete.

Not a paper component. Every writer of the project (images, JSON sidecars, manifests, model checkpoints, the
weight-verification memo) goes through this module, so a killed run never leaves a half-written file behind.
It sits below every other module (it imports only the standard library and :mod:`nsarm_core.errors`), so the
model code can use it without importing the data layer.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from nsarm_core.errors import InputError

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "temp_path"]


def temp_path(path: Path) -> Path:
    """A hidden sibling ``.name.tmp-<8 hex>``: same folder, so ``os.replace`` is an atomic rename.

    The batch tools recognise this pattern to clean up after a killed run, so it must not change lightly.
    """
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")


@contextmanager
def atomic_open(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[IO[bytes]]:
    """Open a binary file for writing that appears at ``path`` only once complete.

    The data go to a hidden temporary file in the same folder, which is flushed, fsynced and renamed over
    ``path`` when the ``with`` block exits normally. If the block raises, the temporary file is deleted and
    ``path`` (old content or absent) is untouched. Parent folders are created.

    Args:
        path: the final file.
        overwrite: if False and ``path`` exists, raise InputError before writing anything.

    Yields:
        A writable binary file object.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise InputError(f"output exists: '{path}'; pass overwrite=True (--overwrite) or choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(path)
    # O_EXCL: never clobber anything; 0o666 & ~umask: the same permissions an ordinary open() would give.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`); returns ``path``."""
    with atomic_open(path, overwrite=overwrite) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", overwrite: bool = True
) -> Path:
    """Write ``text`` to ``path`` atomically (JSON sidecars, manifests); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding), overwrite=overwrite)

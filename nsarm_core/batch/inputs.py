"""Input planning of a batch: which files, where their outputs go, which process takes them.

Not a paper component. Inputs are files, folders (recursive) and glob patterns; the output mirrors each input
folder's sub-folders, and with several input folders each one under its own name (``dirA/x.png`` ->
``out/dirA/x.png``), so same-named files of different folders never collide; outputs of an earlier run that
sit inside an input folder are not taken as new inputs; an output is never written over an input; under
``accelerate launch`` every process takes every ``world``-th file (:func:`shard`).

Output names: an output path ending in an image extension names the one output file of a single input file
(:func:`output_file_mode`, as ``realesrgan-ncnn-vulkan -o result.png`` does); otherwise it is a folder. With no
name suffix given, outputs written next to their inputs get ``_x<scale>`` (``photo_x4.png``) and outputs in a
separate folder keep the input's name (:func:`resolve_name_suffix`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nsarm_core.data.files import collect_images, ensure_not_input, output_path_for, path_key
from nsarm_core.data.io import SUPPORTED_SUFFIXES
from nsarm_core.errors import ConfigError, missing_extra

logger = logging.getLogger(__name__)

__all__ = [
    "BatchItem",
    "InputGuard",
    "plan_inputs",
    "output_for",
    "output_file_mode",
    "resolve_name_suffix",
    "shard",
    "detect_world",
]

_GLOB_CHARS = frozenset("*?[")
_AUTO_SUFFIXED = re.compile(r"^(?P<stem>.+)_x\d+(\.\d+)?$")  # names resolve_name_suffix gives (photo_x4)


@dataclass(frozen=True)
class BatchItem:
    """One input file, the folder whose layout its output mirrors (None for a file given directly), and the
    sub-folder of the output folder its outputs go to (the input folder's name when there are several)."""

    src: Path
    root: Path | None
    explicit: bool
    prefix: str = ""


def output_for(item: BatchItem, out_dir: str | os.PathLike[str], *, ext: str, name_suffix: str) -> Path:
    """The output path of ``item``: ``out_dir / prefix / <sub-folders below its root> / <stem><name_suffix>
    <suffix>`` (``ext="same"`` keeps the input's suffix)."""
    return output_path_for(
        item.src,
        item.root,
        Path(out_dir) / item.prefix,
        suffix=None if ext == "same" else f".{ext}",
        name_suffix=name_suffix,
    )


def output_file_mode(inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> bool:
    """True when ``out`` names one output file: it ends in an image extension and is not an existing folder.

    Raises:
        ConfigError: ``out`` names a file but the inputs are not exactly one image file.
    """
    out = Path(out)
    if out.suffix.lower() not in SUPPORTED_SUFFIXES or out.is_dir():
        return False
    files = collect_images(inputs, report_skipped=False, keep_broken_links=True)
    if len(files) != 1 or not Path(os.fspath(inputs[0])).is_file():
        given = f"{len(files)} images" if len(files) != 1 else "a folder or pattern"
        raise ConfigError(
            f"-o '{out}' ends in an image extension, so it names one output file, but the inputs are {given}; "
            f"give an output folder instead (e.g. -o {out.with_suffix('')})"
        )
    return True


def resolve_name_suffix(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    name_suffix: str | None,
    scale: float,
) -> str:
    """``name_suffix`` itself, or for None: ``_x<scale>`` (``_x4``, ``_x1.5``) when the outputs would be written
    next to their inputs (``out_dir`` is an input folder, a pattern's folder or an input file's folder), else
    ``""`` (a separate output folder keeps the input names)."""
    if name_suffix is not None:
        return name_suffix
    out_key = path_key(out_dir)
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            folder = path
        elif path.is_file():
            folder = path.parent
        elif _GLOB_CHARS & set(text):
            folder = _glob_root(text)
        else:
            continue
        if path_key(folder) == out_key:
            return f"_x{float(scale):g}"
    return ""


def _folder_prefixes(roots: Sequence[Path]) -> dict[str, str]:
    """Sub-folder name per input folder (by :func:`path_key`) when there are several: the folder's name, or its
    path below the folders' common parent where two folders share a name (``a/photos``, ``b/photos``)."""
    unique = list({path_key(r): r.resolve() for r in roots}.items())
    if len(unique) < 2:
        return {}
    names = [r.name for _, r in unique]
    if len(set(names)) == len(names) and all(names):
        return dict(zip([k for k, _ in unique], names, strict=True))
    common = Path(os.path.commonpath([str(r) for _, r in unique]))
    return {k: r.relative_to(common).as_posix() or r.name for k, r in unique}


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard (``shots/**/*.png`` -> ``shots``)."""
    parts = Path(pattern).parts
    static: list[str] = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        static.append(part)
    return Path(*static) if static else Path()


def _is_below(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def plan_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    ext: str = "same",
    name_suffix: str = "",
    report_skipped: bool = True,
) -> tuple[list[BatchItem], list[Path]]:
    """Expand ``inputs`` (files, folders, globs) into batch items, leaving out earlier outputs.

    Files found in folders or by patterns are dropped when they are outputs of an earlier run: files below
    ``out_dir`` when ``out_dir`` lies inside the input folder, files at the output path of another input
    (e.g. ``a_x4.png`` next to ``a.png`` with ``name_suffix="_x4"``), and files named like the automatic
    suffix's outputs of another input of their folder (``a_x2.png`` next to ``a.jpg``). Files named directly
    are always kept.

    Args:
        inputs: what the user gave.
        out_dir: the output folder.
        ext: the output format (see :data:`OUTPUT_EXTS`), used to recognise earlier outputs.
        name_suffix: the output name suffix, used likewise.
        report_skipped: name each file left out in the log (False for a second plan of the same inputs).

    Returns:
        ``(items, excluded)``: the items in order (de-duplicated) and the excluded earlier outputs.

    Raises:
        InputError: an input that does not exist or has no images (from :func:`collect_images`).
    """
    out_resolved = Path(out_dir).resolve()
    seen: dict[str, BatchItem] = {}
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            root: Path | None = path
        elif path.is_file():
            root = None
        elif _GLOB_CHARS & set(text):
            root = _glob_root(text)
        else:
            root = None  # collect_images raises the "not found" error
        for src in collect_images([text], keep_broken_links=True, report_skipped=report_skipped):
            seen.setdefault(path_key(src), BatchItem(src=src, root=root, explicit=root is None))
    prefixes = _folder_prefixes([it.root for it in seen.values() if it.root is not None])
    items = [
        replace(it, prefix=prefixes.get(path_key(it.root), "")) if it.root is not None else it
        for it in seen.values()
    ]

    stems = {(path_key(it.src.parent), it.src.stem) for it in items}
    planned: set[str] = set()
    for it in items:
        for fmt in {ext, "png"}:
            planned.add(path_key(output_for(it, out_dir, ext=fmt, name_suffix=name_suffix)))
    kept: list[BatchItem] = []
    excluded: list[Path] = []
    for it in items:
        src_resolved = it.src.resolve()
        inside_out = (
            it.root is not None
            and out_resolved != it.root.resolve()
            and _is_below(out_resolved, it.root.resolve())
            and _is_below(src_resolved, out_resolved)
        )
        own_output = path_key(output_for(it, out_dir, ext=ext, name_suffix=name_suffix)) == path_key(it.src)
        # photo_x4.png next to photo.jpg: an output of the automatic suffix (resolve_name_suffix)
        auto = _AUTO_SUFFIXED.match(it.src.stem)
        earlier_output = (path_key(it.src) in planned and not own_output) or (
            auto is not None and (path_key(it.src.parent), auto["stem"]) in stems
        )
        if not it.explicit and (inside_out or earlier_output):
            excluded.append(it.src)
        else:
            kept.append(it)
    if report_skipped:  # named one by one at -v, like every other file a scan leaves out
        for path in excluded:
            logger.info("skipped '%s': an output of an earlier run", path)
    return kept, excluded


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """The share of process ``rank`` out of ``world_size``: items ``i`` with ``i % world_size == rank``.

    Every item goes to exactly one process and the shares differ in length by at most one. The split is taken
    on the full, sorted input list (not on what is left to do), so processes that start at slightly different
    times still agree on it.

    Raises:
        ConfigError: ``world_size < 1`` or ``rank`` outside ``[0, world_size)``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= rank < world_size; got rank {rank}, world_size {world_size}")
    return list(items[rank::world_size])


def detect_world() -> tuple[int, int, str | None]:
    """``(rank, world_size, device)`` of this process; ``(0, 1, None)`` unless run with several processes.

    Several processes are recognised from ``WORLD_SIZE > 1`` (set by ``accelerate launch`` / ``torchrun``);
    accelerate's ``PartialState`` then gives the rank and this process's device (e.g. ``cuda:1``).

    Raises:
        MissingExtraError: several processes but accelerate is not installed.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world = 1
    if world <= 1:
        return 0, 1, None
    try:
        from accelerate import PartialState
    except ImportError as exc:
        raise missing_extra("accelerate", "train", "splitting `nsarm upscale` across processes") from exc
    state = PartialState()
    return int(state.process_index), int(state.num_processes), str(state.device)


class InputGuard:
    """Fast "would this output overwrite an input?" over the whole input list (paths and inode numbers)."""

    def __init__(self, inputs: Sequence[Path]) -> None:
        self._by_key = {path_key(p): p for p in inputs}
        self._by_inode: dict[tuple[int, int], Path] = {}
        for p in inputs:
            try:
                st = p.stat()
            except OSError:
                continue
            self._by_inode[(st.st_dev, st.st_ino)] = p

    def check(self, out: Path) -> None:
        """Raise InputError (via :func:`ensure_not_input`) if ``out`` is one of the inputs."""
        hit = self._by_key.get(path_key(out))
        if hit is None and out.exists():  # hard links, case-insensitive file systems
            st = out.stat()
            hit = self._by_inode.get((st.st_dev, st.st_ino))
        if hit is not None:
            ensure_not_input(out, [hit])

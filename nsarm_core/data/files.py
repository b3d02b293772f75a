"""Which files a command works on, and where its outputs go.

Not a paper component: the CLI's batch plumbing (``data/`` in the docs/architecture.md S.5 layout). Commands accept
any mix of image files, folders and glob patterns; :func:`collect_images` turns them into one sorted,
de-duplicated list of image paths, :func:`output_path_for` mirrors each input's sub-folder under the output
folder, and :func:`ensure_not_input` refuses an output that would overwrite one of the inputs.

What a folder (or pattern) contributes: every regular file that is an image this package reads, by its suffix
(``.png .jpg .jpeg .webp .tif .tiff .bmp``) or, for other names (no extension, a wrong one), by its content
(the format's signature in the first bytes), so ``IMG_0001`` saved without an extension is found. A symbolic
link whose target is missing is an error instead of vanishing: for the whole list, or (``keep_broken_links``,
the batch commands) for that file alone. Left
out, each named with its reason in the log at ``-v``: hidden files and folders (name starting with "."), the
temporary files of atomic writes and downloads, GIF files (not supported: convert them to PNG; also counted in
one warning) and files that are not images.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from nsarm_core.data.io import SUPPORTED_SUFFIXES
from nsarm_core.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "collect_images",
    "output_path_for",
    "ensure_not_input",
    "is_image_file",
    "sniff_format",
    "path_key",
]

_GLOB_CHARS = frozenset("*?[")
_TEMP_MARKERS = (".tmp-", ".part", ".partial", ".crdownload")
_READABLE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "TIFF", "BMP"})
_GIF_ADVICE = "GIF is not supported (convert it to PNG, e.g. the first frame)"


def sniff_format(path: Path) -> str | None:
    """The image format a file's first bytes announce: PNG, JPEG, WEBP, TIFF, BMP or GIF; None otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 14:
        return "BMP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def _skip_reason(path: Path) -> str | None:
    """Why a file met in a folder or pattern is not an input ("" for a plain folder), or None to take it."""
    name = path.name
    if name.startswith("."):
        return "hidden folder (not searched)" if path.is_dir() else "hidden file"
    if path.is_symlink() and not path.exists():
        return None  # taken: it fails as that file's error ("symbolic link to a missing file")
    if path.is_dir():
        return ""
    if name.endswith("~") or any(marker in name for marker in _TEMP_MARKERS):
        return "temporary or partial file"
    if not path.is_file():
        return "not a regular file"
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        return None
    fmt = sniff_format(path)
    if fmt in _READABLE_FORMATS:
        return None
    if fmt == "GIF":
        return _GIF_ADVICE
    return f"not an image this tool reads (suffix {path.suffix or '(none)'!r}, and its content is not {', '.join(sorted(_READABLE_FORMATS))})"


def _take(paths: Iterable[Path], where: str, report: bool = True) -> list[Path]:
    """The paths that are inputs; every other one is named in the log with its reason (when ``report``)."""
    taken: list[Path] = []
    gifs = 0
    for path in paths:
        reason = _skip_reason(path)
        if reason is None:
            taken.append(path)
        elif reason and report:
            logger.info("skipped '%s': %s", path, reason)
            gifs += reason == _GIF_ADVICE
    if gifs:
        logger.warning("%d GIF file(s) in %s skipped: %s (-v lists them)", gifs, where, _GIF_ADVICE)
    return taken


def is_image_file(path: Path) -> bool:
    """True for a regular file with a supported suffix that is neither hidden nor a temporary/partial file."""
    name = path.name
    if name.startswith(".") or name.endswith("~") or any(marker in name for marker in _TEMP_MARKERS):
        return False
    return path.suffix.lower() in SUPPORTED_SUFFIXES and path.is_file()


def _hidden_below(path: Path, root: Path) -> bool:
    """True if any component of ``path`` below ``root`` is hidden (so hidden folders are skipped too)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _images_in_folder(folder: Path, recursive: bool, report: bool = True) -> list[Path]:
    candidates: Iterable[Path] = folder.rglob("*") if recursive else folder.iterdir()
    # entries inside a hidden folder are left out with it (the folder itself is named once)
    visible = sorted(p for p in candidates if not _hidden_below(p.parent, folder))
    return _take(visible, f"'{folder}'", report)


def path_key(path: str | os.PathLike[str]) -> str:
    """The project's one key for "the same file": the resolved absolute path, case-folded where the file system
    is (``a/../a/b.png``, ``~/a/b.png`` and ``A/B.PNG`` on Windows are one file)."""
    return os.path.normcase(str(Path(path).expanduser().resolve()))


def collect_images(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    recursive: bool = True,
    report_skipped: bool = True,
    keep_broken_links: bool = False,
) -> list[Path]:
    """Expand files, folders and glob patterns into a de-duplicated list of image files.

    * A file is taken as is; it must have a supported suffix.
    * A folder contributes its images (sorted; sub-folders too when ``recursive``), skipping hidden entries,
      temporary files and other suffixes. A folder without images is an error.
    * A pattern with ``*``, ``?`` or ``[`` (``photos/*.jpg``, ``shots/**/*.png``; ``**`` spans folders) is
      expanded; matched files with supported suffixes are kept and matched folders are expanded as folders.
      A pattern matching no image is an error.

    Order follows ``inputs``; each input's own files are sorted. A file reached twice is kept once, at its
    first position.

    Args:
        inputs: paths and/or patterns.
        recursive: descend into sub-folders of the given folders.
        report_skipped: name each file left out in the log (False for a second scan of the same inputs).
        keep_broken_links: return symbolic links whose target is missing (a batch reports them as that file's
            failure and goes on); False refuses the whole list, naming the first one.

    Returns:
        The image paths, as given or found (not resolved).

    Raises:
        InputError: a path that does not exist, a file with an unsupported suffix, or a folder / pattern
            without images; the message names it.
    """
    found: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            images = _images_in_folder(path, recursive, report_skipped)
            if not images:
                raise InputError(
                    f"no images found in folder '{path}' (looked for {', '.join(SUPPORTED_SUFFIXES)}"
                    f"{'' if recursive else ', not recursing into sub-folders'})"
                )
            found += images
        elif path.is_file():
            fmt = None if path.suffix.lower() in SUPPORTED_SUFFIXES else sniff_format(path)
            if fmt == "GIF":
                raise InputError(f"'{path}': {_GIF_ADVICE}")
            if path.suffix.lower() not in SUPPORTED_SUFFIXES and fmt not in _READABLE_FORMATS:
                raise InputError(
                    f"not a supported image file: '{path}' (suffix {path.suffix or '(none)'!r}; "
                    f"expected one of {', '.join(SUPPORTED_SUFFIXES)}, or such an image without the suffix)"
                )
            found.append(path)
        elif path.is_symlink():
            raise InputError(f"'{path}' is a symbolic link to '{os.readlink(path)}', which does not exist")
        elif _GLOB_CHARS & set(text):
            images = []
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            files = {
                str(p)
                for p in _take(
                    [hit for hit in matches if not hit.is_dir()], f"pattern '{text}'", report_skipped
                )
            }
            for hit in matches:
                if hit.is_dir():
                    images += _images_in_folder(hit, recursive, report_skipped)
                elif str(hit) in files:
                    images.append(hit)
            if not images:
                raise InputError(f"pattern '{text}' matched no image files ({', '.join(SUPPORTED_SUFFIXES)})")
            found += images
        else:
            raise InputError(
                f"input not found: '{path}' (expected an image file, a folder or a glob pattern)"
            )
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(path_key(path), path)
    if not keep_broken_links:
        for path in unique.values():
            if path.is_symlink() and not path.exists():
                raise InputError(
                    f"'{path}' is a symbolic link to '{os.readlink(path)}', which does not exist"
                )
    return list(unique.values())


def output_path_for(
    src: str | os.PathLike[str],
    input_root: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    suffix: str | None,
    name_suffix: str = "",
) -> Path:
    """Where the output for ``src`` goes: ``out_dir / <sub-folders of src below input_root> /
    <stem><name_suffix><suffix>``.

    Example: ``output_path_for("in/a/b.jpg", "in", "out", suffix=".png", name_suffix="_x4")`` is
    ``out/a/b_x4.png``. When ``input_root`` is None or does not contain ``src``, the sub-folders are dropped
    (``out/b_x4.png``).

    Args:
        src: the input image.
        input_root: the folder the user gave, whose layout is mirrored; None for loose files.
        out_dir: the output folder.
        suffix: the output suffix (".png" or "png"), or None to keep the input's.
        name_suffix: text appended to the file stem, e.g. "_x4".

    Raises:
        InputError: an unsupported output suffix, or a name suffix containing a path separator.
    """
    src = Path(src)
    out_dir = Path(out_dir)
    if suffix is None:
        new_suffix = src.suffix
    else:
        new_suffix = suffix if suffix.startswith(".") else f".{suffix}"
        if new_suffix.lower() not in SUPPORTED_SUFFIXES:
            raise InputError(
                f"unsupported output suffix {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}"
            )
    if "/" in name_suffix or os.sep in name_suffix:
        raise InputError(f"name suffix {name_suffix!r} must not contain a path separator")
    if new_suffix.lower() not in SUPPORTED_SUFFIXES:  # an image found by its content (no or another suffix)
        new_suffix = ".png"
    relative_parent = Path()
    if input_root is not None:
        try:
            relative_parent = src.resolve().parent.relative_to(Path(input_root).resolve())
        except ValueError:
            relative_parent = Path()
    return out_dir / relative_parent / f"{src.stem}{name_suffix}{new_suffix}"


def ensure_not_input(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Raise if writing ``out`` would overwrite one of ``inputs`` (same file after resolving links, ``..``).

    Raises:
        InputError: naming the output and the input it would replace.
    """
    out = Path(out)
    out_key = path_key(out)
    for item in inputs:
        src = Path(item)
        same = path_key(src) == out_key
        if not same and out.exists() and src.exists():
            same = os.path.samefile(out, src)  # hard links, case-insensitive file systems
        if same:
            raise InputError(
                f"output '{out}' would overwrite the input '{src}'; choose another output folder, or add "
                f"a name suffix (nsarm upscale --suffix _x4)"
            )

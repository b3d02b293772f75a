"""Captions of images: the one reader of caption files, used by training and by inference alike.

Not a paper component; docs/architecture.md E.6 describes the official caption files. A caption
file is JSON Lines, one object per image: ``{"image_path": ..., "long_caption": ...}`` (the official files and
``nsarm caption`` write ``long_caption``). One precedence rule holds everywhere: the first of
:data:`CAPTION_FIELDS` holding a non-empty string is the caption, so the same line gives the same prompt when
training and when upscaling. (Before this module, inference let ``caption`` win and training ``long_caption``.)

Matching an image to a line, in this order:

1. by path: a relative ``image_path`` is taken relative to the JSONL file's folder and to the current folder;
2. by file name alone, when that name has one caption in all the files read (the official files carry their
   authors' absolute paths); a name listed with different captions is matched by path only (a warning says so);
3. optionally (``sidecar=True``, training) a ``<image stem>.txt`` file next to the image.

Paths are compared by one key (:func:`nsarm_core.data.files.path_key`): resolved, absolute, case-folded where
the file system is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from nsarm_core.data.files import path_key
from nsarm_core.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["CAPTION_FIELDS", "CaptionIndex", "caption_of", "load_captions", "read_caption_file"]

#: The caption fields of a JSONL line, by precedence: the first holding a non-empty string wins.
CAPTION_FIELDS: tuple[str, ...] = ("long_caption", "caption", "text")

Entry = tuple[Sequence[Path], str]  # (the paths an image_path may mean, its caption)


def caption_of(record: Mapping[str, object]) -> str | None:
    """The caption of one JSONL record by the :data:`CAPTION_FIELDS` precedence, or None when it has none."""
    for key in CAPTION_FIELDS:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def read_caption_file(file: Path) -> list[Entry]:
    """Parse one JSONL caption file into ``(candidate paths, caption)`` entries.

    Raises:
        InputError: an unreadable file, or a line that is not a JSON object with ``image_path`` and a caption
            field (the message names the file and the line number).
    """
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read captions file '{file}': {exc}") from exc
    entries: list[Entry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"captions file '{file}' line {number} ({file.name}:{number})"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg}); each line must be one object") from exc
        image_path = record.get("image_path") if isinstance(record, dict) else None
        caption = caption_of(record) if isinstance(record, dict) else None
        if not isinstance(image_path, str) or not image_path or caption is None:
            raise InputError(
                f'{where}: expected an object with "image_path" and one of {", ".join(CAPTION_FIELDS)} '
                "(a non-empty string)"
            )
        raw = Path(image_path).expanduser()
        entries.append(([raw] if raw.is_absolute() else [file.parent / raw, raw], caption))
    return entries


class CaptionIndex:
    """Captions looked up by image: by path, then by unique file name, then (``sidecar``) a ``.txt`` file.

    Args:
        entries: ``(candidate paths, caption)`` pairs, e.g. from :func:`read_caption_file`.
        source: where the captions came from (quoted in messages).
        sidecar: fall back to ``<image stem>.txt`` next to the image.
    """

    def __init__(self, entries: Iterable[Entry] = (), *, source: str = "", sidecar: bool = False) -> None:
        self._by_path: dict[str, str] = {}
        names: dict[str, set[str]] = {}
        for candidates, caption in entries:
            for candidate in candidates:
                self._by_path[path_key(candidate)] = caption
            names.setdefault(Path(candidates[0]).name, set()).add(caption)
        self._by_name = {name: next(iter(caps)) for name, caps in names.items() if len(caps) == 1}
        ambiguous = sorted(name for name, caps in names.items() if len(caps) > 1)
        if ambiguous:
            logger.warning(
                "captions '%s': %d file name(s) have different captions in different folders (e.g. %s); "
                "those images are matched by path only",
                source,
                len(ambiguous),
                ambiguous[0],
            )
        self.source = source
        self.sidecar = sidecar

    def __len__(self) -> int:
        return len(self._by_path)

    def lookup(self, image: str | os.PathLike[str]) -> str | None:
        """The caption of ``image``, or None when it has none."""
        path = Path(image)
        hit = self._by_path.get(path_key(path), self._by_name.get(path.name))
        if hit is None and self.sidecar:
            txt = path.with_suffix(".txt")
            if txt.is_file():
                hit = txt.read_text(encoding="utf-8").strip()
        return hit

    @classmethod
    def from_mapping(cls, records: Mapping[str, str], *, sidecar: bool = False) -> CaptionIndex:
        """From ``{image path: caption}`` (paths as given, relative to the current folder)."""
        return cls([([Path(p)], c) for p, c in records.items()], source="<mapping>", sidecar=sidecar)


def load_captions(
    source: str | os.PathLike[str] | Mapping[str, str] | None, *, sidecar: bool = False
) -> CaptionIndex:
    """Captions from a JSONL file, every ``*.jsonl`` in a folder (the official ``--input_info`` layout), a
    ``{path: caption}`` mapping, or None (no captions; only sidecar files when ``sidecar``).

    Raises:
        InputError: a missing file, a folder without JSONL files, or a malformed line (named by number).
    """
    if source is None:
        return CaptionIndex(source="", sidecar=sidecar)
    if isinstance(source, Mapping):
        return CaptionIndex.from_mapping(source, sidecar=sidecar)
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise InputError(f"no .jsonl caption files in folder '{path}'")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(
            f"captions file not found: '{path}' does not exist (expected a .jsonl file or a folder of them)"
        )
    entries = [entry for file in files for entry in read_caption_file(file)]
    return CaptionIndex(entries, source=str(path), sidecar=sidecar)

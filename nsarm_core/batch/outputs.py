"""Existing outputs on resume: is the file at an output path a finished output, and which settings made it.

Not a paper component: the resume rule of the batch commands (docs/architecture.md P.4.5). An existing output
counts as done only when it is a complete, decodable image (:func:`output_state`) and, for ``nsarm upscale``,
when it was made with the settings of this run (:class:`OutputRecords`, :func:`output_settings`). Anything else
is said: a folder in the way is an error for that file, an empty or undecodable file is made again, and outputs
made with other settings stop the run with the setting that differs and the advice ``--overwrite``.

The record of an output folder is ``<out>/.nsarm-outputs.jsonl``, one JSON line per finished output
(``{"output": "<path below the folder>", "settings": {...}}``), appended after the output is written, so that
several processes (``accelerate launch``) can share it and a killed run leaves every earlier line intact; the
last line of an output wins. The name is hidden, so folder scans never take it as an input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from nsarm_core.batch.tiled import TiledUpscaler
from nsarm_core.data.io import read_image
from nsarm_core.errors import InputError
from nsarm_core.resize import INTERPOLATION_MODES
from nsarm_core.upscaler import is_sr_pipeline

logger = logging.getLogger(__name__)

__all__ = [
    "RECORDS_NAME",
    "OutputRecords",
    "output_state",
    "output_settings",
    "settings_differences",
    "weights_identity",
]

RECORDS_NAME = ".nsarm-outputs.jsonl"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------------------
# Is it a finished output?
# ------------------------------------------------------------------------------------------------------------


def _png_complete(path: Path) -> str | None:
    """None when every chunk's CRC matches and the file ends with IEND, else the reason.

    Cheaper than decoding a 4x output (no inflate, no pixel buffer) and catches what an interrupted or foreign
    writer leaves: a truncated file, a missing end, damaged bytes.
    """
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return "not a PNG file"
        while True:
            head = f.read(8)
            if len(head) < 8:
                return "truncated (no IEND chunk)"
            length, ctype = int.from_bytes(head[:4], "big"), head[4:]
            crc = zlib.crc32(ctype)
            left = length
            while left:
                block = f.read(min(left, _CHUNK))
                if not block:
                    return f"truncated inside a {ctype.decode('latin-1')} chunk"
                crc = zlib.crc32(block, crc)
                left -= len(block)
            stored = f.read(4)
            if len(stored) < 4 or int.from_bytes(stored, "big") != crc:
                return f"damaged ({ctype.decode('latin-1')} chunk checksum mismatch)"
            if ctype == b"IEND":
                return None


def output_state(path: Path) -> tuple[str, str | None]:
    """What is at an output path: ``("absent", None)``, ``("complete", None)``, ``("incomplete", reason)`` (an
    empty or undecodable file, to be made again) or ``("blocked", reason)`` (a folder or special file in the way).

    A PNG is checked chunk by chunk (CRCs and the end marker); other formats are decoded.
    """
    if not os.path.lexists(path) or (path.is_symlink() and not path.exists()):
        return "absent", None  # a dangling link is replaced by the atomic write
    if path.is_dir():
        return "blocked", "is a folder"
    if not path.is_file():
        return "blocked", "is not a regular file"
    if path.stat().st_size == 0:
        return "incomplete", "empty (0 bytes)"
    try:
        with open(path, "rb") as f:
            is_png = f.read(8) == _PNG_SIGNATURE
        reason = _png_complete(path) if is_png else _decodes(path)
    except (InputError, OSError) as exc:
        reason = " ".join(str(exc).split())
    return ("incomplete", f"not decodable: {reason}") if reason else ("complete", None)


def _decodes(path: Path) -> str | None:
    """None when Pillow decodes every pixel of ``path`` (8-bit data, no float conversion: about 10x faster than
    :func:`read_image`), else the reason; what Pillow cannot open (16-bit multi-sample TIFF) goes to
    :func:`read_image`."""
    saved = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = None  # our own outputs: the input's bomb guard was applied when it was read
    try:
        with PILImage.open(path) as im:
            im.load()
        return None
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError):
        pass
    finally:
        PILImage.MAX_IMAGE_PIXELS = saved
    read_image(path, max_pixels=None)  # raises InputError with the reason when it cannot decode it either
    return None


# ------------------------------------------------------------------------------------------------------------
# Which settings made it
# ------------------------------------------------------------------------------------------------------------


class OutputRecords:
    """The settings each output below ``folder`` was made with (``folder / RECORDS_NAME``, see the module doc)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RECORDS_NAME
        self._by_key: dict[str, dict[str, Any]] = {}
        self._needs_newline = False
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            logger.warning(
                "cannot read the output record %s (%s); existing outputs count as unrecorded", self.path, exc
            )
            return
        self._needs_newline = bool(text) and not text.endswith("\n")  # a line cut by a killed run
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                self._by_key[str(entry["output"])] = dict(entry["settings"])
            except (ValueError, KeyError, TypeError):
                continue  # a cut or hand-damaged line: that output counts as unrecorded

    def _key(self, out: Path) -> str:
        try:
            return out.resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            return str(out.resolve())

    def get(self, out: Path) -> dict[str, Any] | None:
        """The settings recorded for ``out``, or None."""
        return self._by_key.get(self._key(out))

    def add(self, out: Path, settings: Mapping[str, Any]) -> None:
        """Record that ``out`` was just written with ``settings`` (one appended line)."""
        key = self._key(out)
        line = json.dumps({"output": key, "settings": dict(settings)}, sort_keys=True) + "\n"
        self._by_key[key] = dict(settings)
        try:
            with open(
                self.path, "a", encoding="utf-8"
            ) as f:  # one write per line: O_APPEND keeps lines whole
                f.write(("\n" if self._needs_newline else "") + line)
        except OSError as exc:  # the output itself is written and complete; only its record is missing
            logger.warning("cannot record the settings of '%s' in %s: %s", out, self.path, exc)
            return
        self._needs_newline = False


def weights_identity(model: str | Path, weights: str | Path | None = None) -> str | None:
    """A short identity of the weights ``model`` (and ``--weights``) load, for the output record.

    A registered checksum when there is one (the loader has verified the file against it), else the sha256 a
    model folder's ``config.json`` records, else the file's own sha256; None for the interpolation baselines.
    """
    name = str(model)
    if name in INTERPOLATION_MODES:
        return None
    # The model registry and checkpoint names (the nsarm_core.models package) load only for a model, so a
    # baseline's run imports nothing of the model stack.
    from nsarm_core.models.checkpoint import CONFIG_NAME, SHA256_KEY, WEIGHTS_NAME
    from nsarm_core.weights import MODELS, find_local

    if name in MODELS:
        wf = MODELS[name].files.get("checkpoint")
        if wf is not None and (wf.sha256 or wf.md5):
            return f"sha256:{wf.sha256}" if wf.sha256 else f"md5:{wf.md5}"
        if weights is None:
            found = find_local(MODELS[name]).get("checkpoint")
            return None if found is None else _file_identity(found)
        return _file_identity(Path(weights))
    folder = Path(model)
    file = Path(weights) if weights is not None else folder / WEIGHTS_NAME
    if weights is None:
        try:
            recorded = json.loads((folder / CONFIG_NAME).read_text()).get(SHA256_KEY) or {}
        except (OSError, ValueError, AttributeError):
            recorded = {}
        if isinstance(recorded, dict) and isinstance(recorded.get(WEIGHTS_NAME), str):
            return f"sha256:{recorded[WEIGHTS_NAME]}"
    return _file_identity(file)


def _file_identity(path: Path) -> str | None:
    if path.is_dir() or not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * _CHUNK):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def output_settings(upscaler: Any, *, scale: float, seed: int, weights: str | None) -> dict[str, Any]:
    """The settings that shape an output of ``upscaler``: model, weights, scale, and for NSARM the sampling
    (seed, tau, top-p, cfg), colour fix, fidelity, tile overlap, dtype, a stitch mode other than pixel and the
    speck guard when on; a peer's dtype; the outer tile of
    ``--tile`` (:class:`~nsarm_core.batch.tiled.TiledUpscaler`, recorded only when tiling, so outputs made
    without it keep matching). The deterministic baselines and peers ignore the seed, so it is not recorded
    for them."""
    settings: dict[str, Any] = {"model": upscaler.name, "weights": weights, "scale": float(scale)}
    if isinstance(upscaler, TiledUpscaler):
        settings["tile"] = upscaler.tile  # NSARM samples each tile as its own image: another output
        upscaler = upscaler.inner
    if is_sr_pipeline(upscaler):
        st = upscaler.settings
        settings.update(
            seed=int(seed),
            tau=st.tau,
            top_p=st.top_p,
            cfg=st.cfg,
            color_fix=st.color_fix,
            fidelity=upscaler.fidelity(),
            tile_overlap=st.tile_overlap,
            dtype=str(upscaler.dtype).removeprefix("torch."),
        )
        # recorded only when they differ from the paper's path, so outputs made before they existed keep matching
        if upscaler.stitch() != "pixel":
            settings["stitch"] = upscaler.stitch()
        if upscaler.speck_guard() is not None:
            settings["speck_guard"] = True
    elif getattr(upscaler, "dtype", None) is not None:
        settings["dtype"] = str(upscaler.dtype).removeprefix("torch.")
    return settings


def settings_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``["scale 4.0 recorded, 2.0 now", ...]`` for every setting that differs (absent on one side: None)."""
    return [
        f"{key} {recorded.get(key)!r} recorded, {current.get(key)!r} now"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]

"""Benchmark sets from the Hugging Face Hub: download once, extract into the cache, and check the files by
their hashes on every later use.

Not a paper component: workflow glue for ``nsarm evaluate --dataset NAME`` without ``--data-root``. A preset
with a public Hub copy (:class:`~nsarm_core.eval.benchmarks.HubCopy`: a zip archive in a dataset repository)
is fetched with ``huggingface_hub.hf_hub_download`` into the Hub's own cache, and the preset's folder of the
archive is extracted to ``$NSARM_HOME/datasets/<name>``. The Hub publishes no checksum for these files, so the
sha256 of every extracted file (and of the archive) is recorded on first download (``nsarm-hashes.json``) and
checked on each later use: a changed or missing file is refused, not silently scored. ``HF_HUB_OFFLINE=1``
means the Hub cache only; nothing is downloaded then.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from nsarm_core.atomic import atomic_write_text
from nsarm_core.errors import ChecksumError, ConfigError, InputError
from nsarm_core.eval.benchmarks import IMAGE_SUFFIXES, DatasetPreset, HubCopy
from nsarm_core.hub import offline_reason
from nsarm_core.weights import file_checksums, hub_cache_dir, nsarm_home

logger = logging.getLogger(__name__)

__all__ = ["HASHES_NAME", "dataset_cache_dir", "fetch_dataset", "layout_text"]

HASHES_NAME = "nsarm-hashes.json"


def dataset_cache_dir(preset: DatasetPreset) -> Path:
    """Where the extracted copy of ``preset`` lives: ``$NSARM_HOME/datasets/<name>``."""
    return nsarm_home() / "datasets" / preset.name


def layout_text(preset: DatasetPreset) -> str:
    """The folder layout a ``--data-root`` must have, in one phrase: ``test_LR/*_LR4.png and test_HR/*.png``."""
    text = f"{preset.lr_dirs[0]}/{preset.lr_pattern}"
    if preset.hr_dirs:
        text += f" and {preset.hr_dirs[0]}/{preset.hr_pattern}"
    return text


def fetch_dataset(preset: DatasetPreset) -> Path:
    """The data root of ``preset`` when no ``--data-root`` is given: the checked cached copy, else downloaded.

    Returns:
        A folder holding the preset's LR (and HR) folders, for
        :func:`~nsarm_core.eval.benchmarks.resolve_layout`.

    Raises:
        ConfigError: the preset has no known Hub copy (the message names its source and ``--data-root``).
        InputError: offline, or the download failed (one line naming the repository, the layout and
            ``--data-root``), or the archive lacks the preset's folder.
        ChecksumError: a cached file differs from the hash recorded at download.
    """
    root = dataset_cache_dir(preset)
    if (root / HASHES_NAME).is_file():
        _check(root)
        return root
    hub = preset.hub
    if hub is None:
        raise ConfigError(
            f"--dataset {preset.name} needs --data-root DIR holding {layout_text(preset)} "
            f"(no public Hugging Face Hub copy is known; source: {preset.source})"
        )
    archive = _download(preset, hub)
    _extract(archive, hub.folder, root)
    record = {
        "dataset": preset.name,
        "repo_id": hub.repo_id,
        "filename": hub.filename,
        "folder": hub.folder,
        "revision": hub.revision,
        "archive_sha256": file_checksums(archive)["sha256"],
        "downloaded": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": {
            p.relative_to(root).as_posix(): file_checksums(p)["sha256"]
            for p in sorted(root.rglob("*"))
            if p.is_file()
        },
    }
    atomic_write_text(root / HASHES_NAME, json.dumps(record, indent=1) + "\n")
    logger.warning(
        "%s: downloaded from the Hugging Face dataset %s to %s (%d files; their sha256 are recorded in %s "
        "and checked on each use)",
        preset.name, hub.repo_id, root, len(record["files"]), HASHES_NAME,
    )  # fmt: skip
    return root


def _download(preset: DatasetPreset, hub: HubCopy) -> Path:
    """The archive of ``hub`` (the copy of ``preset``) in the Hub cache (downloaded unless offline)."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # HF_HUB_OFFLINE, or the Hub probed once and unreachable: the cache only, no retries (nsarm_core.hub)
    offline = offline_reason()
    try:
        path = huggingface_hub.hf_hub_download(
            hub.repo_id, hub.filename, repo_type="dataset", revision=hub.revision,
            local_files_only=offline is not None, library_name="nsarm",
        )  # fmt: skip
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        why = f"{offline}, so nothing was downloaded" if offline else _first_line(exc)
        raise InputError(
            f"--dataset {preset.name}: not in the cache and not downloaded from the Hugging Face dataset "
            f"{hub.repo_id} (file {hub.filename}, folder {hub.folder}): {why}; get it there (Hub cache: "
            f"{hub_cache_dir()}), or pass --data-root DIR holding {layout_text(preset)}"
        ) from exc
    return Path(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _extract(archive: Path, folder: str, root: Path) -> None:
    """Extract the image files under ``folder/`` of the zip ``archive`` into ``root`` (sub-folders kept).

    Members with absolute paths or ``..`` are refused (a hostile archive must not write outside ``root``).
    The files are extracted next to ``root`` first and moved into place at the end, so an interrupted
    extraction never looks like a finished one.
    """
    prefix = PurePosixPath(folder)
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    count = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                name = PurePosixPath(member.filename)
                if member.is_dir() or name.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    rel = name.relative_to(prefix)
                except ValueError:
                    continue
                if name.is_absolute() or ".." in rel.parts:
                    raise InputError(
                        f"{archive}: refused member {member.filename!r} (it points outside its folder)"
                    )
                target = partial.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                count += 1
    except zipfile.BadZipFile as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise InputError(f"{archive} is not a readable zip archive ({exc}); delete it and run again") from exc
    if count == 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise InputError(f"{archive} holds no images under {folder}/; the repository's layout has changed")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)


def _check(root: Path) -> None:
    """Compare every file of the cached copy with the hashes recorded at download."""
    record_path = root / HASHES_NAME
    try:
        record: dict[str, Any] = json.loads(record_path.read_text(encoding="utf-8"))
        files: dict[str, str] = dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{record_path} is not a hash record ({exc}); delete {root} to download the set again"
        ) from exc
    for rel, expected in files.items():
        path = root / rel
        if not path.is_file():
            raise ChecksumError(
                f"{path} is missing from the downloaded set; delete {root} to download it again"
            )
        got = file_checksums(path)["sha256"]
        if got != expected:
            raise ChecksumError(
                f"{path} changed since it was downloaded (sha256 {got}, recorded {expected}); "
                f"delete {root} to download the set again"
            )
    logger.info("%s: %d files match the hashes recorded at download", root, len(files))

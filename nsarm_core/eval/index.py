"""The evaluation index: one JSON line per finished ``nsarm evaluate`` run, so ``nsarm robustness`` can compare
every method evaluated on one dataset without being told where each score file is.

Not a paper component: workflow glue. The index lives in the working folder (``nsarm-evaluations.jsonl``, or
``$NSARM_EVAL_INDEX``). Each line records the dataset (a preset name, or the HR/LR folder), the method (the
model name, or the SR folder's name), the settings that shape the scores and the score files. Paths are stored
relative to the index's folder when they are inside it, so a project folder can be moved as a whole.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nsarm_core.errors import ConfigError, InputError

__all__ = [
    "INDEX_NAME",
    "IndexEntry",
    "default_index_path",
    "read_index",
    "record_run",
    "methods_of_dataset",
    "choose_dataset",
    "dataset_slug",
]

INDEX_NAME = "nsarm-evaluations.jsonl"
INDEX_VERSION = 1


def default_index_path() -> Path:
    """``$NSARM_EVAL_INDEX`` when set, else ``nsarm-evaluations.jsonl`` in the working folder."""
    env = os.environ.get("NSARM_EVAL_INDEX", "").strip()
    return Path(env).expanduser() if env else Path.cwd() / INDEX_NAME


@dataclass(frozen=True)
class IndexEntry:
    """One finished evaluation.

    Attributes:
        dataset: the preset name (``RealSR``), else ``hr:<folder>`` / ``lr:<folder>``; None when the run had
            neither (an SR folder scored without references is comparable with nothing).
        method: the model name (``--model``), else the SR folder's name.
        scores: the per-image CSV.
        summary: the summary JSON next to it.
        sr_dir: the folder of SR images that was scored.
        settings: metrics and protocol choices of the run.
        n_images: images scored; n_failed: images that could not be scored.
        time: UTC time the run finished (ISO 8601).
    """

    dataset: str | None
    method: str
    scores: Path
    summary: Path | None
    sr_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    n_images: int = 0
    n_failed: int = 0
    time: str = ""


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` (POSIX) when inside it, else absolute."""
    p = path.resolve()
    try:
        return p.relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(p)


def _abs(text: str, base: Path) -> Path:
    p = Path(text)
    return p if p.is_absolute() else base / p


def dataset_key(preset: str | None, hr_dir: Path | None, lr_dir: Path | None, index_path: Path) -> str | None:
    """What "the same dataset" means in the index: the preset's name, else the HR folder, else the LR folder."""
    if preset:
        return preset
    base = index_path.parent
    if hr_dir is not None:
        return f"hr:{_rel(hr_dir, base)}"
    if lr_dir is not None:
        return f"lr:{_rel(lr_dir, base)}"
    return None


def record_run(index_path: Path, entry: IndexEntry) -> None:
    """Append ``entry`` as one JSON line (one ``write`` of a whole line, so concurrent runs do not interleave)."""
    base = index_path.parent
    data = asdict(entry) | {
        "version": INDEX_VERSION,
        "scores": _rel(entry.scores, base),
        "summary": _rel(entry.summary, base) if entry.summary is not None else None,
        "sr_dir": _rel(entry.sr_dir, base),
        "time": entry.time or datetime.now(UTC).isoformat(timespec="seconds"),
    }
    index_path.parent.mkdir(parents=True, exist_ok=True)
    with open(index_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(data, default=str) + "\n")


def read_index(index_path: Path) -> list[IndexEntry]:
    """Every entry of the index, oldest first (an absent index is empty).

    Raises:
        InputError: a line that is not an index entry (named by file and line number).
    """
    if not index_path.is_file():
        return []
    base = index_path.parent
    entries = []
    for n, line in enumerate(index_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            entries.append(
                IndexEntry(
                    dataset=d["dataset"],
                    method=str(d["method"]),
                    scores=_abs(d["scores"], base),
                    summary=_abs(d["summary"], base) if d.get("summary") else None,
                    sr_dir=_abs(d["sr_dir"], base),
                    settings=dict(d.get("settings") or {}),
                    n_images=int(d.get("n_images", 0)),
                    n_failed=int(d.get("n_failed", 0)),
                    time=str(d.get("time", "")),
                )  # fmt: skip
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{index_path} line {n} is not an evaluation record ({type(exc).__name__}: {exc}); "
                "delete that line (or the file: `nsarm evaluate` writes a new one)"
            ) from exc
    return entries


def choose_dataset(entries: Sequence[IndexEntry], dataset: str | None = None) -> str:
    """The dataset to compare: ``dataset`` when given (it must be in the index), else the latest evaluated one.

    Raises:
        ConfigError: an empty index, or ``dataset`` not in it (the message lists those that are).
    """
    known = [e.dataset for e in entries if e.dataset is not None]
    if not known:
        raise ConfigError(
            "no evaluation is recorded in the index yet: run `nsarm evaluate SR_DIR --hr HR_DIR` (or "
            "--dataset NAME) for each method first, or give the methods as NAME=scores.csv"
        )
    if dataset is None:
        return known[-1]
    if dataset in known:
        return dataset
    raise ConfigError(
        f"dataset {dataset!r} is not in the evaluation index; evaluated: {', '.join(dict.fromkeys(known))}"
    )


def methods_of_dataset(entries: Iterable[IndexEntry], dataset: str) -> dict[str, IndexEntry]:
    """The latest run of each method on ``dataset``, by method name (an older run of a method is superseded).

    Two different SR folders that share a name (``a/sr`` and ``b/sr``) are kept apart by their folder paths.
    """
    latest: dict[Path, IndexEntry] = {}
    for e in entries:
        if e.dataset == dataset:
            latest.pop(e.sr_dir.resolve(), None)  # re-insert: order follows the latest run
            latest[e.sr_dir.resolve()] = e
    by_name: dict[str, list[IndexEntry]] = {}
    for e in latest.values():
        by_name.setdefault(e.method, []).append(e)
    out: dict[str, IndexEntry] = {}
    for name, runs in by_name.items():
        if len({e.settings.get("model") for e in runs}) == 1 and runs[0].settings.get("model"):
            out[name] = runs[-1]  # one model evaluated into several folders: its latest run
            continue
        for e in runs:
            out[name if len(runs) == 1 else str(e.sr_dir)] = e
    return out


def dataset_slug(dataset: str) -> str:
    """A folder name for a dataset key: ``RealSR`` -> ``RealSR``, ``hr:out/degraded/hr`` -> ``out_degraded_hr``."""
    text = dataset.split(":", 1)[1] if ":" in dataset else dataset
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "dataset"

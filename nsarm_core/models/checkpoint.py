"""Reading and writing model weights: every file format, one strict key/shape report, one model-folder layout.

Not a paper component; docs/architecture.md A.5, A.7, C.11 and E.8 describe the files this module reads and S.4
item 8 the rule it implements. Every
model class (VAE, transformation network, transformer, NSARM) and every tool that reads weights goes through
here, so a new weight format or a better error message is added once.

* **Formats** (:func:`load_state_dict`): ``.safetensors``; a sharded index ``*.index.json`` (shards in the same
  folder, safetensors or torch); ``.pth/.pt/.bin/.ckpt`` read **only** with ``torch.load(weights_only=True)``,
  so a pickle holding arbitrary Python objects is refused, never executed; a folder holding
  ``model.safetensors.index.json`` or ``model.safetensors``. A corrupt or truncated file is an
  :class:`~nsarm_core.errors.InputError` naming the file, never a library traceback.
* **Strict report** (:func:`check_state_dict`): missing keys, unexpected keys and shape mismatches in one
  message, with the caller's hint on what to check.
* **Model folders** (:func:`save_folder` / :func:`read_folder`): ``config.json`` (with a ``model_type``) plus
  ``model.safetensors``, both written atomically, the layout of every ``save_pretrained``/``from_pretrained``.
  ``config.json`` records the weights' sha256 (``"sha256": {"model.safetensors": ...}``), which
  :func:`read_folder` checks on every load; a folder whose ``config.json`` has no such entry (written before
  it existed) is read unchecked.

torch and safetensors are imported when a file is read, so the weight registry and ``nsarm models`` can use
this module without importing torch.

Shape legend: none (file handling only); tensors are returned as stored, on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsarm_core.atomic import atomic_open, atomic_write_text
from nsarm_core.errors import ChecksumError, ConfigError, InputError, WeightsNotFoundError, refused_pickle

if TYPE_CHECKING:
    from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "INDEX_NAME",
    "SHA256_KEY",
    "load_state_dict",
    "weights_path",
    "read_weights",
    "as_state_dict",
    "shard_names",
    "read_index",
    "check_state_dict",
    "count_parameters",
    "save_folder",
    "read_folder",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHA256_KEY = "sha256"
"""The ``config.json`` entry recording each weight file's sha256 (``{"model.safetensors": "<hex>"}``)."""

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


# --------------------------------------------------------------------------- reading one file


def _torch_load(path: Path, mmap: bool) -> Any:
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not (mmap and "mmap" in str(exc)):
                raise
            # legacy (non-zip) torch.save format: cannot be memory-mapped, load it normally
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # code or garbage in the pickle: refused, never run
        raise refused_pickle(path, exc) from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        raise InputError(
            f"cannot read {path} as a torch checkpoint (corrupt or truncated?): {type(exc).__name__}: {exc}"
        ) from exc


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as safetensors (corrupt or truncated?): {exc}") from exc


def read_index(path: str | Path) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of a ``*.index.json``.

    Raises:
        InputError: the file is not a JSON object with a ``weight_map`` of strings.
    """
    path = Path(path)
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not an object of strings")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path} is not a sharded-checkpoint index (a JSON object with a 'weight_map' of "
            f"tensor name -> shard file): {exc}"
        ) from exc
    return weight_map


def shard_names(index_path: str | Path) -> list[str]:
    """Shard file names listed by a ``*.index.json`` (relative to the index's folder), sorted."""
    return sorted(set(read_index(index_path).values()))


def _load_index(path: Path) -> dict[str, Tensor]:
    weight_map = read_index(path)
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (path.parent / shard).is_file():
            raise InputError(f"{path} lists the shard {shard}, which is missing from {path.parent}")
        part = load_state_dict(path.parent / shard)
        state.update(part)
        logger.debug("loaded shard %s (%d tensors)", path.parent / shard, len(part))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise InputError(f"{len(missing)} tensors listed in {path} are not in its shards, e.g. {missing[:5]}")
    return state


def weights_path(path: str | Path) -> Path:
    """``path`` itself, or the index / ``model.safetensors`` inside a model folder.

    Raises:
        WeightsNotFoundError: ``path`` does not exist.
        InputError: a folder without weights.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (INDEX_NAME, WEIGHTS_NAME):
            if (p / candidate).is_file():
                return p / candidate
        raise InputError(f"{p} is a folder without {WEIGHTS_NAME} or {INDEX_NAME}")
    if not p.is_file():
        raise WeightsNotFoundError(f"weight file not found: {p} does not exist")
    return p


def read_weights(path: str | Path, *, mmap: bool = True) -> Any:
    """The object stored in a weight file, as stored (a flat dict for safetensors, any container for torch).

    Most callers want :func:`load_state_dict`; this is for checkpoints whose layout must be inspected first
    (a training checkpoint ``{"trainer": {"gpt_fsdp": ...}}``).

    Raises:
        WeightsNotFoundError: ``path`` does not exist.
        InputError: unknown format, corrupt or truncated file, or a pickle with arbitrary objects (refused).
    """
    p = weights_path(path)
    name = p.name.lower()
    if name.endswith(".safetensors"):
        return _load_safetensors(p)
    if name.endswith(".json"):
        return _load_index(p)
    if name.endswith(_TORCH_SUFFIXES):
        return _torch_load(p, mmap)
    raise InputError(
        f"unsupported weight file {p}: expected .safetensors, *.index.json, .pth, .pt, .bin or .ckpt"
    )


def _select(obj: Any, key: str | None, path: Path) -> Any:
    """Walk a dotted ``key`` into nested dicts; where nesting ends, keep the flat entries under that prefix."""
    if not key:
        return obj
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(obj, Mapping) and part in obj:
            obj = obj[part]
            continue
        prefix = ".".join(parts[i:]) + "."
        sub = (
            {k[len(prefix) :]: v for k, v in obj.items() if isinstance(k, str) and k.startswith(prefix)}
            if isinstance(obj, Mapping)
            else {}
        )
        if not sub:
            top = ", ".join(list(map(str, obj))[:12]) if isinstance(obj, Mapping) else type(obj).__name__
            raise InputError(f"{path} has no entry {key!r}; its top-level keys are: {top}")
        return sub
    return obj


def as_state_dict(obj: Any, path: str | Path, key: str | None = None) -> dict[str, Tensor]:
    """``obj`` (or its dotted ``key`` entry) as a flat ``name -> tensor`` dict.

    Raises:
        InputError: no such entry, or not a flat dict of tensors (the message lists what is there).
    """
    from torch import Tensor

    path = Path(path)
    obj = _select(obj, key, path)
    if not isinstance(obj, Mapping):
        raise InputError(f"{path} holds a {type(obj).__name__}, expected a state dict (name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        desc = ", ".join(f"{k!r}: {type(obj[k]).__name__}" for k in bad[:8])
        raise InputError(
            f"{path} is not a flat state dict: entries {desc}{' ...' if len(bad) > 8 else ''} are not tensors. "
            f"Pass key= to select the sub-dict holding the weights (e.g. key='vae' for the Infinity VAE files, "
            f"key='trainer.gpt_fsdp' for training checkpoints)."
        )
    return dict(obj)


def load_state_dict(path: str | Path, *, key: str | None = None, mmap: bool = True) -> dict[str, Tensor]:
    """Load a weight file into a flat ``name -> tensor`` dict on CPU, safely.

    Args:
        path: a weight file (any format of the module docstring) or a folder holding one.
        key: optional dotted path to the sub-dict with the weights (``"vae"`` for the Infinity VAE files,
            ``"trainer.gpt_fsdp"`` for training checkpoints). For flat files it selects and strips the
            ``key + "."`` prefix.
        mmap: memory-map zip-format torch files (saves RAM for multi-GB checkpoints; legacy files fall back).

    Returns:
        ``dict[str, Tensor]``.

    Raises:
        WeightsNotFoundError: ``path`` does not exist.
        InputError: unknown format, corrupt file, a pickle with arbitrary objects (refused), or not a flat
            state dict (the message lists the top-level keys so you can pick ``key``).
    """
    p = weights_path(path)
    return as_state_dict(read_weights(p, mmap=mmap), p, key)


# --------------------------------------------------------------------------- the strict report


def _show(items: list[str]) -> str:
    return ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")


def check_state_dict(
    expected: Mapping[str, Tensor],
    provided: Mapping[str, Tensor | None],
    *,
    source: str,
    what: str,
    hint: str = "",
    optional: Callable[[str], bool] | None = None,
) -> None:
    """Raise one ConfigError listing every missing key, unexpected key and shape mismatch.

    Args:
        expected: the model's ``state_dict()``.
        provided: the checkpoint's tensors; a value of None means "name known, tensor not read yet" (a shard
            index), which checks the names only.
        source: the file or object named in the message.
        what: the model named in the message (``"this transformer"``).
        hint: what the user should check, appended to the message.
        optional: model keys that may be absent (the transformer's zero key-bias buffers).

    Raises:
        ConfigError: ``<source> does not match <what>: missing keys: ...; unexpected keys: ...; shape
            mismatches: ...``.
    """
    missing = [k for k in expected if k not in provided and not (optional is not None and optional(k))]
    unexpected = sorted(k for k in provided if k not in expected)
    shapes = [
        f"{k}: checkpoint shape {tuple(v.shape)}, model shape {tuple(expected[k].shape)}"
        for k, v in provided.items()
        if v is not None and k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    parts = [
        f"{label}: {_show(items)}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    if parts:
        raise ConfigError(
            f"{source} does not match {what}: " + "; ".join(parts) + (f". {hint}" if hint else "")
        )


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers excluded), also on the meta device."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- model folders


def save_folder(
    directory: str | Path, state: Mapping[str, Tensor], config: Mapping[str, Any], *, model_type: str
) -> Path:
    """Write ``config.json`` (``{"model_type": model_type, **config, "sha256": {...}}``) and ``model.safetensors``
    atomically; ``sha256`` records the weights file's hash, which :func:`read_folder` checks.

    The weights are written first: a folder whose ``config.json`` is present always has its weights.
    """
    from safetensors.torch import save

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    blob = save(tensors, metadata={"format": "pt", "model_type": model_type})
    with atomic_open(out / WEIGHTS_NAME) as handle:
        handle.write(blob)
    body = {"model_type": model_type, **config, SHA256_KEY: {WEIGHTS_NAME: hashlib.sha256(blob).hexdigest()}}
    atomic_write_text(out / CONFIG_NAME, json.dumps(body, indent=2) + "\n")
    return out


def read_folder(
    directory: str | Path, *, model_type: str, weights_file: str | Path | None = None, writer: str
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a folder written by :func:`save_folder`: ``(config without model_type, state dict)``.

    Args:
        directory: the model folder.
        model_type: the expected ``model_type`` of ``config.json`` (a config without one is accepted).
        weights_file: read the weights from this file instead of ``directory/model.safetensors``.
        writer: the method that writes such folders, quoted in the not-found message.

    Raises:
        WeightsNotFoundError: ``config.json`` or the weights are missing.
        ConfigError: ``config.json`` is not JSON or describes another model type.
        InputError: the weights are corrupt or truncated (the message names the file).
    """
    src = Path(directory)
    cfg_path = src / CONFIG_NAME
    w_path = Path(weights_file) if weights_file is not None else src / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise WeightsNotFoundError(f"{p} not found; expected a model folder written by {writer}")
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {cfg_path} as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{cfg_path} holds a {type(data).__name__}, expected a JSON object")
    found = data.pop("model_type", model_type)
    if found != model_type:
        raise ConfigError(f"{cfg_path} describes a {found!r} model, not a {model_type!r} model")
    recorded = _recorded_sha256(data.pop(SHA256_KEY, None), cfg_path)
    expected = recorded.get(w_path.name) if w_path.resolve().parent == src.resolve() else None
    if expected is not None:
        _check_sha256(w_path, expected, cfg_path)
    return data, load_state_dict(w_path)


def _check_sha256(path: Path, expected: str, cfg_path: Path) -> None:
    """Hash ``path`` (streaming) and refuse it when it differs from the sha256 ``cfg_path`` records.

    Hashed on every load: our folder models are small (nsarm-tiny's 24 MB take about 0.05 s), and the memo of
    :mod:`nsarm_core.weights` belongs to the layer above this one.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ChecksumError(
            f"checksum mismatch for {path}: expected sha256 {expected} (recorded in {cfg_path}), got "
            f"{digest.hexdigest()}. The file is corrupt or was replaced: restore it or save the model again."
        )


def _recorded_sha256(value: Any, cfg_path: Path) -> dict[str, str]:
    """The ``sha256`` entry of a folder's ``config.json`` (file name -> hex digest); absent: nothing to check."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)
        for k, v in value.items()
    ):
        raise ConfigError(
            f"{cfg_path}: '{SHA256_KEY}' must map weight file names to 64 lowercase hex digits, got {value!r}"
        )
    return value
